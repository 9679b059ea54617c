"""The fault matrix: each row injects one fault into the real service path — the Prometheus
source against a real Prometheus, the Kubernetes actuator against the API emulator — and
checks the safe behaviour, the metric and log line that report it, and recovery.

README "Operations" documents the same matrix. Every row also checks the invariants: replicas
stay within [min, max], never zero, and every reconcile leaves a decision record.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import parse_config
from controller.k8s import KubernetesScaleTarget
from controller.metrics import ForescaleMetrics
from controller.runner import ConfigWatcher, prometheus_source
from controller.service import DecisionRecord, Service
from controller.state import ConfigMapStateStore
from tests.conftest import REPO
from tests.support.k8s_emulator import K8sEmulator, rule, rules_from_manifests
from tests.support.models import NanModel, RaisingModel
from tests.support.prom import END_TIME, BackfilledPrometheus, PrometheusFactory

pytestmark = pytest.mark.integration

NS, DEP, VARIANT = "llm-serving", "m-small", "servegen-m-small"
MIN, MAX, START = 2, 80, 3  # START is far below what the load needs
NOW = float(END_TIME - 30)


def config(prom_url: str, **variant: Any) -> dict[str, Any]:
    return {
        "prometheus": {"url": prom_url, "step_s": 600, "history_days": 10, "timeout_s": 2},
        "actuation": "scale",
        "forecast": {"horizon_s": 1800},
        "variants": [{"name": VARIANT, "deployment": {"namespace": NS, "name": DEP},
                      "profile": {"capacity_rps": 58.7, "cold_start_s": 120},
                      "min_replicas": MIN, "max_replicas": MAX, **variant}],
    }


def sa_token(k8s: K8sEmulator) -> str:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/kubernetes/rbac.yaml").read_text())
            if d]
    return k8s.add_token("forescale-sa", rules_from_manifests(docs, "forescale", "forescale"))


def make_service(raw: dict[str, Any], k8s: K8sEmulator, now: float = NOW,
                 token: str | None = None, retries: bool | None = False,
                 **kwargs: Any) -> Service:
    cfg = parse_config(raw)
    metrics = ForescaleMetrics()
    target = KubernetesScaleTarget(k8s.api_client(token or sa_token(k8s), retries=retries),
                                   {VARIANT: (NS, DEP)})
    return Service(cfg, prometheus_source(cfg, metrics), {VARIANT: target},
                   clock=lambda: now, metrics=metrics, **kwargs)


def sample(svc: Service, name: str, **labels: str) -> float:
    value = svc.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def replicas(k8s: K8sEmulator) -> int:
    dep = k8s.deployment(NS, DEP)
    assert dep is not None
    return int(dep["spec"]["replicas"])


def invariants(k8s: K8sEmulator, rec: DecisionRecord) -> None:
    assert MIN <= replicas(k8s) <= MAX
    if rec.desired is not None:
        assert MIN <= rec.desired <= MAX


@pytest.fixture
def k8s(k8s_api: K8sEmulator) -> K8sEmulator:
    k8s_api.seed_deployment(NS, DEP, replicas=START)
    return k8s_api


@pytest.fixture
def prom(prometheus_backfilled: BackfilledPrometheus) -> str:
    return prometheus_backfilled.url


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP server that accepts and never answers: a Prometheus that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join(timeout=2)
        for c in held:
            c.close()
        sock.close()


# ------------------------------------------------------------------------- the healthy path
def test_healthy_path_scales_through_the_shipped_rbac(prom: str, k8s: K8sEmulator) -> None:
    svc = make_service(config(prom), k8s)
    report = svc.retrain()
    assert VARIANT in report.models
    rec = svc.reconcile()[0]
    assert rec.outcome in ("scaled", "held") and rec.model
    assert rec.live["request_rate"] is not None and rec.live["request_rate"] > 0
    invariants(k8s, rec)
    assert sample(svc, "forescale_source_outcomes_total", variant=VARIANT, signal="requests",
                  outcome="ok") >= 1


# ------------------------------------------------------------------------- Prometheus faults
def test_prometheus_down_holds_replicas_then_recovers(
        prometheus_blocks: Path, prometheus_factory: PrometheusFactory, k8s: K8sEmulator,
        caplog: pytest.LogCaptureFixture) -> None:
    server = prometheus_factory(blocks=prometheus_blocks)
    svc = make_service(config(server.url), k8s)
    svc.retrain()
    server.stop()
    with caplog.at_level(logging.WARNING):
        rec = svc.reconcile()[0]
    assert rec.desired == START and replicas(k8s) == START  # held
    assert "forecast unavailable" in rec.message
    assert "live signals unavailable" in caplog.text
    assert sample(svc, "forescale_reconcile_errors_total", variant=VARIANT,
                  kind="live-signals") == 1
    assert sample(svc, "forescale_reconcile_errors_total", variant=VARIANT,
                  kind="forecast") == 1
    # named, so the model just selected is selected again (the scheduled pass would skip it
    # until schedules.reselect_interval_s): history unreadable, the last good model stays
    retrain = svc.retrain([VARIANT])
    assert retrain.models == {} and svc.variants[VARIANT].model is not None
    assert sample(svc, "forescale_training_failures_total", variant=VARIANT) == 1
    invariants(k8s, rec)
    server.start()  # recovery
    rec = svc.reconcile()[0]
    assert rec.live["request_rate"] is not None and "forecast unavailable" not in rec.message


def test_prometheus_hanging_times_out_and_holds(blackhole: str, prom: str,
                                                k8s: K8sEmulator) -> None:
    good = make_service(config(prom), k8s)
    good.retrain()
    svc = make_service(config(blackhole), k8s)
    svc.variants[VARIANT].model = good.variants[VARIANT].model
    rec = svc.reconcile()[0]
    assert rec.desired == START and replicas(k8s) == START
    assert "no answer within" in rec.message or "timed out" in rec.message.lower()
    assert sample(svc, "forescale_source_outcomes_total", variant=VARIANT, signal="requests",
                  outcome="temporary_error") >= 1


def test_empty_result_is_unknown_not_zero(prom: str, k8s: K8sEmulator) -> None:
    svc = make_service(config(prom, selector='model_name="ghost"'), k8s)
    report = svc.retrain()
    assert report.models == {}  # no samples at all: nothing trained, nothing forecast
    rec = svc.reconcile()[0]
    assert rec.desired == START and replicas(k8s) == START
    assert "NoForecast" in {r["code"] for r in rec.reasons}
    assert sample(svc, "forescale_source_outcomes_total", variant=VARIANT, signal="requests",
                  outcome="empty") >= 1


def test_nan_from_prometheus_is_never_read_as_load(prom: str, k8s: K8sEmulator) -> None:
    nan_query = "sum(rate(vllm:request_success_total{$selector}[2m])) * (0/0)"
    svc = make_service(config(prom, signals={"requests": nan_query}), k8s)
    assert svc.retrain().models == {}
    rec = svc.reconcile()[0]
    assert rec.desired == START and rec.live["request_rate"] is None
    assert sample(svc, "forescale_source_outcomes_total", variant=VARIANT, signal="requests",
                  outcome="nan") >= 1


def test_stale_live_signals_are_ignored(prom: str, k8s: K8sEmulator) -> None:
    fresh = make_service(config(prom), k8s)
    fresh.retrain()
    # Samples stopped 200 s ago: inside the 5-min lookback, older than stale_after_s=120.
    later = make_service(config(prom), k8s, now=float(END_TIME + 200))
    later.variants[VARIANT].model = fresh.variants[VARIANT].model
    rec = later.reconcile()[0]
    assert rec.live["queue_depth"] is None and rec.live["kv_cache_usage"] is None
    assert sample(later, "forescale_source_outcomes_total", variant=VARIANT,
                  signal="queue_depth", outcome="stale") >= 1
    invariants(k8s, rec)


def test_several_series_where_one_was_expected_is_refused(prom: str, k8s: K8sEmulator) -> None:
    query = 'rate(vllm:request_success_total{model_name=~"servegen-m-.*"}[2m])'
    svc = make_service(config(prom, signals={"requests": query}), k8s)
    assert svc.retrain().models == {}
    assert sample(svc, "forescale_training_failures_total", variant=VARIANT) == 1
    rec = svc.reconcile()[0]
    assert rec.desired == START
    assert sample(svc, "forescale_source_outcomes_total", variant=VARIANT, signal="requests",
                  outcome="several_series") >= 1


# ------------------------------------------------------------------------- API server faults
@pytest.fixture
def trained(prom: str, k8s: K8sEmulator) -> Service:
    svc = make_service(config(prom), k8s)
    svc.retrain()
    return svc


@pytest.mark.parametrize("status", [409, 429, 500])
def test_api_server_errors_are_retried_or_held(trained: Service, k8s: K8sEmulator,
                                               status: int) -> None:
    k8s.fail(status, times=1, path=r".*/deployments/m-small/scale", method="PATCH",
             retry_after_s=0)
    rec = trained.reconcile()[0]
    if status == 409:  # a conflict is retried by re-reading
        assert rec.outcome in ("scaled", "held"), rec.message
    else:
        assert rec.outcome == "failed" and replicas(k8s) == START
        assert sample(trained, "forescale_reconcile_errors_total", variant=VARIANT,
                      kind="actuate") == 1
        rec = trained.reconcile()[0]  # the fault cleared: recovery on the next pass
        assert rec.outcome in ("scaled", "held")
    invariants(k8s, rec)


def test_dropped_connection_is_temporary(trained: Service, k8s: K8sEmulator) -> None:
    k8s.drop(times=1, path=r".*/deployments/m-small/scale", method="PATCH")
    rec = trained.reconcile()[0]
    assert rec.outcome in ("failed", "scaled", "held")
    assert replicas(k8s) in (START, rec.desired)
    rec = trained.reconcile()[0]
    assert rec.outcome in ("scaled", "held")
    invariants(k8s, rec)


def test_rbac_forbidden_is_a_clear_permanent_error(prom: str, k8s: K8sEmulator) -> None:
    read_only = k8s.add_token("read-only", [
        rule("get,list,watch", "apps", "deployments,deployments/scale", [NS]),
        rule("list", "autoscaling", "horizontalpodautoscalers", [NS])])
    svc = make_service(config(prom), k8s, token=read_only)
    svc.retrain()
    rec = svc.reconcile()[0]
    assert rec.desired != START  # it wanted to scale ...
    assert rec.outcome == "failed" and "forbidden" in rec.message  # ... and was refused
    assert "deployments/scale" in rec.message
    assert sample(svc, "forescale_reconcile_errors_total", variant=VARIANT, kind="actuate") == 1
    assert replicas(k8s) == START


# ------------------------------------------------------------------------- forecaster faults
def test_forecaster_nan_and_exceptions_hold(trained: Service, k8s: K8sEmulator) -> None:
    model = trained.variants[VARIANT].model
    assert model is not None
    trained.variants[VARIANT].model = NanModel(model.trained)
    rec = trained.reconcile()[0]
    assert "NaN" in rec.message and replicas(k8s) >= MIN
    assert sample(trained, "forescale_reconcile_errors_total", variant=VARIANT,
                  kind="forecast-nan") == 1

    trained.variants[VARIANT].model = RaisingModel(model.trained, message="model bug")
    trained._forecast_cache.clear()  # the NaN forecast was cached for this step
    rec = trained.reconcile()[0]
    assert rec.outcome == "failed" and "model bug" in rec.message
    invariants(k8s, rec)


def test_retrain_over_budget_serves_the_fallback(prom: str, k8s: K8sEmulator) -> None:
    raw = config(prom)
    raw["schedules"] = {"retrain_budget_s": 0.001}
    svc = make_service(raw, k8s)
    report = svc.retrain()
    assert VARIANT in report.failed and "budget" in report.failed[VARIANT]
    assert sample(svc, "forescale_training_failures_total", variant=VARIANT) == 1
    rec = svc.reconcile()[0]
    assert rec.model is not None and rec.outcome != "failed"
    invariants(k8s, rec)


# ------------------------------------------------------------------------- process faults
def test_invalid_config_reload_keeps_the_running_config(prom: str, k8s: K8sEmulator,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "forescale.yaml"
    raw = config(prom)
    path.write_text(yaml.safe_dump(raw))
    svc = make_service(raw, k8s)
    svc.retrain()
    watcher = ConfigWatcher(svc, path)
    path.write_text("variants: [oops\n")
    os.utime(path, (1, 1))
    assert watcher.check() == "invalid"
    assert svc.config.variants[0].max_replicas == MAX and svc.variants[VARIANT].model
    assert sample(svc, "forescale_config_reloads_total", outcome="invalid") == 1
    raw["variants"][0]["max_replicas"] = 30
    path.write_text(yaml.safe_dump(raw))
    os.utime(path, (2, 2))
    assert watcher.check() == "applied"
    assert svc.config.variants[0].max_replicas == 30


def test_restart_mid_run_keeps_stabilisation_in_the_configmap(prom: str,
                                                             k8s: K8sEmulator) -> None:
    token = sa_token(k8s)
    store = ConfigMapStateStore(k8s.api_client(token), "forescale")
    first = make_service(config(prom), k8s, token=token, state_store=store)
    first.retrain()
    rec1 = first.reconcile()[0]
    # The process dies; a new one starts a minute later and reads the saved state.
    second = make_service(config(prom), k8s, now=NOW + 60, token=token, state_store=store)
    assert second.variants[VARIANT].log, "the decision history survived the restart"
    restored = second.variants[VARIANT].scaling
    assert restored is not None and restored.recommendations
    second.retrain()
    rec2 = second.reconcile()[0]
    assert rec2.desired is not None and rec1.desired is not None
    assert rec2.desired >= min(rec1.desired, replicas(k8s)) - 1  # no burst of scale-downs
    invariants(k8s, rec2)


def test_two_instances_only_the_leader_actuates(prom: str, k8s: K8sEmulator) -> None:
    from controller.leader import LeaderElector

    token = sa_token(k8s)
    electors = [LeaderElector(k8s.api_client(token), "forescale", "forescale-leader",
                              identity=f"pod-{i}", lease_duration=2, renew_deadline=1.5,
                              retry_period=0.2) for i in range(2)]
    for e in electors:
        e.start()
    try:
        deadline = time.monotonic() + 10
        while not any(e.is_leader for e in electors) and time.monotonic() < deadline:
            time.sleep(0.05)
        services = [make_service(config(prom), k8s, token=token) for _ in electors]
        for svc, e in zip(services, electors, strict=True):
            svc.is_leader = lambda e=e: e.is_leader  # type: ignore[misc]
            svc.retrain()
        outcomes = [svc.reconcile()[0].outcome for svc in services]
        assert outcomes.count("follower") == 1, outcomes
    finally:
        for e in electors:
            e.stop()
