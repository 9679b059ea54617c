"""An emulated Kubernetes API server for contract tests of forescale's Kubernetes code.

No kube-apiserver can be installed where forescale is developed (see
/work/shared/KUBERNETES.md), so the controller's real client code - the official `kubernetes`
client, its REST calls, its error types - is exercised over HTTP against this emulator.
It serves only what forescale relies on, and follows the Kubernetes API reference for that:

- core `v1` ConfigMaps (generic verbs; forescale keeps its restart-safe state in one).
- `apps/v1` Deployments (get/list/create/update/patch/delete) with server-set
  `metadata.uid`, `resourceVersion` (one global counter, bumped on every write, like etcd's
  revision) and `generation` (bumped on spec changes), plus the `scale` subresource serving an
  `autoscaling/v1` Scale (GET, PUT with optimistic concurrency, merge/strategic/JSON patch).
- `autoscaling/v2` HorizontalPodAutoscalers, `coordination.k8s.io/v1` Leases, and Events
  (`events.k8s.io/v1` and core `v1`), with the same generic verbs.
- `Status` error bodies with the reasons and messages the real server uses (NotFound,
  AlreadyExists, Conflict, Forbidden, Unauthorized, Invalid, TooManyRequests, InternalError).
- Authentication by bearer token and authorization by RBAC-like rules, so a missing rule in
  `deploy/rbac.yaml` shows up as the same 403 a cluster would give.
- Fault injection, settable at runtime: latency, the next N responses as 500/429/409/..., and
  connection drops (the socket is closed without a response).
- CustomResourceDefinitions: structural schemas (types, required, defaults, pruning, a CEL
  subset of `x-kubernetes-validations`), the status and scale subresources, discovery, and
  list + watch of any served resource with resourceVersions (a version older than the kept
  history gets the watch cache's `410 Expired` ERROR event).

Known simplifications, on purpose: no admission webhooks, no garbage collection, no watch
bookmarks, and
the Deployment controller is "instant" - `status` follows `spec.replicas` in the same write (a
real cluster would write status separately, later). Strategic merge patch is applied as a JSON
merge patch, which is exact for the fields forescale patches (no lists are involved).

Use it as a context manager, or through the `k8s_api` pytest fixture defined here::

    with K8sEmulator() as api:
        api.seed_deployment("prod", "llama", replicas=2)
        client = api.api_client()          # admin token; closed by api.stop()
        AppsV1Api(client).read_namespaced_deployment_scale("llama", "prod")
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from kubernetes import client as k8s_client

from tests.support.k8s_schema import FieldError, SchemaError, StructuralSchema

JSON = dict[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ADMIN_TOKEN = "emulator-admin-token"
ADMIN_USER = "system:admin"

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and how the server treats it."""

    group: str
    version: str
    plural: str
    kind: str
    tracks_generation: bool = False
    subresources: frozenset[str] = frozenset()
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name the server uses in messages: `deployments.apps`, or `events` for core."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", True, frozenset({"scale"}))
STATEFULSETS = ResourceType("apps", "v1", "statefulsets", "StatefulSet", True,
                            frozenset({"scale"}))
CRDS = ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                    "CustomResourceDefinition", True, frozenset({"status"}), namespaced=False)
HPAS = ResourceType(
    "autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True
)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event")
CORE_EVENTS = ResourceType("", "v1", "events", "Event")
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap")

SERVED: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r
    for r in (DEPLOYMENTS, STATEFULSETS, HPAS, LEASES, EVENTS, CORE_EVENTS, CONFIGMAPS, CRDS)
}
#: Workloads whose scale subresource the emulator serves from `spec.replicas`/`spec.selector`.
BUILTIN_SCALABLE = (DEPLOYMENTS, STATEFULSETS)

_PATH = re.compile(
    r"^/(?:api/(?P<core_version>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<subresource>[^/]+))?)?/?$"
)


@dataclass(frozen=True)
class RequestInfo:
    """The attributes RBAC decides on, resolved from the URL as kube-apiserver does."""

    verb: str
    api_group: str
    api_version: str
    resource: str
    subresource: str
    namespace: str
    name: str

    @property
    def rbac_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def resolve(method: str, path: str, query: Mapping[str, str]) -> RequestInfo | None:
    """Map method + path to a RequestInfo, or None when the path is not a resource path."""
    m = _PATH.match(path)
    if m is None:
        return None
    name = m["name"] or ""
    if method == "GET":
        watch = str(query.get("watch", "")).lower() in ("1", "true")
        verb = "get" if name else ("watch" if watch else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, method.lower()
        )
        if verb == "delete" and not name:
            verb = "deletecollection"
    return RequestInfo(
        verb=verb,
        api_group=m["group"] or "",
        api_version=m["version"] or m["core_version"] or "",
        resource=m["resource"],
        subresource=m["subresource"] or "",
        namespace=m["namespace"] or "",
        name=name,
    )


# --------------------------------------------------------------------------- RBAC


@dataclass(frozen=True)
class PolicyRule:
    """An RBAC rule as in a Role: verbs x apiGroups x resources, `*` matching anything.

    `resources` entries follow RBAC: `deployments/scale` names a subresource, `*/scale` the
    scale subresource of any resource, `*` everything. `namespaces=None` means the rule is bound
    cluster-wide (ClusterRoleBinding); otherwise only in those namespaces (RoleBindings).
    `resource_names`, as in RBAC, restricts to named objects, so it never matches create or
    list (their URLs carry no name).
    """

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    namespaces: tuple[str, ...] | None = None
    resource_names: tuple[str, ...] | None = None

    def allows(self, info: RequestInfo) -> bool:
        if "*" not in self.verbs and info.verb not in self.verbs:
            return False
        if self.resource_names and info.name not in self.resource_names:
            return False
        if "*" not in self.api_groups and info.api_group not in self.api_groups:
            return False
        if self.namespaces is not None and info.namespace not in self.namespaces:
            return False
        wanted = info.rbac_resource
        return any(
            r in ("*", wanted) or (info.subresource != "" and r == f"*/{info.subresource}")
            for r in self.resources
        )


ALLOW_ALL = (PolicyRule(("*",), ("*",), ("*",)),)


def rule(
    verbs: str, group: str, resources: str, namespaces: Sequence[str] | None = None
) -> PolicyRule:
    """Shorthand: `rule("get,patch", "apps", "deployments/scale", ["prod"])`."""
    return PolicyRule(
        tuple(verbs.split(",")),
        (group,),
        tuple(resources.split(",")),
        tuple(namespaces) if namespaces is not None else None,
    )


def rules_from_manifests(
    documents: Sequence[Mapping[str, Any]], service_account: str, namespace: str
) -> list[PolicyRule]:
    """The rules RBAC manifests (Roles, ClusterRoles and their bindings) grant a ServiceAccount,
    so tests can run the controller with exactly what `deploy/` gives it."""
    roles: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for doc in documents:
        if doc.get("kind") in ("Role", "ClusterRole"):
            meta = doc.get("metadata") or {}
            key = (doc["kind"], meta.get("namespace", "") if doc["kind"] == "Role" else "",
                   meta["name"])
            roles[key] = list(doc.get("rules") or [])
    granted: list[PolicyRule] = []
    for doc in documents:
        if doc.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                   and s.get("namespace") == namespace for s in doc.get("subjects") or []):
            continue
        bound_ns = (doc.get("metadata") or {}).get("namespace", "")
        ref = doc["roleRef"]
        key = (ref["kind"], bound_ns if ref["kind"] == "Role" else "", ref["name"])
        scope = (bound_ns,) if doc["kind"] == "RoleBinding" else None
        for r in roles.get(key, []):
            names = r.get("resourceNames")
            granted.append(PolicyRule(tuple(r.get("verbs") or ()), tuple(r.get("apiGroups") or ()),
                                      tuple(r.get("resources") or ()), scope,
                                      tuple(names) if names else None))
    return granted


@dataclass(frozen=True)
class Identity:
    """Who a bearer token authenticates as, and what it may do."""

    user: str
    rules: tuple[PolicyRule, ...]


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """An injected failure for requests whose path matches `path` (regex, searched).

    Exactly one of: `status` (answer with that code and a Status body), `drop` (close the
    connection without answering), or only `delay_s` (answer normally, late). `remaining=None`
    means forever; otherwise the fault is used up after that many matching requests.
    """

    path: re.Pattern[str]
    method: str | None
    remaining: int | None
    status: int | None = None
    drop: bool = False
    delay_s: float = 0.0
    retry_after_s: int = 1

    def matches(self, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path.search(path) is not None


@dataclass
class RecordedRequest:
    """One request as the emulator saw it, for assertions on what the client sent."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    user: str | None = None
    info: RequestInfo | None = None
    body: Any = None
    status: int | None = None
    fault: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """Raised by handlers; rendered as a `Status` object with the code and reason."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: JSON | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def body(self) -> JSON:
        status: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def _details(rt: ResourceType, name: str) -> JSON:
    details: JSON = {"kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    if name:
        details["name"] = name
    return details


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name)
    )


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        _details(rt, name),
    )


def invalid(rt: ResourceType, name: str, field_path: str, problem: str) -> ApiError:
    kind = "Scale" if field_path.startswith("spec.replicas") and rt in BUILTIN_SCALABLE \
        else rt.kind
    group = "autoscaling" if kind == "Scale" else rt.group
    return ApiError(
        422,
        "Invalid",
        f'{kind}{"." + group if group else ""} "{name}" is invalid: {field_path}: {problem}',
        {"name": name, "group": group, "kind": kind,
         "causes": [{"reason": "FieldValueInvalid", "message": problem, "field": field_path}]},
    )


def invalid_causes(kind: str, group: str, name: str, errors: Sequence[FieldError]) -> ApiError:
    """A 422 listing every problem, worded as the server words a multi-error `Invalid`:
    `Kind.group "name" is invalid: [a: ..., b: ...]` (no brackets for one problem)."""
    rendered = [e.render() for e in errors]
    text = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind}{"." + group if group else ""} "{name}" is invalid: {text}',
        {"name": name, "group": group, "kind": kind,
         "causes": [{"reason": e.reason, "message": e.message, "field": e.field}
                    for e in errors]},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _injected(code: int, retry_after_s: int) -> ApiError:
    if code == 429:
        return ApiError(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            {"retryAfterSeconds": retry_after_s},
            {"Retry-After": str(retry_after_s)},
        )
    reasons = {
        409: ("Conflict", "Operation cannot be fulfilled: the object has been modified "
                          "(injected fault)"),
        500: ("InternalError", "Internal error occurred: injected fault"),
        503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
        504: ("Timeout", "the server was unable to return a response in the time allotted"),
    }
    reason, message = reasons.get(code, ("InternalError", f"injected HTTP {code}"))
    return ApiError(code, reason, message)


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node, tokens[-1]


def _test_failed(path: Any) -> ApiError:
    return ApiError(422, "Invalid", f"json patch test operation failed at {path}")


def _list_op(parent: list[Any], key: str, op: JSON) -> None:
    kind, index = op["op"], len(parent) if key == "-" else int(key)
    if kind == "add":
        parent.insert(index, copy.deepcopy(op["value"]))
    elif kind == "remove":
        del parent[index]
    elif kind == "replace":
        parent[index] = copy.deepcopy(op["value"])
    elif kind == "test" and parent[index] != op["value"]:
        raise _test_failed(op["path"])


def _object_op(parent: JSON, key: str, op: JSON) -> None:
    kind = op["op"]
    if kind in ("remove", "replace", "test") and key not in parent:
        raise ApiError(422, "Invalid", f"json patch {kind} of missing path {op['path']}")
    if kind in ("add", "replace"):
        parent[key] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[key]
    elif kind == "test" and parent[key] != op["value"]:
        raise _test_failed(op["path"])


def _json_patch_op(doc: Any, op: JSON) -> Any:
    kind, tokens = op.get("op"), _pointer(str(op.get("path", "")))
    if kind not in ("add", "remove", "replace", "test", "move", "copy"):
        raise bad_request(f"unknown JSON patch op {kind!r}")
    if not tokens:
        raise bad_request("the root document cannot be patched by this emulator")
    if kind in ("move", "copy"):
        src_parent, src_key = _parent(doc, _pointer(str(op.get("from", ""))))
        value = src_parent[int(src_key)] if isinstance(src_parent, list) else src_parent[src_key]
        if kind == "move":
            doc = _json_patch_op(doc, {"op": "remove", "path": op["from"]})
        return _json_patch_op(doc, {"op": "add", "path": op["path"], "value": value})
    parent, key = _parent(doc, tokens)
    if isinstance(parent, list):
        _list_op(parent, key, op)
    else:
        _object_op(parent, key, op)
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, move, copy)."""
    if not isinstance(ops, list):
        raise bad_request("json patch body must be a list of operations")
    doc = copy.deepcopy(target)
    try:
        for op in ops:
            doc = _json_patch_op(doc, op)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"json patch could not be applied: {exc!r}") from exc
    return doc


def apply_patch(content_type: str, target: JSON, patch: Any) -> JSON:
    """Apply a PATCH body of the given content type, as the server picks by Content-Type."""
    if content_type == JSON_PATCH:
        result = json_patch(target, patch)
    elif content_type in (MERGE_PATCH, STRATEGIC_PATCH):
        if not isinstance(patch, dict):
            raise bad_request("merge patch body must be a JSON object")
        result = merge_patch(target, patch)
    else:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}",
        )
    if not isinstance(result, dict):
        raise bad_request("patch did not produce an object")
    return result


# --------------------------------------------------------------------------- selectors


_REQ = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<value>\(.*\)|[A-Za-z0-9_.-]*))?\s*$"
)


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def _requirement_holds(requirement: str, labels: Mapping[str, str]) -> bool:
    m = _REQ.match(requirement)
    if m is None:
        raise bad_request(f"unable to parse requirement: {requirement!r}")
    key, op = m["key"], (m["op"] or "").strip()
    if not op:
        return (key not in labels) if m["neg"] else (key in labels)
    value = m["value"] or ""
    if op in ("=", "=="):
        return labels.get(key) == value
    if op == "!=":
        return labels.get(key) != value
    values = {v.strip() for v in value.strip("()").split(",")}
    return labels.get(key) in values if op == "in" else labels.get(key) not in values


def matches_selector(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy a label selector string (`a=b,c!=d,e in (f,g),!h`)."""
    return all(_requirement_holds(r, labels) for r in _split_selector(selector))


def selector_string(label_selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector as the server renders it in Scale.status.selector (sorted by key)."""
    if not label_selector:
        return ""
    parts = [f"{k}={v}" for k, v in (label_selector.get("matchLabels") or {}).items()]
    for expr in label_selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            parts.append(f"{key} {op.lower()} ({','.join(sorted(values))})")
    return ",".join(sorted(parts, key=lambda p: p.lstrip("!").split(" ")[0].split("=")[0]))


# --------------------------------------------------------------------------- the store


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Watch events kept for `?watch=1&resourceVersion=N`; older versions get 410 Gone, as after
#: the real server's watch cache (and etcd compaction) dropped them.
WATCH_HISTORY = 1000


@dataclass(frozen=True)
class WatchEvent:
    """One change, as a watch stream reports it: the object after the change (for DELETED,
    the last state with the deletion's resourceVersion)."""

    revision: int
    type: str
    rt: ResourceType
    namespace: str
    obj: JSON


class Store:
    """Objects keyed by (resource, namespace, name), with one global resourceVersion counter.

    The lock makes each read-modify-write atomic, which is the guarantee etcd's transactions
    give kube-apiserver and what optimistic concurrency on resourceVersion is checked against.
    Every write also lands in `history` (bounded), which is what watch streams replay.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[ResourceType, str, str], JSON] = {}
        self.revision = 0
        self.history: list[WatchEvent] = []
        self.compacted = 0  # events up to this revision are no longer in `history`

    def next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)

    def emit(self, kind: str, rt: ResourceType, namespace: str, obj: JSON) -> None:
        """Record a change for watchers (call under `lock`, after the write)."""
        self.history.append(WatchEvent(int(obj["metadata"]["resourceVersion"]), kind, rt,
                                       namespace, copy.deepcopy(obj)))
        if len(self.history) > WATCH_HISTORY:
            self.compacted = self.history.pop(0).revision

    def compact(self) -> None:
        """Forget every past event, so a watch from any earlier version gets 410 Gone."""
        with self.lock:
            self.history.clear()
            self.compacted = self.revision


def _validate_deployment(obj: JSON, name: str) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise invalid(DEPLOYMENTS, name, "spec", "Required value")
    if not (spec.get("selector") or {}).get("matchLabels") and not (
        spec.get("selector") or {}
    ).get("matchExpressions"):
        raise invalid(DEPLOYMENTS, name, "spec.selector", "Required value")
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise invalid(DEPLOYMENTS, name, "spec.replicas",
                      f"Invalid value: {replicas!r}: must be greater than or equal to 0")


def _validate_hpa(obj: JSON, name: str) -> None:
    spec = obj.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    if not ref.get("kind") or not ref.get("name"):
        raise invalid(HPAS, name, "spec.scaleTargetRef", "Required value")
    if not isinstance(spec.get("maxReplicas"), int) or spec["maxReplicas"] < 1:
        raise invalid(HPAS, name, "spec.maxReplicas", "Invalid value: must be greater than 0")


def _validate_event(obj: JSON, name: str) -> None:
    """events.k8s.io/v1 validation: the fields the real server requires of new Events."""
    for path in ("eventTime", "reportingController", "reportingInstance", "action", "reason"):
        if not obj.get(path):
            raise invalid(EVENTS, name, path, "Required value")
    if obj.get("type") not in ("Normal", "Warning"):
        raise invalid(EVENTS, name, "type", "Unsupported value: must be Normal or Warning")
    if len(str(obj.get("note", "")).encode()) > 1024:
        raise invalid(EVENTS, name, "note", "Too long: must have at most 1024 bytes")


def _validate_statefulset(obj: JSON, name: str) -> None:
    """apps/v1 StatefulSet: the same selector and replicas rules as a Deployment."""
    try:
        _validate_deployment(obj, name)
    except ApiError as exc:
        raise ApiError(exc.code, exc.reason, exc.message.replace("Deployment.apps",
                                                                 "StatefulSet.apps"),
                       {**(exc.details or {}), "kind": "StatefulSet"}) from None


VALIDATORS: dict[ResourceType, Callable[[JSON, str], None]] = {
    DEPLOYMENTS: _validate_deployment,
    STATEFULSETS: _validate_statefulset,
    HPAS: _validate_hpa,
    EVENTS: _validate_event,
}


# --------------------------------------------------------------------------- custom resources


def _json_path(path: str) -> list[str]:
    """`.spec.replicas` -> ["spec", "replicas"]: the simple JSONPaths scale subresources use."""
    return [p for p in path.split(".") if p]


def get_path(obj: JSON, path: str) -> Any:
    node: Any = obj
    for key in _json_path(path):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def set_path(obj: JSON, path: str, value: Any) -> None:
    keys = _json_path(path)
    node = obj
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


@dataclass
class CustomResource:
    """What a registered CRD makes the server serve: one ResourceType per served version,
    objects stored once (under the storage version; conversion `None` rewrites apiVersion)."""

    crd_name: str
    group: str
    kind: str
    list_kind: str
    plural: str
    singular: str
    short_names: list[str]
    categories: list[str]
    namespaced: bool
    storage: ResourceType
    served: dict[str, ResourceType]
    schemas: dict[str, StructuralSchema]
    status: bool
    scale: JSON | None
    columns: dict[str, list[JSON]]

    def spec_part(self, obj: JSON) -> JSON:
        """What `metadata.generation` tracks: everything but metadata (and status, when it is a
        subresource), as the apiextensions-apiserver's strategy compares."""
        skip = {"metadata", "status"} if self.status else {"metadata"}
        return {k: v for k, v in obj.items() if k not in skip}


def _crd_field(errors: list[FieldError], field_path: str, message: str,
               reason: str = "FieldValueInvalid") -> None:
    errors.append(FieldError(field_path, reason, message))


def _crd_names(crd: JSON, errors: list[FieldError]) -> tuple[JSON, JSON]:
    spec: JSON = crd.get("spec") or {}
    group, names = spec.get("group") or "", spec.get("names") or {}
    if not group or "." not in group:
        _crd_field(errors, "spec.group", f'Invalid value: "{group}": should be a domain with at '
                   "least one dot")
    for key in ("plural", "kind"):
        if not names.get(key):
            _crd_field(errors, f"spec.names.{key}", "Required value", "FieldValueRequired")
    expected = f"{names.get('plural', '')}.{group}"
    if crd["metadata"].get("name") != expected:
        _crd_field(errors, "metadata.name", f'Invalid value: "{crd["metadata"].get("name")}": '
                   'must be spec.names.plural+"."+spec.group')
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        _crd_field(errors, "spec.scope", f'Unsupported value: "{spec.get("scope")}": supported '
                   'values: "Cluster", "Namespaced"', "FieldValueNotSupported")
    return spec, names


def _crd_scale(sub: JSON, at: str, errors: list[FieldError]) -> JSON | None:
    scale = sub.get("scale")
    if scale is None:
        return None
    if not str(scale.get("specReplicasPath", "")).startswith(".spec."):
        _crd_field(errors, f"{at}.scale.specReplicasPath", "Invalid value: should be a json "
                   "path under .spec")
    if not str(scale.get("statusReplicasPath", "")).startswith(".status."):
        _crd_field(errors, f"{at}.scale.statusReplicasPath", "Invalid value: should be a json "
                   "path under .status")
    selector = scale.get("labelSelectorPath")
    if selector is not None and not str(selector).startswith((".spec.", ".status.")):
        _crd_field(errors, f"{at}.scale.labelSelectorPath", "Invalid value: should be a json "
                   "path under either .spec or .status")
    return dict(scale)


def parse_crd(crd: JSON) -> CustomResource:
    """Check a CustomResourceDefinition as the apiextensions-apiserver does on create/update
    (for the parts forescale uses) and compile its schemas and CEL rules; 422 otherwise."""
    errors: list[FieldError] = []
    spec, names = _crd_names(crd, errors)
    versions = spec.get("versions") or []
    if not versions or sum(bool(v.get("storage")) for v in versions) != 1:
        _crd_field(errors, "spec.versions", "Invalid value: must have exactly one version marked "
                   "as storage version")
    group, plural, kind = spec.get("group", ""), names.get("plural", ""), names.get("kind", "")
    served: dict[str, ResourceType] = {}
    schemas: dict[str, StructuralSchema] = {}
    storage: ResourceType | None = None
    status, scale, columns = False, None, {}
    for i, ver in enumerate(versions):
        at = f"spec.versions[{i}]"
        sub = ver.get("subresources") or {}
        ver_status = "status" in sub
        ver_scale = _crd_scale(sub, f"{at}.subresources", errors)
        raw_schema = (ver.get("schema") or {}).get("openAPIV3Schema")
        if raw_schema is None:
            _crd_field(errors, f"{at}.schema.openAPIV3Schema", "Required value: schemas are "
                       "required", "FieldValueRequired")
            continue
        try:
            schemas[ver["name"]] = StructuralSchema(raw_schema, f"{at}.schema.openAPIV3Schema")
        except SchemaError as exc:
            errors.extend(exc.errors)
        subs = {name for name, on in (("status", ver_status), ("scale", ver_scale)) if on}
        rt = ResourceType(group, ver["name"], plural, kind, True, frozenset(subs),
                          namespaced=spec.get("scope") == "Namespaced")
        if ver.get("served", True):
            served[ver["name"]] = rt
        if ver.get("storage"):
            storage, status, scale = rt, ver_status, ver_scale
        columns[ver["name"]] = list(ver.get("additionalPrinterColumns") or [])
    if errors or storage is None:
        raise invalid_causes("CustomResourceDefinition", CRDS.group,
                             crd["metadata"].get("name", ""), errors)
    return CustomResource(
        crd_name=crd["metadata"]["name"], group=group, kind=kind,
        list_kind=names.get("listKind") or f"{kind}List", plural=plural,
        singular=names.get("singular") or kind.lower(),
        short_names=list(names.get("shortNames") or []),
        categories=list(names.get("categories") or []),
        namespaced=spec.get("scope") == "Namespaced", storage=storage, served=served,
        schemas=schemas, status=status, scale=scale, columns=columns,
    )


def _crd_status(crd: JSON, now: str) -> JSON:
    """What the apiextensions controllers write once names are accepted: Established."""
    spec = crd["spec"]
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    return {
        "acceptedNames": dict(spec["names"]),
        "conditions": [
            {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now}
            for t, r, m in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                            ("Established", "InitialNamesAccepted",
                             "the initial names have been accepted"))
        ],
        "storedVersions": [storage],
    }


_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _api_resource(rt: ResourceType, singular: str, short: Sequence[str] = (),
                  categories: Sequence[str] = ()) -> list[JSON]:
    """Discovery entries (APIResource) of one resource and its subresources."""
    out: list[JSON] = [{"name": rt.plural, "singularName": singular, "namespaced": rt.namespaced,
                        "kind": rt.kind, "verbs": _VERBS}]
    if short:
        out[0]["shortNames"] = list(short)
    if categories:
        out[0]["categories"] = list(categories)
    for sub in sorted(rt.subresources):
        entry: JSON = {"name": f"{rt.plural}/{sub}", "singularName": "",
                       "namespaced": rt.namespaced, "kind": rt.kind,
                       "verbs": ["get", "patch", "update"]}
        if sub == "scale":
            entry.update(kind="Scale", group="autoscaling", version="v1")
        out.append(entry)
    return out


@dataclass
class WatchRequest:
    """A watch the handler turns into a stream (see `K8sEmulator._stream`)."""

    served: ResourceType
    stored: ResourceType
    namespace: str
    label_selector: str
    name: str
    resource_version: str
    timeout_s: float


# --------------------------------------------------------------------------- the emulator


class K8sEmulator:
    """The emulated API server: state, RBAC, faults, and the HTTP server in a thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.store = Store()
        self._tokens: dict[str, Identity] = {ADMIN_TOKEN: Identity(ADMIN_USER, ALLOW_ALL)}
        self._faults: builtins.list[Fault] = []
        self._log: builtins.list[RecordedRequest] = []
        self._clients: builtins.list[k8s_client.ApiClient] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._crds: dict[str, CustomResource] = {}
        #: (group, version, plural) -> (its CRD, the ResourceType that version serves)
        self._custom: dict[tuple[str, str, str], tuple[CustomResource, ResourceType]] = {}
        self.app = self._build_app()

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("the emulator is not started; call start() first")
        port = self._socket.getsockname()[1]
        return f"http://{self.host}:{port}"

    def start(self) -> K8sEmulator:
        """Bind a free port and serve in a background thread; returns once accepting."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._socket = sock
        config = uvicorn.Config(
            _FaultLayer(self.app, self),
            log_level="warning",
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="k8s-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Kubernetes API emulator failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Close clients handed out by `api_client`, stop the server and join its thread."""
        for api in self._clients:
            api.close()  # type: ignore[no-untyped-call]
        self._clients.clear()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None

    def __enter__(self) -> K8sEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- clients & auth

    def add_token(self, token: str, rules: Sequence[PolicyRule], user: str | None = None) -> str:
        """Authenticate `token` as `user` with exactly `rules` (like a bound Role)."""
        with self.store.lock:
            self._tokens[token] = Identity(user or f"system:serviceaccount:test:{token}",
                                           tuple(rules))
        return token

    def configuration(
        self, token: str | None = ADMIN_TOKEN, retries: int | bool | None = None
    ) -> k8s_client.Configuration:
        """A client Configuration pointing at this emulator, authenticating with `token`.

        `retries` is urllib3's: None keeps the client default (which retries idempotent
        requests on connection errors and on 429/503 with Retry-After), False disables it.
        """
        cfg = k8s_client.Configuration(host=self.url, retries=retries)
        if token is not None:
            cfg.api_key = {"BearerToken": token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cfg

    def api_client(
        self, token: str | None = ADMIN_TOKEN, retries: int | bool | None = None
    ) -> k8s_client.ApiClient:
        """An ApiClient for this emulator; `stop()` closes it, so tests need not."""
        api = k8s_client.ApiClient(self.configuration(token, retries))
        self._clients.append(api)
        return api

    def write_kubeconfig(self, path: Path, token: str = ADMIN_TOKEN,
                         context: str = "emulator", namespace: str = "default") -> Path:
        """Write a kubeconfig for this emulator (JSON is valid YAML), for kubeconfig loading."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                         "namespace": namespace}}],
            "current-context": context,
        }
        path.write_text(json.dumps(cfg))
        return path

    # ----------------------------------------------------------------- faults

    def _add_fault(self, fault: Fault) -> Fault:
        with self.store.lock:
            self._faults.append(fault)
        return fault

    def fail(self, status: int, times: int | None = 1, path: str = ".*",
             method: str | None = None, retry_after_s: int = 1) -> Fault:
        """Answer the next `times` matching requests with `status` (429 adds Retry-After)."""
        return self._add_fault(Fault(re.compile(path), method, times, status=status,
                                     retry_after_s=retry_after_s))

    def drop(self, times: int | None = 1, path: str = ".*", method: str | None = None) -> Fault:
        """Close the connection of the next `times` matching requests without answering."""
        return self._add_fault(Fault(re.compile(path), method, times, drop=True))

    def delay(self, seconds: float, path: str = ".*", method: str | None = None,
              times: int | None = None) -> Fault:
        """Answer matching requests `seconds` late (forever unless `times` is given)."""
        return self._add_fault(Fault(re.compile(path), method, times, delay_s=seconds))

    def clear_faults(self) -> None:
        with self.store.lock:
            self._faults.clear()

    def _take_faults(self, method: str, path: str) -> tuple[float, Fault | None]:
        """Total delay of matching latency faults, and the first matching failure (consumed)."""
        delay, failure = 0.0, None
        with self.store.lock:
            for fault in self._faults:
                if not fault.matches(method, path):
                    continue
                is_failure = fault.drop or fault.status is not None
                if is_failure and failure is not None:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                if is_failure:
                    failure = fault
                delay += fault.delay_s
        return delay, failure

    # ----------------------------------------------------------------- test helpers

    @property
    def requests_log(self) -> builtins.list[RecordedRequest]:
        with self.store.lock:
            return list(self._log)

    def _record(self, entry: RecordedRequest) -> None:
        with self.store.lock:
            self._log.append(entry)

    def seed_deployment(self, namespace: str, name: str, replicas: int = 1,
                        labels: Mapping[str, str] | None = None) -> JSON:
        """Create a Deployment directly in the store (no HTTP, no RBAC); returns a copy."""
        labels = dict(labels or {"app": name})
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai"}]},
                },
            },
        }
        return self.create(DEPLOYMENTS, namespace, body)

    def seed_hpa(self, namespace: str, name: str, target: str, kind: str = "Deployment") -> JSON:
        """Create an autoscaling/v2 HPA whose scaleTargetRef is `kind/target`."""
        body = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                "minReplicas": 1,
                "maxReplicas": 10,
            },
        }
        return self.create(HPAS, namespace, body)

    def seed_statefulset(self, namespace: str, name: str, replicas: int = 1,
                         labels: Mapping[str, str] | None = None) -> JSON:
        """Create an apps/v1 StatefulSet directly in the store; returns a copy."""
        labels = dict(labels or {"app": name})
        body = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai"}]},
                },
            },
        }
        return self.create(STATEFULSETS, namespace, body)

    def install_crd(self, crd: Mapping[str, Any]) -> JSON:
        """Register a CustomResourceDefinition directly (no HTTP, no RBAC), as `kubectl apply`
        of a CRD manifest would; its resources are served at once (Established)."""
        return self.create(CRDS, "", copy.deepcopy(dict(crd)))

    def custom_resource_type(self, api_version: str, plural: str) -> ResourceType:
        """The ResourceType a registered CRD serves at `api_version`/`plural` (for `get`)."""
        group, _, version = api_version.rpartition("/")
        rt = self._served(group, version, plural)
        if rt is None:
            raise KeyError(f"{plural}.{group}/{version} is not served: install its CRD first")
        return rt

    def seed_custom(self, api_version: str, plural: str, namespace: str, body: JSON) -> JSON:
        """Create a custom object directly (validated against its CRD, no HTTP, no RBAC)."""
        rt = self.custom_resource_type(api_version, plural)
        return self.create(rt, namespace, copy.deepcopy(body))

    def set_custom_status(self, api_version: str, plural: str, namespace: str, name: str,
                          status: JSON) -> JSON:
        """Write a custom object's status as its own controller would (status subresource)."""
        group, _, version = api_version.rpartition("/")
        rt = self._served(group, version, plural)
        current = self.get(rt, namespace, name) if rt else None
        if rt is None or current is None:
            raise KeyError(f"{plural}.{group} {namespace}/{name} does not exist")
        return self.update(rt, namespace, name, {**current, "status": status},
                           subresource="status" if "status" in rt.subresources else "")

    def compact(self) -> None:
        """Drop the watch history: a watch from any earlier resourceVersion gets 410 Gone."""
        self.store.compact()

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON | None:
        crd = self.custom_resource(rt)
        with self.store.lock:
            obj = self.store.objects.get((crd.storage if crd else rt, namespace, name))
            return self._present(rt, obj) if obj is not None else None

    def deployment(self, namespace: str, name: str) -> JSON | None:
        """The stored Deployment (a copy), or None."""
        return self.get(DEPLOYMENTS, namespace, name)

    def lease(self, namespace: str, name: str) -> JSON | None:
        return self.get(LEASES, namespace, name)

    def events(self, namespace: str | None = None) -> builtins.list[JSON]:
        """Every stored Event (events.k8s.io/v1 and core v1), oldest first."""
        with self.store.lock:
            found = [
                copy.deepcopy(obj)
                for (rt, ns, _), obj in self.store.objects.items()
                if rt.plural == "events" and (namespace is None or ns == namespace)
            ]
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    # ----------------------------------------------------------------- semantics

    def custom_resource(self, rt: ResourceType) -> CustomResource | None:
        """The CRD behind a served or stored custom ResourceType, or None for built-ins."""
        with self.store.lock:
            entry = self._custom.get((rt.group, rt.version, rt.plural))
            return entry[0] if entry else None

    def _served(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self.store.lock:
            entry = self._custom.get((group, version, plural))
        return entry[1] if entry else SERVED.get((group, version, plural))

    def _register(self, crd: JSON) -> None:
        """Serve (or re-serve, after an update) the resources a stored CRD defines."""
        parsed = parse_crd(crd)
        with self.store.lock:
            self._unregister(parsed.crd_name)
            self._crds[parsed.crd_name] = parsed
            for version, rt in parsed.served.items():
                self._custom[(parsed.group, version, parsed.plural)] = (parsed, rt)
            self._custom[(parsed.group, parsed.storage.version, parsed.plural)] = (
                parsed, parsed.served.get(parsed.storage.version, parsed.storage))

    def _unregister(self, crd_name: str) -> CustomResource | None:
        with self.store.lock:
            old = self._crds.pop(crd_name, None)
            if old is not None:
                for key in [k for k, (c, _) in self._custom.items() if c is old]:
                    del self._custom[key]
            return old

    def _admit_custom(self, crd: CustomResource, served: ResourceType, obj: JSON,
                      current: JSON | None, subresource: str, strict: bool) -> JSON:
        """Status subresource split, defaults, pruning and validation of a custom object.

        With a status subresource, the main resource ignores `status` and `/status` ignores
        everything else, exactly as the apiextensions-apiserver's two strategies do.
        """
        if subresource == "status":
            assert current is not None
            admitted = copy.deepcopy(current)
            admitted.pop("status", None)
            if "status" in obj:
                admitted["status"] = copy.deepcopy(obj["status"])
        else:
            admitted = obj
            if crd.status:
                admitted.pop("status", None)
                if current is not None and "status" in current:
                    admitted["status"] = copy.deepcopy(current["status"])
        schema = crd.schemas[served.version]
        admitted, removed = schema.prune(schema.default(admitted))
        if strict and removed:
            raise bad_request("strict decoding error: " + ", ".join(
                f'unknown field "{r}"' for r in removed))
        errors = schema.validate(admitted)
        if errors:
            raise invalid_causes(crd.kind, crd.group, admitted["metadata"]["name"], errors)
        return admitted

    def create(self, rt: ResourceType, namespace: str, body: JSON, strict: bool = False) -> JSON:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name")
        if not name:
            raise invalid(rt, "", "metadata.name",
                          "Required value: name or generateName is required")
        if meta.get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        if rt in VALIDATORS:
            VALIDATORS[rt](body, name)
        if rt is CRDS:
            parse_crd(body)  # refuse before storing anything
        crd = self.custom_resource(rt)
        stored_rt = crd.storage if crd else rt
        with self.store.lock:
            if (stored_rt, namespace, name) in self.store.objects:
                raise already_exists(rt, name)
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            obj["metadata"]["name"] = name
            if crd is not None:
                obj = self._admit_custom(crd, rt, obj, None, "", strict)
            meta = obj["metadata"]
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                        resourceVersion=self.store.next_revision())
            if not rt.namespaced:
                meta.pop("namespace")
            if rt.tracks_generation:
                meta["generation"] = 1
            self._settle(rt, obj, None)
            self.store.objects[(stored_rt, namespace, name)] = obj
            self.store.emit("ADDED", stored_rt, namespace, obj)
            if rt is CRDS:
                self._register(obj)
            return self._present(rt, obj)

    def _present(self, served: ResourceType, obj: JSON) -> JSON:
        """A copy of a stored object as the version it is read through shows it."""
        out = copy.deepcopy(obj)
        out["apiVersion"] = served.api_version
        return out

    def _settle(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        """Server-side consequences of a write: status kept or derived (instant controller)."""
        if rt in BUILTIN_SCALABLE:
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            n = spec["replicas"]
            obj["status"] = {
                "observedGeneration": obj["metadata"].get("generation", 1),
                "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
            }
            if rt is STATEFULSETS:
                obj["status"]["currentReplicas"] = n
        elif rt is HPAS:
            obj["status"] = (old or {}).get("status", {"currentReplicas": 0, "desiredReplicas": 0})
        elif rt is CRDS:
            obj["status"] = _crd_status(obj, _now())

    def _generation_changed(self, rt: ResourceType, crd: CustomResource | None, obj: JSON,
                            current: JSON) -> bool:
        if crd is not None:
            return crd.spec_part(obj) != crd.spec_part(current)
        return bool(obj.get("spec") != current.get("spec"))

    def update(self, rt: ResourceType, namespace: str, name: str, body: JSON,
               base: JSON | None = None, subresource: str = "", strict: bool = False) -> JSON:
        """Replace an object, with the optimistic-concurrency check on resourceVersion.

        An update that changes nothing is not written (the resourceVersion stays), as the real
        server's GuaranteedUpdate does. `subresource="status"` writes only the status of a
        custom object.
        """
        meta = body.get("metadata") or {}
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                              f"name on the URL ({name})")
        if rt in VALIDATORS:
            VALIDATORS[rt](body, name)
        if rt is CRDS:
            parse_crd({**body, "metadata": {**meta, "name": name}})
        crd = self.custom_resource(rt)
        stored_rt = crd.storage if crd else rt
        with self.store.lock:
            current = self.store.objects.get((stored_rt, namespace, name))
            if current is None:
                raise not_found(rt, name)
            if base is not None and base["metadata"]["resourceVersion"] != (
                current["metadata"]["resourceVersion"]
            ):
                raise conflict(rt, name)  # the patch was computed against an older object
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = stored_rt.api_version, rt.kind
            keep = {k: current["metadata"][k] for k in
                    ("uid", "creationTimestamp", "namespace", "generation", "resourceVersion")
                    if k in current["metadata"]}
            obj["metadata"] = {**obj.get("metadata", {}), **keep, "name": name}
            if crd is not None:
                obj = self._admit_custom(crd, rt, obj, current, subresource, strict)
            if rt.tracks_generation and self._generation_changed(rt, crd, obj, current):
                obj["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            self._settle(rt, obj, current)
            if obj == current:
                return self._present(rt, current)
            obj["metadata"]["resourceVersion"] = self.store.next_revision()
            self.store.objects[(stored_rt, namespace, name)] = obj
            self.store.emit("MODIFIED", stored_rt, namespace, obj)
            if rt is CRDS:
                self._register(obj)
            return self._present(rt, obj)

    def scale_of(self, obj: JSON, rt: ResourceType = DEPLOYMENTS) -> JSON:
        """The autoscaling/v1 Scale view of a workload, as its scale subresource serves it:
        `spec.replicas`/`spec.selector` for Deployments and StatefulSets, the CRD's
        specReplicasPath/statusReplicasPath/labelSelectorPath for custom resources."""
        meta = obj["metadata"]
        crd = self.custom_resource(rt)
        if crd is not None and crd.scale is not None:
            selector_path = crd.scale.get("labelSelectorPath")
            selector = get_path(obj, selector_path) if selector_path else None
            spec_n = get_path(obj, crd.scale["specReplicasPath"])
            status_n = get_path(obj, crd.scale["statusReplicasPath"])
            spec: JSON = {"replicas": spec_n if isinstance(spec_n, int) else 0}
            status: JSON = {"replicas": status_n if isinstance(status_n, int) else 0}
            if isinstance(selector, str) and selector:
                status["selector"] = selector
        else:
            spec = {"replicas": obj["spec"].get("replicas", 1)}
            status = {"replicas": obj.get("status", {}).get("replicas", 0),
                      "selector": selector_string(obj["spec"].get("selector"))}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in
                         ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": spec,
            "status": status,
        }

    def update_scale(
        self, namespace: str, name: str, scale: JSON, base: JSON | None = None,
        rt: ResourceType = DEPLOYMENTS,
    ) -> JSON:
        """Write a Scale back to its workload: only the replicas (spec path) change."""
        meta = scale.get("metadata") or {}
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                              f"name on the URL ({name})")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid_causes("Scale", "autoscaling", name, [FieldError(
                "spec.replicas", "FieldValueInvalid",
                f"Invalid value: {replicas!r}: must be greater than or equal to 0")])
        crd = self.custom_resource(rt)
        stored_rt = crd.storage if crd else rt
        with self.store.lock:
            current = self.store.objects.get((stored_rt, namespace, name))
            if current is None:
                raise not_found(rt, name)
            rv = current["metadata"]["resourceVersion"]
            stale_base = base is not None and base["metadata"]["resourceVersion"] != rv
            if stale_base or (meta.get("resourceVersion") and meta["resourceVersion"] != rv):
                raise conflict(rt, name)
            obj = copy.deepcopy(current)
            if crd is not None and crd.scale is not None:
                set_path(obj, crd.scale["specReplicasPath"], replicas)
            else:
                obj["spec"]["replicas"] = replicas
            obj["metadata"]["resourceVersion"] = ""  # checked above, under the same lock
            updated = self.update(rt, namespace, name, obj)
            return self.scale_of(updated, rt)

    def delete(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        crd = self.custom_resource(rt)
        stored_rt = crd.storage if crd else rt
        with self.store.lock:
            obj = self.store.objects.pop((stored_rt, namespace, name), None)
            if obj is None:
                raise not_found(rt, name)
            obj["metadata"]["resourceVersion"] = self.store.next_revision()
            self.store.emit("DELETED", stored_rt, namespace, obj)
            if rt is CRDS:
                gone = self._unregister(name)
                for key in [k for k in self.store.objects if gone and k[0] is gone.storage]:
                    dropped = self.store.objects.pop(key)
                    dropped["metadata"]["resourceVersion"] = self.store.next_revision()
                    self.store.emit("DELETED", key[0], key[1], dropped)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": _details(rt, name)}

    def list(self, rt: ResourceType, namespace: str, selector: str) -> JSON:
        crd = self.custom_resource(rt)
        stored_rt = crd.storage if crd else rt
        with self.store.lock:
            items = [
                self._present(rt, obj)
                for (r, ns, _), obj in sorted(self.store.objects.items(),
                                              key=lambda kv: (kv[0][1], kv[0][2]))
                if r is stored_rt and (not namespace or ns == namespace)
                and matches_selector(selector, obj["metadata"].get("labels") or {})
            ]
            revision = str(self.store.revision)
        list_kind = crd.list_kind if crd else f"{rt.kind}List"
        return {"kind": list_kind, "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": revision}, "items": items}

    # ----------------------------------------------------------------- discovery

    def _discovery(self, path: str) -> JSON | None:
        """`/version`, `/api`, `/api/v1`, `/apis` and `/apis/GROUP/VERSION`, as the HPA's
        RESTMapper and the client's DynamicClient read them; None for other paths."""
        path = path.rstrip("/")
        if path == "/version":
            return {"major": "1", "minor": "30", "gitVersion": "v1.30.0-forescale-emulator",
                    "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:0"}]}
        groups = self._groups()
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}
                                         for v in versions],
                 "preferredVersion": {"groupVersion": f"{g}/{versions[0]}",
                                      "version": versions[0]}}
                for g, versions in sorted(groups.items()) if g]}
        m = re.fullmatch(r"/api/(v1)|/apis/([^/]+)/([^/]+)", path)
        if m is None:
            return None
        group, version = ("", "v1") if m[1] else (m[2], m[3])
        if version not in groups.get(group, []):
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": self._resources(group, version)}

    def _groups(self) -> dict[str, builtins.list[str]]:
        groups: dict[str, builtins.list[str]] = {}
        with self.store.lock:
            keys = list(SERVED) + list(self._custom)
        for group, version, _ in keys:
            if version not in groups.setdefault(group, []):
                groups[group].append(version)
        return groups

    def _resources(self, group: str, version: str) -> builtins.list[JSON]:
        out: builtins.list[JSON] = []
        for (g, v, _), rt in sorted(SERVED.items()):
            if (g, v) == (group, version):
                out += _api_resource(rt, rt.kind.lower())
        with self.store.lock:
            custom = [(c, rt) for (g, v, _), (c, rt) in self._custom.items()
                      if (g, v) == (group, version) and v in c.served]
        for crd, rt in custom:
            out += _api_resource(rt, crd.singular, crd.short_names, crd.categories)
        return out

    # ----------------------------------------------------------------- HTTP

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        async def handle(request: Request) -> Response:
            entry = RecordedRequest(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                content_type=request.headers.get("content-type", "").split(";")[0].strip(),
                headers=dict(request.headers),
            )
            try:
                raw = await request.body()
                entry.body = json.loads(raw) if raw else None
            except ValueError:
                entry.body = None
                error: ApiError | None = bad_request("request body is not valid JSON")
            else:
                error = None
            try:
                if error is not None:
                    raise error
                body = self._serve(request.headers.get("authorization", ""), entry)
                if isinstance(body, WatchRequest):
                    response: Response = StreamingResponse(self._stream(body),
                                                           media_type="application/json")
                else:
                    status_code = 201 if request.method == "POST" else 200
                    response = JSONResponse(body, status_code=status_code)
            except ApiError as exc:
                response = JSONResponse(exc.body(), status_code=exc.code, headers=exc.headers)
            entry.status = response.status_code
            self._record(entry)
            return response

        return app

    def _authenticate(self, authorization: str) -> Identity:
        scheme, _, token = authorization.partition(" ")
        identity = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if identity is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return identity

    def _serve(self, authorization: str, entry: RecordedRequest) -> JSON | WatchRequest:
        identity = self._authenticate(authorization)
        entry.user = identity.user
        if entry.method == "GET":
            # Discovery is open to every authenticated user (the system:discovery role).
            document = self._discovery(entry.path)
            if document is not None:
                return document
        info = resolve(entry.method, entry.path, entry.query)
        entry.info = info
        rt = self._served(info.api_group, info.api_version, info.resource) if info else None
        if info is None or rt is None or (info.subresource and info.subresource not in
                                          rt.subresources) or (info.namespace and
                                                               not rt.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not any(r.allows(info) for r in identity.rules):
            raise forbidden(identity.user, info, rt)
        return self._dispatch(rt, info, entry)

    def _dispatch(self, rt: ResourceType, info: RequestInfo,
                  entry: RecordedRequest) -> JSON | WatchRequest:
        ns, name, verb = info.namespace, info.name, info.verb
        strict = entry.query.get("fieldValidation") == "Strict"
        if info.subresource == "scale":
            return self._dispatch_scale(rt, ns, name, verb, entry)
        if verb == "list":
            return self.list(rt, ns, entry.query.get("labelSelector", ""))
        if verb == "watch":
            return self._watch_request(rt, ns, entry.query)
        if not ns and rt.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if verb == "create":
            return self.create(rt, ns, _object_body(entry.body), strict)
        current = self.get(rt, ns, name)
        if current is None:
            raise not_found(rt, name)
        if verb == "get":
            return current
        if verb == "update":
            return self.update(rt, ns, name, _object_body(entry.body),
                               subresource=info.subresource, strict=strict)
        if verb == "patch":
            patched = apply_patch(entry.content_type, current, entry.body)
            return self.update(rt, ns, name, patched, base=current,
                               subresource=info.subresource, strict=strict)
        if verb == "delete" and not info.subresource:
            return self.delete(rt, ns, name)
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported on {rt.qualified}")

    def _dispatch_scale(self, rt: ResourceType, ns: str, name: str, verb: str,
                        entry: RecordedRequest) -> JSON:
        obj = self.get(rt, ns, name)
        if obj is None:
            raise not_found(rt, name)
        scale = self.scale_of(obj, rt)
        if verb == "get":
            return scale
        if verb == "update":
            return self.update_scale(ns, name, _object_body(entry.body), rt=rt)
        if verb == "patch":
            patched = apply_patch(entry.content_type, scale, entry.body)
            return self.update_scale(ns, name, patched, base=scale, rt=rt)
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported on "
                       f"{rt.plural}/scale")

    # ----------------------------------------------------------------- watch

    def _watch_request(self, rt: ResourceType, namespace: str,
                       query: Mapping[str, str]) -> WatchRequest:
        fields = dict(p.split("=", 1) for p in query.get("fieldSelector", "").split(",")
                      if "=" in p)
        unknown = set(fields) - {"metadata.name"}
        if unknown:
            raise bad_request(f'"{sorted(unknown)[0]}" is not a known field selector: only '
                              '"metadata.name" is supported by the forescale API emulator')
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds {query['timeoutSeconds']!r}") from None
        rv = query.get("resourceVersion", "")
        if rv and not rv.isdigit():
            raise bad_request(f"invalid resourceVersion {rv!r}: must be an integer")
        crd = self.custom_resource(rt)
        return WatchRequest(rt, crd.storage if crd else rt, namespace,
                            query.get("labelSelector", ""), fields.get("metadata.name", ""),
                            rv, timeout)

    def _watch_matches(self, w: WatchRequest, rt: ResourceType, namespace: str,
                       obj: JSON) -> bool:
        meta = obj["metadata"]
        return (rt is w.stored and (not w.namespace or namespace == w.namespace)
                and (not w.name or meta.get("name") == w.name)
                and matches_selector(w.label_selector, meta.get("labels") or {}))

    def _start_watch(self, w: WatchRequest) -> tuple[builtins.list[JSON], int]:
        """The events to send first and the revision to follow from.

        No resourceVersion (or "0"): synthetic ADDED events for what exists now, as the
        server does. A version older than the retained history: one ERROR event carrying a
        410 `Expired` Status, as the watch cache answers (the HTTP status is 200).
        """
        with self.store.lock:
            if w.resource_version in ("", "0"):
                initial = [
                    {"type": "ADDED", "object": self._present(w.served, obj)}
                    for (rt, ns, _), obj in sorted(self.store.objects.items(),
                                                   key=lambda kv: int(
                                                       kv[1]["metadata"]["resourceVersion"]))
                    if self._watch_matches(w, rt, ns, obj)
                ]
                return initial, self.store.revision
            since = int(w.resource_version)
            if since < self.store.compacted:
                oldest = self.store.compacted + 1
                gone = ApiError(410, "Expired",
                                f"too old resource version: {since} ({oldest})")
                return [{"type": "ERROR", "object": gone.body()}], -1
            return [], since

    async def _stream(self, w: WatchRequest) -> Any:
        """Newline-delimited watch events until `timeoutSeconds` or the server stops."""
        initial, cursor = self._start_watch(w)
        for event in initial:
            yield json.dumps(event) + "\n"
        if cursor < 0:
            return
        deadline = time.monotonic() + w.timeout_s
        while time.monotonic() < deadline and not (self._server and self._server.should_exit):
            with self.store.lock:
                pending = [e for e in self.store.history if e.revision > cursor]
            for e in pending:
                cursor = e.revision
                if self._watch_matches(w, e.rt, e.namespace, e.obj):
                    yield json.dumps({"type": e.type,
                                      "object": self._present(w.served, e.obj)}) + "\n"
            await asyncio.sleep(0.02)


def forbidden(user: str, info: RequestInfo, rt: ResourceType) -> ApiError:
    """A 403 worded as kube-apiserver's RBAC authorizer words it."""
    target = f'{rt.qualified} "{info.name}"' if info.name else rt.qualified
    where = f' in the namespace "{info.namespace}"' if info.namespace else " at the cluster scope"
    return ApiError(
        403,
        "Forbidden",
        f'{target} is forbidden: User "{user}" cannot {info.verb} resource '
        f'"{info.rbac_resource}" in API group "{info.api_group}"{where}',
        _details(rt, info.name),
    )


def _object_body(body: Any) -> JSON:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


class _FaultLayer:
    """Raw ASGI wrapper applying injected latency and failures before the API sees a request.

    It sits outside FastAPI because a connection drop needs the server's transport, which only
    the raw `send` callable of uvicorn's h11 protocol reaches (`send.__self__.transport`).
    """

    def __init__(self, app: FastAPI, emulator: K8sEmulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        delay, failure = self.emulator._take_faults(method, path)
        if delay:
            await asyncio.sleep(delay)
        if failure is None:
            await self.app(scope, receive, send)
            return
        query = dict(
            p.split("=", 1) if "=" in p else (p, "")
            for p in scope.get("query_string", b"").decode().split("&") if p
        )
        entry = RecordedRequest(method, path, query, "", info=resolve(method, path, query))
        if failure.drop:
            entry.fault = "drop"
            self.emulator._record(entry)
            cycle = getattr(send, "__self__", None)
            transport = getattr(cycle, "transport", None)
            if transport is None:
                raise RuntimeError("connection drops need uvicorn's h11 protocol")
            transport.close()
            cycle.disconnected = True  # type: ignore[union-attr]  # no 500 after we return
            return
        assert failure.status is not None
        error = _injected(failure.status, failure.retry_after_s)
        entry.fault, entry.status = f"status {failure.status}", failure.status
        self.emulator._record(entry)
        payload = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": failure.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def k8s_api() -> Iterator[K8sEmulator]:
    """A started API emulator, stopped (with every client it handed out) after the test."""
    emulator = K8sEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
