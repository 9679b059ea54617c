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


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "demo", "--port", str(port), "--speed", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"})
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
