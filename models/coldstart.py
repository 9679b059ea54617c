"""A variant's cold start, measured: time from ordering a replica to its becoming ready.

The configured `profile.cold_start_s` is a prior; what a cluster delivers depends on node
provisioning, image pulls and weight loading, and drifts. Each scale-up the policy applies
orders replicas number `current+1 .. target`; the k-th is counted ready when the workload's
ready replicas first reach k, and the time since its order is one sample (observed at the
reconcile that sees it, so samples are rounded up to the reconcile interval and the metrics'
staleness: the figure is what the controller can act on, which is what it needs). Orders
cancelled by a scale-down before they are ready are dropped, never counted as slow.

The estimate is the p90 of the recent samples (the horizon and hold times must cover most
cold starts, not the median one), the prior until `min_samples` are on record, and never
outside [0, MAX_COLD_START_S].
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np

#: No replica takes longer than an hour to start, or it is broken, not slow.
MAX_COLD_START_S = 3600.0


class ColdStartEstimator:
    """The distribution of measured cold starts, with the configured value as its prior."""

    def __init__(self, prior_s: float, quantile: float = 0.9, max_samples: int = 50,
                 min_samples: int = 3, samples: Iterable[float] = ()) -> None:
        if not 0 <= prior_s <= MAX_COLD_START_S:
            raise ValueError(f"prior_s must be in [0, {MAX_COLD_START_S:.0f}], got {prior_s!r}")
        if not 0 < quantile < 1 or not 1 <= min_samples <= max_samples:
            raise ValueError(f"need 0 < quantile < 1 and 1 <= min_samples <= max_samples, got "
                             f"{quantile}, {min_samples}, {max_samples}")
        self.prior_s = prior_s
        self.quantile = quantile
        self.min_samples = min_samples
        self.samples: deque[float] = deque(
            (s for s in samples if math.isfinite(s) and 0 <= s <= MAX_COLD_START_S),
            maxlen=max_samples)
        #: (ordered at, replica number) of replicas ordered and not yet seen ready.
        self._pending: deque[tuple[float, int]] = deque()

    def ordered(self, now: float, before: int, after: int) -> None:
        """A scale from `before` to `after` replicas was applied at `now`."""
        if after > before:
            self._pending.extend((now, k) for k in range(before + 1, after + 1))
        elif after < before:
            # Replicas removed before they were ready: a ReplicaSet deletes unready pods
            # first, so the highest-numbered orders are the ones cancelled.
            self._pending = deque(p for p in self._pending if p[1] <= after)

    def observe(self, now: float, ready: int | None) -> None:
        """The workload's ready replicas at `now` (None: not observed)."""
        if ready is None:
            return
        while self._pending and self._pending[0][1] <= ready:
            at, _ = self._pending.popleft()
            wait = now - at
            if 0 <= wait <= MAX_COLD_START_S:
                self.samples.append(wait)
        # Orders older than any cold start can be are lost (the pods failed): drop them.
        while self._pending and now - self._pending[0][0] > MAX_COLD_START_S:
            self._pending.popleft()

    @property
    def measured(self) -> bool:
        return len(self.samples) >= self.min_samples

    @property
    def cold_start_s(self) -> float:
        """The p90 of the measured cold starts, or the prior until enough are on record."""
        if not self.measured:
            return self.prior_s
        return float(min(np.quantile(np.asarray(self.samples), self.quantile),
                         MAX_COLD_START_S))

    def explain(self) -> str:
        if not self.measured:
            return (f"configured {self.prior_s:.0f} s ({len(self.samples)} of "
                    f"{self.min_samples} measurements so far)")
        return (f"measured p{self.quantile * 100:.0f} {self.cold_start_s:.0f} s over "
                f"{len(self.samples)} scale-ups (configured {self.prior_s:.0f} s)")

    def snapshot(self) -> Sequence[float]:
        return list(self.samples)
