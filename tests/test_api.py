"""The HTTP API through real HTTP: every endpoint, auth on POST, the one error envelope,
refused repeated/unknown parameters, OpenAPI descriptions and security scheme, offline docs,
and /forecast.png under concurrency (drawn once, bounded, probes unaffected)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from controller.api import PngRenderer, create_app
from controller.metrics import ForescaleMetrics
from controller.runner import build_demo
from controller.service import Service
from tests.support.demo import frozen_demo
from tests.support.http import serve_app

TOKEN = "s3cret-token"
GOLDEN = Path(__file__).parent / "golden" / "metrics_exposition.txt"


@pytest.fixture(scope="module")
def service() -> Service:
    return frozen_demo()


@pytest.fixture(scope="module")
def url(service: Service) -> Iterator[str]:
    with serve_app(create_app(service, token=TOKEN)) as u:
        yield u


def error_items(r: httpx.Response, status: int) -> list[dict[str, object]]:
    """The documented error envelope (controller/api.py), checked whole; its items."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"status", "message", "errors"}, err
    assert err["status"] == status and isinstance(err["message"], str) and err["message"]
    for item in err["errors"]:
        assert set(item) == {"parameter", "value", "message"}, item
    return list(err["errors"])


def test_forecast_horizon_s_counts_seconds_rounded_up_to_steps(url: str) -> None:
    for seconds, steps in ((2400, 4), (2401, 5), (1, 1)):
        r = httpx.get(f"{url}/forecast", params={"variant": "servegen-m-mid",
                                                  "horizon_s": seconds,
                                                  "quantiles": "0.5,0.99"})
        assert r.status_code == 200, r.text
        fc = r.json()["forecasts"][0]
        assert fc["step_s"] == 600 and fc["unit"] == "requests/s"
        assert fc["horizon_steps"] == steps and fc["horizon_s"] == steps * 600
        assert [q["quantile"] for q in fc["quantiles"]] == [0.5, 0.99]
        assert len(fc["timestamps"]) == steps
        assert all(len(q["values"]) == steps for q in fc["quantiles"])


def test_forecast_horizon_steps_counts_steps(url: str) -> None:
    r = httpx.get(f"{url}/forecast", params={"variant": "servegen-m-mid", "horizon_steps": 4})
    assert r.status_code == 200, r.text
    fc = r.json()["forecasts"][0]
    assert fc["horizon_steps"] == 4 and fc["horizon_s"] == 2400 and len(fc["timestamps"]) == 4


@pytest.mark.parametrize(("params", "parameter", "fragment"), [
    ({}, "variant", "Field required"),
    ({"variant": "nope"}, "variant", "not a configured variant"),
    ({"variant": "servegen-m-mid", "horizon_s": 0}, "horizon_s", "greater than or equal"),
    ({"variant": "servegen-m-mid", "horizon_s": "x"}, "horizon_s", "integer"),
    ({"variant": "servegen-m-mid", "horizon_s": 2 * 10**6}, "horizon_s",
     "at most 1209600 s (2016 steps of 600 s)"),
    ({"variant": "servegen-m-mid", "horizon_steps": 2017}, "horizon_steps", "less than"),
    ({"variant": "servegen-m-mid", "quantiles": "0.5,abc"}, "quantiles",
     "'abc' is not a number"),
    ({"variant": "servegen-m-mid", "quantiles": "1.5"}, "quantiles", "strictly between 0 and 1"),
    ({"variant": "servegen-m-mid", "horizon": 4}, "horizon", "unknown parameter"),
])
def test_forecast_bad_parameters_get_422_naming_the_parameter(
        url: str, params: dict[str, str], parameter: str, fragment: str) -> None:
    items = error_items(httpx.get(f"{url}/forecast", params=params), 422)
    assert [i["parameter"] for i in items] == [parameter]
    assert fragment in str(items[0]["message"]), items


def test_giving_horizon_in_seconds_and_steps_is_refused_naming_both(url: str) -> None:
    r = httpx.get(f"{url}/forecast", params={"variant": "servegen-m-mid", "horizon_s": 600,
                                              "horizon_steps": 1})
    assert {i["parameter"] for i in error_items(r, 422)} == {"horizon_s", "horizon_steps"}


@pytest.mark.parametrize("path", ["/forecast?variant=servegen-m-mid&variant=servegen-m-small",
                                  "/decisions?limit=1&limit=2", "/forecast.png?variant=a&"
                                  "variant=b", "/healthz?x=1&x=2"])
def test_repeated_query_parameters_are_refused_not_collapsed(url: str, path: str) -> None:
    items = error_items(httpx.get(url + path), 422)
    assert len(items) == 1 and "given 2 times" in str(items[0]["message"])
    assert items[0]["parameter"] == path.split("?")[1].split("=")[0]
    assert len(items[0]["value"]) == 2  # type: ignore[arg-type]


def test_every_error_status_has_the_same_envelope(url: str) -> None:
    error_items(httpx.get(f"{url}/no-such-endpoint"), 404)
    error_items(httpx.delete(f"{url}/plan"), 405)
    (item,) = error_items(httpx.post(f"{url}/retrain"), 401)
    assert item["parameter"] == "Authorization"
    error_items(httpx.post(f"{url}/retrain", headers={"Authorization": "Bearer x"}), 401)
    error_items(httpx.post(f"{url}/retrain", headers={"Authorization": "Basic x"}), 401)
    error_items(httpx.get(f"{url}/decisions", params={"limit": 0}), 422)


def test_variants_lists_config_and_state(url: str) -> None:
    body = httpx.get(f"{url}/variants").json()
    names = {v["name"]: v for v in body}
    assert set(names) == {"servegen-m-large", "servegen-m-mid", "servegen-m-small"}
    small = names["servegen-m-small"]
    assert small["state"] == "predictive" and small["actuation"] == "dry-run"
    assert small["deployment"] == "llm/m-small" and small["capacity_rps_at_slo"] > 0
    # The capacity decisions use, the profile's, and how the live fleet moved one from the other.
    assert small["capacity_profile_rps"] > 0
    assert 0.5 <= small["capacity_rps_at_slo"] / small["capacity_profile_rps"] <= 1.5
    assert small["capacity_correction"]


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
        # No token configured: writes are off, said in the error envelope.
        (msg,) = [httpx.post(f"{u}/retrain").json()["error"]["message"]]
        assert "FORESCALE_API_TOKEN" in msg
        r = httpx.get(f"{u}/forecast", params={"variant": "servegen-m-small"})
        error_items(r, 503)
        assert r.headers["retry-after"].isdigit()


def test_forecast_png_is_a_png(url: str) -> None:
    r = httpx.get(f"{url}/forecast.png", params={"variant": "servegen-m-small"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG")


class GatedRenderer(PngRenderer):
    """Draws only once `gate` is set, so a test can hold renders in flight."""

    def __init__(self, service: Service, **kw: int) -> None:
        super().__init__(service, **kw)
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def _draw(self, name: str) -> bytes:
        self.started.release()
        assert self.gate.wait(30), "test never opened the gate"
        return super()._draw(name)


def test_concurrent_requests_for_one_picture_draw_it_once(service: Service) -> None:
    png = GatedRenderer(service, max_concurrent=1)
    with serve_app(create_app(service, png=png)) as u, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(httpx.get, f"{u}/forecast.png",
                               params={"variant": "servegen-m-mid"}, timeout=60)
                   for _ in range(8)]
        try:
            assert png.started.acquire(timeout=30)
            deadline = time.monotonic() + 30  # the other seven wait for the first's drawing
            while png.shared < 7 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            png.gate.set()
        bodies = {f.result().content for f in futures}
        assert all(f.result().status_code == 200 for f in futures)
        assert len(bodies) == 1 and png.renders == 1 and png.shared == 7
        again = httpx.get(f"{u}/forecast.png", params={"variant": "servegen-m-mid"})
        assert again.content in bodies and png.renders == 1  # from the cache


def test_picture_overload_gets_503_with_retry_after_and_probes_stay_fast(
        service: Service) -> None:
    png = GatedRenderer(service, max_concurrent=2)
    with serve_app(create_app(service, png=png)) as u, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(httpx.get, f"{u}/forecast.png", params={"variant": v}, timeout=60)
                for v in ("servegen-m-mid", "servegen-m-large")]
        for _ in held:
            assert png.started.acquire(timeout=30)
        try:
            r = httpx.get(f"{u}/forecast.png", params={"variant": "servegen-m-small"},
                          timeout=5)
            error_items(r, 503)
            assert r.headers["retry-after"] == "2"
            with httpx.Client(timeout=2) as client:
                t0 = time.perf_counter()
                for _ in range(20):
                    assert client.get(f"{u}/healthz").status_code == 200
                # While both renders are held: the probe does not wait for them.
                assert (time.perf_counter() - t0) / 20 < 0.05
        finally:
            png.gate.set()
        assert all(f.result().status_code == 200 for f in held)
        ok = httpx.get(f"{u}/forecast.png", params={"variant": "servegen-m-small"}, timeout=60)
        assert ok.status_code == 200


def test_picture_cache_is_bounded(service: Service) -> None:
    png = PngRenderer(service, cache_size=2)
    with serve_app(create_app(service, png=png)) as u:
        for v in ("servegen-m-mid", "servegen-m-large", "servegen-m-small"):
            assert httpx.get(f"{u}/forecast.png", params={"variant": v},
                             timeout=60).status_code == 200
    assert png.renders == 3 and png.cached == 2


def test_picture_labels_every_line_and_shows_hours_not_days(service: Service) -> None:
    """Every drawn line and band has a legend entry (the replicas line had none), and the
    time axis spans 4 forecast horizons of history plus the horizon (was two days)."""
    from matplotlib.collections import PolyCollection
    from matplotlib.lines import Line2D

    from controller.plots import forecast_figure

    fig = forecast_figure(service, "servegen-m-small")
    load, replicas = fig.axes
    for ax in (load, replicas):
        artists = [a for a in ax.get_children() if isinstance(a, Line2D | PolyCollection)
                   and a.get_visible() and len(getattr(a, "get_xdata", list)()) != 2]
        legend = ax.get_legend()
        assert legend is not None
        labels = {t.get_text() for t in legend.get_texts()}
        for a in artists:
            assert not a.get_label().startswith("_"), f"unlabelled {a}"
            assert a.get_label() in labels
    rep_labels = {t.get_text() for t in replicas.get_legend().get_texts()}
    assert {"desired replicas (decided)", "current replicas"} <= rep_labels
    lo, hi = load.get_xlim()
    span_h = (hi - lo) * 24
    assert span_h == pytest.approx(5.0, abs=0.01)  # 4 h of history + the 1 h horizon


def test_pictures_are_drawn_without_pyplot() -> None:
    """pyplot's global figure registry is what concurrent requests corrupted."""
    code = ("import sys\n"
            "from tests.support.demo import frozen_demo\n"
            "from controller.plots import forecast_png\n"
            "assert forecast_png(frozen_demo(), 'servegen-m-small').startswith(b'\\x89PNG')\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_metrics_exposition_matches_the_golden_file(url: str) -> None:
    """The live app's HELP and TYPE lines are those pinned in the exposition golden file
    (tests/test_metrics.py pins the whole exposition, labels included)."""
    text = httpx.get(f"{url}/metrics").text
    live = sorted(line for line in text.splitlines() if line.startswith(("# HELP", "# TYPE")))
    golden = sorted(line for line in GOLDEN.read_text().splitlines()
                    if line.startswith(("# HELP", "# TYPE")))
    assert live == golden, "metric names or help changed: update dashboards, alerts and " \
        "tests/golden/metrics_exposition.txt together"


def test_openapi_documents_every_endpoint(url: str) -> None:
    paths = set(httpx.get(f"{url}/openapi.json").json()["paths"])
    assert {"/forecast", "/forecast.png", "/variants", "/plan", "/decisions", "/retrain",
            "/healthz", "/readyz", "/metrics"} <= paths


def test_openapi_describes_every_parameter_and_field(url: str) -> None:
    spec = httpx.get(f"{url}/openapi.json").json()
    missing = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            missing += [f"{method} {path} ?{p['name']}" for p in op.get("parameters", [])
                        if not p.get("description")]
    for name, schema in spec["components"]["schemas"].items():
        if name in {"HTTPValidationError", "ValidationError"}:
            continue
        missing += [f"{name}.{field}" for field, prop in schema.get("properties", {}).items()
                    if not prop.get("description") and "$ref" not in prop]
    assert missing == []
    assert "/forecast" in spec["paths"]
    names = {p["name"] for p in spec["paths"]["/forecast"]["get"]["parameters"]}
    assert names == {"variant", "horizon_s", "horizon_steps", "quantiles"}
    assert "seconds" in next(p["description"] for p in spec["paths"]["/forecast"]["get"][
        "parameters"] if p["name"] == "horizon_s")


def test_openapi_declares_bearer_auth_as_a_security_scheme(url: str) -> None:
    spec = httpx.get(f"{url}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {"bearerToken": {"type": "http", "scheme": "bearer",
                                       "description": ANY_STR}}
    retrain = spec["paths"]["/retrain"]["post"]
    assert retrain["security"] == [{"bearerToken": []}]
    headers = [p for ops in spec["paths"].values() for op in ops.values()
               for p in op.get("parameters", []) if p["in"] == "header"]
    assert headers == []  # not an "authorization" header parameter any more
    assert "$ref" in retrain["responses"]["401"]["content"]["application/json"]["schema"]
    assert retrain["responses"]["422"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/ErrorResponse")


def test_docs_load_only_local_assets(url: str) -> None:
    """/docs and /redoc in an air-gapped cluster: no CDN, every asset served here."""
    for page in ("/docs", "/redoc"):
        html = httpx.get(url + page).text
        assert "http://" not in html and "https://" not in html, html
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets, html
        for asset in assets:
            assert asset.startswith("/"), asset
            r = httpx.get(url + asset)
            assert r.status_code == 200 and len(r.content) > 1000, asset
    assert "url: '/openapi.json'" in httpx.get(f"{url}/docs").text


class _AnyStr(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    def __hash__(self) -> int:
        return 0


ANY_STR = _AnyStr()
