"""The demo service, trained and reconciled once, with its clock frozen at the demo anchor:
a deterministic real-data service for API tests, the fuzz run and the load benchmark."""

from __future__ import annotations

from controller.metrics import ForescaleMetrics
from controller.runner import DEMO_ANCHOR_DAYS, build_demo
from controller.service import Service
from controller.sources import TraceSource


def frozen_demo() -> Service:
    svc = build_demo(metrics=ForescaleMetrics())
    assert isinstance(svc.source, TraceSource)
    start, _ = svc.source.span(svc.config.variants[0].name)
    fixed = start + DEMO_ANCHOR_DAYS * 86_400
    svc.clock = lambda: fixed
    svc.retrain()
    svc.reconcile()
    return svc
