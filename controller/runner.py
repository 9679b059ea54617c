"""Wiring: build a service from a config, schedule its jobs, serve its API.

APScheduler runs retrain and reconcile as separate jobs on a two-thread pool, each with
`max_instances=1` (no overlapping runs), `coalesce` and jitter, so a slow retrain never delays
reconciling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from controller.actuators import DryRunTarget, MetricTarget
from controller.api import create_app, load_token
from controller.config import ActuationMode, Config, ConfigError, load_config
from controller.metrics import ForescaleMetrics
from controller.protocols import MetricsSource, ScaleTarget
from controller.service import Service
from controller.sources import TraceClock, TraceSource
from controller.state import ConfigMapStateStore, FileStateStore, StateStore

log = logging.getLogger("forescale")

DEMO_TRACE = "servegen_per_10min.csv.gz"
DEMO_ATTRIBUTION = "trace: Alibaba ServeGen (Apache-2.0)"
#: The demo starts this far into the trace, so ten days of history train the first models.
DEMO_ANCHOR_DAYS = 11.0


def data_path(name: str) -> Path:
    return Path(str(resources.files("controller").joinpath("data", name)))


@dataclass
class Runtime:
    service: Service
    scheduler: BackgroundScheduler
    server: uvicorn.Server | None = None
    stop_hooks: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for hook in self.stop_hooks:
            hook()


def _guarded(name: str, fn: Callable[[], Any], budget_s: float) -> Callable[[], None]:
    """A job body that logs (never propagates) errors and reports overruns of its budget."""

    def run() -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # a job must never kill the scheduler thread
            log.exception("%s failed", name)
        elapsed = time.perf_counter() - t0
        if elapsed > budget_s:
            log.warning("%s took %.1fs, over its budget of %.1fs", name, elapsed, budget_s)

    return run


def schedule(service: Service, clock_speed: float = 1.0,
             config_path: Path | None = None) -> BackgroundScheduler:
    """Retrain now and then every interval; reconcile every interval (in wall time)."""
    s = service.config.schedules
    sched = BackgroundScheduler(executors={"default": ThreadPoolExecutor(2)},
                                job_defaults={"coalesce": True, "max_instances": 1,
                                              "misfire_grace_time": None})
    retrain_every = max(1.0, s.retrain_interval_s / clock_speed)
    sched.add_job(_guarded("retrain", service.retrain, s.retrain_budget_s), "interval",
                  seconds=retrain_every, jitter=min(s.jitter_s, retrain_every / 10),
                  id="retrain", next_run_time=_now_dt())
    sched.add_job(_guarded("reconcile", service.reconcile, s.reconcile_budget_s), "interval",
                  seconds=s.reconcile_interval_s, jitter=min(s.jitter_s,
                                                             s.reconcile_interval_s / 4),
                  id="reconcile")
    if config_path is not None:
        watcher = ConfigWatcher(service, config_path)
        sched.add_job(_guarded("config-reload", watcher.check, 60.0), "interval", seconds=10,
                      id="config-reload")
    return sched


class ConfigWatcher:
    """Reloads the config file when it changes; an invalid file keeps the running config."""

    def __init__(self, service: Service, path: Path) -> None:
        self.service = service
        self.path = path
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def check(self) -> str | None:
        """Reload if the file changed; returns the outcome, or None when unchanged."""
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return None
        self._mtime = mtime
        counter = self.service.metrics.config_reloads
        try:
            new = load_config(self.path)
            retrain = self.service.apply_config(new)
        except ConfigError as exc:
            outcome = "refused" if "restart forescale" in str(exc) else "invalid"
            log.error("config reload %s: %s", outcome, exc)
            counter.labels(outcome).inc()
            return outcome
        outcome = "retrain" if retrain else "applied"
        log.warning("config reloaded from %s (%s)", self.path, outcome)
        counter.labels(outcome).inc()
        if retrain:
            self.service.retrain()
        return outcome


def _now_dt() -> Any:
    from datetime import datetime

    return datetime.now().astimezone()


def build_demo(speed: float = 1.0, metrics: ForescaleMetrics | None = None) -> Service:
    """The embedded default: bundled trace as the source, dry-run actuator, trace clock."""
    config = load_config(data_path("demo.yaml"))
    source = TraceSource(data_path(DEMO_TRACE), [v.name for v in config.variants])
    start, _ = source.span(config.variants[0].name)
    clock = TraceClock(anchor=start + DEMO_ANCHOR_DAYS * 86_400, speed=speed)
    initial = {v.name: max(v.min_replicas, 1) for v in config.variants}
    dry = DryRunTarget(initial)
    service = Service(config, source, {v.name: dry for v in config.variants}, clock=clock,
                      metrics=metrics)
    service.attribution = DEMO_ATTRIBUTION
    return service


def prometheus_source(config: Config, metrics: ForescaleMetrics) -> Any:
    """The Prometheus source with every outcome (ok, empty, nan, stale, ...) counted."""
    from controller.prometheus import PrometheusSource

    def count(variant: str, signal: str, outcome: str) -> None:
        metrics.source_outcomes.labels(variant, signal, outcome).inc()

    return PrometheusSource(config.prometheus, config.variants, on_outcome=count)


def build_production(config: Config, metrics: ForescaleMetrics | None = None,
                     config_path: Path | None = None) -> Runtime:
    """Prometheus source, per-variant actuators by mode, optional leader election."""
    metrics = metrics or ForescaleMetrics()
    source: MetricsSource = prometheus_source(config, metrics)
    targets: dict[str, ScaleTarget] = {}
    hooks: list[Callable[[], None]] = []
    kube: Any = None
    modes = {v.name: config.mode_of(v) for v in config.variants}
    if ActuationMode.SCALE in modes.values() or config.leader_election.enabled \
            or config.state.backend == "configmap":
        from controller.k8s import KubernetesScaleTarget, make_api_client

        api_client = make_api_client(None, None)
        kube = KubernetesScaleTarget(api_client, {
            v.name: (v.deployment.namespace, v.deployment.name) for v in config.variants})
    dry = DryRunTarget({v.name: max(v.min_replicas, 1) for v in config.variants})
    for v in config.variants:
        mode = modes[v.name]
        if mode is ActuationMode.SCALE:
            targets[v.name] = kube
        elif mode is ActuationMode.METRIC:
            targets[v.name] = MetricTarget(metrics, current=kube,
                                           initial={v.name: max(v.min_replicas, 1)})
        else:
            targets[v.name] = kube if kube is not None else dry
            if kube is not None:
                targets[v.name] = _ReadOnly(kube, dry)
    is_leader: Callable[[], bool] = lambda: True  # noqa: E731
    if config.leader_election.enabled:
        from controller.leader import LeaderElector

        le = config.leader_election
        elector = LeaderElector(kube.api_client, le.lease_namespace, le.lease_name,
                                identity=_identity(), lease_duration=le.lease_duration_s,
                                renew_deadline=le.renew_deadline_s,
                                retry_period=le.retry_period_s)
        elector.start()
        hooks.append(elector.stop)
        is_leader = lambda: elector.is_leader  # noqa: E731
    store = _state_store(config, kube.api_client if kube is not None else None)
    service = Service(config, source, targets, metrics=metrics, is_leader=is_leader,
                      state_store=store)
    return Runtime(service, schedule(service, config_path=config_path), stop_hooks=hooks)


def _state_store(config: Config, api_client: Any) -> StateStore | None:
    """The state store the config asks for (see `StateConfig`)."""
    st = config.state
    backend = st.backend
    if backend == "auto":
        backend = "configmap" if api_client is not None else ("file" if st.file else "none")
    if backend == "configmap":
        from controller.k8s import make_api_client

        return ConfigMapStateStore(api_client or make_api_client(None, None),
                                   st.configmap_namespace, st.configmap_name)
    if backend == "file" and st.file is not None:
        return FileStateStore(st.file)
    return None


class _ReadOnly:
    """Dry-run against a real cluster: reads real replicas, records, changes nothing."""

    def __init__(self, reader: ScaleTarget, dry: DryRunTarget) -> None:
        self.reader = reader
        self.dry = dry

    def current_replicas(self, variant: str) -> int:
        return self.reader.current_replicas(variant)

    def apply(self, variant: str, replicas: int, reasons: Any) -> Any:
        self.dry.replicas[variant] = self.reader.current_replicas(variant)
        return self.dry.apply(variant, replicas, reasons)


def _identity() -> str:
    import os
    import socket

    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def serve_http(service: Service, host: str, port: int, token: str | None,
               on_started: Callable[[], None] | None = None) -> None:
    """Serve the API in the foreground until interrupted."""
    app = create_app(service, token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_started is not None:
        def announce() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                on_started()
        threading.Thread(target=announce, daemon=True).start()
    server.run()


def token_for(config: Config) -> str | None:
    return load_token(config.api.token_env, config.api.token_file)


__all__ = ["Runtime", "build_demo", "build_production", "schedule", "serve_http"]
