"""The reconcile loop: read -> forecast -> decide -> actuate -> record, one variant at a time.

A thin shell: the math lives in `models.decide` and `forecaster`; this module only moves data
between the edges (a `MetricsSource`, a `ScaleTarget`) and keeps the record. Every pass ends in
a logged, counted `DecisionRecord`, including the passes that failed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from controller.config import Config, ConfigError, VariantConfig
from controller.metrics import ForescaleMetrics
from controller.protocols import (
    LiveSignals,
    MetricsSource,
    PermanentError,
    ScaleTarget,
    TemporaryError,
)
from controller.reactive import AccuracyTracker, ReactiveTargets, reactive_floor
from controller.state import StateStore
from controller.training import (
    ServedModel,
    TrainingReport,
    config_fingerprint,
    load_models,
    train_models,
)
from forecaster.base import Forecast, History
from models.capacity import CapacityEstimate, capacity_at_slo
from models.decide import (
    Decision,
    DemandForecast,
    Reason,
    ScalingPolicy,
    ScalingState,
    decide,
    next_state,
    scale_down_hold_s,
)
from models.headroom import (
    CALIBRATION_MARGIN,
    HeadroomObservation,
    HeadroomState,
    QuantileCalibrator,
    calibrator_for,
    shortfall_model,
    tune_quantile,
)
from models.optimiser import Allocation, GroupDemand, VariantOption, optimise

log = logging.getLogger("forescale.loop")

DECISION_LOG_SIZE = 500
#: Decisions per variant kept in the persisted state (the in-memory log keeps more).
PERSISTED_LOG_SIZE = 50


@dataclass(frozen=True)
class DecisionRecord:
    """One reconcile of one variant, with everything needed to explain it afterwards."""

    ts: float
    variant: str
    outcome: str  # scaled | held | dry-run | metric | follower | failed
    current: int | None
    desired: int | None
    predictive: int | None
    reactive: int | None
    reactive_why: str
    demand: float | None
    model: str | None
    mode: str
    state: str
    reasons: tuple[dict[str, Any], ...]
    message: str
    live: dict[str, float | int | None] = field(default_factory=dict)


@dataclass
class VariantRuntime:
    config: VariantConfig
    model: ServedModel | None = None
    scaling: ScalingState | None = None
    accuracy: AccuracyTracker = field(default_factory=AccuracyTracker)
    headroom: HeadroomState = field(default_factory=HeadroomState)
    #: Chooses the quantile from the forecast record once it is long enough (see
    #: `models.headroom.QuantileCalibrator`); made at the first forecast (it needs the step).
    calibrator: QuantileCalibrator | None = None
    headroom_reason: str = "feedback tuner: no calibration yet"
    capacity: CapacityEstimate | None = None
    last: DecisionRecord | None = None
    last_decision: Decision | None = None
    log: deque[DecisionRecord] = field(default_factory=lambda: deque(maxlen=DECISION_LOG_SIZE))

    @property
    def state(self) -> str:
        if self.model is None:
            return "warming-up"
        return "reactive-fallback" if self.accuracy.fallback_active else "predictive"


class Service:
    """Holds the per-variant runtime and runs retrain and reconcile passes."""

    def __init__(self, config: Config, source: MetricsSource, targets: dict[str, ScaleTarget],
                 clock: Callable[[], float] = time.time,
                 metrics: ForescaleMetrics | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 state_store: StateStore | None = None) -> None:
        self.config = config
        self.source = source
        self.targets = targets
        self.clock = clock
        self.metrics = metrics or ForescaleMetrics()
        self.is_leader = is_leader
        #: Credit line for plots of the data source (a trace's licence), if any.
        self.attribution = ""
        self.fingerprint = config_fingerprint(config)
        self.variants = {v.name: VariantRuntime(v, headroom=HeadroomState(
            quantile=config.forecast.provisioning_quantile)) for v in config.variants}
        self.generation = 0
        self.last_training: TrainingReport | None = None
        self._train_lock = threading.Lock()
        self._forecast_cache: dict[tuple[Any, ...], Forecast] = {}
        self.state_store = state_store
        #: The last plan for variant groups (routing weights, unserved demand), if any.
        self.allocation: Allocation | None = None
        self._restore()
        for name, model in load_models(config.forecast.model_dir, list(self.variants),
                                       self.fingerprint).items():
            self.variants[name].model = model
            self.metrics.record_model(name, model.model_name)
            log.info("serving %s with persisted model %s", name, model.model_name)
        self.metrics.ready.set(1 if self.ready() else 0)

    # ------------------------------------------------------------------ config reload
    def apply_config(self, new: Config) -> bool:
        """Take a new, already validated config; True when models must be retrained.

        The variant set and their Deployments are fixed for the life of the process (new
        edges need new clients): changing them raises `ConfigError`, and the old config stays.
        A change to what models depend on (the fingerprint) drops the models at once, so no
        forecast ever comes from a model trained under another config.
        """
        old = {(v.name, v.deployment.namespace, v.deployment.name) for v in self.config.variants}
        now = {(v.name, v.deployment.namespace, v.deployment.name) for v in new.variants}
        if old != now:
            raise ConfigError(f"variants or their deployments changed ({sorted(old ^ now)}): "
                              "restart forescale to apply; keeping the running config")
        self.config = new
        for rt in self.variants.values():
            rt.config = new.variant(rt.config.name)
            rt.capacity = None
        fingerprint = config_fingerprint(new)
        if fingerprint == self.fingerprint:
            return False
        self.fingerprint = fingerprint
        for rt in self.variants.values():
            rt.model = None
        self._forecast_cache.clear()
        self.metrics.ready.set(0)
        return True

    # ------------------------------------------------------------------ restart safety
    def _restore(self) -> None:
        """Reload stabilisation windows and the decision log saved by an earlier process."""
        if self.state_store is None:
            return
        try:
            saved = self.state_store.load()
        except (TemporaryError, PermanentError) as exc:
            log.error("cannot load saved state (%s): starting without it", exc)
            self.metrics.reconcile_errors.labels("*", "state-load").inc()
            return
        for name, data in (saved.get("variants") or {}).items():
            rt = self.variants.get(name)
            if rt is None or not isinstance(data, dict):
                continue
            try:
                rt.scaling = ScalingState(
                    current_replicas=int(data.get("current", 0)),
                    recommendations=tuple((float(t), int(r))
                                          for t, r in data.get("recommendations", [])),
                    scale_events=tuple((float(t), int(a), int(b))
                                       for t, a, b in data.get("scale_events", [])))
                if "quantile" in data:
                    rt.headroom = replace(rt.headroom, quantile=float(data["quantile"]))
                for rec in data.get("log", []):
                    rt.log.append(DecisionRecord(**{**rec, "reasons": tuple(rec["reasons"])}))
                rt.last = rt.log[-1] if rt.log else None
            except (TypeError, ValueError, KeyError) as exc:
                log.error("saved state of %s is malformed (%s): ignored", name, exc)
                rt.scaling = None
        log.info("restored state of %d variant(s)", len(saved.get("variants") or {}))

    def snapshot(self) -> dict[str, Any]:
        """What `_restore` needs, as JSON-ready data."""
        out: dict[str, Any] = {}
        for name, rt in self.variants.items():
            if rt.scaling is None:
                continue
            out[name] = {
                "current": rt.scaling.current_replicas,
                "quantile": rt.headroom.quantile,
                "recommendations": [list(r) for r in rt.scaling.recommendations],
                "scale_events": [list(e) for e in rt.scaling.scale_events],
                "log": [asdict(r) for r in list(rt.log)[-PERSISTED_LOG_SIZE:]],
            }
        return {"variants": out}

    def _persist(self) -> None:
        if self.state_store is None or not self.is_leader():
            return
        try:
            self.state_store.save(self.snapshot())
        except (TemporaryError, PermanentError, OSError) as exc:
            log.error("cannot save state (%s): will retry next reconcile", exc)
            self.metrics.reconcile_errors.labels("*", "state-save").inc()

    # ------------------------------------------------------------------ training
    def horizon_steps(self, v: VariantConfig) -> int:
        """Steps to forecast: the configured horizon, at least one cold start plus a window."""
        step = self.config.prometheus.step_s
        need = max(self.config.forecast.horizon_s,
                   v.profile.cold_start_s + 2 * self.config.schedules.reconcile_interval_s + step)
        return max(1, math.ceil(need / step))

    def retrain(self, names: Sequence[str] | None = None) -> TrainingReport:
        """Fit models for the variants (all by default); failures fall back, never raise."""
        if not self._train_lock.acquire(blocking=False):
            raise TemporaryError("a retrain is already running")
        try:
            step = self.config.prometheus.step_s
            # Train on the same step grid that forecasts are issued on (whole steps since
            # the epoch), so a model's data end lines up with the next forecast's origin.
            now = math.floor(self.clock() / step) * step
            start = now - self.config.prometheus.history_days * 86_400
            histories: dict[str, History] = {}
            for name in names or list(self.variants):
                try:
                    h = self.source.history(name, start, now, step)
                except (TemporaryError, PermanentError) as exc:
                    log.warning("retrain %s: cannot read history: %s; keeping the last "
                                "model", name, exc)
                    self.metrics.training_failures.labels(name).inc()
                    continue
                if h.n_valid() == 0:
                    log.warning("retrain %s: history has no samples at all; keeping the last "
                                "model", name)
                    self.metrics.training_failures.labels(name).inc()
                    continue
                histories[name] = h
            t0 = time.perf_counter()
            report = train_models(histories, {n: self.horizon_steps(self.variants[n].config)
                                              for n in histories},
                                  self.config.forecast, self.fingerprint,
                                  budget_s=self.config.schedules.retrain_budget_s,
                                  previous={n: m for n in histories
                                            if (m := self.variants[n].model) is not None})
            self.metrics.training_duration.observe(time.perf_counter() - t0)
            for name, model in report.models.items():
                self.variants[name].model = model
                self.metrics.record_model(name, model.model_name)
            for name in report.failed:
                self.metrics.training_failures.labels(name).inc()
            self.generation += 1
            self._forecast_cache.clear()
            self.last_training = report
            self.metrics.ready.set(1 if self.ready() else 0)
            return report
        finally:
            self._train_lock.release()

    def ready(self) -> bool:
        return all(rt.model is not None for rt in self.variants.values())

    # ------------------------------------------------------------------ forecasting
    def forecast(self, name: str, horizon: int | None = None,
                 quantiles: Sequence[float] | None = None, now: float | None = None) -> Forecast:
        """The variant's forecast from the latest data; cached per training generation and
        step, so API load never triggers training or repeated work."""
        rt = self.variants[name]
        if rt.model is None:
            raise TemporaryError(f"variant {name!r} has no model yet (warming up)")
        step = self.config.prometheus.step_s
        now = self.clock() if now is None else now
        issued = math.floor(now / step) * step
        h = horizon or self.horizon_steps(rt.config)
        qs = tuple(sorted(set(quantiles or self.config.forecast.quantiles)
                          | {self.config.forecast.provisioning_quantile}))
        key = (name, self.generation, issued, h, qs)
        cached = self._forecast_cache.get(key)
        if cached is not None:
            return cached
        tail = self.source.history(name, rt.model.tail_start(issued), issued, step)
        fc = rt.model.forecast(tail, h, qs)
        if len(self._forecast_cache) > 1024:
            self._forecast_cache.clear()
        self._forecast_cache[key] = fc
        return fc

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> list[DecisionRecord]:
        t0 = time.perf_counter()
        records = [self._reconcile_safely(name) for name in self.variants]
        self._plan_groups()
        self._persist()
        self.metrics.reconcile_duration.observe(time.perf_counter() - t0)
        self.metrics.is_leader.set(1 if self.is_leader() else 0)
        return records

    def _plan_groups(self) -> None:
        """Routing weights and unserved demand for substitutable variants, at least cost
        under the GPU quotas (MILP, greedy fallback). Advisory: each variant's replicas still
        come from its own decision pipeline; the router applies the weights."""
        if not self.config.groups:
            return
        groups = []
        for g in self.config.groups:
            options, demand = [], 0.0
            for n in g.variants:
                rt = self.variants[n]
                d = rt.last_decision
                if d is not None and math.isfinite(d.demand):
                    demand += d.demand
                options.append(VariantOption.from_profile(
                    n, rt.config.profile, self.capacity(rt).rps, rt.config.min_replicas,
                    rt.config.max_replicas))
            groups.append(GroupDemand(g.name, demand, tuple(options), g.quality_floor))
        try:
            self.allocation = optimise(groups, self.config.gpu_quotas or None,
                                       time_limit_s=2.0)
        except Exception as exc:  # a planning bug must not stop reconciling
            log.exception("group planning failed: %s", exc)
            self.metrics.reconcile_errors.labels("*", "group-plan").inc()

    def _quota_clamp(self, name: str, d: Decision) -> Decision:
        """Never scale a variant up past its GPU type's quota, counting what the other
        variants of that type were last given; never scale down because of the quota."""
        prof = self.variants[name].config.profile
        quota = self.config.gpu_quotas.get(prof.gpu_type)
        if quota is None or d.replicas <= d.current:
            return d
        used = sum(self._replicas_now(n) * rt.config.profile.gpus_per_replica
                   for n, rt in self.variants.items()
                   if n != name and rt.config.profile.gpu_type == prof.gpu_type)
        allowed = max(d.current, (quota - used) // prof.gpus_per_replica)
        if d.replicas <= allowed:
            return d
        why = Reason("AtGpuQuota", f"{prof.gpu_type} quota {quota} GPUs, {used} used by other "
                     "variants", d.replicas, allowed)
        return replace(d, replicas=allowed, reasons=(*d.reasons, why),
                       gpu_hours_per_hour=allowed * prof.gpus_per_replica,
                       cost_per_hour=allowed * prof.cost_per_replica_hour)

    def _replicas_now(self, name: str) -> int:
        """A variant's replicas as last decided, or as its target reports before that."""
        d = self.variants[name].last_decision
        if d is not None:
            return d.replicas
        try:
            return self.targets[name].current_replicas(name)
        except (TemporaryError, PermanentError) as exc:
            log.warning("quota: cannot read replicas of %s (%s): counting its max", name, exc)
            return self.variants[name].config.max_replicas

    def _reconcile_safely(self, name: str) -> DecisionRecord:
        """One variant's pass; a bug in one variant's path holds it, never the others."""
        try:
            return self.reconcile_variant(name)
        except Exception as exc:  # fail safe: hold replicas, record why
            log.exception("reconcile %s crashed: holding replicas", name)
            return self._record(self.variants[name], self.clock(), "failed",
                                self.config.mode_of(self.variants[name].config).value,
                                None, None, None, None, "", None, (),
                                f"internal error ({type(exc).__name__}: {exc}); holding",
                                None, kind="internal")

    def _policy(self, v: VariantConfig) -> ScalingPolicy:
        b = v.behaviour
        return ScalingPolicy(
            min_replicas=v.min_replicas, max_replicas=v.max_replicas,
            provisioning_quantile=self.config.forecast.provisioning_quantile,
            target_utilisation=b.target_utilisation, tolerance=b.tolerance,
            scale_up_pods=b.scale_up_pods, scale_up_period_s=b.scale_up_period_s,
            scale_down_pods=b.scale_down_pods, scale_down_period_s=b.scale_down_period_s,
            scale_down_stabilisation_s=scale_down_hold_s(
                b.scale_down_stabilisation_s, v.profile.cold_start_s,
                self.config.prometheus.step_s))

    def _live(self, name: str, now: float) -> LiveSignals | None:
        try:
            live = self.source.live(name, now)
        except (TemporaryError, PermanentError) as exc:
            log.warning("reconcile %s: live signals unavailable: %s", name, exc)
            self.metrics.reconcile_errors.labels(name, "live-signals").inc()
            return None
        if live.request_rate is not None:
            self.metrics.actual.labels(name).set(live.request_rate)
        return live

    def _demand(self, name: str, rt: VariantRuntime, now: float,
                live: LiveSignals | None) -> tuple[DemandForecast | None, str]:
        """The forecast as decide() wants it, or None with the reason it is unusable."""
        if rt.model is None:
            return None, "warming up: no model yet"
        try:
            fc = self.forecast(name, now=now)
        except (TemporaryError, PermanentError) as exc:
            self.metrics.reconcile_errors.labels(name, "forecast").inc()
            return None, f"forecast unavailable: {exc}"
        if not all(np.isfinite(v).all() for v in fc.quantiles.values()):
            self.metrics.reconcile_errors.labels(name, "forecast-nan").inc()
            return None, f"forecast from {fc.model} has NaN/Inf: ignored"
        self._track_accuracy(name, rt, fc, live)
        for q in self.config.forecast.quantiles:
            self.metrics.forecast.labels(name, str(q)).set(float(fc.at(q)[0]))
        if rt.accuracy.fallback_active and live is not None and live.request_rate is not None:
            flat = np.full(fc.horizon, live.request_rate)
            return DemandForecast(fc.issued_at, fc.step_s, {0.5: flat}), \
                "reactive fallback: forecast worse than the naive baseline recently"
        return DemandForecast(fc.issued_at, fc.step_s, dict(fc.quantiles)), f"model {fc.model}"

    def _calibrator(self, rt: VariantRuntime, fc: Forecast) -> QuantileCalibrator | None:
        """The variant's calibrator for this forecast grid and config (None with one level).

        Rebuilt, record and all, when anything it derives from changes (levels, step, cold
        start, reconcile interval, SLO slack, utilisation target), as after a config reload.
        """
        levels = tuple(sorted(fc.quantiles))
        if len(levels) < 2:
            return None
        v = rt.config
        # Seeing a shortfall takes one forecast step in the live rate and a reconcile.
        model = shortfall_model(float(fc.step_s), v.profile.cold_start_s,
                                self.config.schedules.reconcile_interval_s + fc.step_s,
                                v.slo.ttft_p95_s - v.profile.base_ttft_s,
                                v.behaviour.target_utilisation)
        cal = rt.calibrator
        if cal is None or cal.levels != levels or cal.model != model:
            rt.calibrator = cal = calibrator_for(levels, model)
        return cal

    def _tune_headroom(self, rt: VariantRuntime, fc: Forecast, live: LiveSignals,
                       predicted: float, actual: float) -> None:
        """Calibrated quantile once the record is long enough, else one feedback step."""
        target = rt.config.slo.attainment_target
        cal = rt.calibrator
        if cal is not None:
            if live.request_rate is not None and live.ttft_p95_s is not None:
                # A p95 over the SLO means at least 5% of the interval's requests missed.
                requests = live.request_rate * self.config.schedules.reconcile_interval_s
                over = live.ttft_p95_s > rt.config.slo.ttft_p95_s
                cal.measured(requests, 0.05 * requests if over else 0.0)
            choice = cal.choose(fc.issued_at, (1.0 - target) * (1.0 - CALIBRATION_MARGIN))
            if choice is not None:
                rt.headroom = replace(rt.headroom, quantile=choice.quantile,
                                      samples=rt.headroom.samples + 1)
                rt.headroom_reason = "calibrated: " + choice.reason
                return
        update = tune_quantile(rt.headroom, HeadroomObservation(predicted, actual), target)
        rt.headroom = update.state
        rt.headroom_reason = "feedback tuner: " + update.reason

    def _track_accuracy(self, name: str, rt: VariantRuntime, fc: Forecast,
                        live: LiveSignals | None) -> None:
        """Score past forecasts against the load that arrived; tune the headroom from misses."""
        q = rt.headroom.quantile
        lo, hi = min(fc.quantiles), max(fc.quantiles)
        provisioned = float(fc.at(min(max(q, lo), hi))[0])
        last_actual = live.request_rate if live is not None else None
        cal = self._calibrator(rt, fc)
        if cal is not None:
            # The forecast that orders replicas for the window one cold start ahead.
            ahead = min(fc.horizon - 1, int(rt.config.profile.cold_start_s // fc.step_s))
            cal.expect(fc.issued_at + ahead * fc.step_s,
                       {lv: float(fc.at(lv)[ahead]) for lv in cal.levels}, q)
        if last_actual is not None:
            if cal is not None:
                cal.observe(fc.issued_at - fc.step_s, last_actual)
            p50 = float(fc.at(min(max(0.5, lo), hi))[0])
            rt.accuracy.expect(fc.issued_at, p50, provisioned, last_actual)
            # The live rate is the window just completed, which began one step ago.
            scored = rt.accuracy.last_scored
            if rt.accuracy.observe(fc.issued_at - fc.step_s, last_actual):
                self.metrics.forecast_miss.labels(name).inc()
            if rt.accuracy.last_scored is not scored and rt.accuracy.last_scored is not None:
                assert live is not None
                self._tune_headroom(rt, fc, live, *rt.accuracy.last_scored)
        self.metrics.forecast_error.labels(name).set(rt.accuracy.error_ratio)
        self.metrics.fallback_active.labels(name).set(int(rt.accuracy.fallback_active))
        self.metrics.provisioning_quantile.labels(name).set(rt.headroom.quantile)

    def capacity(self, rt: VariantRuntime) -> CapacityEstimate:
        """Per-replica capacity at the variant's SLO (curve, queueing model or stated)."""
        if rt.capacity is None:
            rt.capacity = capacity_at_slo(rt.config.profile, rt.config.slo)
        return rt.capacity

    def reconcile_variant(self, name: str) -> DecisionRecord:
        rt = self.variants[name]
        v = rt.config
        now = self.clock()
        mode = self.config.mode_of(v).value
        target = self.targets[name]
        live = self._live(name, now)
        try:
            current = target.current_replicas(name)
        except (TemporaryError, PermanentError) as exc:
            return self._record(rt, now, "failed", mode, None, None, None, None, "",
                                None, (), f"cannot read current replicas: {exc}; holding",
                                live, kind="read-replicas")
        cap = self.capacity(rt)
        if not cap.feasible:
            return self._record(rt, now, "failed", mode, current, current, None, None, "",
                                None, (), f"profile cannot meet the SLO at any load "
                                f"({cap.explanation}); holding", live, kind="infeasible")
        floor, why = reactive_floor(live, current, ReactiveTargets(
            capacity_rps=cap.rps, target_utilisation=v.behaviour.target_utilisation,
            queue_per_replica=v.targets.queue_per_replica,
            kv_cache_usage=v.targets.kv_cache_usage, ttft_slo_s=v.slo.ttft_p95_s))
        demand, demand_why = self._demand(name, rt, now, live)
        state = self._scaling_state(rt, current)
        policy = self._policy(v)
        kwargs: dict[str, Any] = {"quantile": rt.headroom.quantile,
                                  "gpus_per_replica": v.profile.gpus_per_replica,
                                  "gpu_hourly_usd": v.profile.gpu_hourly_usd}
        decision = self._quota_clamp(name, decide(
            demand, cap.rps, v.profile.cold_start_s, policy, state, now,
            reactive_floor=floor, **kwargs))
        predictive = decide(demand, cap.rps, v.profile.cold_start_s, policy, state, now,
                            **kwargs).replicas if demand is not None else None
        if floor is not None and predictive is not None and floor > predictive:
            self.metrics.reactive_override.labels(name).inc()
        outcome, message = self._actuate(name, target, decision, mode)
        rt.last_decision = decision
        rt.scaling = next_state(state, decision, now, policy)
        if outcome in ("failed", "follower"):
            rt.scaling = replace(rt.scaling, current_replicas=current)
        self._export(name, v, decision, predictive, floor, current)
        return self._record(rt, now, outcome, mode, current, decision.replicas, predictive,
                            floor, why, decision.demand,
                            tuple({"code": str(r.code), "message": r.message, "from": r.before,
                                   "to": r.after} for r in decision.reasons),
                            f"{demand_why}; {message}", live,
                            kind="actuate" if outcome == "failed" else None)

    def _scaling_state(self, rt: VariantRuntime, current: int) -> ScalingState:
        """The remembered state with the replicas observed now (someone may have changed
        them by hand: the Deployment is the truth)."""
        if rt.scaling is None:
            return ScalingState(current_replicas=current)
        return replace(rt.scaling, current_replicas=current)

    def _actuate(self, name: str, target: ScaleTarget, decision: Decision,
                 mode: str) -> tuple[str, str]:
        if not self.is_leader():
            return "follower", "not the leader: decision recorded, not applied"
        if not decision.changed and mode != "metric":
            return "held", "no change"
        try:
            result = target.apply(name, decision.replicas, decision.reason_codes())
        except (TemporaryError, PermanentError) as exc:
            log.error("scale %s to %d failed: %s", name, decision.replicas, exc)
            return "failed", f"actuation failed ({type(exc).__name__}): {exc}; will retry"
        if mode == "dry-run":
            return "dry-run", result.message
        if mode == "metric":
            return "metric", result.message
        return ("scaled" if result.changed else "held"), result.message

    def _export(self, name: str, v: VariantConfig, d: Decision, predictive: int | None,
                floor: int | None, current: int) -> None:
        m = self.metrics
        m.desired.labels(name).set(d.replicas)
        m.current.labels(name).set(current)
        if predictive is not None:
            m.predictive.labels(name).set(predictive)
        if floor is not None:
            m.reactive.labels(name).set(floor)
        m.record_reasons(name, d.reason_codes())
        m.cost_per_hour.labels(name).set(d.cost_per_hour)
        m.gpus.labels(name, v.profile.gpu_type).set(d.replicas * v.profile.gpus_per_replica)
        m.unserved.labels(name).set(d.unserved_rps)

    def _record(self, rt: VariantRuntime, now: float, outcome: str, mode: str,
                current: int | None, desired: int | None, predictive: int | None,
                reactive: int | None, reactive_why: str, demand: float | None,
                reasons: tuple[dict[str, Any], ...], message: str,
                live: LiveSignals | None, kind: str | None = None) -> DecisionRecord:
        rec = DecisionRecord(
            ts=now, variant=rt.config.name, outcome=outcome, current=current, desired=desired,
            predictive=predictive, reactive=reactive, reactive_why=reactive_why,
            demand=demand if demand is not None and math.isfinite(demand) else None,
            model=rt.model.model_name if rt.model else None, mode=mode, state=rt.state,
            reasons=reasons, message=message,
            live={} if live is None else {k: getattr(live, k) for k in (
                "request_rate", "queue_depth", "running", "kv_cache_usage", "ttft_p95_s",
                "ready_replicas")})
        rt.log.append(rec)
        rt.last = rec
        self.metrics.decisions.labels(rt.config.name, outcome).inc()
        if kind is not None:
            self.metrics.reconcile_errors.labels(rt.config.name, kind).inc()
        level = logging.WARNING if outcome == "failed" else logging.INFO
        log.log(level, "decision %s: %s current=%s desired=%s reasons=%s (%s)", rt.config.name,
                outcome, current, desired, ",".join(r["code"] for r in reasons) or "-", message)
        return rec
