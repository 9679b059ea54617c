"""The reactive floor and forecast-accuracy tracking: pure functions of live signals.

The floor acts on *observed overload* only: the ready fleet carrying more than its capacity
(by the tolerance), a queue worth more than `overload_queue_s` of the fleet's capacity and
more than `queue_per_replica` per ready replica, KV cache or TTFT p95 over their targets.
Then it asks for the live load plus the queue drained within `drain_s`, at the utilisation
target (without a load figure, the HPA's `ceil(ready * observed / target)`, at most doubling);
the decision takes the larger of that and the forecast, so a forecast miss is caught within
one reconcile.

Normal load is the forecast's business: the provisioning quantile *is* the headroom, and a
floor at `load / target_utilisation` on every reconcile would count it twice (the replay
measured the difference before the two paths were merged). Without a usable forecast the
policy serves the live load reactively instead (see `models.policy`). A missing signal
contributes nothing: it never reads as zero load, which would let the floor fall.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from models.signals import LiveSignals


@dataclass(frozen=True)
class ReactiveTargets:
    """When live signals mean overload, and how much the floor then asks for."""

    capacity_rps: float
    target_utilisation: float
    queue_per_replica: float
    kv_cache_usage: float
    ttft_slo_s: float
    tolerance: float = 0.1
    #: The floor drains the observed queue within this many seconds at full capacity.
    drain_s: float = 60.0
    #: A queue worth this many seconds of the ready fleet's capacity is overload.
    overload_queue_s: float = 1.0


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def reactive_floor(signals: LiveSignals | None, current: int,
                   targets: ReactiveTargets) -> tuple[int | None, str]:
    """Replicas the live signals demand now if the fleet is overloaded, with the signal that
    set it; (None, why) when nothing is overloaded or nothing is observed.

    `current` is the spec count; the serving fleet is `signals.ready_replicas` when observed
    (starting replicas do not serve), else `current`.
    """
    if signals is None:
        return None, "no live signals"
    ready = signals.ready_replicas if signals.ready_replicas is not None else current
    base = max(ready, 1)
    serving = base * targets.capacity_rps
    rate, queue = _finite(signals.request_rate), _finite(signals.queue_depth)
    candidates: list[tuple[int, str]] = []
    tol = 1.0 + targets.tolerance
    if rate is not None and rate > tol * serving:
        candidates.append((0, f"load {rate:.3g} req/s over {base} ready replicas' "
                              f"{serving:.3g}"))
    # A queue is overload when it is both long for the fleet (seconds of its capacity) and
    # over the per-replica target: a few waiting requests at 100 req/s a replica are noise.
    if queue is not None and queue > max(targets.overload_queue_s * serving,
                                         tol * targets.queue_per_replica * base):
        candidates.append((math.ceil(queue / targets.queue_per_replica - 1e-9),
                           f"queue {queue:.3g} ({queue / base:.3g}/replica, target "
                           f"{targets.queue_per_replica:.3g})"))
    for observed, target, label in (
            (_finite(signals.kv_cache_usage), targets.kv_cache_usage, "KV-cache use"),
            (_finite(signals.ttft_p95_s), targets.ttft_slo_s, "TTFT p95")):
        if observed is not None and target > 0 and observed > tol * target:
            candidates.append((math.ceil(base * observed / target - 1e-9),
                               f"{label} {observed:.3g} over {target:.3g}"))
    if not candidates:
        return None, "not overloaded"
    if rate is not None:
        # The amount comes from the load: the live load plus the queue drained within
        # `drain_s`, at the utilisation target. The per-signal ratios only detect overload
        # here: a queue or a TTFT grows far faster than the capacity missing (a queue of
        # 1,000 over a target of 4 is not 250 times the replicas).
        drain = math.ceil((rate + (queue or 0.0) / targets.drain_s)
                          / (targets.capacity_rps * targets.target_utilisation) - 1e-9)
        why = max(candidates)[1]
        return max(drain, ready), f"overload: {why}"
    # Without a load figure, the HPA's ratio, at most doubling the ready fleet per pass.
    n, why = max(candidates)
    return max(min(n, 2 * base), ready), f"overload: {why}"


#: The window averages the accuracy fallback holds the model against, beside naive: the
#: mean of the last k completed windows, for each k here.
WINDOW_AVERAGE_KS = (3, 6, 12)


@dataclass
class AccuracyTracker:
    """Rolling comparison of the forecast against the best of the naive baselines on
    realised load.

    The baselines are naive (the last completed window) and window averages (the mean of
    the last k windows, `WINDOW_AVERAGE_KS`): a noisy series around a level is forecast
    better by an average than by its last value, and a model that cannot beat that average
    should not be trusted either. When the model's recent error exceeds the best baseline's
    by `margin`, the policy centres the forecast on that baseline (the live load for naive,
    keeping the model's spread, so the calibrated headroom stays) until it recovers; misses
    (actual above the provisioned quantile) are counted.
    """

    #: Windows scored, and how much worse than the best baseline the model must be over
    #: them: a model about as good (bursty series) keeps its calibrated quantiles; only a
    #: model clearly worse (a broken fit, a regime change) hands over to the baseline.
    window: int = 48
    margin: float = 1.2
    min_samples: int = 12

    def __post_init__(self) -> None:
        # Baselines are keyed by how many windows they average: 1 is naive.
        self._pending: dict[float, tuple[float, float, dict[int, float]]] = {}
        self._errors: deque[tuple[float, dict[int, float], float]] = deque(maxlen=self.window)
        #: Loads of the windows scored so far, newest last (for the window averages).
        self._loads: deque[float] = deque(maxlen=max(WINDOW_AVERAGE_KS))
        self.fallback_active = False
        #: Windows averaged by the baseline with the least error over the window (1: naive,
        #: also before any score).
        self.best_k = 1
        self.misses = 0
        #: (provisioned, actual) of the most recently scored window.
        self.last_scored: tuple[float, float] | None = None

    @property
    def best_baseline(self) -> str:
        """The best baseline's name, as the backtest names it."""
        return "naive" if self.best_k == 1 else f"window_average({self.best_k})"

    def baselines(self, last: float) -> dict[int, float]:
        """Each baseline's forecast of the next window by the windows it averages (1 is
        naive), `last` being the newest load."""
        loads = [*self._loads, last]
        return {k: sum(loads[-k:]) / k for k in (1, *WINDOW_AVERAGE_KS) if len(loads) >= k}

    def expect(self, ts: float, p50: float, provisioned: float, naive: float) -> None:
        """Remember what was predicted for the window starting at `ts`, and what each
        baseline predicts from the newest completed window's load (`naive`)."""
        self._pending.setdefault(ts, (p50, provisioned, self.baselines(naive)))
        if len(self._pending) > 4 * self.window:
            for old in sorted(self._pending)[: len(self._pending) - 4 * self.window]:
                del self._pending[old]

    def observe(self, ts: float, actual: float) -> bool:
        """Score the forecast for window `ts`; returns True if it was a miss."""
        pred = self._pending.pop(ts, None)
        if math.isfinite(actual):
            self._loads.append(actual)
        if pred is None or not math.isfinite(actual):
            return False
        p50, provisioned, base = pred
        self.last_scored = (provisioned, actual)
        self._errors.append((abs(p50 - actual),
                             {k: abs(v - actual) for k, v in base.items()}, actual))
        miss = actual > provisioned
        self.misses += int(miss)
        if len(self._errors) >= self.min_samples:
            model_err = sum(e[0] for e in self._errors)
            # A baseline counts once it has forecast every window of the record.
            totals: dict[int, float] = {}
            for k in self._errors[-1][1]:
                if all(k in e[1] for e in self._errors):
                    totals[k] = sum(e[1][k] for e in self._errors)
            self.best_k = min(totals, key=lambda k: (totals[k], k))
            best = totals[self.best_k]
            self.fallback_active = model_err > self.margin * best and model_err > 0
        return miss

    def centre(self, live_rps: float) -> float:
        """Where the fallback centres demand: the live load when naive is the best
        baseline, else that window average of the completed windows."""
        if self.best_k == 1 or not self._loads:
            return live_rps
        loads = list(self._loads)[-self.best_k:]
        return sum(loads) / len(loads)

    @property
    def error_ratio(self) -> float:
        """Mean |p50 - actual| / mean actual over the window (NaN before any sample)."""
        if not self._errors:
            return math.nan
        total = sum(e[2] for e in self._errors)
        return sum(e[0] for e in self._errors) / total if total > 0 else math.nan
