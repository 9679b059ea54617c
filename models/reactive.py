"""The reactive floor and forecast-accuracy tracking: pure functions of live signals.

The floor is the HPA's formula, `ceil(current * observed / target)`, over every live signal
that is present; the final target is the larger of predictive and reactive, so a forecast
miss is caught within one reconcile. A missing signal contributes nothing (it never reads as
zero load, which would let the floor fall).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from controller.protocols import LiveSignals


@dataclass(frozen=True)
class ReactiveTargets:
    capacity_rps: float
    target_utilisation: float
    queue_per_replica: float
    kv_cache_usage: float
    ttft_slo_s: float
    tolerance: float = 0.1


def reactive_floor(signals: LiveSignals | None, current: int,
                   targets: ReactiveTargets) -> tuple[int | None, str]:
    """Replicas the live signals demand now, with the signal that set it; None if no signal."""
    if signals is None:
        return None, "no live signals"
    base = max(current, 1)
    candidates: list[tuple[int, str]] = []

    def ratio(observed: float | None, target: float, label: str) -> None:
        if observed is None or not math.isfinite(observed) or target <= 0:
            return
        r = observed / target
        if abs(r - 1.0) <= targets.tolerance:
            r = 1.0
        candidates.append((math.ceil(base * r - 1e-9), f"{label} {observed:.3g} vs {target:.3g}"))

    if signals.request_rate is not None and math.isfinite(signals.request_rate):
        need = math.ceil(signals.request_rate / (targets.capacity_rps
                                                 * targets.target_utilisation) - 1e-9)
        candidates.append((need, f"load {signals.request_rate:.3g} req/s"))
    if signals.queue_depth is not None:
        ratio(signals.queue_depth / base, targets.queue_per_replica, "queue/replica")
    ratio(signals.kv_cache_usage, targets.kv_cache_usage, "KV-cache use")
    ratio(signals.ttft_p95_s, targets.ttft_slo_s, "TTFT p95")
    if not candidates:
        return None, "no live signals"
    n, why = max(candidates)
    return n, why


@dataclass
class AccuracyTracker:
    """Rolling comparison of the forecast against the naive baseline on realised load.

    When the model's recent error exceeds the baseline's by `margin`, the variant is served
    reactively until it recovers; misses (actual above the provisioned quantile) are counted.
    """

    window: int = 24
    margin: float = 1.05
    min_samples: int = 6

    def __post_init__(self) -> None:
        self._pending: dict[float, tuple[float, float, float]] = {}
        self._errors: deque[tuple[float, float, float]] = deque(maxlen=self.window)
        self.fallback_active = False
        self.misses = 0
        #: (provisioned, actual) of the most recently scored window.
        self.last_scored: tuple[float, float] | None = None

    def expect(self, ts: float, p50: float, provisioned: float, naive: float) -> None:
        """Remember what was predicted for the window starting at `ts`."""
        self._pending.setdefault(ts, (p50, provisioned, naive))
        if len(self._pending) > 4 * self.window:
            for old in sorted(self._pending)[: len(self._pending) - 4 * self.window]:
                del self._pending[old]

    def observe(self, ts: float, actual: float) -> bool:
        """Score the forecast for window `ts`; returns True if it was a miss."""
        pred = self._pending.pop(ts, None)
        if pred is None or not math.isfinite(actual):
            return False
        p50, provisioned, naive = pred
        self.last_scored = (provisioned, actual)
        self._errors.append((abs(p50 - actual), abs(naive - actual), actual))
        miss = actual > provisioned
        self.misses += int(miss)
        if len(self._errors) >= self.min_samples:
            model_err = sum(e[0] for e in self._errors)
            naive_err = sum(e[1] for e in self._errors)
            self.fallback_active = model_err > self.margin * naive_err and model_err > 0
        return miss

    @property
    def error_ratio(self) -> float:
        """Mean |p50 - actual| / mean actual over the window (NaN before any sample)."""
        if not self._errors:
            return math.nan
        total = sum(e[2] for e in self._errors)
        return sum(e[0] for e in self._errors) / total if total > 0 else math.nan
