"""Every dashboard panel returns data on a real Prometheus that scrapes forescale's own
/metrics and holds backfilled vLLM metrics — an empty panel means a wrong metric or label.

forescale's metrics are scraped live (evaluated now); the vLLM history is backfilled and ends
at END_TIME, so each query is evaluated at both times and must return data at one of them.
Panels on counters that only exist after their first event (EVENT_METRICS) are exempt.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from controller.actuators import DryRunTarget
from controller.api import create_app
from controller.config import parse_config
from controller.metrics import ForescaleMetrics
from controller.runner import prometheus_source
from controller.service import Service
from tests.support.http import serve_app
from tests.support.prom import END_TIME, BackfilledPrometheus, PrometheusFactory
from tests.test_deploy_dashboard import build, iter_dashboard_queries

pytestmark = pytest.mark.integration

VARIANT = "servegen-m-small"


def query(url: str, expr: str, at: float) -> list[object]:
    qs = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    result: list[object] = body["data"]["result"]
    return result


def test_every_panel_returns_data(prometheus_backfilled: BackfilledPrometheus,
                                  prometheus_blocks: Path,
                                  prometheus_factory: PrometheusFactory) -> None:
    cfg = parse_config({
        "prometheus": {"url": prometheus_backfilled.url, "step_s": 600, "history_days": 10},
        "variants": [{"name": VARIANT, "deployment": {"namespace": "llm", "name": "small"},
                      "profile": {"capacity_rps": 58.7, "cold_start_s": 120},
                      "min_replicas": 2, "max_replicas": 80}]})
    metrics = ForescaleMetrics()
    svc = Service(cfg, prometheus_source(cfg, metrics), {VARIANT: DryRunTarget({VARIANT: 5})},
                  clock=lambda: float(END_TIME - 30), metrics=metrics)
    svc.retrain()
    svc.reconcile()
    svc.reconcile()
    with serve_app(create_app(svc)) as app_url:
        target = app_url.removeprefix("http://")
        prom = prometheus_factory(blocks=prometheus_blocks, scrape_targets=[target],
                                  scrape_interval_s=1.0)
        deadline = time.monotonic() + 30
        while not query(prom.url, "forescale_desired_replicas", time.time()):
            assert time.monotonic() < deadline, "forescale's /metrics never scraped"
            time.sleep(0.5)
        time.sleep(3)  # a few scrapes, so rate() and increase() have two samples
        empty = []
        for title, expr in iter_dashboard_queries():
            if any(m in expr for m in build.EVENT_METRICS):
                continue
            promql = build.render_query(expr, {"variant": VARIANT, "__rate_interval": "1m",
                                               "__range": "1h"})
            now = time.time()
            # `[1h:1m]` subqueries step on whole minutes: one minute ahead, the newest
            # scraped sample is inside the lookback of such a step.
            if not (query(prom.url, promql, now) or query(prom.url, promql, now + 60)
                    or query(prom.url, promql, float(END_TIME))):
                empty.append(f"{title}: {promql}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
