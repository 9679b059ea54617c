"""forescale's /metrics exposition pinned byte for byte against a golden file, as
prometheus/client_python's own tests do: a fresh registry, every metric given one sample with
its labels filled by their own names, `generate_latest`, compared whole. A renamed metric, a
changed HELP or TYPE, or an added, removed or reordered label fails here; dashboards
(deploy/grafana) and alerts (deploy/prometheus) read these names and labels.

Regenerate after an intended change: FORESCALE_UPDATE_GOLDEN=1 pytest tests/test_metrics.py
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from controller.metrics import ForescaleMetrics

GOLDEN = Path(__file__).parent / "golden" / "metrics_exposition.txt"


def exposition() -> str:
    registry = CollectorRegistry()
    m = ForescaleMetrics(registry)
    for metric in vars(m).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = metric._labelnames
        child = metric.labels(*[f"<{n}>" for n in names]) if names else metric
        if isinstance(metric, Gauge):
            child.set(1)  # type: ignore[union-attr]
        elif isinstance(metric, Counter):
            child.inc()  # type: ignore[union-attr]
        elif isinstance(metric, Histogram):
            child.observe(0.3)  # type: ignore[union-attr]
        else:
            raise AssertionError(f"new metric type {type(metric).__name__}: extend this test")
    return generate_latest(registry).decode()


def test_metrics_exposition_matches_the_golden_file() -> None:
    text = exposition()
    if os.environ.get("FORESCALE_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "the /metrics exposition changed: update dashboards, " \
        "alerts and tests/golden/metrics_exposition.txt together (see this module's doc)"


def test_reason_labels_are_replaced_not_accumulated() -> None:
    """A variant's previous reasons must not linger at 1 next to the new ones."""
    m = ForescaleMetrics(CollectorRegistry())
    m.record_reasons("a", ("ForecastPeak", "ScaleUpLimited"))
    m.record_reasons("a", ())
    m.record_reasons("b", ("ReactiveFloor",))
    text = generate_latest(m.registry).decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("forescale_last_decision_reason{")]
    assert sorted(lines) == [
        'forescale_last_decision_reason{reason="NoChange",variant="a"} 1.0',
        'forescale_last_decision_reason{reason="ReactiveFloor",variant="b"} 1.0']
