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
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

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
