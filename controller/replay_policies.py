"""The policies under replay, each a thin shell around the service's `models.decide.decide`.

- `ReactiveHPA`: the seed-typical HPA (target utilisation, queue-depth metric, stabilisation
  windows, pod-rate limits per period). Its recommendation is `hpa_recommendation`, passed to
  `decide` as a flat demand so the same clamp pipeline the service runs applies it.
- `Predictive`: forescale as configured for replay: a quantile forecast from the past only,
  with the live-signal floor and the HPA as fallback while no forecast is trusted.
- `Oracle`: exact future demand, each replica ordered exactly one cold start ahead.

`decide` limits one call to `scale_*_pods`; the HPA limits a *period*. `_period_budget` turns
the scale events of the period into the pods still allowed, so every call respects it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from controller.replay_forecast import PastOnlyForecaster
from controller.replay_sim import Fleet, Observation
from forecaster.base import FloatArray, History
from models.decide import DemandForecast, ScalingPolicy, ScalingState, decide

_BIG = 1_000_000


@dataclass(frozen=True)
class HPASettings:
    """The seed-typical HPA: what teams deploy in front of vLLM before they have anything else."""

    target_utilisation: float = 0.75
    #: Queue-depth metric target, in seconds of one replica's capacity waiting per replica.
    queue_target_s: float = 5.0
    tolerance: float = 0.1
    min_replicas: int = 2
    max_replicas: int = 10_000
    scale_up_pods: int = 2
    scale_up_period_s: float = 60.0
    scale_up_stabilisation_s: float = 60.0
    scale_down_pods: int = 1
    scale_down_period_s: float = 120.0
    scale_down_stabilisation_s: float = 300.0


def hpa_recommendation(ready: int, load_rps: float, queue: float, capacity_rps: float,
                       target_utilisation: float, queue_target_s: float,
                       tolerance: float) -> int:
    """The HPA formula `ceil(current * observed / target)` over utilisation and queue depth.

    Utilisation is offered load over ready capacity (requests in flight, which keeps growing
    with the queue, not GPU busy time, which saturates at 100%). Each metric inside the
    tolerance band keeps the current count; the largest recommendation wins, as in the HPA.
    """
    current = max(ready, 1)
    recs = []
    util = load_rps / (current * capacity_rps)
    queue_per = queue / current / (capacity_rps * queue_target_s)
    for ratio in (util / target_utilisation, queue_per):
        if abs(ratio - 1.0) <= tolerance:
            recs.append(ready)
        else:
            recs.append(math.ceil(current * ratio - 1e-9))
    return max(recs)


def _flat(now: float, rate: float) -> DemandForecast:
    return DemandForecast(start=now, step_s=1, quantiles={0.5: np.array([rate])})


@dataclass
class _History:
    """Recent recommendations and scale events, pruned to the longest window that reads them."""

    keep_s: float
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int, int]] = field(default_factory=list)

    def state(self, current: int, now: float) -> ScalingState:
        cut = now - self.keep_s
        self.recommendations = [r for r in self.recommendations if r[0] >= cut]
        self.events = [e for e in self.events if e[0] >= cut]
        return ScalingState(current, tuple(self.recommendations), tuple(self.events))

    def record(self, now: float, recommendation: int, before: int, after: int) -> None:
        self.recommendations.append((now, recommendation))
        if after != before:
            self.events.append((now, before, after))


def _period_budget(events: list[tuple[float, int, int]], now: float, pods: int,
                   period_s: float, up: bool) -> int:
    """Pods still allowed in the HPA's rate-limit period, given this period's changes."""
    moved = sum((b - a) if up else (a - b) for t, a, b in events
                if t > now - period_s and ((b > a) == up))
    return max(0, pods - moved)


class ReactiveHPA:
    """The HPA, faithful to its behaviour fields, run through `decide`."""

    def __init__(self, fleet: Fleet, settings: HPASettings) -> None:
        self.fleet = fleet
        self.s = settings
        self.policy = ScalingPolicy(
            min_replicas=settings.min_replicas, max_replicas=settings.max_replicas,
            provisioning_quantile=0.5, target_utilisation=1.0, tolerance=0.0,
            scale_up_pods=settings.scale_up_pods, scale_up_period_s=settings.scale_up_period_s,
            scale_down_pods=settings.scale_down_pods,
            scale_down_period_s=settings.scale_down_period_s,
            scale_down_stabilisation_s=settings.scale_down_stabilisation_s)
        self.hist = _History(max(settings.scale_down_stabilisation_s,
                                 settings.scale_up_stabilisation_s,
                                 settings.scale_up_period_s, settings.scale_down_period_s))

    def target(self, obs: Observation) -> int:
        s = self.s
        raw = hpa_recommendation(obs.ready, obs.load_rps, obs.queue, self.fleet.capacity_rps,
                                 s.target_utilisation, s.queue_target_s, s.tolerance)
        return self.apply(obs, raw)

    def apply(self, obs: Observation, raw: int) -> int:
        """Stabilise `raw` upwards (min over the up window), then let `decide` clamp it."""
        s, now, current = self.s, obs.now, obs.ordered
        state = self.hist.state(current, now)
        rec = raw
        if raw > current:
            window = [r for t, r in state.recommendations
                      if t > now - s.scale_up_stabilisation_s]
            rec = max(current, min([raw, *window]))
        policy = replace(
            self.policy,
            scale_up_pods=_period_budget(self.hist.events, now, s.scale_up_pods,
                                         s.scale_up_period_s, up=True),
            scale_down_pods=_period_budget(self.hist.events, now, s.scale_down_pods,
                                           s.scale_down_period_s, up=False))
        # A flat demand of exactly `rec` replicas' worth (minus rounding) makes decide's
        # `ceil(demand / capacity)` return `rec`; its pipeline then does the rest.
        demand = max(rec, 0) * self.fleet.capacity_rps * (1 - 1e-9)
        d = decide(_flat(now, demand), self.fleet.capacity_rps, 0.0, policy, state, now)
        self.hist.record(now, raw, current, d.replicas)
        return d.replicas


@dataclass(frozen=True)
class PredictiveSettings:
    """forescale's policy in the replay (documented choices, the same for every trace).

    Scale-up is not rate-limited: replicas are ordered a cold start ahead of a forecast ramp,
    and a rate limit would only delay what the forecast already justified. Scale-down is
    allowed as soon as the forecast covers the next cold start at the provisioning quantile,
    with a short stabilisation against flapping.
    """

    provisioning_quantile: float = 0.995
    target_utilisation: float = 0.9
    #: Live floor: load plus the queue drained within this many seconds.
    drain_s: float = 60.0
    min_replicas: int = 1
    max_replicas: int = 10_000
    scale_down_stabilisation_s: float = 60.0
    retrain_s: float = 3600.0


class Predictive:
    """Forecast + reactive floor through `decide`; the HPA serves until a forecast exists."""

    def __init__(self, fleet: Fleet, settings: PredictiveSettings, windows: History,
                 decision_interval_s: float, fallback: ReactiveHPA) -> None:
        self.fleet = fleet
        self.s = settings
        self.windows = windows
        self.interval = decision_interval_s
        self.fallback = fallback
        step = windows.step_s
        self.lead = max(1, math.ceil((fleet.cold_start_s + decision_interval_s) / step))
        self.forecaster = PastOnlyForecaster(step, settings.provisioning_quantile, self.lead,
                                             settings.retrain_s)
        self.policy = ScalingPolicy(
            min_replicas=settings.min_replicas, max_replicas=settings.max_replicas,
            provisioning_quantile=settings.provisioning_quantile,
            target_utilisation=settings.target_utilisation, tolerance=0.0,
            scale_up_pods=_BIG, scale_down_pods=_BIG,
            scale_down_stabilisation_s=settings.scale_down_stabilisation_s)
        self._cache: tuple[int, dict[float, FloatArray] | None] = (-1, None)
        self.forecast_decisions = 0

    def _forecast(self, now: float) -> tuple[int, dict[float, FloatArray] | None]:
        w = self.windows
        done = int(math.floor((now - w.start) / w.step_s + 1e-9))
        if self._cache[0] != done:
            past = w.slice(max(0, done))  # windows completed before now, never later ones
            self._cache = (done, self.forecaster.forecast(past, self.lead + 1)
                           if done > 0 else None)
        return self._cache

    def target(self, obs: Observation) -> int:
        done, qs = self._forecast(obs.now)
        cap = self.fleet.capacity_rps
        if qs is None:
            return self.fallback.target(obs)
        self.forecast_decisions += 1
        step = self.windows.step_s
        issued = self.windows.start + done * step
        values = qs[self.s.provisioning_quantile]
        # Only the windows up to the next decision's ready time matter now; later peaks are
        # ordered by later decisions, still one cold start ahead.
        reach = obs.now + self.fleet.cold_start_s + self.interval
        values = values[issued + step * np.arange(values.shape[0]) < reach]
        fc = DemandForecast(issued, step, {self.s.provisioning_quantile: values})
        live = math.ceil((obs.load_rps + obs.queue / self.s.drain_s)
                         / (cap * self.s.target_utilisation) - 1e-9)
        # Never release a replica the forecast needs before a replacement could be ready.
        t = issued + step * np.arange(values.shape[0])
        near = values[(t + step > obs.now) & (t < obs.now + self.fleet.cold_start_s)]
        hold = math.ceil(float(near.max()) / (cap * self.s.target_utilisation) - 1e-9) \
            if near.size else 0
        floor = max(live, min(hold, obs.ordered))
        state = self.fallback.hist.state(obs.ordered, obs.now)
        d = decide(fc, cap, self.fleet.cold_start_s, self.policy, state, obs.now, floor)
        self.fallback.hist.record(obs.now, d.replicas, obs.ordered, d.replicas)
        return d.replicas


class Oracle:
    """Exact future demand: holds `max(need over [now, now + cold start])` replicas.

    That envelope is the cheapest schedule with no queueing when ordering takes a cold start
    and billing starts at the order: a replica idle for less than a cold start is cheaper
    kept than re-ordered. It is a lower bound for zero queueing; a policy that lets a
    queue of a few seconds build could undercut it marginally.
    """

    def __init__(self, fleet: Fleet, arrivals: FloatArray, dt: float, start: float) -> None:
        self.fleet = fleet
        self.rate = arrivals / dt
        self.dt = dt
        self.start = start
        self.span = max(1, math.ceil(fleet.cold_start_s / dt)) + 1
        self.policy = ScalingPolicy(min_replicas=0, max_replicas=_BIG, provisioning_quantile=0.5,
                                    target_utilisation=1.0, tolerance=0.0, scale_up_pods=_BIG,
                                    scale_down_pods=_BIG, scale_down_stabilisation_s=0.0)

    def target(self, obs: Observation) -> int:
        k = obs.step_index
        future = self.rate[k:k + self.span]
        fc = DemandForecast(obs.now, int(self.dt), {0.5: future * (1 - 1e-9)})
        d = decide(fc, self.fleet.capacity_rps, 0.0, self.policy, ScalingState(obs.ordered),
                   obs.now)
        return d.replicas
