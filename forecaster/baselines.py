"""Naive, window-average and seasonal-naive forecasters: the baselines every model must beat,
and the fallback.

Quantiles come from the empirical distribution of the method's own past errors at each lead
time, so even the fallback says honestly how uncertain it is.

The window average (the mean of the last k steps) is the strong baseline on noisy series: at
minute steps most of the last value's error is the sample's own noise, and a trailing mean
removes it (0.80x naive's MAE on the NASA minute trace at 5 steps). Its one parameter, k, is
chosen from `WINDOW_GRID` on origins that the scoring never sees (`choose_window`), so the
baseline is as honest as the models it judges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Self

import numpy as np
import numpy.typing as npt

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
#: Window lengths (in steps) the window-average baseline chooses from.
WINDOW_GRID = (2, 3, 4, 6, 8, 12, 24)


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


def trailing_means(y: FloatArray, k: int) -> FloatArray:
    """`out[i]` = mean of the finite samples among `y[i-k+1..i]` (fewer at the start); where
    that window holds none, the newest finite sample before it (NaN if there is none).

    NaN is missing data, never zero load: a window with a hole averages what it has.
    """
    if k < 1:
        raise ValueError(f"window k must be at least 1 step, got {k!r}")
    ok = np.isfinite(y)
    csum = np.concatenate(([0.0], np.cumsum(np.where(ok, y, 0.0))))
    ccnt = np.concatenate(([0], np.cumsum(ok)))
    hi = np.arange(1, y.shape[0] + 1)
    lo = np.maximum(hi - k, 0)
    cnt = ccnt[hi] - ccnt[lo]
    mean = (csum[hi] - csum[lo]) / np.maximum(cnt, 1)
    idx = np.maximum.accumulate(np.where(ok, np.arange(y.shape[0]), -1))
    last = np.where(idx >= 0, y[np.maximum(idx, 0)], np.nan)
    return np.asarray(np.where(cnt > 0, mean, last), dtype=np.float64)


def window_grid(history_len: int, grid: Sequence[int] = WINDOW_GRID) -> tuple[int, ...]:
    """The grid bounded by the history: windows no longer than the samples available (the
    shortest window is always kept, so a short history still has a baseline)."""
    out = tuple(k for k in grid if k <= history_len)
    return out or (min(grid),)


def choose_window(y: FloatArray, origins: npt.NDArray[np.int64], horizon: int,
                  grid: Sequence[int] = WINDOW_GRID) -> int:
    """The window (from `grid`, bounded by the samples up to the last origin) whose
    trailing mean has the lowest MAE over leads 1..horizon at `origins` (an early origin
    averages what it has).

    Reads `y` only up to `origins[-1] + horizon`: the caller passes origins whose targets
    lie before the part it scores, so the choice never sees the scored outcomes. Ties go
    to the shorter window (it follows level shifts sooner).
    """
    if origins.shape[0] == 0:
        raise ValueError("choose_window needs at least one origin")
    ks = window_grid(int(origins[-1]) + 1, grid)
    idx = origins[:, None] + 1 + np.arange(horizon)[None, :]
    seen = y[: int(origins[-1]) + horizon + 1]
    actual = np.where(idx < seen.shape[0], seen[np.minimum(idx, seen.shape[0] - 1)], np.nan)
    best_k, best = ks[0], math.inf
    for k in ks:
        err = np.abs(actual - trailing_means(seen, k)[origins][:, None])
        mae = float(np.nanmean(err)) if np.isfinite(err).any() else math.inf
        if mae < best - 1e-12:
            best_k, best = k, mae
    return best_k


class WindowAverage:
    """The mean of the last `k` observed steps, for every step ahead (a plain `Forecaster`).

    `k=None` chooses the window at fit time on the history's own one-step-ahead forecasts
    (its last 288 origins, all in the past), so a caller without a backtest needs no tuning.
    """

    name = "window_average"

    def __init__(self, k: int | None = None) -> None:
        if k is not None and k < 1:
            raise ValueError(f"window k must be at least 1 step, got {k!r}")
        self.k = k
        self._y: FloatArray | None = None

    def fit(self, history: History) -> Self:
        if history.n_valid() < 1:
            raise NotEnoughHistoryError(self.name, history.n_valid(), 1)
        y = history.values
        if self.k is None:
            n = y.shape[0]
            origins = np.arange(max(0, n - 1 - 288), n - 1, dtype=np.int64)
            self.k = choose_window(y, origins, 1) if origins.shape[0] else WINDOW_GRID[0]
        self._y = y
        return self

    def predict(self, horizon: int, quantiles: Sequence[float]) -> dict[float, FloatArray]:
        if self._y is None or self.k is None:
            raise RuntimeError("WindowAverage: call fit before predict")
        h = check_horizon(horizon)
        qs = check_quantiles(quantiles)
        y = self._y
        means = trailing_means(y, self.k)
        level = float(means[-1])
        if not math.isfinite(level):
            raise NotEnoughHistoryError(self.name, 0, 1)
        out = {q: np.full(h, level) for q in qs}
        for step in range(1, h + 1):
            errs = y[step:] - means[:-step] if y.size > step else np.empty(0)
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
