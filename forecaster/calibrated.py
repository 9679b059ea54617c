"""Point models with quantiles from honest, held-out errors (split-conformal per lead time).

Every model here is a *point path function* with parameters: given the samples up to an
origin it returns the expected load for steps 1..H. Parameters are fitted on the older part
of the history; the newest part is a holdout on which the paths are replayed origin by
origin, and the errors (relative to the load scale at the origin) become the quantiles.

Why this shape:
- Holdout errors are out of sample, so the p90 is not flattered by overfitting.
- The same holdout gives every candidate a score on identical origins, so model selection
  (`forecaster.selection`) compares like with like, baselines included.
- A fitted model keeps only a bounded buffer of recent samples; `update` merges newer
  samples into it without refitting, which is what a service forecasting every 30 s needs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from forecaster.baselines import WINDOW_GRID, choose_window, trailing_means
from forecaster.prep import (
    DEFAULT_MAX_GAP,
    fill_short_gaps,
    merge_tail,
    scale_and_idle,
    scale_floor,
    trailing_scale,
)

IntArray = np.ndarray[tuple[int], np.dtype[np.int64]]

#: Share of the history held out for selection and calibration (bounded below and above).
HOLDOUT_FRACTION = 0.5
#: At most this many holdout origins are replayed (the most recent ones).
MAX_HOLDOUT_ORIGINS = 1500
#: Of the holdout origins, the first part calibrates and the rest scores, for honest scores.
SCORE_SPLIT = 0.5
#: Calibration keeps at most this many origins' errors (the most recent).
MAX_CAL_ORIGINS = 2016
#: Cached quantile offsets are recomputed after this many new errors arrived by `update`.
REFRESH_ERRORS = 6
#: Step of adaptive conformal inference: how fast the provisioning level moves per observed
#: forecast (its realised coverage then tracks the target when volatility drifts).
ACI_GAMMA = 0.005
#: Bounds of the adapted provisioning level.
ACI_BOUNDS = (0.5, 0.995)


def pinball(y: FloatArray, pred: FloatArray, q: float) -> float:
    """Mean pinball (quantile) loss of `pred` as the `q` quantile of `y`, ignoring NaN."""
    diff = y - pred
    loss = np.maximum(q * diff, (q - 1.0) * diff)
    ok = np.isfinite(loss)
    return float(loss[ok].mean()) if ok.any() else math.nan


def _row_nanmean(a: FloatArray) -> FloatArray:
    """Mean of each row ignoring NaN (NaN for a row with no finite value), without warnings."""
    ok = np.isfinite(a)
    cnt = ok.sum(axis=1)
    tot = np.where(ok, a, 0.0).sum(axis=1)
    return np.asarray(np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan), dtype=np.float64)


@dataclass(frozen=True)
class HoldoutScores:
    """Out-of-sample scores of one model on the holdout origins, in the series' units."""

    mae: float
    pinball: float  # at the provisioning quantile
    coverage: float  # share of outcomes <= the provisioning quantile forecast
    quantile: float
    n_origins: int

    def as_dict(self) -> dict[str, float]:
        return {"mae": self.mae, f"pinball_p{round(self.quantile * 100)}": self.pinball,
                "coverage": self.coverage, "n_origins": float(self.n_origins)}


@dataclass
class _Calibration:
    """Held-out errors per lead (rows: origins) and whether they are relative to the load."""

    errors: FloatArray = field(default_factory=lambda: np.zeros((0, 1)))
    scaled: bool = True
    cache: dict[float, FloatArray] = field(default_factory=dict)
    stale: int = 0

    def offsets(self, q: float) -> FloatArray:
        """Per-lead `q` quantile of the errors (cached; refreshed as new errors arrive)."""
        if self.stale >= REFRESH_ERRORS:
            self.cache.clear()
            self.stale = 0
        out = self.cache.get(q)
        if out is None:
            out = _nanquantile_cols(self.errors, q)
            self.cache[q] = out
        return out

    def add(self, rows: FloatArray) -> None:
        """Append newly observed errors (online conformal), keeping the newest window."""
        if rows.shape[0] == 0 or rows.shape[1] != self.errors.shape[1]:
            return
        self.errors = np.concatenate((self.errors, rows))[-MAX_CAL_ORIGINS:]
        self.stale += rows.shape[0]


@dataclass
class Holdout:
    """A model's point paths on the holdout origins (kept only while selection runs)."""

    origins: IntArray
    actual: FloatArray
    paths: FloatArray
    scale: FloatArray  # (n, 1) trailing load scale at each origin
    n_cal: int  # the first n_cal rows calibrate, the rest score (the same origins for all)
    #: (n, 1) True where the origin was idle (scale on its floor): no relative error there.
    idle: npt.NDArray[np.bool_] | None = None

    def tail(self, rows: int, n_score: int) -> Holdout:
        """The last `rows` rows, of which the last `n_score` score."""
        return Holdout(self.origins[-rows:], self.actual[-rows:], self.paths[-rows:],
                       self.scale[-rows:], rows - n_score,
                       None if self.idle is None else self.idle[-rows:])

    def errors(self, scaled: bool) -> FloatArray:
        """Errors (over the load scale when `scaled`), NaN from idle origins.

        A forecast issued while the series is idle (scale on its floor, see
        `prep.scale_and_idle`) meets either more idle or the load coming back from an
        outage: a jump no forecast sees coming, and as a relative error 20x the load. Kept
        in the calibration, one recovery would set the upper quantiles of every forecast
        for weeks; the reactive path is what catches it.
        """
        err = self.actual - self.paths
        if scaled:
            err = err / self.scale
        if self.idle is not None:
            err = np.where(self.idle, np.nan, err)
        return np.asarray(err, dtype=np.float64)


@dataclass(frozen=True)
class OriginLosses:
    """Per-origin losses on the scoring origins (averaged over leads), for paired tests."""

    mae: FloatArray
    pinball: FloatArray


def holdout_split(n: int, horizon: int) -> int:
    """Where the holdout starts in a series of length `n`: it takes half the series, and at
    least the horizon plus ten origins (negative when `n` is shorter than that)."""
    return n - max(round(n * HOLDOUT_FRACTION), horizon + 10)


def holdout_origins(n: int, horizon: int) -> tuple[int, IntArray]:
    """The fit/holdout split point and the holdout origins for a series of length `n`.

    Depends only on `n` and `horizon`, so every candidate is scored on the same origins.
    An origin `o` forecasts samples `o+1..o+horizon` from samples `0..o`.
    """
    split = holdout_split(n, horizon)
    origins = np.arange(split - 1, n - horizon - 1 + 1, dtype=np.int64)
    origins = origins[origins + horizon < n]
    if origins.shape[0] > MAX_HOLDOUT_ORIGINS:
        # Spread the replayed origins over the whole holdout rather than its last stretch: at
        # fine steps 1500 consecutive origins span hours, too short to see a daily cycle.
        stride = -(-origins.shape[0] // MAX_HOLDOUT_ORIGINS)
        origins = origins[::-1][::stride][::-1].copy()
    return split, origins


def future_matrix(y: FloatArray, origins: IntArray, horizon: int) -> FloatArray:
    """`out[i, k] = y[origins[i] + 1 + k]` (NaN beyond the end)."""
    idx = origins[:, None] + 1 + np.arange(horizon)[None, :]
    padded = np.concatenate((y, np.full(horizon + 1, np.nan)))
    return np.asarray(padded[idx], dtype=np.float64)


class PointForecaster(ABC):
    """Base class: subclasses implement `_fit_params` and `_paths`; quantiles come from here.

    `horizon` is the longest lead calibrated; a longer `predict` reuses the last lead's
    errors (a wider band would be more honest, but the service never asks past it).

    Calibration is split-conformal per lead time. The errors are either absolute or
    relative to the trailing load scale at the origin; which one is chosen on the holdout
    (calibrate on its first part, score on the rest), because bursty series dominated by a
    few clients have errors that do not grow with the level. Parameter-free models
    (`parameter_free`) also calibrate on origins before the holdout: their errors there are
    just as honest, and a longer error window gives steadier quantiles.
    """

    name: str = "point"
    #: Samples a model needs before the holdout (checked with a clear message).
    min_fit: int = 2
    #: True when nothing is estimated from data (errors before the holdout are honest too).
    parameter_free: bool = False

    def __init__(self, horizon: int = 30, provisioning_quantile: float = 0.9,
                 max_gap: int = DEFAULT_MAX_GAP) -> None:
        self.horizon = check_horizon(horizon)
        self.provisioning_quantile = check_quantiles([provisioning_quantile])[0]
        self.max_gap = max_gap
        self._cal = _Calibration()
        self._level_shift = 0.0
        self._y: FloatArray | None = None
        #: Lower bound of the load scale, from the whole fit history (see `trailing_scale`).
        self._scale_floor = 0.0
        self._start = 0.0
        self._step_s = 1
        self.scores: HoldoutScores | None = None
        self.losses: OriginLosses | None = None
        self.holdout: Holdout | None = None
        self.trained_from = 0.0
        self.trained_to = 0.0

    # ---- what subclasses provide -------------------------------------------------------
    @abstractmethod
    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        """Fit parameters on `y` (gaps already bridged; long gaps NaN)."""

    @abstractmethod
    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        """Point paths `(len(origins), horizon)`; row i may only use `y[:origins[i] + 1]`."""

    def lookback(self) -> int:
        """Samples of recent history `predict` needs (the buffer kept after fit)."""
        return 2048

    def _first_origin(self) -> int:
        """First origin a parameter-free model can be calibrated on."""
        return 0

    def _tune_on_calibration(self, y: FloatArray, origins: IntArray, n_cal: int) -> None:
        """Choose parameters on the calibration origins (`origins[:n_cal]`); default: none.

        For parameters that are cheapest to judge on the holdout's own forecasts (the
        window of a trailing mean). Only origins whose every lead lies before the first
        scoring origin should be read, so the scores stay out of sample.
        """
        del y, origins, n_cal

    # ---- the shared machinery ----------------------------------------------------------
    def fit(self, history: History) -> Self:
        """Fit on the older part, calibrate and score on the holdout, keep a buffer."""
        y = fill_short_gaps(history.values, self.max_gap)
        n = y.shape[0]
        split, origins = holdout_origins(n, self.horizon)
        n_fit_valid = int(np.isfinite(y[:max(split, 0)]).sum())
        have = int(np.isfinite(y).sum())
        if split < self.min_fit or origins.size < 5:
            raise NotEnoughHistoryError(self.name, have, self._history_need(self.min_fit),
                                        self._holdout_detail(self.min_fit))
        if n_fit_valid < self.min_fit:
            raise NotEnoughHistoryError(
                self.name, have, have + 2 * (self.min_fit - n_fit_valid),
                f"the fit window, the {split} steps before the holdout, holds {n_fit_valid} "
                f"valid samples and needs {self.min_fit}: the rest are gaps")
        self._step_s = history.step_s
        try:
            self._fit_params(y[:split], history.start, history.step_s)
        except NotEnoughHistoryError as exc:  # the fit window's need, as the whole history's
            # The fit window is about half the history: each sample it lacks is two more.
            need = max(self._history_need(exc.need), have + 2 * max(0, exc.need - exc.have))
            what = exc.detail or f"has {exc.have}, needs {exc.need}"
            raise NotEnoughHistoryError(
                self.name, have, need,
                f"its fit window, the {split} steps before the holdout: {what}") from None
        n_cal = max(1, int(origins.shape[0] * SCORE_SPLIT))
        if self.parameter_free:
            first = max(self._first_origin(), int(origins[0]) - max(0, MAX_CAL_ORIGINS - n_cal))
            before = np.arange(first, int(origins[0]), dtype=np.int64)
            origins = np.concatenate((before, origins))
            n_cal += int(before.shape[0])
        self._tune_on_calibration(y, origins, n_cal)
        paths = self._paths(y, history.start, history.step_s, origins, self.horizon)
        if not np.isfinite(paths).any():
            raise ValueError(f"{self.name}: model produced no finite forecast on the holdout")
        actual = future_matrix(y, origins, self.horizon)
        scale, idle = scale_and_idle(y)
        self.calibrate(Holdout(origins, actual, paths, scale[origins][:, None], n_cal,
                               idle[origins][:, None]))
        self._scale_floor = scale_floor(y)
        self._y = y[-self.lookback():].copy()
        self._start = history.start + (n - self._y.shape[0]) * history.step_s
        self.trained_from, self.trained_to = history.start, history.end
        return self

    def _history_need(self, fit_need: int) -> int:
        """Samples of history for a fit window of `fit_need`: the holdout takes half (and at
        least the horizon plus ten origins) of the history (`holdout_origins`)."""
        n = max(math.ceil(fit_need / (1.0 - HOLDOUT_FRACTION)), fit_need + self.horizon + 10)
        while n > 1 and holdout_split(n - 1, self.horizon) >= fit_need:
            n -= 1  # the rounding of half the history may allow one sample less
        while holdout_split(n, self.horizon) < fit_need:
            n += 1
        return n

    def _holdout_detail(self, fit_need: int) -> str:
        """What a history of `_history_need(fit_need)` samples is made of, for the message."""
        need = self._history_need(fit_need)
        split = holdout_split(need, self.horizon)
        return (f"{split} to fit, then {need - split} held out to calibrate and score: half "
                f"the history, at least the horizon {self.horizon} + 10")

    def calibrate(self, hold: Holdout) -> None:
        """Choose absolute or relative errors, score honestly, keep the errors per lead.

        Absolute errors are the default (what the naive baseline uses); relative errors
        are chosen only when their pinball loss on the scoring origins is lower beyond
        noise (the same paired test as the selection guard): a flip on noise was seen to
        cost ~5% of pinball loss on bursty series.
        """
        q = self.provisioning_quantile
        cut = hold.n_cal
        err = hold.actual - hold.paths
        tried: dict[bool, tuple[FloatArray, FloatArray]] = {}
        errs = {False: hold.errors(False), True: hold.errors(True)}
        for scaled in (False, True):
            unit = hold.scale if scaled else np.ones_like(hold.scale)
            offs = _nanquantile_cols(errs[scaled][max(0, cut - MAX_CAL_ORIGINS):cut], q)
            upper = hold.paths[cut:] + unit[cut:] * offs[None, :]
            diff = hold.actual[cut:] - upper
            tried[scaled] = (upper, _row_nanmean(np.maximum(q * diff, (q - 1.0) * diff)))
        scaled = dm_upper(tried[True][1] - tried[False][1], self.horizon - 1) < 0.0
        upper = tried[scaled][0]
        actual = hold.actual[cut:]
        self._cal = _Calibration(errs[scaled][-MAX_CAL_ORIGINS:], scaled)
        diff = actual - upper
        pin = _row_nanmean(np.maximum(q * diff, (q - 1.0) * diff))
        abs_err = _row_nanmean(np.abs(actual - hold.paths[cut:]))
        self.losses = OriginLosses(abs_err, pin)
        ok = np.isfinite(actual) & np.isfinite(upper)
        cover = float((actual[ok] <= upper[ok]).mean()) if ok.any() else math.nan
        all_err = np.abs(err[cut:])
        mae = float(np.nanmean(all_err)) if np.isfinite(all_err).any() else math.nan
        self.scores = HoldoutScores(mae, pinball(actual, upper, q), cover, q,
                                    int(actual.shape[0]))
        self.holdout = hold

    def release(self) -> None:
        """Drop the holdout paths (selection is done; keeps pickles small)."""
        self.holdout = None
        self.losses = None

    def update(self, history: History) -> Self:
        """Merge newer samples into the buffer without refitting (cheap; see module doc).

        Forecasts whose every lead has now been observed add their errors to the
        calibration (online conformal), so the quantiles follow a change in volatility
        between retrains.
        """
        if self._y is None:
            raise RuntimeError(f"{self.name}: call fit before update")
        vals = fill_short_gaps(history.values, self.max_gap)
        tail = History(history.variant, history.start, history.step_s, vals)
        old_end = self._start + self._y.shape[0] * self._step_s
        self._y, self._start = merge_tail(self._y, self._start, self._step_s, tail,
                                          self.lookback())
        self._add_new_errors(round((old_end - self._start) / self._step_s) - 1)
        return self

    def _add_new_errors(self, old_last: int) -> None:
        """Errors of origins whose last lead lies after `old_last` (buffer index)."""
        assert self._y is not None
        y, h = self._y, self._cal.errors.shape[1]
        n = y.shape[0]
        lo = max(old_last - h + 1, n // 2, 0)
        hi = n - h  # origins lo..hi-1 have every lead observed
        if hi <= lo or h != self.horizon:
            return
        origins = np.arange(lo, hi, dtype=np.int64)
        err = future_matrix(y, origins, h) - self._paths(y, self._start, self._step_s,
                                                        origins, h)
        scale, idle = scale_and_idle(y, floor=self._scale_floor)
        if self._cal.scaled:
            err = err / scale[origins][:, None]
        err = np.where(idle[origins][:, None], np.nan, err)
        self._adapt_level(err)
        self._cal.add(np.asarray(err, dtype=np.float64))

    def _adapt_level(self, err: FloatArray) -> None:
        """Adaptive conformal: raise the level after misses, lower it after hits."""
        q = self.provisioning_quantile
        offs = self._cal.offsets(self._level())
        for row in err:
            ok = np.isfinite(row)
            if not ok.any():
                continue
            miss = float((row[ok] > offs[ok]).mean())
            self._level_shift += ACI_GAMMA * (miss - (1.0 - q))
        lo, hi = ACI_BOUNDS
        self._level_shift = float(np.clip(q + self._level_shift, lo, hi)) - q

    def _level(self) -> float:
        return self.provisioning_quantile + self._level_shift

    @property
    def level_shift(self) -> float:
        """How far adaptive conformal has moved the provisioning level (0 after a fit)."""
        return self._level_shift

    def continue_adaptation(self, previous: PointForecaster) -> bool:
        """Start from the adapted level of the model this one replaces (same level only).

        Adaptive conformal corrects coverage over hundreds of forecasts; a service retrains
        hourly, so resetting the level at every retrain would keep it from ever adapting.
        Measured on the shipped traces' backtests: p90 coverage on servegen-m-large rose
        from 0.84 to 0.88 (pinball 0.98 -> 0.95 of the baseline's) when carried over.
        """
        if abs(previous.provisioning_quantile - self.provisioning_quantile) > 1e-12:
            return False
        self._level_shift = previous._level_shift
        return True

    def point(self, horizon: int) -> FloatArray:
        """The point path for steps 1..horizon after the newest buffered sample."""
        if self._y is None:
            raise RuntimeError(f"{self.name}: call fit before predict")
        y = self._y
        origin = np.array([y.shape[0] - 1], dtype=np.int64)
        return np.asarray(self._paths(y, self._start, self._step_s, origin, horizon)[0])

    def predict(self, horizon: int, quantiles: Sequence[float]) -> dict[float, FloatArray]:
        """Quantile paths: point + (current scale or 1) x per-lead quantile of the errors."""
        h = check_horizon(horizon)
        qs = check_quantiles(quantiles)
        if self._y is None:
            raise RuntimeError(f"{self.name}: call fit before predict")
        point = self.point(h)
        if not np.isfinite(point).all():
            last = self._y[np.isfinite(self._y)]
            point = np.where(np.isfinite(point), point, last[-1] if last.size else np.nan)
        scale = current_scale(self._y, self._scale_floor) if self._cal.scaled else 1.0
        lead = np.minimum(np.arange(h), self._cal.errors.shape[1] - 1)
        out: dict[float, FloatArray] = {}
        for q in qs:
            level = self._level() if q == self.provisioning_quantile else q
            out[q] = point + scale * self._cal.offsets(level)[lead]
        return monotone_quantiles(out)


def dm_upper(d: FloatArray, lag: int, z: float = 1.0) -> float:
    """mean(d) + z x its HAC (Newey-West, Bartlett) standard error; +inf if too few values.

    `d` are per-origin loss differences (a - b); a clearly negative upper bound means `a`
    wins beyond noise. Forecasts from neighbouring origins overlap, hence the `lag`.
    """
    d = d[np.isfinite(d)]
    n = d.shape[0]
    if n < 5:
        return math.inf
    e = d - d.mean()
    gamma0 = float(e @ e) / n
    var = gamma0
    lags = min(max(0, lag), n // 4)
    for k in range(1, lags + 1):
        var += 2.0 * (1.0 - k / (lags + 1)) * float(e[k:] @ e[:-k]) / n
    # Bartlett weights keep var >= 0 in theory; guard rounding and tiny samples.
    var = max(var, 0.25 * gamma0)
    return float(d.mean()) + z * math.sqrt(var / n)


def current_scale(y: FloatArray, floor: float = 0.0) -> float:
    """`trailing_scale` at the newest sample, computed from the tail only (fast)."""
    return float(trailing_scale(y[-64:], floor=floor)[-1])


def _nanquantile_cols(rel: FloatArray, q: float) -> FloatArray:
    """Per-column quantile ignoring NaN; columns with no data get 0 (no adjustment)."""
    if rel.shape[0] == 0:
        return np.zeros(rel.shape[1])
    ok = np.isfinite(rel)
    if ok.all():
        return np.asarray(np.quantile(rel, q, axis=0), dtype=np.float64)
    filled = np.where(ok, rel, np.nan)
    counts = ok.sum(axis=0)
    out = np.zeros(rel.shape[1])
    cols = counts > 0
    if cols.any():
        out[cols] = np.nanquantile(filled[:, cols], q, axis=0)
    return out


def last_finite_index(y: FloatArray) -> IntArray:
    """`out[i]` = index of the newest finite sample at or before i (-1 if none)."""
    idx = np.where(np.isfinite(y), np.arange(y.shape[0]), -1)
    return np.asarray(np.maximum.accumulate(idx), dtype=np.int64)


def last_finite_values(y: FloatArray) -> FloatArray:
    """Forward-filled values: the newest finite sample at or before each index (NaN if none)."""
    li = last_finite_index(y)
    out = np.where(li >= 0, y[np.maximum(li, 0)], np.nan)
    return np.asarray(out, dtype=np.float64)


class NaivePoint(PointForecaster):
    """The last observed value, calibrated like every other candidate (a baseline)."""

    name = "naive"
    min_fit = 1
    parameter_free = True

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        del y, start, step_s

    def lookback(self) -> int:
        return 64

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        last = last_finite_values(y)[origins]
        return np.repeat(last[:, None], horizon, axis=1)


class SeasonalNaivePoint(PointForecaster):
    """The value one season ago (falls back to the last value where that is missing)."""

    parameter_free = True

    def __init__(self, period_s: int, name: str, horizon: int = 30,
                 provisioning_quantile: float = 0.9, max_gap: int = DEFAULT_MAX_GAP) -> None:
        super().__init__(horizon, provisioning_quantile, max_gap)
        self.period_s = period_s
        self.name = name
        self._period = 1

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        self._period = max(1, round(self.period_s / step_s))
        if y.shape[0] < self._period + 1:
            raise NotEnoughHistoryError(self.name, y.shape[0], self._period + 1)

    def lookback(self) -> int:
        return self._period + 64

    def _first_origin(self) -> int:
        return self._period

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        p = self._period
        k = np.arange(1, horizon + 1)
        idx = origins[:, None] + k[None, :] - p * ((k[None, :] - 1) // p + 1)
        vals = np.where(idx >= 0, y[np.maximum(idx, 0)], np.nan)
        last = last_finite_values(y)[origins][:, None]
        return np.asarray(np.where(np.isfinite(vals), vals, last), dtype=np.float64)


class WindowAveragePoint(PointForecaster):
    """The mean of the last k steps (a baseline), k chosen on the calibration origins.

    The window is chosen from `baselines.WINDOW_GRID` (bounded by the history) by MAE on the
    calibration origins whose every lead precedes the first scoring origin, so its holdout
    score, like every model's, is out of sample.
    """

    name = "window_average"
    min_fit = 1
    parameter_free = True

    def __init__(self, horizon: int = 30, provisioning_quantile: float = 0.9,
                 max_gap: int = DEFAULT_MAX_GAP, grid: Sequence[int] = WINDOW_GRID) -> None:
        super().__init__(horizon, provisioning_quantile, max_gap)
        if not grid or min(grid) < 1:
            raise ValueError(f"window grid must hold positive step counts, got {list(grid)!r}")
        self.grid = tuple(sorted(set(int(k) for k in grid)))
        self.k = self.grid[0]

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        del y, start, step_s

    def _tune_on_calibration(self, y: FloatArray, origins: IntArray, n_cal: int) -> None:
        first_scored = int(origins[min(n_cal, origins.shape[0] - 1)])
        cal = origins[:n_cal]
        cal = cal[cal + self.horizon <= first_scored]
        if cal.shape[0] == 0:
            cal = origins[:max(1, n_cal)]
        self.k = choose_window(y, cal, self.horizon, self.grid)

    def lookback(self) -> int:
        return max(64, max(self.grid) + 8)

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        level = trailing_means(y, self.k)[origins]
        return np.repeat(level[:, None], horizon, axis=1)
