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

from controller.config import Config, ConfigError, VariantConfig, VariantGroup
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
    global_model_inputs,
    load_models,
    model_inputs,
    train_models,
    variant_fingerprint,
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

#: The origin of variants listed in the config file.
CONFIG_ORIGIN = "config"

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
    #: Who declared the variant: "config" (the file) or "VariantAutoscaler <ns>/<name>".
    origin: str = CONFIG_ORIGIN
    #: Bumped whenever the model is dropped (a config change affecting it), so a retrain
    #: that read its history before the change never installs a model of the old config.
    model_epoch: int = 0
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
    """Holds the per-variant runtime and runs retrain and reconcile passes.

    The variant set can change while it runs (`add_variant`, `update_variant`,
    `remove_variant`: VariantAutoscaler objects, a reloaded config file). `variants` is
    replaced, never mutated, so API threads iterating it never see it change size; writers
    and each variant's reconcile hold `_variants_lock`, so a variant removed is never scaled
    after `remove_variant` returns.
    """

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
        #: Hash of the settings every model depends on; each model is stored under its
        #: variant's own fingerprint (`fingerprint_of`).
        self.fingerprint = config_fingerprint(config)
        self._variants_lock = threading.RLock()
        self.variants: dict[str, VariantRuntime] = {
            v.name: self._runtime(v, CONFIG_ORIGIN) for v in config.variants}
        #: Builds the actuator of a variant added at runtime (set by the wiring; without it
        #: the variant set is fixed, as in the demo and the replay).
        self.target_factory: Callable[[VariantConfig], ScaleTarget] | None = None
        #: Called with (name, config) when a variant is added or changed and (name, None)
        #: when it is removed, so edges that know variants by name (the metrics source)
        #: follow the set.
        self.variant_listeners: list[Callable[[str, VariantConfig | None], None]] = []
        #: Called once after every reconcile pass with its records (the VariantAutoscaler
        #: status writer).
        self.reconcile_listeners: list[Callable[[list[DecisionRecord]], None]] = []
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
        #: Groups declared while running (VariantGroup objects): name -> (group, origin).
        self._runtime_groups: dict[str, tuple[VariantGroup, str]] = {}
        self._restore()
        for name, model in load_models(config.forecast.model_dir, {
                n: self.fingerprint_of(rt.config) for n, rt in self.variants.items()}).items():
            self._install_persisted(self.variants[name], model)
        #: The variants readiness waits for: those the process started with. A variant added
        #: later (a new VariantAutoscaler, a reloaded file) warms up on its own, reported by
        #: `warming_up`, /variants and its object's status, never by taking this process out
        #: of its Service.
        self._startup_variants = frozenset(self.variants)
        self._ready = False
        self._export_ready()

    def _child(self, metric: Any, *labels: str) -> Any:
        """A labelled child of a metric, looked up once: `labels()` takes a lock and builds
        its key on every call, which a replay makes millions of times."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------------ variant set
    def fingerprint_of(self, v: VariantConfig) -> str:
        """What the variant's model is stored and reloaded under (`variant_fingerprint`)."""
        return variant_fingerprint(self.config, v)

    def _load_persisted(self, rt: VariantRuntime) -> bool:
        """Serve the variant with the model an earlier process stored for its current inputs,
        if there is one; True if installed (it need not be trained now)."""
        found = load_models(self.config.forecast.model_dir,
                            {rt.config.name: self.fingerprint_of(rt.config)})
        model = found.get(rt.config.name)
        if model is None:
            return False
        self._install_persisted(rt, model)
        return True

    def _install_persisted(self, rt: VariantRuntime, model: ServedModel) -> None:
        rt.model = model
        self.metrics.record_model(rt.config.name, model.model_name)
        log.info("serving %s with persisted model %s", rt.config.name, model.model_name)

    def _runtime(self, v: VariantConfig, origin: str) -> VariantRuntime:
        return VariantRuntime(v, VariantPolicy(
            self.policy_settings(v),
            v.provisioning_quantile or self.config.forecast.provisioning_quantile),
            origin=origin)

    def _make_target(self, v: VariantConfig) -> ScaleTarget:
        if self.target_factory is None:
            raise ConfigError(f"variant {v.name!r}: this service cannot add or re-target "
                              "variants while it runs: restart forescale to apply; keeping "
                              "the running config")
        return self.target_factory(v)

    def add_variant(self, v: VariantConfig, origin: str = CONFIG_ORIGIN,
                    target: ScaleTarget | None = None) -> bool:
        """Start managing `v`, served at once by the model an earlier process stored for the
        same inputs (`fingerprint_of`) if `forecast.model_dir` has one; True when it has no
        model and must be trained (by the next `retrain` naming it or the next scheduled
        pass). A name already managed is refused naming who declared it."""
        with self._variants_lock:
            held = self.variants.get(v.name)
            if held is not None:
                raise ConfigError(f"variant {v.name!r} is already defined by {held.origin}; "
                                  f"refusing the one from {origin} (rename one of them)")
            self.targets[v.name] = target if target is not None else self._make_target(v)
            rt = self._runtime(v, origin)
            loaded = self._load_persisted(rt)
            self.variants = {**self.variants, v.name: rt}
            self._notify(v.name, v)
        log.info("variant %s added (%s)%s", v.name, origin,
                 "; served by its persisted model" if loaded else "")
        return not loaded

    def update_variant(self, v: VariantConfig, origin: str = CONFIG_ORIGIN) -> bool:
        """Apply a changed spec without a restart; True when its model was dropped and must be
        retrained (`model_inputs` changed and no model is stored for the new ones). Limits,
        behaviour, SLO and mode only reconfigure the policy, whose state (stabilisation
        windows, tuned quantile) carries over."""
        with self._variants_lock:
            rt = self.variants.get(v.name)
            if rt is None or rt.origin != origin:
                raise ConfigError(f"variant {v.name!r} is not managed for {origin}"
                                  + (f" (it is defined by {rt.origin})" if rt else ""))
            old = rt.config
            if v == old:
                return False
            if v.target != old.target or self.config.mode_of(v) != self.config.mode_of(old):
                self.targets[v.name] = self._make_target(v)
            rt.config = v
            rt.capacity = None
            rt.policy.reconfigure(self.policy_settings(v))
            self._notify(v.name, v)
            retrain = model_inputs(v) != model_inputs(old)
            if retrain:
                self._drop_model(rt)
                retrain = not self._load_persisted(rt)  # e.g. an edit undone
        log.info("variant %s updated (%s)%s", v.name, origin,
                 "; its model is retrained" if retrain else "")
        return retrain

    def remove_variant(self, name: str, origin: str = CONFIG_ORIGIN) -> bool:
        """Stop managing `name`: no reconcile touches it once this returns (a running one is
        waited for, never cut), its actuator, cached forecasts and metric series are
        forgotten. Its workload keeps the replicas it has. False if it was not managed for
        `origin`."""
        with self._variants_lock:
            rt = self.variants.get(name)
            if rt is None or rt.origin != origin:
                return False
            self.variants = {n: r for n, r in self.variants.items() if n != name}
            self.targets.pop(name, None)
            for key in [k for k in self._forecast_cache if k[0] == name]:
                self._forecast_cache.pop(key, None)
            self._forget_metrics(name)
            self._notify(name, None)
        self._export_ready()
        log.info("variant %s removed (%s); its workload keeps its replicas", name, origin)
        return True

    # ------------------------------------------------------------------ groups
    @property
    def groups(self) -> list[VariantGroup]:
        """Every group planned: the file's, then those declared while running."""
        return [*self.config.groups, *(g for g, _ in self._runtime_groups.values())]

    def group_of(self, name: str) -> VariantGroup | None:
        """The group the variant belongs to, if any (a variant is in at most one)."""
        return next((g for g in self.groups if name in g.variants), None)

    def set_group(self, g: VariantGroup, origin: str) -> None:
        """Plan `g` from the next reconcile on, replacing the group of that name `origin`
        declared before (its members, quality floor and quotas), without a restart. Refused
        (`ConfigError`, keeping what runs) when the name is the file's or another origin's,
        a member is not a managed variant, or a member is already in another group."""
        with self._variants_lock:
            if any(f.name == g.name for f in self.config.groups):
                raise ConfigError(f"group {g.name!r} is already defined by config; refusing "
                                  f"the one from {origin} (rename one of them)")
            held = self._runtime_groups.get(g.name)
            if held is not None and held[1] != origin:
                raise ConfigError(f"group {g.name!r} is already defined by {held[1]}; "
                                  f"refusing the one from {origin} (rename one of them)")
            unknown = [n for n in g.variants if n not in self.variants]
            if unknown:
                raise ConfigError(f"group {g.name!r}: members {unknown} are not managed "
                                  "variants")
            for n in g.variants:
                other = self.group_of(n)
                if other is not None and other.name != g.name:
                    raise ConfigError(f"group {g.name!r}: variant {n!r} is already in group "
                                      f"{other.name!r}")
            changed = held is None or held[0] != g
            self._runtime_groups = {**self._runtime_groups, g.name: (g, origin)}
        if changed:
            log.info("group %s set (%s): %s", g.name, origin, ", ".join(g.variants))

    def remove_group(self, name: str, origin: str) -> bool:
        """Stop planning the group `origin` declared: its members are planned independently
        from the next reconcile. False if `origin` declares no such group."""
        with self._variants_lock:
            held = self._runtime_groups.get(name)
            if held is None or held[1] != origin:
                return False
            self._runtime_groups = {n: e for n, e in self._runtime_groups.items()
                                    if n != name}
        log.info("group %s removed (%s); its members are planned independently", name, origin)
        return True

    def _drop_model(self, rt: VariantRuntime) -> None:
        rt.model = None
        rt.model_epoch += 1
        name = rt.config.name
        for key in [k for k in self._forecast_cache if k[0] == name]:
            self._forecast_cache.pop(key, None)

    def _notify(self, name: str, v: VariantConfig | None) -> None:
        for listener in self.variant_listeners:
            listener(name, v)

    def _forget_metrics(self, name: str) -> None:
        """Remove every series labelled with the variant, and the cached children."""
        self._children = {k: c for k, c in self._children.items() if name not in k[1]}
        for metric in vars(self.metrics).values():
            labelnames = getattr(metric, "_labelnames", ())
            if "variant" not in labelnames:
                continue
            at = labelnames.index("variant")
            for labels in list(getattr(metric, "_metrics", {})):
                if labels[at] == name:
                    metric.remove(*labels)

    # ------------------------------------------------------------------ config reload
    def apply_config(self, new: Config) -> bool:
        """Take a new, already validated config; True when models must be retrained.

        Variants added to or removed from the file are added and removed (`target_factory`
        builds their actuators; without one the set is fixed and a change raises
        `ConfigError`, keeping the running config); a variant whose name a VariantAutoscaler
        holds is refused the same way. A change to what every model depends on (step,
        history, quantiles) drops all models; a change to one variant's `model_inputs` drops
        that variant's, so no forecast ever comes from a model trained under another config.
        """
        with self._variants_lock:
            self._check_reload(new)
            old_names = {v.name for v in self.config.variants}
            new_names = {v.name for v in new.variants}
            everything = global_model_inputs(new) != global_model_inputs(self.config)
            old_config, self.config = self.config, new
            for name in old_names - new_names:
                self.remove_variant(name)
            retrain = everything
            for rt in self.variants.values():
                if rt.origin != CONFIG_ORIGIN:
                    rt.capacity = None  # a global setting may have changed
                    rt.policy.reconfigure(self.policy_settings(rt.config))
                elif rt.config.name in new_names:
                    retrain |= self._reload_variant(rt, new.variant(rt.config.name),
                                                    old_config)
            for v in new.variants:
                if v.name not in old_names:
                    retrain |= self.add_variant(v)
            self.fingerprint = config_fingerprint(new)
            if everything:
                for rt in self.variants.values():
                    self._drop_model(rt)
                    self._load_persisted(rt)  # stored under these settings before, if ever
        return retrain

    def _check_reload(self, new: Config) -> None:
        """Refuse (`ConfigError`) a reload that names a variant another origin holds, or
        changes the variant set or targets when no `target_factory` can build actuators."""
        old_names = {v.name for v in self.config.variants}
        new_names = {v.name for v in new.variants}
        held = {n: self.variants[n].origin for n in new_names - old_names
                if n in self.variants}
        held.update({g.name: self._runtime_groups[g.name][1] for g in new.groups
                     if g.name in self._runtime_groups})
        if held:
            raise ConfigError("variants or groups already defined elsewhere: " + ", ".join(
                f"{n!r} by {o}" for n, o in sorted(held.items()))
                + "; keeping the running config")
        changed = [v.name for v in new.variants if v.name in old_names and (
            v.target != self.config.variant(v.name).target
            or new.mode_of(v) != self.config.mode_of(self.config.variant(v.name)))]
        if (new_names != old_names or changed) and self.target_factory is None:
            raise ConfigError(
                f"variants or their targets changed ({sorted(old_names ^ new_names)}"
                f"{', ' + ', '.join(changed) if changed else ''}): "
                "restart forescale to apply; keeping the running config")

    def _reload_variant(self, rt: VariantRuntime, v: VariantConfig, old: Config) -> bool:
        """A file variant's new config; True if its model was dropped."""
        if v.target != rt.config.target or self.config.mode_of(v) != old.mode_of(rt.config):
            self.targets[v.name] = self._make_target(v)
        dropped = model_inputs(v) != model_inputs(rt.config)
        if dropped:
            self._drop_model(rt)
        rt.config = v
        rt.capacity = None
        rt.policy.reconfigure(self.policy_settings(v))
        self._notify(v.name, v)
        return dropped and not self._load_persisted(rt)

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
                cap = data.get("capacity")
                capacity = None if cap is None else (float(cap[0]), float(cap[1]),
                                                     int(cap[2]))
                records = [DecisionRecord(**{**rec, "reasons": tuple(rec["reasons"])})
                           for rec in data.get("log", [])]
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                log.error("saved state of %s is malformed (%s): ignored", name, exc)
                continue
            rt.policy.restore(scaling, quantile, cold_starts, capacity)
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
                "capacity": list(rt.policy.capacity_snapshot()),
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
            variants = self.variants
            due = [n for n in names if n in variants] if names else [
                n for n in variants if self.selection_due(n, now) is not None]
            epochs = {n: variants[n].model_epoch for n in due}
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
                variants[name].history_gaps = gap_count(h.values)
            if not histories:
                return TrainingReport({}, {}, 0.0)  # nothing due: the models stand
            t0 = time.perf_counter()
            report = train_models(histories, {n: self.horizon_steps(variants[n].config)
                                              for n in histories},
                                  self.config.forecast,
                                  {n: self.fingerprint_of(variants[n].config)
                                   for n in histories},
                                  budget_s=self.config.schedules.retrain_budget_s,
                                  previous={n: m for n in histories
                                            if (m := variants[n].model) is not None})
            self.metrics.training_duration.observe(time.perf_counter() - t0)
            with self._variants_lock:
                for name, model in report.models.items():
                    rt = self.variants.get(name)
                    if rt is None or rt.model_epoch != epochs[name]:
                        log.info("retrain %s: its config changed (or it was removed) while "
                                 "training; the model is discarded", name)
                        continue
                    rt.model = model
                    self.metrics.record_model(name, model.model_name)
            for name in report.failed:
                if name in self.variants:
                    self._child(self.metrics.training_failures, name).inc()
            self.generation += 1
            self._forecast_cache.clear()
            self.last_training = report
            self._export_ready()
            return report
        finally:
            self._train_lock.release()

    def ready(self) -> bool:
        """Whether this process can do its job: every variant it started with has a model (or
        a fallback). Once true it stays true: a variant added later, or whose model a spec
        change dropped, warms up on its own (`warming_up`) while the others are served, so
        adding one VariantAutoscaler never takes every replica's API out of its Service at
        once. Variants removed since start-up are not waited for; a process that started
        with none (all its variants are VariantAutoscalers) is ready at once."""
        if not self._ready:
            variants = self.variants
            self._ready = all(variants[n].model is not None
                              for n in self._startup_variants if n in variants)
        return self._ready

    def warming_up(self) -> dict[str, str]:
        """Variants without a model yet, and why: what readiness does not wait for (or, before
        the process is ready, what it waits for)."""
        return {n: ("no model yet" if n in self._startup_variants
                    else f"no model yet (added while running, by {rt.origin}): decided "
                    "reactively until its first training ends")
                for n, rt in self.variants.items() if rt.model is None}

    def _export_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready() else 0)

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
        records = []
        for name in list(self.variants):
            with self._variants_lock:  # a variant removed meanwhile is skipped, never scaled
                if name in self.variants:
                    records.append(self._reconcile_safely(name))
        self._plan_groups()
        for listener in self.reconcile_listeners:  # after the plan: they report it too
            try:
                listener(records)
            except Exception:  # reporting must never stop reconciling
                log.exception("after-reconcile listener failed")
        self.persist()
        self.metrics.reconcile_duration.observe(time.perf_counter() - t0)
        self.metrics.is_leader.set(1 if self.is_leader() else 0)
        return records

    def _plan_groups(self) -> None:
        """Routing weights and unserved demand for substitutable variants, at least cost
        under the GPU quotas (MILP, greedy fallback). Advisory: each variant's replicas still
        come from its own decision pipeline; the router applies the weights.

        Groups without quotas of their own are planned together under the global quotas;
        each group with its own is planned after them, within its quotas and what the global
        ones have left. A member no longer managed is left out (a group left with fewer than
        two is not planned until its declaration catches up)."""
        variants = self.variants
        planned: list[tuple[VariantGroup, GroupDemand]] = []
        for g in self.groups:
            members = [n for n in g.variants if n in variants]
            if len(members) < 2:
                continue
            options, demand = [], 0.0
            for n in members:
                rt = variants[n]
                d = rt.last_decision
                if d is not None and math.isfinite(d.demand):
                    demand += d.demand
                options.append(VariantOption.from_profile(
                    n, rt.config.profile, self.capacity(rt).rps, rt.config.min_replicas,
                    rt.config.max_replicas))
            planned.append((g, GroupDemand(g.name, demand, tuple(options), g.quality_floor)))
        if not planned:
            self.allocation = None
            return
        left = dict(self.config.gpu_quotas)
        batches = [([d for g, d in planned if not g.gpu_quotas], dict(left))]
        batches += [([d], dict(g.gpu_quotas)) for g, d in planned if g.gpu_quotas]
        parts = []
        try:
            for demands, own in batches:
                if not demands:
                    continue
                quotas = {**own, **{t: min(q, own.get(t, q)) for t, q in left.items()}}
                part = optimise(demands, quotas or None, time_limit_s=2.0)
                for t, used in part.gpus_used.items():
                    if t in left:
                        left[t] = max(0, left[t] - used)
                parts.append(part)
        except Exception as exc:  # a planning bug must not stop reconciling
            log.exception("group planning failed: %s", exc)
            self._child(self.metrics.reconcile_errors, "*", "group-plan").inc()
            return
        self.allocation = parts[0] if len(parts) == 1 else _merged(parts)

    def _quota(self, name: str, current: int) -> tuple[int | None, str]:
        """The most replicas the variant's GPU-type quotas allow (the global one, and its
        group's own), counting what the other variants under each were last given, and never
        below `current` (a quota never scales a variant down); None without a quota. The
        reason names the quota that binds."""
        prof = self.variants[name].config.profile
        t, per = prof.gpu_type, prof.gpus_per_replica
        limits: list[tuple[int, str]] = []
        quota = self.config.gpu_quotas.get(t)
        if quota is not None:
            used = sum(self._replicas_now(n) * rt.config.profile.gpus_per_replica
                       for n, rt in self.variants.items()
                       if n != name and rt.config.profile.gpu_type == t)
            limits.append((max(current, (quota - used) // per),
                           f"{t} quota {quota} GPUs, {used} used by other variants"))
        group = self.group_of(name)
        own = group.gpu_quotas.get(t) if group is not None else None
        if group is not None and own is not None:
            used = sum(self._replicas_now(n) * self.variants[n].config.profile.gpus_per_replica
                       for n in group.variants if n != name and n in self.variants
                       and self.variants[n].config.profile.gpu_type == t)
            limits.append((max(current, (own - used) // per),
                           f"group {group.name}'s {t} quota {own} GPUs, {used} used by its "
                           "other members"))
        if not limits:
            return None, ""
        return min(limits, key=lambda lim: lim[0])

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
            step_s=self.config.prometheus.step_s, correct_capacity=v.profile.correct_online,
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


def _merged(parts: Sequence[Allocation]) -> Allocation:
    """One plan of several solved apart (groups with quotas of their own): their groups and
    variants are disjoint; GPUs used and cost add up."""
    gpus: dict[str, int] = {}
    for p in parts:
        for t, n in p.gpus_used.items():
            gpus[t] = gpus.get(t, 0) + n
    return Allocation(
        replicas={k: v for p in parts for k, v in p.replicas.items()},
        routing={k: v for p in parts for k, v in p.routing.items()},
        served_rps={k: v for p in parts for k, v in p.served_rps.items()},
        degraded_rps={k: v for p in parts for k, v in p.degraded_rps.items()},
        unserved_rps={k: v for p in parts for k, v in p.unserved_rps.items()},
        gpus_used=gpus, cost_per_hour=sum(p.cost_per_hour for p in parts),
        solver="+".join(sorted({p.solver for p in parts})),
        optimal=all(p.optimal for p in parts),
        reasons=tuple(r for p in parts for r in p.reasons))
