"""`forescale replay`: what `forescale serve` would have done on a load trace, against peers.

forescale is replayed by running its own `Service` with the config `serve` takes, on a
virtual clock, against simulated fleets (`controller.replay.drive`): every variant, group,
quota, behaviour and schedule of the config applies, and nothing in this package forecasts or
tunes headroom. The peers it is compared with are emulated (`controller.replay.peers`): the
seed-typical HPA, the HPA on its API defaults, a KEDA-style queue scaler, and an oracle that
knows the future. Each runs on the same arrivals and the same fleet physics
(`controller.replay.sim`).

Scores: SLO attainment (share of requests whose estimated TTFT meets the SLO), GPU-hours,
cost, peak queue, scale events, cold starts, utilisation of the capacity paid for, and
GPU-hours relative to the oracle. `iso_slo` sweeps each reactive peer's target to the
cheapest setting that reaches forescale's attainment, because savings only mean something at
equal SLO.

What is simulated and what is assumed: arrivals are the trace's rates, uniform or Poisson in
steps of at most 10 s; a replica serves its capacity at the SLO (`models.capacity`), work
beyond it queues FIFO, TTFT = the base TTFT (the profile's curve) plus the wait; a replica is
billed from its order and ready one cold start later. Without a profile the fleet is assumed:
one replica carries 1/20 of the series' mean load, and no dollars are reported.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from controller.config import Config, ConfigError, parse_config, read_yaml_file
from controller.replay.drive import ServiceRun, run_service
from controller.replay.peers import (
    HPAPeer,
    HPASettings,
    KedaQueuePeer,
    KedaSettings,
    Oracle,
)
from controller.replay.sim import (
    Arrivals,
    Controller,
    Fleet,
    SimResult,
    arrivals_per_step,
    sim_step,
    simulate,
)
from controller.service import DecisionRecord
from forecaster.base import FloatArray, History
from forecaster.trace import TraceError, TraceSeries, read_trace
from models.behaviour import Behaviour
from models.capacity import capacity_at_slo
from models.profile import VariantProfile

#: forescale (its `Service`), then the peers emulated for comparison.
FORESCALE = "forescale"
REACTIVE = ("hpa-seed", "hpa-default", "keda-queue")
POLICIES = (FORESCALE, *REACTIVE, "oracle")
#: Targets tried by `iso_slo_sweep` for each reactive peer, from lean to generous.
ISO_SLO_TARGETS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3,
                   0.25, 0.2, 0.15, 0.1, 0.07, 0.05)
#: Above this `jump_at_budget` the replay warns that the SLO is costly to meet (issue 8's
#: calibration: at > 1.5x, 99% at 300 s costs several times the oracle or is not reached).
JUMPY = 1.5
#: Without a profile, one replica carries this share of the series' mean load (~20 replicas).
DEFAULT_REPLICAS_AT_MEAN = 20.0
#: Processes running the peers beside forescale's service (which runs in the main one).
WORKERS = min(2, os.cpu_count() or 1)
#: Cold starts the replay accepts (a GPU replica is ready within an hour or it is broken).
MAX_COLD_START_S = 3600.0

_ATTRIBUTION = {
    "servegen": "Alibaba ServeGen, github.com/alibaba/ServeGen (Apache-2.0)",
    "azure": "Azure LLM inference trace 2023, github.com/Azure/AzurePublicDataset (CC-BY-4.0)",
    "mooncake": "Mooncake FAST'25 trace, github.com/kvcache-ai/Mooncake (Apache-2.0)",
    "nasa": "NASA KSC WWW logs, Internet Traffic Archive (public domain)",
}


class ReplayError(ValueError):
    """A replay that cannot run (bad policy name, unusable series, config or profile)."""


@dataclass(frozen=True)
class PolicyOutcome:
    """The scores of one policy over the scored part of the replay, with its record."""

    name: str
    slo_attainment: float
    gpu_hours: float
    cost: float | None
    peak_queue: float
    scale_events: int
    cold_starts: int
    sim: SimResult = field(repr=False)
    note: str = ""
    #: Requests served over the capacity paid for (ordered replicas, starting ones included).
    utilisation: float = math.nan

    @staticmethod
    def of(name: str, sim: SimResult, fleet: Fleet, priced: bool, note: str = "",
           skip: int = 0) -> PolicyOutcome:
        """Scores from step `skip` on (the warm-up is simulated, not scored)."""
        s = sim.tail(skip)
        gpu_h = s.gpu_hours(fleet)
        return PolicyOutcome(name, s.slo_attainment, gpu_h,
                             gpu_h * fleet.gpu_hourly_usd if priced else None,
                             float(s.queue.max(initial=0.0)), s.scale_events, s.cold_starts,
                             sim, note, s.utilisation(fleet))


@dataclass(frozen=True)
class IsoSlo:
    """A reactive peer's cheapest target reaching forescale's attainment (None: none did)."""

    peer: str
    slo: float
    target: float | None
    gpu_hours: float | None
    ratio: float | None  # forescale GPU-hours / the peer's at that target
    tried: tuple[tuple[float, float, float], ...] = ()  # (target, attainment, GPU-hours)


@dataclass(frozen=True)
class ReplayResult:
    series: str
    source: str
    fleet: Fleet
    slo_target: float
    policies: dict[str, PolicyOutcome]
    iso_slo: dict[str, IsoSlo] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: Load jump over one cold start at the SLO's miss budget (`jump_at_budget`).
    jump_at_budget: float | None = None
    #: True when no profile was given: capacity = mean / 20, no dollars.
    assumed_fleet: bool = False
    #: Windows of the trace treated as gaps (missing data, not zero load).
    gaps: int = 0
    #: forescale's decisions for this variant, as `/decisions` shows them.
    decisions: tuple[DecisionRecord, ...] = field(default=(), repr=False)
    warmup_s: float = 0.0

    def vs_oracle(self, name: str) -> float | None:
        oracle = self.policies.get("oracle")
        if oracle is None or oracle.gpu_hours <= 0 or name not in self.policies:
            return None
        return self.policies[name].gpu_hours / oracle.gpu_hours

    def to_json(self) -> dict[str, Any]:
        """The CLI's `--json` document; keys are a contract, values are plain floats/ints."""
        return {
            "series": self.series,
            "assumed_fleet": self.assumed_fleet,
            "fleet": {"capacity_rps": self.fleet.capacity_rps,
                      "cold_start_s": self.fleet.cold_start_s,
                      "ttft_slo_s": self.fleet.ttft_slo_s,
                      "gpu_hourly_usd": None if self.assumed_fleet
                      else self.fleet.gpu_hourly_usd},
            "gaps": self.gaps,
            "warmup_s": self.warmup_s,
            "slo_target": self.slo_target,
            "policies": {
                name: {"slo_attainment": p.slo_attainment, "gpu_hours": p.gpu_hours,
                       "cost": p.cost, "scale_events": p.scale_events,
                       "cold_starts": p.cold_starts, "utilisation": p.utilisation,
                       "peak_queue": p.peak_queue, "gpu_hours_vs_oracle": self.vs_oracle(name)}
                for name, p in self.policies.items()},
            "iso_slo": {peer: {"slo": iso.slo, "target": iso.target,
                               "gpu_hours": iso.gpu_hours,
                               "gpu_hours_ratio_forescale_vs_peer": iso.ratio}
                        for peer, iso in self.iso_slo.items()},
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class VariantSetup:
    """One variant's replay inputs: its trace, fleet, arrivals and warm start."""

    name: str
    trace: TraceSeries
    fleet: Fleet
    arrivals: FloatArray
    #: Per simulation step: inside a window the trace marks missing.
    missing: np.ndarray
    initial_replicas: int
    min_replicas: int
    max_replicas: int

    def windows(self, step_s: int) -> History:
        """The trace as the load that came, per `step_s` window (NaN where missing)."""
        dt = self.fleet_dt
        per = max(1, round(step_s / dt))
        n = self.arrivals.shape[0] // per
        rates = self.arrivals[:n * per].reshape(-1, per).sum(axis=1) / (per * dt)
        gap = self.missing[:n * per].reshape(-1, per).any(axis=1)
        return History(self.name, self.trace.start, int(per * dt), np.where(gap, np.nan, rates))

    @property
    def fleet_dt(self) -> float:
        return sim_step(self.trace.step_s)


@dataclass(frozen=True)
class ReplayPlan:
    """Everything the policies share: the config forescale runs, the variants, the clock."""

    config: Config
    variants: dict[str, VariantSetup]
    dt: float
    start: float
    assumed_fleet: bool
    source: str
    slo_target: float
    warmup_s: float = 0.0

    @property
    def skip(self) -> int:
        return max(0, round(self.warmup_s / self.dt))


# ------------------------------------------------------------------ building a plan


def fleet_for(profile: VariantProfile, ttft_slo_s: float, attainment: float = 0.99) -> Fleet:
    """The simulated replica of a profile: its capacity at the SLO is the one the service
    plans with (`models.capacity.capacity_at_slo`), so the two agree on what "one replica at
    SLO" means; the curve's TTFT-vs-load points set the base TTFT of the physics."""
    from models.profile import SLO

    cap = capacity_at_slo(profile, SLO(ttft_p95_s=ttft_slo_s, attainment_target=attainment))
    if not cap.feasible or not cap.rps > 0:
        raise ReplayError(f"profile cannot meet a TTFT of {ttft_slo_s} s at any load "
                          f"({cap.explanation})")
    points = tuple(sorted((p.request_throughput, p.ttft_p95_s) for p in profile.curve))
    return Fleet(capacity_rps=cap.rps, base_ttft_s=profile.base_ttft_s, ttft_slo_s=ttft_slo_s,
                 cold_start_s=profile.cold_start_s, gpus_per_replica=profile.gpus_per_replica,
                 gpu_hourly_usd=profile.gpu_hourly_usd, ttft_curve=points)


def assumed_profile(trace: TraceSeries, cold_start_s: float) -> VariantProfile:
    """The fleet without a profile: the series' mean load needs about 20 replicas."""
    mean = float(np.nanmean(trace.requests)) if np.isfinite(trace.requests).any() else 0.0
    if not mean > 0:
        raise ReplayError(f"series {trace.name!r} has no load to replay")
    return VariantProfile(capacity_rps=mean / DEFAULT_REPLICAS_AT_MEAN, base_ttft_s=0.5,
                          cold_start_s=cold_start_s, gpu_hourly_usd=0.0,
                          provenance="assumed by forescale replay: capacity = mean / 20")


def config_for_series(trace: TraceSeries, profile: VariantProfile | None,
                      slo_target: float, ttft_slo_s: float) -> Config:
    """The config `serve` would run for one series with every default: one variant named
    after the series, the trace's step (at least a minute) as the training step."""
    step = trace.step_s * max(1, math.ceil(60 / trace.step_s))
    prof = profile if profile is not None else assumed_profile(trace, 300.0)
    raw: dict[str, Any] = {
        "prometheus": {"step_s": step},
        "variants": [{
            "name": trace.name, "deployment": {"namespace": "replay", "name": "replay"},
            "profile": prof.model_dump(mode="json", exclude_none=True),
            "slo": {"ttft_p95_s": ttft_slo_s, "attainment_target": slo_target},
            "max_replicas": 10_000}],
    }
    return parse_config(raw, f"replay of {trace.name}")


def check_cold_start(cold_start_s: float) -> None:
    """A cold start the replay can simulate: 0 to an hour (1e9 s ran for ten minutes at
    2.4 GB before this check)."""
    if not 0 <= cold_start_s <= MAX_COLD_START_S:
        raise ReplayError(f"cold start must be between 0 and {MAX_COLD_START_S:.0f} seconds, "
                          f"got {cold_start_s!r}")


def _with_cold_start(config: Config, cold_start_s: float) -> Config:
    """Every variant's profile with the cold start replaced."""
    check_cold_start(cold_start_s)
    variants = [v.model_copy(update={"profile": v.profile.model_copy(
        update={"cold_start_s": cold_start_s})}) for v in config.variants]
    return config.model_copy(update={"variants": variants})


def plan(config: Config, traces: Mapping[str, TraceSeries], *, source: str = "",
         assumed_fleet: bool = False, arrivals: Arrivals = "poisson", seed: int = 0,
         warmup_s: float = 0.0, fleet_capacity_factor: float = 1.0) -> ReplayPlan:
    """Arrivals on one simulation clock for every variant, and a warm start each policy
    shares: enough ready replicas for the first cold start's demand, so no policy is scored
    on a start-up it could not have influenced.

    `fleet_capacity_factor`: the simulated replicas serve this many times what the profile
    says (0.8: the profile is 25% optimistic), to see what a wrong profile costs and what
    the online capacity correction recovers; the peers and the oracle see the real fleet."""
    if not 0.1 <= fleet_capacity_factor <= 10.0:
        raise ReplayError(f"fleet_capacity_factor must be within 0.1-10, got "
                          f"{fleet_capacity_factor!r}")
    missing = [v.name for v in config.variants if v.name not in traces]
    if missing:
        raise ReplayError(f"the config's variants {missing} are not series of the trace "
                          f"(it has {sorted(traces)}): name each variant after its series")
    chosen = {v.name: traces[v.name] for v in config.variants}
    steps = {t.step_s for t in chosen.values()}
    starts = {t.start for t in chosen.values()}
    if len(steps) > 1 or len(starts) > 1:
        raise ReplayError("the replayed series must share their start and window "
                          f"(got starts {sorted(starts)}, windows {sorted(steps)})")
    trace0 = next(iter(chosen.values()))
    if len(trace0) < 2:
        raise ReplayError(f"series {trace0.name!r} is too short to replay")
    dt = sim_step(trace0.step_s)
    step_s = config.prometheus.step_s
    if step_s % dt:
        raise ReplayError(f"prometheus.step_s {step_s} is not a multiple of the simulation "
                          f"step {dt:g} s of this trace")
    n = min(len(t) for t in chosen.values())
    setups: dict[str, VariantSetup] = {}
    for v in config.variants:
        t = chosen[v.name]
        fleet = fleet_for(v.profile, v.slo.ttft_p95_s, v.slo.attainment_target)
        if fleet_capacity_factor != 1.0:
            fleet = replace(fleet, capacity_rps=fleet.capacity_rps * fleet_capacity_factor,
                            ttft_curve=tuple((x * fleet_capacity_factor, y)
                                             for x, y in fleet.ttft_curve))
        arr = arrivals_per_step(t.requests[:n], t.step_s, dt, arrivals, seed)
        per = round(t.step_s / dt)
        miss = np.repeat(~np.isfinite(t.requests[:n]), per)
        span = max(1, math.ceil(fleet.cold_start_s / dt)) + 1
        init = math.ceil(float(arr[:span].max()) / (dt * fleet.capacity_rps) - 1e-9)
        init = min(max(init, v.min_replicas, 1), v.max_replicas)
        setups[v.name] = VariantSetup(v.name, t, fleet, arr, miss, init, v.min_replicas,
                                      v.max_replicas)
    return ReplayPlan(config, setups, dt, trace0.start, assumed_fleet, source,
                      config.variants[0].slo.attainment_target, warmup_s)


# ------------------------------------------------------------------ running the policies


def _peer(setup: VariantSetup, dt: float, name: str, target: float | None) -> Controller:
    fleet, lo, hi = setup.fleet, max(1, setup.min_replicas), setup.max_replicas
    if name == "hpa-seed":
        return HPAPeer(fleet, HPASettings(target_utilisation=target or 0.75, min_replicas=lo,
                                          max_replicas=hi, behaviour=Behaviour.seed_typical()))
    if name == "hpa-default":
        return HPAPeer(fleet, HPASettings(target_utilisation=target or 0.75, min_replicas=lo,
                                          max_replicas=hi, behaviour=Behaviour.hpa_defaults()))
    if name == "keda-queue":
        return KedaQueuePeer(fleet, KedaSettings(target_utilisation=target or 0.75,
                                                 min_replicas=lo, max_replicas=hi))
    if name == "oracle":
        return Oracle(fleet, setup.arrivals, dt)
    raise ReplayError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


def run_peer(p: ReplayPlan, variant: str, name: str, target: float | None = None
             ) -> PolicyOutcome:
    """Replay one emulated peer on one variant; `target` is a reactive peer's utilisation
    target (default 0.75)."""
    setup = p.variants[variant]
    every = 1 if name == "oracle" else max(
        1, round(p.config.schedules.reconcile_interval_s / p.dt))
    ctrl = _peer(setup, p.dt, name, target)
    sim = simulate(setup.arrivals, p.start, p.dt, setup.fleet, ctrl, setup.initial_replicas,
                   every)
    note = f"target {target or 0.75:.0%}" if name in REACTIVE else ""
    return PolicyOutcome.of(name, sim, setup.fleet, not p.assumed_fleet, note, p.skip)


class _Pool:
    """Peers run in a second process while forescale's service runs in this one (the replay
    uses both cores); with `workers=0` everything runs here, in order."""

    def __init__(self, workers: int) -> None:
        self._ex: ProcessPoolExecutor | None = None
        if workers > 0:
            self._ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))

    def submit(self, p: ReplayPlan, variant: str, name: str, target: float | None
               ) -> Future[PolicyOutcome]:
        if self._ex is not None:
            return self._ex.submit(run_peer, p, variant, name, target)
        done: Future[PolicyOutcome] = Future()
        done.set_result(run_peer(p, variant, name, target))
        return done

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)


def iso_slo_sweep(p: ReplayPlan, variant: str, peers: Sequence[str], goal: float,
                  pool: _Pool, targets: Sequence[float] = ISO_SLO_TARGETS,
                  progress: Callable[[str], None] | None = None) -> dict[str, IsoSlo]:
    """Each peer's leanest target (of `targets`, from lean to generous) whose attainment
    reaches `goal`, found by bisection (attainment rises as the target falls), the peers'
    runs side by side in the pool."""
    lo = dict.fromkeys(peers, -1)  # index of a target known to miss (or before the list)
    hi = dict.fromkeys(peers, len(targets))  # index of a target known to reach (or after)
    tried: dict[str, dict[int, PolicyOutcome]] = {peer: {} for peer in peers}
    while True:
        probes = {peer: (lo[peer] + hi[peer]) // 2 for peer in peers
                  if hi[peer] - lo[peer] > 1}
        if not probes:
            break
        futures = {peer: pool.submit(p, variant, peer, targets[i])
                   for peer, i in probes.items()}
        for peer, fut in futures.items():
            i, out = probes[peer], fut.result()
            tried[peer][i] = out
            if progress:
                progress(f"iso-SLO {variant} {peer} target {targets[i]:.0%}: SLO "
                         f"{out.slo_attainment:.2%}")
            if out.slo_attainment >= goal - 1e-12:
                hi[peer] = i
            else:
                lo[peer] = i
    result = {}
    for peer in peers:
        rows = tuple((targets[i], o.slo_attainment, o.gpu_hours)
                     for i, o in sorted(tried[peer].items()))
        if hi[peer] >= len(targets):
            result[peer] = IsoSlo(peer, goal, None, None, None, rows)
        else:
            best = tried[peer][hi[peer]]
            result[peer] = IsoSlo(peer, goal, targets[hi[peer]], best.gpu_hours, None, rows)
    return result


def run_forescale(p: ReplayPlan, progress: Callable[[float], None] | None = None
                  ) -> ServiceRun:
    """forescale's own `Service` over every variant of the plan at once."""
    return run_service(
        p.config, {n: s.arrivals for n, s in p.variants.items()},
        {n: s.missing for n, s in p.variants.items()},
        {n: s.fleet for n, s in p.variants.items()}, p.start, p.dt,
        {n: s.initial_replicas for n, s in p.variants.items()}, progress)


def _service_note(run: ServiceRun, variant: str) -> str:
    rt = run.service.variants[variant]
    pol = rt.policy
    trail = pol.headroom.trail or [pol.quantile]
    models = sorted({r.model for r in run.records if r.variant == variant and r.model})
    states: dict[str, int] = {}
    for r in run.records:
        if r.variant == variant:
            states[r.state] = states.get(r.state, 0) + 1
    never = "" if set(states) - {"warming-up"} else (
        "never forecast: no model was trained before the trace ended (a model needs more "
        "history than the trace had by its retrains), so forescale held its replicas and "
        "raised them on overload only; ")
    return never + (f"quantile {min(trail):.3f}..{max(trail):.3f}, median "
            f"{float(np.median(trail)):.3f} ({pol.headroom.calibrated} of "
            f"{len(pol.headroom.trail)} hourly choices calibrated); models "
            f"{', '.join(models) or 'none'}; {run.retrain_passes} retrain passes, "
            f"{run.selections} model selections (all variants); decisions by state "
            + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
            + f"; {pol.floor_decisions} raised by the overload floor")


def _notes(p: ReplayPlan, setup: VariantSetup, outs: Mapping[str, PolicyOutcome],
           jump: float | None) -> tuple[str, ...]:
    """How each policy ran, what was assumed, what the trace lacks, how jumpy it is."""
    notes = [f"{n}: {o.note}" for n, o in outs.items() if o.note]
    if p.assumed_fleet:
        notes.append("fleet assumed (no profile): one replica serves 1/20 of the series' "
                     f"mean load ({setup.fleet.capacity_rps:.3g} req/s); no dollars")
    if setup.trace.gaps:
        notes.append(f"{setup.trace.gaps} window(s) of the trace are gaps (missing data, not "
                     "zero load): the fleet carries the last load through them, forescale's "
                     "history shows them missing")
    jump_note = _jump_note(jump, p.slo_target, setup.fleet.cold_start_s)
    if jump_note:
        notes.append(jump_note)
    return tuple(notes)


def replay_plan(p: ReplayPlan, policies: Sequence[str] = POLICIES, iso_slo: bool = False,
                progress: Callable[[str], None] | None = None, workers: int = WORKERS
                ) -> list[ReplayResult]:
    """Run forescale (once, every variant together, in this process) and the peers (per
    variant, in `workers` other processes meanwhile; 0: here, after it)."""
    names = list(dict.fromkeys(policies))
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ReplayError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if iso_slo and FORESCALE not in names:
        names.insert(0, FORESCALE)
    pool = _Pool(workers)
    try:
        peers = {(v, n): pool.submit(p, v, n, None) for v in p.variants for n in names
                 if n != FORESCALE}
        run = None
        if FORESCALE in names:
            if progress:
                progress("replaying forescale serve (its Service, on a virtual clock)")
            run = run_forescale(p, (lambda f: progress(f"forescale: {f:.0%} of the trace"))
                                if progress else None)
        results = []
        for variant, setup in p.variants.items():
            outs: dict[str, PolicyOutcome] = {}
            for name in names:
                if name == FORESCALE:
                    assert run is not None
                    outs[name] = PolicyOutcome.of(name, run.sims[variant], setup.fleet,
                                                  not p.assumed_fleet,
                                                  _service_note(run, variant), p.skip)
                else:
                    outs[name] = peers[(variant, name)].result()
            isos: dict[str, IsoSlo] = {}
            if iso_slo:
                goal = outs[FORESCALE].slo_attainment
                for peer, iso in iso_slo_sweep(p, variant, REACTIVE, goal, pool,
                                               progress=progress).items():
                    isos[peer] = replace(iso, ratio=outs[FORESCALE].gpu_hours / iso.gpu_hours
                                         if iso.gpu_hours else None)
            jump = jump_at_budget(setup.windows(p.config.prometheus.step_s),
                                  setup.fleet.cold_start_s, p.slo_target)
            records = tuple(r for r in run.records if r.variant == variant) if run else ()
            results.append(ReplayResult(variant, p.source, setup.fleet, p.slo_target, outs,
                                        isos, _notes(p, setup, outs, jump), jump,
                                        p.assumed_fleet, setup.trace.gaps, records,
                                        p.warmup_s))
        return results
    finally:
        pool.close()


# ------------------------------------------------------------------ entry point


def load_profile(path: str | Path, series: str) -> VariantProfile:
    """A `VariantProfile` from YAML: one profile, or a mapping of several (pick by series)."""
    p = Path(path)
    try:
        raw = read_yaml_file(p, "profile")
    except ConfigError as exc:
        raise ReplayError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ReplayError(f"{p}: a profile must be a YAML mapping")
    body = raw.get("profiles", raw)
    if isinstance(body, dict) and body and all(isinstance(v, dict) for v in body.values()) \
            and "capacity_rps" not in body and "curve" not in body:
        chosen = body.get(series) if series in body else (
            next(iter(body.values())) if len(body) == 1 else None)
        if chosen is None:
            raise ReplayError(f"{p}: holds profiles {sorted(body)}; none is named {series!r}")
        body = chosen
    try:
        return VariantProfile.model_validate(body)
    except ValueError as exc:
        raise ReplayError(f"{p}: invalid profile: {exc}") from None


def check_output(path: str | Path | None, what: str) -> None:
    """Refuse an output path whose folder does not exist, before any simulation runs."""
    if path is None:
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise ReplayError(f"{what} {path}: folder {parent} does not exist")


def run_replay(path: str | Path, series: Sequence[str] = (), *,
               config: Config | None = None, profile_path: str | Path | None = None,
               cold_start_s: float | None = None, slo_target: float = 0.99,
               ttft_slo_s: float = 5.0, policies: Sequence[str] = POLICIES,
               iso_slo: bool = False, progress: Callable[[str], None] | None = None,
               seed: int = 0, arrivals: Arrivals = "poisson",
               warmup_s: float = 0.0, workers: int = WORKERS,
               fleet_capacity_factor: float = 1.0) -> list[ReplayResult]:
    """Replay a trace file (the CLI's entry point). With `config`, every variant of it, each
    named after a series; without, one variant per `series` with every default and the
    profile at `profile_path` (or an assumed fleet). `cold_start_s` overrides profiles."""
    if not 0 < slo_target < 1:
        raise ReplayError(f"slo_target must be strictly between 0 and 1, got {slo_target!r}")
    if cold_start_s is not None:
        check_cold_start(cold_start_s)
    if warmup_s < 0:
        raise ReplayError(f"warm-up must be >= 0 seconds, got {warmup_s!r}")
    wanted = [v.name for v in config.variants] if config is not None else list(series)
    if not wanted:
        raise ReplayError("name the series to replay (--series) or give a config")
    try:
        traces = read_trace(path, wanted)
    except TraceError as exc:
        raise ReplayError(str(exc)) from None
    assumed = False
    if config is None:
        configs = []
        for name in wanted:
            prof = load_profile(profile_path, name) if profile_path is not None else None
            assumed = assumed or prof is None
            configs.append(config_for_series(traces[name], prof, slo_target, ttft_slo_s))
        cfg = configs[0].model_copy(update={
            "variants": [c.variants[0] for c in configs]})
    else:
        cfg = config
    if cold_start_s is not None:
        cfg = _with_cold_start(cfg, cold_start_s)
    p = plan(cfg, traces, source=str(path), assumed_fleet=assumed, arrivals=arrivals,
             seed=seed, warmup_s=warmup_s, fleet_capacity_factor=fleet_capacity_factor)
    return replay_plan(p, policies, iso_slo, progress, workers)


# ------------------------------------------------------------------ reading the results


def jump_at_budget(windows: History, cold_start_s: float, slo_target: float) -> float | None:
    """How much the load can grow over one cold start, for the SLO's share of requests.

    The ratio of each window's load to the load one cold start before it (the last value a
    policy could have acted on), weighted by the window's requests; its `slo_target`
    quantile says: the last (1 - target) of requests arrive in windows that grew by at least
    this much. A policy that does not see those jumps coming must carry that much headroom
    one cold start ahead, or miss them. None with too few windows.
    """
    lag = max(1, math.ceil(cold_start_s / windows.step_s))
    y = windows.values
    if y.shape[0] <= lag:
        return None
    prev, cur = y[:-lag], y[lag:]
    ok = np.isfinite(prev) & np.isfinite(cur) & (prev > 0)
    if ok.sum() < 10 or not cur[ok].sum() > 0:
        return None
    ratio, weight = cur[ok] / prev[ok], cur[ok]
    order = np.argsort(ratio)
    cum = np.cumsum(weight[order]) / weight.sum()
    return float(ratio[order][min(int(np.searchsorted(cum, slo_target)), order.size - 1)])


def _jump_note(jump: float | None, slo_target: float, cold_start_s: float) -> str | None:
    if jump is None:
        return None
    text = (f"load jumps: {1 - slo_target:.1%} of requests (the SLO's miss budget) arrive in "
            f"windows with >= {jump:.2f}x the load of one cold start ({cold_start_s:.0f} s) "
            "before")
    if jump >= JUMPY:
        text += ("; no forecast sees such jumps coming, so meeting the SLO takes about that "
                 "much headroom, at a cost well above the oracle's, or misses them")
    return text


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def render_table(result: ReplayResult) -> Table:
    """The replay's scores, one row per policy, the iso-SLO comparisons in the caption."""
    f = result.fleet
    assumed = " (assumed fleet)" if result.assumed_fleet else ""
    table = Table(title=f"replay {result.series}: {f.capacity_rps:.3g} req/s per replica"
                        f"{assumed}, cold start {f.cold_start_s:.0f} s, TTFT SLO "
                        f"{f.ttft_slo_s:g} s")
    for col in ("policy", "SLO attainment", "GPU-hours", "cost $", "peak queue",
                "scale events", "cold starts", "utilisation", "GPU-h vs oracle"):
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for name, p in result.policies.items():
        ok = p.slo_attainment >= result.slo_target
        table.add_row(name, f"[{'green' if ok else 'red'}]{p.slo_attainment:.2%}[/]",
                      f"{p.gpu_hours:,.1f}", _fmt(p.cost, ",.0f"), f"{p.peak_queue:,.0f}",
                      str(p.scale_events), str(p.cold_starts), _fmt(p.utilisation, ".0%"),
                      _fmt(result.vs_oracle(name), ".2f") + "×")
    if result.iso_slo:
        table.caption = "; ".join(
            f"{peer} at forescale's SLO {iso.slo:.2%}: target {_fmt(iso.target, '.0%')}, "
            f"forescale/{peer} GPU-hours {_fmt(iso.ratio, '.2f')}"
            + ("" if iso.target is not None else " (never reached it)")
            for peer, iso in result.iso_slo.items())
    return table


def attribution(source: str) -> str:
    """The credit line the trace's licence asks for, guessed from the file name."""
    low = Path(source).name.lower()
    for key, text in _ATTRIBUTION.items():
        if key in low:
            return f"Trace: {text}"
    return f"Trace: {Path(source).name or 'in-memory series'}"


def plot(result: ReplayResult, out_png: str | Path, max_points: int = 2000) -> Path:
    """Demand against each policy's ready capacity, the queue, and the replicas ordered
    (PNG): labelled axes, every line in the legend, hourly means over two weeks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9), dpi=100)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1.2, 1.5]})
    first = next(iter(result.policies.values())).sim
    n = first.arrivals.shape[0]
    per = max(1, math.ceil(n / max_points))
    hours = (np.arange(0, n, per) * first.dt) / 3600.0

    def agg(x: np.ndarray, how: Callable[..., np.ndarray] = np.mean) -> np.ndarray:
        pad = (-x.shape[0]) % per
        xs = np.concatenate([x, np.full(pad, x[-1])]) if pad else x
        return np.asarray(how(xs.reshape(-1, per), axis=1))

    ax1.plot(hours, agg(first.demand_rps), color="black", lw=1.0, label="demand (req/s)")
    for name, p in result.policies.items():
        cap = p.sim.ready * result.fleet.capacity_rps
        line, = ax1.plot(hours, agg(cap), lw=0.9,
                         label=f"{name}: ready capacity (SLO {p.slo_attainment:.2%}, "
                               f"{p.gpu_hours:,.0f} GPU-h)")
        ax2.plot(hours, agg(p.sim.queue, np.max), lw=0.8, color=line.get_color(), label=name)
        ax3.plot(hours, agg(p.sim.ordered), lw=0.8, color=line.get_color(), label=name)
    ax1.set_ylabel("requests/s")
    ax1.legend(loc="upper left", fontsize=8, ncol=2)
    assumed = ", assumed fleet" if result.assumed_fleet else ""
    ax1.set_title(f"forescale replay: {result.series} (cold start "
                  f"{result.fleet.cold_start_s:.0f} s, TTFT SLO {result.fleet.ttft_slo_s:g} s"
                  f"{assumed})")
    ax2.set_ylabel("queue, max\n(requests)")
    ax2.legend(loc="upper left", fontsize=7, ncol=len(result.policies))
    ax3.set_ylabel("replicas ordered")
    ax3.set_xlabel("hours since trace start")
    ax3.legend(loc="upper left", fontsize=7, ncol=len(result.policies))
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    fig.text(0.01, 0.005, attribution(result.source), fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out = Path(out_png)
    fig.savefig(out)
    return out


def write_report(results: Sequence[ReplayResult], folder: str | Path) -> Path:
    """A PNG per variant, `summary.md` (the tables) and `decisions.jsonl` (forescale's
    decision records, as `/decisions` shows them) in `folder`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# forescale replay", ""]
    with (out / "decisions.jsonl").open("w", encoding="utf-8") as fh:
        for r in results:
            for rec in r.decisions:
                fh.write(json.dumps(asdict(rec)) + "\n")
    for r in results:
        plot(r, out / f"{r.series}.png")
        f = r.fleet
        lines += [f"## {r.series}", "",
                  f"{f.capacity_rps:.3g} req/s per replica"
                  + (" (assumed: no profile)" if r.assumed_fleet else "")
                  + f", cold start {f.cold_start_s:.0f} s, TTFT SLO {f.ttft_slo_s:g} s, "
                  f"target {r.slo_target:.1%}", "",
                  "| policy | SLO | GPU-hours | cost $ | cold starts | utilisation "
                  "| vs oracle | vs peer at forescale's SLO |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, p in r.policies.items():
            iso = r.iso_slo.get(name)
            at = "—" if iso is None or iso.gpu_hours is None else \
                f"{iso.gpu_hours:,.1f} GPU-h at target {iso.target:.0%} " \
                f"(forescale {_fmt(iso.ratio, '.2f')}×)"
            lines.append(f"| {name} | {p.slo_attainment:.2%} | {p.gpu_hours:,.1f} | "
                         f"{_fmt(p.cost, ',.0f')} | {p.cold_starts} | "
                         f"{_fmt(p.utilisation, '.0%')} | {_fmt(r.vs_oracle(name), '.2f')}× "
                         f"| {at} |")
        lines += ["", *[f"- {n}" for n in r.notes], "", f"![{r.series}]({r.series}.png)", ""]
    lines.append(attribution(results[0].source) if results else "")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
