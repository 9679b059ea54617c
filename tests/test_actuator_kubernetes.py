"""Contract tests of `KubernetesScaleTarget` against the API emulator (not a real cluster).

They pin what the reconcile loop relies on: which errors are temporary and which permanent,
that a write is conditional on what was read, that an HPA-owned Deployment is never touched,
and that every change leaves an Event on the Deployment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.k8s import (
    EVENT_REASON,
    KubernetesScaleTarget,
    ScaleResource,
    ScaleTargetRef,
    make_api_client,
    translate_error,
    truncate_utf8,
)
from controller.protocols import PermanentError, ScaleTarget, TemporaryError
from tests.support.k8s_emulator import (
    STATEFULSETS,
    K8sEmulator,
    k8s_api,  # noqa: F401  (the fixture)
    rule,
    rules_from_manifests,
)

pytestmark = pytest.mark.integration

NS = "llm"
SCALE_PATH = r"/deployments/llama-8b/scale$"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_target(api: K8sEmulator, token: str = "emulator-admin-token",
                **kw: object) -> KubernetesScaleTarget:
    return KubernetesScaleTarget(
        api.api_client(token),
        {"llama-8b": (NS, "llama-8b"), "llama-70b": (NS, "llama-70b")},
        instance="forescale-test-0",
        request_timeout_s=2.0,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def api(k8s_api: K8sEmulator) -> K8sEmulator:  # noqa: F811
    k8s_api.seed_deployment(NS, "llama-8b", replicas=2)
    k8s_api.seed_deployment(NS, "llama-70b", replicas=1)
    return k8s_api


def replicas(api: K8sEmulator, name: str = "llama-8b") -> int:
    dep = api.deployment(NS, name)
    assert dep is not None
    return int(dep["spec"]["replicas"])


def test_is_a_scale_target(api: K8sEmulator) -> None:
    target: ScaleTarget = make_target(api)
    assert target.current_replicas("llama-8b") == 2
    assert target.current_replicas("llama-70b") == 1


def test_apply_patches_the_scale_subresource_conditionally(api: K8sEmulator) -> None:
    result = make_target(api).apply("llama-8b", 5, ["forecast p90 needs 5"])
    assert (result.variant, result.previous, result.replicas, result.changed) == (
        "llama-8b", 2, 5, True)
    assert "llama-8b" in result.message and "2 to 5" in result.message
    assert replicas(api) == 5 and replicas(api, "llama-70b") == 1
    patch = next(r for r in api.requests_log if r.method == "PATCH")
    assert patch.path.endswith("/deployments/llama-8b/scale")
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["spec"] == {"replicas": 5}
    assert patch.body["metadata"]["resourceVersion"]  # conditional on what was read


def test_apply_posts_an_event_with_the_reasons(api: K8sEmulator) -> None:
    make_target(api).apply("llama-8b", 4, ["forecast p90 needs 4", "scale-up limit +2"])
    (event,) = api.events(NS)
    assert event["apiVersion"] == "events.k8s.io/v1"
    assert event["reason"] == EVENT_REASON == "ForescaleScaled"
    assert event["type"] == "Normal" and event["action"] == "Scale"
    assert event["note"] == "Scaled from 2 to 4 replicas: forecast p90 needs 4; scale-up limit +2"
    regarding = event["regarding"]
    assert (regarding["kind"], regarding["name"], regarding["namespace"]) == (
        "Deployment", "llama-8b", NS)
    assert regarding["uid"] == api.deployment(NS, "llama-8b")["metadata"]["uid"]  # type: ignore[index]
    assert event["reportingController"] == "forescale"
    assert event["reportingInstance"] == "forescale-test-0"


def test_already_at_target_changes_nothing_and_posts_nothing(api: K8sEmulator) -> None:
    rv = api.deployment(NS, "llama-8b")["metadata"]["resourceVersion"]  # type: ignore[index]
    result = make_target(api).apply("llama-8b", 2, ["steady"])
    assert (result.previous, result.replicas, result.changed) == (2, 2, False)
    assert "already at 2" in result.message
    assert api.deployment(NS, "llama-8b")["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    assert api.events() == []
    assert [r.method for r in api.requests_log if "/scale" in r.path] == ["GET"]


def test_conflict_is_retried_after_re_reading(api: K8sEmulator) -> None:
    api.fail(409, times=2, path=SCALE_PATH, method="PATCH")
    result = make_target(api).apply("llama-8b", 3, ["up"])
    assert result.changed and replicas(api) == 3
    scale_calls = [(r.method, r.status) for r in api.requests_log if "/scale" in r.path]
    assert scale_calls == [("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 409),
                           ("GET", 200), ("PATCH", 200)]


def test_real_concurrent_write_is_detected_and_the_fresh_value_reported(
    api: K8sEmulator,
) -> None:
    """Someone scales between our read and our write: the stale write is refused (409), we
    re-read, and `previous` is the value we actually replaced."""
    target = make_target(api)
    original = target._read_scale

    def read_then_interfere(ref: ScaleTargetRef, resource: ScaleResource) -> dict[str, Any]:
        scale = original(ref, resource)
        if not getattr(read_then_interfere, "done", False):
            read_then_interfere.done = True  # type: ignore[attr-defined]
            client.AppsV1Api(api.api_client()).patch_namespaced_deployment_scale(
                ref.name, ref.namespace, {"spec": {"replicas": 7}})
        return scale

    target._read_scale = read_then_interfere  # type: ignore[method-assign]
    result = target.apply("llama-8b", 4, ["up"])
    assert (result.previous, result.replicas, result.changed) == (7, 4, True)
    assert replicas(api) == 4


def test_persistent_conflict_is_temporary(api: K8sEmulator) -> None:
    api.fail(409, times=None, path=SCALE_PATH, method="PATCH")
    with pytest.raises(TemporaryError, match="conflict"):
        make_target(api, max_conflict_retries=2).apply("llama-8b", 3, ["up"])
    assert sum(r.method == "PATCH" for r in api.requests_log) == 3
    assert replicas(api) == 2


def test_forbidden_patch_is_permanent_and_names_verb_resource_namespace(
    api: K8sEmulator,
) -> None:
    token = api.add_token("readonly", [
        rule("get", "apps", "deployments/scale"),
        rule("list", "autoscaling", "horizontalpodautoscalers"),
    ])
    with pytest.raises(PermanentError) as err:
        make_target(api, token).apply("llama-8b", 3, ["up"])
    message = str(err.value)
    assert message.startswith(
        "forbidden: the ServiceAccount may not patch deployments/scale in ns llm")
    assert "check deploy/rbac.yaml" in message
    assert replicas(api) == 2


def test_forbidden_hpa_list_is_permanent(api: K8sEmulator) -> None:
    token = api.add_token("no-hpa", [rule("get,patch", "apps", "deployments/scale")])
    with pytest.raises(PermanentError, match="may not list horizontalpodautoscalers in ns llm"):
        make_target(api, token).apply("llama-8b", 3, ["up"])
    assert replicas(api) == 2


def test_missing_deployment_is_permanent(api: K8sEmulator) -> None:
    target = KubernetesScaleTarget(api.api_client(), {"ghost": (NS, "ghost")})
    with pytest.raises(PermanentError, match=r"not found.*deployments/scale llm/ghost"):
        target.current_replicas("ghost")
    with pytest.raises(PermanentError, match="no scale target configured"):
        target.current_replicas("llama-8b")


def test_unauthorized_is_permanent(api: K8sEmulator) -> None:
    with pytest.raises(PermanentError, match="unauthorized"):
        make_target(api, "expired-token").current_replicas("llama-8b")


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_throttling_are_temporary(api: K8sEmulator, status: int) -> None:
    api.fail(status, times=None, path=SCALE_PATH, method="PATCH", retry_after_s=0)
    with pytest.raises(TemporaryError, match=str(status)):
        make_target(api).apply("llama-8b", 3, ["up"])
    assert replicas(api) == 2
    assert api.events() == []


def test_throttled_reads_are_temporary_after_client_retries(api: K8sEmulator) -> None:
    api.fail(429, times=None, path=SCALE_PATH, method="GET", retry_after_s=0)
    with pytest.raises(TemporaryError, match=r"busy or failing \(429\)"):
        make_target(api).current_replicas("llama-8b")


def test_dropped_connection_is_temporary(api: K8sEmulator) -> None:
    api.drop(times=1, path=SCALE_PATH, method="PATCH")
    with pytest.raises(TemporaryError, match="could not reach the Kubernetes API to patch"):
        make_target(api).apply("llama-8b", 3, ["up"])
    assert replicas(api) == 2
    assert make_target(api).apply("llama-8b", 3, ["retry"]).changed


def test_timeout_is_temporary(api: K8sEmulator) -> None:
    api.delay(1.0, path=SCALE_PATH, method="PATCH", times=1)
    target = make_target(api)
    target.request_timeout_s = 0.2
    with pytest.raises(TemporaryError, match="could not reach"):
        target.apply("llama-8b", 3, ["up"])


def test_refuses_a_deployment_an_hpa_targets(api: K8sEmulator) -> None:
    api.seed_hpa(NS, "llama-8b-hpa", target="llama-8b")
    api.seed_hpa(NS, "unrelated", target="something-else")
    target = make_target(api)
    with pytest.raises(PermanentError) as err:
        target.apply("llama-8b", 5, ["up"])
    assert "HPA conflict" in str(err.value) and "llm/llama-8b-hpa" in str(err.value)
    assert replicas(api) == 2 and api.events() == []
    assert target.apply("llama-70b", 2, ["up"]).changed  # the other variant is free


def test_hpa_check_is_cached_briefly(api: K8sEmulator) -> None:
    clock = FakeClock()
    target = make_target(api, clock=clock, hpa_cache_s=30.0)
    target.apply("llama-8b", 3, ["up"])
    target.apply("llama-70b", 3, ["up"])  # same namespace: served from the cache
    api.seed_hpa(NS, "late-hpa", target="llama-8b")
    target.apply("llama-8b", 4, ["up"])  # cache not expired: not yet seen
    clock.now += 31
    with pytest.raises(PermanentError, match="late-hpa"):
        target.apply("llama-8b", 5, ["up"])
    hpa_lists = [r for r in api.requests_log if r.path.endswith("/horizontalpodautoscalers")]
    assert len(hpa_lists) == 2


def test_event_failure_is_logged_not_raised(api: K8sEmulator,
                                            caplog: pytest.LogCaptureFixture) -> None:
    api.fail(500, times=None, path=r"/events$")
    with caplog.at_level(logging.WARNING, logger="controller.k8s"):
        result = make_target(api).apply("llama-8b", 3, ["up"])
    assert result.changed and replicas(api) == 3
    assert api.events() == []
    assert "could not post the ForescaleScaled Event" in caplog.text


def test_event_forbidden_is_logged_not_raised(api: K8sEmulator,
                                              caplog: pytest.LogCaptureFixture) -> None:
    token = api.add_token("no-events", [rule("get,patch", "apps", "deployments/scale"),
                                        rule("list", "autoscaling", "horizontalpodautoscalers")])
    with caplog.at_level(logging.WARNING, logger="controller.k8s"):
        assert make_target(api, token).apply("llama-8b", 3, ["up"]).changed
    assert "may not create events.events.k8s.io" in caplog.text


def test_long_reasons_are_truncated_to_the_event_note_limit(api: K8sEmulator) -> None:
    make_target(api).apply("llama-8b", 3, ["é" * 2000])
    (event,) = api.events(NS)
    assert len(event["note"].encode()) <= 1024 and event["note"].endswith("...")
    assert truncate_utf8("short", 10) == "short"


def test_minimal_rbac_is_enough(api: K8sEmulator) -> None:
    """The permissions deploy/rbac.yaml must grant for scale mode, and no more."""
    token = api.add_token("forescale", [
        rule("get,patch", "apps", "deployments/scale", [NS]),
        rule("list", "autoscaling", "horizontalpodautoscalers", [NS]),
        rule("create", "events.k8s.io", "events", [NS]),
    ])
    assert make_target(api, token).apply("llama-8b", 6, ["up"]).changed
    assert len(api.events(NS)) == 1


def test_negative_replicas_are_refused_before_any_request(api: K8sEmulator) -> None:
    with pytest.raises(PermanentError, match="-1"):
        make_target(api).apply("llama-8b", -1, ["bug"])
    assert api.requests_log == []


def test_translate_error_passes_through_unknown_statuses_as_permanent() -> None:
    exc = client.ApiException(status=422, reason="Unprocessable")
    assert isinstance(translate_error(exc, "patch", "deployments/scale", "ns", "d"),
                      PermanentError)


# ----------------------------------------------------------------- make_api_client


def test_make_api_client_from_kubeconfig(api: K8sEmulator, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = api.write_kubeconfig(tmp_path / "config", context="emu")
    api_client = make_api_client(str(path), context="emu")
    try:
        target = KubernetesScaleTarget(api_client, {"v": (NS, "llama-8b")})
        assert target.current_replicas("v") == 2
    finally:
        api_client.close()


def test_make_api_client_reports_a_bad_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="could not load Kubernetes credentials"):
        make_api_client(str(tmp_path / "missing"))


def test_make_api_client_uses_the_service_account_in_a_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")
    ca.write_text("not really a cert, only read lazily")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    api_client = make_api_client()
    try:
        cfg = api_client.configuration
        assert cfg.host == "https://10.0.0.1:443"
        assert cfg.ssl_ca_cert == str(ca)
        assert "sa-token" in cfg.api_key["BearerToken"]
    finally:
        api_client.close()


def test_the_rbac_shipped_in_deploy_is_enough_to_scale(k8s_api: K8sEmulator) -> None:  # noqa: F811
    """Runs with exactly what deploy/kubernetes/rbac.yaml grants the forescale ServiceAccount."""
    import yaml

    manifest = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "rbac.yaml"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not present")
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    rules = rules_from_manifests(documents, "forescale", "forescale")
    serving_ns = next(d["metadata"]["namespace"] for d in documents
                      if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "forescale-scaler")
    k8s_api.seed_deployment(serving_ns, "llama-8b", replicas=1)
    token = k8s_api.add_token("deploy-rbac", rules)
    target = KubernetesScaleTarget(k8s_api.api_client(token), {"v": (serving_ns, "llama-8b")})
    assert target.apply("v", 2, ["up"]).changed
    assert len(k8s_api.events(serving_ns)) == 1
    with pytest.raises(PermanentError, match="forbidden"):
        KubernetesScaleTarget(k8s_api.api_client(token), {"v": ("elsewhere", "x")}).apply(
            "v", 2, ["up"])


# ----------------------------------------------------------------- any scalable workload

LWS_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "leaderworkersets.leaderworkerset.x-k8s.io"},
    "spec": {
        "group": "leaderworkerset.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "LeaderWorkerSet", "plural": "leaderworkersets",
                  "singular": "leaderworkerset", "shortNames": ["lws"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}, "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.hpaPodSelector"}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                             "properties": {"replicas": {"type": "integer", "minimum": 0,
                                                         "default": 1}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                               "properties": {"replicas": {"type": "integer"},
                                              "hpaPodSelector": {"type": "string"}}},
                },
            }},
        }],
    },
}
LWS = ScaleTargetRef(NS, "leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "llama-405b")
STS = ScaleTargetRef(NS, "apps/v1", "StatefulSet", "llama-sts")


@pytest.fixture
def workloads(api: K8sEmulator) -> K8sEmulator:
    api.seed_statefulset(NS, "llama-sts", replicas=2)
    api.install_crd(LWS_CRD)
    api.seed_custom("leaderworkerset.x-k8s.io/v1", "leaderworkersets", NS, {
        "metadata": {"name": "llama-405b"},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2}},
    })
    api.set_custom_status("leaderworkerset.x-k8s.io/v1", "leaderworkersets", NS, "llama-405b",
                          {"replicas": 1, "hpaPodSelector": "leaderworkerset.sigs.k8s.io/name="
                                                            "llama-405b"})
    return api


def any_target(api: K8sEmulator, token: str = "emulator-admin-token",
               **kw: Any) -> KubernetesScaleTarget:
    return KubernetesScaleTarget(
        api.api_client(token),
        {"dep": ScaleTargetRef.deployment(NS, "llama-8b"), "legacy": (NS, "llama-70b"),
         "sts": STS, "lws": LWS},
        instance="forescale-test-0", request_timeout_s=2.0, **kw)


def lws(api: K8sEmulator) -> dict[str, Any]:
    obj = api.get(api.custom_resource_type("leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
                  NS, "llama-405b")
    assert obj is not None
    return obj


def test_scales_a_statefulset_through_its_scale_subresource(workloads: K8sEmulator) -> None:
    target = any_target(workloads)
    assert target.current_replicas("sts") == 2
    result = target.apply("sts", 4, ["forecast p90 needs 4"])
    assert (result.previous, result.replicas, result.changed) == (2, 4, True)
    assert "statefulset llm/llama-sts from 2 to 4" in result.message
    sts = workloads.get(STATEFULSETS, NS, "llama-sts")
    assert sts is not None and sts["spec"]["replicas"] == 4
    patch = next(r for r in workloads.requests_log if r.method == "PATCH")
    assert patch.path == f"/apis/apps/v1/namespaces/{NS}/statefulsets/llama-sts/scale"
    assert patch.content_type == "application/merge-patch+json"
    (event,) = workloads.events(NS)
    assert (event["regarding"]["apiVersion"], event["regarding"]["kind"]) == (
        "apps/v1", "StatefulSet")
    assert event["regarding"]["uid"] == sts["metadata"]["uid"]


def test_scales_a_leaderworkerset_through_the_crd_scale_subresource(
    workloads: K8sEmulator,
) -> None:
    target = any_target(workloads)
    assert target.current_replicas("lws") == 1
    assert target.apply("lws", 3, ["multi-node burst"]).changed
    obj = lws(workloads)
    assert obj["spec"]["replicas"] == 3  # specReplicasPath
    assert obj["spec"]["leaderWorkerTemplate"] == {"size": 2}  # the rest untouched
    assert obj["metadata"]["generation"] == 2
    paths = [r.path for r in workloads.requests_log]
    assert "/apis/leaderworkerset.x-k8s.io/v1" in paths  # resolved through discovery
    assert (f"/apis/leaderworkerset.x-k8s.io/v1/namespaces/{NS}/leaderworkersets/llama-405b/"
            "scale") in paths
    (event,) = workloads.events(NS)
    assert event["regarding"]["kind"] == "LeaderWorkerSet"
    assert event["regarding"]["apiVersion"] == "leaderworkerset.x-k8s.io/v1"


def test_the_legacy_deployment_pair_still_means_apps_v1_deployment(
    workloads: K8sEmulator,
) -> None:
    target = any_target(workloads)
    assert target.targets["legacy"] == ScaleTargetRef(NS, "apps/v1", "Deployment", "llama-70b")
    assert target.apply("legacy", 2, ["up"]).changed and replicas(workloads, "llama-70b") == 2


def test_discovery_is_cached_per_group_version(workloads: K8sEmulator) -> None:
    clock = FakeClock()
    target = any_target(workloads, clock=clock, discovery_cache_s=600)
    for _ in range(3):
        target.current_replicas("dep")
        target.current_replicas("sts")
        target.current_replicas("lws")
    gets = [r.path for r in workloads.requests_log if r.path.count("/") == 3]
    assert sorted(gets) == ["/apis/apps/v1", "/apis/leaderworkerset.x-k8s.io/v1"]
    clock.now += 601
    target.current_replicas("sts")
    assert [r.path for r in workloads.requests_log].count("/apis/apps/v1") == 2


def test_conflict_on_a_custom_resource_scale_is_retried(workloads: K8sEmulator) -> None:
    workloads.fail(409, times=1, path=r"/leaderworkersets/llama-405b/scale$", method="PATCH")
    assert any_target(workloads).apply("lws", 2, ["up"]).changed
    assert lws(workloads)["spec"]["replicas"] == 2


def test_refuses_a_statefulset_an_hpa_targets_but_not_a_namesake_deployment(
    workloads: K8sEmulator,
) -> None:
    workloads.seed_hpa(NS, "sts-hpa", target="llama-sts", kind="StatefulSet")
    workloads.seed_deployment(NS, "llama-sts", replicas=1)  # same name, other kind
    target = KubernetesScaleTarget(workloads.api_client(), {
        "sts": STS, "dep": ScaleTargetRef.deployment(NS, "llama-sts")})
    with pytest.raises(PermanentError, match=r"HPA conflict: statefulset llm/llama-sts .*"
                                             r"llm/sts-hpa"):
        target.apply("sts", 5, ["up"])
    assert target.apply("dep", 2, ["up"]).changed


def test_a_kind_without_scale_subresource_is_refused_naming_it(workloads: K8sEmulator) -> None:
    ref = ScaleTargetRef(NS, "autoscaling/v2", "HorizontalPodAutoscaler", "x")
    target = KubernetesScaleTarget(workloads.api_client(), {"v": ref})
    with pytest.raises(PermanentError, match=r"horizontalpodautoscalers\.autoscaling has no "
                                             "scale subresource"):
        target.current_replicas("v")


def test_an_unknown_kind_is_refused_with_the_served_kinds(workloads: K8sEmulator) -> None:
    target = KubernetesScaleTarget(workloads.api_client(), {
        "v": ScaleTargetRef(NS, "apps/v1", "Deploymnet", "llama-8b")})
    with pytest.raises(PermanentError) as err:
        target.apply("v", 2, ["up"])
    assert "kind 'Deploymnet' is not served in apps/v1" in str(err.value)
    assert "Deployment" in str(err.value) and "StatefulSet" in str(err.value)


def test_an_uninstalled_crd_is_refused_and_picked_up_once_installed(api: K8sEmulator) -> None:
    target = KubernetesScaleTarget(api.api_client(), {"lws": LWS})
    with pytest.raises(PermanentError, match=r"does not serve leaderworkerset.x-k8s.io/v1 - "
                                             r"is the CRD of LeaderWorkerSet installed"):
        target.current_replicas("lws")
    api.install_crd(LWS_CRD)
    api.seed_custom("leaderworkerset.x-k8s.io/v1", "leaderworkersets", NS,
                    {"metadata": {"name": "llama-405b"}, "spec": {"replicas": 2}})
    assert target.current_replicas("lws") == 2  # no restart: a 404 is not cached


def test_a_deleted_target_resource_is_rediscovered(workloads: K8sEmulator) -> None:
    target = any_target(workloads)
    assert target.current_replicas("lws") == 1
    apiext = client.ApiextensionsV1Api(workloads.api_client())
    apiext.delete_custom_resource_definition("leaderworkersets.leaderworkerset.x-k8s.io")
    with pytest.raises(PermanentError, match="not found"):
        target.current_replicas("lws")
    with pytest.raises(PermanentError, match="is the CRD of LeaderWorkerSet installed"):
        target.current_replicas("lws")


def test_forbidden_custom_scale_names_the_resource(workloads: K8sEmulator) -> None:
    token = workloads.add_token("no-lws", [
        rule("get,patch", "apps", "deployments/scale,statefulsets/scale", [NS]),
        rule("list", "autoscaling", "horizontalpodautoscalers", [NS]),
    ])
    with pytest.raises(PermanentError) as err:
        any_target(workloads, token).apply("lws", 3, ["up"])
    assert str(err.value).startswith(
        "forbidden: the ServiceAccount may not get leaderworkersets/scale in ns llm")
    assert any_target(workloads, token).apply("sts", 3, ["up"]).changed


def test_discovery_outage_is_temporary(workloads: K8sEmulator) -> None:
    workloads.fail(503, times=None, path=r"^/apis/apps/v1$", retry_after_s=0)
    target = KubernetesScaleTarget(workloads.api_client(retries=False), {"sts": STS})
    with pytest.raises(TemporaryError, match="discovery of apps/v1"):
        target.current_replicas("sts")


def test_targets_can_be_added_and_removed_at_run_time(workloads: K8sEmulator) -> None:
    target = KubernetesScaleTarget(workloads.api_client(), {})
    target.set_target("lws", LWS)
    assert target.current_replicas("lws") == 1
    target.remove_target("lws")
    with pytest.raises(PermanentError, match="no scale target configured"):
        target.current_replicas("lws")


def test_the_rbac_shipped_in_deploy_scales_a_statefulset_but_not_an_unlisted_kind(
    k8s_api: K8sEmulator,  # noqa: F811
) -> None:
    import yaml

    manifest = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "rbac.yaml"
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    token = k8s_api.add_token("deploy-rbac", rules_from_manifests(documents, "forescale",
                                                                  "forescale"))
    k8s_api.seed_statefulset("llm-serving", "llama-sts", replicas=1)
    k8s_api.install_crd(LWS_CRD)
    k8s_api.seed_custom("leaderworkerset.x-k8s.io/v1", "leaderworkersets", "llm-serving",
                        {"metadata": {"name": "l"}, "spec": {"replicas": 1}})
    target = KubernetesScaleTarget(k8s_api.api_client(token), {
        "sts": ScaleTargetRef("llm-serving", "apps/v1", "StatefulSet", "llama-sts"),
        "lws": ScaleTargetRef("llm-serving", "leaderworkerset.x-k8s.io/v1",
                              "LeaderWorkerSet", "l")})
    assert target.apply("sts", 2, ["up"]).changed
    with pytest.raises(PermanentError, match="may not get leaderworkersets/scale"):
        target.apply("lws", 2, ["up"])  # the user adds the rule rbac.yaml's comment shows
