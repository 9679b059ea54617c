"""LightGBM direct multi-horizon forecaster, per variant or global across a fleet.

Features at origin `o` use samples `0..o` only (see `build_features`; a property test
perturbs the future and checks nothing changes). Everything is divided by the trailing load
scale at the origin (`feature_scale`: a 30-minute trailing mean, at least six steps), so the
target is "load at o+h relative to now": one model then serves variants of any size, which
is what makes the global model (`fit_many`) work, and a variant that doubles its traffic
does not leave the training distribution. The daily and weekly shape enters the same way,
relative to the level: ramps (how the load moved from the origin's time of day to the
target's on earlier days) and the seasonal forecasts they make from the level now
(`_ramp_columns`).

Direct multi-horizon: the lead `h` is a feature and the model is trained on a few sampled
leads (1, 2, 3, 6, ... up to H), so one booster serves every lead without recursion.
Quantiles come from `PointForecaster`'s held-out relative errors (conformal), not from
quantile objectives: one booster per level would multiply training cost.

The objective is L1: the point forecast is judged by MAE (and serves as the median), and
LLM load is bursty, so a squared loss chases bursts that never repeat. Measured on the
shipped traces' backtest origins with the same features (MAE over the best window
average's): NASA minute data at 5 steps 1.006 (L2) -> 0.976 (L1), ServeGen m-small 0.947
-> 0.898, m-mid 3.53 -> 1.01, m-large 1.13 -> 1.05; Huber was between the two.

Rows are weighted by the load scale (`training_rows`), so the relative L1 loss is the
absolute one. Measured before the scored part of each trace (the backtest's last 20% left
out), holdout MAE over the best of naive and the window average, before -> after the
weights, the ramps, the 30-minute scale and 60 rounds: NASA at 5 steps 0.977 -> 0.966, at 30
steps 0.968 -> 0.959; ServeGen m-large 1.019 -> 1.026, m-mid 1.086 -> 1.053, m-small 0.957
-> 0.939 (m-large is served by another candidate either way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from forecaster.base import FloatArray, History, NotEnoughHistoryError
from forecaster.calibrated import IntArray, PointForecaster, holdout_origins
from forecaster.prep import DEFAULT_MAX_GAP, SCALE_FLOOR_SHARE, fill_short_gaps, steps_per

DAY_S = 86_400
WEEK_S = 7 * DAY_S
LAGS = 12
ROLL_WINDOWS = (3, 6, 12, 24, 48)
#: Width of the window around the target's time a day / a week ago (see `_seasonal_columns`).
SEASON_SMOOTH_S = 1800
#: Width of the level compared with the same time a day / a week ago.
LEVEL_S = 3600
#: Width of the trailing mean that features and targets are relative to (`feature_scale`).
SCALE_S = 1800
#: Width of the trailing mean a ramp starts from (see `_ramp_columns`).
RAMP_LEVEL_S = 1800
#: Days whose ramps are averaged into the daily shape.
RAMP_DAYS = 7
#: Value of a seasonal feature that the history cannot provide (loads and ratios are >= 0).
UNKNOWN = -1.0
#: Training origins per series (the most recent; older ones are strided out).
MAX_TRAIN_ORIGINS = 3000
LGB_PARAMS: dict[str, Any] = {
    "objective": "l1", "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 40,
    "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "num_threads": 1, "verbose": -1, "seed": 7, "deterministic": True,
}
#: 60 rounds at a learning rate of 0.1 (80 at 0.08 before the rows were weighted): weighted
#: L1 leaves cost ~40% more to fit, and the fewer rounds pay for it at the same accuracy
#: (measured before the scored parts, of the best baseline: NASA 5 steps 0.969 -> 0.966, 30
#: steps 0.958 -> 0.959, m-mid 1.055 -> 1.053, m-small 0.939 -> 0.939, m-large 1.014 -> 1.026).
NUM_ROUNDS = 60


def train_leads(horizon: int) -> IntArray:
    """The leads the booster is trained on: dense at the start, sparse further out."""
    leads = np.unique(np.round(np.geomspace(1, horizon, num=min(horizon, 6))).astype(np.int64))
    return np.asarray(leads, dtype=np.int64)


class Windows:
    """Means of the finite samples of `y` over windows at given indices, in O(1) each.

    Built once per call from cumulative sums, so a forecast from one origin reads a week of
    buffer in microseconds where a pandas rolling mean over the whole buffer costs a
    millisecond or two per window width. NaN is missing data, never zero load: a window
    averages the samples it has and is NaN when it has none (pandas' `min_periods=1`).
    """

    def __init__(self, y: FloatArray) -> None:
        ok = np.isfinite(y)
        self.n = int(y.shape[0])
        with np.errstate(over="ignore", invalid="ignore"):
            self._sum = np.concatenate(([0.0], np.cumsum(np.where(ok, y, 0.0))))
            self._abs = np.concatenate(([0.0], np.cumsum(np.where(ok, np.abs(y), 0.0))))
        self._cnt = np.concatenate(([0], np.cumsum(ok)))
        self._last = np.maximum.accumulate(np.where(ok, np.arange(self.n), -1))

    def mean(self, at: IntArray, back: int, ahead: int = 0) -> FloatArray:
        """Mean over `y[at - back .. at + ahead]` (clipped to the series) at each index."""
        lo = np.minimum(np.maximum(at - back, 0), self.n)
        hi = np.minimum(np.maximum(at + ahead + 1, 0), self.n)
        cnt = self._cnt[hi] - self._cnt[lo]
        with np.errstate(over="ignore", invalid="ignore"):
            out = (self._sum[hi] - self._sum[lo]) / np.maximum(cnt, 1)
        return np.asarray(np.where(cnt > 0, out, np.nan), dtype=np.float64)

    def scale(self, at: IntArray, window: int, floor: float = 0.0) -> FloatArray:
        """`prep.trailing_scale(y, window, floor)` at the indices `at` (in `0..n-1`).

        The trailing mean, carried forward over a stretch with no sample (the window that
        ends `window - 1` steps after the last sample is the last one holding it), floored
        at a share of the mean load so far and at `floor`. NaN where that is not a finite
        number (sums that overflowed): a scale nothing can be relative to.
        """
        last = self._last[at]
        end = np.where(last >= 0, np.minimum(at, last + window - 1), at)
        s = self.mean(end, window - 1)
        cnt = self._cnt[at + 1]
        with np.errstate(over="ignore", invalid="ignore"):
            base = np.where(cnt > 0, self._abs[at + 1] / np.maximum(cnt, 1), 1.0)
            lower = np.maximum(SCALE_FLOOR_SHARE * base, max(floor, 1e-6))
        out = np.maximum(np.where(np.isfinite(s), s, lower), lower)
        return np.asarray(np.where(np.isfinite(out), out, np.nan), dtype=np.float64)


def scale_window(step_s: int) -> int:
    """Steps in the trailing mean the features and the target are relative to: SCALE_S, and
    at least six steps.

    Six steps is an hour at 10-minute steps but six minutes at one-minute steps, where a
    six-sample mean of a noisy count carries its noise into every feature and, multiplied
    back, into the forecast (measured before the scored part of the NASA minute trace: MAE
    over the best of naive and the window average 0.975 -> 0.964 at 5 steps, 0.966 -> 0.955
    at 30 steps, with a 30-minute scale; unchanged at 10-minute steps).
    """
    return max(6, steps_per(SCALE_S, step_s))


def feature_scale(y: FloatArray, step_s: int, floor: float = 0.0) -> FloatArray:
    """The load scale (see `scale_window`, `Windows.scale`) at every index of `y`."""
    return Windows(y).scale(np.arange(y.shape[0], dtype=np.int64), scale_window(step_s), floor)


def relative(load: FloatArray, scale: FloatArray) -> FloatArray:
    """`load / scale`, NaN (unknown to the booster) where that is not a finite number.

    Any division can overflow (a huge load over a tiny scale, an overflowed rolling mean)
    or be 0/0; an infinite feature would split like a real extreme, a NaN is LightGBM's
    missing value.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.asarray(load / scale, dtype=np.float64)
    return np.asarray(np.where(np.isfinite(out), out, np.nan), dtype=np.float64)


def build_features(y: FloatArray, start: float, step_s: int, origins: IntArray,
                   leads: IntArray, floor: float = 0.0) -> FloatArray:
    """Feature rows for every (origin, lead) pair, origin-major; no sample after `o` is read.

    Columns: lead; LAGS lags; trailing means over ROLL_WINDOWS; trailing std; value one day
    before the target (only when that is in the past); hour-of-day and day-of-week of the
    target; log of the current scale relative to the series' own trailing day mean.
    All load columns are relative to the trailing scale at the origin.
    """
    n = y.shape[0]
    win = Windows(y)
    scale_o = win.scale(origins, scale_window(step_s), floor)
    n_o, n_l = origins.shape[0], leads.shape[0]
    cols: list[FloatArray] = []

    def at_origin(arr: FloatArray) -> FloatArray:
        return np.repeat(relative(arr, scale_o), n_l)

    lag_idx = origins[:, None] - np.arange(LAGS)[None, :]
    lag_vals = np.where(lag_idx >= 0, y[np.maximum(lag_idx, 0)], np.nan)
    lag_vals = relative(lag_vals, scale_o[:, None])
    p_day = steps_per(DAY_S, step_s)

    cols.append(np.tile(leads.astype(np.float64), n_o))
    cols.extend(np.repeat(lag_vals[:, j], n_l) for j in range(LAGS))
    cols.extend(at_origin(win.mean(origins, w - 1)) for w in ROLL_WINDOWS)
    cols.append(at_origin(_trailing_std(y, origins, 12)))
    o_rep = np.repeat(origins, n_l)
    l_rep = np.tile(leads, n_o)
    target = o_rep + l_rep
    scale = np.repeat(scale_o, n_l)
    day_idx = target - p_day
    ok = (day_idx >= 0) & (day_idx <= o_rep) & (day_idx < n)
    day_ago = relative(np.where(ok, y[np.clip(day_idx, 0, n - 1)], np.nan), scale)
    cols.append(day_ago)
    cols.extend(_seasonal_columns(win, step_s, o_rep, target, scale))
    cols.extend(_ramp_columns(win, step_s, o_rep, target, scale))
    t = start + step_s * target.astype(np.float64)
    hour = (t % DAY_S) / DAY_S * 2 * np.pi
    cols.extend((np.sin(hour), np.cos(hour)))
    cols.append(np.floor(t / DAY_S + 3) % 7)  # 1970-01-01 was a Thursday: 0 = Monday
    day_mean = np.repeat(win.mean(origins, p_day - 1), n_l)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols.append(np.log(scale / np.maximum(day_mean, 1e-9)))
    return np.column_stack(cols).astype(np.float64)


def _trailing_std(y: FloatArray, origins: IntArray, width: int) -> FloatArray:
    """Sample standard deviation of the finite values among the last `width` samples at
    each origin (NaN with fewer than two), read from those samples only."""
    idx = origins[:, None] - np.arange(width)[None, :]
    vals = np.where(idx >= 0, y[np.maximum(idx, 0)], np.nan)
    ok = np.isfinite(vals)
    cnt = ok.sum(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.where(ok, vals, 0.0).sum(axis=1) / np.maximum(cnt, 1)
        sq = np.where(ok, (vals - mean[:, None]) ** 2, 0.0).sum(axis=1)
        std = np.sqrt(sq / np.maximum(cnt - 1, 1))
    return np.asarray(np.where(cnt >= 2, std, np.nan), dtype=np.float64)


def _seasonal_columns(win: Windows, step_s: int, o_rep: IntArray, target: IntArray,
                      scale: FloatArray) -> list[FloatArray]:
    """Smoothed same-time-yesterday and same-time-last-week load, and today's level over
    the level at the same time a day and a week ago (level shifts), for each row.

    At minute steps one sample a day ago is mostly noise; a mean over SEASON_SMOOTH_S
    around the target's time that day is the shape. Only samples at or before the origin
    are read. Where that window is not yet complete or not in the history the column holds
    UNKNOWN (below any load or ratio, so a tree splits it off like a missing value, and
    rows stay comparable with `==`).
    """
    half = max(1, steps_per(SEASON_SMOOTH_S, step_s)) // 2
    back = max(2, steps_per(LEVEL_S, step_s)) - 1
    level_now = win.mean(o_rep, back)
    out: list[FloatArray] = []
    for period_s in (DAY_S, WEEK_S):
        p = steps_per(period_s, step_s)
        idx = target - p
        ok = (idx - half >= 0) & (idx + half <= o_rep)
        past = o_rep - p
        # A ratio that is not a number (0/0, x/0, an overflow) is unknown, as a window
        # outside the history is.
        ago = relative(win.mean(idx, half, half), scale)
        ratio = relative(level_now, win.mean(past, back))
        out.append(np.where(ok & np.isfinite(ago), ago, UNKNOWN))
        out.append(np.where((past >= 0) & np.isfinite(ratio), ratio, UNKNOWN))
    return out


def _ramp_columns(win: Windows, step_s: int, o_rep: IntArray, target: IntArray,
                  scale: FloatArray) -> list[FloatArray]:
    """The daily and weekly shape relative to the current level, for each row.

    A ramp is how the load moved, on an earlier day, from the origin's time of day to the
    target's: the smoothed load around the target's time over the RAMP_LEVEL_S trailing mean
    at the origin's time, that day. One day's ramp is mostly noise at minute steps; the mean
    over the last RAMP_DAYS days is the daily shape, the ramp a week ago the weekly one.
    Multiplied by the trailing mean now (over the scale), a ramp is a seasonal forecast of
    the target relative to the scale: a tree cannot multiply two features, so the products
    are columns too. Columns: the trailing mean now; the mean daily ramp; the weekly ramp;
    the two seasonal forecasts. Only samples at or before the origin are read; a ramp with
    no complete window in the past is UNKNOWN.
    """
    half = max(1, steps_per(SEASON_SMOOTH_S, step_s)) // 2
    back = max(2, steps_per(RAMP_LEVEL_S, step_s)) - 1
    now = relative(win.mean(o_rep, back), scale)

    def ramp(period: int) -> FloatArray:
        idx = target - period
        ok = (idx - half >= 0) & (idx + half <= o_rep)
        r = relative(win.mean(idx, half, half), win.mean(o_rep - period, back))
        return np.where(ok, r, np.nan)

    p_day = steps_per(DAY_S, step_s)
    days = np.stack([ramp(d * p_day) for d in range(1, RAMP_DAYS + 1)])
    have = np.isfinite(days).sum(axis=0)
    daily = np.where(have > 0, np.where(np.isfinite(days), days, 0.0).sum(axis=0)
                     / np.maximum(have, 1), np.nan)
    weekly = ramp(steps_per(WEEK_S, step_s))
    with np.errstate(over="ignore", invalid="ignore"):
        out = [now, daily, weekly, daily * now, weekly * now]
    return [np.where(np.isfinite(c), c, UNKNOWN) for c in out]


def _train_origins(y: FloatArray, horizon: int) -> IntArray:
    """Origins whose targets lie inside `y` and whose current value is known."""
    n = y.shape[0]
    origins = np.arange(LAGS, n - 1, dtype=np.int64)
    origins = origins[np.isfinite(y[origins])]
    if origins.shape[0] > MAX_TRAIN_ORIGINS:
        stride = int(np.ceil(origins.shape[0] / MAX_TRAIN_ORIGINS))
        origins = origins[::-1][::stride][::-1]
    return origins


def training_rows(y: FloatArray, start: float, step_s: int, horizon: int,
                  last_rows: int | None = None
                  ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(features, relative targets, weights) for one series; rows with unknown targets are
    dropped.

    The weight of a row is the load scale at its origin over the series' mean load: the L1
    loss on a relative target, so weighted, is the absolute error (what the forecast is
    judged by) over the series' mean load. Unweighted, a quiet night's row counts as much as
    the peak's, and at minute steps the relative noise of the quiet hours dominates the fit.
    Dividing by the series' mean keeps series of every size level in the global model.

    `last_rows`: only the newest origins that give about that many rows are built (the
    global model keeps a few hundred rows per series; building all 18,000 and slicing kept
    3 MB per variant alive through the slice).
    """
    leads = train_leads(horizon)
    origins = _train_origins(y, horizon)
    if last_rows is not None:  # the newest `horizon` origins lose rows to unknown targets
        origins = origins[-(max(1, -(-last_rows // leads.shape[0])) + horizon):]
    x = build_features(y, start, step_s, origins, leads)
    target_idx = np.repeat(origins, leads.shape[0]) + np.tile(leads, origins.shape[0])
    scale = Windows(y).scale(np.repeat(origins, leads.shape[0]), scale_window(step_s))
    padded = np.concatenate((y, np.full(horizon + 1, np.nan)))
    tgt = relative(padded[target_idx], scale)
    finite = np.isfinite(y)
    mean_load = float(np.abs(y[finite]).mean()) if finite.any() else 0.0
    w = relative(scale, np.full(scale.shape, mean_load))
    ok = np.isfinite(tgt) & np.isfinite(w)
    return x[ok], tgt[ok], w[ok]



def _train(x: FloatArray, t: FloatArray, w: FloatArray) -> Any:
    import lightgbm as lgb

    ds = lgb.Dataset(x, label=t, weight=w, params={"verbose": -1})
    return lgb.train(LGB_PARAMS, ds, num_boost_round=NUM_ROUNDS)


class LGBMForecaster(PointForecaster):
    """Direct multi-horizon LightGBM on relative features (see module doc)."""

    name = "lgbm"
    #: Fit-window samples needed: on a few hundred points a booster mostly fits noise and
    #: loses to the last value (seen at 2x the naive MAE on one-hour traces).
    min_fit = 500

    def __init__(self, horizon: int = 30, provisioning_quantile: float = 0.9,
                 max_gap: int = DEFAULT_MAX_GAP, booster: Any = None) -> None:
        super().__init__(horizon, provisioning_quantile, max_gap)
        self._booster = booster
        self._shared = booster is not None
        if self._shared:
            self.name = "lgbm_global"
        self._p_day = 144
        self._p_week = 1008

    def lookback(self) -> int:
        """A week and a bit: the weekly ramp and the daily ramps of the last RAMP_DAYS days
        read a week back from the target. A shorter buffer left them unknown in every
        forecast served after the fit while the booster had learnt from them (measured on
        the NASA minute trace at 5 steps: a day's buffer served 0.5% worse than the full
        history)."""
        return max(self._p_week + self._p_day // 24 + 64, 128)

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        self._p_day = steps_per(DAY_S, step_s)
        self._p_week = steps_per(WEEK_S, step_s)
        if self._shared:
            return
        x, t, w = training_rows(y, start, step_s, self.horizon)
        if t.shape[0] < self.min_fit:
            # Rows, not samples, are short (gaps drop origins and targets): each valid
            # sample more gives about one row per trained lead.
            valid = int(np.isfinite(y).sum())
            per_sample = train_leads(self.horizon).shape[0]
            raise NotEnoughHistoryError(
                self.name, valid, valid + -(-(self.min_fit - t.shape[0]) // per_sample),
                f"{t.shape[0]} training rows (origins with a known load, times trained leads "
                f"with a known target), needs {self.min_fit}")
        self._booster = _train(x, t, w)

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        leads = np.arange(1, horizon + 1, dtype=np.int64)
        x = build_features(y, start, step_s, origins, leads, self._scale_floor)
        rel = np.asarray(self._booster.predict(x, num_threads=1), dtype=np.float64)
        scale = Windows(y).scale(origins, scale_window(step_s), self._scale_floor)
        return rel.reshape(origins.shape[0], horizon) * scale[:, None]


def fit_many_booster(histories: Mapping[str, History], horizon: int = 30,
                     max_gap: int = DEFAULT_MAX_GAP, max_rows: int = 150_000) -> Any:
    """One booster trained on every variant's fit window (the part before its holdout).

    Rows are scale-free (see module doc), so pooling is fair to small variants; each
    series contributes an equal share of at most `max_rows` rows. Returns None when no
    variant is long enough to contribute.
    """
    xs, ts, ws = [], [], []
    per_series = max(200, max_rows // max(1, len(histories)))
    for h in histories.values():
        y = fill_short_gaps(h.values, max_gap)
        known = np.flatnonzero(np.isfinite(y))
        if known.size == 0:
            continue
        # Windows before a young variant's first sample are not history (as in
        # `engine.train_one`, whose holdout split the fit window must match).
        y = y[int(known[0]):]
        start = h.start + int(known[0]) * h.step_s
        split, _ = holdout_origins(y.shape[0], horizon)
        if split < LGBMForecaster.min_fit:
            continue
        x, t, w = training_rows(y[:split], start, h.step_s, horizon, last_rows=per_series)
        if t.shape[0] == 0:
            continue
        if t.shape[0] > per_series:
            x, t, w = x[-per_series:].copy(), t[-per_series:].copy(), w[-per_series:].copy()
        xs.append(x)
        ts.append(t)
        ws.append(w)
    if sum(t.shape[0] for t in ts) < LGBMForecaster.min_fit:
        # LightGBM would print "[Fatal] Check failed: (num_data) > (0)" to stderr before
        # raising on an empty dataset; a few rows would only fit noise.
        return None
    return _train(np.vstack(xs), np.concatenate(ts), np.concatenate(ws))


def fit_many(histories: Mapping[str, History], horizon: int = 30,
             provisioning_quantile: float = 0.9,
             max_gap: int = DEFAULT_MAX_GAP) -> dict[str, LGBMForecaster]:
    """A global model across variants, calibrated per variant (see `fit_many_booster`).

    Variants too short to calibrate are left out of the result (the caller falls back).
    """
    booster = fit_many_booster(histories, horizon, max_gap)
    if booster is None:
        return {}
    out: dict[str, LGBMForecaster] = {}
    for name, h in histories.items():
        try:
            out[name] = LGBMForecaster(horizon, provisioning_quantile, max_gap,
                                       booster=booster).fit(h)
        except (NotEnoughHistoryError, ValueError):
            continue
    return out
