"""Replay: the simulator conserves requests, the oracle is a bound, no policy sees the future."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controller.replay import (
    ReplayError,
    default_fleet,
    plot,
    prepare,
    render_table,
    replay_series,
    run_policy,
    run_replay,
)
from controller.replay_policies import HPASettings, ReactiveHPA, hpa_recommendation
from controller.replay_sim import Fleet, Observation, simulate
from forecaster.trace import TraceSeries, read_trace

DATA = Path("/work/shared/data")
SERVEGEN = DATA / "servegen_per_10min.csv.gz"
MOONCAKE = DATA / "mooncake_per_10s.csv"
needs_data = pytest.mark.skipif(not SERVEGEN.exists(), reason="shared traces not present")


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
