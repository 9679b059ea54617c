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
