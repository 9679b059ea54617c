"""Statistical candidates: a robust level blend, Holt-Winters (ETS) and MSTL + damped Holt.

All three share one idea that suits LLM traffic: *seasonality is a slowly changing profile,
the level moves fast*. The seasonal profile (by phase of the day/week) is estimated at fit
time and frozen until the next retrain; the level (and damped trend) of the deseasonalised
series is a recursion that runs over the newest samples at every forecast, so a forecast
reflects the last scrape without a refit.

Measured on real traces, the last value beats seasonal naive 2-5x at 10-30 minute leads,
and a trailing mean is within ~15% of the best model: the level matters most, the profile
adds a little where a series really is seasonal, and selection decides per variant.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from forecaster.base import FloatArray, NotEnoughHistoryError
from forecaster.calibrated import IntArray, PointForecaster, future_matrix
from forecaster.prep import DEFAULT_MAX_GAP, steps_per

DAY_S = 86_400
WEEK_S = 7 * DAY_S
#: Smoothing weights tried by `LevelBlend` (1.0 is the last value).
ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
#: Lower bound on fitted smoothing weights, so a bounded buffer carries the full state.
MIN_ALPHA = 0.02
#: Parameter fits (not forecasts) use at most this many recent samples, for speed.
MAX_PARAM_FIT = 4000
#: Seasonal profiles are fitted on windows coarse enough that a day has at most this many:
#: a daily season of 1,440 one-minute steps is smooth at 10 minutes, and Holt-Winters or MSTL
#: on 144 phases costs a tenth of a second where 1,440 would cost seconds per variant.
MAX_SEASON_STEPS = 144


def phase_index(start: float, step_s: int, n: int, period_s: int) -> IntArray:
    """Phase of each sample within a period anchored on the epoch (00:00 UTC, or Thursday)."""
    t = start + step_s * np.arange(n, dtype=np.float64)
    p = steps_per(period_s, step_s)
    return np.asarray(np.floor((t % period_s) / step_s).astype(np.int64) % p, dtype=np.int64)


def seasonal_profile(y: FloatArray, start: float, step_s: int, period_s: int) -> FloatArray:
    """Additive profile by phase: median deviation from a trailing one-period mean.

    Deviation from the *local* mean (not the global one) keeps week-on-week level shifts
    out of the profile. Needs at least two full periods.
    """
    p = steps_per(period_s, step_s)
    if np.isfinite(y).sum() < 2 * p:
        raise NotEnoughHistoryError(f"profile_{period_s}s", int(np.isfinite(y).sum()), 2 * p)
    local = pd.Series(y).rolling(p, min_periods=max(1, p // 2), center=True).mean().to_numpy()
    dev = y - local
    ph = phase_index(start, step_s, y.shape[0], period_s)
    frame = pd.DataFrame({"ph": ph, "dev": dev})
    med = frame.groupby("ph")["dev"].median().reindex(range(p))
    prof = med.to_numpy(dtype=np.float64)
    prof = np.where(np.isfinite(prof), prof, 0.0)
    # Smooth over neighbouring phases: single-window bursts are not seasonality.
    k = max(1, p // 48)
    if k > 1:
        kernel = np.ones(k) / k
        prof = np.convolve(np.concatenate((prof[-k:], prof, prof[:k])), kernel, "same")[k:-k]
    return np.asarray(prof - prof.mean(), dtype=np.float64)


def _ewma(z: FloatArray, alpha: float) -> FloatArray:
    """Exponentially weighted level; NaN samples hold the level (never read as zero)."""
    out = pd.Series(z).ewm(alpha=alpha, adjust=False, ignore_na=True).mean().to_numpy()
    return np.asarray(out, dtype=np.float64)


class _Seasonal:
    """A frozen additive profile (or none) looked up by timestamp."""

    def __init__(self) -> None:
        self.profiles: list[tuple[int, FloatArray]] = []

    def values(self, start: float, step_s: int, idx: IntArray) -> FloatArray:
        out = np.zeros(idx.shape, dtype=np.float64)
        for period_s, prof in self.profiles:
            t = start + step_s * idx.astype(np.float64)
            ph = np.floor((t % period_s) / step_s).astype(np.int64) % prof.shape[0]
            out += prof[ph]
        return out


class LevelBlend(PointForecaster):
    """EWMA level of the deseasonalised series plus the daily profile at the target time.

    The smoothing weight and whether to use the profile are chosen on the fit window by
    the mean absolute error over leads 1..H; with weight 1 and no profile this *is* the
    naive forecast, so it degrades gracefully to the baseline.
    """

    name = "blend"
    min_fit = 20

    def __init__(self, horizon: int = 30, provisioning_quantile: float = 0.9,
                 max_gap: int = DEFAULT_MAX_GAP) -> None:
        super().__init__(horizon, provisioning_quantile, max_gap)
        self.alpha = 1.0
        self._season = _Seasonal()

    def lookback(self) -> int:
        return max(64, int(np.ceil(np.log(1e-6) / np.log(1.0 - min(self.alpha, 0.999)))))

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        options: list[_Seasonal] = [_Seasonal()]
        try:
            s = _Seasonal()
            s.profiles.append((DAY_S, seasonal_profile(y, start, step_s, DAY_S)))
            options.append(s)
        except NotEnoughHistoryError:
            pass
        n = y.shape[0]
        origins = np.arange(max(0, n - 2000 - self.horizon), n - self.horizon, dtype=np.int64)
        actual = future_matrix(y, origins, self.horizon)
        best = (np.inf, 1.0, options[0])
        for season in options:
            self._season = season
            for alpha in ALPHAS:
                self.alpha = alpha
                err = np.nanmean(np.abs(actual - self._paths(y, start, step_s, origins,
                                                             self.horizon)))
                if err < best[0]:
                    best = (float(err), alpha, season)
        _, self.alpha, self._season = best

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        idx = np.arange(y.shape[0], dtype=np.int64)
        level = _ewma(y - self._season.values(start, step_s, idx), self.alpha)[origins]
        target = origins[:, None] + 1 + np.arange(horizon)[None, :]
        return np.asarray(level[:, None] + self._season.values(start, step_s, target),
                          dtype=np.float64)


def coarsen(y: FloatArray, start: float, step_s: int, factor: int
            ) -> tuple[FloatArray, float, int]:
    """Means over blocks of `factor` samples, ending at the newest sample (the oldest
    incomplete block is dropped); returns (values, start, step) of the coarse series."""
    if factor <= 1:
        return y, start, step_s
    n = (y.shape[0] // factor) * factor
    trim = y.shape[0] - n
    blocks = y[trim:].reshape(-1, factor)
    return (np.asarray(blocks.mean(axis=1), dtype=np.float64), start + trim * step_s,
            step_s * factor)


def upsample_profile(prof: FloatArray, step_c: int, step_s: int, period_s: int) -> FloatArray:
    """A profile by coarse phase, interpolated (around the period) to phases of `step_s`."""
    fine = steps_per(period_s, step_s)
    centres_c = (np.arange(prof.shape[0]) + 0.5) * step_c
    centres_f = (np.arange(fine) + 0.5) * step_s
    out = np.interp(centres_f, centres_c, prof, period=period_s)
    return np.asarray(out - out.mean(), dtype=np.float64)


def _holt_states(z: FloatArray, alpha: float, beta: float,
                 phi: float) -> tuple[FloatArray, FloatArray]:
    """Level and trend after each sample of damped Holt; NaN samples only decay the trend."""
    n = z.shape[0]
    lvl = np.empty(n)
    trd = np.empty(n)
    finite = np.flatnonzero(np.isfinite(z))
    level = float(z[finite[0]]) if finite.size else 0.0
    trend = 0.0
    for t in range(n):
        v = z[t]
        pred = level + phi * trend
        if v == v:  # finite (NaN != NaN)
            new_level = alpha * v + (1.0 - alpha) * pred
            trend = beta * (new_level - level) + (1.0 - beta) * phi * trend
            level = new_level
        else:
            level = pred
            trend = phi * trend
        lvl[t] = level
        trd[t] = trend
    return lvl, trd


def _interp_nan(y: FloatArray) -> FloatArray:
    """Bridge NaN for *parameter estimation only* (decompositions cannot take holes)."""
    ok = np.isfinite(y)
    if ok.all():
        return y
    x = np.arange(y.shape[0])
    return np.asarray(np.interp(x, x[ok], y[ok]), dtype=np.float64)


class SeasonalHolt(PointForecaster):
    """Damped-trend Holt on a deseasonalised series; the profile depends on `seasonal`.

    - `"hw"`: Holt-Winters (statsmodels `ExponentialSmoothing`, additive daily season);
      its fitted smoothing weights and final seasonal states are kept.
    - `"mstl"`: MSTL (daily, plus weekly when two weeks exist) gives the profiles; damped
      Holt fitted by statsmodels models the remainder + trend (the ETS remainder).
    - `"none"`: plain damped Holt.

    STL jumps are set to ~period/10: exact loess at every point costs ~14 s per series and
    changes the profile by a rounding error.
    """

    min_fit = 20

    def __init__(self, seasonal: str = "mstl", horizon: int = 30,
                 provisioning_quantile: float = 0.9, max_gap: int = DEFAULT_MAX_GAP) -> None:
        super().__init__(horizon, provisioning_quantile, max_gap)
        if seasonal not in ("hw", "mstl", "none"):
            raise ValueError(f"seasonal must be 'hw', 'mstl' or 'none', got {seasonal!r}")
        self.seasonal = seasonal
        self.name = {"hw": "ets_hw", "mstl": "mstl_ets", "none": "holt"}[seasonal]
        self.alpha, self.beta, self.phi = 0.5, 0.0, 0.9
        self._season = _Seasonal()

    def lookback(self) -> int:
        return 1024

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        full = _interp_nan(y)
        self._season = _Seasonal()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.seasonal != "none":
                self._fit_season(full, start, step_s)
            keep = min(full.shape[0], MAX_PARAM_FIT)
            start = start + (full.shape[0] - keep) * step_s
            y = full[-keep:]
            z = y - self._season.values(start, step_s, np.arange(y.shape[0], dtype=np.int64))
            res = ExponentialSmoothing(z, trend="add", damped_trend=True,
                                       initialization_method="estimated").fit()
        params = res.params
        self.alpha = float(np.clip(params["smoothing_level"], MIN_ALPHA, 1.0))
        self.beta = float(np.clip(params["smoothing_trend"], 0.0, 1.0))
        self.phi = float(np.clip(params["damping_trend"], 0.0, 0.98))

    def _fit_season(self, y: FloatArray, start: float, step_s: int) -> None:
        """Seasonal profiles on windows of at most MAX_SEASON_STEPS a day, at `step_s`.

        Steps finer than that (the service trains on one-minute steps) are averaged into
        coarser windows for the fit and the profiles interpolated back, so the seasonal
        models serve at every step instead of refusing below five minutes.
        """
        factor = max(1, -(-steps_per(DAY_S, step_s) // MAX_SEASON_STEPS))
        yc, start_c, step_c = coarsen(y, start, step_s, factor)
        keep = min(yc.shape[0], MAX_PARAM_FIT)
        start_c += (yc.shape[0] - keep) * step_c
        yc = yc[-keep:]
        p_day = steps_per(DAY_S, step_c)
        if self.seasonal == "hw":
            self._fit_hw(yc, start_c, step_c, p_day)
        else:
            self._fit_mstl(yc, start_c, step_c, p_day)
        if factor > 1:
            self._season.profiles = [(period_s, upsample_profile(prof, step_c, step_s, period_s))
                                     for period_s, prof in self._season.profiles]

    def _fit_hw(self, y: FloatArray, start: float, step_s: int, p_day: int) -> None:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        if y.shape[0] < 2 * p_day:
            raise NotEnoughHistoryError(self.name, y.shape[0], 2 * p_day)
        res = ExponentialSmoothing(y, trend="add", damped_trend=True, seasonal="add",
                                   seasonal_periods=p_day,
                                   initialization_method="heuristic").fit()
        season = np.asarray(res.season)[-p_day:]
        # Re-index the last p_day seasonal states by phase of day.
        ph = phase_index(start, step_s, y.shape[0], DAY_S)[-p_day:]
        prof = np.zeros(p_day)
        prof[ph] = season
        self._season.profiles.append((DAY_S, prof - prof.mean()))

    def _fit_mstl(self, y: FloatArray, start: float, step_s: int, p_day: int) -> None:
        from statsmodels.tsa.seasonal import MSTL

        # MSTL silently drops every period that is not shorter than half the series (and
        # then fails with an unbound local), so each period needs *more* than two cycles.
        if y.shape[0] <= 2 * p_day:
            raise NotEnoughHistoryError(self.name, y.shape[0], 2 * p_day + 1)
        periods = [p_day]
        p_week = steps_per(WEEK_S, step_s)
        if y.shape[0] > 2 * p_week:
            periods.append(p_week)
        jump = {f"{k}_jump": max(1, p_day // 10) for k in ("seasonal", "trend", "low_pass")}
        res = MSTL(y, periods=periods, stl_kwargs=jump).fit()
        seas = np.asarray(res.seasonal).reshape(y.shape[0], -1)
        for j, (period, period_s) in enumerate(zip(periods, (DAY_S, WEEK_S), strict=False)):
            ph = phase_index(start, step_s, y.shape[0], period_s)[-period:]
            prof = np.zeros(period)
            prof[ph] = seas[-period:, j]
            self._season.profiles.append((period_s, prof - prof.mean()))

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        idx = np.arange(y.shape[0], dtype=np.int64)
        z = y - self._season.values(start, step_s, idx)
        lvl, trd = _holt_states(z, self.alpha, self.beta, self.phi)
        damp = np.cumsum(self.phi ** np.arange(1, horizon + 1))
        target = origins[:, None] + 1 + np.arange(horizon)[None, :]
        base = lvl[origins][:, None] + trd[origins][:, None] * damp[None, :]
        return np.asarray(base + self._season.values(start, step_s, target), dtype=np.float64)
