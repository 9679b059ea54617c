"""End to end with a VariantAutoscaler: the API emulator (with forescale's CRDs and the RBAC
of deploy/), a real Prometheus with a week of backfilled history, and `forescale serve` whose
config file declares no variant at all.

The load is test_e2e's stylised daily burst (20 -> 120 req/s, the next one six minutes after
the history ends, five-minute cold starts). The object is created -> forescale starts
managing it, trains, and scales the Deployment ahead of the burst; the object's status and an
Event on it say so. Its spec is edited (a lower maxReplicas) -> the next decisions obey it,
same process. It is deleted -> forescale stops managing it: a replica count set by hand is
left alone.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from controller.config import Behaviour
from tests.conftest import REPO, free_port
from tests.support.k8s_emulator import K8sEmulator, rules_from_manifests
from tests.support.proc import serving
from tests.support.prom import PrometheusServer, build_blocks, model_series
from tests.test_e2e import BASE, BURST, BURST_IN_S, CAPACITY, STEP, burst_history, rbac_documents

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "llm-serving"
GROUP, VERSION, PLURAL = "forescale.io", "v1alpha1", "variantautoscalers"
USER = "system:serviceaccount:forescale:forescale"


def variant_autoscaler() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VariantAutoscaler",
        "metadata": {"name": "burst", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "burst"},
                 "actuation": "scale", "minReplicas": 2, "maxReplicas": 30,
                 "profile": {"capacityRps": CAPACITY, "coldStartS": 300},
                 "behaviour": {"scaleUp": {"policies": [
                     {"type": "Pods", "value": 20, "periodSeconds": 60}]}}},
    }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    end = int(time.time() // STEP * STEP)
    blocks = build_blocks(tmp_path / "blocks", [model_series(burst_history(end), end=end)])
    with PrometheusServer(tmp_path / "prom", blocks=blocks) as prom, K8sEmulator() as k8s:
        for path in sorted((REPO / "deploy/kubernetes/crds").glob("*.yaml")):
            k8s.install_crd(yaml.safe_load(path.read_text()))
        k8s.seed_deployment(NS, "burst", replicas=2)
        token = k8s.add_token("forescale-sa", rules_from_manifests(
            rbac_documents(), "forescale", "forescale"), user=USER)
        kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig", token=token)
        port = free_port()
        cfg = {
            "prometheus": {"url": prom.url, "step_s": 60, "history_days": 7},
            "schedules": {"reconcile_interval_s": 2, "retrain_interval_s": 3600,
                          "jitter_s": 0},
            "forecast": {"horizon_s": 1800},
            "api": {"host": "127.0.0.1", "port": port},
            "kubernetes": {"custom_resources": {"enabled": True, "namespaces": [NS],
                                                "resync_s": 10}},
        }
        with serving(cfg, tmp_path, kubeconfig) as (proc, log_path):
            yield {"k8s": k8s, "url": f"http://127.0.0.1:{port}", "proc": proc,
                   "log": log_path, "end": end}


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes],
             log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out: {what}\n" \
            + log_path.read_text()[-3000:]
        time.sleep(0.5)


def test_a_variant_autoscaler_is_managed_from_creation_to_deletion(
        stack: dict[str, Any]) -> None:
    k8s: K8sEmulator = stack["k8s"]
    url, proc, log_path = stack["url"], stack["proc"], stack["log"]
    burst_at = float(stack["end"]) + BURST_IN_S
    objects = client.CustomObjectsApi(k8s.api_client())
    wait_for("forescale serves", lambda: _get(url, "/healthz") is not None, proc, log_path, 30)

    def replicas() -> int:
        dep = k8s.deployment(NS, "burst")
        assert dep is not None
        return int(dep["spec"]["replicas"])

    def status() -> dict[str, Any]:
        obj = objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "burst")
        assert isinstance(obj, dict)
        return dict(obj.get("status") or {})

    # 1. Created: managed, trained, scaled ahead of the burst.
    objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, variant_autoscaler())
    need = math.ceil(BURST / (CAPACITY * Behaviour().target_utilisation))
    wait_for("scaled for the burst", lambda: replicas() >= need, proc, log_path, 120)
    assert time.time() < burst_at, "scaled only after the burst arrived"
    plan = _get(url, "/plan")["variants"][0]  # type: ignore[index]
    assert plan["reactive"] is None or plan["reactive"] < need  # the live load is BASE
    assert BASE < BURST
    wait_for("status reports the scale", lambda: status().get("currentReplicas", 0) >= need,
             proc, log_path, 20)
    st = status()
    assert st["state"] == "predictive" and st["model"] and st["observedGeneration"] == 1
    assert st["desiredReplicas"] >= need
    assert st["forecastPeak"]["requestsPerSecond"] > BASE  # the burst is in sight
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["ForecastHealthy"]["reason"] == "Predictive"
    assert conditions["AbleToScale"]["status"] == "True"
    scaled = [e for e in k8s.events(NS) if e["regarding"].get("kind") == "VariantAutoscaler"
              and e["reason"] == "SuccessfulRescale"]
    assert scaled and "ForecastPeak" in scaled[0]["note"]
    (listed,) = _get(url, "/variants")  # type: ignore[misc]
    assert listed["origin"] == f"VariantAutoscaler {NS}/burst"

    # 2. Edited: a lower max, obeyed by the next decisions, same process, same model.
    model = st["model"]
    objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "burst",
                                           {"spec": {"maxReplicas": 5}})
    wait_for("the new max is obeyed", lambda: replicas() <= 5, proc, log_path, 30)
    wait_for("status follows", lambda: status().get("observedGeneration") == 2
             and status().get("desiredReplicas", 99) <= 5, proc, log_path, 20)
    assert status()["model"] == model and proc.poll() is None
    last = _get(url, "/decisions", {"variant": "burst", "limit": 1})[0]  # type: ignore[index]
    assert last["desired"] <= 5

    # 3. Deleted: no longer managed; replicas set by hand stay as they are.
    objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "burst")
    wait_for("forgotten", lambda: _get(url, "/variants") == [], proc, log_path, 20)
    client.AppsV1Api(k8s.api_client()).patch_namespaced_deployment_scale(
        "burst", NS, {"spec": {"replicas": 9}})
    since = len(k8s.requests_log)
    time.sleep(6)  # three reconcile intervals
    assert replicas() == 9
    assert not [r for r in k8s.requests_log[since:] if r.user == USER
                and r.method in ("PUT", "PATCH") and "/scale" in r.path]
    assert proc.poll() is None


def _get(url: str, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        response = httpx.get(f"{url}{path}", params=params, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None
