"""SLO-targeted headroom: the provisioning quantile follows realised misses, within bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.headroom import (
    HeadroomConfig,
    HeadroomObservation,
    HeadroomState,
    tune_quantile,
)

TARGET = 0.99


def _feed(state: HeadroomState, obs: HeadroomObservation, n: int,
          cfg: HeadroomConfig | None = None) -> HeadroomState:
    cfg = cfg or HeadroomConfig()
    for _ in range(n):
        state = tune_quantile(state, obs, TARGET, cfg).state
    return state


def test_quantile_rises_after_ttft_misses() -> None:
    out = tune_quantile(HeadroomState(0.9), HeadroomObservation(10, 12, attainment=0.95),
                        TARGET)
    assert out.direction == "up" and out.quantile > 0.9
    assert "over budget" in out.reason


def test_quantile_falls_when_over_served() -> None:
    out = tune_quantile(HeadroomState(0.9), HeadroomObservation(10, 5, attainment=1.0),
                        TARGET)
    assert out.direction == "down" and out.quantile < 0.9


def test_quantile_rises_faster_than_it_falls() -> None:
    up = tune_quantile(HeadroomState(0.9), HeadroomObservation(1, 1, attainment=0.98), TARGET)
    down = tune_quantile(HeadroomState(0.9), HeadroomObservation(1, 1, attainment=1.0), TARGET)
    assert up.quantile - 0.9 > 0.9 - down.quantile


def test_quantile_holds_near_the_miss_budget() -> None:
    out = tune_quantile(HeadroomState(0.9), HeadroomObservation(1, 1, attainment=0.99), TARGET)
    assert out.direction == "hold" and out.quantile == 0.9


def test_under_forecast_counts_as_miss_when_latency_unobserved() -> None:
    out = tune_quantile(HeadroomState(0.9), HeadroomObservation(10, 11), TARGET)
    assert out.direction == "up"


def test_unusable_observation_holds_state() -> None:
    state = HeadroomState(0.9, 0.02, 3)
    out = tune_quantile(state, HeadroomObservation(float("nan"), 1.0), TARGET)
    assert (out.state, out.direction) == (state, "hold")


def test_quantile_saturates_at_bounds_under_persistent_misses_or_slack() -> None:
    cfg = HeadroomConfig(min_quantile=0.5, max_quantile=0.995)
    high = _feed(HeadroomState(0.9), HeadroomObservation(1, 2, attainment=0.5), 200, cfg)
    low = _feed(HeadroomState(0.9), HeadroomObservation(2, 1, attainment=1.0), 2000, cfg)
    assert high.quantile == pytest.approx(0.995)
    assert low.quantile == pytest.approx(0.5)


def test_smoothing_needs_several_good_intervals_to_forget_a_bad_one() -> None:
    state = tune_quantile(HeadroomState(0.9), HeadroomObservation(1, 1, attainment=0.8),
                          TARGET).state
    after_good = tune_quantile(state, HeadroomObservation(1, 1, attainment=1.0), TARGET)
    assert after_good.direction == "up"


@settings(max_examples=100, deadline=None)
@given(q=st.floats(0.01, 0.999), att=st.lists(st.none() | st.floats(0, 1), max_size=30),
       target=st.floats(0.5, 0.999))
def test_quantile_always_within_bounds(q: float, att: list[float | None],
                                       target: float) -> None:
    cfg = HeadroomConfig()
    state = HeadroomState(q)
    for a in att:
        out = tune_quantile(state, HeadroomObservation(1.0, 1.0, attainment=a), target, cfg)
        assert cfg.min_quantile <= out.quantile <= cfg.max_quantile
        state = out.state
