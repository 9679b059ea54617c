"""Replay: the simulator conserves requests, the oracle is a bound, no policy sees the future."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controller.replay import (
    ReplayError,
    default_fleet,
    jump_at_budget,
    plot,
    prepare,
    render_table,
    replay_series,
    run_policy,
    run_replay,
)
from controller.replay_policies import (
    Headroom,
    HPASettings,
    Predictive,
    PredictiveSettings,
    ReactiveHPA,
    hpa_recommendation,
    nowcast,
)
from controller.replay_sim import Fleet, Observation, simulate
from forecaster.base import History
from forecaster.trace import TraceSeries, read_trace
from models.decide import DemandForecast
from tests.support import SHARED_DATA

DATA = SHARED_DATA
SERVEGEN = DATA / "servegen_per_10min.csv.gz"
MOONCAKE = DATA / "mooncake_per_10s.csv"
#: Fails (never skips) with a clear message when the traces are not beside the repo.
needs_data = pytest.mark.usefixtures("shared_data")


def _servegen_day(days: float = 1.0, offset: int = 0) -> TraceSeries:
    ts = read_trace(SERVEGEN, ["servegen-m-small"])["servegen-m-small"]
    n = int(days * 144)
    return replace(ts, requests=ts.requests[offset:offset + n].copy(), input_tokens=None,
                   output_tokens=None, start=ts.start + offset * ts.step_s)


class _Random:
    """A controller that orders a random fleet: conservation must hold whatever it does."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def target(self, obs: Observation) -> int:
        return int(self.rng.integers(0, 8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_request_is_served_or_still_queued(seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrivals = rng.poisson(30.0, size=2000).astype(np.float64)
    fleet = Fleet(capacity_rps=1.0, cold_start_s=60.0)
    sim = simulate(arrivals, 0.0, 10.0, fleet, _Random(seed), 2, 3)
    assert np.isclose(arrivals.sum(), sim.served.sum() + sim.queue[-1])
    assert (sim.queue >= -1e-9).all()
    assert (sim.served <= sim.ready * fleet.capacity_rps * 10.0 + 1e-9).all()
    assert (sim.ready <= sim.ordered).all()
    assert 0.0 <= sim.slo_attainment <= 1.0


def test_ordered_replica_is_ready_one_cold_start_later_and_removal_is_immediate() -> None:
    class Script:
        def target(self, obs: Observation) -> int:
            return 3 if obs.now < 100 else 1

    sim = simulate(np.zeros(20), 0.0, 10.0, Fleet(capacity_rps=1.0, cold_start_s=30.0),
                   Script(), 1, 1)
    assert sim.ordered[0] == 3 and sim.ready[0] == 1
    assert sim.ready[2] == 1 and sim.ready[3] == 3  # ordered at 0 s, ready at 30 s
    assert sim.ordered[10] == 1 and sim.ready[10] == 1
    assert sim.cold_starts == 2


def test_queue_beyond_capacity_makes_ttft_miss_the_slo() -> None:
    class Fixed:
        def target(self, obs: Observation) -> int:
            return 1

    arrivals = np.full(100, 20.0)  # 2 req/s against 1 req/s of capacity
    sim = simulate(arrivals, 0.0, 10.0, Fleet(capacity_rps=1.0), Fixed(), 1, 1)
    assert sim.queue[-1] == pytest.approx(1000.0)
    assert sim.slo_attainment < 0.05


def test_hpa_recommendation_is_ceil_of_current_times_ratio_with_tolerance() -> None:
    assert hpa_recommendation(4, 3.0, 0.0, 1.0, 0.75, 5.0, 0.1) == 4  # exactly on target
    assert hpa_recommendation(4, 3.2, 0.0, 1.0, 0.75, 5.0, 0.1) == 4  # within 10%
    assert hpa_recommendation(4, 6.0, 0.0, 1.0, 0.75, 5.0, 0.1) == 8
    assert hpa_recommendation(4, 0.0, 40.0, 1.0, 0.75, 5.0, 0.1) == 8  # queue metric wins


def test_reactive_scale_up_respects_two_pods_per_minute() -> None:
    hpa = ReactiveHPA(Fleet(capacity_rps=1.0), HPASettings())
    current, targets = 2, []
    for i in range(8):
        t = hpa.target(Observation(float(30 * i), i, current, current, 0.0, 100.0))
        targets.append(t)
        current = t
    moves = np.diff([2, *targets])
    for i in range(len(moves) - 1):
        assert moves[i] + moves[i + 1] <= 2  # any 60 s (two decisions) adds at most 2
    assert targets[-1] > 2


@needs_data
@pytest.mark.parametrize("arrivals", ["uniform", "poisson"])
def test_oracle_meets_slo_and_no_policy_at_equal_slo_is_cheaper(arrivals: str) -> None:
    ts = _servegen_day(1.0)
    fleet = default_fleet(ts, 120.0)
    res = replay_series(ts, fleet, arrivals=arrivals, forecaster="baselines")  # type: ignore[arg-type]
    oracle = res.policies["oracle"]
    assert oracle.slo_attainment == 1.0
    for name in ("reactive", "predictive"):
        p = res.policies[name]
        if p.slo_attainment >= oracle.slo_attainment:
            assert p.gpu_hours >= oracle.gpu_hours


@needs_data
@pytest.mark.parametrize("policy", ["reactive", "predictive"])
def test_decisions_before_t_ignore_data_after_t(policy: str) -> None:
    ts = _servegen_day(1.0)
    cut = 100  # windows; data from here on is perturbed
    bent = ts.requests.copy()
    bent[cut:] *= 3.0
    fleet = default_fleet(ts, 300.0)
    a = run_policy(prepare(ts, fleet), policy, forecaster="baselines")
    b = run_policy(prepare(replace(ts, requests=bent), fleet), policy, forecaster="baselines")
    k = round(cut * ts.step_s / a.sim.dt)
    assert np.array_equal(a.sim.ordered[:k], b.sim.ordered[:k])
    assert not np.array_equal(a.sim.ordered, b.sim.ordered)  # the perturbation mattered


@needs_data
def test_json_has_exactly_the_cli_contract(tmp_path: Path) -> None:
    res = run_replay(MOONCAKE, "mooncake-conversation", cold_start_s=60.0,
                     forecaster="baselines")
    doc = res.to_json()
    assert set(doc) == {"series", "policies", "iso_slo"}
    assert doc["iso_slo"] is None
    assert set(doc["policies"]) == {"reactive", "predictive", "oracle"}
    for scores in doc["policies"].values():
        assert set(scores) == {"slo_attainment", "gpu_hours", "cost", "scale_events",
                               "cold_starts", "gpu_hours_vs_oracle"}
    assert doc["policies"]["oracle"]["gpu_hours_vs_oracle"] == 1.0
    json.dumps(doc)
    assert render_table(res).row_count == 3


@needs_data
def test_iso_slo_reports_target_and_ratio() -> None:
    res = run_replay(MOONCAKE, "mooncake-conversation", cold_start_s=60.0, iso_slo=True,
                     policies=("reactive", "oracle"), forecaster="baselines")
    iso = res.to_json()["iso_slo"]
    assert set(iso) == {"slo", "reactive_target", "gpu_hours_ratio_predictive_vs_reactive"}
    assert "predictive" in res.policies
    if iso["reactive_target"] is not None:
        assert iso["gpu_hours_ratio_predictive_vs_reactive"] > 0


@needs_data
def test_plot_writes_a_png_with_attribution(tmp_path: Path) -> None:
    res = run_replay(MOONCAKE, "mooncake-conversation", cold_start_s=60.0,
                     forecaster="baselines")
    out = plot(res, tmp_path / "replay.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_policy_is_refused() -> None:
    ts = TraceSeries("s", 0.0, 10, np.full(50, 5.0), None, None)
    with pytest.raises(ReplayError, match="unknown policies"):
        replay_series(ts, Fleet(capacity_rps=1.0), policies=("magic",))


def test_profile_sets_capacity_and_cold_start(tmp_path: Path) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text("capacity_rps: 2.5\ncold_start_s: 90\ngpus_per_replica: 2\n"
                    "gpu_hourly_usd: 3.0\n")
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp_s,series,requests\n" + "".join(
        f"{i * 10},s,{50 + (i % 7) * 5}\n" for i in range(120)))
    res = run_replay(csv, "s", profile_path=prof, policies=("reactive", "oracle"))
    assert res.fleet.capacity_rps == 2.5 and res.fleet.cold_start_s == 90
    oracle = res.policies["oracle"]
    assert oracle.cost == pytest.approx(oracle.gpu_hours * 3.0)


@needs_data
@pytest.mark.slow
def test_predictive_uses_the_forecasting_engine_when_asked() -> None:
    ts = _servegen_day(0.5)
    out = run_policy(prepare(ts, default_fleet(ts, 300.0)), "predictive", forecaster="engine")
    assert "engine:" in out.note
    assert 0.0 < out.slo_attainment <= 1.0


class _StubForecaster:
    """Returns one fixed quantile forecast, whatever the history (for policy unit tests)."""

    def __init__(self, values: list[float]) -> None:
        self.values = np.array(values)
        self.choices: list[tuple[float, str]] = []

    def forecast(self, history: object, horizon: int) -> dict[float, np.ndarray]:
        return {0.5: self.values.copy(), 0.99: self.values.copy()}


def _predictive_with(values: list[float], cold_start_s: float = 300.0
                     ) -> tuple[Predictive, Fleet]:
    fleet = Fleet(capacity_rps=1.0, cold_start_s=cold_start_s)
    windows = History("s", 0.0, 60, np.full(200, 5.0))
    pred = Predictive(fleet, PredictiveSettings(), windows, 30.0,
                      ReactiveHPA(fleet, HPASettings()), "baselines")
    pred.forecaster = _StubForecaster(values)  # type: ignore[assignment]
    return pred, fleet


def _obs(now: float, replicas: int, load: float, queue: float = 0.0) -> Observation:
    return Observation(now, int(now // 10), replicas, replicas, queue, load)


def test_scale_down_keeps_replicas_the_forecast_needs_again_within_one_cold_start() -> None:
    # Low now and one cold start ahead, but a peak of 19 req/s 2 minutes from now: a replica
    # removed now could not be back in time, so the fleet holds the peak's 20 replicas.
    pred, _ = _predictive_with([2.0, 2.0, 19.0] + [2.0] * 20)
    assert pred.target(_obs(100 * 60.0, 20, 2.0)) == 20


def test_scale_down_follows_the_forecast_when_no_peak_comes_back_in_time() -> None:
    pred, _ = _predictive_with([2.0] * 8 + [19.0] * 20)  # peak 8 minutes out, cold start 5
    assert pred.target(_obs(100 * 60.0, 20, 2.0)) == 3  # 2 req/s at 95% utilisation


def test_scale_down_waits_one_cold_start_of_lower_recommendations() -> None:
    """Removing a replica that is re-ordered within a cold start pays its cold start again:
    a lower forecast must hold for a cold start (300 s > the 60 s step) before replicas go."""
    pred, _ = _predictive_with([19.0] * 20)
    t0 = 100 * 60.0
    assert pred.target(_obs(t0, 20, 19.0)) == 20
    pred.forecaster.values = np.full(20, 2.0)  # type: ignore[attr-defined]
    assert pred.target(_obs(t0 + 60, 20, 2.0)) == 20
    assert pred.target(_obs(t0 + 240, 20, 2.0)) == 20
    assert pred.target(_obs(t0 + 330, 20, 2.0)) == 3


@needs_data
def test_predictive_never_drops_below_its_forecast_need_within_a_cold_start() -> None:
    ts = _servegen_day(1.0)
    fleet = default_fleet(ts, 300.0)
    setup = prepare(ts, fleet)
    pred = Predictive(fleet, PredictiveSettings(), setup.windows, setup.decision_every * setup.dt,
                      ReactiveHPA(fleet, HPASettings()), "baselines")
    downs: list[tuple[int, int]] = []  # (target, replicas the forecast needs within one cold start)
    original = pred.fallback.run
    util = pred.policy.target_utilisation

    def spy(fc: DemandForecast | None, obs: Observation, floor: int | None,
            quantile: float | None, policy: object = None, cold_start_s: float = 0.0) -> int:
        n = original(fc, obs, floor, quantile, policy, cold_start_s)  # type: ignore[arg-type]
        if fc is not None and quantile is not None and n < obs.ordered:
            levels = sorted(fc.quantiles)
            k = len(fc.quantiles[levels[0]])
            starts = fc.start + fc.step_s * np.arange(k)
            inside = (starts + fc.step_s > obs.now) & (starts < obs.now + cold_start_s)
            at_q = [np.interp(quantile, levels, [fc.quantiles[lv][i] for lv in levels])
                    for i in np.flatnonzero(inside)]
            downs.append((n, math.ceil(max(at_q) / (fleet.capacity_rps * util) - 1e-9)))
        return n

    pred.fallback.run = spy  # type: ignore[method-assign]
    simulate(setup.arrivals, ts.start, setup.dt, fleet, pred, setup.initial_replicas,
             setup.decision_every)
    assert len(downs) > 10
    assert all(n >= soon for n, soon in downs)


def test_overload_floor_acts_only_on_observed_overload() -> None:
    pred, _ = _predictive_with([10.0] * 20)
    assert pred.overload_floor(_obs(0.0, 10, 9.5)) is None  # busy, not overloaded
    assert pred.overload_floor(_obs(0.0, 10, 10.5, queue=2.0)) is None  # noise, tiny queue
    assert pred.overload_floor(_obs(0.0, 10, 12.0)) == 12  # 20% over capacity
    assert pred.overload_floor(_obs(0.0, 10, 10.0, queue=120.0)) == 12  # queue drained in 60 s


def test_headroom_tuner_answers_a_day_of_misses_not_one_bad_hour() -> None:
    h = Headroom(0.95, 0.99, True)
    for hour in range(25):  # a day served perfectly: the quantile drifts down, slowly
        h.record(hour * 3600.0, 1000.0, False)
    calm = h.quantile
    assert 0.85 < calm < 0.95
    h.record(25 * 3600.0, 1000.0, True)  # one hour all missed: 4% of the day's requests
    for hour in range(26, 30):
        h.record(hour * 3600.0, 1000.0, False)
    assert h.quantile > calm
    assert h.quantile < 0.995


def test_nowcast_carries_the_live_deviation_and_shrinks_the_current_spread() -> None:
    qs = {0.5: np.array([100.0, 110.0]), 0.9: np.array([130.0, 150.0])}
    out = nowcast(qs, 120.0, 300.0, 600, 60.0)
    assert out[0.5].tolist() == [120.0, 130.0]
    assert out[0.9][0] == pytest.approx(120.0 + 30.0 * 0.5)  # half the window still to come
    assert out[0.9][1] == pytest.approx(170.0)
    assert nowcast(qs, 120.0, 30.0, 600, 60.0) is qs  # metrics window not inside the window
    assert nowcast(qs, 120.0, 300.0, 60, 60.0) is qs  # short windows: forecast is fresh


@needs_data
def test_utilisation_is_served_over_paid_capacity_and_shown_per_policy() -> None:
    ts = _servegen_day(1.0)
    fleet = default_fleet(ts, 120.0)
    res = replay_series(ts, fleet, forecaster="baselines")
    for p in res.policies.values():
        paid = p.sim.ordered.sum() * p.sim.dt * fleet.capacity_rps
        assert p.utilisation == pytest.approx(p.sim.served.sum() / paid)
        assert 0.0 < p.utilisation <= 1.0 + 1e-9
    assert res.policies["oracle"].utilisation >= res.policies["reactive"].utilisation
    assert "utilisation" in [c.header for c in render_table(res).columns]


@needs_data
def test_calibrated_headroom_takes_over_and_still_sees_only_the_past() -> None:
    """After a day of forecast record the calibrator chooses the quantile; perturbing the
    load after a cut changes nothing the policy did before it, calibrator included."""
    ts = _servegen_day(2.5)
    fleet = default_fleet(ts, 300.0)
    cut = 300  # windows: 50 h in, after the calibrator has taken over (144 windows + a tune)
    bent = ts.requests.copy()
    bent[cut:] *= 3.0
    runs = []
    for requests in (ts.requests, bent):
        setup = prepare(replace(ts, requests=requests), fleet)
        pred = Predictive(fleet, PredictiveSettings(), setup.windows,
                          setup.decision_every * setup.dt, ReactiveHPA(fleet, HPASettings()),
                          "baselines")
        cal = pred.headroom.calibrator
        assert cal is not None
        clock = [0.0]
        seen: list[tuple[float, float]] = []
        target, observe = pred.target, cal.observe

        def timed(obs: Observation, target=target, clock=clock) -> int:
            clock[0] = obs.now
            return target(obs)

        def spy(start: float, rps: float, observe=observe, clock=clock, seen=seen) -> None:
            seen.append((start, clock[0]))
            observe(start, rps)

        pred.target = timed  # type: ignore[method-assign]
        cal.observe = spy  # type: ignore[method-assign]
        sim = simulate(setup.arrivals, ts.start, setup.dt, fleet, pred,
                       setup.initial_replicas, setup.decision_every)
        # The calibrator learns a window's load only once the window has ended.
        assert seen and all(start + ts.step_s <= now for start, now in seen)
        runs.append((pred, sim))
    (a, sim_a), (_, sim_b) = runs
    assert a.headroom.calibrated > 0 and a.headroom.calibrator is not None
    assert len(a.headroom.calibrator) >= 144
    k = round(cut * ts.step_s / sim_a.dt)
    assert np.array_equal(sim_a.ordered[:k], sim_b.ordered[:k])
    assert not np.array_equal(sim_a.ordered, sim_b.ordered)


def test_jump_at_budget_weights_requests_and_looks_one_cold_start_back() -> None:
    # Steady 100 req/s, one window in fifty at 300: 2% of windows, 5.8% of requests.
    y = np.full(500, 100.0)
    y[::50] = 300.0
    w = History("s", 0.0, 60, y)
    assert jump_at_budget(w, 60.0, 0.99) == pytest.approx(3.0)
    assert jump_at_budget(w, 60.0, 0.90) == pytest.approx(1.0)
    # A 5-minute cold start compares each window with the one five windows before.
    ramp = History("s", 0.0, 60, np.arange(100.0, 201.0))
    assert 1.04 < (jump_at_budget(ramp, 300.0, 0.99) or 0) <= 1.05
    assert (jump_at_budget(ramp, 60.0, 0.99) or 0) <= 1.01
    assert jump_at_budget(History("s", 0.0, 60, np.full(5, 1.0)), 60.0, 0.99) is None


@needs_data
def test_replay_says_when_jumps_make_the_slo_costly() -> None:
    ts = _servegen_day(2.0)
    res = replay_series(ts, default_fleet(ts, 300.0), policies=["oracle"])
    assert res.jump_at_budget is not None and res.jump_at_budget > 1.0
    text = [n for n in res.notes if n.startswith("load jumps")]
    assert len(text) == 1 and f"{res.jump_at_budget:.2f}x" in text[0]
    assert ("no forecast sees" in text[0]) == (res.jump_at_budget >= 1.5)
