"""End to end: a real Prometheus, the Kubernetes API emulator and a `forescale serve` process.

The scenario is deliberately stylised (and synthetic, so it is deterministic): a variant whose
load jumps from 20 to 120 req/s at the same time every day. Prometheus holds a week of that
history ending *now*, the next burst is six minutes away, the replicas take five minutes to
start. A reactive autoscaler would scale after the burst arrived; forescale must scale the
Deployment while the live load is still at its base level.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from controller.config import Behaviour
from forecaster.trace import TraceSeries
from tests.conftest import REPO, free_port
from tests.support.k8s_emulator import K8sEmulator, rules_from_manifests
from tests.support.proc import serving
from tests.support.prom import PrometheusServer, build_blocks, model_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE, BURST = 20.0, 120.0
CAPACITY = 10.0
STEP = 60
BURST_IN_S = 360  # the next burst starts this long after the history ends


def burst_history(end: int, days: int = 7) -> TraceSeries:
    """`days` of 1-minute windows ending at `end`; 2-hour bursts daily at the time of day
    that falls BURST_IN_S after `end`."""
    n = days * 86_400 // STEP
    start = end - n * STEP
    t = start + STEP * np.arange(n)
    phase = (t - (end + BURST_IN_S)) % 86_400
    load = np.where(phase < 7200, BURST, BASE).astype(np.float64)
    return TraceSeries("burst", float(start), STEP, load, None, None)


def rbac_documents() -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all((REPO / "deploy/kubernetes/rbac.yaml").read_text())
            if d]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, object]]:
    # History ends at the last whole minute before now.
    end = int(time.time() // STEP * STEP)
    blocks = build_blocks(tmp_path / "blocks", [model_series(burst_history(end), end=end)])
    with PrometheusServer(tmp_path / "prom", blocks=blocks) as prom, K8sEmulator() as k8s:
        k8s.seed_deployment("llm-serving", "burst", replicas=2)
        token = k8s.add_token("forescale-sa", rules_from_manifests(
            rbac_documents(), "forescale", "forescale"), user="system:serviceaccount:"
            "forescale:forescale")
        kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig", token=token)
        port = free_port()
        cfg = {
            "prometheus": {"url": prom.url, "step_s": 60, "history_days": 7},
            "actuation": "scale",
            "schedules": {"reconcile_interval_s": 2, "retrain_interval_s": 3600,
                          "jitter_s": 0},
            "forecast": {"horizon_s": 1800},
            "api": {"host": "127.0.0.1", "port": port},
            "variants": [{
                "name": "burst", "deployment": {"namespace": "llm-serving", "name": "burst"},
                "profile": {"capacity_rps": CAPACITY, "cold_start_s": 300},
                "behaviour": {"scaleUp": {"policies": [
                    {"type": "Pods", "value": 20, "periodSeconds": 60}]}},
                "min_replicas": 2, "max_replicas": 30}],
        }
        with serving(cfg, tmp_path, kubeconfig) as (proc, log_path):
            yield {"k8s": k8s, "url": f"http://127.0.0.1:{port}", "proc": proc,
                   "log": log_path, "end": end}


def test_deployment_is_scaled_before_the_burst_arrives(stack: dict[str, object]) -> None:
    k8s: K8sEmulator = stack["k8s"]  # type: ignore[assignment]
    url: str = stack["url"]  # type: ignore[assignment]
    proc: subprocess.Popen[bytes] = stack["proc"]  # type: ignore[assignment]
    log_path: Path = stack["log"]  # type: ignore[assignment]
    burst_at = float(stack["end"]) + BURST_IN_S  # type: ignore[arg-type]
    # the burst at the default utilisation target (0.9: 120 / 9 -> 14 replicas)
    need = math.ceil(BURST / (CAPACITY * Behaviour().target_utilisation))
    deadline = time.monotonic() + 120
    replicas = 2
    while time.monotonic() < deadline and time.time() < burst_at:
        assert proc.poll() is None, log_path.read_text()
        dep = k8s.deployment("llm-serving", "burst")
        assert dep is not None
        replicas = int(dep["spec"]["replicas"])
        if replicas >= need:
            break
        time.sleep(1)
    assert replicas >= need, f"not scaled for the burst: {replicas} < {need}\n" \
        + log_path.read_text()[-3000:]
    assert time.time() < burst_at, "scaled only after the burst arrived"
    # The live load is still the base level: this was the forecast, not a reaction.
    plan = httpx.get(f"{url}/plan", timeout=10).json()["variants"][0]
    assert plan["reactive"] is None or plan["reactive"] < need
    decisions = httpx.get(f"{url}/decisions", params={"limit": 50}, timeout=10).json()
    codes = {r["code"] for d in decisions for r in d["reasons"]}
    assert "ForecastPeak" in codes
    events = k8s.events("llm-serving")
    assert events, "a scale must post a Kubernetes Event"
    assert any("ForecastPeak" in (e.get("note") or e.get("message") or "") for e in events)
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'forescale_desired_replicas{variant="burst"}' in metrics
