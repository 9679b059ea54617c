"""The reconcile loop's fail-safe behaviour, on synthetic edge cases with a fixed clock.

Real traces drive the demo and integration tests; here the edge cases are made by hand so
each test isolates one fault.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.actuators import DryRunTarget
from controller.config import Config, parse_config
from controller.metrics import ForescaleMetrics
from controller.protocols import LiveSignals, PermanentError, TemporaryError
from controller.service import Service
from controller.state import FileStateStore
from forecaster.base import History
from tests.support.models import NanModel, RaisingModel

STEP = 60
T0 = 1_736_121_600.0


class ArraySource:
    """A MetricsSource over an in-memory load curve, with switchable faults."""

    def __init__(self, load: np.ndarray) -> None:
        self.load = load
        self.fail_history: Exception | None = None
        self.fail_live: Exception | None = None
        self.live_override: float | None = None

    def history(self, variant: str, start: float, end: float, step_s: int) -> History:
        if self.fail_history is not None:
            raise self.fail_history
        n = int((end - start) // step_s)
        idx = ((start - T0) // STEP + np.arange(n)).astype(int)
        values = np.where((idx >= 0) & (idx < self.load.size),
                          self.load[np.clip(idx, 0, self.load.size - 1)], np.nan)
        return History(variant, start, step_s, values)

    def live(self, variant: str, now: float) -> LiveSignals:
        if self.fail_live is not None:
            raise self.fail_live
        if self.live_override is not None:
            return LiveSignals(ts=now, request_rate=self.live_override)
        i = int((now - T0) // STEP) - 1
        return LiveSignals(ts=now, request_rate=float(self.load[i]))


def service_config(**variant: Any) -> Config:
    """The one-variant config the tests run, with `variant` fields added or replaced."""
    return parse_config({
        "prometheus": {"step_s": STEP, "history_days": 3},
        "schedules": {"reconcile_interval_s": 30},
        "forecast": {"horizon_s": 900},
        "variants": [{"name": "v", "deployment": {"namespace": "llm", "name": "v"},
                      "profile": {"capacity_rps": 10.0, "cold_start_s": 120},
                      "min_replicas": 1, "max_replicas": 40, **variant}],
    })


def make_service(load: np.ndarray, now: float, replicas: int = 5,
                 store: FileStateStore | None = None, **variant: Any) -> Service:
    cfg = service_config(**variant)
    clock = {"now": now}
    svc = Service(cfg, ArraySource(load), {"v": DryRunTarget({"v": replicas})},
                  clock=lambda: clock["now"], metrics=ForescaleMetrics(), state_store=store)
    svc.clock_box = clock  # type: ignore[attr-defined]
    return svc


def daily_load(days: int = 4, level: float = 50.0) -> np.ndarray:
    t = np.arange(days * 1440)
    return level * (1.0 + 0.5 * np.sin(2 * math.pi * t / 1440))


def metric(svc: Service, name: str, **labels: str) -> float:
    value = svc.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_holds_replicas_when_history_and_live_signals_are_missing() -> None:
    load = daily_load()
    svc = make_service(load, T0 + 3 * 86_400, replicas=7)
    src: ArraySource = svc.source  # type: ignore[assignment]
    src.fail_history = TemporaryError("prometheus down")
    src.fail_live = TemporaryError("prometheus down")
    report = svc.retrain()
    assert report.models == {}
    rec = svc.reconcile()[0]
    assert rec.desired == 7 and rec.current == 7
    assert rec.outcome != "failed"
    assert "NoForecast" in {r["code"] for r in rec.reasons}
    assert metric(svc, "forescale_reconcile_errors_total", variant="v",
                  kind="live-signals") == 1
    assert metric(svc, "forescale_training_failures_total", variant="v") == 1


def test_a_forecast_with_nan_is_ignored_and_counted() -> None:
    svc = make_service(daily_load(), T0 + 3 * 86_400, replicas=6)
    svc.retrain()
    rt = svc.variants["v"]
    assert rt.model is not None
    rt.model = NanModel(rt.model.trained)
    src: ArraySource = svc.source  # type: ignore[assignment]
    src.live_override = 1.0  # live load would allow scaling down: it must not happen
    rec = svc.reconcile()[0]
    assert rec.desired is not None and rec.desired >= 6
    assert "NaN" in rec.message
    assert metric(svc, "forescale_reconcile_errors_total", variant="v",
                  kind="forecast-nan") == 1


def test_a_forecaster_that_raises_holds_the_variant_and_says_why() -> None:
    svc = make_service(daily_load(), T0 + 3 * 86_400, replicas=6)
    svc.retrain()
    rt = svc.variants["v"]
    assert rt.model is not None
    rt.model = RaisingModel(rt.model.trained, message="model exploded")
    rec = svc.reconcile()[0]
    assert rec.outcome == "failed" and "model exploded" in rec.message
    assert svc.targets["v"].current_replicas("v") == 6
    assert metric(svc, "forescale_decisions_total", variant="v", outcome="failed") == 1


def test_reactive_floor_lifts_the_target_when_live_load_exceeds_the_forecast() -> None:
    svc = make_service(daily_load(level=20.0), T0 + 3 * 86_400, replicas=3)
    svc.retrain()
    src: ArraySource = svc.source  # type: ignore[assignment]
    src.live_override = 200.0  # a burst the forecast never saw
    rec = svc.reconcile()[0]
    util = svc.config.variants[0].behaviour.target_utilisation
    assert rec.reactive is not None and rec.reactive >= math.ceil(200 / (10 * util))
    assert "ReactiveFloor" in {r["code"] for r in rec.reasons}
    assert rec.desired is not None and rec.desired > 3


def test_permanent_actuation_error_is_recorded_not_raised() -> None:
    svc = make_service(daily_load(level=200.0), T0 + 3 * 86_400, replicas=2)
    svc.retrain()

    class Forbidden(DryRunTarget):
        def apply(self, variant: str, replicas: int, reasons: Any) -> Any:
            raise PermanentError("forbidden: may not patch deployments/scale")

    svc.targets["v"] = Forbidden({"v": 2})
    rec = svc.reconcile()[0]
    assert rec.outcome == "failed" and "forbidden" in rec.message
    assert metric(svc, "forescale_reconcile_errors_total", variant="v", kind="actuate") == 1


def test_followers_decide_but_do_not_actuate() -> None:
    svc = make_service(daily_load(level=200.0), T0 + 3 * 86_400, replicas=2)
    svc.is_leader = lambda: False
    svc.retrain()
    rec = svc.reconcile()[0]
    assert rec.outcome == "follower"
    assert svc.targets["v"].current_replicas("v") == 2


def test_restart_keeps_the_stabilisation_window(tmp_path: Path) -> None:
    """A restarted process must not scale down inside a window the old one opened."""
    load = daily_load(level=10.0)
    store = FileStateStore(tmp_path / "state.json")
    now = T0 + 3 * 86_400
    first = make_service(load, now, replicas=4, store=store)
    first.retrain()
    src: ArraySource = first.source  # type: ignore[assignment]
    src.live_override = 300.0
    high = first.reconcile()[0].desired
    assert high is not None and high > 4
    # New process, one minute later, load has collapsed.
    second = make_service(load, now + 60, replicas=high, store=store)
    assert second.variants["v"].log, "decision history must survive the restart"
    second.retrain()
    src2: ArraySource = second.source  # type: ignore[assignment]
    src2.live_override = 1.0
    rec = second.reconcile()[0]
    assert rec.desired == high, rec.reasons
    assert "ScaleDownStabilized" in {r["code"] for r in rec.reasons}


def test_restart_keeps_the_capacity_correction_of_the_same_profile(tmp_path: Path) -> None:
    """What the live fleet taught about capacity survives a restart; a state file whose
    correction was of another profile's capacity (re-measured since) is not taken."""
    from models.capacity import CorrectionState

    load = daily_load(level=10.0)
    store = FileStateStore(tmp_path / "state.json")
    now = T0 + 3 * 86_400
    first = make_service(load, now, replicas=4, store=store)
    first.retrain()
    first.reconcile()
    policy = first.variants["v"].policy
    policy.capacity_state = CorrectionState(0.8, 12)
    first.persist()
    second = make_service(load, now + 60, replicas=4, store=store)
    restored = second.variants["v"].policy
    assert restored.capacity_rps == pytest.approx(0.8 * policy.settings.capacity_rps)
    assert restored.capacity_reason.startswith("restored x0.80")
    # Another profile: the saved factor corrected a different number.
    data = json.loads((tmp_path / "state.json").read_text())
    data["variants"]["v"]["capacity"][0] *= 2
    (tmp_path / "state.json").write_text(json.dumps(data))
    third = make_service(load, now + 120, replicas=4, store=store)
    assert third.variants["v"].policy.capacity_state.factor == 1.0


@pytest.mark.parametrize(("cold_start_s", "explicit", "held_at"), [
    (600.0, None, 450.0),  # default: the cold start (longer than the 60 s step)
    (120.0, 450, 400.0),  # an explicit window wins (integer seconds, as in the HPA)
])
def test_scale_down_waits_a_cold_start_unless_configured(
        cold_start_s: float, explicit: int | None, held_at: float) -> None:
    """By default a lower recommendation must hold for the variant's cold start: a replica
    removed and re-ordered sooner costs more GPU time than it saved."""
    load = daily_load(level=10.0)
    now = T0 + 3 * 86_400
    behaviour = {} if explicit is None else {
        "scaleDown": {"stabilizationWindowSeconds": explicit}}
    svc = make_service(load, now, replicas=4, behaviour=behaviour,
                       profile={"capacity_rps": 10.0, "cold_start_s": cold_start_s})
    svc.retrain()
    src: ArraySource = svc.source  # type: ignore[assignment]
    src.live_override = 300.0
    high = svc.reconcile()[0].desired
    assert high is not None and high > 4
    src.live_override = 1.0
    svc.clock_box["now"] = now + held_at  # type: ignore[attr-defined]
    held = svc.reconcile()[0]
    assert held.desired == high and "ScaleDownStabilized" in {r["code"] for r in held.reasons}
    svc.clock_box["now"] = now + (explicit or cold_start_s) + 60  # type: ignore[attr-defined]
    later = svc.reconcile()[0].desired
    assert later is not None and later < high


def test_corrupt_state_file_is_ignored_with_an_error(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "state.json"
    p.write_text("{not json")
    svc = make_service(daily_load(), T0 + 3 * 86_400, store=FileStateStore(p))
    assert svc.variants["v"].scaling is None
    assert "unreadable" in caplog.text


def two_variant_service(load: np.ndarray, quota: int, **extra: Any) -> Service:
    variant = {"deployment": {"namespace": "llm", "name": "x"}, "min_replicas": 1,
               "max_replicas": 40}
    cfg = parse_config({
        "prometheus": {"step_s": STEP, "history_days": 3},
        "forecast": {"horizon_s": 900},
        "gpu_quotas": {"L4": quota},
        "variants": [
            {**variant, "name": "big", "profile": {"capacity_rps": 10.0, "cold_start_s": 120,
                                                   "gpu_type": "L4", "gpus_per_replica": 2,
                                                   "quality": 0.9}},
            {**variant, "name": "small", "profile": {"capacity_rps": 10.0, "cold_start_s": 120,
                                                     "gpu_type": "L4", "quality": 0.7}}],
        **extra,
    })
    now = T0 + 3 * 86_400
    return Service(cfg, ArraySource(load), {"big": DryRunTarget({"big": 2}),
                                            "small": DryRunTarget({"small": 2})},
                   clock=lambda: now, metrics=ForescaleMetrics())


def test_gpu_quota_caps_scale_up_and_says_so() -> None:
    svc = two_variant_service(daily_load(level=100.0), quota=12)
    svc.retrain()
    big, small = svc.reconcile()
    gpus = big.desired * 2 + small.desired  # type: ignore[operator]
    assert gpus <= 12
    assert "AtGpuQuota" in {r["code"] for r in small.reasons}
    # Demand the quota leaves unserved: the same figure on /metrics and in /plan.
    from controller.api import _plan

    decision = svc.variants["small"].last_decision
    assert decision is not None and small.demand is not None and small.desired is not None
    assert decision.unserved_rps == pytest.approx(
        max(0.0, small.demand - small.desired * decision.capacity_per_replica))
    planned = {i.variant: i.unserved_rps for i in _plan(svc).variants}
    for name in ("big", "small"):
        assert planned[name] == metric(svc, "forescale_unserved_demand", variant=name)


def test_variant_groups_get_routing_weights_and_report_unserved_demand() -> None:
    svc = two_variant_service(daily_load(level=100.0), quota=6, groups=[
        {"name": "chat", "variants": ["big", "small"], "quality_floor": 0.5}])
    svc.retrain()
    svc.reconcile()
    a = svc.allocation
    assert a is not None and a.solver in ("milp", "greedy")
    weights = a.routing["chat"]
    assert set(weights) <= {"big", "small"} and abs(sum(weights.values()) - 1.0) < 1e-6
    assert a.unserved_rps["chat"] > 0  # 6 GPUs cannot serve ~100 req/s at 10 req/s each


def test_headroom_is_calibrated_on_the_forecast_record_after_a_day_of_windows() -> None:
    """Before the record holds CALIBRATION_MIN_WINDOWS windows the feedback tuner moves the
    quantile; then the calibrator chooses it, within the forecast's levels, and says why."""
    from models.headroom import CALIBRATION_MIN_WINDOWS

    rng = np.random.default_rng(0)
    load = daily_load(days=5, level=40.0) * rng.lognormal(0.0, 0.15, 5 * 1440)
    now = T0 + 3 * 86_400
    svc = make_service(load, now)
    svc.retrain()
    rt = svc.variants["v"]
    # The tuner chooses once an hour: run to the first hour after the record is long enough.
    for k in range(CALIBRATION_MIN_WINDOWS + 60):
        svc.clock_box["now"] = now + k * STEP  # type: ignore[attr-defined]
        if k == 10:
            assert rt.headroom_reason.startswith("feedback tuner")
        svc.reconcile()
    assert rt.calibrator is not None and len(rt.calibrator) >= CALIBRATION_MIN_WINDOWS
    assert rt.headroom_reason.startswith("calibrated: estimated miss")
    assert 0.5 <= rt.headroom.quantile <= max(rt.calibrator.levels)
    assert metric(svc, "forescale_provisioning_quantile", variant="v") == rt.headroom.quantile
    from controller.api import _variant_out

    out = _variant_out(svc, "v")  # what /variants shows an operator
    assert out.provisioning_quantile == rt.headroom.quantile
    assert out.headroom == rt.headroom_reason


def test_config_reload_rebuilds_a_calibrator_built_on_the_old_settings() -> None:
    """The calibrator's shortfall model derives from the variant's config; after a reload
    that changes it (here the utilisation target) it must not keep judging misses by the
    old one."""
    svc = make_service(daily_load(), T0 + 3 * 86_400)
    svc.retrain()
    svc.reconcile()
    rt = svc.variants["v"]
    before = rt.calibrator
    util = svc.config.variants[0].behaviour.target_utilisation
    assert before is not None and before.model.capacity_factor == pytest.approx(1 / util)
    svc.reconcile()
    assert rt.calibrator is before  # unchanged config: the record is kept
    svc.apply_config(service_config(behaviour={"target_utilisation": 0.7}))
    svc.reconcile()
    assert rt.calibrator is not None and rt.calibrator is not before
    assert rt.calibrator.model.capacity_factor == pytest.approx(1 / 0.7)


def test_gaps_in_the_history_are_counted_and_shown_not_read_as_zero() -> None:
    """Windows with no samples between the first and last one are missing data: counted
    once per retrain, shown by /forecast; the windows before the series began are not."""
    import httpx

    from controller.api import create_app
    from tests.support.http import serve_app

    load = daily_load()
    load[:600] = np.nan  # the variant did not exist yet: not gaps
    load[2000:2037] = np.nan  # 37 minutes lost to a scrape outage: gaps
    svc = make_service(load, T0 + 3 * 86_400)
    svc.retrain(["v"])
    assert svc.variants["v"].history_gaps == 37
    assert svc.variants["v"].model is not None
    with serve_app(create_app(svc)) as url:
        doc = httpx.get(f"{url}/forecast", params={"variant": "v"}, timeout=10).json()
    assert doc["forecasts"][0]["history_gaps"] == 37
    assert min(min(q["values"]) for q in doc["forecasts"][0]["quantiles"]) > 0
