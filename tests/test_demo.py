"""The embedded default, end to end: `forescale demo` as a newcomer runs it, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.support.proc import stop_process

pytestmark = pytest.mark.integration

TOKEN = "demo-test-token"


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "demo", "--port", str(port), "--speed", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200", "FORESCALE_API_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"demo exited early: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("demo not ready within 60 s")
        yield url
    finally:
        stop_process(proc, timeout_s=15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_demo_answers_forecast_with_quantiles(demo_url: str) -> None:
    r = httpx.get(f"{demo_url}/forecast", params={"variant": "servegen-m-small"}, timeout=10)
    assert r.status_code == 200, r.text
    fc = r.json()["forecasts"][0]
    assert fc["variant"] == "servegen-m-small"
    levels = {q["quantile"]: q["values"] for q in fc["quantiles"]}
    assert {0.5, 0.9, 0.99} <= set(levels)
    n = len(fc["timestamps"])
    assert n >= 1 and all(len(v) == n for v in levels.values())
    assert all(a <= b + 1e-9 for a, b in zip(levels[0.5], levels[0.9], strict=True))
    assert all(a <= b + 1e-9 for a, b in zip(levels[0.9], levels[0.99], strict=True))
    assert fc["model"] and fc["trained_to"]


def test_demo_decides_in_dry_run_and_explains(demo_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        plan = httpx.get(f"{demo_url}/plan", timeout=10).json()
        if len(plan["variants"]) == 3:
            break
        time.sleep(0.5)
    assert {p["variant"] for p in plan["variants"]} == {
        "servegen-m-large", "servegen-m-mid", "servegen-m-small"}
    for p in plan["variants"]:
        assert p["outcome"] in {"dry-run", "held"}
        assert p["desired"] >= 2  # min_replicas of the demo config
    decisions = httpx.get(f"{demo_url}/decisions", params={"limit": 5}, timeout=10).json()
    assert decisions and all(d["mode"] == "dry-run" for d in decisions)


def test_demo_rejects_unknown_variant_with_422(demo_url: str) -> None:
    r = httpx.get(f"{demo_url}/forecast", params={"variant": "ghost"}, timeout=10)
    assert r.status_code == 422
    assert "ghost" in r.text and "servegen-m-small" in r.text


def test_demo_serves_a_png_and_metrics(demo_url: str) -> None:
    r = httpx.get(f"{demo_url}/forecast.png", params={"variant": "servegen-m-large"},
                  timeout=30)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    m = httpx.get(f"{demo_url}/metrics", timeout=10).text
    assert 'forescale_desired_replicas{variant="servegen-m-small"}' in m


def test_demo_retrain_uses_the_token_from_the_environment(demo_url: str) -> None:
    """The demo honours FORESCALE_API_TOKEN (it was hard-coded off: 503 whatever the env)."""
    r = httpx.post(f"{demo_url}/retrain", timeout=10)
    assert r.status_code == 401, r.text
    for _ in range(5):
        r = httpx.post(f"{demo_url}/retrain", params={"variant": "servegen-m-small"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        if r.status_code != 409:  # 409: the scheduled retrain is running; ask again
            break
    assert r.status_code == 200, r.text
    assert set(r.json()["trained"]) == {"servegen-m-small"}


def test_demo_fleet_starts_where_a_running_cluster_would_be(demo_url: str) -> None:
    """The simulated fleet starts at the replicas for the live load, not at min_replicas
    (2 replicas against 1,158 req/s showed minutes of unserved demand at start)."""
    decisions = httpx.get(f"{demo_url}/decisions", params={"limit": 1000}, timeout=10).json()
    first = {}
    for d in decisions:
        first.setdefault(d["variant"], d)
    assert set(first) == {"servegen-m-large", "servegen-m-mid", "servegen-m-small"}
    capacity = {v["name"]: v["capacity_rps_at_slo"]
                for v in httpx.get(f"{demo_url}/variants", timeout=10).json()}
    for name, d in first.items():
        assert d["current"] > 2, d  # min_replicas is 2
        # Sized for the live load at the start; by the first decision (the first retrain
        # takes trace-minutes at 60x) the load may have moved by a window: 14 replicas of
        # servegen-m-mid serve 1,253 of its 1,603 req/s then, where 2 served 179.
        assert d["current"] * capacity[name] >= 0.6 * d["live"]["request_rate"], d
