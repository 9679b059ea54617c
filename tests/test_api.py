"""The HTTP API through real HTTP: every endpoint, auth on POST, 422s, /metrics names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.api import create_app
from controller.metrics import ForescaleMetrics
from controller.runner import build_demo
from controller.service import Service
from tests.support.demo import frozen_demo
from tests.support.http import serve_app

TOKEN = "s3cret-token"
GOLDEN = Path(__file__).parent / "golden" / "metrics_names.txt"


@pytest.fixture(scope="module")
def service() -> Service:
    return frozen_demo()


@pytest.fixture(scope="module")
def url(service: Service) -> Iterator[str]:
    with serve_app(create_app(service, token=TOKEN)) as u:
        yield u


def test_forecast_returns_requested_quantiles_and_horizon(url: str) -> None:
    r = httpx.get(f"{url}/forecast", params={"variant": "servegen-m-mid", "horizon": 4,
                                              "quantiles": "0.5,0.99"})
    assert r.status_code == 200, r.text
    fc = r.json()["forecasts"][0]
    assert [q["quantile"] for q in fc["quantiles"]] == [0.5, 0.99]
    assert len(fc["timestamps"]) == 4 and all(len(q["values"]) == 4 for q in fc["quantiles"])
    assert fc["step_s"] == 600 and fc["unit"] == "requests/s"


@pytest.mark.parametrize(("params", "fragment"), [
    ({}, "variant"),
    ({"variant": "nope"}, "not a configured variant"),
    ({"variant": "servegen-m-mid", "horizon": 0}, "horizon"),
    ({"variant": "servegen-m-mid", "horizon": "x"}, "horizon"),
    ({"variant": "servegen-m-mid", "quantiles": "0.5,abc"}, "'abc' is not a number"),
    ({"variant": "servegen-m-mid", "quantiles": "1.5"}, "strictly between 0 and 1"),
])
def test_forecast_bad_parameters_get_422_naming_the_parameter(url: str, params: dict[str, str],
                                                              fragment: str) -> None:
    r = httpx.get(f"{url}/forecast", params=params)
    assert r.status_code == 422
    assert fragment in r.text


def test_variants_lists_config_and_state(url: str) -> None:
    body = httpx.get(f"{url}/variants").json()
    names = {v["name"]: v for v in body}
    assert set(names) == {"servegen-m-large", "servegen-m-mid", "servegen-m-small"}
    small = names["servegen-m-small"]
    assert small["state"] == "predictive" and small["actuation"] == "dry-run"
    assert small["deployment"] == "llm/m-small" and small["capacity_rps_at_slo"] > 0


def test_plan_has_a_decision_with_reasons_and_cost(url: str) -> None:
    plan = httpx.get(f"{url}/plan").json()
    assert len(plan["variants"]) == 3
    for item in plan["variants"]:
        assert item["desired"] >= 2 and item["cost_per_hour"] > 0
        assert item["reasons"], item
    assert plan["total_cost_per_hour"] == pytest.approx(
        sum(i["cost_per_hour"] for i in plan["variants"]))


def test_decisions_filter_and_limit(url: str) -> None:
    r = httpx.get(f"{url}/decisions", params={"variant": "servegen-m-large", "limit": 1})
    body = r.json()
    assert r.status_code == 200 and len(body) == 1
    assert body[0]["variant"] == "servegen-m-large"
    assert httpx.get(f"{url}/decisions", params={"limit": 0}).status_code == 422


def test_retrain_requires_the_bearer_token(url: str) -> None:
    assert httpx.post(f"{url}/retrain").status_code == 401
    bad = httpx.post(f"{url}/retrain", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401
    ok = httpx.post(f"{url}/retrain", params={"variant": "servegen-m-small"},
                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert ok.status_code == 200, ok.text
    assert set(ok.json()["trained"]) == {"servegen-m-small"}


def test_health_and_readiness(url: str) -> None:
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "detail": {}}
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_readyz_is_503_while_warming_up() -> None:
    svc = build_demo(metrics=ForescaleMetrics())
    with serve_app(create_app(svc, token=None)) as u:
        r = httpx.get(f"{u}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "warming-up"
        assert httpx.post(f"{u}/retrain").status_code == 503  # no token configured: off


def test_forecast_png_is_a_png(url: str) -> None:
    r = httpx.get(f"{url}/forecast.png", params={"variant": "servegen-m-small"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG")


def test_metrics_names_match_the_golden_file(url: str) -> None:
    text = httpx.get(f"{url}/metrics").text
    names = sorted({line.split()[2] for line in text.splitlines()
                    if line.startswith("# TYPE ")})
    assert names == GOLDEN.read_text().split(), "metric names changed: update dashboards, " \
        "alerts and tests/golden/metrics_names.txt together"


def test_openapi_documents_every_endpoint(url: str) -> None:
    paths = set(httpx.get(f"{url}/openapi.json").json()["paths"])
    assert {"/forecast", "/forecast.png", "/variants", "/plan", "/decisions", "/retrain",
            "/healthz", "/readyz", "/metrics"} <= paths
