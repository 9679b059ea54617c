"""Naive and seasonal-naive forecasters: the baselines every model must beat, and the fallback.

Quantiles come from the empirical distribution of the method's own past errors at each lead
time, so even the fallback says honestly how uncertain it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from forecaster.base import (
    FloatArray,
    History,
    NotEnoughHistoryError,
    check_horizon,
    check_quantiles,
    monotone_quantiles,
)

#: How many past errors per lead time feed the empirical quantiles.
ERROR_WINDOW = 2016


def _last_finite(values: FloatArray) -> float:
    idx = np.flatnonzero(np.isfinite(values))
    if idx.size == 0:
        raise NotEnoughHistoryError("naive", 0, 1)
    return float(values[idx[-1]])


def _error_quantiles(errors: FloatArray, quantiles: Sequence[float]) -> dict[float, float]:
    errs = errors[np.isfinite(errors)][-ERROR_WINDOW:]
    if errs.size < 10:
        return {q: 0.0 for q in quantiles}
    return {q: float(np.quantile(errs, q)) for q in quantiles}


class Naive:
    """Tomorrow looks like now: the last observed value, for every step."""

    name = "naive"

    def __init__(self) -> None:
        self._y: FloatArray | None = None

    def fit(self, history: History) -> Self:
        if history.n_valid() < 1:
            raise NotEnoughHistoryError(self.name, history.n_valid(), 1)
        self._y = history.values
        return self

    def predict(self, horizon: int, quantiles: Sequence[float]) -> dict[float, FloatArray]:
        if self._y is None:
            raise RuntimeError("Naive: call fit before predict")
        h = check_horizon(horizon)
        qs = check_quantiles(quantiles)
        y = self._y
        level = _last_finite(y)
        out = {q: np.full(h, level) for q in qs}
        for step in range(1, h + 1):
            errs = y[step:] - y[:-step] if y.size > step else np.empty(0)
            eq = _error_quantiles(errs, qs)
            for q in qs:
                out[q][step - 1] += eq[q]
        return monotone_quantiles(out)


class SeasonalNaive:
    """The value one season ago (a day or a week), plus the season-on-season error spread."""

    def __init__(self, period_s: int, name: str | None = None) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s!r}")
        self.period_s = period_s
        self.name = name or f"seasonal_naive_{period_s}s"
        self._y: FloatArray | None = None
        self._period = 0

    def fit(self, history: History) -> Self:
        period = max(1, round(self.period_s / history.step_s))
        if len(history) < period + 1:
            raise NotEnoughHistoryError(self.name, len(history), period + 1)
        self._y = history.values
        self._period = period
        return self

    def predict(self, horizon: int, quantiles: Sequence[float]) -> dict[float, FloatArray]:
        if self._y is None:
            raise RuntimeError(f"{self.name}: call fit before predict")
        h = check_horizon(horizon)
        qs = check_quantiles(quantiles)
        y, p = self._y, self._period
        n = y.size
        fallback = _last_finite(y)
        point = np.empty(h)
        for step in range(1, h + 1):
            # The same phase in the most recent season that has been observed.
            idx = n + step - 1 - p * ((step - 1) // p + 1)
            v = y[idx] if idx >= 0 else np.nan
            point[step - 1] = v if np.isfinite(v) else fallback
        eq = _error_quantiles(y[p:] - y[:-p], qs)
        return monotone_quantiles({q: point + eq[q] for q in qs})


def daily(step_s: int = 0) -> SeasonalNaive:
    """Seasonal naive with a one-day season."""
    del step_s
    return SeasonalNaive(86_400, name="seasonal_naive_daily")


def weekly(step_s: int = 0) -> SeasonalNaive:
    """Seasonal naive with a one-week season."""
    del step_s
    return SeasonalNaive(7 * 86_400, name="seasonal_naive_weekly")
