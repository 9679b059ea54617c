"""Replay: the simulator conserves requests, the replay runs forescale's own Service (the same
decisions as a Service stepped by hand), peers are the HPA, nothing sees the future, and bad
input is refused before any simulation runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controller.config import parse_config
from controller.metrics import ForescaleMetrics
from controller.replay import (
    FORESCALE,
    REACTIVE,
    ReplayError,
    config_for_series,
    plan,
    plot,
    render_table,
    replay_plan,
    run_peer,
    run_replay,
    write_report,
)
from controller.replay.drive import (
    ReplayEdges,
    SimulatedVariant,
    VirtualClock,
    replay_config,
)
from controller.replay.harness import ReplayPlan, jump_at_budget, run_forescale
from controller.replay.peers import HPAPeer, HPASettings
from controller.replay.sim import Fleet, FleetSim, Observation, simulate
from controller.service import Service
from forecaster.base import History
from forecaster.trace import TraceSeries, read_trace
from models.behaviour import Behaviour
from tests.support import SHARED_DATA

DATA = SHARED_DATA
SERVEGEN = DATA / "servegen_per_10min.csv.gz"
MOONCAKE = DATA / "mooncake_per_10s.csv"
#: Fails (never skips) with a clear message when the traces are not beside the repo.
needs_data = pytest.mark.usefixtures("shared_data")


def _servegen(days: float, name: str = "servegen-m-small", offset: int = 0) -> TraceSeries:
    ts = read_trace(SERVEGEN, [name])[name]
    n = int(days * 144)
    return replace(ts, requests=ts.requests[offset:offset + n].copy(), input_tokens=None,
                   output_tokens=None, start=ts.start + offset * ts.step_s)


def _plan(ts: TraceSeries, **variant: object) -> ReplayPlan:
    cfg = config_for_series(ts, None, 0.99, 5.0)
    if variant:
        raw = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
        raw["variants"][0].update(variant)
        cfg = parse_config(raw)
    return plan(cfg, {ts.name: ts}, assumed_fleet=True)


class _Random:
    """A controller that orders a random fleet: conservation must hold whatever it does."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def target(self, obs: Observation) -> int:
        return int(self.rng.integers(0, 8))


# ------------------------------------------------------------------ the fleet physics


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


def test_warm_up_is_simulated_but_not_scored() -> None:
    class Fixed:
        def target(self, obs: Observation) -> int:
            return 1

    arrivals = np.concatenate((np.full(50, 40.0), np.full(50, 5.0)))  # overload, then calm
    sim = simulate(arrivals, 0.0, 10.0, Fleet(capacity_rps=1.0, ttft_slo_s=1e9), Fixed(), 1,
                   1)
    tail = sim.tail(50)
    assert tail.arrivals.sum() == pytest.approx(250.0)
    assert tail.gpu_hours(Fleet(capacity_rps=1.0)) == pytest.approx(50 * 10 / 3600)
    assert tail.cold_starts == 0


# ------------------------------------------------------------------ the edges of the service


def test_replay_history_never_shows_a_window_that_has_not_ended() -> None:
    arrivals = np.arange(60, dtype=np.float64)  # 10 s steps, 600 s
    sim = FleetSim(arrivals, 0.0, 10.0, Fleet(capacity_rps=1.0), 1)
    missing = np.zeros(60, dtype=bool)
    missing[30:36] = True  # one 60 s window the trace marks missing
    clock = VirtualClock(125.0)
    edges = ReplayEdges({"v": SimulatedVariant(sim, missing)}, clock)
    h = edges.history("v", 0.0, 600.0, 60)
    # Windows [0, 60) and [60, 120) ended by 125 s; nothing after, whatever `end` says.
    assert np.isfinite(h.values[:2]).all() and np.isnan(h.values[2:]).all()
    assert h.values[0] == pytest.approx(sum(range(6)) / 60)
    clock.now = 600.0
    h = edges.history("v", 0.0, 600.0, 60)
    assert np.isnan(h.values[5]) and np.isfinite(h.values[4]) and np.isfinite(h.values[6])


def test_replay_scale_target_is_a_deployment_whose_replicas_start_after_the_cold_start(
        ) -> None:
    sim = FleetSim(np.full(60, 5.0), 0.0, 10.0, Fleet(capacity_rps=1.0, cold_start_s=60.0), 2)
    clock = VirtualClock(0.0)
    edges = ReplayEdges({"v": SimulatedVariant(sim, np.zeros(60, dtype=bool))}, clock)
    assert edges.current_replicas("v") == 2
    result = edges.apply("v", 5, ("ForecastPeak",))
    assert result.changed and result.previous == 2 and edges.current_replicas("v") == 5
    for k in range(5):  # steps 0..40 s served: the fleet as it is at 50 s
        sim.serve(k)
    assert edges.live("v", 50.0).ready_replicas == 2  # still starting
    for k in range(5, 7):  # through 60 s: the cold start has elapsed
        sim.serve(k)
    live = edges.live("v", 70.0)
    assert live.ready_replicas == 5 and live.queue_depth == 0.0
    assert live.request_rate == pytest.approx(0.5)  # 5 requests per 10 s step


@needs_data
def test_the_replay_decides_line_for_line_what_a_hand_stepped_service_decides() -> None:
    """Same config, same edges, same clock: the replay's records are the Service's own."""
    ts = _servegen(2.0)
    p = _plan(ts)
    run = run_forescale(p)
    cfg = replay_config(p.config)
    setup = p.variants[ts.name]
    sim = FleetSim(setup.arrivals, p.start, p.dt, setup.fleet,
                   setup.initial_replicas)
    clock = VirtualClock(p.start)
    edges = ReplayEdges({ts.name: SimulatedVariant(sim, setup.missing)}, clock)
    svc = Service(cfg, edges, {ts.name: edges}, clock=clock, metrics=ForescaleMetrics())
    mine = []
    dt = p.dt
    for k in range(sim.n):
        clock.now = p.start + k * dt
        if k % round(cfg.schedules.retrain_interval_s / dt) == 0:
            svc.retrain()
        if k % round(cfg.schedules.reconcile_interval_s / dt) == 0:
            mine.append(svc.reconcile()[0])
        sim.serve(k)
    assert len(mine) == len(run.records) > 500
    assert [(r.ts, r.desired, r.outcome, r.reasons) for r in mine] == \
        [(r.ts, r.desired, r.outcome, r.reasons) for r in run.records]
    assert {r.state for r in run.records} >= {"warming-up", "predictive"}
    assert (sim.result().ordered == run.sims[ts.name].ordered).all()


@needs_data
def test_forescale_in_the_replay_is_driven_by_the_config_it_is_given() -> None:
    """A config change must change the replay's decisions: nothing is fixed by the harness."""
    ts = _servegen(1.5)
    base = run_forescale(_plan(ts))
    capped = run_forescale(_plan(ts, max_replicas=12))
    assert max(r.desired or 0 for r in base.records) > 12
    assert max(r.desired or 0 for r in capped.records) <= 12
    assert any("TooManyReplicas" in {c["code"] for c in r.reasons} for r in capped.records)


def test_a_dry_run_config_is_replayed_as_if_it_scaled() -> None:
    cfg = parse_config({"actuation": "dry-run", "variants": [{
        "name": "a", "deployment": {"namespace": "x", "name": "a"},
        "profile": {"capacity_rps": 1.0}, "actuation": "metric"}]})
    out = replay_config(cfg)
    assert out.mode_of(out.variants[0]).value == "scale"
    assert out.state.backend == "none" and not out.leader_election.enabled


# ------------------------------------------------------------------ peers and scores


def test_seed_hpa_adds_at_most_two_pods_a_minute_after_its_window() -> None:
    hpa = HPAPeer(Fleet(capacity_rps=1.0), HPASettings(behaviour=Behaviour.seed_typical()))
    current, targets = 2, []
    for i in range(10):
        t = hpa.target(Observation(float(30 * i), i, current, current, 0.0, 100.0))
        targets.append(t)
        current = t
    moves = np.diff([2, *targets])
    for i in range(len(moves) - 1):
        assert moves[i] + moves[i + 1] <= 2  # any 60 s (two decisions) adds at most 2
    assert targets[-1] > 2


def test_hpa_inside_its_tolerance_keeps_the_starting_replicas() -> None:
    """The HPA returns the spec count inside the band: replicas still starting are not
    cancelled (the old emulation returned the ready count)."""
    hpa = HPAPeer(Fleet(capacity_rps=1.0), HPASettings(target_utilisation=0.75,
                                                       behaviour=Behaviour.hpa_defaults()))
    # 4 ready at 0.76 utilisation (inside 10%), 2 more starting: stays at 6.
    assert hpa.target(Observation(0.0, 0, 4, 6, 0.0, 4 * 0.76)) == 6


@needs_data
@pytest.mark.parametrize("arrivals", ["uniform", "poisson"])
def test_oracle_meets_the_slo_and_no_peer_meeting_it_is_cheaper(arrivals: str) -> None:
    ts = _servegen(1.0)
    cfg = config_for_series(ts, None, 0.99, 5.0)
    p = plan(cfg, {ts.name: ts}, assumed_fleet=True, arrivals=arrivals)
    oracle = run_peer(p, ts.name, "oracle")
    assert oracle.slo_attainment >= 0.999
    for name in REACTIVE:
        for target in (0.3, 0.75):
            out = run_peer(p, ts.name, name, target)
            if out.slo_attainment >= oracle.slo_attainment:
                assert out.gpu_hours >= oracle.gpu_hours * 0.999


@needs_data
def test_replay_reports_every_policy_with_honest_defaults(tmp_path: Path) -> None:
    ts = _servegen(1.5)
    p = _plan(ts)
    res = replay_plan(p, iso_slo=True, workers=0)[0]
    doc = res.to_json()
    assert set(doc["policies"]) == {FORESCALE, *REACTIVE, "oracle"}
    assert doc["assumed_fleet"] is True and doc["fleet"]["gpu_hourly_usd"] is None
    assert all(s["cost"] is None for s in doc["policies"].values())
    assert any("fleet assumed" in n for n in res.notes)
    assert doc["policies"]["oracle"]["gpu_hours_vs_oracle"] == 1.0
    json.dumps(doc)
    assert render_table(res).row_count == 5
    # Iso-SLO: each peer's chosen target reaches forescale's SLO and the next leaner one
    # tried does not (the sweep's claim), and the ratio is forescale's over that run.
    goal = res.policies[FORESCALE].slo_attainment
    for peer in REACTIVE:
        iso = res.iso_slo[peer]
        tried = dict((t, (slo, gpu)) for t, slo, gpu in iso.tried)
        if iso.target is None:
            assert all(slo < goal for slo, _ in tried.values())
            continue
        assert tried[iso.target][0] >= goal
        leaner = [t for t in tried if t > iso.target]
        assert all(tried[t][0] < goal for t in leaner)
        assert iso.ratio == pytest.approx(res.policies[FORESCALE].gpu_hours
                                          / tried[iso.target][1])
    # The report: one PNG per variant, a summary, every decision readable as /decisions.
    out = write_report([res], tmp_path / "report")
    assert (out / f"{ts.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| forescale |" in (out / "summary.md").read_text()
    lines = (out / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == len(res.decisions) > 0
    assert set(json.loads(lines[-1])) >= {"ts", "variant", "outcome", "desired", "reasons"}
    assert plot(res, tmp_path / "one.png").stat().st_size > 10_000


def test_profile_sets_capacity_cold_start_and_dollars(tmp_path: Path) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text("capacity_rps: 2.5\ncold_start_s: 90\ngpus_per_replica: 2\n"
                    "gpu_hourly_usd: 3.0\n")
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp_s,series,requests\n" + "".join(
        f"{i * 10},s,{50 + (i % 7) * 5}\n" for i in range(120)))
    res = run_replay(csv, ["s"], profile_path=prof, policies=("hpa-seed", "oracle"),
                     workers=0)[0]
    assert res.fleet.capacity_rps == 2.5 and res.fleet.cold_start_s == 90
    assert not res.assumed_fleet
    oracle = res.policies["oracle"]
    replica_hours = float(oracle.sim.ordered.sum()) * oracle.sim.dt / 3600
    assert oracle.gpu_hours == pytest.approx(replica_hours * 2)  # 2 GPUs a replica
    assert oracle.cost == pytest.approx(oracle.gpu_hours * 3.0)


def test_jump_at_budget_weights_requests_and_looks_one_cold_start_back() -> None:
    y = np.array([10.0] * 50 + [20.0] * 50)
    assert jump_at_budget(History("x", 0.0, 60, y), 60.0, 0.5) == pytest.approx(1.0)
    spiky = np.array([10.0, 30.0] * 40)
    assert jump_at_budget(History("x", 0.0, 60, spiky), 60.0, 0.99) == pytest.approx(3.0)


# ------------------------------------------------------------------ bad input, before any work


def test_unknown_policy_and_wild_cold_start_are_refused_at_once() -> None:
    ts = TraceSeries("s", 0.0, 10, np.full(50, 5.0), None, None)
    p = plan(config_for_series(ts, None, 0.99, 5.0), {"s": ts}, assumed_fleet=True)
    with pytest.raises(ReplayError, match="unknown policies"):
        replay_plan(p, policies=("magic",), workers=0)
    t0 = time.perf_counter()
    with pytest.raises(ReplayError, match="cold start must be between 0 and 3600"):
        run_replay(MOONCAKE, ["mooncake-conversation"], cold_start_s=1e9, workers=0)
    assert time.perf_counter() - t0 < 5


def test_config_variants_missing_from_the_trace_are_named() -> None:
    ts = TraceSeries("s", 0.0, 10, np.full(50, 5.0), None, None)
    cfg = parse_config({"variants": [{"name": "other", "deployment": {
        "namespace": "x", "name": "o"}, "profile": {"capacity_rps": 1.0}}]})
    with pytest.raises(ReplayError, match=r"\['other'\] are not series of the trace"):
        plan(cfg, {"s": ts})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "replay", *args],
                          capture_output=True, text=True, timeout=120)


@needs_data
@pytest.mark.parametrize("flag", ["--plot", "--report"])
def test_cli_refuses_an_output_in_a_missing_folder_before_simulating(flag: str,
                                                                     tmp_path: Path) -> None:
    t0 = time.perf_counter()
    r = _cli("--data", str(MOONCAKE), "--series", "mooncake-conversation", flag,
             str(tmp_path / "nowhere" / "out.png"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert time.perf_counter() - t0 < 30


@needs_data
def test_cli_replays_a_config_as_serve_takes_it(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "prometheus: {step_s: 60}\n"
        "variants:\n"
        "  - name: mooncake-conversation\n"
        "    deployment: {namespace: llm, name: mc}\n"
        "    profile: {capacity_rps: 0.5, cold_start_s: 60, gpu_hourly_usd: 2.5}\n"
        "    max_replicas: 200\n", encoding="utf-8")
    r = _cli("--data", str(MOONCAKE), "--config", str(cfg), "--json",
             "--policies", "forescale,hpa-default,oracle")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["series"] == "mooncake-conversation" and doc["assumed_fleet"] is False
    assert set(doc["policies"]) == {"forescale", "hpa-default", "oracle"}
    assert doc["policies"]["oracle"]["cost"] > 0
    bad = _cli("--data", str(MOONCAKE), "--config", str(cfg), "--series", "x")
    assert bad.returncode == 2 and "drop --series" in bad.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_replay_reads_a_fleet_history_from_prometheus(prometheus_backfilled: object,
                                                      tmp_path: Path) -> None:
    """`--prometheus URL --since 3d`: history through the service's PrometheusSource, from a
    real Prometheus backfilled with the ServeGen trace; the same load as the trace file."""
    from tests.support.prom import END_TIME

    url = prometheus_backfilled.url  # type: ignore[attr-defined]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"prometheus: {{url: '{url}', step_s: 600}}\n"
        "variants:\n"
        "  - name: servegen-m-small\n"
        "    deployment: {namespace: llm, name: small}\n"
        "    profile: {capacity_rps: 60.0, cold_start_s: 300}\n"
        "    max_replicas: 500\n", encoding="utf-8")
    r = _cli("--prometheus", url, "--config", str(cfg), "--since", "3d", "--until",
             str(END_TIME), "--json", "--policies", "forescale,hpa-seed,oracle")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["series"] == "servegen-m-small" and doc["policies"]["oracle"]["slo_attainment"] \
        >= 0.999
    # The history read back is the trace's last three days (rates of 10-minute windows).
    from controller.config import load_config
    from controller.replay.prom import read_history

    got = read_history(load_config(cfg), url, 3 * 86_400, now=END_TIME)["servegen-m-small"]
    want = read_trace(SERVEGEN, ["servegen-m-small"])["servegen-m-small"]
    tail = want.requests[-got.requests.shape[0]:]
    both = np.isfinite(got.requests) & np.isfinite(tail)
    assert both.sum() > 0.9 * got.requests.shape[0]
    assert np.allclose(got.requests[both], tail[both], rtol=0.1)
    down = _cli("--prometheus", "http://127.0.0.1:9", "--config", str(cfg), "--since", "1d")
    assert down.returncode == 2 and "cannot read the history" in down.stderr


@needs_data
def test_the_service_measures_the_cold_start_of_a_deployment_slower_than_configured() -> None:
    """The config says 120 s; the simulated Deployment's replicas take 300 s to be ready.
    The policy measures it from scale-ups (p90), plans its forecast window and scale-down hold
    with it, and says so."""
    ts = _servegen(1.5)
    p = _plan(ts, profile={"capacity_rps": float(np.nanmean(ts.requests)) / 20,
                           "cold_start_s": 120.0, "gpu_hourly_usd": 0.0})
    slow = {n: replace(s, fleet=replace(s.fleet, cold_start_s=300.0))
            for n, s in p.variants.items()}
    run = run_forescale(replace(p, variants=slow))
    policy = run.service.variants[ts.name].policy
    assert policy.cold_start.measured, policy.cold_start.explain()
    # Seen at the first reconcile after readiness: 300 s plus at most one 30 s interval.
    assert 300.0 <= policy.cold_start_s <= 330.0
    assert "measured p90" in policy.cold_start.explain()
    late = [r for r in run.records if r.ts > run.records[-1].ts - 3600]
    assert any("[t+3" in c["message"] for r in late for c in r.reasons
               if c["code"] in ("ForecastPeak", "Reactive"))
    assert policy.scaling_policy().behaviour.scale_down.stabilisation_s == \
        pytest.approx(max(policy.cold_start_s, 600.0))
