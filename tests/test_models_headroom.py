"""SLO-targeted headroom: the provisioning quantile follows realised misses, within bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.headroom import (
    HeadroomConfig,
    HeadroomObservation,
    HeadroomState,
    QuantileCalibrator,
    ShortfallModel,
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


# ---- the calibrator ------------------------------------------------------------------------
# A 600 s window, replicas from the reactive path after 390 s, 4.5 s of queueing slack.
MODEL = ShortfallModel(window_s=600.0, exposure_s=390.0, slack_s=4.5)
LEVELS = (0.5, 0.9, 0.99, 0.999)


def test_shortfall_misses_grow_with_the_overload_and_stop_at_the_exposure() -> None:
    # Covered windows between the short ones: each shortfall is its own event.
    prov = np.array([100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 0.0, 100.0, 100.0])
    actual = np.array([90.0, 100.0, 101.0, 50.0, 200.0, 50.0, 50.0, 50.0, 0.0])
    share = MODEL.missed_share(prov, actual)
    assert share[0] == share[1] == share[8] == 0.0  # covered, exactly covered, idle
    # 1% over: the queue passes the slack after 450 s, after the reactive replicas came.
    assert share[2] == 0.0
    # Twice the capacity: over the SLO after 4.5 s until 390 s.
    assert share[4] == pytest.approx((390.0 - 4.5) / 600.0)
    assert share[6] == pytest.approx(390.0 / 600.0)  # nothing provisioned at all
    hot = ShortfallModel(600.0, 390.0, 4.5, capacity_factor=2.0)  # running at 50%
    assert hot.missed_share(prov, actual)[4] == 0.0


def test_a_shortfall_over_consecutive_windows_is_one_event() -> None:
    """Windows shorter than a cold start: the queue carries from one short window into the
    next, and the reactive replicas arrive one exposure after the *first* short window."""
    minute = ShortfallModel(window_s=60.0, exposure_s=390.0, slack_s=4.5)
    prov = np.full(10, 100.0)
    actual = np.array([100.0] + [101.0] * 8 + [100.0])  # 1% over for 8 minutes
    share = minute.missed_share(prov, actual)
    # The wait grows 0.6 s a minute: past the 4.5 s slack in minute 8 (at 450 s), when the
    # reactive replicas (390 s) have come: nothing missed, window by window it would be too.
    assert share.sum() == 0.0
    actual = np.array([100.0] + [110.0] * 8 + [100.0])  # 10% over: slack gone after 45 s
    share = minute.missed_share(prov, actual)
    assert share[1] == pytest.approx(15.0 / 60.0)
    assert share[2] == share[6] == 1.0  # still queued, reactive replicas not yet there
    assert share[7] == pytest.approx(30.0 / 60.0)  # they arrive 390 s after minute 1 began
    assert share[8] == share[9] == 0.0
    # Apart (each window its own event) the same load would show 15 s of misses a minute.
    apart = minute.missed_share(prov, actual, starts=np.arange(10) * 120.0)
    assert apart[2] == pytest.approx(15.0 / 60.0)


def test_shortfall_model_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match=r"capacity_factor=0\.8"):
        ShortfallModel(600.0, 390.0, 4.5, capacity_factor=0.8)
    with pytest.raises(ValueError, match="window_s=0"):
        ShortfallModel(0, 390.0, 4.5)


def _record(cal: QuantileCalibrator, n: int, seed: int = 0, used: float = 0.9) -> None:
    """Windows whose load is the forecast's own distribution: lognormal around 100."""
    rng = np.random.default_rng(seed)
    z = {0.5: 0.0, 0.9: 1.2816, 0.99: 2.3263, 0.999: 3.0902}
    for k in range(n):
        cal.expect(600.0 * k, {q: 100.0 * float(np.exp(0.2 * z[q])) for q in LEVELS}, used)
        cal.observe(600.0 * k, 100.0 * float(np.exp(0.2 * rng.standard_normal())))


def test_calibrator_waits_for_a_record_then_picks_the_lowest_quantile_in_budget() -> None:
    cal = QuantileCalibrator(LEVELS, MODEL, memory=2000, min_samples=144)
    _record(cal, 143)
    assert cal.choose(0.0, 0.01, measured=False) is None
    _record(cal, 2000, seed=1)
    out = cal.choose(0.0, 0.01, measured=False)
    assert out is not None and out.samples == 2000
    assert out.estimated_miss <= 0.01
    # The next grid point down would be over budget: it is the lowest that fits.
    lower = cal.grid[cal.grid < out.quantile].max()
    tighter = cal.choose(0.0, 0.999 * out.estimated_miss, measured=False)
    assert tighter is not None and tighter.quantile > lower
    # A looser budget buys less headroom; the record is the forecast's own distribution,
    # so the chosen quantile sits in the upper tail, not at a bound.
    loose = cal.choose(0.0, 0.05, measured=False)
    assert loose is not None and 0.5 < loose.quantile < out.quantile < 0.999


def test_measured_misses_above_the_estimate_buy_more_headroom() -> None:
    plain = QuantileCalibrator(LEVELS, MODEL, memory=2000)
    _record(plain, 2000)
    base = plain.choose(0.0, 0.01)
    burned = QuantileCalibrator(LEVELS, MODEL, memory=2000)
    _record(burned, 2000)
    burned.measured(1e9, 1e8)  # 10% of a huge volume of requests missed
    out = burned.choose(0.0, 0.01)
    assert base is not None and out is not None
    assert out.correction > base.correction and out.quantile > base.quantile
    assert "correction" in out.reason


def test_calibrator_drops_non_finite_loads_and_keeps_the_first_forecast() -> None:
    cal = QuantileCalibrator(LEVELS, MODEL, min_samples=1, memory=10)
    cal.expect(0.0, {q: 100.0 for q in LEVELS}, 0.9)
    cal.expect(0.0, {q: 1.0 for q in LEVELS}, 0.9)  # a later forecast for the same window
    cal.observe(0.0, float("nan"))
    assert len(cal) == 0
    cal.expect(600.0, {q: 100.0 for q in LEVELS}, 0.9)
    cal.expect(600.0, {q: 1.0 for q in LEVELS}, 0.9)
    cal.observe(600.0, 100.0)
    out = cal.choose(0.0, 0.01, measured=False)
    assert len(cal) == 1 and out is not None and out.estimated_miss == 0.0
    with pytest.raises(ValueError, match="target_miss must be in"):
        cal.choose(0.0, 0.0)
