"""The replica decision: demand forecast in, replica target out, every clamp with a reason.

The HPA's two stages, pure: `now` and the recommendation history are arguments, so decisions
replay exactly.

    recommend      forecast need: demand at the provisioning quantile over the window that
                   starts when a replica started now would be ready (now + cold start), at
                   target utilisation; raised to the reactive floor (live signals, computed
                   by `models.reactive`); held inside the dead band (`tolerance`)
    normalise      the HPA's `normalizeDesiredReplicasWithBehaviors` (`models.behaviour`):
                   stabilisation windows both ways, Pods/Percent rate limits per period with
                   selectPolicy, min / max; then never below what the forecast needs before a
                   replacement could be ready; the GPU quota; the zero guard (0 only when
                   min_replicas is 0 and demand is known to be zero)

Peers emulated for comparison feed their own recommendation to `normalise`. Missing data never
scales down: without a forecast the fleet holds (the floor may raise it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from models.behaviour import Behaviour
from models.behaviour import ReasonCode as HPAReasonCode
from models.behaviour import normalise as hpa_normalise
from models.cost import fleet_cost

_EPS = 1e-9


class ReasonCode(StrEnum):
    """Why a step of the pipeline set the number it did (lands in the variant's status)."""

    FORECAST_PEAK = "ForecastPeak"
    NO_FORECAST = "NoForecast"
    REACTIVE_FLOOR = "ReactiveFloor"
    WITHIN_TOLERANCE = "WithinTolerance"
    FORECAST_NEEDS_SOON = "ForecastNeedsSoon"
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
    """How aggressively to follow the forecast. `behaviour` is the HPA's `behavior` (its
    stabilisation windows, Pods/Percent policies and selectPolicy, normalised by the HPA's own
    pipeline, `models.behaviour`); the defaults are the HPA API's."""

    min_replicas: int = 1
    max_replicas: int = 100
    #: Forecast quantile provisioned for (see `models.headroom` to tune it from SLO misses).
    provisioning_quantile: float = 0.9
    #: Share of a replica's capacity at SLO to plan for; the rest absorbs forecast error.
    target_utilisation: float = 0.85
    #: No change while the forecast need is within this share of the current replicas.
    tolerance: float = 0.1
    behaviour: Behaviour = field(default_factory=Behaviour.hpa_defaults)
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
        if self.tolerance < 0:
            problems.append(f"tolerance must be >= 0, got {self.tolerance}")
        if self.forecast_window_s < 0:
            problems.append(f"forecast_window_s must be >= 0, got {self.forecast_window_s}")
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
    #: The forecast's need alone, and the reactive floor (None when not set) and why.
    predictive: int | None = None
    reactive: int | None = None
    reactive_why: str = ""
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

    def step(self, code: str, message: str, before: int, after: int) -> int:
        if after != before:
            self.reasons.append(Reason(str(code), message, before, after))
        return after

    def note(self, code: str, message: str, n: int) -> None:
        self.reasons.append(Reason(str(code), message, n, n))


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


def _needed_soon(n: int, current: int, need: _Need | None, trail: _Trail) -> int:
    """Never remove a replica the forecast needs again before a replacement could be ready:
    re-ordering it would cost a cold start of GPU time and miss the load meanwhile."""
    if n >= current or need is None or need.soon_replicas <= n:
        return n
    return trail.step(ReasonCode.FORECAST_NEEDS_SOON,
                      f"forecast needs {need.soon_replicas} ({need.soon_demand:.3g} req/s) "
                      f"before a replacement could be ready", n, min(need.soon_replicas,
                                                                     current))


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
    floor_why: str = ""

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
                          need, floor_why)


def _outside_bounds(current: int, policy: ScalingPolicy) -> bool:
    """A fleet outside [min, max] (0 is a fleet switched off by hand, left alone)."""
    return current > 0 and not policy.min_replicas <= current <= policy.max_replicas


def normalise(rec: Recommendation, policy: ScalingPolicy, state: ScalingState, now: float,
              *, quota: int | None = None, quota_why: str = "") -> tuple[int, tuple[Reason, ...]]:
    """Stage two, the HPA's `normalizeDesiredReplicasWithBehaviors`: stabilisation (and the
    forecast's near-term need), rate limits, bounds, the GPU quota, the zero guard; every
    clamp adds a reason to the recommendation's."""
    current = state.current_replicas
    trail = _Trail()
    trail.reasons.extend(rec.reasons)
    if _outside_bounds(current, policy):
        # Scaled outside the bounds (by hand, or the bounds changed): to the bound at once,
        # before any behaviour, as the HPA's reconcileAutoscaler does.
        above = current > policy.max_replicas
        n = trail.step(HPAReasonCode.TOO_MANY_REPLICAS if above
                       else HPAReasonCode.TOO_FEW_REPLICAS,
                       f"current replicas {current} outside [{policy.min_replicas}, "
                       f"{policy.max_replicas}]", rec.replicas,
                       policy.max_replicas if above else policy.min_replicas)
        if quota is not None and n > max(quota, 0):
            n = trail.step(ReasonCode.QUOTA, quota_why or f"GPU quota allows {quota}", n,
                           max(quota, 0))
        return n, tuple(trail.reasons)
    norm = hpa_normalise(rec.replicas, current, policy.min_replicas, policy.max_replicas,
                         state.recommendations, state.scale_events, now, policy.behaviour)
    n = trail.step(norm.stabilisation.code, norm.stabilisation.message, rec.replicas,
                   norm.stabilised)
    n = trail.step(norm.limit.code, norm.limit.message, n, norm.replicas)
    n = _needed_soon(n, current, rec.need, trail)
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
                    reactive_why=rec.floor_why,
                    gpu_hours_per_hour=cost.gpu_hours_per_hour,
                    cost_per_hour=cost.cost_per_hour,
                    cost_per_1k_tokens=cost.cost_per_1k_tokens)


def next_state(state: ScalingState, decision: Decision, now: float,
               policy: ScalingPolicy) -> ScalingState:
    """The state after acting on `decision` at `now`, with history older than needed dropped.

    Assumes the target was applied; a controller that observed a different replica count
    should `replace(..., current_replicas=observed)` afterwards.
    """
    keep = policy.behaviour.history_s()
    rec = decision.recommendation if decision.recommendation is not None else decision.replicas
    recs = tuple((ts, r) for ts, r in state.recommendations if ts > now - keep)
    if not _outside_bounds(state.current_replicas, policy):
        recs = (*recs, (now, rec))  # the HPA stores none on a tick that only enforced a bound
    events = tuple(e for e in state.scale_events if e[0] > now - keep)
    if decision.replicas != state.current_replicas:
        events = (*events, (now, state.current_replicas, decision.replicas))
    return replace(state, current_replicas=decision.replicas, recommendations=recs,
                   scale_events=events)
