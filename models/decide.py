"""The replica decision: demand forecast in, replica target out, every clamp with a reason.

A pipeline in the spirit of the HPA's `normalizeDesiredReplicasWithBehaviors`, but pure:
`now` and the recommendation history are arguments, so decisions replay exactly.

    forecast need  demand at the provisioning quantile over the window that starts when a
                   replica started now would be ready (now + cold start), at target utilisation
    reactive floor what live signals (queue, KV cache) need now, computed by the controller
    dead band      no change while the forecast is within `tolerance` of the current fleet
    stabilisation  scale down no lower than the highest recent recommendation, and never
                   below what the forecast needs before a replacement could be ready
    rate limits    at most N pods up / down per period, counted from `state.scale_events`
    min / max      the policy's bounds
    zero guard     0 only when min_replicas is 0 and demand is known to be zero

Missing data never scales down: without a forecast the fleet holds (the floor may raise it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from models.cost import fleet_cost

_EPS = 1e-9


class ReasonCode(StrEnum):
    """Why a step of the pipeline set the number it did (lands in the variant's status)."""

    FORECAST_PEAK = "ForecastPeak"
    NO_FORECAST = "NoForecast"
    REACTIVE_FLOOR = "ReactiveFloor"
    WITHIN_TOLERANCE = "WithinTolerance"
    SCALE_DOWN_STABILISED = "ScaleDownStabilised"
    FORECAST_NEEDS_SOON = "ForecastNeedsSoon"
    SCALE_UP_LIMITED = "ScaleUpLimited"
    SCALE_DOWN_LIMITED = "ScaleDownLimited"
    AT_MAX = "AtMax"
    AT_MIN = "AtMin"
    DEMAND_NOT_ZERO = "DemandNotKnownZero"
    QUOTA = "AtGpuQuota"
    REACTIVE = "Reactive"


@dataclass(frozen=True)
class DemandForecast:
    """Forecast load (requests/s) for consecutive steps starting at `start`.

    `quantiles[q][i]` is the q-quantile of mean load over `[start + i*step_s, +step_s)`.
    NaN or infinite values are treated as missing, never as zero load.
    """

    start: float
    step_s: int
    quantiles: Mapping[float, npt.NDArray[np.float64]]

    def __post_init__(self) -> None:
        if self.step_s <= 0:
            raise ValueError(f"forecast step_s must be positive, got {self.step_s!r}")


@dataclass(frozen=True)
class ScalingPolicy:
    """How aggressively to follow the forecast; defaults mirror the HPA's where they exist."""

    min_replicas: int = 1
    max_replicas: int = 100
    #: Forecast quantile provisioned for (see `models.headroom` to tune it from SLO misses).
    provisioning_quantile: float = 0.9
    #: Share of a replica's capacity at SLO to plan for; the rest absorbs forecast error.
    target_utilisation: float = 0.85
    #: No change while the forecast need is within this share of the current replicas.
    tolerance: float = 0.1
    scale_up_pods: int = 4
    scale_up_period_s: float = 60.0
    scale_down_pods: int = 1
    scale_down_period_s: float = 60.0
    scale_down_stabilisation_s: float = 300.0
    #: Length of the window, from now + cold start, whose peak demand is provisioned for.
    forecast_window_s: float = 300.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            problems.append(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                            f"got {self.min_replicas}, {self.max_replicas}")
        if not 0 < self.provisioning_quantile < 1:
            problems.append(f"provisioning_quantile must be in (0, 1), got "
                            f"{self.provisioning_quantile}")
        if not 0 < self.target_utilisation <= 1:
            problems.append(f"target_utilisation must be in (0, 1], got "
                            f"{self.target_utilisation}")
        if self.tolerance < 0 or self.scale_up_pods < 1 or self.scale_down_pods < 1:
            problems.append("tolerance must be >= 0 and scale_*_pods >= 1")
        if min(self.scale_up_period_s, self.scale_down_period_s) <= 0 or \
                min(self.scale_down_stabilisation_s, self.forecast_window_s) < 0:
            problems.append("periods must be > 0, stabilisation and window >= 0")
        if problems:
            raise ValueError("invalid ScalingPolicy: " + "; ".join(problems))


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
    """The replica target and how it was reached; cost fields describe `replicas`."""

    replicas: int
    current: int
    demand: float
    capacity_per_replica: float
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    #: Target before stabilisation and rate limits: what `next_state` remembers, as the HPA
    #: remembers recommendations, so stabilisation compares like with like.
    recommendation: int | None = None
    #: Forecast quantile actually used (after interpolation or edge fallback).
    quantile: float | None = None
    #: The forecast's need alone, and the reactive floor (None when not set).
    predictive: int | None = None
    reactive: int | None = None
    gpu_hours_per_hour: float = 0.0
    cost_per_hour: float = 0.0
    cost_per_1k_tokens: float | None = None

    @property
    def changed(self) -> bool:
        return self.replicas != self.current

    @property
    def unserved_rps(self) -> float:
        """Demand beyond what `replicas` serve at the SLO (0 when demand is unknown)."""
        if not math.isfinite(self.demand):
            return 0.0
        return max(0.0, self.demand - self.replicas * self.capacity_per_replica)

    def reason_codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)


class _Trail:
    """Collects the reasons as the pipeline runs; a step that changes nothing leaves none."""

    def __init__(self) -> None:
        self.reasons: list[Reason] = []

    def step(self, code: ReasonCode, message: str, before: int, after: int) -> int:
        if after != before:
            self.reasons.append(Reason(code.value, message, before, after))
        return after

    def note(self, code: ReasonCode, message: str, n: int) -> None:
        self.reasons.append(Reason(code.value, message, n, n))


@dataclass(frozen=True)
class _Need:
    """What the forecast asks for: the peak ahead, and what is needed before then."""

    demand: float
    soon_demand: float
    raw: float  # replicas, unrounded
    replicas: int
    soon_replicas: int
    quantile: float
    message: str


def _quantile_values(forecast: DemandForecast, q: float
                     ) -> tuple[npt.NDArray[np.float64], float] | None:
    """The forecast at quantile `q`: exact, interpolated between neighbours, or nearest edge."""
    levels = sorted(forecast.quantiles)
    if not levels:
        return None
    arrays = {k: np.asarray(forecast.quantiles[k], dtype=np.float64) for k in levels}
    for k in levels:
        if abs(k - q) < _EPS:
            return arrays[k], k
    if q < levels[0] or q > levels[-1]:
        edge = levels[0] if q < levels[0] else levels[-1]
        return arrays[edge], edge
    hi = next(k for k in levels if k > q)
    lo = max(k for k in levels if k < q)
    w = (q - lo) / (hi - lo)
    return (1 - w) * arrays[lo] + w * arrays[hi], q


def _window_peak(values: npt.NDArray[np.float64], starts: npt.NDArray[np.float64],
                 step_s: float, t0: float, t1: float, closed: bool) -> float | None:
    """Peak of finite values over steps overlapping [t0, t1] (or [t0, t1) when not closed)."""
    ends = starts + step_s
    inside = (ends > t0) & ((starts <= t1) if closed else (starts < t1))
    window = values[inside]
    window = window[np.isfinite(window)]
    return float(np.max(np.maximum(window, 0.0))) if window.size else None


def _replicas_for(demand: float, capacity: float, utilisation: float) -> tuple[float, int]:
    raw = demand / (capacity * utilisation)
    return raw, max(0, math.ceil(raw - _EPS))


def _forecast_need(forecast: DemandForecast, capacity: float, cold_start_s: float,
                   policy: ScalingPolicy, q: float, now: float) -> _Need | str:
    """The forecast's need, or a message saying why the forecast cannot be used."""
    picked = _quantile_values(forecast, q)
    if picked is None:
        return "forecast has no quantiles"
    values, used_q = picked
    starts = forecast.start + forecast.step_s * np.arange(values.shape[0], dtype=np.float64)
    ready_at = now + cold_start_s
    demand = _window_peak(values, starts, forecast.step_s, ready_at,
                          ready_at + policy.forecast_window_s, closed=True)
    if demand is None:
        return (f"forecast has no finite values from t+{cold_start_s:.0f}s (when a replica "
                f"started now would be ready)")
    soon = _window_peak(values, starts, forecast.step_s, now, ready_at, closed=False) or 0.0
    raw, need = _replicas_for(demand, capacity, policy.target_utilisation)
    _, soon_need = _replicas_for(soon, capacity, policy.target_utilisation)
    note = "" if abs(used_q - q) < _EPS else f" (p{q * 100:g} not forecast, nearest used)"
    message = (f"p{used_q * 100:g} demand {demand:.3g} req/s over "
               f"[t+{cold_start_s:.0f}s, +{policy.forecast_window_s:.0f}s] needs {need} at "
               f"{policy.target_utilisation:.0%} of {capacity:.3g} req/s{note}")
    return _Need(demand, soon, raw, need, soon_need, used_q, message)


def _dead_band(n: int, need: _Need, current: int, policy: ScalingPolicy,
               floor: int | None, trail: _Trail) -> int:
    """Hold the current fleet while the forecast is within tolerance of it (HPA tolerance).

    The band compares the unrounded need to the current replicas, like the HPA's usage
    ratio; it never overrides a reactive floor above the current fleet.
    """
    if current == 0 or n == current or (floor is not None and floor > current):
        return n
    if abs(need.raw / current - 1.0) <= policy.tolerance:
        return trail.step(ReasonCode.WITHIN_TOLERANCE,
                          f"need {need.raw:.2f} within {policy.tolerance:.0%} of {current}",
                          n, current)
    return n


def _stabilise_down(n: int, current: int, need: _Need | None, state: ScalingState,
                    policy: ScalingPolicy, now: float, trail: _Trail) -> int:
    """Scale down only as far as every recent recommendation and the near-term forecast allow.

    A replica removed now takes a cold start to come back, so demand forecast before then
    must be served by the replicas that are already up.
    """
    if n >= current:
        return n
    since = now - policy.scale_down_stabilisation_s
    peak = max((r for ts, r in state.recommendations if since <= ts <= now), default=n)
    if peak > n:
        n = trail.step(ReasonCode.SCALE_DOWN_STABILISED,
                       f"highest recommendation in the last "
                       f"{policy.scale_down_stabilisation_s:.0f}s is {peak}",
                       n, min(peak, current))
    if need is not None and need.soon_replicas > n:
        n = trail.step(ReasonCode.FORECAST_NEEDS_SOON,
                       f"forecast needs {need.soon_replicas} ({need.soon_demand:.3g} req/s) "
                       f"before a replacement could be ready", n, min(need.soon_replicas,
                                                                     current))
    return n


def break_even_hold_s(cold_start_s: float, forecast_step_s: float) -> float:
    """How long a scale-down should wait: the longer of a cold start and a forecast step.

    A replica removed and re-ordered within a cold start costs more GPU time (its cold start
    is paid again) than keeping it idle would have: holding each scale-down for one cold
    start bounds the waste at twice the best schedule (the ski-rental argument). And the
    forecast changes its mind once per step, when a window completes; within a step a lower
    recommendation comes from the live correction of the current window, which the next
    window's forecast often takes back. Replays saw 3-4 replicas removed in a window's last
    minutes and re-ordered at its end, every window (5x the cold starts of the oracle).
    """
    if cold_start_s < 0 or forecast_step_s < 0:
        raise ValueError(f"cold_start_s={cold_start_s} and forecast_step_s={forecast_step_s} "
                         "must be >= 0")
    return max(cold_start_s, forecast_step_s)


def scale_down_hold_s(configured: float | None, cold_start_s: float,
                      forecast_step_s: float) -> float:
    """The configured scale-down stabilisation, or `break_even_hold_s` when none is set."""
    if configured is not None:
        return configured
    return break_even_hold_s(cold_start_s, forecast_step_s)


def _pods_moved(state: ScalingState, now: float, period_s: float, up: bool) -> int:
    """Pods added (or removed) by scale events in the period ending now."""
    total = 0
    for ts, before, after in state.scale_events:
        if now - period_s < ts <= now:
            total += max(0, after - before) if up else max(0, before - after)
    return total


def _rate_limit(n: int, current: int, state: ScalingState, policy: ScalingPolicy,
                now: float, trail: _Trail) -> int:
    """At most `scale_*_pods` per period, counting what earlier events already used."""
    if n > current:
        used = _pods_moved(state, now, policy.scale_up_period_s, up=True)
        limit = current + max(0, policy.scale_up_pods - used)
        if n > limit:
            n = trail.step(ReasonCode.SCALE_UP_LIMITED,
                           f"at most +{policy.scale_up_pods} per {policy.scale_up_period_s:.0f}s"
                           f" ({used} used)", n, limit)
    elif n < current:
        used = _pods_moved(state, now, policy.scale_down_period_s, up=False)
        limit = current - max(0, policy.scale_down_pods - used)
        if n < limit:
            n = trail.step(ReasonCode.SCALE_DOWN_LIMITED,
                           f"at most -{policy.scale_down_pods} per "
                           f"{policy.scale_down_period_s:.0f}s ({used} used)", n, limit)
    return n


def _bounds(n: int, policy: ScalingPolicy, trail: _Trail) -> int:
    if n > policy.max_replicas:
        n = trail.step(ReasonCode.AT_MAX, f"max_replicas is {policy.max_replicas}", n,
                       policy.max_replicas)
    if n < policy.min_replicas:
        n = trail.step(ReasonCode.AT_MIN, f"min_replicas is {policy.min_replicas}", n,
                       policy.min_replicas)
    return n


def _zero_guard(n: int, need: _Need | None, floor: int | None, trail: _Trail) -> int:
    """Zero replicas only on proof of zero demand: unknown demand is not zero demand."""
    if n > 0:
        return n
    known_zero = need is not None and need.demand == 0 and need.soon_demand == 0 \
        and not floor
    if known_zero:
        return n
    return trail.step(ReasonCode.DEMAND_NOT_ZERO, "demand is not known to be zero: keeping one "
                      "replica", n, 1)


def _check(capacity_per_replica: float, cold_start_s: float, state: ScalingState) -> None:
    if capacity_per_replica <= 0 or not math.isfinite(capacity_per_replica):
        raise ValueError(f"capacity_per_replica must be positive, got {capacity_per_replica!r}"
                         " (a variant that cannot meet its SLO must not be scaled on it)")
    if cold_start_s < 0 or not math.isfinite(cold_start_s):
        raise ValueError(f"cold_start_s must be >= 0, got {cold_start_s!r}")
    if state.current_replicas < 0:
        raise ValueError(f"current_replicas must be >= 0, got {state.current_replicas}")


@dataclass(frozen=True)
class Recommendation:
    """Stage one of the pipeline: what the forecast and live signals ask for, before the
    behaviour (stabilisation, rate limits, bounds) is applied.

    Peers emulated for comparison (an HPA, a queue scaler) build one from their own formula
    with `Recommendation.of` and hand it to `normalise`, the stage the service runs.
    """

    replicas: int
    #: The forecast's need alone (None without a usable forecast).
    predictive: int | None
    floor: int | None
    demand: float
    quantile: float | None
    reasons: tuple[Reason, ...]
    need: _Need | None = field(default=None, repr=False)

    @staticmethod
    def of(replicas: int, code: ReasonCode, message: str, current: int) -> Recommendation:
        """A recommendation from a formula of the caller's own (an emulated peer)."""
        trail = _Trail()
        trail.step(code, message, current, replicas)
        return Recommendation(replicas, None, None, math.nan, None, tuple(trail.reasons))


def recommend(forecast: DemandForecast | None, capacity_per_replica: float,
              cold_start_s: float, policy: ScalingPolicy, current: int, now: float,
              reactive_floor: int | None = None, *, quantile: float | None = None,
              floor_why: str = "") -> Recommendation:
    """Stage one: the forecast's need at the quantile, raised to the reactive floor, held
    inside the dead band. `forecast=None` means no usable forecast: hold, or follow the floor.
    """
    q = policy.provisioning_quantile if quantile is None else quantile
    trail = _Trail()
    found = (_forecast_need(forecast, capacity_per_replica, cold_start_s, policy, q, now)
             if forecast is not None else "no usable forecast")
    need = found if isinstance(found, _Need) else None
    if need is None:
        n = current
        trail.note(ReasonCode.NO_FORECAST, f"{found}: holding {current} replicas", current)
    else:
        n = trail.step(ReasonCode.FORECAST_PEAK, need.message, current, need.replicas)
    if reactive_floor is not None and reactive_floor > n:
        n = trail.step(ReasonCode.REACTIVE_FLOOR,
                       f"live signals need {reactive_floor}" + (f" ({floor_why})"
                                                                 if floor_why else ""),
                       n, reactive_floor)
    if need is not None:
        n = _dead_band(n, need, current, policy, reactive_floor, trail)
    return Recommendation(n, need.replicas if need is not None else None, reactive_floor,
                          need.demand if need is not None else math.nan,
                          need.quantile if need is not None else None, tuple(trail.reasons),
                          need)


def normalise(rec: Recommendation, policy: ScalingPolicy, state: ScalingState, now: float,
              *, quota: int | None = None, quota_why: str = "") -> tuple[int, tuple[Reason, ...]]:
    """Stage two, the HPA's `normalizeDesiredReplicasWithBehaviors`: stabilisation (and the
    forecast's near-term need), rate limits, bounds, the GPU quota, the zero guard; every
    clamp adds a reason to the recommendation's."""
    current = state.current_replicas
    trail = _Trail()
    trail.reasons.extend(rec.reasons)
    n = _stabilise_down(rec.replicas, current, rec.need, state, policy, now, trail)
    n = _rate_limit(n, current, state, policy, now, trail)
    n = _bounds(n, policy, trail)
    if quota is not None and n > max(quota, 0):
        n = trail.step(ReasonCode.QUOTA, quota_why or f"GPU quota allows {quota}", n,
                       max(quota, 0))
    n = _zero_guard(n, rec.need, rec.floor, trail)
    return n, tuple(trail.reasons)


def decide(
    forecast: DemandForecast | None,
    capacity_per_replica: float,
    cold_start_s: float,
    policy: ScalingPolicy,
    state: ScalingState,
    now: float,
    reactive_floor: int | None = None,
    *,
    quantile: float | None = None,
    gpus_per_replica: int = 1,
    gpu_hourly_usd: float = 0.0,
    tokens_per_request: float | None = None,
    floor_why: str = "",
    quota: int | None = None,
    quota_why: str = "",
) -> Decision:
    """Replica target for a variant: `recommend` then `normalise`, with costs.

    `forecast=None` means no usable forecast: hold or react. `quantile` overrides
    `policy.provisioning_quantile` (e.g. from `models.headroom`). The cost fields use
    `gpus_per_replica`, `gpu_hourly_usd` and, for cost per 1k tokens, `tokens_per_request`
    (prompt + output) applied to the demand the replicas can serve.
    """
    _check(capacity_per_replica, cold_start_s, state)
    rec = recommend(forecast, capacity_per_replica, cold_start_s, policy,
                    state.current_replicas, now, reactive_floor, quantile=quantile,
                    floor_why=floor_why)
    n, reasons = normalise(rec, policy, state, now, quota=quota, quota_why=quota_why)
    return _priced(n, state.current_replicas, rec, capacity_per_replica, reasons,
                   gpus_per_replica, gpu_hourly_usd, tokens_per_request)


def _priced(n: int, current: int, rec: Recommendation, capacity_per_replica: float,
            reasons: tuple[Reason, ...], gpus_per_replica: int, gpu_hourly_usd: float,
            tokens_per_request: float | None) -> Decision:
    demand = rec.demand
    served = min(demand, n * capacity_per_replica) if math.isfinite(demand) else None
    tokens = served * tokens_per_request if served is not None and tokens_per_request else None
    cost = fleet_cost(n, gpus_per_replica, gpu_hourly_usd, tokens)
    return Decision(n, current, demand, capacity_per_replica, reasons,
                    recommendation=rec.replicas, quantile=rec.quantile,
                    predictive=rec.predictive, reactive=rec.floor,
                    gpu_hours_per_hour=cost.gpu_hours_per_hour,
                    cost_per_hour=cost.cost_per_hour,
                    cost_per_1k_tokens=cost.cost_per_1k_tokens)


def next_state(state: ScalingState, decision: Decision, now: float,
               policy: ScalingPolicy) -> ScalingState:
    """The state after acting on `decision` at `now`, with history older than needed dropped.

    Assumes the target was applied; a controller that observed a different replica count
    should `replace(..., current_replicas=observed)` afterwards.
    """
    keep = max(policy.scale_down_stabilisation_s, policy.scale_up_period_s,
               policy.scale_down_period_s)
    rec = decision.recommendation if decision.recommendation is not None else decision.replicas
    recs = (*((ts, r) for ts, r in state.recommendations if ts >= now - keep), (now, rec))
    events = tuple(e for e in state.scale_events if e[0] > now - keep)
    if decision.replicas != state.current_replicas:
        events = (*events, (now, state.current_replicas, decision.replicas))
    return replace(state, current_replicas=decision.replicas, recommendations=recs,
                   scale_events=events)
