"""Gap handling and history checks shared by every model.

Real metrics have holes: a scrape that failed, a restarted exporter. A hole of a step or two
is safely bridged by a straight line, but a long hole is *unknown* load: filling it with zero
would teach a model that traffic vanished, and filling it with a line would invent a trend.
So short gaps are interpolated and long gaps stay NaN; the models mask NaN themselves.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from forecaster.base import FloatArray, History, NotEnoughHistoryError

#: Gaps of at most this many consecutive missing steps are linearly interpolated.
DEFAULT_MAX_GAP = 3


def nan_runs(values: FloatArray) -> list[tuple[int, int]]:
    """Half-open index ranges `[start, stop)` of consecutive NaN samples."""
    isnan = np.isnan(values).astype(np.int8)
    if not isnan.any():
        return []
    edges = np.diff(np.concatenate(([0], isnan, [0])))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def fill_short_gaps(values: FloatArray, max_gap: int = DEFAULT_MAX_GAP) -> FloatArray:
    """Linearly interpolate interior NaN runs of length <= `max_gap`; leave the rest NaN.

    Leading and trailing runs are never filled: there is no value on one side to draw the
    line to, and extrapolating the newest samples is the forecaster's job, not the cleaner's.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0 steps, got {max_gap!r}")
    out = np.array(values, dtype=np.float64, copy=True)
    n = out.shape[0]
    for start, stop in nan_runs(out):
        if start == 0 or stop == n or stop - start > max_gap:
            continue
        left, right = out[start - 1], out[stop]
        frac = np.arange(1, stop - start + 1, dtype=np.float64) / (stop - start + 1)
        out[start:stop] = left + (right - left) * frac
    return out


def prepare(history: History, max_gap: int = DEFAULT_MAX_GAP) -> History:
    """The history with short gaps bridged (see `fill_short_gaps`)."""
    return replace(history, values=fill_short_gaps(history.values, max_gap))


def require_history(model: str, history: History, need: int) -> None:
    """Raise `NotEnoughHistoryError` ("have N, need M") unless `need` valid samples exist."""
    have = history.n_valid()
    if have < need:
        raise NotEnoughHistoryError(model, have, need)


def steps_per(period_s: float, step_s: int) -> int:
    """How many samples of `step_s` make up `period_s` (at least one)."""
    return max(1, round(period_s / step_s))


#: The load scale never drops below this share of the series' mean load.
SCALE_FLOOR_SHARE = 0.05


def trailing_scale(values: FloatArray, window: int = 6, floor: float = 0.0) -> FloatArray:
    """Per-index robust load scale from data up to and including that index (no look-ahead).

    Used to express errors and features relative to the current load, so one error
    distribution serves the night and the peak, and one global model serves big and small
    variants. Floored at a small fraction of the series' mean so idle periods do not divide
    by zero. `floor` is a known lower bound from a longer history (`scale_floor` at fit
    time): a fitted model sees only a short recent buffer, and an outage that fills the buffer
    with zeros would otherwise floor the scale at 1e-6 and turn the recovery into relative
    errors of 1e9.
    """
    return scale_and_idle(values, window, floor)[0]


def scale_and_idle(values: FloatArray, window: int = 6, floor: float = 0.0
                   ) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """`trailing_scale` and where it sits on its floor (the series is idle there).

    An error made from an idle origin is not relative to anything: when the load comes
    back from an outage, "error / scale" is the whole load over the floor (20x the load at
    a 5% floor), and one such recovery would set the upper quantiles of every later
    forecast. Relative calibration leaves those origins out (`forecaster.calibrated`).
    """
    import pandas as pd

    s = pd.Series(values).rolling(window, min_periods=1).mean().ffill().to_numpy()
    # The floor is an *expanding* mean, so it too only uses data up to each index.
    base = pd.Series(np.abs(values)).expanding().mean().fillna(1.0).to_numpy()
    lower = np.maximum(SCALE_FLOOR_SHARE * base, max(floor, 1e-6))
    s = np.where(np.isfinite(s), s, lower)
    idle = np.asarray(s <= lower, dtype=np.bool_)
    return np.asarray(np.maximum(s, lower), dtype=np.float64), idle


def scale_floor(values: FloatArray) -> float:
    """The floor `trailing_scale` reaches at the end of `values` (a share of their mean)."""
    ok = np.isfinite(values)
    return SCALE_FLOOR_SHARE * float(np.abs(values[ok]).mean()) if ok.any() else 0.0


def merge_tail(values: FloatArray, start: float, step_s: int, tail: History,
               keep: int) -> tuple[FloatArray, float]:
    """Append (or overwrite with) a newer tail on the same grid; keep the last `keep` samples.

    Returns the new values and their start time. A tail that does not sit on the grid, or
    that leaves a hole after the stored data, is placed by index and the hole becomes NaN.
    """
    if tail.step_s != step_s:
        raise ValueError(f"tail step {tail.step_s}s differs from the model's step {step_s}s")
    offset = round((tail.start - start) / step_s)
    if offset < 0:
        # The tail starts before the stored data: take the tail's prefix as the new start.
        pad = np.full(-offset, np.nan)
        values = np.concatenate((pad, values))
        start = start + offset * step_s
        offset = 0
    end = offset + len(tail)
    if end > values.shape[0]:
        values = np.concatenate((values, np.full(end - values.shape[0], np.nan)))
    else:
        values = values.copy()
    fresh = tail.values
    mask = np.isfinite(fresh)
    values[offset:end][mask] = fresh[mask]
    if values.shape[0] > keep:
        cut = values.shape[0] - keep
        values = values[cut:]
        start = start + cut * step_s
    return values, start
