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

Known simplifications, on purpose: there is no watch, no admission, no garbage collection, and
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
from fastapi.responses import JSONResponse, Response
from kubernetes import client as k8s_client

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

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name the server uses in messages: `deployments.apps`, or `events` for core."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", True, frozenset({"scale"}))
HPAS = ResourceType(
    "autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True
)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event")
CORE_EVENTS = ResourceType("", "v1", "events", "Event")
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap")

SERVED: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r
    for r in (DEPLOYMENTS, HPAS, LEASES, EVENTS, CORE_EVENTS, CONFIGMAPS)
}

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
        verb = "get" if name else ("watch" if query.get("watch") in ("1", "true") else "list")
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
    kind = "Scale" if field_path.startswith("spec.replicas") and rt is DEPLOYMENTS else rt.kind
    group = "autoscaling" if kind == "Scale" else rt.group
    return ApiError(
        422,
        "Invalid",
        f'{kind}{"." + group if group else ""} "{name}" is invalid: {field_path}: {problem}',
        {"name": name, "group": group, "kind": kind,
         "causes": [{"reason": "FieldValueInvalid", "message": problem, "field": field_path}]},
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


class Store:
    """Objects keyed by (resource, namespace, name), with one global resourceVersion counter.

    The lock makes each read-modify-write atomic, which is the guarantee etcd's transactions
    give kube-apiserver and what optimistic concurrency on resourceVersion is checked against.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[ResourceType, str, str], JSON] = {}
        self.revision = 0

    def next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)


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


VALIDATORS: dict[ResourceType, Callable[[JSON, str], None]] = {
    DEPLOYMENTS: _validate_deployment,
    HPAS: _validate_hpa,
    EVENTS: _validate_event,
}


# --------------------------------------------------------------------------- the emulator


class K8sEmulator:
    """The emulated API server: state, RBAC, faults, and the HTTP server in a thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.store = Store()
        self._tokens: dict[str, Identity] = {ADMIN_TOKEN: Identity(ADMIN_USER, ALLOW_ALL)}
        self._faults: list[Fault] = []
        self._log: list[RecordedRequest] = []
        self._clients: list[k8s_client.ApiClient] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
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
    def requests_log(self) -> list[RecordedRequest]:
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

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON | None:
        with self.store.lock:
            obj = self.store.objects.get((rt, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def deployment(self, namespace: str, name: str) -> JSON | None:
        """The stored Deployment (a copy), or None."""
        return self.get(DEPLOYMENTS, namespace, name)

    def lease(self, namespace: str, name: str) -> JSON | None:
        return self.get(LEASES, namespace, name)

    def events(self, namespace: str | None = None) -> list[JSON]:
        """Every stored Event (events.k8s.io/v1 and core v1), oldest first."""
        with self.store.lock:
            found = [
                copy.deepcopy(obj)
                for (rt, ns, _), obj in self.store.objects.items()
                if rt.plural == "events" and (namespace is None or ns == namespace)
            ]
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    # ----------------------------------------------------------------- semantics

    def create(self, rt: ResourceType, namespace: str, body: JSON) -> JSON:
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
        with self.store.lock:
            if (rt, namespace, name) in self.store.objects:
                raise already_exists(rt, name)
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            meta = obj["metadata"]
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                        resourceVersion=self.store.next_revision())
            if rt.tracks_generation:
                meta["generation"] = 1
            self._settle(rt, obj, None)
            self.store.objects[(rt, namespace, name)] = obj
            return copy.deepcopy(obj)

    def _settle(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        """Server-side consequences of a write: status kept or derived (instant controller)."""
        if rt is DEPLOYMENTS:
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            n = spec["replicas"]
            obj["status"] = {
                "observedGeneration": obj["metadata"].get("generation", 1),
                "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
            }
        elif rt is HPAS:
            obj["status"] = (old or {}).get("status", {"currentReplicas": 0, "desiredReplicas": 0})

    def update(self, rt: ResourceType, namespace: str, name: str, body: JSON,
               base: JSON | None = None) -> JSON:
        """Replace an object, with the optimistic-concurrency check on resourceVersion.

        An update that changes nothing is not written (the resourceVersion stays), as the real
        server's GuaranteedUpdate does.
        """
        meta = body.get("metadata") or {}
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                              f"name on the URL ({name})")
        if rt in VALIDATORS:
            VALIDATORS[rt](body, name)
        with self.store.lock:
            current = self.store.objects.get((rt, namespace, name))
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
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            keep = {k: current["metadata"][k] for k in
                    ("uid", "creationTimestamp", "namespace", "generation", "resourceVersion")
                    if k in current["metadata"]}
            obj["metadata"] = {**obj.get("metadata", {}), **keep, "name": name}
            if rt.tracks_generation and obj.get("spec") != current.get("spec"):
                obj["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            self._settle(rt, obj, current)
            if obj == current:
                return copy.deepcopy(current)
            obj["metadata"]["resourceVersion"] = self.store.next_revision()
            self.store.objects[(rt, namespace, name)] = obj
            return copy.deepcopy(obj)

    def scale_of(self, dep: JSON) -> JSON:
        """The autoscaling/v1 Scale view of a Deployment, as the scale subresource serves it."""
        meta = dep["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in
                         ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
            "spec": {"replicas": dep["spec"].get("replicas", 1)},
            "status": {
                "replicas": dep.get("status", {}).get("replicas", 0),
                "selector": selector_string(dep["spec"].get("selector")),
            },
        }

    def update_scale(
        self, namespace: str, name: str, scale: JSON, base: JSON | None = None
    ) -> JSON:
        """Write a Scale back to its Deployment: only spec.replicas changes."""
        meta = scale.get("metadata") or {}
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                              f"name on the URL ({name})")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid(DEPLOYMENTS, name, "spec.replicas",
                          f"Invalid value: {replicas!r}: must be greater than or equal to 0")
        with self.store.lock:
            current = self.store.objects.get((DEPLOYMENTS, namespace, name))
            if current is None:
                raise not_found(DEPLOYMENTS, name)
            rv = current["metadata"]["resourceVersion"]
            stale_base = base is not None and base["metadata"]["resourceVersion"] != rv
            if stale_base or (meta.get("resourceVersion") and meta["resourceVersion"] != rv):
                raise conflict(DEPLOYMENTS, name)
            dep = copy.deepcopy(current)
            dep["spec"]["replicas"] = replicas
            dep["metadata"]["resourceVersion"] = ""  # checked above, under the same lock
            updated = self.update(DEPLOYMENTS, namespace, name, dep)
            return self.scale_of(updated)

    def delete(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        with self.store.lock:
            if self.store.objects.pop((rt, namespace, name), None) is None:
                raise not_found(rt, name)
            self.store.next_revision()
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": _details(rt, name)}

    def list(self, rt: ResourceType, namespace: str, selector: str) -> JSON:
        with self.store.lock:
            items = [
                copy.deepcopy(obj)
                for (r, ns, _), obj in sorted(self.store.objects.items(),
                                              key=lambda kv: (kv[0][1], kv[0][2]))
                if r is rt and (not namespace or ns == namespace)
                and matches_selector(selector, obj["metadata"].get("labels") or {})
            ]
            revision = str(self.store.revision)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": revision}, "items": items}

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
                status_code = 201 if request.method == "POST" else 200
                response: Response = JSONResponse(body, status_code=status_code)
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

    def _serve(self, authorization: str, entry: RecordedRequest) -> JSON:
        identity = self._authenticate(authorization)
        entry.user = identity.user
        info = resolve(entry.method, entry.path, entry.query)
        entry.info = info
        rt = SERVED.get((info.api_group, info.api_version, info.resource)) if info else None
        if info is None or rt is None or (info.subresource and info.subresource not in
                                          rt.subresources):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not any(r.allows(info) for r in identity.rules):
            raise forbidden(identity.user, info, rt)
        return self._dispatch(rt, info, entry)

    def _dispatch(self, rt: ResourceType, info: RequestInfo, entry: RecordedRequest) -> JSON:
        ns, name, verb = info.namespace, info.name, info.verb
        if info.subresource == "scale":
            return self._dispatch_scale(ns, name, verb, entry)
        if verb == "list":
            return self.list(rt, ns, entry.query.get("labelSelector", ""))
        if verb == "watch":
            raise bad_request("watch is not supported by the forescale API emulator")
        if not ns:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if verb == "create":
            return self.create(rt, ns, _object_body(entry.body))
        current = self.get(rt, ns, name)
        if current is None:
            raise not_found(rt, name)
        if verb == "get":
            return current
        if verb == "update":
            return self.update(rt, ns, name, _object_body(entry.body))
        if verb == "patch":
            patched = apply_patch(entry.content_type, current, entry.body)
            return self.update(rt, ns, name, patched, base=current)
        if verb == "delete":
            return self.delete(rt, ns, name)
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported on {rt.qualified}")

    def _dispatch_scale(self, ns: str, name: str, verb: str, entry: RecordedRequest) -> JSON:
        dep = self.get(DEPLOYMENTS, ns, name)
        if dep is None:
            raise not_found(DEPLOYMENTS, name)
        scale = self.scale_of(dep)
        if verb == "get":
            return scale
        if verb == "update":
            return self.update_scale(ns, name, _object_body(entry.body))
        if verb == "patch":
            patched = apply_patch(entry.content_type, scale, entry.body)
            return self.update_scale(ns, name, patched, base=scale)
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported on deployments/scale")


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
