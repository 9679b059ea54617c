"""Wiring: build a service from a config, schedule its jobs, serve its API.

APScheduler runs retrain and reconcile as separate jobs on a two-thread pool, each with
`max_instances=1` (no overlapping runs), `coalesce` and jitter, so a slow retrain never delays
reconciling.

Shutdown (SIGTERM from the kubelet, or Ctrl-C) is `Runtime.stop`: no new job starts, the
training workers are killed (a retrain is safe to abandon: the models it would replace keep
serving until the process ends, and nothing half-trained is saved), a running reconcile is
allowed to finish, the state is saved, the Lease released, all within `SHUTDOWN_BUDGET_S`,
which fits the pod's 30 s grace period with room for the HTTP server's own drain.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
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
from controller.config import ActuationMode, Config, ConfigError, VariantConfig, load_config
from controller.metrics import ForescaleMetrics
from controller.protocols import ScaleTarget
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


#: Seconds uvicorn lets open requests finish after SIGTERM before closing them.
HTTP_DRAIN_S = 5
#: Seconds `Runtime.stop` may take in all (the reconcile wait and the Lease release are
#: bounded inside it).
SHUTDOWN_BUDGET_S = 20.0
#: Seconds a job thread gets to end after `Runtime.stop` before the process exits anyway.
EXIT_GRACE_S = 2.0
#: Kubernetes sends SIGKILL `terminationGracePeriodSeconds` (30 s in
#: deploy/kubernetes/deployment.yaml) after SIGTERM: the three above must fit in it.
SHUTDOWN_TOTAL_S = HTTP_DRAIN_S + SHUTDOWN_BUDGET_S + EXIT_GRACE_S
#: Seconds the Lease release may take (it is one read and one write).
RELEASE_TIMEOUT_S = 5.0
#: Seconds the VariantAutoscaler watches and trainer get to stop (a watch is cut at once).
WATCH_STOP_S = 3.0


class JobGate:
    """Lets shutdown wait for the job that must not be cut (a reconcile writing replicas and
    state) while refusing new runs of every job once closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def run(self, fn: Callable[[], Any]) -> Callable[[], None]:
        """`fn` as a job body that runs only while the gate is open, holding the gate."""

        def body() -> None:
            if self.closed:
                return
            with self._lock:
                if not self.closed:
                    fn()

        return body

    def close(self, timeout_s: float) -> bool:
        """Refuse new runs; wait up to `timeout_s` for a running one. True if none runs."""
        self._closed.set()
        if not self._lock.acquire(timeout=max(0.0, timeout_s)):
            return False
        self._lock.release()
        return True


def stop_training_workers() -> None:
    """Kill joblib's worker processes (loky). Left alone they idle for five minutes after
    their parent is gone, and a retrain using them fails at once instead of running on.
    `reuse=True` hands back the executor joblib made rather than building a new one."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor(reuse=True).shutdown(wait=True, kill_workers=True)


@dataclass
class Runtime:
    service: Service
    scheduler: BackgroundScheduler
    gate: JobGate = field(default_factory=JobGate)
    server: uvicorn.Server | None = None
    stop_hooks: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, budget_s: float = SHUTDOWN_BUDGET_S) -> None:
        """Graceful shutdown, in the order that keeps the cluster safe (see module doc)."""
        t0 = time.monotonic()

        def left() -> float:
            return max(0.0, budget_s - (time.monotonic() - t0))

        log.info("shutdown: stopping the scheduler and the training workers")
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.gate.close(0.0)
        try:
            stop_training_workers()
        except Exception as exc:  # never let cleanup stop the rest of the shutdown
            log.warning("shutdown: could not stop the training workers: %s", exc)
        # A reconcile is short (seconds) but writes replicas and state: let it finish,
        # leaving room in the budget for the save and the Lease release after it.
        wait_s = min(left() * 0.4, 8.0)
        if not self.gate.close(wait_s):
            log.warning("shutdown: a reconcile still runs after %.1f s; abandoning it", wait_s)
        self._save_state()
        for hook in self.stop_hooks:
            try:
                hook()
            except Exception as exc:
                log.warning("shutdown: %s failed: %s", getattr(hook, "__name__", hook), exc)
        log.info("shutdown: done in %.1f s", time.monotonic() - t0)

    def _save_state(self) -> None:
        """Save the state as a reconcile would, while still leader (before the release)."""
        self.service.persist()
        log.info("shutdown: state saved (if leader and a store is configured)")


def _guarded(name: str, fn: Callable[[], Any], budget_s: float,
             gate: JobGate | None = None) -> Callable[[], None]:
    """A job body that logs (never propagates) errors and reports overruns of its budget.
    A failure after shutdown began is the shutdown's doing (killed workers): one line."""

    def run() -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # a job must never kill the scheduler thread
            if gate is not None and gate.closed:
                log.info("%s abandoned by shutdown (%s)", name, type(exc).__name__)
                return
            log.exception("%s failed", name)
        elapsed = time.perf_counter() - t0
        if elapsed > budget_s:
            log.warning("%s took %.1fs, over its budget of %.1fs", name, elapsed, budget_s)

    return run


def schedule(service: Service, clock_speed: float = 1.0,
             config_path: Path | None = None,
             gate: JobGate | None = None) -> BackgroundScheduler:
    """Retrain now and then every interval; reconcile every interval (in wall time).

    `gate`: shutdown closes it; reconcile runs hold it, so shutdown can wait for one."""
    s = service.config.schedules
    gate = gate or JobGate()
    sched = BackgroundScheduler(executors={"default": ThreadPoolExecutor(2)},
                                job_defaults={"coalesce": True, "max_instances": 1,
                                              "misfire_grace_time": None})
    retrain_every = max(1.0, s.retrain_interval_s / clock_speed)
    retrain = _guarded("retrain", service.retrain, s.retrain_budget_s, gate)
    sched.add_job(lambda: None if gate.closed else retrain(), "interval",
                  seconds=retrain_every, jitter=min(s.jitter_s, retrain_every / 10),
                  id="retrain", next_run_time=_now_dt())
    sched.add_job(gate.run(_guarded("reconcile", service.reconcile, s.reconcile_budget_s,
                                    gate)), "interval",
                  seconds=s.reconcile_interval_s, jitter=min(s.jitter_s,
                                                             s.reconcile_interval_s / 4),
                  id="reconcile")
    if config_path is not None:
        watcher = ConfigWatcher(service, config_path)
        sched.add_job(_guarded("config-reload", watcher.check, 60.0, gate), "interval",
                      seconds=10, id="config-reload")
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
            refused = "restart forescale" in str(exc) or "already defined" in str(exc)
            outcome = "refused" if refused else "invalid"
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
    dry = DryRunTarget({v.name: max(v.min_replicas, 1) for v in config.variants})
    service = Service(config, source, {v.name: dry for v in config.variants}, clock=clock,
                      metrics=metrics)
    service.attribution = DEMO_ATTRIBUTION
    dry.replicas.update(running_fleet(service))
    return service


def running_fleet(service: Service) -> dict[str, int]:
    """The replicas a cluster already serving the trace would run at the demo's start: the
    live load at the variant's target utilisation of its capacity at the SLO, within
    min/max. Starting at min_replicas instead showed minutes of unserved demand and
    `ScaleUpLimited` while the rate limits climbed, which reads as the autoscaler failing."""
    now = service.clock()
    out = {}
    for name, rt in service.variants.items():
        v = rt.config
        rate = service.source.live(name, now).request_rate
        per_replica = service.capacity(rt).rps * v.behaviour.target_utilisation
        need = math.ceil(rate / per_replica) if rate is not None and per_replica > 0 else 0
        out[name] = min(v.max_replicas, max(v.min_replicas, 1, need))
    return out


def demo_runtime(speed: float = 1.0, metrics: ForescaleMetrics | None = None) -> Runtime:
    """The demo's service with its schedule, stopped like production's (`Runtime.stop`)."""
    service = build_demo(speed=speed, metrics=metrics)
    gate = JobGate()
    return Runtime(service, schedule(service, clock_speed=speed, gate=gate), gate=gate)


def prometheus_source(config: Config, metrics: ForescaleMetrics) -> Any:
    """The Prometheus source with every outcome (ok, empty, nan, stale, ...) counted."""
    from controller.prometheus import PrometheusSource

    def count(variant: str, signal: str, outcome: str) -> None:
        metrics.source_outcomes.labels(variant, signal, outcome).inc()

    return PrometheusSource(config.prometheus, config.variants, on_outcome=count)


class Actuators:
    """The actuators of production variants by mode, for the file's variants and for those
    added while running: one scale-subresource actuator (made on first need, its API client
    shared with leader election, the state store and the VariantAutoscaler controller), a
    dry-run record, metric publishers. `follow` keeps them and the metrics source in step
    with the service's variant set."""

    def __init__(self, metrics: ForescaleMetrics, source: Any) -> None:
        self.metrics = metrics
        self.source = source
        self.kube: Any = None
        self.dry = DryRunTarget({})

    def kube_target(self) -> Any:
        if self.kube is None:
            from controller.k8s import KubernetesScaleTarget, make_api_client

            self.kube = KubernetesScaleTarget(make_api_client(None, None), {})
        return self.kube

    @staticmethod
    def ref(v: VariantConfig) -> Any:
        from controller.k8s import ScaleTargetRef

        t = v.target
        return ScaleTargetRef(t.namespace, t.api_version, t.kind, t.name)

    def make(self, v: VariantConfig, mode: ActuationMode) -> ScaleTarget:
        if mode is ActuationMode.SCALE:
            self.kube_target()
        if self.kube is not None:
            self.kube.set_target(v.name, self.ref(v))
        if mode is ActuationMode.SCALE:
            return self.kube  # type: ignore[no-any-return]
        if mode is ActuationMode.METRIC:
            return MetricTarget(self.metrics, current=self.kube,
                                initial={v.name: max(v.min_replicas, 1)})
        self.dry.replicas.setdefault(v.name, max(v.min_replicas, 1))
        return _ReadOnly(self.kube, self.dry) if self.kube is not None else self.dry

    def follow(self, name: str, v: VariantConfig | None) -> None:
        """A `Service.variant_listeners` entry."""
        if v is not None:
            self.source.variants[name] = v
            return
        self.source.variants.pop(name, None)
        self.dry.replicas.pop(name, None)
        if self.kube is not None:
            self.kube.remove_target(name)

    def check_target(self, v: VariantConfig) -> None:
        """Raise if discovery cannot resolve the variant's target to a scalable resource."""
        self.kube_target().resolve(self.ref(v))


def build_production(config: Config, metrics: ForescaleMetrics | None = None,
                     config_path: Path | None = None) -> Runtime:
    """Prometheus source, per-variant actuators by mode, optional leader election, and the
    VariantAutoscaler controller when `kubernetes.custom_resources.enabled`."""
    metrics = metrics or ForescaleMetrics()
    act = Actuators(metrics, prometheus_source(config, metrics))
    hooks: list[Callable[[], None]] = []
    crd = config.kubernetes.custom_resources
    if ActuationMode.SCALE in {config.mode_of(v) for v in config.variants} \
            or config.leader_election.enabled or config.state.backend == "configmap" \
            or crd.enabled:
        act.kube_target()
    targets = {v.name: act.make(v, config.mode_of(v)) for v in config.variants}
    is_leader: Callable[[], bool] = lambda: True  # noqa: E731
    if config.leader_election.enabled:
        from controller.leader import LeaderElector

        le = config.leader_election
        elector = LeaderElector(act.kube_target().api_client, le.lease_namespace,
                                le.lease_name, identity=_identity(),
                                lease_duration=le.lease_duration_s,
                                renew_deadline=le.renew_deadline_s,
                                retry_period=le.retry_period_s)
        elector.start()
        # Bounded: a release stuck on a slow API server must not eat the grace period.
        hooks.append(lambda: elector.stop(timeout=RELEASE_TIMEOUT_S))
        is_leader = lambda: elector.is_leader  # noqa: E731
    store = _state_store(config, act.kube.api_client if act.kube is not None else None)
    service = Service(config, act.source, targets, metrics=metrics, is_leader=is_leader,
                      state_store=store)
    service.target_factory = lambda v: act.make(v, service.config.mode_of(v))
    service.variant_listeners.append(act.follow)
    if crd.enabled:
        from controller.crd import VariantAutoscalerController

        controller = VariantAutoscalerController(
            act.kube_target().api_client, service, namespaces=crd.namespaces,
            resync_s=crd.resync_s, check_target=act.check_target)
        controller.start()
        # First, so no variant changes while the state is saved and the Lease released.
        hooks.insert(0, lambda: controller.stop(timeout=WATCH_STOP_S))
    gate = JobGate()
    return Runtime(service, schedule(service, config_path=config_path, gate=gate), gate=gate,
                   stop_hooks=hooks)


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


class StopSignals:
    """SIGTERM and SIGINT as a request to stop, recorded instead of killing the process.

    uvicorn handles both while it serves, then re-raises the signal it caught with the
    handler it found installed: with the default SIGTERM action that killed the process
    (exit 143) before any cleanup ran, so training workers outlived it and the Lease was
    held until it expired. Installed first, this handler receives the re-raise and the
    caller runs `Runtime.stop` and exits 0.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.server: uvicorn.Server | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, sig: int, frame: Any) -> None:
        if self.received is None:
            log.info("shutdown: %s received", signal.Signals(sig).name)
        self.received = self.received or sig
        if self.server is not None:
            self.server.should_exit = True


def exit_when_stuck(grace_s: float = EXIT_GRACE_S) -> None:
    """After `Runtime.stop`: a job thread still running (a retrain fitting in-process) would
    keep the interpreter alive at exit until it finished; end the process instead."""
    deadline = time.monotonic() + grace_s
    for t in threading.enumerate():
        if t is threading.main_thread() or t.daemon:
            continue
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        log.warning("shutdown: abandoning running job thread(s) %s", ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def serve_http(service: Service, host: str, port: int, token: str | None,
               on_started: Callable[[], None] | None = None,
               stop: StopSignals | None = None) -> None:
    """Serve the API in the foreground until interrupted (or `stop` records a signal)."""
    app = create_app(service, token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=HTTP_DRAIN_S)
    server = uvicorn.Server(config)
    if stop is not None:
        stop.server = server
        if stop.received is not None:
            return
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


__all__ = ["JobGate", "Runtime", "StopSignals", "build_demo", "build_production",
           "demo_runtime", "exit_when_stuck", "schedule", "serve_http"]
