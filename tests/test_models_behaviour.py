"""The HPA behaviour pipeline held against the Kubernetes HPA's own test tables.

Cases marked `# kubernetes/kubernetes ...` are ported from the upstream tests named (read at
commit 4e62298c1bd12c8b9b9c7337aa7fd07a8b9c37a8 of horizontal_test.go); the expected values are
upstream's. Upstream builds events with `generateEventsUniformDistribution(changes, period)`,
which puts event i of n at `period - (i + 1/2) * period / n` seconds ago; `_spread` does the same.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from models.behaviour import (
    Behaviour,
    BehaviourError,
    ReasonCode,
    ScaleEvent,
    ScalingPolicyRule,
    ScalingRules,
    normalise,
    parse_hpa_behavior,
    record_recommendation,
    record_scale_event,
    scale_down_limit,
    scale_up_limit,
    stabilise,
)

NOW = 10_000.0
DEFAULTS = Behaviour.hpa_defaults()


def _rules(
    pods: int = 0, pods_period: int = 0, percent: int = 0, percent_period: int = 0, window: int = 0
) -> ScalingRules:
    """Upstream's `generateScalingRules`: selectPolicy Max with a Pods and/or Percent policy."""
    policies = []
    if pods:
        policies.append(ScalingPolicyRule("Pods", pods, float(pods_period)))
    if percent:
        policies.append(ScalingPolicyRule("Percent", percent, float(percent_period)))
    return ScalingRules(float(window), "Max", tuple(policies))


def _spread(changes: list[int], period: float, up: bool) -> list[ScaleEvent]:
    """Upstream's `generateEventsUniformDistribution` as (time, before, after) events."""
    seg = period / len(changes)
    events = []
    for i, c in enumerate(changes):
        t = NOW - (period - seg * (i + 1) + seg / 2)
        events.append((t, 100, 100 + c) if up else (t, 100 + c, 100))
    return events


def _behaviour(up: ScalingRules | None, down: ScalingRules | None) -> Behaviour:
    """Upstream `GenerateHPAScale{Up,Down}Rules`: a missing direction takes the defaults."""
    return Behaviour(up or DEFAULTS.scale_up, down or DEFAULTS.scale_down)


# name, up events, down events, min, max, up rules, down rules, current, desired, expected, reason
SCALING_WITH_RULES = [
    # kubernetes/kubernetes pkg/controller/podautoscaler/horizontal_test.go TestScalingWithRules
    # case "prenormalized desired replicas within range"
    ("within range", [], [], 3, 8, None, None, 5, 7, 7, "DesiredWithinRange"),
    # ... TestScalingWithRules case "prenormalized desired replicas < minReplicas"
    ("below min", [], [], 2, 8, None, None, 3, 1, 2, "TooFewReplicas"),
    # ... TestScalingWithRules case
    # "prenormalized desired replicas within range when minReplicas is 0"
    ("zero with min 0", [], [], 0, 10, None, None, 1, 0, 0, "DesiredWithinRange"),
    # ... TestScalingWithRules case "maxReplicas is the limit because maxReplicas < scaleUpLimit"
    ("max below limit", [], [], 1, 10, None, None, 20, 1000, 10, "TooManyReplicas"),
    # ... TestScalingWithRules case "desired replica count is more than the maximum replica count"
    ("above max", [], [], 100, 150, None, None, 100, 1000, 150, "TooManyReplicas"),
    # ... TestScalingWithRules case
    # "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies"
    ("percent 1", [], [], 1, 2000, _rules(0, 0, 1, 60), None, 3, 1000, 4, "ScaleUpLimit"),
    # ... TestScalingWithRules case "scaleUp with default behavior"
    ("up default", [], [], 1, 1000, None, None, 10, 50, 20, "ScaleUpLimit"),
    # ... TestScalingWithRules case "scaleUp with pods policy larger than percent policy"
    ("pods>percent", [], [], 1, 1000, _rules(100, 60, 100, 60), None, 10, 500, 110, "ScaleUpLimit"),
    # ... TestScalingWithRules case "scaleUp with percent policy larger than pods policy"
    ("percent>pods", [], [], 1, 1000, _rules(2, 60, 100, 60), None, 10, 500, 20, "ScaleUpLimit"),
    # ... TestScalingWithRules case "scaleUp with spec MaxReplicas limitation with large pod policy"
    ("large pods", [], [], 1, 1000, _rules(100, 60), None, 10, 50, 50, "DesiredWithinRange"),
    # ... TestScalingWithRules case "scaleUp with pod policy limitation"
    ("pods limit", [], [], 1, 1000, _rules(30, 60), None, 10, 50, 40, "ScaleUpLimit"),
    # ... TestScalingWithRules case "scaleUp with percent policy limitation"
    ("percent lim", [], [], 1, 1000, _rules(0, 0, 200, 60), None, 10, 50, 30, "ScaleUpLimit"),
    # ... TestScalingWithRules case "scaleDown with percent policy larger than pod policy"
    ("dn %>pods", [], [], 1, 1000, None, _rules(20, 60, 1, 60, 300), 100, 2, 80, "ScaleDownLimit"),
    # ... TestScalingWithRules case "scaleDown with pod policy larger than percent policy"
    ("dn pods>%", [], [], 1, 1000, None, _rules(2, 60, 1, 60, 300), 100, 2, 98, "ScaleDownLimit"),
    # ... TestScalingWithRules case
    # "scaleDown with spec MinReplicas limitation with large percent policy"
    ("dn min", [], [], 5, 1000, None, _rules(0, 0, 100, 60, 300), 10, 2, 5, "TooFewReplicas"),
    # ... TestScalingWithRules case "scaleDown with pod policy limitation"
    ("dn pods lim", [], [], 1, 1000, None, _rules(5, 60, 0, 0, 300), 10, 2, 5, "ScaleDownLimit"),
    # ... TestScalingWithRules case "scaleDown with percent policy limitation"
    ("dn % lim", [], [], 1, 1000, None, _rules(0, 0, 50, 60, 300), 10, 5, 5, "DesiredWithinRange"),
    # ... TestScalingWithRules case
    # "scaleUp with spec MaxReplicas limitation with large pod policy and events"
    (
        "max with events",
        _spread([1, 5, 9], 120, True), [], 1, 200, _rules(300, 60), None, 100, 500, 200,
        "TooManyReplicas",
    ),
    # ... TestScalingWithRules case "scaleUp with currentReplicas limitation with
    # rate.PeriodSeconds with a lot of recent scale up events"
    (
        "recent ups hold",
        _spread([1, 5, 9], 120, True), [], 1, 1000, _rules(5, 120), None, 100, 500, 100,
        "ScaleUpLimit",
    ),
    # ... TestScalingWithRules case "scaleUp with pod policy and previous scale up events"
    (
        "pods after ups",
        _spread([1, 5, 9], 120, True), [], 1, 1000, _rules(150, 120), None, 100, 500, 235,
        "ScaleUpLimit",
    ),
    # ... TestScalingWithRules case "scaleUp with percent policy and previous scale up events"
    (
        "percent after ups",
        _spread([1, 5, 9], 120, True), [], 1, 1000, _rules(0, 0, 200, 120), None, 100, 500, 255,
        "ScaleUpLimit",
    ),
    # ... TestScalingWithRules case "scaleDown with default policy and previous events"
    (
        "dn default events",
        [], _spread([1, 5, 9], 120, False), 1, 1000, None, None, 10, 5, 5, "DesiredWithinRange",
    ),
    # ... TestScalingWithRules case "scaleDown with spec MinReplicas=nil limitation with large
    # pod policy and previous events"
    (
        "dn min events",
        [], _spread([1, 5, 9], 120, False), 1, 1000, None, _rules(115, 120, 0, 0, 300), 100, 0, 1,
        "TooFewReplicas",
    ),
    # ... TestScalingWithRules case "scaleDown with pod policy limitation and previous events"
    (
        "dn pods events",
        [], _spread([1, 5, 9], 120, False), 1, 1000, None, _rules(5, 120, 0, 0, 300), 100, 2, 100,
        "ScaleDownLimit",
    ),
    # ... TestScalingWithRules case "scaleDown with percent policy limitation and previous events"
    (
        "dn % events",
        [], _spread([2, 4, 6], 120, False), 1, 1000, None, _rules(0, 0, 50, 120, 300), 100, 0, 56,
        "ScaleDownLimit",
    ),
    # ... TestScalingWithRules case "scaleDown with previous events preventing further scale down"
    (
        "dn prevented",
        [], _spread([10, 10, 10], 120, False), 1, 1000, None, _rules(0, 0, 10, 120, 300), 100, 0,
        100, "ScaleDownLimit",
    ),
    # ... TestScalingWithRules case
    # "scaleDown with with previous events still allowing more scale down"
    (
        "dn still allowed",
        [], _spread([10, 10, 10], 120, False), 1, 1000, None, _rules(0, 0, 1000, 120, 300), 10, 5,
        5, "DesiredWithinRange",
    ),
    # ... TestScalingWithRules case
    # "check that events were marked 'outdated' for two different policies in the behavior for up"
    (
        "outdated up",
        _spread([8, 12, 9, 11], 120, True), [], 1, 1000, _rules(1000, 30, 100, 60), None, 100,
        200, 200, "DesiredWithinRange",
    ),
    # ... TestScalingWithRules case "check that events were marked 'outdated' for two different
    # policies in the behavior for down"
    (
        "outdated down",
        [], _spread([8, 12, 9, 11], 120, False), 1, 1000, None, _rules(1000, 30, 100, 60, 300),
        100, 5, 5, "DesiredWithinRange",
    ),
]


@pytest.mark.parametrize(
    ("name", "ups", "downs", "lo", "hi", "up", "down", "current", "desired", "expected", "code"),
    SCALING_WITH_RULES,
    ids=[c[0] for c in SCALING_WITH_RULES],
)
def test_rate_limits_and_bounds_match_the_hpa(
    name: str,
    ups: list[ScaleEvent],
    downs: list[ScaleEvent],
    lo: int,
    hi: int,
    up: ScalingRules | None,
    down: ScalingRules | None,
    current: int,
    desired: int,
    expected: int,
    code: str,
) -> None:
    # upstream calls convertDesiredReplicasWithBehaviorRate alone: no recommendation history,
    # so stabilisation passes the desired count through
    behaviour = _behaviour(up, down)
    out = normalise(desired, current, lo, hi, [], [*ups, *downs], NOW, behaviour)
    assert out.replicas == expected
    assert out.limit.code == code


def test_scale_up_limit_min_select_takes_the_smaller_policy() -> None:
    # kubernetes/kubernetes pkg/controller/podautoscaler/horizontal_test.go
    # TestCalculateScaleUpLimitWithScalingRules (single case): 1 replica, Min of +2 pods and +50%
    rules = ScalingRules(
        300.0, "Min", (ScalingPolicyRule("Pods", 2, 60.0), ScalingPolicyRule("Percent", 50, 60.0))
    )
    out = scale_up_limit(1, [], NOW, rules)
    assert out.value == 2  # +50% of 1 rounds up to 2, +2 pods would be 3
    assert out.reason.code == ReasonCode.SCALE_UP_LIMIT


def test_scale_down_limit_min_select_takes_the_smaller_change() -> None:
    # kubernetes/kubernetes pkg/controller/podautoscaler/horizontal_test.go
    # TestCalculateScaleDownLimitWithBehaviors (single case): 5 replicas, Min of -2 pods and -50%
    rules = ScalingRules(
        300.0, "Min", (ScalingPolicyRule("Pods", 2, 60.0), ScalingPolicyRule("Percent", 50, 60.0))
    )
    assert scale_down_limit(5, [], NOW, rules).value == 3  # -50% truncates 2.5 to 2; -2 gives 3


def test_scale_up_limit_nets_scale_downs_inside_the_period() -> None:
    # upstream calculateScaleUpLimitWithScalingRules: periodStartReplicas = current - added +
    # removed. 6 now after +4 and -2 inside 300 s: the period started at 4; +300% allows 16.
    rules = ScalingRules(0.0, "Max", (ScalingPolicyRule("Percent", 300, 300.0),))
    events = [(NOW - 60, 4, 8), (NOW - 30, 8, 6)]
    assert scale_up_limit(6, events, NOW, rules).value == 16
    # without netting the removal, the start would be 2 and the limit 8
    assert scale_up_limit(6, events[:1], NOW, rules).value == 8


def test_scale_down_limit_nets_scale_ups_inside_the_period() -> None:
    # upstream calculateScaleDownLimitWithBehaviors: 10 now after -4 and +2 inside 180 s: the
    # period started at 12; -50% allows 6
    rules = ScalingRules(0.0, "Max", (ScalingPolicyRule("Percent", 50, 180.0),))
    events = [(NOW - 100, 12, 8), (NOW - 50, 8, 10)]
    assert scale_down_limit(10, events, NOW, rules).value == 6


def test_disabled_direction_holds_current() -> None:
    rules = ScalingRules(0.0, "Disabled", ())
    behaviour = Behaviour(rules, DEFAULTS.scale_down)
    out = normalise(50, 10, 1, 100, [], [], NOW, behaviour)
    assert out.replicas == 10
    assert out.limit.code == ReasonCode.SCALE_UP_LIMIT
    assert "Disabled" in out.limit.message
    down = Behaviour(DEFAULTS.scale_up, ScalingRules(300.0, "Disabled", ()))
    assert normalise(2, 10, 1, 100, [], [], NOW, down).replicas == 10


def test_events_exactly_one_period_old_no_longer_count() -> None:
    rules = ScalingRules(0.0, "Max", (ScalingPolicyRule("Pods", 2, 60.0),))
    assert scale_up_limit(10, [(NOW - 60, 8, 10)], NOW, rules).value == 12
    assert scale_up_limit(10, [(NOW - 59.9, 8, 10)], NOW, rules).value == 10


def _windows(up: float, down: float) -> Behaviour:
    return Behaviour(
        ScalingRules(up, "Max", DEFAULTS.scale_up.policies),
        ScalingRules(down, "Max", DEFAULTS.scale_down.policies),
    )


M = 60.0
# name, recommendations, current, desired, expected, up window, down window
STABILISE = [
    # kubernetes/kubernetes pkg/controller/podautoscaler/horizontal_test.go
    # TestNormalizeDesiredReplicasWithBehavior case "empty recommendations for scaling down"
    ("empty", [], 100, 5, 5, 0, 0),
    # ... TestNormalizeDesiredReplicasWithBehavior case "simple scale down stabilization"
    ("down", [(NOW - 2 * M, 4), (NOW - M, 5)], 100, 3, 5, 0, 180),
    # ... TestNormalizeDesiredReplicasWithBehavior case "simple scale up stabilization"
    ("up", [(NOW - 2 * M, 4), (NOW - M, 5)], 1, 7, 4, 300, 0),
    # ... TestNormalizeDesiredReplicasWithBehavior case "no scale down stabilization"
    ("no down", [(NOW - 2 * M, 1), (NOW - M, 2)], 100, 3, 3, 300, 0),
    # ... TestNormalizeDesiredReplicasWithBehavior case "no scale up stabilization"
    ("no up", [(NOW - 2 * M, 4), (NOW - M, 5)], 1, 3, 3, 0, 300),
    # ... TestNormalizeDesiredReplicasWithBehavior case
    # "no scale down stabilization, reuse recommendation element"
    ("old down", [(NOW - 10 * M, 10), (NOW - 9 * M, 9)], 100, 3, 3, 0, 0),
    # ... TestNormalizeDesiredReplicasWithBehavior case
    # "no scale up stabilization, reuse recommendation element"
    ("old up", [(NOW - 10 * M, 10), (NOW - 9 * M, 9)], 1, 100, 100, 0, 0),
    # ... TestNormalizeDesiredReplicasWithBehavior case
    # "scale down stabilization, reuse one of obsolete recommendation element"
    (
        "mixed down",
        [(NOW - 10 * M, 10), (NOW - M, 4), (NOW - 2 * M, 5), (NOW - 9 * M, 9)],
        100, 3, 5, 0, 180,
    ),
    # ... TestNormalizeDesiredReplicasWithBehavior case
    # "scale up stabilization, reuse one of obsolete recommendation element"
    (
        "mixed up",
        [(NOW - 100 * M, 10), (NOW - M, 6), (NOW - 2 * M, 5), (NOW - 3 * M, 9)],
        1, 100, 5, 300, 0,
    ),
]


@pytest.mark.parametrize(
    ("name", "recs", "current", "desired", "expected", "up_s", "down_s"),
    STABILISE,
    ids=[c[0] for c in STABILISE],
)
def test_stabilisation_matches_the_hpa(
    name: str,
    recs: list[tuple[float, int]],
    current: int,
    desired: int,
    expected: int,
    up_s: float,
    down_s: float,
) -> None:
    out = stabilise(recs, NOW, desired, current, _windows(up_s, down_s))
    assert out.value == expected
    if expected != desired:
        code = "ScaleUpStabilized" if desired >= current else "ScaleDownStabilized"
        assert out.reason.code == code


def test_recommendation_exactly_as_old_as_the_window_is_forgotten() -> None:
    # the HPA keeps only recommendations strictly newer than now - window (timestamp.After)
    behaviour = _windows(0, 300)
    assert stabilise([(NOW - 300, 9)], NOW, 3, 10, behaviour).value == 3
    assert stabilise([(NOW - 299.5, 9)], NOW, 3, 10, behaviour).value == 9


def test_normalise_stabilises_before_it_rate_limits() -> None:
    # up window holds the recommendation at 6 (lowest recent), then +2 pods/60 s caps 3 at 5
    behaviour = Behaviour.seed_typical()
    recs = [(NOW - 30, 6), (NOW - 10, 9)]
    out = normalise(20, 3, 2, 100, recs, [], NOW, behaviour)
    assert out.stabilised == 6
    assert out.stabilisation.code == ReasonCode.SCALE_UP_STABILISED
    assert out.replicas == 5
    assert out.limit.code == ReasonCode.SCALE_UP_LIMIT


def test_defaults_are_the_hpa_api_defaults() -> None:
    d = Behaviour.hpa_defaults()
    assert d.scale_up == ScalingRules(
        0.0, "Max", (ScalingPolicyRule("Pods", 4, 15.0), ScalingPolicyRule("Percent", 100, 15.0))
    )
    assert d.scale_down == ScalingRules(300.0, "Max", (ScalingPolicyRule("Percent", 100, 15.0),))
    seed = Behaviour.seed_typical()
    assert seed.scale_up.policies == (ScalingPolicyRule("Pods", 2, 60.0),)
    assert (seed.up_window_s(), seed.down_window_s()) == (60.0, 300.0)
    assert seed.scale_down.policies == (ScalingPolicyRule("Pods", 1, 120.0),)


PASTED = """
scaleDown:
  stabilizationWindowSeconds: 300
  policies:
  - type: Pods
    value: 1
    periodSeconds: 120
scaleUp:
  stabilizationWindowSeconds: 60
  selectPolicy: Max
  policies:
  - type: Pods
    value: 2
    periodSeconds: 60
"""


def test_pasted_hpa_behavior_block_validates_to_the_same_behaviour() -> None:
    assert parse_hpa_behavior(yaml.safe_load(PASTED)) == Behaviour.seed_typical()


def test_missing_parts_take_the_api_defaults_field_by_field() -> None:
    assert parse_hpa_behavior({}) == Behaviour.hpa_defaults()
    assert parse_hpa_behavior(None) == Behaviour.hpa_defaults()
    b = parse_hpa_behavior({"scaleDown": {"selectPolicy": "Min"}})
    assert b.scale_down.select == "Min"
    assert b.scale_down.policies == DEFAULTS.scale_down.policies
    assert b.down_window_s() == 300.0
    assert b.scale_up == DEFAULTS.scale_up
    off = parse_hpa_behavior({"scaleDown": {"selectPolicy": "Disabled", "policies": []}})
    assert off.scale_down.select == "Disabled"


@pytest.mark.parametrize(
    ("block", "field", "value"),
    [
        ({"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}},
         "scaleUp.policies[0].value", "0"),
        ({"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1801}]}},
         "scaleUp.policies[0].periodSeconds", "1801"),
        ({"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 0}]}},
         "scaleDown.policies[0].periodSeconds", "0"),
        ({"scaleDown": {"stabilizationWindowSeconds": 3601}},
         "scaleDown.stabilizationWindowSeconds", "3601"),
        ({"scaleDown": {"stabilizationWindowSeconds": -1}},
         "scaleDown.stabilizationWindowSeconds", "-1"),
        ({"scaleUp": {"selectPolicy": "Maximum"}}, "scaleUp.selectPolicy", "'Maximum'"),
        ({"scaleUp": {"policies": [{"type": "Pod", "value": 1, "periodSeconds": 15}]}},
         "scaleUp.policies[0].type", "'Pod'"),
        ({"scaleUp": {"policies": [{"type": "Pods", "value": "2", "periodSeconds": 15}]}},
         "scaleUp.policies[0].value", "'2'"),
        ({"scaleUp": {"policies": []}}, "scaleUp", "policies"),
        ({"scaleUp": {"tolerance": 0.1}}, "scaleUp.tolerance", "0.1"),
        ({"scaleup": {}}, "scaleup", "{}"),
    ],
)
def test_invalid_behavior_names_the_field_and_value(
    block: dict[str, object], field: str, value: str
) -> None:
    with pytest.raises(BehaviourError) as err:
        parse_hpa_behavior(block)
    msg = str(err.value)
    assert field in msg
    assert value in msg


def test_dataclasses_refuse_what_the_api_refuses() -> None:
    with pytest.raises(ValueError, match="value must be greater than 0, got 0"):
        ScalingPolicyRule("Pods", 0, 15.0)
    with pytest.raises(ValueError, match="at least one policy"):
        ScalingRules(0.0, "Max", ())
    with pytest.raises(ValueError, match="min_replicas=5"):
        normalise(3, 3, 5, 4, [], [], NOW, DEFAULTS)


# --- properties ----------------------------------------------------------------------------

policies = st.builds(
    ScalingPolicyRule,
    st.sampled_from(["Pods", "Percent"]),
    st.integers(1, 300),
    st.sampled_from([15.0, 30.0, 60.0, 120.0]),
)
rules = st.builds(
    ScalingRules,
    st.sampled_from([0.0, 30.0, 60.0, 300.0]),
    st.sampled_from(["Max", "Min"]),
    st.lists(policies, min_size=1, max_size=3).map(tuple),
)
behaviours = st.builds(Behaviour, rules, rules)


@settings(max_examples=200, deadline=None)
@given(
    behaviour=behaviours,
    bounds=st.tuples(st.integers(0, 20), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1])),
    start=st.integers(0, 80),
    desired=st.lists(st.integers(0, 200), min_size=1, max_size=40),
)
def test_a_run_stays_in_bounds_and_respects_every_rate_limit(
    behaviour: Behaviour, bounds: tuple[int, int], start: int, desired: list[int]
) -> None:
    lo, hi = bounds
    current = min(max(start, lo), hi)
    recs: tuple[tuple[float, int], ...] = ()
    events: tuple[ScaleEvent, ...] = ()
    for i, want in enumerate(desired):
        now = 15.0 * i
        up_cap = scale_up_limit(current, events, now, behaviour.scale_up).value
        down_cap = scale_down_limit(current, events, now, behaviour.scale_down).value
        out = normalise(want, current, lo, hi, recs, events, now, behaviour)
        assert lo <= out.replicas <= hi
        if out.replicas > current:
            assert out.replicas <= up_cap  # never faster than the policies allow
        if out.replicas < current:
            assert out.replicas >= down_cap
        # stabilised value lies between current and the desired count
        assert min(current, want) <= out.stabilised <= max(current, want)
        recs = record_recommendation(recs, now, want, behaviour)
        events = record_scale_event(events, now, current, out.replicas, behaviour)
        current = out.replicas


@settings(max_examples=100, deadline=None)
@given(behaviour=behaviours, current=st.integers(1, 50), ticks=st.integers(1, 30))
def test_constant_recommendation_equal_to_current_never_moves(
    behaviour: Behaviour, current: int, ticks: int
) -> None:
    recs: tuple[tuple[float, int], ...] = ()
    for i in range(ticks):
        out = normalise(current, current, 1, 100, recs, [], 15.0 * i, behaviour)
        assert out.replicas == current
        recs = record_recommendation(recs, 15.0 * i, current, behaviour)
