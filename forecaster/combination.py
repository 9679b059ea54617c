"""Forecast combination: the equal-weight average of a few fitted candidates.

Averaging the best two or three forecasts is robustly better than picking one (the errors
of different models partly cancel, and a combination is less sensitive to which model
happened to win the selection window). Members are already fitted and replayed on the
same holdout origins, so the combination is calibrated and scored on those replays
without refitting anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from forecaster.base import FloatArray, History
from forecaster.calibrated import Holdout, IntArray, PointForecaster, _Calibration


class Combination(PointForecaster):
    """Equal-weight average of fitted members' point paths, with its own calibration."""

    def __init__(self, members: Sequence[PointForecaster]) -> None:
        if len(members) < 2:
            raise ValueError("a combination needs at least two fitted members")
        first = members[0]
        super().__init__(first.horizon, first.provisioning_quantile, first.max_gap)
        self.members = list(members)
        self.name = "combo(" + "+".join(m.name for m in self.members) + ")"
        holds = [m.holdout for m in self.members]
        if any(h is None or m._y is None for h, m in zip(holds, self.members, strict=True)):
            raise ValueError("combination members must be fitted (with holdout replays)")
        holds_ok = [h for h in holds if h is not None]
        n_score = min(h.actual.shape[0] - h.n_cal for h in holds_ok)
        rows = min(h.actual.shape[0] for h in holds_ok)
        tails = [h.tail(rows, n_score) for h in holds_ok]
        paths = np.mean(np.stack([t.paths for t in tails]), axis=0)
        t0 = tails[0]
        self.calibrate(Holdout(t0.origins, t0.actual, paths, t0.scale, t0.n_cal, t0.idle))
        donor = max(self.members, key=lambda m: 0 if m._y is None else m._y.shape[0])
        assert donor._y is not None
        self._y, self._start, self._step_s = donor._y.copy(), donor._start, donor._step_s
        self._scale_floor = max(m._scale_floor for m in self.members)
        self.trained_from, self.trained_to = first.trained_from, first.trained_to

    def release(self) -> None:
        """Drop replays and the members' own buffers and calibrations: the combination holds
        the buffer and calibrates its own average (members' errors were 60% of a pickled
        combination; 1,000 variants peaked at 3.8 GB with them)."""
        super().release()
        for m in self.members:
            m._y = None
            m._cal = _Calibration()
            m.release()

    def lookback(self) -> int:
        return max(m.lookback() for m in self.members)

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        raise NotImplementedError("a Combination is built from fitted members, not fitted")

    def fit(self, history: History) -> Self:
        raise NotImplementedError("a Combination is built from fitted members, not fitted")

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        """Each member replays from the tail it needs before the first origin (as `point`
        forecasts): the buffer is the longest member's (LightGBM keeps a week), and Holt's
        recursion over a week of minute steps cost ~10 ms at every update."""
        out = []
        first = int(origins.min()) if origins.shape[0] else 0
        for m in self.members:
            cut = max(0, first - m.lookback() + 1)
            out.append(m._paths(y[cut:], start + cut * step_s, step_s, origins - cut, horizon))
        return np.asarray(np.mean(np.stack(out), axis=0), dtype=np.float64)

    def point(self, horizon: int) -> FloatArray:
        """Each member forecasts from only the tail it needs (fast)."""
        if self._y is None:
            raise RuntimeError(f"{self.name}: call fit before predict")
        y = self._y
        out = []
        for m in self.members:
            k = min(y.shape[0], m.lookback())
            start = self._start + (y.shape[0] - k) * self._step_s
            origin = np.array([k - 1], dtype=np.int64)
            out.append(m._paths(y[-k:], start, self._step_s, origin, horizon)[0])
        return np.asarray(np.mean(np.stack(out), axis=0), dtype=np.float64)
