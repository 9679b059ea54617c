"""One variant's scaling policy: the object `forescale serve`, `demo` and `replay` all drive.

Everything a decision depends on lives here, pure (no I/O, no clock: `now` is an argument):
the settings derived from the variant's config (`PolicySettings`), the scaling state the
behaviour needs (recent recommendations and scale events), the headroom tuner and its
calibrator, and the accuracy tracker behind the reactive fallback. The controller's only job
is to read (replicas, live signals, a forecast), call `VariantPolicy.step`, act on the
decision and `commit` what it observed, so a replay that drives the same `Service` on a
virtual clock makes, line for line, the decisions `serve` would have made.

One step is the HPA-shaped two-stage pipeline of `models.decide`:

    recommend   forecast need at the tuned quantile over the window one cold start ahead
                (corrected by the live load inside a long window: `nowcast`; centred on the
                live load, keeping the model's spread, while the model has been clearly
                worse than naive: reactive mode); raised to the overload floor of the live
                signals (`models.reactive`); dead band; no forecast at all: hold
    normalise   scale-down stabilisation and the forecast's near-term need, rate limits,
                min/max, GPU quota, zero guard; every clamp a reason code
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from forecaster.base import FloatArray, Forecast
from models.capacity import (
    CorrectionConfig,
    CorrectionState,
    FleetObservation,
    correct_capacity,
)
from models.coldstart import MAX_COLD_START_S, ColdStartEstimator
from models.decide import (
    Decision,
    DemandForecast,
    ReasonCode,
    ScalingPolicy,
    ScalingState,
    break_even_hold_s,
    decide,
    next_state,
)
from models.headroom import (
    CALIBRATION_MARGIN,
    HeadroomTuner,
    ShortfallModel,
    calibrator_for,
    shortfall_model,
)
from models.profile import SLO
from models.reactive import AccuracyTracker, ReactiveTargets, reactive_floor
from models.signals import LiveSignals


@dataclass(frozen=True)
class PolicySettings:
    """What a variant's decisions depend on; the controller derives it from the config."""

    scaling: ScalingPolicy
    #: Requests/s one replica serves within the SLO (`models.capacity.capacity_at_slo`).
    capacity_rps: float
    cold_start_s: float
    reactive: ReactiveTargets
    #: Share of requests within the TTFT SLO the user asked for.
    attainment_target: float
    #: TTFT SLO minus the base TTFT at full load: the queueing a request may absorb.
    ttft_slack_s: float
    #: How often the policy is stepped (the reconcile interval).
    interval_s: float
    #: The live request rate is a mean over this window (the `rate(...[2m])` of the signal,
    #: or the simulator's metrics window); it delays seeing a shortfall.
    metrics_window_s: float = 60.0
    gpus_per_replica: int = 1
    gpu_hourly_usd: float = 0.0
    #: Correct a forecast issued at the start of a long window with the live load.
    nowcast: bool = True
    #: The training step; with `hold_follows_cold_start`, the scale-down window is the longer
    #: of the measured cold start and this (the break-even hold), as the cold start moves.
    step_s: int = 60
    hold_follows_cold_start: bool = False
    #: Let the live fleet correct the profile's capacity (`models.capacity.correct_capacity`:
    #: saturated or at-the-edge fleets show what a replica really serves), within bounds.
    correct_capacity: bool = True

    def shortfall(self, step_s: float, cold_start_s: float) -> ShortfallModel:
        """How a window short of capacity turns into missed requests (for the calibrator):
        seeing the shortfall takes the metrics window and a decision interval."""
        return shortfall_model(step_s, cold_start_s,
                               self.metrics_window_s + self.interval_s, self.ttft_slack_s,
                               self.scaling.target_utilisation)


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


def interval_misses(live: LiveSignals | None, ready: int, settings: PolicySettings,
                    capacity_rps: float) -> tuple[float, float | None]:
    """(requests, missed requests) of the interval ending now, from the live signals.

    The wait a request meets is the queue over the ready fleet's service rate (what a TTFT
    histogram would show; `capacity_rps` is per replica as decisions use it, corrected by the
    live fleet): over the SLO's slack, the interval's requests count as missed. A
    TTFT p95 over the SLO without a queue estimate means at least 5% missed. Unknown: None.
    """
    if live is None or live.request_rate is None or not math.isfinite(live.request_rate):
        return 0.0, None
    requests = live.request_rate * settings.interval_s
    serving = ready * capacity_rps
    if live.queue_depth is not None and math.isfinite(live.queue_depth):
        wait = live.queue_depth / serving if serving > 0 else (
            math.inf if live.queue_depth > 0 else 0.0)
        return requests, requests if wait > settings.ttft_slack_s else 0.0
    if live.ttft_p95_s is not None and math.isfinite(live.ttft_p95_s):
        over = live.ttft_p95_s > settings.reactive.ttft_slo_s
        return requests, 0.05 * requests if over else 0.0
    return requests, None


class VariantPolicy:
    """A variant's decision and the state it keeps between decisions (see module doc)."""

    def __init__(self, settings: PolicySettings, quantile: float) -> None:
        self.settings = settings
        self.scaling: ScalingState | None = None
        #: The measured cold start (the configured one is its prior).
        self.cold_start = ColdStartEstimator(settings.cold_start_s)
        self.accuracy = AccuracyTracker()
        self.headroom = HeadroomTuner(
            quantile, settings.attainment_target
            + CALIBRATION_MARGIN * (1.0 - settings.attainment_target))
        self.last: Decision | None = None
        #: The forecast most recently checked by `usable`, and the answer.
        self.last_forecast: Forecast | None = None
        self._usable = False
        #: The settings the calibrator's shortfall model was last checked against.
        self._calibrated_for: tuple[PolicySettings, float] | None = None
        self._recorded: Forecast | None = None
        self._level_fc: Forecast | None = None
        self._level_q: float | None = None
        self._level_qs: dict[float, FloatArray] = {}
        #: Decisions the overload floor raised above the forecast's need.
        self.floor_decisions = 0
        #: The live fleet's correction of the profile's capacity, and what it rests on.
        self.capacity_state = CorrectionState()
        self.capacity_reason = "profile's capacity (no saturated or at-the-edge fleet seen)"
        self._last_queue: tuple[float, float] | None = None
        self._slo_for: PolicySettings | None = None
        self._held_key: tuple[PolicySettings, float] | None = None
        self._held = settings.scaling
        self._slo_cache = SLO()

    # ------------------------------------------------------------------ configuration
    def reconfigure(self, settings: PolicySettings) -> None:
        """New settings (a config reload); the state carries over. The calibrator is rebuilt
        at the next forecast if its shortfall model changed."""
        if settings.capacity_rps != self.settings.capacity_rps:
            # A new profile is a new measurement: the old correction was relative to the old.
            self.capacity_state = CorrectionState()
            self.capacity_reason = "profile's capacity (profile changed; correction reset)"
        self.settings = settings
        self.cold_start.prior_s = settings.cold_start_s
        self.headroom.attainment_target = settings.attainment_target + CALIBRATION_MARGIN * (
            1.0 - settings.attainment_target)

    def _slo(self) -> SLO:
        """The SLO the capacity correction judges latency by (built once per settings)."""
        if self._slo_for is not self.settings:
            self._slo_cache = SLO(ttft_p95_s=self.settings.reactive.ttft_slo_s,
                                  attainment_target=self.settings.attainment_target)
            self._slo_for = self.settings
        return self._slo_cache

    @property
    def capacity_rps(self) -> float:
        """Requests/s one replica serves at the SLO: the profile's, as the live fleet has
        corrected it."""
        if not self.settings.correct_capacity:
            return self.settings.capacity_rps
        return self.settings.capacity_rps * self.capacity_state.factor

    def _observe_capacity(self, now: float, live: LiveSignals | None) -> None:
        """Feed the fleet's served throughput and latency to the capacity correction.

        Served throughput is the arrival rate less the queue's growth since the last step
        (arrivals that waited were not served); a TTFT at or over the SLO makes it a measure
        of what the ready replicas can do, a TTFT well within it only a lower bound. A slow
        TTFT without a queue (long prompts at low load, a cold cache) says nothing about
        capacity and is not fed: taken as capacity it would shrink the estimate to the low
        throughput of the moment, and nothing at the larger fleet that follows would ever
        raise it again.
        """
        s = self.settings
        if not s.correct_capacity or live is None or live.request_rate is None \
                or live.ready_replicas is None or live.ttft_p95_s is None:
            return
        rate = live.request_rate
        queue = live.queue_depth
        served = rate
        if queue is not None and math.isfinite(queue):
            if self._last_queue is not None and now > self._last_queue[0]:
                served = rate - (queue - self._last_queue[1]) / (now - self._last_queue[0])
            self._last_queue = (now, queue)
        if not math.isfinite(served) or served <= 0:
            return
        slo = self._slo()
        saturated = queue is not None and math.isfinite(queue) and queue >= max(1.0, served)
        if live.ttft_p95_s >= CorrectionConfig().edge_fraction * slo.ttft_p95_s \
                and not saturated:
            return
        obs = FleetObservation(live.ready_replicas, served, live.ttft_p95_s)
        out = correct_capacity(s.capacity_rps, obs, slo, self.capacity_state)
        self.capacity_state = out.state
        if out.evidence != "none":
            self.capacity_reason = out.explanation

    @property
    def cold_start_s(self) -> float:
        """The cold start decisions plan for: measured (p90), the configured one before."""
        return self.cold_start.cold_start_s

    def scaling_policy(self) -> ScalingPolicy:
        """The behaviour as configured; a scale-down window left to the break-even hold
        follows the measured cold start."""
        s = self.settings
        if not s.hold_follows_cold_start:
            return s.scaling
        b = s.scaling.behaviour
        hold = min(break_even_hold_s(self.cold_start_s, s.step_s), MAX_COLD_START_S)
        if b.scale_down.stabilisation_s == hold:
            return s.scaling
        # Built once per settings and hold: it is asked for twice a reconcile.
        if self._held_key is None or self._held_key[0] is not s \
                or self._held_key[1] != hold:
            self._held = replace(s.scaling, behaviour=replace(b, scale_down=replace(
                b.scale_down, stabilisation_s=hold)))
            self._held_key = (s, hold)
        return self._held

    @property
    def quantile(self) -> float:
        return self.headroom.quantile

    @property
    def fallback_active(self) -> bool:
        return self.accuracy.fallback_active

    def restore(self, scaling: ScalingState, quantile: float | None,
                cold_starts: Sequence[float] = (),
                capacity: tuple[float, float, int] | None = None) -> None:
        """State saved by an earlier process (stabilisation windows, the tuned quantile, the
        measured cold starts, the capacity correction as (profile capacity it corrected,
        factor, observations)). A correction of another profile's capacity, or outside the
        correction's bounds, is not taken: the profile was re-measured, or the file is not
        what this process wrote."""
        self.scaling = scaling
        if quantile is not None:
            self.headroom.quantile = quantile
        self.cold_start.samples.extend(c for c in cold_starts if 0 <= c <= MAX_COLD_START_S)
        bounds = CorrectionConfig()
        if capacity is not None and capacity[0] == self.settings.capacity_rps \
                and bounds.min_factor <= capacity[1] <= bounds.max_factor:
            self.capacity_state = CorrectionState(capacity[1], max(0, capacity[2]))
            self.capacity_reason = (f"restored x{capacity[1]:.2f} of the profile's capacity "
                                    f"from the saved state ({capacity[2]} observations)")

    def capacity_snapshot(self) -> tuple[float, float, int]:
        """The capacity correction as `restore` takes it."""
        return (self.settings.capacity_rps, self.capacity_state.factor,
                self.capacity_state.samples)

    def usable(self, fc: Forecast) -> bool:
        """Whether every value of the forecast is finite (checked once per forecast: the
        service steps many times on one forecast window)."""
        if fc is not self.last_forecast:
            self.last_forecast = fc
            self._usable = all(bool(np.isfinite(v).all()) for v in fc.quantiles.values())
        return self._usable

    # ------------------------------------------------------------------ the step
    def _calibrate(self, fc: Forecast, observed: tuple[float, float] | None) -> None:
        """Give the calibrator the forecast that orders replicas for the window one cold
        start ahead, and the load of the window just completed."""
        levels = tuple(sorted(fc.quantiles))
        if len(levels) < 2:
            return
        cal = self.headroom.calibrator
        cold = self.cold_start_s
        if cal is None or cal.levels != levels or cal.model.window_s != fc.step_s \
                or self._calibrated_for != (self.settings, cold):
            model = self.settings.shortfall(float(fc.step_s), cold)
            new_config = self._calibrated_for is not None \
                and self._calibrated_for[0] is not self.settings
            if cal is None or cal.levels != levels or cal.model.window_s != fc.step_s \
                    or (new_config and cal.model != model):
                # New levels, step or config: a record judged by other settings is dropped.
                self.headroom.calibrator = cal = calibrator_for(levels, model)
            else:
                # Only the measured cold start moved: keep the record, judge from now on
                # with the new exposure.
                cal.model = model
            self._calibrated_for = (self.settings, cold)
        if fc is self._recorded:
            return  # this forecast window is on record already
        self._recorded = fc
        ahead = min(fc.horizon - 1, int(self.cold_start_s // fc.step_s))
        if observed is not None:
            cal.observe(*observed)
        cal.expect(fc.issued_at + ahead * fc.step_s,
                   {lv: float(fc.at(lv)[ahead]) for lv in cal.levels}, self.quantile)

    def _track(self, fc: Forecast, observed: tuple[float, float] | None) -> None:
        """Score the forecast of the window just completed against its load (the accuracy
        fallback), and record this forecast for the calibrator."""
        self._calibrate(fc, observed)
        lo, hi = min(fc.quantiles), max(fc.quantiles)
        provisioned = float(fc.at(min(max(self.quantile, lo), hi))[0])
        if observed is not None:
            p50 = float(fc.at(min(max(0.5, lo), hi))[0])
            self.accuracy.expect(fc.issued_at, p50, provisioned, observed[1])
            self.accuracy.observe(*observed)

    def _levels(self, fc: Forecast) -> dict[float, FloatArray]:
        """The forecast at the provisioning quantile (interpolated once per forecast and
        quantile, or the nearest level outside them) and at the median (for `nowcast`)."""
        q = self.quantile
        if fc is not self._level_fc or q != self._level_q:
            lo, hi = min(fc.quantiles), max(fc.quantiles)
            edge = min(max(q, lo), hi)
            qs = {edge: np.asarray(fc.at(edge), dtype=np.float64)}
            if lo <= 0.5 <= hi:
                qs[0.5] = np.asarray(fc.at(0.5), dtype=np.float64)
            self._level_fc, self._level_q, self._level_qs = fc, q, qs
        return dict(self._level_qs)

    def _demand(self, now: float, live: LiveSignals | None, fc: Forecast | None,
                observed: tuple[float, float] | None, why: str
                ) -> tuple[DemandForecast | None, str, bool]:
        """The demand to provision for, where it came from, and whether it is the live load
        (reactive mode) rather than a forecast."""
        rate = live.request_rate if live is not None else None
        if rate is not None and not math.isfinite(rate):
            rate = None
        if fc is not None and not self.usable(fc):
            why = f"forecast from {fc.model} has NaN/Inf: ignored"
            fc = None
        if fc is None:
            # Missing or broken forecast: hold (the overload floor can still raise it).
            return None, why, False
        self._track(fc, observed)
        qs = self._levels(fc)
        if not self.accuracy.fallback_active:
            if self.settings.nowcast and rate is not None:
                qs = nowcast(qs, rate, now - fc.issued_at, fc.step_s,
                             self.settings.metrics_window_s)
            return DemandForecast(fc.issued_at, fc.step_s, qs), f"model {fc.model}", False
        why = "reactive fallback: forecast worse than the best naive baseline recently"
        if rate is None or 0.5 not in qs:
            return None, why, False
        # Reactive mode: centred on the live load (the naive forecast that beat the model),
        # with the model's spread above its median kept as the headroom.
        median = qs[0.5]
        level = self.accuracy.centre(rate)
        centred = {q: np.maximum(level + v - median, 0.0) for q, v in qs.items()}
        where = (f"the live load {rate:.3g} req/s" if level == rate else
                 f"{self.accuracy.best_baseline} {level:.3g} req/s (the best baseline)")
        return (DemandForecast(fc.issued_at, fc.step_s, centred),
                f"{why}; centred on {where}", True)

    def step(self, now: float, current: int, live: LiveSignals | None,
             forecast: Forecast | None, observed: tuple[float, float] | None = None,
             why: str = "no forecast", *, quota: int | None = None,
             quota_why: str = "") -> tuple[Decision, str]:
        """The decision at `now` for a fleet of `current` replicas (spec), and where its demand
        came from. `observed`: (start, load) of the newest completed forecast window."""
        s = self.settings
        ready = live.ready_replicas if live is not None and live.ready_replicas is not None \
            else current
        self.cold_start.observe(now, live.ready_replicas if live is not None else None)
        self._observe_capacity(now, live)
        cap = self.capacity_rps
        requests, missed = interval_misses(live, ready, s, cap)
        self.headroom.record(now, requests, missed)
        floor, floor_why = reactive_floor(
            live, current, s.reactive if cap == s.reactive.capacity_rps
            else replace(s.reactive, capacity_rps=cap))
        demand, source, reactive = self._demand(now, live, forecast, observed, why)
        state = self.scaling_state(current)
        decision = decide(demand, cap, self.cold_start_s, self.scaling_policy(),
                          state, now,
                          reactive_floor=floor, floor_why=floor_why,
                          quantile=self.quantile,
                          gpus_per_replica=s.gpus_per_replica,
                          gpu_hourly_usd=s.gpu_hourly_usd, quota=quota, quota_why=quota_why)
        if reactive:
            decision = replace(decision, reasons=tuple(
                replace(r, code=ReasonCode.REACTIVE.value) if r.code == "ForecastPeak" else r
                for r in decision.reasons))
        if floor is not None and (decision.predictive is None or floor > decision.predictive):
            self.floor_decisions += 1
        self.last = decision
        return decision, source

    def scaling_state(self, current: int) -> ScalingState:
        """The remembered state with the replicas observed now (someone may have changed them
        by hand: the workload is the truth)."""
        if self.scaling is None:
            return ScalingState(current_replicas=current)
        return replace(self.scaling, current_replicas=current)

    def commit(self, decision: Decision, now: float, applied: bool) -> None:
        """Remember the decision; when it was not applied (dry-run failures, a follower), the
        fleet stays where it was."""
        state = self.scaling_state(decision.current)
        self.scaling = next_state(state, decision, now, self.scaling_policy())
        if not applied:
            self.scaling = replace(self.scaling, current_replicas=decision.current)
        else:
            self.cold_start.ordered(now, decision.current, decision.replicas)
