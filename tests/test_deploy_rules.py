"""deploy/prometheus/rules.yaml: valid for promtool, unit-tested alerts, real metric names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.metrics import ForescaleMetrics

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules.yaml"
RULE_TESTS = PROM_DIR / "rules.test.yaml"

REQUIRED_ALERTS = {
    "ForescaleForecastErrorHigh", "ForescaleReactiveFallbackTooLong",
    "ForescaleAtMaxWithUnservedDemand", "ForescaleDown", "ForescaleReconcileFailing",
    "ForescaleTrainingFailures",
}
# Names Prometheus stores for each family type (prometheus_client appends the suffixes).
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


def exported_metric_names() -> set[str]:
    """Every series name forescale's /metrics can expose."""
    names: set[str] = set()
    for family in ForescaleMetrics(CollectorRegistry()).registry.collect():
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


def promtool() -> str:
    """promtool on PATH; skipped locally without it, a failure under CI (CI=true)."""
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool not found: apt-get install -y prometheus (Debian ships promtool with it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fire_each_alert_when_expected() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS.name)], cwd=PROM_DIR,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname:\s*(\w+)", RULE_TESTS.read_text(encoding="utf-8")))
    assert tested == {a["alert"] for a in alerts()}, "every alert has a unit test"


def test_required_alerts_have_for_severity_and_annotations() -> None:
    by_name = {a["alert"]: a for a in alerts()}
    assert set(by_name) >= REQUIRED_ALERTS
    for name, a in by_name.items():
        assert re.fullmatch(r"\d+[smh]", a.get("for", "")), f"{name}: needs a `for:`"
        assert a["labels"]["severity"] in {"warning", "critical"}, name
        assert a["annotations"]["summary"].strip(), name
        assert len(a["annotations"]["description"]) > 40, name


def test_forescale_down_covers_absent_and_down_targets() -> None:
    expr = next(a["expr"] for a in alerts() if a["alert"] == "ForescaleDown")
    assert 'absent(up{job="forescale"})' in expr
    assert 'up{job="forescale"} == 0' in expr


def test_rules_use_only_metrics_forescale_exports() -> None:
    exported = exported_metric_names()
    for a in alerts():
        used = set(re.findall(r"\bforescale_[a-z_]+", a["expr"]))
        assert used <= exported, f"{a['alert']}: unknown metric(s) {used - exported}"
