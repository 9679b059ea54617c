"""Build deploy/grafana/forescale.json, the forescale Grafana dashboard (Grafana 10/11).

    python deploy/grafana/build.py          # write forescale.json
    python deploy/grafana/build.py --check  # exit 1 if forescale.json is out of date

Plain JSON from dicts, no dependency beyond the standard library. The PromQL is the contract
with controller/metrics.py (forescale's metrics) and vLLM's own metrics (`model_name` label,
which matches the variant name under the default selector).

`iter_dashboard_queries(path)` lists every panel's (title, expr) and `render_query(expr)`
replaces Grafana's variables so the expression can be sent to Prometheus' /api/v1/query;
tests/test_deploy_dashboard.py uses both.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "forescale.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
V = 'variant=~"$variant"'
M = 'model_name=~"$variant"'

# Counters that appear only after their first event (a prometheus_client labelled counter has
# no series before `.labels(...).inc()`): their panels may show "No data" on a healthy system.
EVENT_METRICS = (
    "forescale_reactive_overrides_total",
    "forescale_forecast_misses_total",
    "forescale_training_failures_total",
    "forescale_reconcile_errors_total",
)


# ------------------------------------------------------------------------------ panel helpers
def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto",
                         "range": not instant, "instant": instant}
    if instant:
        t["format"] = "table"
    return t


def _panel(kind: str, title: str, description: str, targets: list[dict[str, Any]],
           unit: str, w: int, h: int) -> dict[str, Any]:
    for ref, t in zip("ABCDEFGHIJ", targets, strict=False):
        t["refId"] = ref
    return {
        "type": kind, "title": title, "description": description, "datasource": DS,
        "targets": targets, "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short",
               *, w: int = 12, h: int = 8, stack: bool = False, fill: int = 10,
               overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    p = _panel("timeseries", title, description, targets, unit, w, h)
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": fill,
                              "showPoints": "never", "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    p["fieldConfig"]["defaults"]["custom"] = custom
    p["fieldConfig"]["overrides"] = overrides or []
    p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}}
    return p


def stat(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short",
         *, w: int = 6, h: int = 4, decimals: int | None = None) -> dict[str, Any]:
    p = _panel("stat", title, description, targets, unit, w, h)
    if decimals is not None:
        p["fieldConfig"]["defaults"]["decimals"] = decimals
    p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "value_and_name"}
    return p


def table(title: str, description: str, targets: list[dict[str, Any]], *, w: int = 8,
          h: int = 8, hide: tuple[str, ...] = ("Time", "Value"),
          rename: dict[str, str] | None = None) -> dict[str, Any]:
    """Instant queries joined on their labels (merge), then columns hidden/renamed."""
    p = _panel("table", title, description, targets, "short", w, h)
    p["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": dict.fromkeys(hide, True),
                                       "renameByName": rename or {}}}]
    p["options"] = {"showHeader": True, "cellHeight": "sm"}
    return p


def state_timeline(title: str, description: str, targets: list[dict[str, Any]], *, w: int = 8,
                   h: int = 8) -> dict[str, Any]:
    p = _panel("state-timeline", title, description, targets, "short", w, h)
    p["options"] = {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                    "legend": {"showLegend": False}}
    p["fieldConfig"]["defaults"]["mappings"] = [
        {"type": "value", "options": {"1": {"text": "active", "color": "orange"}}}]
    return p


def row(title: str, *, repeat: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"type": "row", "title": title, "collapsed": False, "panels": [],
                         "gridPos": {"w": 24, "h": 1}}
    if repeat:
        r["repeat"] = repeat
    return r


def by_name(name: str, **props: Any) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


# ------------------------------------------------------------------------------ the dashboard
def overview() -> list[dict[str, Any]]:
    return [
        row("Overview"),
        stat("Desired replicas", "forescale_desired_replicas: what forescale wants per variant.",
             [target(f"max by (variant) (forescale_desired_replicas{{{V}}})", "{{variant}}")]),
        stat("Cost per hour", "GPU cost per hour at the desired replicas, all selected "
             "variants (profile.gpu_hourly_usd x gpus_per_replica x replicas).",
             [target(f"sum(max by (variant) (forescale_cost_per_hour_usd{{{V}}}))", "USD/h")],
             "currencyUSD", decimals=2),
        stat("GPUs by type", "GPUs at the desired replicas, by GPU type.",
             [target(f"sum by (gpu_type) (max by (variant, gpu_type) (forescale_gpus{{{V}}}))",
                     "{{gpu_type}}")]),
        stat("Leader and ready", "Instances holding the leader Lease (should be 1) and "
             "instances ready (every variant has a model or fallback).",
             [target("sum(forescale_leader)", "leaders"),
              target("sum(forescale_ready)", "ready")]),
    ]


def per_variant() -> list[dict[str, Any]]:
    band = [
        by_name("forecast p99", custom__fillBelowTo="forecast p50", custom__lineWidth=0),
        by_name("forecast p90", custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                custom__fillOpacity=0),
        by_name("forecast p50", custom__fillOpacity=0),
        by_name("actual", custom__lineWidth=2, custom__fillOpacity=0,
                color={"mode": "fixed", "fixedColor": "red"}),
    ]
    replicas = [
        by_name("desired", custom__lineWidth=2, custom__lineInterpolation="stepAfter"),
        by_name("current", custom__lineInterpolation="stepAfter"),
        by_name("predictive", custom__lineStyle={"fill": "dash", "dash": [10, 10]}),
        by_name("reactive floor", custom__lineStyle={"fill": "dot", "dash": [0, 10]}),
    ]
    return [
        row("Variant $variant", repeat="variant"),
        timeseries(
            "Forecast band vs actual load",
            "Forecast load at the provisioning window (p50 to p99 band, p90 dashed; the "
            "default forecast.quantiles) against the observed load, req/s.",
            [target(f'max(forescale_forecast_load{{{V}, quantile="0.99"}})', "forecast p99"),
             target(f'max(forescale_forecast_load{{{V}, quantile="0.9"}})', "forecast p90"),
             target(f'max(forescale_forecast_load{{{V}, quantile="0.5"}})', "forecast p50"),
             target(f"max(forescale_actual_load{{{V}}})", "actual")],
            "reqps", fill=20, overrides=band),
        timeseries(
            "Replicas: desired vs current",
            "desired = max(predictive, reactive floor) after bounds, rate limits and "
            "stabilisation; current = the Deployment's replicas.",
            [target(f"max(forescale_desired_replicas{{{V}}})", "desired"),
             target(f"max(forescale_current_replicas{{{V}}})", "current"),
             target(f"max(forescale_predictive_replicas{{{V}}})", "predictive"),
             target(f"max(forescale_reactive_replicas{{{V}}})", "reactive floor")],
            fill=0, overrides=replicas),
        state_timeline(
            "Decision reasons",
            "Reasons of the last decision over time (forescale_last_decision_reason).",
            [target(f"max by (reason) (forescale_last_decision_reason{{{V}}})", "{{reason}}")]),
        timeseries(
            "Reactive overrides and fallback",
            "Decisions per hour where the reactive floor beat the forecast, and whether the "
            "variant is served reactively (forecast worse than its baseline). Overrides "
            "appear after the first one.",
            [target(f"max(increase(forescale_reactive_overrides_total{{{V}}}[1h]))",
                    "overrides / h"),
             target(f"max(forescale_reactive_fallback_active{{{V}}})", "fallback active")],
            w=8, fill=0),
        timeseries(
            "Decisions by outcome",
            "Reconcile outcomes per minute: scaled, held, dry-run, metric, follower, failed.",
            [target(f"max by (outcome) (rate(forescale_decisions_total{{{V}}}"
                    "[$__rate_interval])) * 60", "{{outcome}}")],
            "short", w=8, stack=True, fill=30),
    ]


def forecast_quality() -> list[dict[str, Any]]:
    return [
        row("Forecast quality"),
        timeseries(
            "Forecast error",
            "Recent mean |forecast - actual| / mean actual, per variant.",
            [target(f"max by (variant) (forescale_forecast_abs_error_ratio{{{V}}})",
                    "{{variant}}")],
            "percentunit", w=8, fill=0),
        timeseries(
            "Forecast misses per hour",
            "Times the actual load exceeded the provisioned quantile, per hour. Appears "
            "after the first miss.",
            [target(f"max by (variant) (increase(forescale_forecast_misses_total{{{V}}}[1h]))",
                    "{{variant}}")],
            w=8, fill=0),
        table(
            "Model per variant",
            "The forecaster serving each variant and the quantile it provisions for.",
            [target(f"max by (variant, model) (forescale_model_info{{{V}}} == 1)", instant=True),
             target(f"max by (variant) (forescale_provisioning_quantile{{{V}}})",
                    instant=True)],
            hide=("Time", "Value #A"), rename={"Value #B": "provisioning quantile"}),
    ]


def slo_signals() -> list[dict[str, Any]]:
    return [
        row("SLO signals (vLLM)"),
        timeseries(
            "TTFT p95",
            "Time to first token, p95, from vLLM's histogram.",
            [target("histogram_quantile(0.95, sum by (model_name, le) "
                    f"(rate(vllm:time_to_first_token_seconds_bucket{{{M}}}[$__rate_interval])))",
                    "{{model_name}}")],
            "s", w=8, fill=0),
        timeseries(
            "Queue depth and running requests",
            "Requests waiting for a slot and running, summed over the variant's replicas.",
            [target(f"sum by (model_name) (vllm:num_requests_waiting{{{M}}})",
                    "{{model_name}} waiting"),
             target(f"sum by (model_name) (vllm:num_requests_running{{{M}}})",
                    "{{model_name}} running")],
            w=8, fill=0),
        timeseries(
            "KV-cache usage",
            "vLLM KV-cache usage, averaged over replicas.",
            [target(f"avg by (model_name) (vllm:gpu_cache_usage_perc{{{M}}})",
                    "{{model_name}}")],
            "percentunit", w=8, fill=0),
        timeseries(
            "Request and token rates",
            "Completed requests/s and tokens/s from vLLM.",
            [target(f"sum by (model_name) (rate(vllm:request_success_total{{{M}}}"
                    "[$__rate_interval]))", "{{model_name}} req/s"),
             target(f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{M}}}"
                    "[$__rate_interval]))", "{{model_name}} prompt tok/s"),
             target(f"sum by (model_name) (rate(vllm:generation_tokens_total{{{M}}}"
                    "[$__rate_interval]))", "{{model_name}} generation tok/s")],
            "short", fill=0),
        timeseries(
            "Unserved demand",
            "Forecast demand the desired replicas cannot serve within the SLO (capped by "
            "max_replicas or gpu_quotas), req/s.",
            [target(f"max by (variant) (forescale_unserved_demand{{{V}}})", "{{variant}}")],
            "reqps", fill=20),
    ]


def cost() -> list[dict[str, Any]]:
    gpus = f"max by (variant, gpu_type) (forescale_gpus{{{V}}})"
    usd = f"max by (variant) (forescale_cost_per_hour_usd{{{V}}})"
    return [
        row("GPUs and cost"),
        timeseries("Cost per hour by variant", "USD per hour at the desired replicas.",
                   [target(usd, "{{variant}}")], "currencyUSD", w=9, stack=True, fill=40),
        timeseries("GPUs by variant", "GPUs at the desired replicas, stacked by variant.",
                   [target(gpus, "{{variant}} ({{gpu_type}})")], w=9, stack=True, fill=40),
        stat("GPU-hours in range", "GPU-hours at the desired replicas over the dashboard's "
             "time range, by GPU type.",
             [target(f"sum by (gpu_type) (sum_over_time(({gpus})[$__range:1m])) / 60",
                     "{{gpu_type}}")], w=3, h=8, decimals=1),
        stat("Cost in range", "USD at the desired replicas over the dashboard's time range.",
             [target(f"sum(sum_over_time(({usd})[$__range:1m])) / 60", "USD")],
             "currencyUSD", w=3, h=8, decimals=0),
    ]


def health() -> list[dict[str, Any]]:
    return [
        row("forescale health"),
        timeseries(
            "Reconcile and training duration p95",
            "One reconcile pass (all variants) and one retrain, p95.",
            [target("histogram_quantile(0.95, sum by (le) "
                    "(rate(forescale_reconcile_duration_seconds_bucket[$__rate_interval])))",
                    "reconcile"),
             target("histogram_quantile(0.95, sum by (le) "
                    "(rate(forescale_training_duration_seconds_bucket[1h])))", "training")],
            "s", w=6, fill=0),
        timeseries(
            "Reconcile errors and training failures",
            "Reconcile errors per minute by kind, and failed fits per hour (the variant falls "
            "back to its baseline). Appear after the first error.",
            [target(f"max by (variant, kind) (rate(forescale_reconcile_errors_total{{{V}}}"
                    "[$__rate_interval])) * 60", "{{variant}} {{kind}} / min"),
             target(f"max by (variant) (increase(forescale_training_failures_total{{{V}}}[1h]))",
                    "{{variant}} training failures / h")],
            w=6, fill=0),
        timeseries(
            "Metrics source outcomes",
            "Prometheus reads per minute by signal and outcome (ok, empty, nan, stale, "
            "multiple, down).",
            [target(f"sum by (signal, outcome) (rate(forescale_source_outcomes_total{{{V}}}"
                    "[$__rate_interval])) * 60", "{{signal}} {{outcome}}")],
            w=6, stack=True, fill=30),
        timeseries(
            "Leader and ready by instance",
            "forescale_leader and forescale_ready per forescale pod.",
            [target("max by (instance) (forescale_leader)", "{{instance}} leader"),
             target("max by (instance) (forescale_ready)", "{{instance}} ready")],
            w=6, fill=0),
    ]


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each panel an id and a gridPos, filling rows of 24 columns left to right."""
    x = y = line_h = 0
    for pid, p in enumerate(panels, start=1):
        p["id"] = pid
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, line_h = x + w, max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return panels


def templating() -> dict[str, Any]:
    variant_query = "label_values(forescale_desired_replicas, variant)"
    return {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "",
         "includeAll": False, "multi": False, "options": []},
        {"name": "variant", "label": "Variant", "type": "query", "datasource": DS,
         "definition": variant_query,
         "query": {"query": variant_query, "refId": "PrometheusVariableQueryEditor-VariableQuery",
                   "qryType": 1},
         "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "current": {},
         "hide": 0, "regex": "", "options": []},
    ]}


def build() -> dict[str, Any]:
    panels = [*overview(), *per_variant(), *forecast_quality(), *slo_signals(), *cost(),
              *health()]
    return {
        "uid": "forescale",
        "title": "forescale: predictive autoscaling of vLLM",
        "description": "Forecast, decisions, SLO signals and cost per model variant.",
        "tags": ["forescale", "vllm", "autoscaling"],
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": templating(),
        "panels": _layout(panels),
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------ for tests
def _walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk(p.get("panels", []))  # collapsed rows nest their panels


def iter_panels(path: str | Path = OUT) -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows excluded, collapsed rows' panels included."""
    dash = json.loads(Path(path).read_text(encoding="utf-8"))
    return [p for p in _walk(dash["panels"]) if p.get("type") != "row"]


def iter_dashboard_queries(path: str | Path = OUT) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every target of every panel, in dashboard order."""
    return [(p["title"], t["expr"]) for p in iter_panels(path)
            for t in p.get("targets", []) if t.get("expr")]


DEFAULT_VARIABLES: Mapping[str, str] = {
    "variant": "llama-3.1-8b",
    "__rate_interval": "2m",
    "__interval": "1m",
    "__range": "1h",
}


def render_query(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace Grafana's `$name` / `${name}` variables with concrete values for Prometheus."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if forescale.json is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python deploy/grafana/build.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
