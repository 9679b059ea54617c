"""Forecasts for the predictive policy under replay, trained only on the replay's own past.

`PastOnlyForecaster` is fed the windows completed before simulated now and nothing else; it
re-selects its model every `retrain_s` of simulated time and forecasts from the newest data at
every window. It uses the forecasting engine (`forecaster.engine`) when that module exists,
otherwise the best baseline. (Log-space baselines were tried and dropped: one near-idle
window turns a p99.5 log error into a thousand-fold "headroom".)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecaster.base import FloatArray, Forecaster, History, NotEnoughHistoryError
from forecaster.baselines import Naive, SeasonalNaive

#: Fewest completed windows before the predictive policy trusts a forecast at all.
MIN_WINDOWS = 36
#: How many recent windows the model selection scores candidates on.
SELECTION_WINDOWS = 288


def _candidates(step_s: int) -> dict[str, Callable[[], Forecaster]]:
    day, week = 86_400, 7 * 86_400
    return {
        "naive": Naive,
        "seasonal_naive_daily": lambda: SeasonalNaive(day, "seasonal_naive_daily"),
        "seasonal_naive_weekly": lambda: SeasonalNaive(week, "seasonal_naive_weekly"),
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


def provisioned_mean(y: FloatArray, lag: int, q: float, n_eval: int) -> float:
    """Mean load a baseline would provision at quantile `q` over the last `n_eval` windows.

    The quantile is calibrated on the same past errors the baseline itself uses, so every
    candidate meets the same coverage and the one that provisions least is the sharpest.
    """
    z = y
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
    return float(np.mean(level))


#: Quantile at which the baselines are compared when the engine is not used.
SELECTION_QUANTILE = 0.99


@dataclass
class PastOnlyForecaster:
    """Forecasts from the replay's past only; the model is re-chosen every `retrain_s`.

    `mode`: "engine" (the forecasting engine, retrained on the past), "baselines" (the best
    baseline by calibrated provisioning cost on recent windows), or "auto" (the engine when
    `forecaster.engine` exists). Between retrains the forecast still starts from the newest
    completed window: the engine merges it into its buffer, the baselines refit (cheap).
    """

    step_s: int
    levels: tuple[float, ...]
    lead_steps: int
    retrain_s: float = 3600.0
    mode: str = "auto"
    model_name: str = "none"
    _next_retrain: float = -math.inf
    _engine: Any = None
    _factory: Callable[[], Forecaster] | None = None
    choices: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "engine", "baselines"):
            raise ValueError(f"forecaster mode must be auto, engine or baselines, "
                             f"got {self.mode!r}")
        if self.mode == "auto":
            self.mode = "engine" if _engine_module() is not None else "baselines"

    def forecast(self, history: History, horizon: int) -> dict[float, FloatArray] | None:
        """Quantile forecast for the `horizon` windows after `history.end`, or None."""
        if history.n_valid() < MIN_WINDOWS:
            return None
        if history.end >= self._next_retrain:
            self._select(history, horizon)
            self._next_retrain = history.end + self.retrain_s
        if self._engine is not None:
            fc = self._engine.forecast(history.slice(len(history), max(0, len(history) - 4)),
                                       issued_at=history.end, horizon=horizon,
                                       quantiles=self.levels)
            if abs(fc.issued_at - history.end) < 1e-6:
                return {q: np.asarray(v, dtype=np.float64) for q, v in fc.quantiles.items()}
        if self._factory is None:
            return None
        try:
            return self._factory().fit(history).predict(horizon, self.levels)
        except NotEnoughHistoryError:
            return None

    def _select(self, history: History, horizon: int) -> None:
        engine = _engine_module() if self.mode == "engine" else None
        if engine is not None:
            models = engine.train_all({history.variant: history}, horizon_steps=horizon,
                                      quantiles=self.levels,
                                      provisioning_quantile=SELECTION_QUANTILE,
                                      budget_s=60.0, n_jobs=1,
                                      previous=None if self._engine is None
                                      else {history.variant: self._engine})
            self._engine = models[history.variant]
            self.model_name = f"engine:{self._engine.model_name}"
        best, best_score = "naive", math.inf
        for name in _candidates(self.step_s):
            lag = _lag_of(name, self.step_s, self.lead_steps)
            if lag is None or lag + 1 > len(history):
                continue
            score = provisioned_mean(history.values, lag, SELECTION_QUANTILE, SELECTION_WINDOWS)
            if score < best_score:
                best, best_score = name, score
        self._factory = _candidates(self.step_s)[best]
        if engine is None:
            self.model_name = best
        self.choices.append((history.end, self.model_name))


def _engine_module() -> Any:
    """`forecaster.engine` if it exists and offers `train_all`, else None."""
    try:
        engine = importlib.import_module("forecaster.engine")
    except ImportError:
        return None
    return engine if hasattr(engine, "train_all") else None
