"""deploy/grafana/forescale.json: structure, metric names, and PromQL that a real Prometheus
parses (every panel's query, the KEDA query and the example config's signals)."""

from __future__ import annotations

import importlib.util
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.config import load_config
from controller.metrics import ForescaleMetrics
from tests.support.prom import PrometheusFactory

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "forescale.json"
VLLM_METRICS = {
    "vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:gpu_cache_usage_perc",
    "vllm:time_to_first_token_seconds_bucket",
}


def load_build() -> ModuleType:
    """deploy/grafana/build.py as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("forescale_dashboard_build",
                                                  ROOT / "deploy" / "grafana" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()


def iter_dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) of every panel target; see deploy/grafana/build.py."""
    queries: list[tuple[str, str]] = build.iter_dashboard_queries(path)
    return queries


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


# ---------------------------------------------------------------------------- structure
def test_dashboard_json_is_up_to_date_with_build_script() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == build.render(), (
        "run python deploy/grafana/build.py")


def test_variant_selector_comes_from_forescale_desired_replicas() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    var = variables["variant"]
    assert var["type"] == "query"
    assert var["definition"] == "label_values(forescale_desired_replicas, variant)"
    assert var["query"]["query"] == var["definition"]
    assert var["multi"] and var["includeAll"]


def test_every_panel_has_targets_on_the_selected_datasource() -> None:
    panels = build.iter_panels(DASHBOARD)
    assert len(panels) >= 20
    for p in panels:
        assert p["targets"], f"panel {p['title']!r} has no target"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"] == p["datasource"]


def test_panel_ids_titles_and_grid_are_consistent() -> None:
    dash = _dashboard()
    panels = build.iter_panels(DASHBOARD)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "titles name panels in test reports"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]


def test_required_views_are_present() -> None:
    queries = iter_dashboard_queries()
    text = "\n".join(e for _, e in queries)
    for q in ("0.5", "0.9", "0.99"):
        assert f'quantile="{q}"' in text
    for metric in ("forescale_actual_load", "forescale_desired_replicas",
                   "forescale_current_replicas", "forescale_predictive_replicas",
                   "forescale_reactive_replicas", "forescale_last_decision_reason",
                   "forescale_reactive_overrides_total", "forescale_forecast_abs_error_ratio",
                   "forescale_model_info", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:num_requests_waiting", "forescale_gpus", "forescale_cost_per_hour_usd"):
        assert metric in text, f"no panel shows {metric}"
    assert "histogram_quantile(0.95" in text
    # Per-variant panels filter by the selector.
    for title, expr in queries:
        if "forescale_" in expr and "variant" in expr:
            assert 'variant=~"$variant"' in expr, title


def test_dashboard_uses_only_real_metric_names() -> None:
    exported: set[str] = set()
    for family in ForescaleMetrics(CollectorRegistry()).registry.collect():
        kind = family.type
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        exported |= {family.name + s for s in suffixes.get(kind, [""])}
    for title, expr in iter_dashboard_queries():
        for name in re.findall(r"\b(?:forescale_[a-z_]+|vllm:[a-z_:]+)", expr):
            assert name in exported | VLLM_METRICS, f"{title}: unknown metric {name}"


def test_render_query_replaces_every_grafana_variable() -> None:
    for _, expr in iter_dashboard_queries():
        rendered = build.render_query(expr)
        assert "$" not in rendered, rendered


# ---------------------------------------------------------------------------- real PromQL
def query_error(url: str, expr: str) -> str | None:
    """None if Prometheus accepts `expr` as an instant query, else its error."""
    qs = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=10) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        exc.close()
    if body.get("status") == "success":
        return None
    return f"{body.get('errorType')}: {body.get('error')}"


def shipped_queries() -> list[tuple[str, str]]:
    """Every PromQL that deploy/ ships besides the alert rules (promtool checks those)."""
    queries = [(f"dashboard: {t}", build.render_query(e)) for t, e in iter_dashboard_queries()]
    var = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "variant")
    metric = re.fullmatch(r"label_values\((\w+), *\w+\)", var["definition"])
    assert metric is not None
    queries.append(("dashboard: $variant", metric.group(1)))
    so = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "keda" / "scaledobject.yaml")
                        .read_text(encoding="utf-8"))
    queries += [("keda: " + so["metadata"]["name"], t["metadata"]["query"])
                for t in so["spec"]["triggers"]]
    for v in load_config(ROOT / "deploy" / "config.example.yaml").variants:
        for signal, template in v.signals.model_dump().items():
            queries.append((f"config: {v.name}.{signal}",
                            template.replace("$selector", v.label_selector)))
    return queries


@pytest.mark.integration
def test_every_shipped_query_parses_in_a_real_prometheus(
        prometheus_factory: PrometheusFactory) -> None:
    queries = shipped_queries()
    assert len(queries) > 40
    url = prometheus_factory().url  # an empty TSDB: parsing is what is checked here
    assert query_error(url, "sum(rate(nope[5m]") is not None, "bad PromQL must be refused"
    errors = [f"{where}: {expr}\n    -> {err}" for where, expr in queries
              if (err := query_error(url, expr)) is not None]
    assert not errors, "\n".join(errors)
