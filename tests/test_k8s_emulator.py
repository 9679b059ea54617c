"""Contract tests of the API emulator, through the official `kubernetes` client.

Each test states a behaviour of the real kube-apiserver (API reference / api-concepts) that
forescale relies on, and checks the emulator reproduces it, so tests written against the
emulator mean something for a cluster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config
from kubernetes.dynamic import DynamicClient

from tests.support.k8s_emulator import (
    K8sEmulator,
    PolicyRule,
    json_patch,
    k8s_api,  # noqa: F401  (the fixture)
    matches_selector,
    merge_patch,
    rule,
    selector_string,
)

pytestmark = pytest.mark.integration

NS = "prod"


def status_of(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == exc.status
    return body  # type: ignore[no-any-return]


def raw(api: K8sEmulator, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """Send a body the typed client would refuse to build, to test the server's validation."""
    with urllib3.PoolManager(retries=False) as pool:
        resp = pool.request(method, api.url + path, body=json.dumps(body).encode(), headers={
            "Authorization": "Bearer emulator-admin-token", "Content-Type": "application/json"})
    return resp.status, json.loads(resp.data)


def deployment_body(name: str, replicas: int = 1, labels: dict[str, str] | None = None) -> dict[
    str, Any
]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "c", "image": "x"}]}},
        },
    }


@pytest.fixture
def apps(k8s_api: K8sEmulator) -> client.AppsV1Api:  # noqa: F811
    return client.AppsV1Api(k8s_api.api_client())


# ----------------------------------------------------------------- deployments


def test_create_sets_server_fields_and_duplicate_is_already_exists(
    apps: client.AppsV1Api,
) -> None:
    created = apps.create_namespaced_deployment(NS, deployment_body("web", 2))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.generation == 1
    assert created.metadata.namespace == NS
    assert created.status.replicas == 2
    with pytest.raises(ApiException) as err:
        apps.create_namespaced_deployment(NS, deployment_body("web"))
    assert err.value.status == 409
    status = status_of(err.value)
    assert status["reason"] == "AlreadyExists"
    assert status["message"] == 'deployments.apps "web" already exists'
    assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}


def test_missing_deployment_is_not_found_with_status_body(apps: client.AppsV1Api) -> None:
    with pytest.raises(ApiException) as err:
        apps.read_namespaced_deployment("ghost", NS)
    assert err.value.status == 404
    status = status_of(err.value)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'deployments.apps "ghost" not found'
    with pytest.raises(ApiException) as err:
        apps.read_namespaced_deployment_scale("ghost", NS)
    assert err.value.status == 404


def test_list_filters_by_namespace_and_label_selector(
    k8s_api: K8sEmulator, apps: client.AppsV1Api  # noqa: F811
) -> None:
    k8s_api.seed_deployment(NS, "llama-8b", labels={"app": "llm", "size": "8b"})
    k8s_api.seed_deployment(NS, "llama-70b", labels={"app": "llm", "size": "70b"})
    k8s_api.seed_deployment(NS, "web", labels={"app": "web"})
    k8s_api.seed_deployment("other", "llama-1b", labels={"app": "llm", "size": "1b"})

    def names(**kw: Any) -> list[str]:
        return [d.metadata.name for d in apps.list_namespaced_deployment(NS, **kw).items]

    assert names() == ["llama-70b", "llama-8b", "web"]
    assert names(label_selector="app=llm") == ["llama-70b", "llama-8b"]
    assert names(label_selector="app=llm,size!=8b") == ["llama-70b"]
    assert names(label_selector="size in (8b,1b)") == ["llama-8b"]
    assert names(label_selector="!size") == ["web"]
    everywhere = apps.list_deployment_for_all_namespaces(label_selector="app=llm")
    assert len(everywhere.items) == 3
    assert int(everywhere.metadata.resource_version) >= 4


def test_resource_version_increments_on_every_write_and_generation_on_spec_change(
    k8s_api: K8sEmulator, apps: client.AppsV1Api  # noqa: F811
) -> None:
    first = k8s_api.seed_deployment(NS, "web", replicas=1)
    rv0 = int(first["metadata"]["resourceVersion"])
    labelled = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"t": "1"}}})
    assert int(labelled.metadata.resource_version) > rv0
    assert labelled.metadata.generation == 1  # metadata-only change
    scaled = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 3}})
    assert int(scaled.metadata.resource_version) > int(labelled.metadata.resource_version)
    assert scaled.metadata.generation == 2
    assert scaled.status.observed_generation == 2
    same = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 3}})
    assert same.metadata.resource_version == scaled.metadata.resource_version  # no-op write


def test_update_with_stale_resource_version_conflicts(apps: client.AppsV1Api,
                                                      k8s_api: K8sEmulator) -> None:  # noqa: F811
    k8s_api.seed_deployment(NS, "web")
    stale = apps.read_namespaced_deployment("web", NS)
    apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 4}})
    stale.spec.replicas = 9
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment("web", NS, stale)
    assert err.value.status == 409
    assert status_of(err.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(err.value)["message"]


# ----------------------------------------------------------------- scale subresource


def test_scale_get_serves_autoscaling_v1_scale(k8s_api: K8sEmulator,  # noqa: F811
                                               apps: client.AppsV1Api) -> None:
    dep = k8s_api.seed_deployment(NS, "llama", replicas=3, labels={"app": "llama", "tier": "a"})
    scale = apps.read_namespaced_deployment_scale("llama", NS)
    assert scale.api_version == "autoscaling/v1" and scale.kind == "Scale"
    assert scale.spec.replicas == 3 and scale.status.replicas == 3
    assert scale.status.selector == "app=llama,tier=a"
    assert scale.metadata.uid == dep["metadata"]["uid"]
    assert scale.metadata.resource_version == dep["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/merge-patch+json", {"spec": {"replicas": 5}}),
        ("application/strategic-merge-patch+json", {"spec": {"replicas": 5}}),
        ("application/json-patch+json", [{"op": "replace", "path": "/spec/replicas",
                                          "value": 5}]),
    ],
)
def test_scale_patch_changes_spec_replicas_in_every_patch_format(
    k8s_api: K8sEmulator, apps: client.AppsV1Api, content_type: str, body: Any  # noqa: F811
) -> None:
    k8s_api.seed_deployment(NS, "llama", replicas=2)
    scale = apps.patch_namespaced_deployment_scale("llama", NS, body, _content_type=content_type)
    assert scale.spec.replicas == 5
    dep = k8s_api.deployment(NS, "llama")
    assert dep is not None
    assert dep["spec"]["replicas"] == 5 and dep["metadata"]["generation"] == 2
    assert k8s_api.requests_log[-1].content_type == content_type


def test_client_default_patch_of_a_dict_is_strategic_merge(k8s_api: K8sEmulator,  # noqa: F811
                                                           apps: client.AppsV1Api) -> None:
    k8s_api.seed_deployment(NS, "llama", replicas=2)
    apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 4}})
    assert k8s_api.requests_log[-1].content_type == "application/strategic-merge-patch+json"


def test_scale_put_with_stale_resource_version_conflicts(k8s_api: K8sEmulator,  # noqa: F811
                                                         apps: client.AppsV1Api) -> None:
    k8s_api.seed_deployment(NS, "llama", replicas=2)
    read = apps.read_namespaced_deployment_scale("llama", NS)
    read.spec.replicas = 6
    written = apps.replace_namespaced_deployment_scale("llama", NS, read)
    assert written.spec.replicas == 6
    assert int(written.metadata.resource_version) > int(read.metadata.resource_version)
    read.spec.replicas = 7  # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment_scale("llama", NS, read)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"
    unconditional = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                     "metadata": {"name": "llama", "namespace": NS}, "spec": {"replicas": 7}}
    assert apps.replace_namespaced_deployment_scale("llama", NS, unconditional).spec.replicas == 7


def test_scale_merge_patch_with_stale_resource_version_conflicts(
    k8s_api: K8sEmulator, apps: client.AppsV1Api  # noqa: F811
) -> None:
    dep = k8s_api.seed_deployment(NS, "llama", replicas=2)
    old_rv = dep["metadata"]["resourceVersion"]
    apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 3}})
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale(
            "llama", NS, {"metadata": {"resourceVersion": old_rv}, "spec": {"replicas": 9}},
            _content_type="application/merge-patch+json",
        )
    assert err.value.status == 409
    assert apps.read_namespaced_deployment_scale("llama", NS).spec.replicas == 3


def test_scale_rejects_negative_replicas_as_invalid(k8s_api: K8sEmulator,  # noqa: F811
                                                    apps: client.AppsV1Api) -> None:
    k8s_api.seed_deployment(NS, "llama", replicas=2)
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": -1}})
    assert err.value.status == 422
    assert status_of(err.value)["reason"] == "Invalid"
    assert "spec.replicas" in status_of(err.value)["message"]


# ----------------------------------------------------------------- HPAs, Leases, Events


def test_hpas_can_be_created_and_listed(k8s_api: K8sEmulator) -> None:  # noqa: F811
    hpa_api = client.AutoscalingV2Api(k8s_api.api_client())
    body = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "llama-hpa"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "llama"}, "maxReplicas": 5},
    }
    hpa_api.create_namespaced_horizontal_pod_autoscaler(NS, body)
    listed = hpa_api.list_namespaced_horizontal_pod_autoscaler(NS).items
    assert [h.spec.scale_target_ref.name for h in listed] == ["llama"]
    assert hpa_api.list_namespaced_horizontal_pod_autoscaler("other").items == []
    code, status = raw(k8s_api, "POST", f"/apis/autoscaling/v2/namespaces/{NS}/"
                       "horizontalpodautoscalers", {"metadata": {"name": "bad"},
                                                    "spec": {"maxReplicas": 3}})
    assert code == 422 and status["reason"] == "Invalid"
    assert "spec.scaleTargetRef" in status["message"]


def test_lease_update_is_optimistic(k8s_api: K8sEmulator) -> None:  # noqa: F811
    coord = client.CoordinationV1Api(k8s_api.api_client())
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name="lock"),
                           spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=5))
    coord.create_namespaced_lease(NS, lease)
    with pytest.raises(ApiException) as err:
        coord.create_namespaced_lease(NS, lease)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"
    mine = coord.read_namespaced_lease("lock", NS)
    theirs = coord.read_namespaced_lease("lock", NS)
    theirs.spec.holder_identity = "b"
    coord.replace_namespaced_lease("lock", NS, theirs)
    mine.spec.holder_identity = "a2"
    with pytest.raises(ApiException) as err:
        coord.replace_namespaced_lease("lock", NS, mine)
    assert err.value.status == 409
    assert coord.read_namespaced_lease("lock", NS).spec.holder_identity == "b"
    assert (k8s_api.lease(NS, "lock") or {})["spec"]["holderIdentity"] == "b"


def test_events_are_stored_from_both_event_apis(k8s_api: K8sEmulator) -> None:  # noqa: F811
    api_client = k8s_api.api_client()
    client.EventsV1Api(api_client).create_namespaced_event(NS, {
        "metadata": {"name": "llama.1"}, "eventTime": "2025-01-01T00:00:00.000001Z",
        "reportingController": "forescale", "reportingInstance": "forescale-0",
        "action": "Scale", "reason": "ForescaleScaled", "type": "Normal", "note": "hi",
        "regarding": {"kind": "Deployment", "name": "llama", "namespace": NS},
    })
    client.CoreV1Api(api_client).create_namespaced_event(NS, {
        "metadata": {"generateName": "llama."}, "reason": "Legacy", "message": "old api",
        "involvedObject": {"kind": "Deployment", "name": "llama", "namespace": NS},
    })
    events = k8s_api.events(NS)
    assert [e["reason"] for e in events] == ["ForescaleScaled", "Legacy"]
    assert events[0]["apiVersion"] == "events.k8s.io/v1" and events[1]["apiVersion"] == "v1"
    assert events[1]["metadata"]["name"].startswith("llama.")


def test_events_k8s_io_requires_the_fields_the_server_requires(
    k8s_api: K8sEmulator,  # noqa: F811
) -> None:
    events_api = client.EventsV1Api(k8s_api.api_client())
    with pytest.raises(ApiException) as err:
        events_api.create_namespaced_event(NS, {"metadata": {"name": "e"},
                                                "eventTime": "2025-01-01T00:00:00.000001Z",
                                                "reason": "X", "type": "Normal"})
    assert err.value.status == 422
    assert "reportingController" in status_of(err.value)["message"]
    code, _ = raw(k8s_api, "POST", f"/apis/events.k8s.io/v1/namespaces/{NS}/events",
                  {"metadata": {"name": "e"}, "reason": "X"})
    assert code == 422
    assert k8s_api.events() == []


# ----------------------------------------------------------------- authn / RBAC


def test_requests_without_a_known_token_are_unauthorized(k8s_api: K8sEmulator) -> None:  # noqa: F811
    k8s_api.seed_deployment(NS, "llama")
    for token in (None, "not-a-token"):
        apps = client.AppsV1Api(k8s_api.api_client(token))
        with pytest.raises(ApiException) as err:
            apps.read_namespaced_deployment_scale("llama", NS)
        assert err.value.status == 401
        assert status_of(err.value)["reason"] == "Unauthorized"


def test_rbac_allows_only_granted_verbs_resources_and_namespaces(
    k8s_api: K8sEmulator,  # noqa: F811
) -> None:
    k8s_api.seed_deployment(NS, "llama")
    k8s_api.seed_deployment("other", "llama")
    token = k8s_api.add_token("reader", [rule("get", "apps", "deployments/scale", [NS])],
                              user="system:serviceaccount:forescale:forescale")
    apps = client.AppsV1Api(k8s_api.api_client(token))
    assert apps.read_namespaced_deployment_scale("llama", NS).spec.replicas == 1
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}})
    assert err.value.status == 403
    status = status_of(err.value)
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        'deployments.apps "llama" is forbidden: User "system:serviceaccount:forescale:forescale" '
        'cannot patch resource "deployments/scale" in API group "apps" in the namespace "prod"'
    )
    for call in (lambda: apps.read_namespaced_deployment("llama", NS),  # subresource only
                 lambda: apps.read_namespaced_deployment_scale("llama", "other")):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403
    assert k8s_api.deployment(NS, "llama")["spec"]["replicas"] == 1  # type: ignore[index]


def test_rbac_resource_names_restrict_to_named_objects(k8s_api: K8sEmulator) -> None:  # noqa: F811
    coord = client.CoordinationV1Api(k8s_api.api_client(k8s_api.add_token("t", [
        rule("create", "coordination.k8s.io", "leases"),
        PolicyRule(("get", "update"), ("coordination.k8s.io",), ("leases",),
                   resource_names=("mine",)),
    ])))
    for name in ("mine", "other"):
        coord.create_namespaced_lease(NS, {"metadata": {"name": name}, "spec": {}})
    assert coord.read_namespaced_lease("mine", NS).metadata.name == "mine"
    with pytest.raises(ApiException) as err:
        coord.read_namespaced_lease("other", NS)
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        coord.list_namespaced_lease(NS)
    assert err.value.status == 403


def test_rbac_wildcard_subresource_rule(k8s_api: K8sEmulator) -> None:  # noqa: F811
    k8s_api.seed_deployment(NS, "llama")
    token = k8s_api.add_token("scaler", [rule("get,patch", "apps", "*/scale")])
    apps = client.AppsV1Api(k8s_api.api_client(token))
    apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}})
    with pytest.raises(ApiException) as err:
        apps.list_namespaced_deployment(NS)
    assert err.value.status == 403
    assert "cannot list resource \"deployments\"" in status_of(err.value)["message"]


# ----------------------------------------------------------------- faults


def test_injected_500s_affect_only_the_next_n_matching_requests(
    k8s_api: K8sEmulator, apps: client.AppsV1Api  # noqa: F811
) -> None:
    k8s_api.seed_deployment(NS, "llama")
    k8s_api.fail(500, times=2, path=r"/scale$", method="PATCH")
    apps.read_namespaced_deployment_scale("llama", NS)  # GET does not match
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}})
        assert err.value.status == 500
        assert status_of(err.value)["reason"] == "InternalError"
    apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}})
    assert [r.fault for r in k8s_api.requests_log] == [None, "status 500", "status 500", None]


def test_injected_429_carries_retry_after(k8s_api: K8sEmulator) -> None:  # noqa: F811
    k8s_api.seed_deployment(NS, "llama")
    apps = client.AppsV1Api(k8s_api.api_client(retries=False))
    k8s_api.fail(429, times=1, retry_after_s=7)
    with pytest.raises(ApiException) as err:
        apps.read_namespaced_deployment_scale("llama", NS)
    assert err.value.status == 429
    assert err.value.headers["Retry-After"] == "7"
    assert status_of(err.value)["details"]["retryAfterSeconds"] == 7


def test_client_retries_get_after_429_with_retry_after(k8s_api: K8sEmulator,  # noqa: F811
                                                       apps: client.AppsV1Api) -> None:
    """urllib3's default Retry honours Retry-After on idempotent requests: worth knowing."""
    k8s_api.seed_deployment(NS, "llama")
    k8s_api.fail(429, times=1, retry_after_s=0)
    assert apps.read_namespaced_deployment_scale("llama", NS).spec.replicas == 1
    assert [r.status for r in k8s_api.requests_log] == [429, 200]


def test_injected_409_is_a_conflict_status(k8s_api: K8sEmulator,  # noqa: F811
                                           apps: client.AppsV1Api) -> None:
    k8s_api.seed_deployment(NS, "llama")
    k8s_api.fail(409, path="/scale$")
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}})
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"


def test_dropped_connection_gets_no_response(k8s_api: K8sEmulator,  # noqa: F811
                                             apps: client.AppsV1Api) -> None:
    k8s_api.seed_deployment(NS, "llama", replicas=1)
    k8s_api.drop(times=1, method="PATCH")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}})
    assert k8s_api.deployment(NS, "llama")["spec"]["replicas"] == 1  # type: ignore[index]
    assert apps.patch_namespaced_deployment_scale("llama", NS,
                                                  {"spec": {"replicas": 2}}).spec.replicas == 2


def test_latency_delays_matching_requests(k8s_api: K8sEmulator,  # noqa: F811
                                          apps: client.AppsV1Api) -> None:
    k8s_api.seed_deployment(NS, "llama")
    k8s_api.delay(0.3, path="/scale$", times=1)
    started = time.monotonic()
    apps.read_namespaced_deployment_scale("llama", NS)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    apps.read_namespaced_deployment_scale("llama", NS)
    assert time.monotonic() - started < 0.3
    k8s_api.delay(2.0)
    with pytest.raises(urllib3.exceptions.HTTPError):
        client.AppsV1Api(k8s_api.api_client(retries=False)).read_namespaced_deployment_scale(
            "llama", NS, _request_timeout=0.2)
    k8s_api.clear_faults()


def test_requests_log_records_who_did_what(k8s_api: K8sEmulator,  # noqa: F811
                                           apps: client.AppsV1Api) -> None:
    k8s_api.seed_deployment(NS, "llama")
    apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}})
    entry = k8s_api.requests_log[-1]
    assert (entry.method, entry.path, entry.status) == (
        "PATCH", "/apis/apps/v1/namespaces/prod/deployments/llama/scale", 200)
    assert entry.user == "system:admin" and entry.body == {"spec": {"replicas": 2}}
    assert entry.info is not None and entry.info.verb == "patch"
    assert entry.info.rbac_resource == "deployments/scale"


def test_kubeconfig_written_by_the_emulator_loads_with_the_client(
    k8s_api: K8sEmulator, tmp_path: Path  # noqa: F811
) -> None:
    k8s_api.seed_deployment(NS, "llama", replicas=3)
    path = k8s_api.write_kubeconfig(tmp_path / "kubeconfig")
    api_client = new_client_from_config(config_file=str(path))
    try:
        scale = client.AppsV1Api(api_client).read_namespaced_deployment_scale("llama", NS)
    finally:
        api_client.close()
    assert scale.spec.replicas == 3


def test_stop_releases_the_port() -> None:
    emulator = K8sEmulator().start()
    url = emulator.url
    emulator.stop()
    with pytest.raises(urllib3.exceptions.HTTPError):
        urllib3.PoolManager(retries=False).request("GET", url + "/api/v1", timeout=1)


# ----------------------------------------------------------------- pure helpers


def test_label_selector_grammar() -> None:
    labels = {"app": "llm", "size": "8b"}
    assert matches_selector("", labels)
    assert matches_selector("app=llm,size==8b", labels)
    assert not matches_selector("app!=llm", labels)
    assert matches_selector("size notin (70b, 1b)", labels)
    assert matches_selector("app,!gpu", labels)
    assert selector_string({"matchLabels": {"b": "2", "a": "1"}}) == "a=1,b=2"
    assert selector_string({"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["y", "x"]}]}) == "tier in (x,y)"


def test_merge_and_json_patch_follow_their_rfcs() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(doc, {"a": {"b": None, "d": 3}, "l": [9]}) == {"a": {"c": 2, "d": 3},
                                                                     "l": [9]}
    patched = json_patch(doc, [
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "replace", "path": "/a/b", "value": 10},
        {"op": "remove", "path": "/a/c"},
        {"op": "copy", "from": "/a/b", "path": "/x"},
    ])
    assert patched == {"a": {"b": 10}, "l": [1, 2, 3], "x": 10}
    assert doc == {"a": {"b": 1, "c": 2}, "l": [1, 2]}  # inputs untouched


# ----------------------------------------------------------------- custom resources
#
# The apiextensions-apiserver's behaviours forescale's CRDs and controller rely on, through the
# official client (ApiextensionsV1Api, CustomObjectsApi, watch.Watch, DynamicClient).

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.io"},
    "spec": {
        "group": "example.io",
        "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget",
                  "shortNames": ["wd"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}, "scale": {
                "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector"}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "x-kubernetes-validations": [
                            {"rule": "self.minReplicas <= self.maxReplicas",
                             "message": "minReplicas must not exceed maxReplicas",
                             "fieldPath": ".minReplicas"},
                            {"rule": "has(self.colour) != has(self.colourRef)",
                             "message": "exactly one of colour or colourRef"},
                            {"rule": "!has(self.tags) || self.tags.all(t, size(t) <= 5) && "
                                     "(self.size in ['s', 'm', 'l'])"},
                        ],
                        "properties": {
                            "size": {"type": "string", "enum": ["s", "m", "l"]},
                            "replicas": {"type": "integer", "minimum": 0, "maximum": 50},
                            "minReplicas": {"type": "integer", "minimum": 0, "default": 1},
                            "maxReplicas": {"type": "integer", "minimum": 1, "default": 10},
                            "quantile": {"type": "number", "minimum": 0, "maximum": 1,
                                         "exclusiveMinimum": True, "exclusiveMaximum": True},
                            "colour": {"type": "string"},
                            "colourRef": {"type": "object", "properties": {
                                "name": {"type": "string"}}},
                            "tags": {"type": "array", "items": {"type": "string"}},
                            "limits": {"type": "object", "default": {}, "properties": {
                                "rate": {"type": "number", "default": 1.5}}},
                        },
                    },
                    "status": {"type": "object", "properties": {
                        "replicas": {"type": "integer"},
                        "selector": {"type": "string"},
                        "state": {"type": "string", "enum": ["ok", "bad"]},
                    }},
                },
            }},
        }],
    },
}
G, V, P = "example.io", "v1", "widgets"


def widget(name: str = "w", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": "m", "colour": "red", **spec}}


@pytest.fixture
def custom(k8s_api: K8sEmulator) -> client.CustomObjectsApi:  # noqa: F811
    client.ApiextensionsV1Api(k8s_api.api_client()).create_custom_resource_definition(
        WIDGET_CRD)
    return client.CustomObjectsApi(k8s_api.api_client())


def invalid_fields(exc: ApiException) -> list[tuple[str, str]]:
    status = status_of(exc)
    assert exc.status == 422 and status["reason"] == "Invalid"
    return [(c["field"], c["message"]) for c in status["details"]["causes"]]


def test_crd_registration_serves_the_resource_and_reports_established(
    k8s_api: K8sEmulator,  # noqa: F811
) -> None:
    apiext = client.ApiextensionsV1Api(k8s_api.api_client())
    created = apiext.create_custom_resource_definition(WIDGET_CRD)
    conditions = {c.type: c.status for c in created.status.conditions}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert created.status.accepted_names.short_names == ["wd"]
    got = apiext.read_custom_resource_definition("widgets.example.io")
    assert got.spec.names.kind == "Widget"
    assert [c.metadata.name for c in apiext.list_custom_resource_definition().items] == [
        "widgets.example.io"]
    objects = client.CustomObjectsApi(k8s_api.api_client())
    objects.create_namespaced_custom_object(G, V, NS, P, widget())
    apiext.delete_custom_resource_definition("widgets.example.io")
    with pytest.raises(ApiException) as err:
        objects.list_namespaced_custom_object(G, V, NS, P)
    assert err.value.status == 404  # no longer served, objects gone with it
    apiext.create_custom_resource_definition(WIDGET_CRD)
    assert objects.list_namespaced_custom_object(G, V, NS, P)["items"] == []


def test_crd_names_must_match_plural_and_group(k8s_api: K8sEmulator) -> None:  # noqa: F811
    bad = json.loads(json.dumps(WIDGET_CRD))
    bad["metadata"]["name"] = "gadgets.example.io"
    with pytest.raises(ApiException) as err:
        client.ApiextensionsV1Api(k8s_api.api_client()).create_custom_resource_definition(bad)
    assert ("metadata.name", 'Invalid value: "gadgets.example.io": must be '
            'spec.names.plural+"."+spec.group') in invalid_fields(err.value)


@pytest.mark.parametrize(("rule", "unsupported"), [
    ("self.minReplicas <= oldSelf.minReplicas", "oldSelf"),
    ("self.name.lowerAscii() == self.name", "lowerAscii"),
    ("quantity(self.q).isGreaterThan(quantity('1'))", "quantity"),
    ("self.minReplicas <=", "end of input"),
])
def test_an_unsupported_cel_rule_refuses_the_crd_loudly(
    k8s_api: K8sEmulator, rule: str, unsupported: str,  # noqa: F811
) -> None:
    bad = json.loads(json.dumps(WIDGET_CRD))
    spec = bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"].append({"rule": rule})
    with pytest.raises(ApiException) as err:
        client.ApiextensionsV1Api(k8s_api.api_client()).create_custom_resource_definition(bad)
    ((field, message),) = invalid_fields(err.value)
    assert field == ("spec.versions[0].schema.openAPIV3Schema.properties[spec]"
                     ".x-kubernetes-validations[3].rule")
    assert "compilation failed" in message and unsupported in message
    with pytest.raises(ApiException):  # nothing was registered
        client.CustomObjectsApi(k8s_api.api_client()).list_namespaced_custom_object(
            G, V, NS, P)


def test_custom_object_gets_server_fields_and_schema_defaults(
    custom: client.CustomObjectsApi,
) -> None:
    created = custom.create_namespaced_custom_object(G, V, NS, P, widget())
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    assert meta["namespace"] == NS and meta["creationTimestamp"]
    assert created["spec"]["minReplicas"] == 1 and created["spec"]["maxReplicas"] == 10
    assert created["spec"]["limits"] == {"rate": 1.5}  # a defaulted object gets its defaults
    got = custom.get_namespaced_custom_object(G, V, NS, P, "w")
    assert got == created
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, P, widget())
    assert err.value.status == 409
    assert status_of(err.value)["message"] == 'widgets.example.io "w" already exists'


def test_unknown_fields_are_pruned_or_refused_when_strict(
    k8s_api: K8sEmulator, custom: client.CustomObjectsApi,  # noqa: F811
) -> None:
    created = custom.create_namespaced_custom_object(G, V, NS, P, widget(colr="typo"))
    assert "colr" not in created["spec"]
    status, body = raw(k8s_api, "POST",
                       f"/apis/{G}/{V}/namespaces/{NS}/{P}?fieldValidation=Strict",
                       widget("w2", colr="typo"))
    assert status == 400 and body["reason"] == "BadRequest"
    assert body["message"] == 'strict decoding error: unknown field "spec.colr"'


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({"replicas": "three"}, "spec.replicas",
     'Invalid value: "string": spec.replicas in body must be of type integer: "string"'),
    ({"size": "xl"}, "spec.size", 'Unsupported value: "xl": supported values: "s", "m", "l"'),
    ({"replicas": 51}, "spec.replicas",
     "Invalid value: 51: spec.replicas in body should be less than or equal to 50"),
    ({"quantile": 1.0}, "spec.quantile",
     "Invalid value: 1.0: spec.quantile in body should be less than 1"),
    ({"minReplicas": 5, "maxReplicas": 2}, "spec.minReplicas",
     'Invalid value: "object": minReplicas must not exceed maxReplicas'),
    ({"colourRef": {"name": "blue"}}, "spec",
     'Invalid value: "object": exactly one of colour or colourRef'),
    ({"tags": ["short", "toolong"]}, "spec", 'Invalid value: "object": failed rule: '
     "!has(self.tags) || self.tags.all(t, size(t) <= 5) && (self.size in ['s', 'm', 'l'])"),
])
def test_invalid_custom_objects_get_422_naming_the_field(
    custom: client.CustomObjectsApi, spec: dict[str, Any], field: str, message: str,
) -> None:
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, P, widget(**spec))
    assert invalid_fields(err.value) == [(field, message)]
    assert status_of(err.value)["message"] == f'Widget.example.io "w" is invalid: {field}: ' \
                                              f"{message}"
    assert status_of(err.value)["details"]["kind"] == "Widget"


def test_missing_required_field_is_named(custom: client.CustomObjectsApi) -> None:
    body = widget()
    del body["spec"]["size"]
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, P, body)
    assert ("spec.size", "Required value") in invalid_fields(err.value)


def test_spec_and_status_are_written_separately(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(G, V, NS, P,
                                                     {**widget(), "status": {"state": "ok"}})
    assert "status" not in created  # the main resource ignores status
    with_status = custom.patch_namespaced_custom_object_status(
        G, V, NS, P, "w", {"status": {"state": "ok"}, "spec": {"size": "l"}})
    assert with_status["status"] == {"state": "ok"}
    assert with_status["spec"]["size"] == "m"  # /status ignores everything but status
    assert with_status["metadata"]["generation"] == 1  # status writes leave generation alone
    assert int(with_status["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"])
    spec_edit = custom.patch_namespaced_custom_object(
        G, V, NS, P, "w", {"spec": {"maxReplicas": 4}, "status": {"state": "bad"}})
    assert spec_edit["status"] == {"state": "ok"}  # the main resource ignores status
    assert spec_edit["metadata"]["generation"] == 2
    labelled = custom.patch_namespaced_custom_object(
        G, V, NS, P, "w", {"metadata": {"labels": {"team": "a"}}})
    assert labelled["metadata"]["generation"] == 2  # metadata is not spec
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_status(G, V, NS, P, "w",
                                                     {"status": {"state": "unknown"}})
    assert invalid_fields(err.value)[0][0] == "status.state"


def test_stale_resource_version_on_a_custom_object_conflicts(
    custom: client.CustomObjectsApi,
) -> None:
    created = custom.create_namespaced_custom_object(G, V, NS, P, widget())
    custom.patch_namespaced_custom_object(G, V, NS, P, "w", {"spec": {"colour": "blue"}})
    stale = {**created, "spec": {**created["spec"], "colour": "green"}}
    for replace in (custom.replace_namespaced_custom_object,
                    custom.replace_namespaced_custom_object_status):
        with pytest.raises(ApiException) as err:
            replace(G, V, NS, P, "w", stale)
        assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"
    fresh = custom.get_namespaced_custom_object(G, V, NS, P, "w")
    fresh["spec"]["colour"] = "green"
    assert custom.replace_namespaced_custom_object(G, V, NS, P, "w", fresh)["spec"][
        "colour"] == "green"


def test_custom_scale_subresource_follows_the_crd_paths(
    k8s_api: K8sEmulator, custom: client.CustomObjectsApi,  # noqa: F811
) -> None:
    custom.create_namespaced_custom_object(G, V, NS, P, widget(replicas=2))
    custom.patch_namespaced_custom_object_status(
        G, V, NS, P, "w", {"status": {"replicas": 1, "selector": "app=w"}})
    scale = custom.get_namespaced_custom_object_scale(G, V, NS, P, "w")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"] == {"replicas": 1, "selector": "app=w"}
    custom.patch_namespaced_custom_object_scale(G, V, NS, P, "w", {"spec": {"replicas": 5}},
                                                _content_type="application/merge-patch+json")
    obj = custom.get_namespaced_custom_object(G, V, NS, P, "w")
    assert obj["spec"]["replicas"] == 5 and obj["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as err:  # the CRD's schema still applies
        custom.patch_namespaced_custom_object_scale(
            G, V, NS, P, "w", {"spec": {"replicas": 99}},
            _content_type="application/merge-patch+json")
    assert invalid_fields(err.value)[0][0] == "spec.replicas"
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_scale(
            G, V, NS, P, "w", {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 3}},
            _content_type="application/merge-patch+json")
    assert err.value.status == 409


def test_statefulset_scale_subresource(k8s_api: K8sEmulator) -> None:  # noqa: F811
    k8s_api.seed_statefulset(NS, "db", replicas=2, labels={"app": "db"})
    apps = client.AppsV1Api(k8s_api.api_client())
    scale = apps.read_namespaced_stateful_set_scale("db", NS)
    assert (scale.spec.replicas, scale.status.replicas, scale.status.selector) == (
        2, 2, "app=db")
    apps.patch_namespaced_stateful_set_scale("db", NS, {"spec": {"replicas": 4}})
    sts = apps.read_namespaced_stateful_set("db", NS)
    assert sts.spec.replicas == 4 and sts.status.replicas == 4
    assert sts.metadata.generation == 2


def test_watch_streams_added_modified_deleted_from_a_resource_version(
    custom: client.CustomObjectsApi,
) -> None:
    start = custom.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, P, widget())
    custom.patch_namespaced_custom_object(G, V, NS, P, "w", {"spec": {"colour": "blue"}})
    custom.create_namespaced_custom_object(G, V, "elsewhere", P, widget())
    custom.delete_namespaced_custom_object(G, V, NS, P, "w")
    events = list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, P,
                                       resource_version=start, timeout_seconds=1))
    assert [(e["type"], e["object"]["spec"]["colour"]) for e in events] == [
        ("ADDED", "red"), ("MODIFIED", "blue"), ("DELETED", "blue")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(start)


def test_watch_without_version_lists_then_follows_live_changes(
    k8s_api: K8sEmulator, custom: client.CustomObjectsApi,  # noqa: F811
) -> None:
    custom.create_namespaced_custom_object(G, V, NS, P, widget("a"))
    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    for event in w.stream(custom.list_namespaced_custom_object, G, V, NS, P, timeout_seconds=5):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if len(seen) == 1:  # a change made while the stream is open arrives on it
            k8s_api.seed_custom("example.io/v1", P, NS, widget("b"))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_from_a_compacted_version_is_410_expired(
    k8s_api: K8sEmulator, custom: client.CustomObjectsApi,  # noqa: F811
) -> None:
    custom.create_namespaced_custom_object(G, V, NS, P, widget())
    k8s_api.compact()
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, P,
                                  resource_version="1", timeout_seconds=1))
    assert err.value.status == 410
    assert "Expired: too old resource version: 1" in str(err.value.reason)


def test_watch_of_builtin_resources_filters_by_label(k8s_api: K8sEmulator) -> None:  # noqa: F811
    apps = client.AppsV1Api(k8s_api.api_client())
    start = apps.list_namespaced_deployment(NS).metadata.resource_version
    k8s_api.seed_deployment(NS, "a", labels={"team": "x"})
    k8s_api.seed_deployment(NS, "b", labels={"team": "y"})
    events = list(watch.Watch().stream(apps.list_namespaced_deployment, NS,
                                       label_selector="team=x", resource_version=start,
                                       timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a")]


def test_discovery_lists_custom_resources_and_subresources(
    k8s_api: K8sEmulator, custom: client.CustomObjectsApi,  # noqa: F811
    tmp_path: Path,
) -> None:
    dyn = DynamicClient(k8s_api.api_client(), cache_file=str(tmp_path / "discovery.json"))
    resource = dyn.resources.get(api_version="example.io/v1", kind="Widget")
    assert (resource.name, resource.namespaced, resource.short_names) == ("widgets", True,
                                                                          ["wd"])
    assert sorted(resource.subresources) == ["scale", "status"]
    assert resource.subresources["scale"].kind == "Scale"
    sts = dyn.resources.get(api_version="apps/v1", kind="StatefulSet")
    assert "scale" in sts.subresources
    groups = client.ApisApi(k8s_api.api_client()).get_api_versions()
    assert "example.io" in [g.name for g in groups.groups]
    listed = client.CustomObjectsApi(k8s_api.api_client()).get_api_resources("example.io", "v1")
    assert [r.name for r in listed.resources] == ["widgets", "widgets/scale", "widgets/status"]


def test_rbac_applies_to_custom_resources_and_their_status(
    k8s_api: K8sEmulator, custom: client.CustomObjectsApi,  # noqa: F811
) -> None:
    custom.create_namespaced_custom_object(G, V, NS, P, widget())
    token = k8s_api.add_token("reader", [rule("get,list,watch", G, P, [NS]),
                                         rule("patch", G, f"{P}/status", [NS])])
    limited = client.CustomObjectsApi(k8s_api.api_client(token))
    assert limited.get_namespaced_custom_object(G, V, NS, P, "w")["spec"]["size"] == "m"
    limited.patch_namespaced_custom_object_status(G, V, NS, P, "w",
                                                  {"status": {"state": "ok"}})
    with pytest.raises(ApiException) as err:
        limited.patch_namespaced_custom_object(G, V, NS, P, "w", {"spec": {"size": "l"}})
    assert err.value.status == 403
    assert 'cannot patch resource "widgets" in API group "example.io"' in status_of(
        err.value)["message"]
