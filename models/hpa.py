"""The HPA's replica calculator and its per-tick loop, pure: metrics and history in, replicas out.

Ported (our own Python) from Kubernetes pkg/controller/podautoscaler/replica_calculator.go:

    plain_metric_replicas    `calcPlainMetricReplicas` after `groupPods`/`removeMetricsForPods`:
                             a per-pod metric (Pods metric, or a Resource metric when all pods
                             request the same amount) averaged over ready pods with metrics
    average_value_replicas   `GetExternalPerPodMetricReplicas` / `GetObjectPerPodMetricReplicas`:
                             an External or Object metric with an AverageValue target, e.g. the
                             queue-depth metric KEDA exposes: ceil(total / target per pod)
    value_replicas           `GetExternalMetricReplicas` / `GetObjectMetricReplicas` with a Value
                             target: usage ratio times the *ready* pod count

and horizontal.go's `reconcileAutoscaler`: the largest proposal over the metrics, then
`models.behaviour.normalise`. Inside the tolerance band every calculator returns the *spec*
replica count (pods still starting are kept, not cancelled). Pods that are unready (Pending, or
CPU pods in their initialisation window) and pods without metrics are the caller's counts: on a
scale-up they count as zero usage, missing ones count as exactly at target on a scale-down, and
if that would flip the direction or land inside the tolerance, the answer is the spec count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from models.behaviour import (
    Behaviour,
    Normalised,
    Reason,
    ReasonCode,
    Recommendation,
    ScaleEvent,
    normalise,
    record_recommendation,
    record_scale_event,
)

DEFAULT_TOLERANCE = 0.1


class NoMetricsError(ValueError):
    """No ready pod reported the metric: the HPA cannot compute a proposal (it does not scale)."""


@dataclass(frozen=True)
class Proposal:
    """One metric's replica proposal and the usage ratio (current / target) behind it."""

    replicas: int
    usage_ratio: float


def _within(ratio: float, tolerance: float) -> bool:
    return abs(1.0 - ratio) <= tolerance


def _check(current: int, target: float, tolerance: float) -> None:
    if current < 0:
        raise ValueError(f"current replicas must be >= 0, got {current!r}")
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"target must be a positive finite number, got {target!r}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")


def plain_metric_replicas(
    current: int,
    ready_values: Sequence[float],
    target: float,
    unready: int = 0,
    missing: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Proposal:
    """The HPA's proposal for a per-pod metric averaged against `target`.

    `current` is the spec replica count, `ready_values` the metric of each ready pod that
    reported it, `unready` the pods upstream's `groupPods` sets aside as unready (their metrics
    are dropped), `missing` the ready pods with no metric. Failed and deleting pods are left out.
    """
    _check(current, target, tolerance)
    if unready < 0 or missing < 0:
        raise ValueError(f"pod counts must be >= 0, got unready={unready!r}, missing={missing!r}")
    if any(not math.isfinite(v) or v < 0 for v in ready_values):
        raise ValueError(f"metric values must be finite and >= 0, got {list(ready_values)!r}")
    if not ready_values:
        raise NoMetricsError("did not receive metrics for any ready pods")
    ratio = sum(ready_values) / len(ready_values) / target
    scale_up_with_unready = unready > 0 and ratio > 1.0
    if not scale_up_with_unready and missing == 0:
        if _within(ratio, tolerance):
            return Proposal(current, ratio)
        return Proposal(math.ceil(ratio * len(ready_values)), ratio)

    total = sum(ready_values)
    counted = len(ready_values) + missing
    if missing and ratio < 1.0:
        total += missing * target  # on a scale-down, a pod without a metric is at target
    # on a scale-up (upstream's `else`, ratio >= 1) missing pods add zero usage
    if scale_up_with_unready:
        counted += unready  # unready pods add zero usage on a scale-up
    new_ratio = total / counted / target
    if _within(new_ratio, tolerance) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return Proposal(current, ratio)
    proposed = math.ceil(new_ratio * counted)
    if (new_ratio < 1.0 and proposed > current) or (new_ratio > 1.0 and proposed < current):
        return Proposal(current, ratio)  # the pod count changed the direction
    return Proposal(proposed, ratio)


def average_value_replicas(
    current: int, total: float, target_per_pod: float, tolerance: float = DEFAULT_TOLERANCE
) -> Proposal:
    """The HPA's proposal for an External/Object metric with an AverageValue target.

    ceil(total / target_per_pod) unless total / (target_per_pod x spec replicas) is within the
    tolerance, then the spec count. This is what a KEDA queue-depth ScaledObject asks of the HPA.
    """
    _check(current, target_per_pod, tolerance)
    if not (math.isfinite(total) and total >= 0):
        raise ValueError(f"metric total must be finite and >= 0, got {total!r}")
    wanted = math.ceil(total / target_per_pod)
    if current == 0:
        return Proposal(wanted, math.inf if total > 0 else 0.0)
    ratio = total / (target_per_pod * current)
    return Proposal(current if _within(ratio, tolerance) else wanted, ratio)


def value_replicas(
    current: int, ready_pods: int, value: float, target: float, tolerance: float = DEFAULT_TOLERANCE
) -> Proposal:
    """The HPA's proposal for an External/Object metric with a Value target (ratio x ready pods;
    from zero replicas, ceil(ratio))."""
    _check(current, target, tolerance)
    if ready_pods < 0 or not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"need ready_pods >= 0 and a finite value >= 0, got {ready_pods!r}, {value!r}"
        )
    ratio = value / target
    if current == 0:
        return Proposal(math.ceil(ratio), ratio)
    if _within(ratio, tolerance):
        return Proposal(current, ratio)
    return Proposal(math.ceil(ratio * ready_pods), ratio)


@dataclass(frozen=True)
class HPAState:
    """What the HPA controller remembers between ticks: recommendations and scale events."""

    recommendations: tuple[Recommendation, ...] = ()
    events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True)
class HPADecision:
    """One tick: the replicas to set, the metrics' proposal and the reasons along the way."""

    replicas: int
    proposal: int | None
    reasons: tuple[Reason, ...]
    normalised: Normalised | None = field(default=None)


def hpa_step(
    state: HPAState,
    now: float,
    current: int,
    proposals: Sequence[int],
    min_replicas: int,
    max_replicas: int,
    behaviour: Behaviour,
) -> tuple[HPADecision, HPAState]:
    """One `reconcileAutoscaler` pass: bounds first, then the largest metric proposal
    normalised with `behaviour`; returns the decision and the controller state after it.

    With no proposal (every metric failed) the HPA holds. A spec at 0 with min_replicas > 0 means
    autoscaling is off for the target, as upstream.
    """
    if current == 0 and min_replicas != 0:
        reason = Reason(
            ReasonCode.SCALING_DISABLED, "scaling is disabled since the replica count is 0"
        )
        return HPADecision(0, None, (reason,)), state
    if current > max_replicas or current < min_replicas:
        bound = max_replicas if current > max_replicas else min_replicas
        code = (
            ReasonCode.TOO_MANY_REPLICAS if current > max_replicas else ReasonCode.TOO_FEW_REPLICAS
        )
        reason = Reason(
            code, f"current replicas {current} outside [{min_replicas}, {max_replicas}]"
        )
        events = record_scale_event(state.events, now, current, bound, behaviour)
        return HPADecision(bound, None, (reason,)), HPAState(state.recommendations, events)
    if not proposals:
        reason = Reason(ReasonCode.READY_FOR_NEW_SCALE, "no metric produced a proposal: holding")
        return HPADecision(current, None, (reason,)), state
    proposal = max(proposals)
    norm = normalise(
        proposal,
        current,
        min_replicas,
        max_replicas,
        state.recommendations,
        state.events,
        now,
        behaviour,
    )
    recommendations = record_recommendation(state.recommendations, now, proposal, behaviour)
    events = record_scale_event(state.events, now, current, norm.replicas, behaviour)
    decision = HPADecision(norm.replicas, proposal, norm.reasons, norm)
    return decision, HPAState(recommendations, events)
