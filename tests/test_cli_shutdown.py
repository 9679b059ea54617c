"""SIGTERM, as Kubernetes stops a pod: the process and every child it started exit promptly
with code 0, and a leader releases its Lease so the standby takes over at once.

The tests signal a real `forescale` process (started as a subprocess) while its training
workers (joblib/loky processes) are alive; before the fix uvicorn re-raised SIGTERM with the
default action, so the process died with 143 before any cleanup and the idle workers lived on
for loky's five-minute idle timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.support.k8s_emulator import CONFIGMAPS, K8sEmulator

pytestmark = pytest.mark.integration

#: What the test allows for the whole shutdown; the pod's grace period is 30 s.
EXIT_WITHIN_S = 10.0


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, read from /proc (no psutil needed)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields follow its ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has exited: it only waits for its parent's wait())."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited early ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def training_workers(pid: int) -> set[int]:
    """The loky worker processes under `pid` (their command line names loky)."""
    found = set()
    for child in descendants(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"loky" in cmd and b"resource_tracker" not in cmd:
            found.add(child)
    return found


def sigterm_and_wait(proc: subprocess.Popen[str]) -> tuple[int, float, set[int]]:
    """SIGTERM to the process only (as the kubelet does to PID 1); its exit code, the
    seconds it took, and the children that were still alive afterwards."""
    before = descendants(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=EXIT_WITHIN_S + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the process ignored SIGTERM")
    took = time.monotonic() - t0
    deadline = time.monotonic() + max(0.0, EXIT_WITHIN_S - took)
    while any(alive(p) for p in before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return code, took, {p for p in before if alive(p)}


def _reap(pids: set[int]) -> None:
    """Kill what a failed test left behind (only processes this test's child started)."""
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def test_sigterm_stops_the_demo_and_its_training_workers(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "demo", "--port", str(port),
             "--speed", "60", "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT, text=True)
    leftovers: set[int] = set()
    try:
        wait_for(lambda: bool(training_workers(proc.pid)), 90, "loky training workers", proc)
        code, took, leftovers = sigterm_and_wait(proc)
        text = log_path.read_text()
        assert code == 0, text[-3000:]
        assert took < EXIT_WITHIN_S, f"took {took:.1f} s\n{text[-3000:]}"
        assert leftovers == set(), f"children still alive after SIGTERM: {leftovers}"
        assert "shutdown: done" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _reap(leftovers)


def test_sigterm_releases_the_lease_for_the_standby(tmp_path: Path,
                                                    k8s_api: K8sEmulator) -> None:
    """`serve` with leader election against the API emulator: after SIGTERM the Lease has no
    holder and a one-second duration (client-go's ReleaseOnCancel), and the process exited 0
    with its state saved to the ConfigMap."""
    kubeconfig = k8s_api.write_kubeconfig(tmp_path / "kubeconfig")
    port = free_port()
    dead_prometheus = f"http://127.0.0.1:{free_port()}"
    cfg = {
        "prometheus": {"url": dead_prometheus, "step_s": 60, "history_days": 1,
                       "timeout_s": 1},
        "actuation": "dry-run",
        "schedules": {"reconcile_interval_s": 1, "retrain_interval_s": 3600, "jitter_s": 0},
        "api": {"host": "127.0.0.1", "port": port},
        "leader_election": {"enabled": True, "lease_namespace": "forescale",
                            "lease_duration_s": 15, "renew_deadline_s": 10,
                            "retry_period_s": 0.5},
        "state": {"backend": "configmap", "configmap_namespace": "forescale"},
        "variants": [{"name": "a", "deployment": {"namespace": "llm", "name": "a"},
                      "profile": {"capacity_rps": 10, "cold_start_s": 60},
                      "min_replicas": 1, "max_replicas": 10}],
    }
    k8s_api.seed_deployment("llm", "a", replicas=3)
    cfg_path = tmp_path / "forescale.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "serve", "--config", str(cfg_path),
             "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "pod-under-test"})
    leftovers: set[int] = set()
    try:
        def holding() -> bool:
            lease = k8s_api.lease("forescale", "forescale-leader")
            return bool(lease) and lease["spec"].get("holderIdentity") == "pod-under-test"

        wait_for(holding, 60, "the Lease held by the process", proc)
        wait_for(lambda: k8s_api.get(CONFIGMAPS, "forescale", "forescale-state") is not None, 30,
                 "state saved", proc)
        wait_for(lambda: _ok(f"http://127.0.0.1:{port}/healthz"), 30, "the API", proc)
        code, took, leftovers = sigterm_and_wait(proc)
        text = log_path.read_text()
        assert code == 0, text[-3000:]
        assert took < EXIT_WITHIN_S, f"took {took:.1f} s\n{text[-3000:]}"
        assert leftovers == set()
        lease = k8s_api.lease("forescale", "forescale-leader")
        assert lease is not None
        assert not lease["spec"].get("holderIdentity"), lease
        assert lease["spec"]["leaseDurationSeconds"] == 1
        assert "released" in text and "shutdown: done" in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _reap(leftovers)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_shutdown_budget_fits_the_pod_grace_period() -> None:
    """The drain, the stop budget and the exit grace together end before the kubelet's
    SIGKILL, with a second to spare for the process start-up of the hooks."""
    from controller.runner import SHUTDOWN_TOTAL_S
    from tests.conftest import REPO

    docs = [d for d in yaml.safe_load_all(
        (REPO / "deploy/kubernetes/deployment.yaml").read_text()) if d]
    (dep,) = [d for d in docs if d.get("kind") == "Deployment"]
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= SHUTDOWN_TOTAL_S + 1, (SHUTDOWN_TOTAL_S, grace)
