"""The VariantAutoscaler controller against the API emulator, through the official client.

Objects are created, edited and deleted with `CustomObjectsApi` as `kubectl apply` would; the
controller lists and watches them, manages the variants in a real `Service` (in-memory load,
fixed clock) whose scale-mode actuator patches the emulator's Deployments, and writes status
and Events back. The assertions read what the emulator stored and the requests it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kubernetes import client

from controller.config import VariantConfig, parse_config
from controller.crd import VariantAutoscalerController, variant_config
from controller.k8s import KubernetesScaleTarget
from controller.metrics import ForescaleMetrics
from controller.runner import Actuators
from controller.service import Service
from tests.support.k8s_emulator import K8sEmulator, k8s_api  # noqa: F401  (the fixture)
from tests.test_service import T0, ArraySource, daily_load

pytestmark = pytest.mark.integration  # starts the API emulator

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "deploy" / "kubernetes" / "crds"
GROUP, VERSION, PLURAL = "forescale.io", "v1alpha1", "variantautoscalers"
NS = "llm-serving"
NOW = T0 + 3 * 86_400


class NamedSource(ArraySource):
    """ArraySource that keeps the variant set it is told (as PrometheusSource does)."""

    def __init__(self, load: np.ndarray) -> None:
        super().__init__(load)
        self.variants: dict[str, VariantConfig] = {}


def va(name: str, **spec: Any) -> dict[str, Any]:
    """A VariantAutoscaler in scale mode; a field given as None is left out."""
    full = {"scaleTargetRef": {"kind": "Deployment", "name": name}, "actuation": "scale",
            "minReplicas": 1, "maxReplicas": 40,
            "profile": {"capacityRps": 10.0, "coldStartS": 120}, **spec}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VariantAutoscaler",
            "metadata": {"name": name, "namespace": NS},
            "spec": {k: v for k, v in full.items() if v is not None}}


class Rig:
    """The emulator with forescale's CRDs, a Service and the controller (not started)."""

    def __init__(self, api: K8sEmulator, controller_cls: type[VariantAutoscalerController]
                 = VariantAutoscalerController, model_dir: Path | None = None,
                 restart: bool = False) -> None:
        """`restart`: a second process on the same cluster (CRDs and objects already there)."""
        self.api = api
        for path in sorted(CRDS.glob("*.yaml")) if not restart else ():
            api.install_crd(yaml.safe_load(path.read_text()))
        self.objects = client.CustomObjectsApi(api.api_client())
        cfg = parse_config({
            "prometheus": {"step_s": 60, "history_days": 3},
            "schedules": {"reconcile_interval_s": 30},
            "forecast": {"horizon_s": 900,
                         **({"model_dir": str(model_dir)} if model_dir is not None else {})},
            "kubernetes": {"custom_resources": {"enabled": True, "namespaces": [NS]}},
            "variants": [{"name": "filev", "deployment": {"namespace": NS, "name": "filev"},
                          "profile": {"capacity_rps": 10.0, "cold_start_s": 120}}],
        })
        self.clock = {"now": NOW}
        self.source = NamedSource(daily_load())
        act = Actuators(ForescaleMetrics(), self.source)
        act.kube = KubernetesScaleTarget(api.api_client(), {}, hpa_cache_s=0)
        self.service = Service(cfg, self.source, {"filev": act.make(cfg.variants[0],
                                                                    cfg.mode_of(cfg.variants[0]))},
                               clock=lambda: self.clock["now"], metrics=ForescaleMetrics())
        self.service.target_factory = lambda v: act.make(v, self.service.config.mode_of(v))
        self.service.variant_listeners.append(act.follow)
        if not restart:
            api.seed_deployment(NS, "filev", replicas=1)
        self.ctl = controller_cls(api.api_client(), self.service, namespaces=[NS],
                                  resync_s=2, check_target=act.check_target,
                                  clock=lambda: self.clock["now"])

    def create(self, obj: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
        if self.api.deployment(NS, obj["spec"]["scaleTargetRef"]["name"]) is None \
                and obj["spec"]["scaleTargetRef"]["kind"] == "Deployment":
            self.api.seed_deployment(NS, obj["spec"]["scaleTargetRef"]["name"],
                                     replicas=replicas)
        created: dict[str, Any] = self.objects.create_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, NS, PLURAL, obj)
        return created

    def get(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.objects.get_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, NS, PLURAL, name)
        return got

    def condition(self, name: str, ctype: str = "Ready") -> dict[str, Any]:
        conds = self.get(name).get("status", {}).get("conditions", [])
        return next(c for c in conds if c["type"] == ctype)

    def status_writes(self, name: str) -> list[int | None]:
        return [r.status for r in self.api.requests_log if r.method in ("PUT", "PATCH")
                and r.path.endswith(f"/{PLURAL}/{name}/status")]

    def scale_writes(self, name: str) -> int:
        return sum(1 for r in self.api.requests_log if r.method in ("PUT", "PATCH")
                   and r.path.endswith(f"/deployments/{name}/scale"))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.api.events(NS) if (e.get("regarding") or {}).get("name") == name
                and e["regarding"].get("kind") == "VariantAutoscaler"]


@pytest.fixture
def rig(k8s_api: K8sEmulator) -> Rig:  # noqa: F811
    return Rig(k8s_api)


def wait_for(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- conversion
def test_an_object_converts_to_the_variant_the_file_config_would_declare(rig: Rig) -> None:
    """Every spec section, after the API server's defaults, is the file config's field."""
    stored = rig.create(va("a", selector='model_name="a", ns="x"', provisioningQuantile=0.8,
                           slo={"ttftP95S": 2.0}, targets={"queuePerReplica": 3.0},
                           signals={"queueDepth": "sum(q{$selector})"},
                           behaviour={"targetUtilisation": 0.8, "scaleUp": {
                               "policies": [{"type": "Pods", "value": 2,
                                             "periodSeconds": 60}]}},
                           profile={"capacityRps": 10.0, "coldStartS": 120,
                                    "gpuHourlyUsd": 3.5, "gpuType": "L4"}))
    file_twin = VariantConfig.model_validate({
        "name": "a", "scale_target_ref": {"namespace": NS, "kind": "Deployment", "name": "a"},
        "selector": 'model_name="a", ns="x"', "provisioning_quantile": 0.8,
        "slo": {"ttft_p95_s": 2.0}, "targets": {"queue_per_replica": 3.0},
        "signals": {"queue_depth": "sum(q{$selector})"},
        "behaviour": {"target_utilisation": 0.8, "scaleUp": {
            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}},
        "profile": {"capacity_rps": 10.0, "cold_start_s": 120, "gpu_hourly_usd": 3.5,
                    "gpu_type": "L4"},
        "min_replicas": 1, "max_replicas": 40, "actuation": "scale"})
    assert variant_config(stored) == file_twin
    rig.ctl.resync(NS)
    rt = rig.service.variants["a"]
    assert rt.origin == f"VariantAutoscaler {NS}/a" and rt.config == file_twin
    assert rt.policy.quantile == 0.8
    assert rig.condition("a")["status"] == "True"


def test_bad_objects_are_reported_with_field_and_value_and_others_stay_managed(
        rig: Rig) -> None:
    client.CoreV1Api(rig.api.api_client()).create_namespaced_config_map(NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="profiles"),
        data={"good.yaml": "capacity_rps: 10.0\ncold_start_s: 120\n",
              "bad.yaml": "capacity_rps: 10.0\ncold_start_s: -5\n"}))
    ref = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "r"}
    rig.create(va("no-such-kind", scaleTargetRef=ref))
    rig.create(va("no-scale", scaleTargetRef={"apiVersion": "forescale.io/v1alpha1",
                                              "kind": "VariantGroup", "name": "g"}))
    rig.create(va("missing-cm", profile=None, profileRef={"name": "nope", "key": "k"}))
    rig.create(va("missing-key", profile=None, profileRef={"name": "profiles", "key": "k"}))
    rig.create(va("bad-profile", profile=None, profileRef={"name": "profiles",
                                                           "key": "bad.yaml"}))
    rig.create(va("from-cm", profile=None, profileRef={"name": "profiles",
                                                       "key": "good.yaml"}))
    rig.create(va("good"))
    rig.ctl.resync(NS)
    assert {n for n, rt in rig.service.variants.items() if rt.origin != "config"} == {
        "from-cm", "good"}
    expected = {
        "no-such-kind": ("InvalidScaleTarget", "spec.scaleTargetRef.apiVersion",
                         "'argoproj.io/v1alpha1'"),
        "no-scale": ("InvalidScaleTarget", "spec.scaleTargetRef.kind", "'VariantGroup'"),
        "missing-cm": ("ProfileNotFound", "spec.profileRef.name", "'nope'"),
        "missing-key": ("ProfileNotFound", "spec.profileRef.key", "'k'"),
        "bad-profile": ("InvalidProfile", "key bad.yaml).cold_start_s", "-5"),
    }
    for name, (reason, fieldpath, value) in expected.items():
        cond = rig.condition(name)
        assert (cond["status"], cond["reason"]) == ("False", reason), cond
        assert fieldpath in cond["message"] and f"(got {value})" in cond["message"], cond
    rig.service.retrain()
    rig.service.reconcile()
    assert rig.api.deployment(NS, "good")["spec"]["replicas"] > 1  # type: ignore[index]
    assert rig.get("good")["status"]["desiredReplicas"] > 1


def test_a_variant_in_the_file_config_and_a_resource_is_refused_on_the_resource(
        rig: Rig) -> None:
    rig.create(va("filev", maxReplicas=3))
    rig.ctl.resync(NS)
    cond = rig.condition("filev")
    assert (cond["status"], cond["reason"]) == ("False", "NameConflict")
    assert "already defined by forescale's config file, which keeps running it" \
        in cond["message"]
    assert rig.service.variants["filev"].origin == "config"
    assert rig.service.variants["filev"].config.max_replicas == 10


# ---------------------------------------------------------------------------- status
def test_status_is_written_once_per_reconcile_and_only_when_it_changed(rig: Rig) -> None:
    rig.create(va("a"))
    rig.ctl.resync(NS)
    assert rig.status_writes("a") == [200]  # Ready=True, observedGeneration 1
    rig.service.retrain()
    rig.service.reconcile()
    assert rig.status_writes("a") == [200, 200]
    status = rig.get("a")["status"]
    assert status["observedGeneration"] == 1 and status["state"] == "predictive"
    assert status["model"] and status["currentReplicas"] == 1
    assert status["desiredReplicas"] > 1
    assert status["forecastPeak"]["requestsPerSecond"] > 0
    assert status["forecastPeak"]["horizonSeconds"] == 120
    assert {c["type"] for c in status["conditions"]} == {
        "Ready", "Active", "ForecastHealthy", "AbleToScale"}
    assert any(r.startswith("ForecastPeak") for r in status["lastReasons"])
    rig.service.reconcile()  # the replicas read back are the new ones: a change
    assert rig.status_writes("a") == [200, 200, 200]
    assert rig.get("a")["status"]["currentReplicas"] == status["desiredReplicas"]
    held = rig.api.deployment(NS, "a")["spec"]["replicas"]  # type: ignore[index]
    for _ in range(3):  # same clock, same load: the same decision, nothing to write
        rig.service.reconcile()
        rig.ctl.resync(NS)
    assert rig.status_writes("a") == [200, 200, 200]
    assert rig.api.deployment(NS, "a")["spec"]["replicas"] == held  # type: ignore[index]


def test_a_stale_status_write_gets_409_and_is_retried_from_a_fresh_read(rig: Rig) -> None:
    rig.create(va("a"))
    rig.ctl.resync(NS)
    # Someone else writes the status: the controller's copy is now stale (no watch runs).
    rig.api.set_custom_status(f"{GROUP}/{VERSION}", PLURAL, NS, "a", {"model": "other"})
    rig.service.retrain()
    rig.service.reconcile()
    assert rig.status_writes("a") == [200, 409, 200]
    status = rig.get("a")["status"]
    assert status["model"] != "other" and status["observedGeneration"] == 1


# ---------------------------------------------------------------------------- events
def test_events_on_the_object_for_a_scale_and_one_for_a_standing_refusal(rig: Rig) -> None:
    rig.create(va("a"))
    rig.ctl.resync(NS)
    rig.service.retrain()
    rig.service.reconcile()
    (scaled,) = rig.events("a")
    assert (scaled["type"], scaled["reason"]) == ("Normal", "SuccessfulRescale")
    assert scaled["note"].startswith("New size: ") and "ForecastPeak" in scaled["note"]
    assert scaled["regarding"]["apiVersion"] == f"{GROUP}/{VERSION}"
    assert scaled["regarding"]["uid"] == rig.get("a")["metadata"]["uid"]
    # An HPA takes the same Deployment; the load rises, so forescale would scale: refused.
    rig.api.seed_hpa(NS, "a-hpa", "a")
    rig.source.live_override = 300.0
    before = rig.scale_writes("a")
    for k in range(5):
        rig.clock["now"] = NOW + 60 * (k + 1)
        rig.service.reconcile()
    assert rig.scale_writes("a") == before
    refusals = [e for e in rig.events("a") if e["reason"] == "HPAConflict"]
    assert len(refusals) == 1, "a standing refusal is one Event, not one per reconcile"
    assert refusals[0]["type"] == "Warning" and "a-hpa" in refusals[0]["note"]
    able = rig.condition("a", "AbleToScale")
    assert (able["status"], able["reason"]) == ("False", "HPAConflict")
    # Past the series interval, the repeats are written as the Event's series count.
    rig.clock["now"] += rig.ctl.event_series_s + 60
    rig.service.reconcile()
    (refusal,) = [e for e in rig.events("a") if e["reason"] == "HPAConflict"]
    assert refusal["series"]["count"] == 6


# ---------------------------------------------------------------------------- lifecycle
def test_spec_edits_apply_without_restart_and_delete_stops_managing(rig: Rig) -> None:
    rig.create(va("a"))
    rig.ctl.resync(NS)
    rig.service.retrain()
    model = rig.service.variants["a"].model
    assert model is not None
    rig.objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a",
                                               {"spec": {"maxReplicas": 2}})
    rig.ctl.resync(NS)
    rt = rig.service.variants["a"]
    assert rt.config.max_replicas == 2 and rt.model is model  # policy only, no retrain
    rig.service.reconcile()
    assert rig.api.deployment(NS, "a")["spec"]["replicas"] <= 2  # type: ignore[index]
    assert rig.get("a")["status"]["observedGeneration"] == 2
    rig.objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a",
                                               {"spec": {"selector": 'model_name="b"'}})
    rig.ctl.resync(NS)
    assert rig.service.variants["a"].model is None  # the model's input changed: retrain
    rig.objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    rig.ctl.resync(NS)
    assert "a" not in rig.service.variants
    writes = rig.scale_writes("a")
    rig.source.live_override = 300.0
    rig.service.reconcile()
    assert rig.scale_writes("a") == writes
    assert 'variant="a"' not in _exposition(rig.service)


def _exposition(service: Service) -> str:
    from prometheus_client import generate_latest

    return generate_latest(service.metrics.registry).decode()


class ExpiringController(VariantAutoscalerController):
    """Between its first list and the watch that follows, an object is created and the
    server's watch history is compacted: the watch from the list's version gets 410."""

    created = False

    def resync(self, namespace: str) -> str:
        rv = super().resync(namespace)
        if not self.created:
            self.created = True
            client.CustomObjectsApi(self.api_client).create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, va("late"))
            self.emulator.compact()
        return rv

    emulator: K8sEmulator


@pytest.fixture
def expiring(k8s_api: K8sEmulator) -> Iterator[Rig]:  # noqa: F811
    rig = Rig(k8s_api, ExpiringController)
    rig.ctl.emulator = k8s_api  # type: ignore[attr-defined]
    yield rig
    rig.ctl.stop()


def test_a_410_restarts_the_watch_from_a_fresh_list(expiring: Rig) -> None:
    rig = expiring
    rig.api.seed_deployment(NS, "late", replicas=1)
    rig.create(va("first"))
    rig.ctl.start()
    wait_for(lambda: "late" in rig.service.variants)
    assert rig.ctl.expired[PLURAL] == 1 and rig.ctl.lists >= 2
    # The watch then follows changes as they happen.
    rig.create(va("third"))
    wait_for(lambda: "third" in rig.service.variants)
    rig.objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "first")
    wait_for(lambda: "first" not in rig.service.variants)
    # New variants are trained as they appear, without waiting for the hourly pass.
    wait_for(lambda: rig.service.variants["third"].model is not None, 60)
    # VariantGroups are watched alike: one appears, its members are planned together; it
    # goes, they are planned alone.
    rig.create(va("m1", group="pair"))
    rig.create(va("m2", group="pair"))
    rig.objects.create_namespaced_custom_object(GROUP, VERSION, NS, GROUPS, vg("pair"))
    wait_for(lambda: rig.service.group_of("m2") is not None)
    wait_for(lambda: group_status(rig, "pair").get("memberCount") == 2)
    rig.objects.delete_namespaced_custom_object(GROUP, VERSION, NS, GROUPS, "pair")
    wait_for(lambda: rig.service.group_of("m2") is None)


def test_watch_errors_back_off_and_recover(rig: Rig) -> None:
    rig.api.fail(500, times=3, path=f"/{PLURAL}$", method="GET")
    rig.create(va("a"))
    rig.ctl.backoff_max_s = 0.2
    rig.ctl.start()
    try:
        wait_for(lambda: "a" in rig.service.variants)
        assert rig.ctl.errors >= 1
    finally:
        rig.ctl.stop()


# ---------------------------------------------------------------------------- restart
def test_a_restart_serves_a_resource_variant_its_stored_model_without_retraining(
        k8s_api: K8sEmulator, tmp_path: Path) -> None:  # noqa: F811
    first = Rig(k8s_api, model_dir=tmp_path)
    first.create(va("a"))
    first.create(va("b"))
    first.ctl.resync(NS)
    first.service.retrain(["a", "b"])
    stored = first.service.variants["a"].model
    assert stored is not None and (tmp_path / "a.joblib").is_file()
    # b's query changes while the first process is down: its stored model is for other data.
    first.objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "b",
                                                 {"spec": {"selector": 'model_name="bb"'}})
    again = Rig(k8s_api, model_dir=tmp_path, restart=True)
    assert "a" not in again.service.variants  # objects are not config: the watch brings them
    again.ctl.start()
    try:
        wait_for(lambda: {"a", "b"} <= set(again.service.variants))
        loaded = again.service.variants["a"].model
        assert loaded is not None and loaded is not stored
        assert (loaded.model_name, loaded.trained.trained_to) == (
            stored.model_name, stored.trained.trained_to)
        # b is trained (its inputs changed); a, queued before it if at all, is not.
        wait_for(lambda: again.service.variants["b"].model is not None, 60)
        report = again.service.last_training
        assert report is not None and set(report.models) == {"b"}
        assert again.service.variants["a"].model is loaded
        again.service.reconcile()
        assert again.get("a")["status"]["state"] == "predictive"
    finally:
        again.ctl.stop()


# ---------------------------------------------------------------------------- groups
GROUPS = "variantgroups"


def vg(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VariantGroup",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def l4_profile(gpus: int, quality: float) -> dict[str, Any]:
    return {"capacityRps": 10.0, "coldStartS": 120, "gpuType": "L4", "gpusPerReplica": gpus,
            "quality": quality}


def group_status(rig: Rig, name: str) -> dict[str, Any]:
    got: dict[str, Any] = rig.objects.get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, NS, GROUPS, name)
    return dict(got.get("status") or {})


def replicas(rig: Rig, name: str) -> int:
    dep = rig.api.deployment(NS, name)
    assert dep is not None
    return int(dep["spec"]["replicas"])


def group_writes(rig: Rig, name: str) -> int:
    return sum(1 for r in rig.api.requests_log if r.method == "PUT"
               and r.path.endswith(f"/{GROUPS}/{name}/status"))


def test_a_variant_group_plans_its_members_together_until_it_is_deleted(rig: Rig) -> None:
    rig.create(va("big", group="chat", profile=l4_profile(2, 0.9)))
    rig.create(va("small", group="chat", profile=l4_profile(1, 0.7)))
    rig.create(va("broken", group="chat", scaleTargetRef={
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "r"}))
    rig.ctl.resync(NS)
    assert "spec.group 'chat': no VariantGroup 'chat' in namespace llm-serving, planned on " \
        "its own" in rig.condition("big")["message"]
    rig.objects.create_namespaced_custom_object(GROUP, VERSION, NS, GROUPS, vg(
        "chat", qualityFloor=0.8, gpuQuotas={"L4": 8}))
    rig.ctl.resync_groups(NS)
    chat = rig.service.group_of("big")
    assert chat is not None and chat.variants == ["big", "small"]
    assert (chat.quality_floor, chat.gpu_quotas) == (0.8, {"L4": 8})
    status = group_status(rig, "chat")
    assert (status["members"], status["memberCount"], status["observedGeneration"]) == (
        ["big", "small"], 2, 1)
    (missing,) = status["missingMembers"]
    assert missing["name"] == "broken" and missing["reason"].startswith("InvalidScaleTarget")
    (ready,) = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Planned")
    assert "missing: broken (InvalidScaleTarget" in ready["message"]
    assert "planned in VariantGroup 'chat' with 2 members" in rig.condition("big")["message"]
    # Decisions honour the group's quota; the plan routes the group's load and says so.
    rig.service.retrain()
    rig.service.reconcile()
    gpus = 2 * replicas(rig, "big") + replicas(rig, "small")
    assert gpus <= 8
    assert any(r.startswith("AtGpuQuota") and "group chat's L4 quota 8 GPUs" in r
               for r in rig.get("small")["status"]["lastReasons"])
    (scaled,) = [e for e in rig.events("small") if e["reason"] == "SuccessfulRescale"]
    assert "AtGpuQuota: group chat's L4 quota 8 GPUs" in scaled["note"]
    status = group_status(rig, "chat")
    assert status["routingWeights"]["big"] == 1.0  # small is under the quality floor
    assert status["unservedRps"] >= 0
    writes = group_writes(rig, "chat")
    rig.service.reconcile()  # same clock and load: the same plan, nothing to write
    rig.ctl.resync_groups(NS)
    assert group_writes(rig, "chat") == writes
    # Deleted: the members are planned independently (no group quota) from the next pass.
    rig.objects.delete_namespaced_custom_object(GROUP, VERSION, NS, GROUPS, "chat")
    rig.ctl.resync_groups(NS)
    assert rig.service.group_of("big") is None and rig.service.groups == []
    assert "no VariantGroup 'chat'" in rig.condition("big")["message"]
    rig.clock["now"] += 120  # past the scale-up rate limit's period
    rig.service.reconcile()
    gpus = 2 * replicas(rig, "big") + replicas(rig, "small")
    assert gpus > 8
    assert not any(r.startswith("AtGpuQuota") for r in rig.get("small")["status"]["lastReasons"])


def test_a_group_the_file_declares_and_a_group_of_one_are_refused_with_field_and_value(
        rig: Rig) -> None:
    raw = rig.service.config.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["variants"].append({**raw["variants"][0], "name": "filew",
                            "deployment": {"namespace": NS, "name": "filew"}})
    raw["groups"] = [{"name": "shared", "variants": ["filev", "filew"]}]
    rig.api.seed_deployment(NS, "filew", replicas=1)
    rig.service.apply_config(parse_config(raw))
    rig.create(va("a", group="shared"))
    rig.create(va("b", group="lonely"))
    rig.ctl.resync(NS)
    for name in ("shared", "lonely"):
        rig.objects.create_namespaced_custom_object(GROUP, VERSION, NS, GROUPS, vg(name))
    rig.ctl.resync_groups(NS)
    (shared,) = group_status(rig, "shared")["conditions"]
    assert (shared["status"], shared["reason"]) == ("False", "NameConflict")
    assert shared["message"].startswith("metadata.name: a group of this name is declared by "
                                        "forescale's config file")
    assert shared["message"].endswith("(got 'shared')")
    assert [g.name for g in rig.service.groups] == ["shared"]  # the file's, unchanged
    assert rig.service.groups[0].variants == ["filev", "filew"]
    (lonely,) = group_status(rig, "lonely")["conditions"]
    assert (lonely["status"], lonely["reason"]) == ("False", "TooFewMembers")
    assert "found: b" in lonely["message"]
    assert "the group is not planned (TooFewMembers)" in rig.condition("b")["message"]
    # A second member appears: the group is planned.
    rig.create(va("c", group="lonely"))
    rig.ctl.resync(NS)
    assert group_status(rig, "lonely")["members"] == ["b", "c"]
    assert rig.service.group_of("c") is not None
