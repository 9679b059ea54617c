"""forescale's CRDs (deploy/kubernetes/crds) and their examples (deploy/kubernetes/examples).

Three independent checks: the CRDs are valid `apiextensions.k8s.io/v1` objects
(`kubernetes-validate`, offline); the examples satisfy the CRDs' own `openAPIV3Schema`
(`jsonschema`, with unknown fields refused, stricter than the server's pruning, so a typo in
an example fails here) and CEL rules; and both are applied through the official client to the
API emulator, which refuses bad objects with the 422 a cluster would give, naming the field.
The CRD must mirror the file config (controller/config.py) one-to-one: a test compares names.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.config import Behaviour, Signals, Targets, VariantConfig
from models.profile import SLO, PerfPoint, VariantProfile
from tests.support.k8s_emulator import K8sEmulator
from tests.support.k8s_schema import StructuralSchema

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "deploy" / "kubernetes" / "crds"
EXAMPLES = ROOT / "deploy" / "kubernetes" / "examples"
GROUP, VERSION = "forescale.io", "v1alpha1"
PLURALS = {"VariantAutoscaler": "variantautoscalers", "VariantGroup": "variantgroups"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def crds() -> dict[str, dict[str, Any]]:
    return {d["spec"]["names"]["kind"]: d for p in sorted(CRDS.glob("*.yaml")) for d in _docs(p)}


def schema_of(kind: str) -> dict[str, Any]:
    (version,) = crds()[kind]["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def examples() -> list[dict[str, Any]]:
    return [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in _docs(p)
            if d["apiVersion"] == f"{GROUP}/{VERSION}"]


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3.0 structural schema as a Draft 4 JSON schema (its boolean exclusive
    bounds are Draft 4's), refusing undeclared fields where the server would prune them."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "default")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in node and "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("type") == "object" and set(node.get("properties", {})) >= {"metadata"}:
        out["properties"]["metadata"] = {"type": "object"}
    return out


# ------------------------------------------------------------------------- offline


@pytest.mark.parametrize("kind", ["VariantAutoscaler", "VariantGroup"])
def test_crd_is_a_valid_apiextensions_v1_object(kind: str) -> None:
    crd = crds()[kind]
    kubernetes_validate.validate(crd, "1.30", strict=True)
    assert crd["metadata"]["name"] == f"{PLURALS[kind]}.{GROUP}"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert "status" in version["subresources"]


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", ["VariantAutoscaler", "VariantGroup"])
def test_every_spec_field_is_typed_and_described(kind: str) -> None:
    """Structural (a type everywhere) and self-documenting (`kubectl explain`): every field
    has a description, except the HPA policy's own three, documented by their parent."""
    for path, node in _walk(schema_of(kind)["properties"]["spec"], "spec"):
        assert "type" in node, f"{kind} {path} has no type (not structural)"
        if not re.search(r"policies\[\]\.(type|periodSeconds)$", path):
            assert node.get("description"), f"{kind} {path} has no description"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


MIRRORED = [
    (Signals, "spec.signals"), (Targets, "spec.targets"), (SLO, "spec.slo"),
    (VariantProfile, "spec.profile"), (PerfPoint, "spec.profile.curve[]"),
    (Behaviour, "spec.behaviour"),
]


def _node(path: str) -> dict[str, Any]:
    return dict(_walk(schema_of("VariantAutoscaler")["properties"]["spec"], "spec"))[path]


@pytest.mark.parametrize(("model", "path"), MIRRORED)
def test_crd_mirrors_the_file_config_one_to_one(model: type[Any], path: str) -> None:
    wanted = {_camel(f) for f in model.model_fields}
    declared = set(_node(path)["properties"])
    assert declared == wanted, f"{path}: {sorted(declared ^ wanted)} differ from {model.__name__}"


@pytest.mark.parametrize(("model", "path"), MIRRORED)
def test_crd_defaults_are_the_file_config_defaults(model: type[Any], path: str) -> None:
    """A default in the CRD is stored in every object: it must be the config's own."""
    for name, info in model.model_fields.items():
        prop = _node(path)["properties"][_camel(name)]
        if "default" in prop:
            assert prop["default"] == info.default, f"{path}.{_camel(name)}"


def test_variant_fields_are_in_the_crd_or_its_metadata() -> None:
    spec = schema_of("VariantAutoscaler")["properties"]["spec"]["properties"]
    mapped = {"name": "metadata.name", "deployment": "scaleTargetRef"}
    for name in VariantConfig.model_fields:
        assert _camel(name) in spec or name in mapped, f"VariantConfig.{name} has no CRD field"
    assert {"profileRef", "group", "provisioningQuantile"} <= set(spec)


def test_printer_columns_show_target_mode_state_replicas_model_age() -> None:
    (version,) = crds()["VariantAutoscaler"]["spec"]["versions"]
    columns = [(c["name"].upper(), c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("TARGET", ".spec.scaleTargetRef.name"), ("MODE", ".spec.actuation"),
        ("STATE", ".status.state"), ("CURRENT", ".status.currentReplicas"),
        ("DESIRED", ".status.desiredReplicas"), ("MODEL", ".status.model"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    assert crds()["VariantAutoscaler"]["spec"]["names"]["shortNames"] == ["va"]


@pytest.mark.parametrize("obj", examples(), ids=lambda o: o["metadata"]["name"])
def test_example_satisfies_its_crd_schema_and_rules(obj: dict[str, Any]) -> None:
    schema = schema_of(obj["kind"])
    jsonschema.Draft4Validator(to_json_schema(schema)).validate(obj)
    compiled = StructuralSchema(schema, "openAPIV3Schema")
    assert compiled.validate(compiled.default(obj)) == []


def test_json_schema_refuses_a_typo_in_an_example() -> None:
    obj = copy.deepcopy(next(o for o in examples() if o["kind"] == "VariantAutoscaler"))
    obj["spec"]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.Draft4Validator(to_json_schema(schema_of("VariantAutoscaler"))).validate(obj)


def test_profile_configmap_holds_valid_profiles() -> None:
    (cm,) = [d for d in _docs(EXAMPLES / "profiles-configmap.yaml")]
    refs = {(o["spec"]["profileRef"]["name"], o["spec"]["profileRef"]["key"])
            for o in examples() if "profileRef" in o.get("spec", {})}
    assert refs and {(cm["metadata"]["name"], k) for k in cm["data"]} >= refs
    for text in cm["data"].values():
        VariantProfile.model_validate(yaml.safe_load(text))


def test_examples_reference_a_group_that_exists() -> None:
    groups = {o["metadata"]["name"] for o in examples() if o["kind"] == "VariantGroup"}
    members = [o for o in examples() if o["kind"] == "VariantAutoscaler"]
    assert len(members) >= 2 and all(o["spec"]["group"] in groups for o in members)


# ------------------------------------------------------------------------- on the emulator


@pytest.fixture
def api(k8s_api: K8sEmulator) -> K8sEmulator:  # noqa: F811
    apiext = client.ApiextensionsV1Api(k8s_api.api_client())
    for crd in crds().values():
        apiext.create_custom_resource_definition(crd)
    return k8s_api


from tests.support.k8s_emulator import k8s_api  # noqa: E402,F401  (the fixture)


def create(api: K8sEmulator, obj: dict[str, Any]) -> dict[str, Any]:
    objects = client.CustomObjectsApi(api.api_client())
    return objects.create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, obj["metadata"].get("namespace", "llm-serving"), PLURALS[obj["kind"]],
        obj)


def test_crds_and_examples_apply_through_the_official_client(api: K8sEmulator) -> None:
    (cm,) = _docs(EXAMPLES / "profiles-configmap.yaml")
    client.CoreV1Api(api.api_client()).create_namespaced_config_map("llm-serving", cm)
    created = {o["metadata"]["name"]: create(api, o) for o in examples()}
    lws = created["llama-3.1-8b"]
    assert lws["metadata"]["generation"] == 1
    assert lws["spec"]["slo"] == {"ttftP95S": 5.0, "attainmentTarget": 0.99}  # defaults
    assert lws["spec"]["behaviour"]["targetUtilisation"] == 0.9
    assert created["llama-3.1-70b"]["spec"]["scaleTargetRef"]["apiVersion"] == "apps/v1"
    listed = client.CustomObjectsApi(api.api_client()).list_namespaced_custom_object(
        GROUP, VERSION, "llm-serving", "variantautoscalers")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["llama-3.1-70b", "llama-3.1-8b"]


def test_status_written_through_the_status_subresource(api: K8sEmulator) -> None:
    obj = create(api, next(o for o in examples() if o["metadata"]["name"] == "llama-3.1-70b"))
    objects = client.CustomObjectsApi(api.api_client())
    status = {
        "observedGeneration": 1, "desiredReplicas": 4, "currentReplicas": 2,
        "state": "predictive", "model": "mstl", "backtestScore": 0.82,
        "provisioningQuantile": 0.93, "quantileReason": "raised after 2 SLO misses",
        "forecastPeak": {"requestsPerSecond": 17.5, "horizonSeconds": 420},
        "lastReasons": ["forecast p93 needs 4", "scale-up limit +2"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Managed",
                        "message": "managing Deployment vllm-llama-70b",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    }
    written = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, "llm-serving", "variantautoscalers", obj["metadata"]["name"],
        {"status": status})
    assert written["status"] == status and written["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as err:
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, "llm-serving", "variantautoscalers", obj["metadata"]["name"],
            {"status": {"provisioningQuantile": 1.2, "state": "guessing"}})
    fields = sorted(c["field"] for c in json.loads(err.value.body)["details"]["causes"])
    assert fields == ["status.provisioningQuantile", "status.state"]


def _bad(mutate: Any) -> dict[str, Any]:
    obj = copy.deepcopy(next(o for o in examples() if o["metadata"]["name"] == "llama-3.1-70b"))
    mutate(obj["spec"])
    return obj


BAD = [
    ("wrong type", lambda s: s.update(maxReplicas="eight"), "spec.maxReplicas",
     "must be of type integer"),
    ("min above max", lambda s: s.update(minReplicas=9, maxReplicas=3), "spec.minReplicas",
     "minReplicas must not exceed maxReplicas"),
    ("quantile out of range", lambda s: s.update(provisioningQuantile=1.5),
     "spec.provisioningQuantile", "should be less than 1"),
    ("attainment out of range", lambda s: s["slo"].update(attainmentTarget=1),
     "spec.slo.attainmentTarget", "should be less than 1"),
    ("both profiles", lambda s: s.update(profileRef={"name": "p", "key": "k"}), "spec",
     "exactly one of profile (inline) or profileRef"),
    ("no profile", lambda s: s.pop("profile"), "spec", "exactly one of profile"),
    ("profile without capacity", lambda s: (s["profile"].pop("curve"),), "spec.profile",
     "profile needs either capacityRps or a curve"),
    ("unknown actuation", lambda s: s.update(actuation="scaled"), "spec.actuation",
     'Unsupported value: "scaled"'),
    ("bad HPA policy type", lambda s: s["behaviour"]["scaleUp"]["policies"][0].update(
        type="Replicas"), "spec.behaviour.scaleUp.policies[0].type", "Unsupported value"),
    ("HPA rules without a policy", lambda s: s["behaviour"]["scaleUp"].update(policies=[]),
     "spec.behaviour.scaleUp", "at least one policy unless selectPolicy is Disabled"),
    ("HPA period too long", lambda s: s["behaviour"]["scaleDown"]["policies"][0].update(
        periodSeconds=3600), "spec.behaviour.scaleDown.policies[0].periodSeconds",
     "less than or equal to 1800"),
    ("no target kind", lambda s: s["scaleTargetRef"].pop("kind"), "spec.scaleTargetRef.kind",
     "Required value"),
    ("duplicate curve point", lambda s: s["profile"]["curve"].append(
        dict(s["profile"]["curve"][0])), "spec.profile.curve", "two points at the same"),
]


@pytest.mark.parametrize(("mutate", "field", "message"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_objects_are_refused_naming_the_field(api: K8sEmulator, mutate: Any, field: str,
                                                  message: str) -> None:
    with pytest.raises(ApiException) as err:
        create(api, _bad(mutate))
    assert err.value.status == 422
    causes = json.loads(err.value.body)["details"]["causes"]
    assert any(c["field"] == field and message in c["message"] for c in causes), causes
    assert re.match(r'VariantAutoscaler\.forescale\.io "llama-3\.1-70b" is invalid',
                    json.loads(err.value.body)["message"])


def test_unknown_target_kind_is_left_to_the_controller(api: K8sEmulator) -> None:
    """The API server cannot know which kinds have /scale: it accepts, forescale reports."""
    obj = _bad(lambda s: s["scaleTargetRef"].update(kind="ConfigMap", apiVersion="v1"))
    assert create(api, obj)["spec"]["scaleTargetRef"]["kind"] == "ConfigMap"


def test_variant_group_quotas_must_be_non_negative_integers(api: K8sEmulator) -> None:
    group = next(o for o in examples() if o["kind"] == "VariantGroup")
    bad = copy.deepcopy(group)
    bad["spec"]["gpuQuotas"]["H100"] = -1
    with pytest.raises(ApiException) as err:
        create(api, bad)
    causes = json.loads(err.value.body)["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.gpuQuotas[H100]"]
    assert create(api, group)["spec"]["qualityFloor"] == 0.9
