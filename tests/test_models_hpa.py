"""The HPA replica calculator held against the Kubernetes HPA's replica_calculator_test.go.

Cases marked `# kubernetes/kubernetes ...` are ported from the upstream test named (read at
commit 5f3bc7cdab9b2544f0389b9a83c88fa15b793b7a); expected replicas are upstream's. Upstream's
CPU cases give every pod a 1.0 CPU request, so a utilisation target of T% is a per-pod value
target of 10*T millicores; only CPU cases whose answer does not depend on the Resource-only
rules (missing pods at 100% of request rather than at target) are ported to the plain form.
Unready pods are those upstream's `groupPods` sets aside (for CPU: unready in the init window).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.behaviour import Behaviour, ReasonCode
from models.hpa import (
    HPAState,
    NoMetricsError,
    average_value_replicas,
    hpa_step,
    plain_metric_replicas,
    value_replicas,
)

# name, current, ready values, target, unready, missing, expected
PLAIN = [
    # kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator_test.go
    # TestReplicaCalcScaleUp
    ("ScaleUp", 3, [300, 500, 700], 300, 0, 0, 5),
    # ... TestReplicaCalcScaleUpUnreadyLessScale (one unready pod counts 0 on the way up)
    ("ScaleUpUnreadyLessScale", 3, [500, 700], 300, 1, 0, 4),
    # ... TestReplicaCalcScaleUpUnreadyNoScale (two unready pods would flip the direction)
    ("ScaleUpUnreadyNoScale", 3, [400], 300, 2, 0, 3),
    # ... TestReplicaCalcScaleUpIgnoresFailedPods (failed pods are not passed at all)
    ("ScaleUpIgnoresFailedPods", 2, [500, 700], 300, 0, 0, 4),
    # ... TestReplicaCalcScaleUpCM
    ("ScaleUpCM", 3, [20000, 10000, 30000], 15000, 0, 0, 4),
    # ... TestReplicaCalcScaleUpCMUnreadyHotCpuNoLessScale (non-CPU: running pods with metrics
    # are ready whatever their Ready condition)
    ("ScaleUpCMUnreadyHotCpuNoLessScale", 3, [50000, 10000, 30000], 15000, 0, 0, 6),
    # ... TestReplicaCalcScaleUpCMUnreadyHotCpuScaleWouldScaleDown
    ("ScaleUpCMUnreadyHotCpuScaleWouldScaleDown", 3, [50000, 15000, 30000], 15000, 0, 0, 7),
    # ... TestReplicaCalcScaleUpCMExternalNoLabels (a Pods metric)
    ("ScaleUpCMExternalNoLabels", 1, [8600], 4400, 0, 0, 2),
    # ... TestReplicaCalcScaleDown
    ("ScaleDown", 5, [100, 300, 500, 250, 250], 500, 0, 0, 3),
    # ... TestReplicaCalcScaleDownCM
    ("ScaleDownCM", 5, [12000] * 5, 20000, 0, 0, 3),
    # ... TestReplicaCalcScaleDownIncludeUnreadyPods (unready pods are not rebalanced on the way
    # down)
    ("ScaleDownIncludeUnreadyPods", 5, [100, 300, 500], 500, 2, 0, 2),
    # ... TestReplicaCalcScaleDownExcludeUnscheduledPods (Pending pods are unready)
    ("ScaleDownExcludeUnscheduledPods", 5, [100], 500, 4, 0, 1),
    # ... TestReplicaCalcScaleDownIgnoresFailedPods
    ("ScaleDownIgnoresFailedPods", 5, [100, 300, 500, 250, 250], 500, 0, 0, 3),
    # ... TestReplicaCalcToleranceCM (inside the band: the spec count)
    ("ToleranceCM", 3, [20000, 21000, 21000], 20000, 0, 0, 3),
    # ... TestReplicaCalcMissingMetrics (missing pods at target on the way down; target = request)
    ("MissingMetrics", 4, [400, 95], 1000, 0, 2, 3),
    # ... TestReplicaCalcMissingMetricsNoChangeGt (missing at 0 would flip the direction)
    ("MissingMetricsNoChangeGt", 2, [1900], 1000, 0, 1, 2),
    # ... TestReplicaCalcMissingMetricsNoChangeLt
    ("MissingMetricsNoChangeLt", 2, [600], 1000, 0, 1, 2),
    # ... TestReplicaCalcMissingMetricsUnreadyChange
    ("MissingMetricsUnreadyChange", 3, [450], 500, 1, 1, 3),
    # ... TestReplicaCalcMissingMetricsUnreadyScaleUp
    ("MissingMetricsUnreadyScaleUp", 3, [2000], 500, 1, 1, 4),
]


@pytest.mark.parametrize(
    ("name", "current", "values", "target", "unready", "missing", "expected"),
    PLAIN,
    ids=[c[0] for c in PLAIN],
)
def test_plain_metric_calculator_matches_the_hpa(
    name: str,
    current: int,
    values: list[float],
    target: float,
    unready: int,
    missing: int,
    expected: int,
) -> None:
    out = plain_metric_replicas(current, values, target, unready=unready, missing=missing)
    assert out.replicas == expected


def test_inside_tolerance_keeps_the_spec_count_not_the_ready_count() -> None:
    # 6 replicas ordered, 3 ready at target: the HPA answers 6 (starting pods are kept), where
    # ceil(ratio x ready) would cancel the 3 that are starting
    assert plain_metric_replicas(6, [100, 105, 95], 100).replicas == 6
    assert plain_metric_replicas(6, [100, 105, 95], 100, unready=3).replicas == 6


def test_exactly_at_target_with_missing_pods_follows_upstream_else_branch() -> None:
    # calcPlainMetricReplicas treats missing pods as 0 whenever the ratio is not < 1 (its
    # `else`), so a ratio of exactly 1 with a missing pod proposes a scale-down to 1
    assert plain_metric_replicas(2, [1000], 1000, missing=1).replicas == 1


# name, spec replicas, total, per-pod target, expected
AVERAGE = [
    # kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator_test.go
    # TestReplicaCalcScaleUpPerPodCMExternal
    ("ScaleUpPerPodCMExternal", 3, 8600, 2150, 4),
    # ... TestReplicaCalcScaleDownPerPodCMExternal
    ("ScaleDownPerPodCMExternal", 5, 8600, 2867, 3),
    # ... TestReplicaCalcTolerancePerPodCMExternal
    ("TolerancePerPodCMExternal", 3, 8600, 2900, 3),
    # ... TestReplicaCalcScaleUpCMPerPodObject
    ("ScaleUpCMPerPodObject", 3, 20000, 5000, 4),
    # ... TestReplicaCalcScaleDownPerPodCMObject
    ("ScaleDownPerPodCMObject", 5, 6000, 2000, 3),
    # ... TestReplicaCalcTolerancePerPodCMObject
    ("TolerancePerPodCMObject", 4, 20166, 5000, 4),
]


@pytest.mark.parametrize(
    ("name", "current", "total", "target", "expected"), AVERAGE, ids=[c[0] for c in AVERAGE]
)
def test_average_value_calculator_matches_the_hpa(
    name: str, current: int, total: float, target: float, expected: int
) -> None:
    assert average_value_replicas(current, total, target).replicas == expected


# name, spec replicas, ready pods, value, target, expected
VALUE = [
    # kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator_test.go
    # TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods (ratio x ready pods, not spec)
    ("ScaleUpCMExternalIgnoresUnreadyPods", 3, 1, 8600, 4400, 2),
    # ... TestReplicaCalcScaleUpCMObjectIgnoresUnreadyPods
    ("ScaleUpCMObjectIgnoresUnreadyPods", 3, 1, 50000, 10000, 5),
    # ... TestReplicaCalcScaleDownCMExternal
    ("ScaleDownCMExternal", 5, 5, 8600, 14334, 3),
    # ... TestReplicaCalcToleranceCMExternal
    ("ToleranceCMExternal", 3, 3, 8600, 8888, 3),
    # ... TestReplicaCalcToleranceCMObject
    ("ToleranceCMObject", 3, 3, 20666, 20000, 3),
]


@pytest.mark.parametrize(
    ("name", "current", "ready", "value", "target", "expected"), VALUE, ids=[c[0] for c in VALUE]
)
def test_value_calculator_matches_the_hpa(
    name: str, current: int, ready: int, value: float, target: float, expected: int
) -> None:
    assert value_replicas(current, ready, value, target).replicas == expected


def test_queue_depth_scaler_sizes_to_total_over_target() -> None:
    # a KEDA queue scaler: 230 requests waiting, 10 per replica wanted, 4 replicas now
    assert average_value_replicas(4, 230, 10).replicas == 23
    assert average_value_replicas(23, 240, 10).replicas == 23  # 240 / 230 within 10 %
    assert average_value_replicas(0, 5, 10).replicas == 1


def test_bad_input_is_refused_with_the_field_and_value() -> None:
    with pytest.raises(NoMetricsError, match="any ready pods"):
        plain_metric_replicas(3, [], 100)
    with pytest.raises(ValueError, match="target must be a positive finite number, got 0"):
        plain_metric_replicas(3, [1.0], 0)
    with pytest.raises(ValueError, match="tolerance must be in"):
        average_value_replicas(3, 1.0, 1.0, tolerance=1.5)
    with pytest.raises(ValueError, match="metric values must be finite"):
        plain_metric_replicas(3, [float("nan")], 1.0)
    with pytest.raises(ValueError, match="unready=-1"):
        plain_metric_replicas(3, [1.0], 1.0, unready=-1)


def test_hpa_step_takes_the_largest_proposal_then_normalises() -> None:
    seed = Behaviour.seed_typical()
    decision, state = hpa_step(HPAState(), 0.0, 4, [5, 12, 3], 2, 50, seed)
    assert decision.proposal == 12
    assert decision.replicas == 6  # +2 pods per 60 s
    assert decision.reasons[-1].code == ReasonCode.SCALE_UP_LIMIT
    assert state.events == ((0.0, 4, 6),)
    assert state.recommendations == ((0.0, 12),)
    # 30 s later the policy's period still holds the +2: no further scale-up
    decision, state = hpa_step(state, 30.0, 6, [12], 2, 50, seed)
    assert decision.replicas == 6
    decision, _ = hpa_step(state, 60.0, 6, [12], 2, 50, seed)
    assert decision.replicas == 8


def test_hpa_step_bounds_first_and_holds_without_metrics() -> None:
    d, _ = hpa_step(HPAState(), 0.0, 60, [70], 2, 50, Behaviour.hpa_defaults())
    assert (d.replicas, d.reasons[0].code) == (50, ReasonCode.TOO_MANY_REPLICAS)
    d, _ = hpa_step(HPAState(), 0.0, 1, [], 2, 50, Behaviour.hpa_defaults())
    assert (d.replicas, d.reasons[0].code) == (2, ReasonCode.TOO_FEW_REPLICAS)
    d, _ = hpa_step(HPAState(), 0.0, 5, [], 2, 50, Behaviour.hpa_defaults())
    assert d.replicas == 5
    d, _ = hpa_step(HPAState(), 0.0, 0, [3], 2, 50, Behaviour.hpa_defaults())
    assert (d.replicas, d.reasons[0].code) == (0, ReasonCode.SCALING_DISABLED)


@settings(max_examples=200, deadline=None)
@given(
    current=st.integers(1, 200),
    ready=st.integers(1, 50),
    offset=st.floats(-0.099, 0.099),
    unready=st.integers(0, 10),
)
def test_no_change_on_constant_load_inside_tolerance(
    current: int, ready: int, offset: float, unready: int
) -> None:
    values = [100.0 * (1 + offset)] * ready
    assert plain_metric_replicas(current, values, 100.0, unready=unready).replicas == current
    total = 100.0 * current * (1 + offset)
    assert average_value_replicas(current, total, 100.0).replicas == current


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0, 1000), min_size=1, max_size=30),
    unready=st.integers(0, 10),
    missing=st.integers(0, 10),
)
def test_calculator_never_reverses_the_metric_direction(
    values: list[float], unready: int, missing: int
) -> None:
    current = len(values) + unready + missing  # every pod of the spec exists
    out = plain_metric_replicas(current, values, 100.0, unready=unready, missing=missing)
    if out.usage_ratio > 1.0:
        assert out.replicas >= current  # never fewer replicas on high load
    if out.usage_ratio < 1.0:
        assert out.replicas <= current


@settings(max_examples=100, deadline=None)
@given(loads=st.lists(st.floats(0, 3000), min_size=1, max_size=60))
def test_per_tick_hpa_stays_in_bounds(loads: list[float]) -> None:
    seed = Behaviour.seed_typical()
    state, current = HPAState(), 2
    for i, load in enumerate(loads):
        proposal = average_value_replicas(current, load, 100.0).replicas
        decision, state = hpa_step(state, 30.0 * i, current, [proposal], 2, 20, seed)
        assert 2 <= decision.replicas <= 20
        assert decision.replicas - current <= 2 and current - decision.replicas <= 1
        current = decision.replicas
