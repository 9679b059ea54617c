"""The replica decision: properties over random policies and demand, and the named steps."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.behaviour import Behaviour, ScalingPolicyRule, ScalingRules
from models.decide import (
    Decision,
    DemandForecast,
    ScalingPolicy,
    ScalingState,
    break_even_hold_s,
    decide,
    next_state,
)

T0 = 1_736_121_600.0
FAST = settings(max_examples=120, deadline=None)


def pods(up: int = 4, up_period: float = 60.0, down: int = 1, down_period: float = 60.0,
         down_window: float = 300.0) -> Behaviour:
    """An HPA behaviour with one Pods policy each way and no scale-up window."""
    return Behaviour(ScalingRules(0.0, "Max", (ScalingPolicyRule("Pods", up, up_period),)),
                     ScalingRules(down_window, "Max",
                                  (ScalingPolicyRule("Pods", down, down_period),)))


def with_rules(policy: ScalingPolicy, **kw: float) -> ScalingPolicy:
    """`policy` with some of its Pods rules changed (keys: those of `pods`)."""
    b = policy.behaviour
    up, down = b.scale_up.policies[0], b.scale_down.policies[0]
    args: dict[str, float] = {"up": up.value, "up_period": up.period_s, "down": down.value,
                              "down_period": down.period_s,
                              "down_window": b.down_window_s(), **kw}
    return replace(policy, behaviour=pods(int(args["up"]), args["up_period"],
                                          int(args["down"]), args["down_period"],
                                          args["down_window"]))


def flat(level: float, start: float = T0, steps: int = 120, q: float = 0.9) -> DemandForecast:
    return DemandForecast(start, 60, {q: np.full(steps, level, dtype=np.float64)})


@st.composite
def policies(draw: st.DrawFn, min_floor: int = 0) -> ScalingPolicy:
    lo = draw(st.integers(min_floor, 3))
    return ScalingPolicy(
        min_replicas=lo, max_replicas=draw(st.integers(max(lo, 1), 30)),
        target_utilisation=draw(st.floats(0.5, 1.0)), tolerance=draw(st.floats(0.0, 0.3)),
        behaviour=pods(draw(st.integers(1, 5)), draw(st.floats(15, 120)),
                       draw(st.integers(1, 3)), draw(st.floats(15, 120)),
                       draw(st.floats(0, 600))),
        forecast_window_s=draw(st.floats(0, 600)))


@st.composite
def states(draw: st.DrawFn, policy: ScalingPolicy) -> ScalingState:
    current = draw(st.integers(policy.min_replicas, policy.max_replicas))
    recs = draw(st.lists(st.tuples(st.floats(T0 - 900, T0), st.integers(0, 40)), max_size=5))
    return ScalingState(current, tuple(sorted(recs)))


capacities = st.floats(0.5, 10.0)
cold_starts = st.floats(0, 600)
demands = st.floats(0.0, 200.0)


def run(policy: ScalingPolicy, levels: list[float], dts: list[float], current: int,
        capacity: float = 1.0, cold_start: float = 120.0) -> list[tuple[float, Decision]]:
    """Iterate decide over time, feeding the state back, as the controller would."""
    state, now, out = ScalingState(current), T0, []
    for level, dt in zip(levels, dts, strict=True):
        now += dt
        d = decide(flat(level, start=now), capacity, cold_start, policy, state, now)
        out.append((now, d))
        state = next_state(state, d, now, policy)
    return out


# --- properties ------------------------------------------------------------------------


@FAST
@given(data=st.data(), policy=policies(), demand=demands, cap=capacities, cold=cold_starts,
       floor=st.none() | st.integers(0, 50), missing=st.booleans())
def test_replicas_stay_within_min_and_max(data: st.DataObject, policy: ScalingPolicy,
                                          demand: float, cap: float, cold: float,
                                          floor: int | None, missing: bool) -> None:
    state = data.draw(states(policy))
    d = decide(None if missing else flat(demand), cap, cold, policy, state, T0, floor)
    assert policy.min_replicas <= d.replicas <= policy.max_replicas
    if d.replicas == 0:
        assert policy.min_replicas == 0 and demand == 0 and not missing and not floor


@FAST
@given(data=st.data(), policy=policies(), d1=demands, d2=demands, cap=capacities,
       cold=cold_starts, floor=st.none() | st.integers(0, 50))
def test_replicas_are_monotone_in_demand(data: st.DataObject, policy: ScalingPolicy,
                                         d1: float, d2: float, cap: float, cold: float,
                                         floor: int | None) -> None:
    state = data.draw(states(policy))
    lo, hi = sorted((d1, d2))
    a = decide(flat(lo), cap, cold, policy, state, T0, floor)
    b = decide(flat(hi), cap, cold, policy, state, T0, floor)
    assert a.replicas <= b.replicas


@FAST
@given(policy=policies(min_floor=1), data=st.data(), cap=capacities)
def test_rate_limits_hold_in_every_period(policy: ScalingPolicy, data: st.DataObject,
                                          cap: float) -> None:
    n = data.draw(st.integers(5, 40))
    levels = data.draw(st.lists(st.floats(0, 60 * cap), min_size=n, max_size=n))
    dts = data.draw(st.lists(st.floats(5, 90), min_size=n, max_size=n))
    current = data.draw(st.integers(policy.min_replicas, policy.max_replicas))
    events = [(t, d.current, d.replicas) for t, d in run(policy, levels, dts, current, cap)
              if d.changed]
    up_rule = policy.behaviour.scale_up.policies[0]
    down_rule = policy.behaviour.scale_down.policies[0]
    for t, before, after in events:
        # The HPA nets opposite events: each change is bounded from the count at the start of
        # its policy's period (current minus added plus removed since then).
        if after > before:
            net = sum(b - a for ts, a, b in events if t - up_rule.period_s < ts <= t)
            assert net <= up_rule.value
        else:
            net = sum(a - b for ts, a, b in events if t - down_rule.period_s < ts <= t)
            assert net <= down_rule.value


@FAST
@given(policy=policies(min_floor=1), data=st.data(), cap=capacities, cold=cold_starts)
def test_no_change_inside_the_dead_band(policy: ScalingPolicy, data: st.DataObject,
                                        cap: float, cold: float) -> None:
    current = data.draw(st.integers(policy.min_replicas, policy.max_replicas))
    off = data.draw(st.floats(-0.99, 0.99)) * policy.tolerance
    demand = current * (1 + off) * cap * policy.target_utilisation
    d = decide(flat(demand), cap, cold, policy, ScalingState(current), T0)
    assert d.replicas == current


@settings(max_examples=60, deadline=None)
@given(policy=policies(min_floor=1), data=st.data(), cap=capacities,
       level=st.floats(0.0, 100.0), dt=st.floats(10, 60))
def test_constant_demand_never_oscillates_and_settles(policy: ScalingPolicy,
                                                      data: st.DataObject, cap: float,
                                                      level: float, dt: float) -> None:
    current = data.draw(st.integers(policy.min_replicas, policy.max_replicas))
    # Long enough for the slowest policy drawn to walk the whole range: 30 replicas down one
    # pod per 120 s after a 600 s window, then 10 steps to show it settled (200 fixed steps
    # were 2,000 s at 10 s a step, short of 17 pods at one per 111 s).
    steps = math.ceil((30 * 120.0 + 600.0) / dt) + 10
    seq = [current] + [d.replicas for _, d in run(policy, [level] * steps, [dt] * steps,
                                                  current, cap)]
    diffs = np.diff(seq)
    assert (diffs >= 0).all() or (diffs <= 0).all(), f"direction flipped: {seq}"
    assert len(set(seq[-10:])) == 1, f"did not settle: {seq[-10:]}"


@FAST
@given(data=st.data(), policy=policies(min_floor=1), cap=capacities, cold=cold_starts,
       floor=st.none() | st.integers(0, 50))
def test_missing_forecast_never_scales_down(data: st.DataObject, policy: ScalingPolicy,
                                            cap: float, cold: float,
                                            floor: int | None) -> None:
    state = data.draw(states(policy))
    d = decide(None, cap, cold, policy, state, T0, floor)
    assert d.replicas >= state.current_replicas
    if not floor or floor <= state.current_replicas:
        assert d.replicas == state.current_replicas
    assert "NoForecast" in d.reason_codes()


# --- named steps -------------------------------------------------------------------------


POLICY = ScalingPolicy(min_replicas=1, max_replicas=20, target_utilisation=1.0, tolerance=0.1,
                       behaviour=pods())


def test_forecast_peak_sets_replicas_at_target_utilisation() -> None:
    d = decide(flat(10.0), 2.0, 60, replace(POLICY, target_utilisation=0.5),
               ScalingState(10), T0)
    assert (d.replicas, d.reason_codes()) == (10, ())
    d = decide(flat(10.0), 2.0, 60, replace(POLICY, target_utilisation=0.5),
               ScalingState(8), T0)
    assert (d.replicas, d.reason_codes()) == (10, ("ForecastPeak",))


def test_window_starts_one_cold_start_ahead() -> None:
    values = np.array([50.0] * 5 + [4.0] * 20)  # a spike that ends before replicas are ready
    f = DemandForecast(T0, 60, {0.9: values})
    d = decide(f, 1.0, 300, POLICY, ScalingState(4), T0)
    assert d.demand == 4.0 and d.replicas == 4


def test_replica_needed_again_within_cold_start_is_kept() -> None:
    values = np.array([8.0] * 5 + [2.0] * 20)  # high now, low once a new pod would be ready
    f = DemandForecast(T0, 60, {0.9: values})
    d = decide(f, 1.0, 300, POLICY, ScalingState(8), T0)
    assert d.replicas == 8 and "ForecastNeedsSoon" in d.reason_codes()


def test_scale_down_stabilised_by_recent_recommendations() -> None:
    state = ScalingState(10, recommendations=((T0 - 100, 9),))
    d = decide(flat(2.0), 1.0, 0, POLICY, state, T0)
    assert d.replicas == 9 and "ScaleDownStabilized" in d.reason_codes()
    assert d.recommendation == 2


def test_scale_down_limited_per_period_counts_earlier_events() -> None:
    p = with_rules(POLICY, down_window=0, down=2)
    d = decide(flat(1.0), 1.0, 0, p, ScalingState(10), T0)
    assert d.replicas == 8 and "ScaleDownLimit" in d.reason_codes()
    used = ScalingState(8, scale_events=((T0 - 30, 10, 8),))
    assert decide(flat(1.0), 1.0, 0, p, used, T0).replicas == 8


def test_scale_up_limited_per_period() -> None:
    d = decide(flat(50.0), 1.0, 0, with_rules(POLICY, up=3), ScalingState(2), T0)
    assert d.replicas == 5 and "ScaleUpLimit" in d.reason_codes()


def test_reactive_floor_raises_above_forecast() -> None:
    d = decide(flat(1.0), 1.0, 0, POLICY, ScalingState(3), T0, reactive_floor=6)
    assert d.replicas == 6 and "ReactiveFloor" in d.reason_codes()


def test_reactive_floor_raises_without_forecast() -> None:
    d = decide(None, 1.0, 0, POLICY, ScalingState(3), T0, reactive_floor=5)
    assert d.replicas == 5 and d.reason_codes() == ("NoForecast", "ReactiveFloor")


def test_within_tolerance_records_the_hold() -> None:
    d = decide(flat(9.0), 1.0, 0, POLICY, ScalingState(10), T0)
    assert d.replicas == 10 and d.reason_codes() == ("ForecastPeak", "WithinTolerance")


def test_at_max_and_at_min() -> None:
    p = replace(with_rules(POLICY, up=100), max_replicas=7, min_replicas=2)
    assert decide(flat(50.0), 1.0, 0, p, ScalingState(5), T0).reason_codes()[-1] == \
        "TooManyReplicas"
    assert decide(flat(0.0), 1.0, 0, with_rules(p, down_window=0, down=9),
                  ScalingState(5), T0).reason_codes()[-1] == "TooFewReplicas"


def test_zero_only_when_min_is_zero_and_demand_is_zero() -> None:
    p = replace(with_rules(POLICY, down_window=0), min_replicas=0)
    assert decide(flat(0.0), 1.0, 0, p, ScalingState(1), T0).replicas == 0
    assert decide(flat(0.01), 1.0, 0, p, ScalingState(1), T0).replicas == 1
    assert decide(None, 1.0, 0, p, ScalingState(0), T0).replicas == 1


def test_forecast_that_ends_before_replicas_are_ready_is_not_used() -> None:
    d = decide(flat(100.0, steps=2), 1.0, 600, POLICY, ScalingState(3), T0)
    assert d.replicas == 3 and d.reason_codes() == ("NoForecast",)


def test_nan_forecast_is_missing_not_zero() -> None:
    f = DemandForecast(T0, 60, {0.9: np.full(30, np.nan)})
    assert decide(f, 1.0, 0, POLICY, ScalingState(6), T0).replicas == 6


def test_quantile_between_forecast_levels_is_interpolated() -> None:
    f = DemandForecast(T0, 60, {0.5: np.full(30, 4.0), 0.99: np.full(30, 8.0)})
    d = decide(f, 1.0, 0, POLICY, ScalingState(1), T0, quantile=0.745)
    assert d.demand == pytest.approx(6.0) and d.quantile == pytest.approx(0.745)


def test_quantile_outside_forecast_levels_uses_nearest_and_says_so() -> None:
    d = decide(flat(4.0, q=0.9), 1.0, 0, POLICY, ScalingState(1), T0, quantile=0.99)
    assert d.quantile == 0.9 and "nearest used" in d.reasons[0].message


def test_decision_reports_cost() -> None:
    d = decide(flat(4.0), 1.0, 0, POLICY, ScalingState(4), T0, gpus_per_replica=2,
               gpu_hourly_usd=3.0, tokens_per_request=1000)
    assert (d.gpu_hours_per_hour, d.cost_per_hour) == (8.0, 24.0)
    assert d.cost_per_1k_tokens == pytest.approx(24.0 / (4.0 * 1000 * 3.6))


def test_invalid_inputs_are_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="capacity_per_replica"):
        decide(flat(1.0), 0.0, 0, POLICY, ScalingState(1), T0)
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        ScalingPolicy(min_replicas=5, max_replicas=2)


def test_next_state_records_recommendation_and_event_and_prunes() -> None:
    p = with_rules(POLICY, down_window=300)
    old = ScalingState(3, ((T0 - 1000, 9),), ((T0 - 1000, 2, 3),))
    d = decide(flat(6.0), 1.0, 0, p, old, T0)
    new = next_state(old, d, T0, p)
    assert new.current_replicas == 6
    assert new.recommendations == ((T0, 6),)
    assert new.scale_events == ((T0, 3, 6),)




def test_break_even_hold_is_the_longer_of_cold_start_and_forecast_step() -> None:
    assert break_even_hold_s(300.0, 60.0) == 300.0
    assert break_even_hold_s(120.0, 600.0) == 600.0
    with pytest.raises(ValueError, match="cold_start_s=-1"):
        break_even_hold_s(-1.0, 60.0)
