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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.config import Config, ConfigError, VariantConfig
from controller.metrics import ForescaleMetrics
from controller.protocols import (
    LiveSignals,
    MetricsSource,
    PermanentError,
    ScaleTarget,
    TemporaryError,
)
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
from models.decide import Decision, ScalingPolicy, ScalingState, break_even_hold_s
from models.headroom import HeadroomTuner, QuantileCalibrator
from models.optimiser import Allocation, GroupDemand, VariantOption, optimise
from models.policy import PolicySettings, VariantPolicy
from models.reactive import AccuracyTracker, ReactiveTargets

log = logging.getLogger("forescale.loop")


def gap_count(values: npt.NDArray[np.float64]) -> int:
    """Missing windows between the first and the last observed one (before the first sample
    the variant did not exist yet: those are not gaps)."""
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return 0
    return int((~np.isfinite(values[ok[0]:ok[-1] + 1])).sum())

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
    """A variant's edges-side record (config, model, decision log) and its `VariantPolicy`,
    which holds everything the decisions depend on."""

    config: VariantConfig
    policy: VariantPolicy
    model: ServedModel | None = None
    #: Windows of the last training history with no samples between its first and last
    #: sample: missing data, kept missing (never read as zero load).
    history_gaps: int = 0
    capacity: CapacityEstimate | None = None
    last: DecisionRecord | None = None
    log: deque[DecisionRecord] = field(default_factory=lambda: deque(maxlen=DECISION_LOG_SIZE))

    @property
    def state(self) -> str:
        if self.model is None:
            return "warming-up"
        return "reactive-fallback" if self.policy.fallback_active else "predictive"

    @property
    def last_decision(self) -> Decision | None:
        return self.policy.last

    @property
    def scaling(self) -> ScalingState | None:
        return self.policy.scaling

    @property
    def headroom(self) -> HeadroomTuner:
        return self.policy.headroom

    @property
    def headroom_reason(self) -> str:
        return self.policy.headroom.reason

    @property
    def calibrator(self) -> QuantileCalibrator | None:
        return self.policy.headroom.calibrator

    @property
    def accuracy(self) -> AccuracyTracker:
        return self.policy.accuracy


class Service:
    """Holds the per-variant runtime and runs retrain and reconcile passes."""

    def __init__(self, config: Config, source: MetricsSource, targets: dict[str, ScaleTarget],
                 clock: Callable[[], float] = time.time,
                 metrics: ForescaleMetrics | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 state_store: StateStore | None = None,
                 record_sink: Callable[[DecisionRecord], None] | None = None) -> None:
        self.config = config
        self.source = source
        self.targets = targets
        self.clock = clock
        self.metrics = metrics or ForescaleMetrics()
        self.is_leader = is_leader
        #: Credit line for plots of the data source (a trace's licence), if any.
        self.attribution = ""
        self.fingerprint = config_fingerprint(config)
        self.variants = {v.name: VariantRuntime(v, VariantPolicy(
            self.policy_settings(v), config.forecast.provisioning_quantile))
            for v in config.variants}
        self.generation = 0
        self.last_training: TrainingReport | None = None
        self._train_lock = threading.Lock()
        self._forecast_cache: dict[tuple[Any, ...],
                                   tuple[Forecast, tuple[float, float] | None]] = {}
        self.state_store = state_store
        #: Receives every decision record as it is made (the replay keeps them all; the
        #: in-memory log keeps the last DECISION_LOG_SIZE per variant).
        self.record_sink = record_sink
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        #: The last plan for variant groups (routing weights, unserved demand), if any.
        self.allocation: Allocation | None = None
        self._restore()
        for name, model in load_models(config.forecast.model_dir, list(self.variants),
                                       self.fingerprint).items():
            self.variants[name].model = model
            self.metrics.record_model(name, model.model_name)
            log.info("serving %s with persisted model %s", name, model.model_name)
        self.metrics.ready.set(1 if self.ready() else 0)

    def _child(self, metric: Any, *labels: str) -> Any:
        """A labelled child of a metric, looked up once: `labels()` takes a lock and builds
        its key on every call, which a replay makes millions of times."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------------ config reload
    def apply_config(self, new: Config) -> bool:
        """Take a new, already validated config; True when models must be retrained.

        The variant set and their Deployments are fixed for the life of the process (new
        edges need new clients): changing them raises `ConfigError`, and the old config stays.
        A change to what models depend on (the fingerprint) drops the models at once, so no
        forecast ever comes from a model trained under another config.
        """
        old = {(v.name, v.target) for v in self.config.variants}
        now = {(v.name, v.target) for v in new.variants}
        if old != now:
            raise ConfigError(f"variants or their deployments changed ({sorted(old ^ now)}): "
                              "restart forescale to apply; keeping the running config")
        self.config = new
        for rt in self.variants.values():
            rt.config = new.variant(rt.config.name)
            rt.capacity = None
            rt.policy.reconfigure(self.policy_settings(rt.config))
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
            self._child(self.metrics.reconcile_errors, "*", "state-load").inc()
            return
        for name, data in (saved.get("variants") or {}).items():
            rt = self.variants.get(name)
            if rt is None or not isinstance(data, dict):
                continue
            try:
                scaling = ScalingState(
                    current_replicas=int(data.get("current", 0)),
                    recommendations=tuple((float(t), int(r))
                                          for t, r in data.get("recommendations", [])),
                    scale_events=tuple((float(t), int(a), int(b))
                                       for t, a, b in data.get("scale_events", [])))
                quantile = float(data["quantile"]) if "quantile" in data else None
                cold_starts = [float(c) for c in data.get("cold_starts", [])]
                records = [DecisionRecord(**{**rec, "reasons": tuple(rec["reasons"])})
                           for rec in data.get("log", [])]
            except (TypeError, ValueError, KeyError) as exc:
                log.error("saved state of %s is malformed (%s): ignored", name, exc)
                continue
            rt.policy.restore(scaling, quantile, cold_starts)
            rt.log.extend(records)
            rt.last = rt.log[-1] if rt.log else None
        log.info("restored state of %d variant(s)", len(saved.get("variants") or {}))

    def snapshot(self) -> dict[str, Any]:
        """What `_restore` needs, as JSON-ready data."""
        out: dict[str, Any] = {}
        for name, rt in self.variants.items():
            if rt.scaling is None:
                continue
            out[name] = {
                "current": rt.scaling.current_replicas,
                "quantile": rt.policy.quantile,
                "cold_starts": list(rt.policy.cold_start.snapshot()),
                "recommendations": [list(r) for r in rt.scaling.recommendations],
                "scale_events": [list(e) for e in rt.scaling.scale_events],
                "log": [asdict(r) for r in list(rt.log)[-PERSISTED_LOG_SIZE:]],
            }
        return {"variants": out}

    def persist(self) -> None:
        """Save the state (stabilisation windows, quantiles, recent decisions) if leader; a
        failure is logged and counted, never raised (shutdown calls it too)."""
        if self.state_store is None or not self.is_leader():
            return
        try:
            self.state_store.save(self.snapshot())
        except (TemporaryError, PermanentError, OSError) as exc:
            log.error("cannot save state (%s): will retry next reconcile", exc)
            self._child(self.metrics.reconcile_errors, "*", "state-save").inc()

    # ------------------------------------------------------------------ training
    def horizon_steps(self, v: VariantConfig) -> int:
        """Steps to forecast: the configured horizon, at least one cold start (the longer of
        the configured and the measured one) plus a window."""
        step = self.config.prometheus.step_s
        rt = self.variants.get(v.name)
        cold = max(v.profile.cold_start_s, rt.policy.cold_start_s if rt is not None else 0.0)
        need = max(self.config.forecast.horizon_s,
                   cold + 2 * self.config.schedules.reconcile_interval_s + step)
        return max(1, math.ceil(need / step))

    def selection_due(self, name: str, now: float) -> str | None:
        """Why the variant's model must be selected again now, or None to keep it.

        Selecting (every candidate fitted and backtested) is the expensive part of training;
        between selections the model takes every new sample into its buffer and its error
        record at each forecast (`PointForecaster.update`), so an hourly retrain of a model
        selected an hour ago would redo the same work on one more hour of two weeks.
        """
        m = self.variants[name].model
        if m is None:
            return "no model yet"
        if m.fallback_reason is not None:
            return f"served by a fallback ({m.fallback_reason})"
        age = now - m.trained.trained_to
        if age >= self.config.schedules.reselect_interval_s:
            return f"selected {age / 3600:.1f} h ago"
        return None

    def retrain(self, names: Sequence[str] | None = None) -> TrainingReport:
        """Fit models for the variants (all by default; those named are always selected
        again, the scheduled pass only those `selection_due`); failures fall back, never
        raise."""
        if not self._train_lock.acquire(blocking=False):
            raise TemporaryError("a retrain is already running")
        try:
            step = self.config.prometheus.step_s
            # Train on the same step grid that forecasts are issued on (whole steps since
            # the epoch), so a model's data end lines up with the next forecast's origin.
            now = math.floor(self.clock() / step) * step
            start = now - self.config.prometheus.history_days * 86_400
            histories: dict[str, History] = {}
            due = list(names) if names else [n for n in self.variants
                                             if self.selection_due(n, now) is not None]
            for name in due:
                try:
                    h = self.source.history(name, start, now, step)
                except (TemporaryError, PermanentError) as exc:
                    log.warning("retrain %s: cannot read history: %s; keeping the last "
                                "model", name, exc)
                    self._child(self.metrics.training_failures, name).inc()
                    continue
                if h.n_valid() == 0:
                    log.warning("retrain %s: history has no samples at all; keeping the last "
                                "model", name)
                    self._child(self.metrics.training_failures, name).inc()
                    continue
                histories[name] = h
                self.variants[name].history_gaps = gap_count(h.values)
            if not histories:
                return TrainingReport({}, {}, 0.0)  # nothing due: the models stand
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
                self._child(self.metrics.training_failures, name).inc()
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
        return self._forecast(name, horizon, quantiles, now)[0]

    def _forecast(self, name: str, horizon: int | None = None,
                  quantiles: Sequence[float] | None = None, now: float | None = None
                  ) -> tuple[Forecast, tuple[float, float] | None]:
        """The forecast and (start, load) of the newest completed window it was issued from."""
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
        last = float(tail.values[-1]) if len(tail.values) else math.nan
        observed = (issued - step, last) if math.isfinite(last) else None
        if len(self._forecast_cache) > 1024:
            self._forecast_cache.clear()
        self._forecast_cache[key] = (fc, observed)
        return fc, observed

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> list[DecisionRecord]:
        t0 = time.perf_counter()
        records = [self._reconcile_safely(name) for name in self.variants]
        self._plan_groups()
        self.persist()
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
            self._child(self.metrics.reconcile_errors, "*", "group-plan").inc()

    def _quota(self, name: str, current: int) -> tuple[int | None, str]:
        """The most replicas the variant's GPU-type quota allows, counting what the other
        variants of that type were last given, and never below `current` (the quota never
        scales a variant down); None without a quota."""
        prof = self.variants[name].config.profile
        quota = self.config.gpu_quotas.get(prof.gpu_type)
        if quota is None:
            return None, ""
        used = sum(self._replicas_now(n) * rt.config.profile.gpus_per_replica
                   for n, rt in self.variants.items()
                   if n != name and rt.config.profile.gpu_type == prof.gpu_type)
        allowed = max(current, (quota - used) // prof.gpus_per_replica)
        return allowed, f"{prof.gpu_type} quota {quota} GPUs, {used} used by other variants"

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

    def policy_settings(self, v: VariantConfig) -> PolicySettings:
        """The variant's decision settings, derived from its config and profile."""
        b = v.behaviour
        cap = capacity_at_slo(v.profile, v.slo)
        interval = self.config.schedules.reconcile_interval_s
        scaling = ScalingPolicy(
            min_replicas=v.min_replicas, max_replicas=v.max_replicas,
            provisioning_quantile=self.config.forecast.provisioning_quantile,
            target_utilisation=b.target_utilisation, tolerance=b.tolerance,
            behaviour=b.rules(break_even_hold_s(v.profile.cold_start_s,
                                                self.config.prometheus.step_s)),
            # Provision for the peak until the next decision can act: a longer window buys
            # replicas a later decision would order in time anyway.
            forecast_window_s=interval)
        rps = cap.rps if cap.feasible and cap.rps > 0 else 1.0
        return PolicySettings(
            scaling=scaling, capacity_rps=rps, cold_start_s=v.profile.cold_start_s,
            reactive=ReactiveTargets(
                capacity_rps=rps, target_utilisation=b.target_utilisation,
                queue_per_replica=v.targets.queue_per_replica,
                kv_cache_usage=v.targets.kv_cache_usage, ttft_slo_s=v.slo.ttft_p95_s),
            attainment_target=v.slo.attainment_target,
            ttft_slack_s=v.slo.ttft_p95_s - v.profile.base_ttft_s, interval_s=interval,
            gpus_per_replica=v.profile.gpus_per_replica,
            gpu_hourly_usd=v.profile.gpu_hourly_usd,
            step_s=self.config.prometheus.step_s,
            hold_follows_cold_start=b.scale_down is None
            or b.scale_down.stabilization_window_seconds is None)

    def _live(self, name: str, now: float) -> LiveSignals | None:
        try:
            live = self.source.live(name, now)
        except (TemporaryError, PermanentError) as exc:
            log.warning("reconcile %s: live signals unavailable: %s", name, exc)
            self._child(self.metrics.reconcile_errors, name, "live-signals").inc()
            return None
        if live.request_rate is not None:
            self._child(self.metrics.actual, name).set(live.request_rate)
        return live

    def _forecast_for(self, name: str, rt: VariantRuntime, now: float
                      ) -> tuple[Forecast | None, tuple[float, float] | None, str]:
        """The forecast the policy steps on, or None with the reason it is unusable."""
        if rt.model is None:
            return None, None, "warming up: no model yet"
        try:
            fc, observed = self._forecast(name, now=now)
        except (TemporaryError, PermanentError) as exc:
            self._child(self.metrics.reconcile_errors, name, "forecast").inc()
            return None, None, f"forecast unavailable: {exc}"
        fresh = fc is not rt.policy.last_forecast
        if not rt.policy.usable(fc):
            self._child(self.metrics.reconcile_errors, name, "forecast-nan").inc()
        elif fresh:
            for q in self.config.forecast.quantiles:
                self._child(self.metrics.forecast, name, str(q)).set(float(fc.at(q)[0]))
        return fc, observed, f"model {fc.model}"

    def capacity(self, rt: VariantRuntime) -> CapacityEstimate:
        """Per-replica capacity at the variant's SLO (curve, queueing model or stated)."""
        if rt.capacity is None:
            rt.capacity = capacity_at_slo(rt.config.profile, rt.config.slo)
        return rt.capacity

    def reconcile_variant(self, name: str) -> DecisionRecord:
        """Read -> step the variant's policy -> actuate -> record."""
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
        fc, observed, why = self._forecast_for(name, rt, now)
        quota, quota_why = self._quota(name, current)
        misses = rt.policy.accuracy.misses
        decision, source = rt.policy.step(now, current, live, fc, observed, why,
                                          quota=quota, quota_why=quota_why)
        if rt.policy.accuracy.misses > misses:
            self._child(self.metrics.forecast_miss, name).inc()
        if decision.reactive is not None and (decision.predictive is None
                                              or decision.reactive > decision.predictive):
            self._child(self.metrics.reactive_override, name).inc()
        outcome, message = self._actuate(name, target, decision, mode)
        rt.policy.commit(decision, now, applied=outcome not in ("failed", "follower"))
        self._export(name, v, decision, current)
        return self._record(rt, now, outcome, mode, current, decision.replicas,
                            decision.predictive, decision.reactive, decision.reactive_why,
                            decision.demand,
                            tuple({"code": str(r.code), "message": r.message, "from": r.before,
                                   "to": r.after} for r in decision.reasons),
                            f"{source}; {message}", live,
                            kind="actuate" if outcome == "failed" else None)

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

    def _export(self, name: str, v: VariantConfig, d: Decision, current: int) -> None:
        m = self.metrics
        self._child(m.desired, name).set(d.replicas)
        self._child(m.current, name).set(current)
        if d.predictive is not None:
            self._child(m.predictive, name).set(d.predictive)
        if d.reactive is not None:
            self._child(m.reactive, name).set(d.reactive)
        rt = self.variants[name]
        self._child(m.forecast_error, name).set(rt.policy.accuracy.error_ratio)
        self._child(m.fallback_active, name).set(int(rt.policy.fallback_active))
        self._child(m.provisioning_quantile, name).set(rt.policy.quantile)
        self._child(m.cold_start, name).set(rt.policy.cold_start_s)
        m.record_reasons(name, d.reason_codes())
        self._child(m.cost_per_hour, name).set(d.cost_per_hour)
        self._child(m.gpus, name, v.profile.gpu_type).set(d.replicas * v.profile.gpus_per_replica)
        self._child(m.unserved, name).set(d.unserved_rps)

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
        if self.record_sink is not None:
            self.record_sink(rec)
        self._child(self.metrics.decisions, rt.config.name, outcome).inc()
        if kind is not None:
            self._child(self.metrics.reconcile_errors, rt.config.name, kind).inc()
        level = logging.WARNING if outcome == "failed" else logging.INFO
        log.log(level, "decision %s: %s current=%s desired=%s reasons=%s (%s)", rt.config.name,
                outcome, current, desired, ",".join(r["code"] for r in reasons) or "-", message)
        return rec
