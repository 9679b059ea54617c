"""The policies under replay, each a thin shell around the service's `models.decide.decide`.

- `ReactiveHPA`: the seed-typical HPA (target utilisation, queue-depth metric, stabilisation
  windows, pod-rate limits per period). Its recommendation is `hpa_recommendation`, passed to
  `decide` as a flat demand so the same clamp pipeline the service runs applies it.
- `Predictive`: forescale as configured for replay: the peak of a quantile forecast (past
  only, corrected by the live load inside long windows) over the window one cold start
  ahead; a reactive floor only on observed overload; scale-down as soon as the forecast
  allows but never of a replica it needs again within one cold start; the quantile tuned on
  per-request attainment over about a day; the HPA as fallback while no forecast is trusted.
- `Oracle`: exact future demand, each replica ordered exactly one cold start ahead.

Each policy keeps its `ScalingState` with `models.decide.next_state`, as the service does, so
stabilisation windows and per-period rate limits see the same history they would live.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from controller.replay_forecast import PastOnlyForecaster
from controller.replay_sim import Fleet, Observation
from forecaster.base import FloatArray, History
from models.decide import (
    DemandForecast,
    ScalingPolicy,
    ScalingState,
    decide,
    next_state,
    scale_down_hold_s,
)
from models.headroom import (
    CALIBRATION_MARGIN,
    CALIBRATION_MEMORY_S,
    CALIBRATION_MIN_WINDOWS,
    HeadroomConfig,
    HeadroomObservation,
    HeadroomState,
    QuantileCalibrator,
    calibrator_for,
    shortfall_model,
    tune_quantile,
)

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

    The forecast provisions for the peak of the tuned quantile over the window that starts
    one cold start ahead; that quantile *is* the headroom, so the fleet runs hot
    (`target_utilisation`) instead of adding a utilisation margin on top of a reactive floor.
    The reactive floor acts only on observed overload. Scale-up is not rate-limited: a rate
    limit would only delay what the forecast already justified. Scale-down follows the
    forecast once it has held for a cold start and a forecast step (`break_even_hold_s`), and
    `decide` never removes a replica the forecast needs again within one cold start
    (re-ordering it would cost a cold start of GPU time).
    """

    #: Starting provisioning quantile; the headroom tuner moves it toward the SLO target.
    provisioning_quantile: float = 0.95
    #: Quantile levels forecast; `decide` interpolates the tuned quantile between them. The
    #: top levels let the calibrator buy more headroom on series whose jumps need it.
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
    #: Share of a replica's capacity planned for at the provisioning quantile.
    target_utilisation: float = 0.95
    #: Overload floor: load plus the queue drained within this many seconds, at capacity.
    drain_s: float = 60.0
    #: Overload means a queue worth this many seconds of the ready fleet's capacity...
    overload_queue_s: float = 1.0
    #: ...or live load above the ready capacity by more than this share.
    overload_tolerance: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 10_000
    #: Highest recommendation of this window bounds a scale-down. None: the longer of the
    #: cold start and the forecast step (`models.decide.break_even_hold_s`).
    scale_down_stabilisation_s: float | None = None
    #: Engine retrain period in simulated time; between retrains `TrainedModel.forecast`
    #: extends the model's buffer with the newest windows (baselines refit, cheaply).
    retrain_s: float = 6 * 3600.0
    slo_target: float = 0.99
    tune_headroom: bool = True
    #: The tuner aims this share of the miss budget below it, so noise stays inside the SLO.
    attainment_margin: float = CALIBRATION_MARGIN
    #: Tuner period and memory: per-request attainment of each period, smoothed over about
    #: `headroom_memory_s` (a day: the quantile follows the daily cycle's risk, not a burst).
    headroom_every_s: float = 3600.0
    headroom_memory_s: float = 86_400.0
    #: Choose the quantile from the forecast record (`models.headroom.QuantileCalibrator`)
    #: once it holds `calibration_min_windows` windows, over at most `calibration_memory_s`.
    calibrate: bool = True
    calibration_memory_s: float = CALIBRATION_MEMORY_S
    calibration_min_windows: int = CALIBRATION_MIN_WINDOWS
    #: Use the live load to correct the forecast within a long window (see `nowcast`).
    nowcast: bool = True
    #: The simulator's metrics window: the live load is the mean rate over this span.
    metrics_window_s: float = 60.0


def nowcast(qs: dict[float, FloatArray], live_rps: float, elapsed_s: float, step_s: int,
            metrics_window_s: float) -> dict[float, FloatArray]:
    """Correct a forecast issued at the start of the current window with the live load.

    The forecast's windows start with the current (partly observed) one. Once the metrics
    window lies inside it, the live rate is an observation of that window: its deviation
    from the median forecast is carried into every later window (as a naive forecast would
    carry the last value), and the current window's spread shrinks with the share of it
    already observed. Windows shorter than two metrics windows are left alone: there the
    forecast already starts from the newest completed window.
    """
    if step_s < 2 * metrics_window_s or elapsed_s < metrics_window_s or 0.5 not in qs \
            or not math.isfinite(live_rps):
        return qs
    median = qs[0.5]
    if median.shape[0] == 0 or not math.isfinite(float(median[0])):
        return qs
    offset = live_rps - float(median[0])
    remaining = max(0.0, 1.0 - elapsed_s / step_s)
    out: dict[float, FloatArray] = {}
    for q, v in qs.items():
        w = v + offset
        w[0] = live_rps + (float(v[0]) - float(median[0])) * remaining
        out[q] = np.maximum(w, 0.0)
    return out


class Predictive:
    """Forecast + overload floor through `decide`; the HPA serves until a forecast exists."""

    def __init__(self, fleet: Fleet, settings: PredictiveSettings, windows: History,
                 decision_interval_s: float, fallback: ReactiveHPA,
                 forecaster: str = "auto") -> None:
        self.fleet = fleet
        self.s = settings
        self.windows = windows
        self.fallback = fallback
        self.interval_s = decision_interval_s
        step = windows.step_s
        self.lead = max(1, math.ceil((fleet.cold_start_s + decision_interval_s) / step))
        self.forecaster = PastOnlyForecaster(step, settings.levels, self.lead,
                                             settings.retrain_s, forecaster)
        self.policy = ScalingPolicy(
            min_replicas=settings.min_replicas, max_replicas=settings.max_replicas,
            provisioning_quantile=settings.provisioning_quantile,
            target_utilisation=settings.target_utilisation, tolerance=0.0,
            scale_up_pods=_BIG, scale_down_pods=_BIG,
            scale_down_stabilisation_s=scale_down_hold_s(settings.scale_down_stabilisation_s,
                                                         fleet.cold_start_s, step),
            forecast_window_s=decision_interval_s)
        budget = 1.0 - settings.slo_target
        cap = fleet.capacity_rps
        self._slack_s = fleet.ttft_slo_s - float(fleet.base_ttft(np.array([cap]))[0])
        calibrator = None
        if settings.calibrate:
            # Seeing a shortfall takes the metrics window and a decision interval.
            model = shortfall_model(float(step), fleet.cold_start_s,
                                    settings.metrics_window_s + decision_interval_s,
                                    self._slack_s, settings.target_utilisation)
            calibrator = calibrator_for(settings.levels, model, settings.calibration_memory_s,
                                        settings.calibration_min_windows)
        self.headroom = Headroom(settings.provisioning_quantile,
                                 settings.slo_target + settings.attainment_margin * budget,
                                 settings.tune_headroom, settings.headroom_every_s,
                                 settings.headroom_memory_s, calibrator)
        self._observed = 0
        self._cache: tuple[int, dict[float, FloatArray] | None] = (-1, None)
        self.forecast_decisions = 0
        self.overload_decisions = 0

    def _forecast(self, now: float) -> tuple[int, dict[float, FloatArray] | None]:
        w = self.windows
        done = math.floor((now - w.start) / w.step_s + 1e-9)
        if self._cache[0] != done:
            past = w.slice(max(0, done))  # windows completed before now, never later ones
            qs = self.forecaster.forecast(past, self.lead + 1) if done > 0 else None
            self._cache = (done, qs)
        return self._cache

    def overload_floor(self, obs: Observation) -> int | None:
        """Replicas the live signals need, only when the ready fleet is observably overloaded.

        Normal load is the forecast's business (its quantile is the headroom); flooring every
        sample at current load over a utilisation target would count the headroom twice.
        """
        serving = obs.ready * self.fleet.capacity_rps
        queued = obs.queue > self.s.overload_queue_s * serving
        hot = obs.load_rps > (1.0 + self.s.overload_tolerance) * serving
        if not (queued or hot):
            return None
        self.overload_decisions += 1
        return math.ceil((obs.load_rps + obs.queue / self.s.drain_s)
                         / self.fleet.capacity_rps - 1e-9)

    def _account(self, obs: Observation) -> None:
        """Score the interval just decided on for the headroom tuner (past data only).

        The estimated wait is the queue over the ready fleet's service rate, the TTFT a
        Prometheus histogram would show; the interval's requests count as missed when it
        exceeds the SLO's slack. Per-request weighting: a busy hour counts more.
        """
        serving = obs.ready * self.fleet.capacity_rps
        wait = obs.queue / serving if serving > 0 else (math.inf if obs.queue > 0 else 0.0)
        self.headroom.record(obs.now, obs.load_rps * self.interval_s, wait > self._slack_s)

    def _record_forecast(self, now: float, done: int, qs: dict[float, FloatArray]) -> None:
        """Give the calibrator the forecast that orders replicas for the window one cold
        start ahead, and the loads of windows completed since (past data only)."""
        cal = self.headroom.calibrator
        if cal is None:
            return
        w = self.windows
        for k in range(self._observed, done):
            cal.observe(w.start + k * w.step_s, float(w.values[k]))
        self._observed = max(self._observed, done)
        j = math.floor((now + self.fleet.cold_start_s - w.start) / w.step_s)
        idx = j - done
        if 0 <= idx < min(v.shape[0] for v in qs.values()):
            cal.expect(w.start + j * w.step_s, {q: float(v[idx]) for q, v in qs.items()},
                       self.headroom.quantile)

    def target(self, obs: Observation) -> int:
        done, qs = self._forecast(obs.now)
        if qs is None:
            return self.fallback.target(obs)
        self._account(obs)
        self.forecast_decisions += 1
        step = self.windows.step_s
        issued = self.windows.start + done * step
        if self.s.nowcast:
            qs = nowcast(qs, obs.load_rps, obs.now - issued, step, self.s.metrics_window_s)
        self._record_forecast(obs.now, done, qs)
        fc = DemandForecast(issued, step, qs)
        return self.fallback.run(fc, obs, self.overload_floor(obs), self.headroom.quantile,
                                 self.policy, self.fleet.cold_start_s)


class Headroom:
    """The provisioning quantile: calibrated on the forecast record, else tuned on misses.

    Once the calibrator (`models.headroom.QuantileCalibrator`) holds enough windows, each
    period's quantile is its choice: the lowest whose estimated per-request miss share, corrected
    by measured over estimated misses, fits the budget. Before that, the feedback tuner below.

    Requests are tallied per period (`every_s`); at the end of each period the period's
    attainment goes to `models.headroom.tune_quantile` with a smoothing weight of one period
    in `memory_s`, so the quantile answers a day's misses, not one unlucky window. The gains
    are per period and small: the quantile drifts down while the fleet over-serves and climbs
    when the smoothed miss share exceeds the budget.
    """

    def __init__(self, quantile: float, attainment_target: float, enabled: bool,
                 every_s: float = 3600.0, memory_s: float = 86_400.0,
                 calibrator: QuantileCalibrator | None = None) -> None:
        self.quantile = quantile
        self.attainment_target = attainment_target
        self.calibrator = calibrator
        self.calibrated = 0
        self.enabled = enabled
        self.every_s = every_s
        self._state = HeadroomState(quantile=quantile)
        alpha = min(1.0, every_s / memory_s)
        self._config = HeadroomConfig(
            alpha=alpha, gain_up=0.3 * alpha * 24, gain_down=0.02 * alpha * 24,
            max_step=0.5, dead_band=0.25)
        self._period_end: float | None = None
        self._total = 0.0
        self._missed = 0.0
        self.trail: list[float] = []

    def record(self, now: float, requests: float, missed: bool) -> None:
        """Tally one decision interval; tune when a period has closed."""
        if self._period_end is None:
            self._period_end = now + self.every_s
        if now >= self._period_end:
            self._tune(self._period_end)
            self._period_end = now + self.every_s
        if math.isfinite(requests) and requests > 0:
            self._total += requests
            self._missed += requests if missed else 0.0
            if self.calibrator is not None:
                self.calibrator.measured(requests, requests if missed else 0.0)

    def _tune(self, period_end: float) -> None:
        total, missed = self._total, self._missed
        self._total = self._missed = 0.0
        if not self.enabled or total <= 0:
            return
        if self.calibrator is not None:
            choice = self.calibrator.choose(period_end, 1.0 - self.attainment_target)
            if choice is not None:
                # The feedback state follows, so it resumes from here if the record thins.
                self.quantile = choice.quantile
                self._state = replace(self._state, quantile=choice.quantile)
                self.calibrated += 1
                self.trail.append(self.quantile)
                return
        obs = HeadroomObservation(math.nan, math.nan, 1.0 - missed / total)
        upd = tune_quantile(self._state, obs, self.attainment_target, self._config)
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
