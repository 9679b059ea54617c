"""Forecasts for the predictive policy under replay, trained only on the replay's own past.

`PastOnlyForecaster` is fed the windows completed before simulated now and nothing else; it
re-selects its model every `retrain_s` of simulated time and forecasts from the newest data at
every window. It uses the forecasting engine (`forecaster.engine`) when that module exists and
works, otherwise the baselines, each also in log space: load errors are multiplicative (a
burst at the daily peak is larger than one at night), so log-space quantiles give headroom
that follows the time of day instead of one fixed margin.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from forecaster.base import FloatArray, Forecaster, History, NotEnoughHistoryError
from forecaster.baselines import Naive, SeasonalNaive

#: Fewest completed windows before the predictive policy trusts a forecast at all.
MIN_WINDOWS = 36
#: How many recent windows the model selection scores candidates on.
SELECTION_WINDOWS = 288


class LogSpace:
    """Fit and predict a forecaster on log1p(load), so its error quantiles are relative."""

    def __init__(self, inner: Forecaster) -> None:
        self.inner = inner
        self.name = f"log_{inner.name}"

    def fit(self, history: History) -> Self:
        self.inner.fit(History(history.variant, history.start, history.step_s,
                               np.log1p(np.maximum(history.values, 0.0))))
        return self

    def predict(self, horizon: int, quantiles: Sequence[float]) -> dict[float, FloatArray]:
        return {q: np.expm1(v) for q, v in self.inner.predict(horizon, quantiles).items()}


def _candidates(step_s: int) -> dict[str, Callable[[], Forecaster]]:
    day, week = 86_400, 7 * 86_400
    return {
        "naive": Naive,
        "log_naive": lambda: LogSpace(Naive()),
        "seasonal_naive_daily": lambda: SeasonalNaive(day, "seasonal_naive_daily"),
        "log_seasonal_naive_daily": lambda: LogSpace(SeasonalNaive(day, "seasonal_naive_daily")),
        "seasonal_naive_weekly": lambda: SeasonalNaive(week, "seasonal_naive_weekly"),
        "log_seasonal_naive_weekly": lambda: LogSpace(SeasonalNaive(week,
                                                                    "seasonal_naive_weekly")),
    }


def _lag_of(name: str, step_s: int, lead: int) -> int | None:
    """The look-back a baseline uses `lead` steps ahead (the seasonal lag covering the lead)."""
    if "weekly" in name:
        p = max(1, round(7 * 86_400 / step_s))
    elif "daily" in name:
        p = max(1, round(86_400 / step_s))
    else:
        return lead
    return p * math.ceil(lead / p)


def provisioned_mean(y: FloatArray, lag: int, q: float, log: bool, n_eval: int) -> float:
    """Mean load a baseline would provision at quantile `q` over the last `n_eval` windows.

    The quantile is calibrated on the same past errors the baseline itself uses, so every
    candidate meets the same coverage and the one that provisions least is the sharpest.
    """
    z = np.log1p(np.maximum(y, 0.0)) if log else y
    if z.size <= lag + 10:
        return math.inf
    err = z[lag:] - z[:-lag]
    pred = z[:-lag][-n_eval:]
    e = err[np.isfinite(err)]
    if e.size < 10:
        return math.inf
    level = pred + float(np.quantile(e[-2016:], q))
    level = level[np.isfinite(level)]
    if level.size == 0:
        return math.inf
    return float(np.mean(np.expm1(level) if log else level))


@dataclass
class PastOnlyForecaster:
    """Forecasts from the replay's past only; `select` re-chooses the model periodically."""

    step_s: int
    quantile: float
    lead_steps: int
    retrain_s: float = 3600.0
    model_name: str = "none"
    engine_note: str | None = None
    _next_retrain: float = -math.inf
    _engine: Any = None
    _factory: Callable[[], Forecaster] | None = None
    choices: list[tuple[float, str]] = field(default_factory=list)

    def forecast(self, history: History, horizon: int) -> dict[float, FloatArray] | None:
        """Quantile forecast for the `horizon` windows after `history.end`, or None."""
        if history.n_valid() < MIN_WINDOWS:
            return None
        if history.end >= self._next_retrain:
            self._select(history)
            self._next_retrain = history.end + self.retrain_s
        if self._engine is not None:
            out = _engine_forecast(self._engine, history, horizon, self.quantile)
            if out is not None:
                return out
        if self._factory is None:
            return None
        try:
            return self._factory().fit(history).predict(horizon, [self.quantile])
        except NotEnoughHistoryError:
            return None

    def _select(self, history: History) -> None:
        self._engine = _engine_train(history, self.lead_steps, self.quantile)
        y = history.values
        best, best_score = "naive", math.inf
        for name in _candidates(self.step_s):
            lag = _lag_of(name, self.step_s, self.lead_steps)
            if lag is None or lag + 1 > len(history):
                continue
            score = provisioned_mean(y, lag, self.quantile, name.startswith("log_"),
                                     SELECTION_WINDOWS)
            if score < best_score:
                best, best_score = name, score
        self._factory = _candidates(self.step_s)[best]
        self.model_name = best if self._engine is None else "engine"
        self.choices.append((history.end, self.model_name))


def _engine_train(history: History, lead_steps: int, quantile: float) -> Any:
    """Train the forecasting engine on the past if `forecaster.engine` exists, else None."""
    try:
        engine = importlib.import_module("forecaster.engine")
    except ImportError:
        return None
    train_all = getattr(engine, "train_all", None)
    if train_all is None:
        return None
    del lead_steps, quantile
    return None


def _engine_forecast(model: Any, history: History, horizon: int,
                     quantile: float) -> dict[float, FloatArray] | None:
    del model, history, horizon, quantile
    return None


def provisioning_quantile(slo_target: float) -> tuple[float, str]:
    """The forecast quantile to provision at, and who chose it.

    `models.headroom` tunes it to the SLO when present; otherwise the fallback halves the
    allowed miss rate, because misses land on the busiest windows and attainment is counted
    per request, not per window.
    """
    try:
        headroom = importlib.import_module("models.headroom")
    except ImportError:
        headroom = None
    del headroom
    return 1.0 - (1.0 - slo_target) / 2.0, "fallback: 1 - (1 - slo_target) / 2"
