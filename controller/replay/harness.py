"""`forescale replay`: what forescale would have saved, on a real load trace.

One variant's fleet is simulated (`controller.replay_sim`) under each policy
(`controller.replay_policies`): the seed-typical reactive HPA, forescale's predictive policy
(trained only on the replay's own past) and an oracle that knows the future. All three go
through the service's `models.decide.decide`, so the replay measures the code that ships.

The scores are SLO attainment (share of requests whose estimated TTFT meets the SLO),
GPU-hours, cost, peak queue, scale events and cold starts, and GPU-hours relative to the
oracle. `iso_slo` sweeps the reactive target to the cheapest setting that reaches the
predictive policy's attainment, because savings only mean something at equal SLO.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.table import Table

from controller.replay_forecast import MIN_WINDOWS
from controller.replay_policies import (
    HPASettings,
    Oracle,
    Predictive,
    PredictiveSettings,
    ReactiveHPA,
)
from controller.replay_sim import (
    Arrivals,
    Controller,
    Fleet,
    SimResult,
    arrivals_per_step,
    fleet_from_profile,
    sim_step,
    simulate,
)
from forecaster.base import History
from forecaster.trace import TraceSeries, read_trace
from models.profile import VariantProfile

POLICIES = ("reactive", "predictive", "oracle")
#: Reactive targets tried by `iso_slo`, from lean to generous.
ISO_SLO_TARGETS = (0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2,
                   0.15, 0.1, 0.07, 0.05)
#: Shortest window the predictive policy forecasts (the service's default Prometheus step).
FORECAST_MIN_STEP_S = 60
#: Above this `jump_at_budget` the replay warns that the SLO is costly to meet (issue 8's
#: calibration: at > 1.5x, 99% at 300 s costs several times the oracle or is not reached).
JUMPY = 1.5
#: Without a profile, one replica carries this share of the series' mean load (~20 replicas).
DEFAULT_REPLICAS_AT_MEAN = 20.0

_ATTRIBUTION = {
    "servegen": "Alibaba ServeGen, github.com/alibaba/ServeGen (Apache-2.0)",
    "azure": "Azure LLM inference trace 2023, github.com/Azure/AzurePublicDataset (CC-BY-4.0)",
    "mooncake": "Mooncake FAST'25 trace, github.com/kvcache-ai/Mooncake (Apache-2.0)",
}


class ReplayError(ValueError):
    """A replay that cannot run (bad policy name, unusable series or profile)."""


@dataclass(frozen=True)
class PolicyOutcome:
    """The scores of one policy over the replay, with its per-step record for plotting."""

    name: str
    slo_attainment: float
    gpu_hours: float
    cost: float
    peak_queue: float
    scale_events: int
    cold_starts: int
    sim: SimResult = field(repr=False)
    note: str = ""
    #: Requests served over the capacity paid for (ordered replicas, starting ones included).
    utilisation: float = math.nan

    @staticmethod
    def of(name: str, sim: SimResult, fleet: Fleet, note: str = "") -> PolicyOutcome:
        gpu_h = sim.gpu_hours(fleet)
        return PolicyOutcome(name, sim.slo_attainment, gpu_h, gpu_h * fleet.gpu_hourly_usd,
                             float(sim.queue.max(initial=0.0)), sim.scale_events,
                             sim.cold_starts, sim, note, sim.utilisation(fleet))


@dataclass(frozen=True)
class IsoSlo:
    """The cheapest reactive target reaching the predictive attainment (None: none did)."""

    slo: float
    reactive_target: float | None
    reactive_gpu_hours: float | None
    gpu_hours_ratio_predictive_vs_reactive: float | None
    tried: tuple[tuple[float, float, float], ...] = ()  # (target, attainment, GPU-hours)


@dataclass(frozen=True)
class ReplayResult:
    series: str
    source: str
    fleet: Fleet
    slo_target: float
    policies: dict[str, PolicyOutcome]
    iso_slo: IsoSlo | None = None
    notes: tuple[str, ...] = ()
    #: Load jump over one cold start at the SLO's miss budget (`jump_at_budget`).
    jump_at_budget: float | None = None

    def vs_oracle(self, name: str) -> float | None:
        oracle = self.policies.get("oracle")
        if oracle is None or oracle.gpu_hours <= 0:
            return None
        return self.policies[name].gpu_hours / oracle.gpu_hours

    def to_json(self) -> dict[str, Any]:
        """The CLI's `--json` document; keys are a contract, values are plain floats/ints."""
        iso = None
        if self.iso_slo is not None:
            iso = {"slo": self.iso_slo.slo, "reactive_target": self.iso_slo.reactive_target,
                   "gpu_hours_ratio_predictive_vs_reactive":
                       self.iso_slo.gpu_hours_ratio_predictive_vs_reactive}
        return {
            "series": self.series,
            "policies": {
                name: {"slo_attainment": p.slo_attainment, "gpu_hours": p.gpu_hours,
                       "cost": p.cost, "scale_events": p.scale_events,
                       "cold_starts": p.cold_starts, "gpu_hours_vs_oracle": self.vs_oracle(name)}
                for name, p in self.policies.items()},
            "iso_slo": iso,
        }


@dataclass(frozen=True)
class ReplaySetup:
    """Everything a policy run shares: the fleet, the arrivals and the simulation clock."""

    trace: TraceSeries
    fleet: Fleet
    arrivals: np.ndarray
    dt: float
    decision_every: int
    initial_replicas: int

    @property
    def windows(self) -> History:
        """The trace as the predictive policy observes it: realised rates per window.

        Windows are at least `FORECAST_MIN_STEP_S` long, as the service's Prometheus step:
        nobody forecasts 10-second counts, whose Poisson noise the queue absorbs anyway, and
        provisioning for the peak quantile of such noise buys headroom for nothing.
        """
        group = max(1, math.ceil(FORECAST_MIN_STEP_S / self.trace.step_s))
        step = self.trace.step_s * group
        per = round(step / self.dt)
        n = self.arrivals.shape[0] // per
        rates = self.arrivals[:n * per].reshape(-1, per).sum(axis=1) / step
        finite = np.isfinite(self.trace.requests[:n * group]).reshape(-1, group)
        rates = np.where(finite.all(axis=1), rates, np.nan)
        return History(self.trace.name, self.trace.start, int(step), rates)


def jump_at_budget(windows: History, cold_start_s: float, slo_target: float) -> float | None:
    """How much the load can grow over one cold start, for the SLO's share of requests.

    The ratio of each window's load to the load one cold start before it (the last value a
    policy could have acted on), weighted by the window's requests; its `slo_target`
    quantile says: the last (1 - target) of requests arrive in windows that grew by at least
    this much. A policy that does not see those jumps coming must carry that much headroom
    one cold start ahead, or miss them: this is what makes 99% expensive on bursty traffic,
    and the replay says so rather than leaving the cost unexplained. None with too few
    windows.
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


def default_fleet(trace: TraceSeries, cold_start_s: float | None,
                  gpu_hourly_usd: float = 2.0, ttft_slo_s: float = 5.0) -> Fleet:
    """The fleet without a profile: the series' mean load needs about 20 replicas."""
    mean = float(np.nanmean(trace.requests)) if np.isfinite(trace.requests).any() else 0.0
    if not mean > 0:
        raise ReplayError(f"series {trace.name!r} has no load to replay")
    return Fleet(capacity_rps=mean / DEFAULT_REPLICAS_AT_MEAN, base_ttft_s=0.5,
                 ttft_slo_s=ttft_slo_s, cold_start_s=300.0 if cold_start_s is None
                 else cold_start_s, gpus_per_replica=1, gpu_hourly_usd=gpu_hourly_usd)


def load_profile(path: str | Path, series: str) -> VariantProfile:
    """A `VariantProfile` from YAML: one profile, or a mapping of several (pick by series)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ReplayError(f"{p}: cannot read profile: {exc}") from None
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


def prepare(trace: TraceSeries, fleet: Fleet, arrivals: Arrivals = "poisson", seed: int = 0,
            decision_interval_s: float = 30.0) -> ReplaySetup:
    """Arrivals on the simulation clock and a warm start every policy shares.

    Every policy starts with enough ready replicas for the first cold start's demand, so no
    policy is scored on a start-up it could not have influenced.
    """
    if len(trace) < 2:
        raise ReplayError(f"series {trace.name!r} is too short to replay")
    dt = sim_step(trace.step_s)
    arr = arrivals_per_step(trace.requests, trace.step_s, dt, arrivals, seed)
    span = max(1, math.ceil(fleet.cold_start_s / dt)) + 1
    init = math.ceil(float(arr[:span].max()) / (dt * fleet.capacity_rps) - 1e-9)
    every = max(1, round(decision_interval_s / dt))
    return ReplaySetup(trace, fleet, arr, dt, every, max(1, init))


def run_policy(setup: ReplaySetup, name: str, slo_target: float = 0.99,
               reactive_target: float = 0.75, forecaster: str = "auto") -> PolicyOutcome:
    """Replay one policy; `reactive_target` is the HPA's utilisation target."""
    fleet, dt = setup.fleet, setup.dt
    hpa = HPASettings(target_utilisation=reactive_target)
    note = ""
    ctrl: Controller
    every = setup.decision_every
    if name == "reactive":
        ctrl = ReactiveHPA(fleet, hpa)
        note = f"HPA target {reactive_target:.0%}"
    elif name == "predictive":
        pred = Predictive(fleet, replace(PredictiveSettings(), slo_target=slo_target),
                          setup.windows, every * dt, ReactiveHPA(fleet, hpa), forecaster)
        ctrl = pred
    elif name == "oracle":
        ctrl = Oracle(fleet, setup.arrivals, dt)
        every = 1
    else:
        raise ReplayError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    init = max(setup.initial_replicas, hpa.min_replicas if name == "reactive" else 1)
    sim = simulate(setup.arrivals, setup.trace.start, dt, fleet, ctrl, init, every)
    if name == "predictive":
        models = sorted({m for _, m in pred.forecaster.choices})
        qs = pred.headroom.trail or [pred.headroom.quantile]
        note = (f"quantile {min(qs):.3f}..{max(qs):.3f}, median {float(np.median(qs)):.3f} "
                f"({pred.headroom.calibrated} of {len(pred.headroom.trail)} tunes calibrated on "
                f"the forecast record, the rest by feedback); "
                f"models {', '.join(models) or 'none'}; {pred.forecast_decisions} forecast "
                f"decisions, {pred.overload_decisions} on overload")
        if pred.forecast_decisions == 0:
            note = (f"never forecast: it needs {MIN_WINDOWS} completed windows of "
                    f"{setup.windows.step_s} s and the trace has {len(setup.windows)}, so the "
                    "reactive fallback (the HPA) ran throughout; " + note)
    return PolicyOutcome.of(name, sim, fleet, note)


def iso_slo_sweep(setup: ReplaySetup, predictive: PolicyOutcome,
                  targets: Sequence[float] = ISO_SLO_TARGETS,
                  progress: Callable[[str], None] | None = None) -> IsoSlo:
    """The cheapest reactive target whose attainment reaches the predictive policy's."""
    goal = predictive.slo_attainment
    tried: list[tuple[float, float, float]] = []
    best: tuple[float, float] | None = None
    for target in targets:
        out = run_policy(setup, "reactive", reactive_target=target)
        tried.append((target, out.slo_attainment, out.gpu_hours))
        if progress:
            progress(f"iso-SLO: reactive target {target:.0%}: SLO {out.slo_attainment:.2%}")
        if out.slo_attainment >= goal - 1e-12 and (best is None or out.gpu_hours < best[1]):
            best = (target, out.gpu_hours)
        elif best is not None:
            break  # targets go from lean to generous: past the first hit it only costs more
    if best is None:
        return IsoSlo(goal, None, None, None, tuple(tried))
    ratio = predictive.gpu_hours / best[1] if best[1] > 0 else None
    return IsoSlo(goal, best[0], best[1], ratio, tuple(tried))


def replay_series(trace: TraceSeries, fleet: Fleet, slo_target: float = 0.99,
                  policies: Sequence[str] = POLICIES, iso_slo: bool = False,
                  progress: Callable[[str], None] | None = None, seed: int = 0,
                  arrivals: Arrivals = "poisson", reactive_target: float = 0.75,
                  source: str = "", forecaster: str = "auto") -> ReplayResult:
    """Replay an in-memory series; `run_replay` is this plus reading the files."""
    names = list(dict.fromkeys(policies))
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ReplayError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if iso_slo and "predictive" not in names:
        names.append("predictive")
    setup = prepare(trace, fleet, arrivals, seed)
    outs: dict[str, PolicyOutcome] = {}
    for name in names:
        if progress:
            progress(f"replaying {name} on {trace.name}")
        outs[name] = run_policy(setup, name, slo_target, reactive_target, forecaster)
    iso = iso_slo_sweep(setup, outs["predictive"], progress=progress) if iso_slo else None
    jump = jump_at_budget(setup.windows, fleet.cold_start_s, slo_target)
    notes = tuple(f"{n}: {o.note}" for n, o in outs.items() if o.note)
    jump_note = _jump_note(jump, slo_target, fleet.cold_start_s)
    if jump_note:
        notes += (jump_note,)
    return ReplayResult(trace.name, source, fleet, slo_target, outs, iso, notes, jump)


def run_replay(path: str | Path, series: str, profile_path: str | Path | None = None,
               cold_start_s: float | None = None, slo_target: float = 0.99,
               policies: Sequence[str] = POLICIES, iso_slo: bool = False,
               progress: Callable[[str], None] | None = None, seed: int = 0,
               *, arrivals: Arrivals = "poisson", gpu_hourly_usd: float = 2.0,
               ttft_slo_s: float = 5.0, reactive_target: float = 0.75,
               forecaster: str = "auto") -> ReplayResult:
    """Replay `series` of the trace at `path` under each policy (the CLI's entry point).

    `forecaster`: "auto" (the engine when present), "engine" or "baselines" (fast).
    """
    if not 0 < slo_target < 1:
        raise ReplayError(f"slo_target must be strictly between 0 and 1, got {slo_target!r}")
    if cold_start_s is not None and cold_start_s < 0:
        raise ReplayError(f"cold start must be >= 0 seconds, got {cold_start_s!r}")
    trace = read_trace(path, [series])[series]
    if profile_path is None:
        fleet = default_fleet(trace, cold_start_s, gpu_hourly_usd, ttft_slo_s)
    else:
        fleet = fleet_from_profile(load_profile(profile_path, series), ttft_slo_s,
                                   cold_start_s)
    return replay_series(trace, fleet, slo_target, policies, iso_slo, progress, seed,
                         arrivals, reactive_target, source=str(path), forecaster=forecaster)


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def render_table(result: ReplayResult) -> Table:
    """The replay's scores, one row per policy, iso-SLO comparison in the caption."""
    f = result.fleet
    table = Table(title=f"replay {result.series}: {f.capacity_rps:.3g} req/s per replica, "
                        f"cold start {f.cold_start_s:.0f} s, TTFT SLO {f.ttft_slo_s:g} s")
    for col in ("policy", "SLO attainment", "GPU-hours", "cost $", "peak queue",
                "scale events", "cold starts", "utilisation", "GPU-h vs oracle"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, p in result.policies.items():
        ok = p.slo_attainment >= result.slo_target
        table.add_row(name, f"[{'green' if ok else 'red'}]{p.slo_attainment:.2%}[/]",
                      f"{p.gpu_hours:,.1f}", f"{p.cost:,.0f}", f"{p.peak_queue:,.0f}",
                      str(p.scale_events), str(p.cold_starts), _fmt(p.utilisation, ".0%"),
                      _fmt(result.vs_oracle(name), ".2f") + "×")
    if result.iso_slo is not None:
        iso = result.iso_slo
        table.caption = (
            f"iso-SLO {iso.slo:.2%}: cheapest reactive target "
            f"{_fmt(iso.reactive_target, '.0%')}, predictive/reactive GPU-hours "
            f"{_fmt(iso.gpu_hours_ratio_predictive_vs_reactive, '.2f')}"
            + ("" if iso.reactive_target is not None else " (no reactive target reached it)"))
    return table


def attribution(source: str) -> str:
    """The credit line the trace's licence asks for, guessed from the file name."""
    low = Path(source).name.lower()
    for key, text in _ATTRIBUTION.items():
        if key in low:
            return f"Trace: {text}"
    return f"Trace: {Path(source).name or 'in-memory series'}"


def plot(result: ReplayResult, out_png: str | Path, max_points: int = 4000) -> Path:
    """Demand against each policy's ready capacity, and the queue, over time (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    first = next(iter(result.policies.values())).sim
    n = first.arrivals.shape[0]
    per = max(1, math.ceil(n / max_points))
    hours = (np.arange(0, n, per) * first.dt) / 3600.0

    def agg(x: np.ndarray, how: Callable[..., np.ndarray] = np.max) -> np.ndarray:
        pad = (-x.shape[0]) % per
        xs = np.concatenate([x, np.full(pad, x[-1])]) if pad else x
        return np.asarray(how(xs.reshape(-1, per), axis=1))

    ax1.plot(hours, agg(first.demand_rps, np.mean), color="black", lw=0.8, label="demand")
    for name, p in result.policies.items():
        cap = p.sim.ready * result.fleet.capacity_rps
        ax1.plot(hours, agg(cap, np.mean), lw=0.9,
                 label=f"{name} ready capacity (SLO {p.slo_attainment:.1%}, "
                       f"{p.gpu_hours:,.0f} GPU-h)")
        ax2.plot(hours, agg(p.sim.queue), lw=0.8, label=name)
    ax1.set_ylabel("requests/s")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title(f"forescale replay: {result.series} "
                  f"(cold start {result.fleet.cold_start_s:.0f} s)")
    ax2.set_ylabel("queue (requests)")
    ax2.set_xlabel("hours since trace start")
    ax2.legend(loc="upper left", fontsize=8)
    fig.text(0.01, 0.005, attribution(result.source), fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
