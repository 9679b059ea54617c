"""refsim vs `forescale replay`: the seed HPA and the oracle, configured alike, side by side.

Runs `../shared/tools/refsim.py --csv` (an independent simulator) and forescale's replay fleet
simulator on the three 14-day ServeGen series at 300 s cold start, scores both from the end of
the first day (refsim's warm-up), and isolates each modelling difference of the HPA one at a
time by swapping the replay's `ReactiveHPA` for a controller that differs in one respect:

    replay          forescale's ReactiveHPA as it is
    spec-in-band    ... but inside the tolerance band it returns the spec (ordered) count, as the
                    HPA does, instead of the ready count
    no-queue-metric ... without the separate queue-depth metric
    refsim-metric   ... with refsim's metric: (served over 60 s / 60 + queue / 60 s) / ready
                    capacity, and no queue metric
    ported          the ported HPA (models.hpa + models.behaviour, seed-typical behaviour) on
                    refsim's metric, starting pods as pods without metrics
    ported-offered  the ported HPA on the replay's metrics (offered load / ready capacity and
                    queue depth)

It drives the replay's API as of commit 3480dc8 (controller.replay_policies / replay_sim), the
replay the issue's figures were taken on; the replay is being restructured into a package, so
run it against that commit's tree:

    git archive 3480dc8 controller forecaster models | tar -x -C /tmp/fs_3480dc8
    cp models/behaviour.py models/hpa.py /tmp/fs_3480dc8/models/
    PYTHONPATH=/tmp/fs_3480dc8 .venv/bin/python bench/refsim_compare.py [--poisson] [--series R]

(`--refsim-csv F` reuses a refsim `--csv` output instead of running refsim, about 15 s.)
Prints one table per arrivals mode: series x target, refsim SLO, each variant's SLO and its
difference, and the oracle's GPU-hours in both.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    from controller.replay_policies import (
        HPASettings,
        Oracle,
        ReactiveHPA,
        _flat,
        hpa_recommendation,
    )
    from controller.replay_sim import Controller, Fleet, Observation, SimResult, simulate

    from controller.replay import default_fleet, prepare
except ImportError as exc:  # the replay moved: say how to run against the compared version
    raise SystemExit(
        f"error: {exc}; this bench compares the replay of commit 3480dc8, see its docstring"
    ) from None
from forecaster.trace import read_trace
from models.behaviour import Behaviour
from models.hpa import HPAState, hpa_step, plain_metric_replicas

ROOT = Path(__file__).resolve().parents[1]
REFSIM = ROOT.parent / "shared" / "tools" / "refsim.py"
DATA = ROOT.parent / "shared" / "data" / "servegen_per_10min.csv.gz"
SERIES = ("servegen-m-large", "servegen-m-mid", "servegen-m-small")
TARGETS = (0.55, 0.65, 0.75)
COLD_S = 300.0
WARMUP_S = 86400.0
DRAIN_S = 60.0  # refsim: the queue counts as load that must drain within this time


# --- controllers -----------------------------------------------------------------------------


class SpecInBand(ReactiveHPA):
    """The replay's HPA, except that inside the tolerance band it keeps the spec count."""

    def target(self, obs: Observation) -> int:
        s = self.s
        raw = hpa_recommendation(obs.ready, obs.load_rps, obs.queue, self.fleet.capacity_rps,
                                 s.target_utilisation, s.queue_target_s, s.tolerance)
        if raw == obs.ready and obs.ordered != obs.ready:
            raw = obs.ordered  # the band returned ready: the HPA returns spec replicas
        return self._finish(obs, raw)

    def _finish(self, obs: Observation, raw: int) -> int:
        s = self.s
        while self._raw and self._raw[0][0] <= obs.now - s.scale_up_stabilisation_s:
            self._raw.popleft()
        self._raw.append((obs.now, raw))
        rec = raw
        if raw > obs.ordered:
            rec = max(obs.ordered, min(r for _, r in self._raw))
        demand = rec * self.fleet.capacity_rps * (1 - 1e-9)
        return self.run(_flat(obs.now, demand), obs, None, None)


class NoQueueMetric(SpecInBand):
    """The replay's HPA on utilisation alone (no queue-depth metric)."""

    def target(self, obs: Observation) -> int:
        s = self.s
        raw = hpa_recommendation(obs.ready, obs.load_rps, 0.0, self.fleet.capacity_rps,
                                 s.target_utilisation, s.queue_target_s, s.tolerance)
        return self._finish(obs, raw)


class _ServedTracker:
    """Served requests over the last 60 s, from the offered load and the queue's change."""

    def __init__(self) -> None:
        self.queues: deque[tuple[float, float]] = deque()

    def served_rps(self, obs: Observation) -> float:
        self.queues.append((obs.now, obs.queue))
        while self.queues[0][0] < obs.now - 60.0 - 1e-6:
            self.queues.popleft()
        t0, q0 = self.queues[0]
        if obs.now - t0 < 60.0 - 1e-6:
            return obs.load_rps
        return max(0.0, obs.load_rps - (obs.queue - q0) / 60.0)


class RefsimMetric(SpecInBand):
    """The replay's HPA pipeline on refsim's utilisation metric, no queue metric."""

    def __init__(self, fleet: Fleet, settings: HPASettings, spec_in_band: bool) -> None:
        super().__init__(fleet, settings)
        self.tracker = _ServedTracker()
        self.spec_in_band = spec_in_band

    def target(self, obs: Observation) -> int:
        s = self.s
        load = self.tracker.served_rps(obs) + obs.queue / DRAIN_S
        raw = hpa_recommendation(obs.ready, load, 0.0, self.fleet.capacity_rps,
                                 s.target_utilisation, s.queue_target_s, s.tolerance)
        if self.spec_in_band and raw == obs.ready and obs.ordered != obs.ready:
            raw = obs.ordered
        return self._finish(obs, raw)


@dataclass
class PortedHPA:
    """The ported HPA: calculator + `normalise` with the seed-typical behaviour."""

    fleet: Fleet
    target_utilisation: float
    metric: str  # "refsim" or "offered"
    min_replicas: int = 2
    queue_target_s: float = 5.0

    def __post_init__(self) -> None:
        self.state = HPAState()
        self.behaviour = Behaviour.seed_typical()
        self.tracker = _ServedTracker()

    def target(self, obs: Observation) -> int:
        cap = self.fleet.capacity_rps
        starting = obs.ordered - obs.ready
        proposals: list[int] = []
        if obs.ready > 0:
            if self.metric == "refsim":
                load = self.tracker.served_rps(obs) + obs.queue / DRAIN_S
                metrics = [(load / obs.ready, cap * self.target_utilisation)]
            else:
                metrics = [(obs.load_rps / obs.ready, cap * self.target_utilisation),
                           (obs.queue / obs.ready, cap * self.queue_target_s)]
            for per_pod, target in metrics:
                p = plain_metric_replicas(obs.ordered, [per_pod] * obs.ready, target,
                                          missing=starting)
                proposals.append(p.replicas)
        decision, self.state = hpa_step(self.state, obs.now, obs.ordered, proposals,
                                        self.min_replicas, 10_000, self.behaviour)
        return decision.replicas


# --- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    slo: float
    gpu_h: float


def score(sim: SimResult, fleet: Fleet) -> Scored:
    """SLO attainment and GPU-hours from the end of the warm-up day, as refsim scores."""
    s0 = round(WARMUP_S / sim.dt)
    arr = sim.arrivals[s0:]
    slo = float(sim.met[s0:].sum() / arr.sum()) if arr.sum() > 0 else 1.0
    return Scored(slo, float(sim.ordered[s0:].sum()) * sim.dt * fleet.gpus_per_replica / 3600)


def forescale_runs(series: str, poisson: bool) -> dict[tuple[str, float], Scored]:
    trace = read_trace(DATA, [series])[series]
    fleet = default_fleet(trace, COLD_S)
    setup = prepare(trace, fleet, "poisson" if poisson else "uniform", seed=1)
    out: dict[tuple[str, float], Scored] = {}

    def run(ctrl: Controller, every: int, init: int) -> Scored:
        sim = simulate(setup.arrivals, trace.start, setup.dt, fleet, ctrl, init, every)
        return score(sim, fleet)

    out[("oracle", 0.0)] = run(Oracle(fleet, setup.arrivals, setup.dt), 1,
                               setup.initial_replicas)
    init = max(setup.initial_replicas, 2)
    makers: dict[str, Callable[[HPASettings], Controller]] = {
        "replay": lambda h: ReactiveHPA(fleet, h),
        "spec-in-band": lambda h: SpecInBand(fleet, h),
        "no-queue-metric": lambda h: NoQueueMetric(fleet, h),
        "refsim-metric": lambda h: RefsimMetric(fleet, h, spec_in_band=True),
        "ported": lambda h: PortedHPA(fleet, h.target_utilisation, "refsim"),
        "ported-offered": lambda h: PortedHPA(fleet, h.target_utilisation, "offered"),
    }
    for t in TARGETS:
        hpa = HPASettings(target_utilisation=t)
        for name, make in makers.items():
            out[(name, t)] = run(make(hpa), setup.decision_every, init)
    return out


def refsim_runs(
    csv_path: Path | None, poisson: bool, pattern: str
) -> dict[tuple[str, str, float], Scored]:
    if csv_path is None:
        tmp = Path(tempfile.mkdtemp()) / "refsim.csv"
        cmd = [sys.executable, str(REFSIM), "--cold-starts", "300", "--variants", "slow",
               "--targets", ",".join(map(str, TARGETS)), "--quantiles", "0.9", "--jobs", "1",
               "--series", pattern, "--csv", str(tmp)]
        if poisson:
            cmd.append("--poisson")
        subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
        csv_path = tmp
    rows: dict[tuple[str, str, float], Scored] = {}
    with csv_path.open() as f:
        for r in csv.DictReader(f):
            if r["policy"] in ("oracle", "reactive-slow"):
                rows[(r["series"], r["policy"], float(r["param"]))] = Scored(
                    float(r["slo"]), float(r["gpu_h"]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poisson", action="store_true", help="Poisson arrivals (default fluid)")
    ap.add_argument("--series", default="m-large|m-mid|m-small", help="regex, as refsim's")
    ap.add_argument("--refsim-csv", type=Path, help="reuse a refsim --csv output")
    a = ap.parse_args()
    names = [s for s in SERIES if re.search(a.series, s)]
    ref = refsim_runs(a.refsim_csv, a.poisson, a.series)
    variants = ("replay", "spec-in-band", "no-queue-metric", "refsim-metric", "ported",
                "ported-offered")
    mode = "Poisson" if a.poisson else "fluid"
    print(f"# refsim vs forescale replay, {mode} arrivals, cold start 300 s, scored after day 1")
    print("| series | target | refsim SLO | " + " | ".join(variants) + " |")
    print("|---|---|---|" + "---|" * len(variants))
    oracle_rows = []
    all_fs: dict[str, dict[tuple[str, float], Scored]] = {}
    for s in names:
        fs = all_fs[s] = forescale_runs(s, a.poisson)
        for t in TARGETS:
            r = ref[(s, "reactive-slow", t)]
            cells = [f"{fs[(v, t)].slo:.2%} ({100 * (fs[(v, t)].slo - r.slo):+.1f})"
                     for v in variants]
            print(f"| {s} | {t:.2f} | {r.slo:.2%} | " + " | ".join(cells) + " |")
        ro, fo = ref[(s, "oracle", 0.0)], fs[("oracle", 0.0)]
        oracle_rows.append((s, ro, fo))
        sys.stdout.flush()
    print("\n| series | refsim oracle GPU-h | forescale oracle GPU-h | ratio | SLO refsim / fs |")
    print("|---|---|---|---|---|")
    for s, ro, fo in oracle_rows:
        print(f"| {s} | {ro.gpu_h:.0f} | {fo.gpu_h:.0f} | {fo.gpu_h / ro.gpu_h:.3f} | "
              f"{ro.slo:.2%} / {fo.slo:.2%} |")
    print("\n| series | target | HPA GPU-h refsim | replay | ported |")
    print("|---|---|---|---|---|")
    for s in names:
        for t in TARGETS:
            r, fs = ref[(s, "reactive-slow", t)], all_fs[s]
            print(f"| {s} | {t:.2f} | {r.gpu_h:.0f} | {fs[('replay', t)].gpu_h:.0f} | "
                  f"{fs[('ported', t)].gpu_h:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
