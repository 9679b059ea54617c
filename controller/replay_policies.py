"""The policies under replay, each a thin shell around the service's `models.decide.decide`.

- `ReactiveHPA`: the seed-typical HPA (target utilisation, queue-depth metric, stabilisation
  windows, pod-rate limits per period). Its recommendation is `hpa_recommendation`, passed to
  `decide` as a flat demand so the same clamp pipeline the service runs applies it.
- `Predictive`: forescale as configured for replay: a quantile forecast from the past only,
  with the live-signal floor and the HPA as fallback while no forecast is trusted.
- `Oracle`: exact future demand, each replica ordered exactly one cold start ahead.

Each policy keeps its `ScalingState` with `models.decide.next_state`, as the service does, so
stabilisation windows and per-period rate limits see the same history they would live.
"""

from __future__ import annotations

import importlib
import math
from collections import deque
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np

from controller.replay_forecast import PastOnlyForecaster
from controller.replay_sim import Fleet, Observation
from forecaster.base import FloatArray, History
from models.decide import DemandForecast, ScalingPolicy, ScalingState, decide, next_state

_BIG = 1_000_000


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


#: The SLO-targeted quantile tuner, when the models package ships it.
_headroom = _optional("models.headroom")


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


class ReactiveHPA:
    """The HPA, faithful to its behaviour fields, run through `decide`.

    The HPA's own recommendation (`hpa_recommendation`, stabilised upwards as the HPA does:
    the lowest raw recommendation of the up window) is handed to `decide` as a flat demand of
    exactly that many replicas; `decide` then applies the scale-down stabilisation, the
    per-period rate limits and the bounds, the code path the service runs.
    """

    def __init__(self, fleet: Fleet, settings: HPASettings) -> None:
        self.fleet = fleet
        self.s = settings
        self.policy = ScalingPolicy(
            min_replicas=settings.min_replicas, max_replicas=settings.max_replicas,
            provisioning_quantile=0.5, target_utilisation=1.0, tolerance=0.0,
            scale_up_pods=settings.scale_up_pods, scale_up_period_s=settings.scale_up_period_s,
            scale_down_pods=settings.scale_down_pods,
            scale_down_period_s=settings.scale_down_period_s,
            scale_down_stabilisation_s=settings.scale_down_stabilisation_s,
            forecast_window_s=0.0)
        self.state = ScalingState(0)
        self._raw: deque[tuple[float, int]] = deque()

    def target(self, obs: Observation) -> int:
        s = self.s
        raw = hpa_recommendation(obs.ready, obs.load_rps, obs.queue, self.fleet.capacity_rps,
                                 s.target_utilisation, s.queue_target_s, s.tolerance)
        while self._raw and self._raw[0][0] <= obs.now - s.scale_up_stabilisation_s:
            self._raw.popleft()
        self._raw.append((obs.now, raw))
        rec = raw
        if raw > obs.ordered:
            rec = max(obs.ordered, min(r for _, r in self._raw))
        # A flat demand of `rec` replicas' worth (less rounding) makes decide's ceil give rec.
        demand = rec * self.fleet.capacity_rps * (1 - 1e-9)
        return self.run(_flat(obs.now, demand), obs, None, None)

    def run(self, fc: DemandForecast | None, obs: Observation, floor: int | None,
            quantile: float | None, policy: ScalingPolicy | None = None,
            cold_start_s: float = 0.0) -> int:
        """One `decide` call with this controller's remembered state, then remember it."""
        pol = policy or self.policy
        state = replace(self.state, current_replicas=obs.ordered)
        d = decide(fc, self.fleet.capacity_rps, cold_start_s, pol, state, obs.now, floor,
                   quantile=quantile)
        self.state = next_state(state, d, obs.now, pol)
        return d.replicas


@dataclass(frozen=True)
class PredictiveSettings:
    """forescale's policy in the replay (documented choices, the same for every trace).

    Scale-up is not rate-limited: replicas are ordered a cold start ahead of a forecast ramp,
    and a rate limit would only delay what the forecast already justified. Scale-down is
    allowed as soon as the forecast (at the provisioning quantile) covers the next cold start;
    `decide` holds what is needed before a replacement could be ready.
    """

    #: Starting provisioning quantile; `models.headroom` moves it toward the SLO target.
    provisioning_quantile: float = 0.99
    #: Quantile levels forecast; `decide` interpolates the tuned quantile between them.
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
    target_utilisation: float = 0.9
    #: Live floor: load plus the queue drained within this many seconds.
    drain_s: float = 60.0
    min_replicas: int = 1
    max_replicas: int = 10_000
    #: The HPA's default: a shorter window flaps (each re-order is a paid cold start).
    scale_down_stabilisation_s: float = 300.0
    retrain_s: float = 3600.0
    slo_target: float = 0.99
    tune_headroom: bool = True


class Predictive:
    """Forecast + reactive floor through `decide`; the HPA serves until a forecast exists."""

    def __init__(self, fleet: Fleet, settings: PredictiveSettings, windows: History,
                 decision_interval_s: float, fallback: ReactiveHPA,
                 forecaster: str = "auto") -> None:
        self.fleet = fleet
        self.s = settings
        self.windows = windows
        self.fallback = fallback
        step = windows.step_s
        self.lead = max(1, math.ceil((fleet.cold_start_s + decision_interval_s) / step))
        self.forecaster = PastOnlyForecaster(step, settings.levels, self.lead,
                                             settings.retrain_s, forecaster)
        self.policy = ScalingPolicy(
            min_replicas=settings.min_replicas, max_replicas=settings.max_replicas,
            provisioning_quantile=settings.provisioning_quantile,
            target_utilisation=settings.target_utilisation, tolerance=0.0,
            scale_up_pods=_BIG, scale_down_pods=_BIG,
            scale_down_stabilisation_s=settings.scale_down_stabilisation_s,
            forecast_window_s=decision_interval_s)
        self.headroom = Headroom(settings.provisioning_quantile, settings.slo_target,
                                 settings.tune_headroom)
        self._cache: tuple[int, dict[float, FloatArray] | None] = (-1, None)
        self.forecast_decisions = 0

    def _forecast(self, now: float) -> tuple[int, dict[float, FloatArray] | None]:
        w = self.windows
        done = math.floor((now - w.start) / w.step_s + 1e-9)
        if self._cache[0] != done:
            past = w.slice(max(0, done))  # windows completed before now, never later ones
            if done > 0:
                self.headroom.observe(done - 1, float(past.values[-1]))
            qs = self.forecaster.forecast(past, self.lead + 1) if done > 0 else None
            if qs is not None:
                self.headroom.expect(done + self.lead - 1, qs, self.lead - 1)
            self._cache = (done, qs)
        return self._cache

    def target(self, obs: Observation) -> int:
        done, qs = self._forecast(obs.now)
        if qs is None:
            return self.fallback.target(obs)
        self.forecast_decisions += 1
        step = self.windows.step_s
        fc = DemandForecast(self.windows.start + done * step, step, qs)
        live = math.ceil((obs.load_rps + obs.queue / self.s.drain_s)
                         / (self.fleet.capacity_rps * self.s.target_utilisation) - 1e-9)
        return self.fallback.run(fc, obs, live, self.headroom.quantile, self.policy,
                                 self.fleet.cold_start_s)


class Headroom:
    """The provisioning quantile, tuned by `models.headroom` from the replay's own misses.

    A window counts as a miss when its realised load exceeded what was provisioned for it
    (the tuner's rule when latency is not observed); only completed windows are scored.
    """

    def __init__(self, quantile: float, slo_target: float, enabled: bool) -> None:
        self.quantile = quantile
        self.slo_target = slo_target
        self.enabled = enabled and _headroom is not None
        self._state = _headroom.HeadroomState(quantile=quantile) if _headroom else None
        self._expected: dict[int, dict[float, float]] = {}
        self.trail: list[float] = []

    def expect(self, window: int, qs: dict[float, FloatArray], index: int) -> None:
        self._expected[window] = {q: float(v[min(index, v.shape[0] - 1)]) for q, v in qs.items()}

    def observe(self, window: int, actual: float) -> None:
        expected = self._expected.pop(window, None)
        if not self.enabled or expected is None or not math.isfinite(actual):
            return
        assert _headroom is not None and self._state is not None
        levels = sorted(expected)
        provisioned = float(np.interp(self.quantile, levels, [expected[q] for q in levels]))
        upd = _headroom.tune_quantile(self._state,
                                      _headroom.HeadroomObservation(provisioned, actual),
                                      self.slo_target)
        self._state, self.quantile = upd.state, upd.quantile
        self.trail.append(self.quantile)


def oracle_need(arrivals: FloatArray, dt: float, fleet: Fleet) -> FloatArray:
    """Fewest ready replicas per step that keep every arrival within the TTFT SLO.

    Knowing the realised arrivals, the oracle lets the queue take up the SLO's slack (wait up
    to SLO minus the base TTFT at full load) instead of provisioning for every Poisson spike,
    so that no policy meeting the SLO can be cheaper by queueing a little.
    """
    cap = fleet.capacity_rps
    full = float(fleet.base_ttft(np.array([cap]))[0])
    limit = max(0.0, (fleet.ttft_slo_s - full) * 0.999)
    out = np.empty(arrivals.shape[0])
    queue = 0.0
    for k, a in enumerate(arrivals.tolist()):
        n = math.ceil((queue + a) / (cap * (dt + limit)) - 1e-9)
        if limit > 0:
            n = max(n, math.ceil(queue / (cap * limit) - 1e-9))
        out[k] = n
        queue = max(0.0, queue + a - n * cap * dt)
    return out


class Oracle:
    """Exact future demand, each replica ordered exactly one cold start ahead, via `decide`.

    The forecast is `oracle_need` (as demand) at the simulation step; `decide` orders for the
    step when a replica ordered now is ready and keeps what is needed before then. The
    resulting envelope, the peak need over the next cold start, is the cheapest schedule
    meeting the SLO when billing starts at the order: a replica idle for less than a cold
    start is cheaper kept than re-ordered.
    """

    def __init__(self, fleet: Fleet, arrivals: FloatArray, dt: float) -> None:
        self.fleet = fleet
        self.rate = oracle_need(arrivals, dt, fleet) * fleet.capacity_rps * (1 - 1e-9)
        self.dt = dt
        self.span = max(1, math.ceil(fleet.cold_start_s / dt)) + 1
        self.policy = ScalingPolicy(min_replicas=0, max_replicas=_BIG, provisioning_quantile=0.5,
                                    target_utilisation=1.0, tolerance=0.0, scale_up_pods=_BIG,
                                    scale_down_pods=_BIG, scale_down_stabilisation_s=0.0,
                                    forecast_window_s=0.0)

    def target(self, obs: Observation) -> int:
        k = obs.step_index
        fc = DemandForecast(obs.now, round(self.dt), {0.5: self.rate[k:k + self.span]})
        d = decide(fc, self.fleet.capacity_rps, self.fleet.cold_start_s, self.policy,
                   ScalingState(obs.ordered), obs.now)
        return d.replicas
