"""deploy/kubernetes: schemas, kustomize rendering, least-privilege RBAC, pod hardening.

Offline: manifests are validated against the Kubernetes OpenAPI schemas shipped by
`kubernetes-validate`; `kubectl kustomize` (no cluster needed) renders the base. CRD objects
(ServiceMonitor, PrometheusRule, ScaledObject) have no schema there and are checked by
structure and against the config they must agree with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller.config import ActuationMode, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
EXAMPLES = K8S / "examples"  # forescale.io objects (and a profile ConfigMap), applied by hand
EXAMPLE = ROOT / "deploy" / "config.example.yaml"
K8S_VERSION = "1.30"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "VariantAutoscaler",
             "VariantGroup"}  # the last two: forescale's own, checked in test_deploy_crds.py
NOT_MANIFESTS = {"kustomization.yaml", "config.yaml"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name not in NOT_MANIFESTS)


def all_objects() -> list[dict[str, Any]]:
    return [d for p in manifest_files() for d in _docs(p)]


def base_objects() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    return [d for name in kust["resources"] for d in _docs(K8S / name)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kubectl() -> str:
    """kubectl on PATH; skipped locally without it, a failure under CI (CI=true)."""
    path = shutil.which("kubectl")
    if path is None:
        msg = ("kubectl not found: install Debian's `kubernetes-client` "
               "(apt-get install -y kubernetes-client) to render deploy/kubernetes")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ---------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_kubernetes_schema(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not an object"
        if doc["kind"] in CRD_KINDS:
            continue  # no schema offline: checked structurally below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_only_known_crd_kinds_are_outside_the_base() -> None:
    kinds = {o["kind"] for o in base_objects()}
    assert not kinds & CRD_KINDS, "the base must apply on a cluster without CRDs"
    outside = {o["kind"] for p in manifest_files() if EXAMPLES not in p.parents
               for o in _docs(p)} - kinds
    assert outside <= CRD_KINDS
    examples = {o["kind"] for p in EXAMPLES.glob("*.yaml") for o in _docs(p)}
    assert examples == {"VariantAutoscaler", "VariantGroup", "ConfigMap"}


# ---------------------------------------------------------------------------- kustomize
def test_kustomize_renders_the_base_with_the_example_config() -> None:
    objs = kustomize(K8S)
    for o in objs:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    got = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}
    cm = one(objs, "ConfigMap")
    expected = {
        ("CustomResourceDefinition", None, "variantautoscalers.forescale.io"),
        ("CustomResourceDefinition", None, "variantgroups.forescale.io"),
        ("Namespace", None, "forescale"),
        ("ServiceAccount", "forescale", "forescale"),
        ("ClusterRole", None, "forescale-scaler"),
        ("RoleBinding", "llm-serving", "forescale-scaler"),
        ("Role", "forescale", "forescale-leader-election"),
        ("RoleBinding", "forescale", "forescale-leader-election"),
        ("Role", "forescale", "forescale-state"),
        ("RoleBinding", "forescale", "forescale-state"),
        ("ConfigMap", "forescale", cm["metadata"]["name"]),
        ("Deployment", "forescale", "forescale"),
        ("Service", "forescale", "forescale"),
        ("PodDisruptionBudget", "forescale", "forescale"),
    }
    assert got == expected
    # The generated (hash-suffixed) ConfigMap holds the example config and is the one mounted.
    assert cm["metadata"]["name"].startswith("forescale-config-")
    assert cm["data"]["config.yaml"] == EXAMPLE.read_text(encoding="utf-8")
    parse_config(yaml.safe_load(cm["data"]["config.yaml"]), "configmap")
    dep = one(objs, "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "forescale:0.1.0"


def test_kustomize_renders_the_monitoring_overlay() -> None:
    objs = kustomize(K8S / "monitoring")
    assert sorted(o["kind"] for o in objs) == ["PrometheusRule", "ServiceMonitor"]


# ---------------------------------------------------------------------------- RBAC
EXPECTED_SCALER_RULES = {
    ("apps", "deployments"): {"get", "list", "watch"},
    ("apps", "deployments/scale"): {"get", "patch", "update"},
    ("apps", "statefulsets/scale"): {"get", "patch"},
    ("forescale.io", "variantautoscalers"): {"get", "list", "watch"},
    ("forescale.io", "variantautoscalers/status"): {"update"},
    ("forescale.io", "variantgroups"): {"get", "list", "watch"},
    ("forescale.io", "variantgroups/status"): {"update"},
    ("", "configmaps"): {"get"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def _grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule.get("apiGroups", []):
            for res in rule.get("resources", []):
                grants.setdefault((group, res), set()).update(rule["verbs"])
    return grants


def _roles() -> list[dict[str, Any]]:
    return [o for o in base_objects() if o["kind"] in ("Role", "ClusterRole")]


def test_rbac_has_no_wildcards_and_no_non_resource_urls() -> None:
    for role in _roles():
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: {key} *"
            assert "nonResourceURLs" not in rule


def test_scaler_role_grants_exactly_the_expected_verbs() -> None:
    role = one(_roles(), "ClusterRole", "forescale-scaler")
    assert _grants(role) == EXPECTED_SCALER_RULES


def test_forescale_objects_are_read_and_only_their_status_written() -> None:
    """Users own VariantAutoscalers and VariantGroups (Git, Argo CD): forescale never writes
    their spec or deletes them, and writes status with update only (no patch)."""
    for role in _roles():
        for (group, res), verbs in _grants(role).items():
            if group != "forescale.io":
                continue
            if res.endswith("/status"):
                assert verbs == {"update"}, f"{role['metadata']['name']} {res} {verbs}"
            else:
                assert verbs <= {"get", "list", "watch"}, f"{role['metadata']['name']} {res}"


def test_deployments_change_only_through_the_scale_subresource() -> None:
    writes = {"create", "update", "patch", "delete", "deletecollection"}
    for role in _roles():
        for (group, res), verbs in _grants(role).items():
            if res == "deployments" or (group == "apps" and res.startswith("deployments")
                                        and res != "deployments/scale"):
                assert not verbs & writes, f"{role['metadata']['name']} can write {res}"
            assert res not in ("secrets", "pods", "pods/exec"), (
                f"{role['metadata']['name']} needs no access to {res}")
            if res == "configmaps" and role["metadata"]["name"] != "forescale-state":
                # profileRef: one named ConfigMap read; never listed, watched or written
                assert verbs == {"get"}, f"{role['metadata']['name']} configmaps {verbs}"


def test_configmaps_only_the_state_configmap_in_the_forescale_namespace() -> None:
    role = one(_roles(), "Role", "forescale-state")
    assert role["metadata"]["namespace"] == "forescale"
    assert _grants(role) == {("", "configmaps"): {"create", "get", "update"}}
    for rule in role["rules"]:
        if set(rule["verbs"]) & {"get", "update"}:
            assert rule["resourceNames"] == ["forescale-state"]


def test_leases_only_in_the_forescale_namespace_and_by_name() -> None:
    objs = base_objects()
    le = one(objs, "Role", "forescale-leader-election")
    assert le["metadata"]["namespace"] == "forescale"
    assert _grants(le) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    named = [r for r in le["rules"] if "update" in r["verbs"]]
    cfg = load_config(EXAMPLE)
    assert all(r.get("resourceNames") == [cfg.leader_election.lease_name] for r in named)
    assert cfg.leader_election.lease_namespace == le["metadata"]["namespace"]
    scaler = one(_roles(), "ClusterRole", "forescale-scaler")
    assert not any(g == "coordination.k8s.io" for g, _ in _grants(scaler))


def test_scaler_is_bound_per_target_namespace_never_cluster_wide() -> None:
    objs = base_objects()
    assert not [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    bound = {o["metadata"]["namespace"] for o in objs if o["kind"] == "RoleBinding"
             and o["roleRef"]["name"] == "forescale-scaler"}
    targets = {v.target.namespace for v in load_config(EXAMPLE).variants}
    assert bound == targets
    for o in objs:
        if o["kind"] == "RoleBinding":
            assert o["subjects"] == [{"kind": "ServiceAccount", "name": "forescale",
                                      "namespace": "forescale"}]


# ---------------------------------------------------------------------------- Deployment
def _deployment() -> dict[str, Any]:
    return one(base_objects(), "Deployment", "forescale")


def test_deployment_runs_two_replicas_with_leader_election() -> None:
    dep = _deployment()
    assert dep["spec"]["replicas"] == 2
    assert load_config(EXAMPLE).leader_election.enabled
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert one(base_objects(), "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_pod_and_container_are_hardened() -> None:
    spec = _deployment()["spec"]["template"]["spec"]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert not sc.get("privileged")
    assert "hostNetwork" not in spec and "hostPID" not in spec
    assert spec["serviceAccountName"] == "forescale"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])


def test_writable_paths_are_volumes_and_config_is_read_only() -> None:
    spec = _deployment()["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/forescale"]["name"]]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/forescale"]["readOnly"] is True
    cfg = load_config(EXAMPLE)
    assert cfg.forecast.model_dir is not None
    assert cfg.forecast.model_dir.is_relative_to("/var/lib/forescale")
    assert c["args"] == ["serve", "--config", "/etc/forescale/config.yaml"]


def test_probes_token_and_port_match_the_config() -> None:
    cfg = load_config(EXAMPLE)
    (c,) = _deployment()["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["ports"] == [{"name": "http", "containerPort": cfg.api.port, "protocol": "TCP"}]
    env = {e["name"]: e for e in c["env"]}
    ref = env[cfg.api.token_env]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "forescale-api-token", "key": "token"}
    assert "value" not in env[cfg.api.token_env], "no inline secret"


def test_service_selects_the_pods_on_port_8080() -> None:
    objs = base_objects()
    svc = one(objs, "Service", "forescale")
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http",
                                     "protocol": "TCP"}]


# ---------------------------------------------------------------------------- CRD objects
def test_service_monitor_scrapes_the_service_metrics_port() -> None:
    (sm,) = _docs(K8S / "monitoring" / "servicemonitor.yaml")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    svc = one(base_objects(), "Service", "forescale")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["path"] == "/metrics"


def test_prometheus_rule_wraps_the_alert_rules() -> None:
    (pr,) = _docs(K8S / "monitoring" / "prometheusrule.yaml")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["kind"] == "PrometheusRule"
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert pr["spec"]["groups"] == rules["groups"], (
        "run python deploy/prometheus/make_prometheusrule.py")


def test_keda_scaled_object_targets_a_metric_mode_variant() -> None:
    (so,) = _docs(K8S / "keda" / "scaledobject.yaml")
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    cfg = load_config(EXAMPLE)
    spec = so["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    variant = next(v for v in cfg.variants if f'variant="{v.name}"' in meta["query"])
    assert cfg.mode_of(variant) is ActuationMode.METRIC
    assert spec["scaleTargetRef"]["name"] == variant.target.name
    assert so["metadata"]["namespace"] == variant.target.namespace
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        variant.min_replicas, variant.max_replicas)
    assert "forescale_desired_replicas" in meta["query"]
    assert "forescale_leader" in meta["query"], "only the leader's number counts"
    assert trigger["metricType"] == "AverageValue" and meta["threshold"] == "1"
    # An empty result must not read as 0 (scale to zero); it must trigger the fallback.
    assert meta["ignoreNullValues"] == "false"
    assert spec["fallback"]["replicas"] >= 1
    assert meta["serverAddress"] == cfg.prometheus.url
