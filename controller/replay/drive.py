"""The replay drives the real `Service`: the edges are a simulated fleet, the clock is virtual.

`forescale replay` answers "what would `forescale serve` have done on my traffic?", so it runs
`Service.retrain` and `Service.reconcile` themselves, with the config `serve` takes, at the
configured intervals of simulated time. Only the edges differ:

- the `MetricsSource` is the simulated fleet (`ReplayEdges.history` / `.live`): request rate
  per training step from the arrivals that came before the virtual now (windows the trace
  marks missing stay missing), and live signals from the fleet (rate over the metrics
  window, queue, ready replicas, the wait a request meets as TTFT);
- the `ScaleTarget` is the simulated workload (`ReplayEdges.apply`), whose replicas become
  ready one cold start after they are ordered (`controller.replay.sim.FleetSim`);
- the clock is `VirtualClock`, moved by the driver.

Every decision is the service's own `DecisionRecord`, kept in order so a replay's decision log
reads like `/decisions`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.config import ActuationMode, Config
from controller.metrics import ForescaleMetrics
from controller.protocols import LiveSignals, PermanentError, ScaleResult
from controller.replay.sim import Fleet, FleetSim, SimResult
from controller.service import DecisionRecord, Service
from forecaster.base import FloatArray, History

BoolArray = npt.NDArray[np.bool_]


class VirtualClock:
    """The replay's clock: time moves only when the driver says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SimulatedVariant:
    """One variant's simulated fleet and what the trace knows about it."""

    sim: FleetSim
    #: Which simulation steps fall in a window the trace marks missing (NaN): the fleet
    #: still sees load there (carried forward), but history shows the window as missing.
    missing: BoolArray


class ReplayEdges:
    """The simulated fleets as the service's `MetricsSource` and `ScaleTarget`.

    Nothing after the virtual now is ever visible: `history` refuses windows that have not
    ended by `clock()`, whatever `end` the caller asks for.
    """

    def __init__(self, variants: Mapping[str, SimulatedVariant], clock: VirtualClock) -> None:
        self.variants = dict(variants)
        self.clock = clock
        self._cum: dict[str, FloatArray] = {
            n: np.concatenate(([0.0], np.cumsum(v.sim.arrivals))) for n, v in variants.items()}
        self._miss: dict[str, FloatArray] = {
            n: np.concatenate(([0.0], np.cumsum(v.missing.astype(np.float64))))
            for n, v in variants.items()}

    def _get(self, variant: str) -> SimulatedVariant:
        try:
            return self.variants[variant]
        except KeyError:
            raise PermanentError(f"the replay has no series for variant {variant!r}; it has "
                                 f"{', '.join(sorted(self.variants))}") from None

    def _step_index(self, v: SimulatedVariant, t: float) -> int:
        return round((t - v.sim.start) / v.sim.dt)

    # ------------------------------------------------------------------ MetricsSource
    def history(self, variant: str, start: float, end: float, step_s: int) -> History:
        """Mean arrival rate per `step_s` window over `[start, end)`; windows not ended by
        the virtual now, outside the replay, or touching a missing trace window are NaN."""
        v = self._get(variant)
        n = max(0, math.floor((end - start) / step_s))
        t0 = start + step_s * np.arange(n, dtype=np.float64)
        lo = np.rint((t0 - v.sim.start) / v.sim.dt).astype(np.int64)
        hi = np.rint((t0 + step_s - v.sim.start) / v.sim.dt).astype(np.int64)
        visible = (lo >= 0) & (hi <= v.sim.n) & (t0 + step_s <= self.clock() + 1e-9)
        cum, miss = self._cum[variant], self._miss[variant]
        lo_c, hi_c = np.clip(lo, 0, v.sim.n), np.clip(hi, 0, v.sim.n)
        rate = (cum[hi_c] - cum[lo_c]) / step_s
        gap = (miss[hi_c] - miss[lo_c]) > 0
        values = np.where(visible & ~gap, rate, np.nan)
        return History(variant, start, step_s, values)

    def live(self, variant: str, now: float) -> LiveSignals:
        """What Prometheus would show now: the rate over the metrics window, the queue, the
        ready replicas, and the wait a request arriving now meets plus the base TTFT."""
        v = self._get(variant)
        k = min(max(self._step_index(v, now), 0), v.sim.n - 1)
        obs = v.sim.observe(k)
        fleet = v.sim.fleet
        serving = obs.ready * fleet.capacity_rps
        wait = obs.queue / serving if serving > 0 else (math.inf if obs.queue > 0 else 0.0)
        base = float(fleet.base_ttft(np.array([min(obs.load_rps / max(obs.ready, 1),
                                                   fleet.capacity_rps)]))[0])
        return LiveSignals(ts=now, request_rate=obs.load_rps, queue_depth=obs.queue,
                           running=min(obs.load_rps, serving), ready_replicas=obs.ready,
                           ttft_p95_s=base + wait if math.isfinite(wait) else None)

    # ------------------------------------------------------------------ ScaleTarget
    def current_replicas(self, variant: str) -> int:
        return self._get(variant).sim.ordered

    def apply(self, variant: str, replicas: int, reasons: Sequence[str]) -> ScaleResult:
        v = self._get(variant)
        before = v.sim.ordered
        v.sim.order(self._step_index(v, self.clock()), replicas)
        return ScaleResult(variant, before, replicas, replicas != before,
                           f"simulated workload scaled {before} -> {replicas}"
                           if replicas != before else "no change")


@contextmanager
def _quiet(level: int = logging.ERROR) -> Iterator[None]:
    """The service logs every decision at INFO and every early retrain's short history at
    WARNING; over two weeks of simulated time that is noise, and the records are kept."""
    names = ("forescale.loop", "forescale.training", "forecaster.engine", "forecaster.selection")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(level)
    try:
        yield
    finally:
        for n, lv in saved.items():
            logging.getLogger(n).setLevel(lv)


@dataclass
class ServiceRun:
    """What the service did over the replay: per-variant fleet record and every decision."""

    sims: dict[str, SimResult]
    records: list[DecisionRecord]
    service: Service
    #: Retrain passes run (one per retrain interval), and model selections they made (a
    #: pass selects only the variants `Service.selection_due` names).
    retrain_passes: int
    selections: int


def replay_config(config: Config) -> Config:
    """The config as replayed: decisions are applied to the simulated fleet (a dry-run config
    replayed in dry-run would never change it), nothing is persisted, no leader election."""
    variants = [v.model_copy(update={"actuation": None}) for v in config.variants]
    return config.model_copy(update={
        "actuation": ActuationMode.SCALE, "variants": variants,
        "forecast": config.forecast.model_copy(update={"model_dir": None}),
        "leader_election": config.leader_election.model_copy(update={"enabled": False}),
        "state": config.state.model_copy(update={"backend": "none"})})


def run_service(config: Config, arrivals: Mapping[str, FloatArray],
                missing: Mapping[str, BoolArray], fleets: Mapping[str, Fleet], start: float,
                dt: float, initial: Mapping[str, int],
                progress: Callable[[float], None] | None = None) -> ServiceRun:
    """Run `Service` over the arrivals on a virtual clock: retrain every
    `schedules.retrain_interval_s`, reconcile every `schedules.reconcile_interval_s`."""
    cfg = replay_config(config)
    clock = VirtualClock(start)
    variants = {n: SimulatedVariant(FleetSim(arrivals[n], start, dt, fleets[n], initial[n]),
                                    np.asarray(missing[n], dtype=bool))
                for n in (v.name for v in cfg.variants)}
    edges = ReplayEdges(variants, clock)
    records: list[DecisionRecord] = []
    svc = Service(cfg, edges, dict.fromkeys(variants, edges), clock=clock,
                  metrics=ForescaleMetrics(), record_sink=records.append)
    n = min(v.sim.n for v in variants.values())
    every = max(1, round(cfg.schedules.reconcile_interval_s / dt))
    retrain_every = max(1, round(cfg.schedules.retrain_interval_s / dt))
    passes = selections = 0
    sims = [v.sim for v in variants.values()]
    with _quiet():
        for k in range(n):
            if k % retrain_every == 0:
                clock.now = start + k * dt
                selections += len(svc.retrain().models)
                passes += 1
                if progress is not None:
                    progress(k / n)
            if k % every == 0:
                clock.now = start + k * dt
                svc.reconcile()
            for sim in sims:
                sim.serve(k)
    return ServiceRun({name: v.sim.result() for name, v in variants.items()}, records, svc,
                      passes, selections)
