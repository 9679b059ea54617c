"""`/plan` and `/decisions` pinned byte for byte against golden files, with a fixed clock.

The service is deterministic end to end: an in-memory load curve, a clock that only moves
when the test says so, and a model of baselines only (injected, not monkeypatched), so every
number in the documents is arithmetic a machine reproduces exactly. A change to what the API
answers shows up as a diff to review; `FORESCALE_UPDATE_GOLDEN=1 pytest tests/test_api_golden.py`
rewrites the files after a deliberate change.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import httpx
import numpy as np

from controller.actuators import DryRunTarget
from controller.api import create_app
from controller.metrics import ForescaleMetrics
from controller.service import Service
from controller.training import ServedModel
from forecaster.engine import train_all
from tests.support.http import serve_app
from tests.test_service import STEP, T0, ArraySource, service_config

GOLDEN = Path(__file__).parent / "golden"


def _service() -> Service:
    t = np.arange(4 * 1440)
    load = 50.0 * (1.0 + 0.5 * np.sin(2 * math.pi * t / 1440)) + 5.0 * np.sin(t / 7.0)
    now = T0 + 3 * 86_400
    clock = {"now": now}
    svc = Service(service_config(), ArraySource(load), {"v": DryRunTarget({"v": 4})},
                  clock=lambda: clock["now"], metrics=ForescaleMetrics())
    history = svc.source.history("v", now - 3 * 86_400, now, STEP)
    models = train_all({"v": history}, horizon_steps=svc.horizon_steps(svc.config.variants[0]),
                       quantiles=svc.config.forecast.quantiles, n_jobs=1, factories=[],
                       fingerprint=svc.fingerprint)
    svc.variants["v"].model = ServedModel(models["v"])
    for k in range(6):  # three minutes of reconciles: a scale-up, then its stabilisation
        clock["now"] = now + 30 * k
        svc.reconcile()
    return svc


def _check(name: str, doc: object) -> None:
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    path = GOLDEN / name
    if os.environ.get("FORESCALE_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), \
        f"{name} changed; review the diff, then FORESCALE_UPDATE_GOLDEN=1 to accept it"


def test_plan_and_decisions_match_their_golden_files() -> None:
    svc = _service()
    with serve_app(create_app(svc)) as url:
        plan = httpx.get(f"{url}/plan", timeout=10)
        decisions = httpx.get(f"{url}/decisions", params={"variant": "v", "limit": 6},
                              timeout=10)
    assert plan.status_code == 200 and decisions.status_code == 200
    _check("plan.json", plan.json())
    _check("decisions.json", decisions.json())
