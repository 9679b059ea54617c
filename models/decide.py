"""The replica decision: demand forecast in, replica target out, every clamp with a reason.

A pipeline in the spirit of the HPA's `normalizeDesiredReplicasWithBehaviors`, but pure:
`now` and the recommendation history are arguments, so decisions replay exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class DemandForecast:
    """Forecast load (requests/s) for consecutive steps starting at `start`."""

    start: float
    step_s: int
    quantiles: Mapping[float, npt.NDArray[np.float64]]


@dataclass(frozen=True)
class ScalingPolicy:
    """How aggressively to follow the forecast; defaults mirror the HPA's where they exist."""

    min_replicas: int = 1
    max_replicas: int = 100
    provisioning_quantile: float = 0.9
    target_utilisation: float = 0.85
    tolerance: float = 0.1
    scale_up_pods: int = 4
    scale_up_period_s: float = 60.0
    scale_down_pods: int = 1
    scale_down_period_s: float = 60.0
    scale_down_stabilisation_s: float = 300.0


@dataclass(frozen=True)
class ScalingState:
    """What the decision needs to remember: current replicas and recent history."""

    current_replicas: int
    #: (time, recommended replicas) of recent decisions, oldest first.
    recommendations: tuple[tuple[float, int], ...] = ()
    #: (time, from, to) of recent scale changes, oldest first.
    scale_events: tuple[tuple[float, int, int], ...] = ()


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    before: int
    after: int


@dataclass(frozen=True)
class Decision:
    replicas: int
    current: int
    demand: float
    capacity_per_replica: float
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return self.replicas != self.current

    def reason_codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)


def decide(
    forecast: DemandForecast | None,
    capacity_per_replica: float,
    cold_start_s: float,
    policy: ScalingPolicy,
    state: ScalingState,
    now: float,
    reactive_floor: int | None = None,
) -> Decision:
    """Replica target for a variant. `forecast=None` means no usable forecast: hold or react."""
    if capacity_per_replica <= 0 or not math.isfinite(capacity_per_replica):
        raise ValueError(f"capacity_per_replica must be positive, got {capacity_per_replica!r}")
    current = state.current_replicas
    reasons: list[Reason] = []
    demand = math.nan

    def step(code: str, message: str, before: int, after: int) -> int:
        if after != before:
            reasons.append(Reason(code, message, before, after))
        return after

    if forecast is None:
        n = step("NoForecast", "no usable forecast: holding current replicas", current, current)
        reasons.append(Reason("NoForecast", "no usable forecast: holding current replicas",
                              current, current))
    else:
        values = forecast.quantiles[policy.provisioning_quantile]
        ready_at = now + cold_start_s
        t = forecast.start + forecast.step_s * np.arange(values.shape[0])
        window = values[(t + forecast.step_s > ready_at)]
        demand = float(np.max(window)) if window.size else float(values[-1])
        need = math.ceil(demand / (capacity_per_replica * policy.target_utilisation))
        n = step("ForecastPeak",
                 f"p{round(policy.provisioning_quantile * 100)} demand {demand:.2f} req/s "
                 f"from t+{cold_start_s:.0f}s needs {need} at "
                 f"{policy.target_utilisation:.0%} of {capacity_per_replica:.2f} req/s",
                 current, need)
        if current > 0 and abs(need / current - 1.0) <= policy.tolerance and need < current:
            n = step("WithinTolerance", f"within {policy.tolerance:.0%} of current", n, current)
    if reactive_floor is not None and reactive_floor > n:
        n = step("ReactiveFloor", f"live signals need {reactive_floor}", n, reactive_floor)
    if n < current:
        window_start = now - policy.scale_down_stabilisation_s
        recent = [r for ts, r in state.recommendations if ts >= window_start]
        peak = max(recent, default=n)
        if peak > n:
            n = step("ScaleDownStabilised", f"max recommendation in the last "
                     f"{policy.scale_down_stabilisation_s:.0f}s is {peak}", n, min(peak, current))
        limit = current - policy.scale_down_pods
        if n < limit:
            n = step("ScaleDownLimited", f"at most -{policy.scale_down_pods} per "
                     f"{policy.scale_down_period_s:.0f}s", n, limit)
    elif n > current:
        limit = current + policy.scale_up_pods
        if n > limit:
            n = step("ScaleUpLimited", f"at most +{policy.scale_up_pods} per "
                     f"{policy.scale_up_period_s:.0f}s", n, limit)
    if n > policy.max_replicas:
        n = step("AtMax", f"max_replicas is {policy.max_replicas}", n, policy.max_replicas)
    if n < policy.min_replicas:
        n = step("AtMin", f"min_replicas is {policy.min_replicas}", n, policy.min_replicas)
    return Decision(n, current, demand, capacity_per_replica, tuple(reasons))
