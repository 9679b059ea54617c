"""The VariantAutoscaler controller: variants declared as Kubernetes objects.

forescale watches `variantautoscalers.forescale.io` (list + watch with resourceVersion, in
each configured namespace or in all) and turns each object into the file config's
`VariantConfig`, validated by the same pydantic model. An object that appears starts being
managed (and trained at once), a spec change is applied without a restart (the model is
retrained only when its inputs change, `service.model_inputs`), a deleted object stops being
managed and its workload keeps the replicas it has.

What the API server cannot check is checked here and reported in the object's `Ready`
condition with the field and the value, never by stopping the others: a scale target whose
kind discovery cannot resolve, a `profileRef` ConfigMap or key that is missing or not a valid
profile, a variant name the file config (or another namespace's object) already uses. A bad
edit of a managed object keeps the last good spec running and says so.

After every reconcile pass the status of each managed object is written through the status
subresource, once, and only when it changed (the watch cache holds what was last written);
a 409 on a stale resourceVersion is retried from a fresh read. Events are posted on the
object for every scale and every refusal (HPA conflict, RBAC, GPU quota), aggregated like
client-go's event recorder: a repeat increments the Event's `series` in memory and is written
at most every `event_series_s`, so a standing refusal is not one Event per reconcile.

The loop per namespace: list (reconcile every object, forget managed ones that are gone) ->
watch from the list's resourceVersion for `resync_s` -> list again (the periodic resync). A
`410 Gone` restarts from a fresh list; any other error waits with exponential backoff
(1 s doubling to `backoff_max_s`).

VariantGroups (`variantgroups.forescale.io`) are watched by the same loop (a thread per
namespace and kind). A group's members are the managed VariantAutoscalers of its namespace
whose `spec.group` names it; with at least two, it becomes the file config's `VariantGroup`
(members, quality floor, GPU quotas) and is set in the service (`Service.set_group`), so its
members are routed and capped together from the next reconcile; deleted, or left with fewer
than two members, it is removed and they are planned independently. A group name the file
config (or another namespace's object) already declares is refused in its Ready condition.
Its status lists the members found and those missing (objects naming it that forescale
cannot manage, with why), and the last plan's routing weights and unserved demand; a
member's Ready message says which group it is planned in, or why none.
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from controller.config import ConfigError, VariantConfig, VariantGroup, load_yaml_strict
from controller.k8s import (
    CLIENT_ERRORS,
    MERGE_PATCH,
    NOTE_LIMIT_BYTES,
    _micro_time,
    default_instance,
    translate_error,
    truncate_utf8,
)
from controller.protocols import PermanentError, TemporaryError
from controller.service import DecisionRecord, Service, VariantRuntime

log = logging.getLogger("forescale.crd")

GROUP = "forescale.io"
VERSION = "v1alpha1"
PLURAL = "variantautoscalers"
KIND = "VariantAutoscaler"
GROUP_PLURAL = "variantgroups"
GROUP_KIND = "VariantGroup"
API_VERSION = f"{GROUP}/{VERSION}"
#: Prefix of `VariantRuntime.origin` for variants this controller manages.
ORIGIN_PREFIX = f"{KIND} "
MAX_REASONS = 32
TEXT_LIMIT = 1024
#: Status writes retried on 409 (each from a fresh read).
STATUS_RETRIES = 3
#: HPA-style condition types, in the order they are written.
CONDITION_TYPES = ("Ready", "Active", "ForecastHealthy", "AbleToScale")
#: Decision outcomes that mean the actuator did its part.
_ACTUATED = ("scaled", "held", "dry-run", "metric", "follower")
#: Keys kept in camelCase: the HPA `behavior` blocks the file config also takes as pasted.
_CAMEL_KEPT = ("scaleUp", "scaleDown")


class SpecError(Exception):
    """A VariantAutoscaler forescale cannot use: the field (as in the object), its value and
    what is wrong, for the Ready condition. `reason` is the condition's reason."""

    def __init__(self, field: str, value: Any, problem: str,
                 reason: str = "InvalidSpec") -> None:
        self.field, self.value, self.problem, self.reason = field, value, problem, reason
        super().__init__(f"{field}: {problem} (got {value!r})")


def origin_of(namespace: str, name: str) -> str:
    return f"{ORIGIN_PREFIX}{namespace}/{name}"


def group_origin_of(namespace: str, name: str) -> str:
    return f"{GROUP_KIND} {namespace}/{name}"


def _snake(name: str) -> str:
    """`ttftP95S` -> `ttft_p95_s`: the CRD's camelCase back to the file config's names (the
    CRD tests hold one to the other field by field)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _snake_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {(k if k in _CAMEL_KEPT else _snake(k)): (v if k in _CAMEL_KEPT
                                                         else _snake_keys(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_snake_keys(x) for x in node]
    return node


#: Looks up a profile in a ConfigMap: (namespace, name, key) -> the parsed YAML.
ProfileLookup = Callable[[str, str, str], Any]

_TOP = {"selector": "selector", "signals": "signals", "slo": "slo", "targets": "targets",
        "behaviour": "behaviour", "minReplicas": "min_replicas",
        "maxReplicas": "max_replicas", "actuation": "actuation",
        "provisioningQuantile": "provisioning_quantile"}


def variant_config(obj: Mapping[str, Any], lookup: ProfileLookup | None = None
                   ) -> VariantConfig:
    """The `VariantConfig` a VariantAutoscaler declares (its name is the variant's), or a
    `SpecError` naming the first bad field in the object's own terms."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    spec = obj.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    raw: dict[str, Any] = {
        "name": name,
        "scale_target_ref": {"namespace": namespace,
                             "api_version": ref.get("apiVersion", "apps/v1"),
                             "kind": ref.get("kind"), "name": ref.get("name")},
    }
    for key, target in _TOP.items():
        if key in spec:
            raw[target] = _snake_keys(copy.deepcopy(spec[key]))
    profile_from = "spec.profile"
    if "profile" in spec:
        raw["profile"] = _snake_keys(copy.deepcopy(spec["profile"]))
    elif "profileRef" in spec:
        pref = spec["profileRef"]
        if lookup is None:
            raise SpecError("spec.profileRef", pref, "profile ConfigMaps cannot be read here",
                            "ProfileUnavailable")
        raw["profile"] = lookup(namespace, str(pref.get("name")), str(pref.get("key")))
        profile_from = f"spec.profileRef(configmap {pref.get('name')}, key {pref.get('key')})"
    try:
        return VariantConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
        raise SpecError(_field(loc, profile_from), err.get("input"),
                        err["msg"].removeprefix("Value error, "),
                        "InvalidProfile" if loc[:1] == ["profile"] else "InvalidSpec"
                        ) from None


def _field(loc: Sequence[str], profile_from: str) -> str:
    """A pydantic location in the object's terms: spec.maxReplicas, spec.scaleTargetRef.kind,
    or the profile ConfigMap's own snake_case key."""
    if not loc:
        return "spec"
    head, rest = loc[0], list(loc[1:])
    if head == "name":
        return "metadata.name"
    if head == "scale_target_ref":
        return ".".join(["spec.scaleTargetRef", *(_camel(p) for p in rest)])
    if head == "profile":
        if profile_from != "spec.profile":
            return ".".join([profile_from, *rest])
        return ".".join(["spec.profile", *(p if p.isdigit() else _camel(p) for p in rest)])
    keep = head == "behaviour"
    return ".".join(["spec." + _camel(head),
                     *(p if keep and p[:1].islower() and "_" not in p else _camel(p)
                       for p in rest)])


def group_config(obj: Mapping[str, Any], members: Sequence[str]) -> VariantGroup:
    """The file config's `VariantGroup` a VariantGroup object declares with these members,
    or a `SpecError` naming the first bad field in the object's terms."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    spec = obj.get("spec") or {}
    try:
        return VariantGroup.model_validate({
            "name": name, "variants": list(members),
            "quality_floor": spec.get("qualityFloor", 0.0),
            "gpu_quotas": copy.deepcopy(spec.get("gpuQuotas") or {})})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        where = {"name": "metadata.name", "quality_floor": "spec.qualityFloor",
                 "gpu_quotas": "spec.gpuQuotas"}.get(loc[0] if loc else "", "spec")
        raise SpecError(".".join([where, *loc[1:]]), err.get("input"),
                        err["msg"].removeprefix("Value error, ")) from None


def now_rfc3339(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Series:
    """One aggregated Event: created once, its count written at most every interval."""

    name: str
    namespace: str
    count: int
    written_count: int
    written_at: float


@dataclass(frozen=True)
class _Kind:
    """One kind of object the controller lists and watches."""

    plural: str
    kind: str


_VA = _Kind(PLURAL, KIND)
_VG = _Kind(GROUP_PLURAL, GROUP_KIND)


@dataclass
class _Managed:
    """What the controller knows of one object: its generation processed, the Ready
    condition from its spec, and the decision-side status of the last reconcile."""

    namespace: str
    name: str
    generation: int = 0
    ready: tuple[str, str, str] = ("Unknown", "Pending", "not processed yet")
    managed: bool = False
    #: `spec.group` of the spec applied (a bad edit keeps the last good one's).
    group: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, tuple[str, str, str]] = field(default_factory=dict)


@dataclass
class _Group:
    """What the controller knows of one VariantGroup: its members (found and missing), its
    Ready condition, whether the service plans it, and its share of the last plan."""

    namespace: str
    name: str
    generation: int = 0
    ready: tuple[str, str, str] = ("Unknown", "Pending", "not processed yet")
    applied: bool = False
    members: tuple[str, ...] = ()
    #: Objects naming the group that are not managed -> why.
    missing: dict[str, str] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)


class VariantAutoscalerController:
    """Watches VariantAutoscalers and keeps `service`'s variant set, the objects' status and
    their Events in step (see the module doc).

    `check_target` raises `PermanentError` for a scale target that cannot be scaled (an
    unknown kind, no scale subresource) and `TemporaryError` when it cannot tell now; the
    wiring gives it the discovery of `KubernetesScaleTarget`. `namespaces` empty: all.
    """

    def __init__(self, api_client: k8s.ApiClient, service: Service, *,
                 namespaces: Sequence[str] = (), resync_s: float = 300.0,
                 check_target: Callable[[VariantConfig], None] | None = None,
                 component: str = "forescale", backoff_max_s: float = 60.0,
                 event_series_s: float = 300.0, request_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.api_client = api_client
        self.service = service
        self.namespaces = list(namespaces) or [""]
        self.resync_s = resync_s
        self.check_target = check_target
        self.component = component
        self.instance = default_instance(component)
        self.backoff_max_s = backoff_max_s
        self.event_series_s = event_series_s
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._events = k8s.EventsV1Api(api_client)
        self._lock = threading.RLock()
        #: (namespace, name) -> the newest object seen (watch, list, or our status write).
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._state: dict[tuple[str, str], _Managed] = {}
        #: The same for VariantGroups.
        self._group_objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[k8s_watch.Watch] = []
        self._train: queue.Queue[str | None] = queue.Queue()
        #: Counters for tests and logs: lists done, watches restarted after 410 (per plural),
        #: errors.
        self.lists = 0
        self.expired: dict[str, int] = {PLURAL: 0, GROUP_PLURAL: 0}
        self.errors = 0
        self.status_writes = 0
        service.reconcile_listeners.append(self.after_reconcile)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """One list+watch thread per namespace and kind, and the trainer of new variants."""
        for ns in self.namespaces:
            for kind in (_VA, _VG):
                t = threading.Thread(target=self._run, args=(ns, kind), daemon=True,
                                     name=f"{kind.plural}-watch-{ns or 'all'}")
                t.start()
                self._threads.append(t)
        trainer = threading.Thread(target=self._trainer, daemon=True, name="va-trainer")
        trainer.start()
        self._threads.append(trainer)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching (the open watches are cut) and join the threads, within `timeout`."""
        self._stop.set()
        self._train.put(None)
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.stop()  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self, namespace: str, kind: _Kind = _VA) -> None:
        """List, then watch from the list's version until the resync is due, again and
        again; a 410 lists at once, any other error after a backoff."""
        backoff = 1.0
        while not self._stop.is_set():
            try:
                rv = self.resync(namespace) if kind is _VA else self.resync_groups(namespace)
                self._watch(namespace, rv, kind)
                backoff = 1.0
            except ApiException as exc:
                if exc.status == 410:
                    self.expired[kind.plural] += 1
                    log.info("watch of %s in %s expired (410 Gone): listing again",
                             kind.plural, namespace or "all namespaces")
                    continue
                self._failed(namespace, kind, exc, backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception as exc:  # a watch thread must never die
                self._failed(namespace, kind, exc, backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    def _failed(self, namespace: str, kind: _Kind, exc: BaseException,
                backoff: float) -> None:
        self.errors += 1
        shown = translate_error(exc, "list", f"{kind.plural}.{GROUP}", namespace or "(all)") \
            if isinstance(exc, CLIENT_ERRORS) else exc
        log.warning("%s watch of %s failed: %s; retrying in %.0f s", kind.kind,
                    namespace or "all namespaces", shown, backoff)
        self._stop.wait(backoff)

    # ------------------------------------------------------------------ list and watch
    def _list(self, namespace: str, kind: _Kind = _VA) -> dict[str, Any]:
        if namespace:
            return _as_dict(self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural,
                _request_timeout=self.request_timeout_s))
        return _as_dict(self._custom.list_cluster_custom_object(
            GROUP, VERSION, kind.plural, _request_timeout=self.request_timeout_s))

    def _listed(self, namespace: str, kind: _Kind, on_object: Callable[..., None],
                known: Callable[[], Sequence[tuple[str, str]]],
                on_deleted: Callable[[str, str], None]) -> str:
        """List `kind`, hand each object to `on_object` (forced), and `on_deleted` those
        known but no longer listed; the list's resourceVersion, to watch from."""
        listed = self._list(namespace, kind)
        self.lists += 1
        seen = set()
        for obj in listed.get("items") or []:
            meta = obj["metadata"]
            seen.add((meta["namespace"], meta["name"]))
            on_object(obj, force=True)
        with self._lock:
            gone = [k for k in known() if (not namespace or k[0] == namespace)
                    and k not in seen]
        for ns, name in gone:
            on_deleted(ns, name)
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def resync(self, namespace: str) -> str:
        """List the VariantAutoscalers, reconcile each, forget managed ones no longer there;
        the list's resourceVersion, to watch from."""
        return self._listed(namespace, _VA, self.on_object, lambda: list(self._state),
                            self.on_deleted)

    def resync_groups(self, namespace: str) -> str:
        """`resync` for VariantGroups."""
        return self._listed(namespace, _VG, self.on_group, lambda: list(self._groups),
                            self.on_group_deleted)

    def _watch(self, namespace: str, resource_version: str, kind: _Kind = _VA) -> None:
        w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        with self._lock:
            self._watches.append(w)
        on_object, on_deleted = (self.on_object, self.on_deleted) if kind is _VA \
            else (self.on_group, self.on_group_deleted)
        try:
            func = self._custom.list_namespaced_custom_object if namespace \
                else self._custom.list_cluster_custom_object
            args = (GROUP, VERSION, namespace, kind.plural) if namespace \
                else (GROUP, VERSION, kind.plural)
            events = w.stream(  # type: ignore[no-untyped-call]
                func, *args, resource_version=resource_version,
                timeout_seconds=max(1, int(self.resync_s)))
            for event in events:
                if self._stop.is_set():
                    break
                obj = event["raw_object"]
                meta = obj.get("metadata") or {}
                if event["type"] == "DELETED":
                    on_deleted(meta.get("namespace", ""), meta.get("name", ""))
                elif event["type"] in ("ADDED", "MODIFIED"):
                    on_object(obj)
        finally:
            with self._lock:
                self._watches.remove(w)

    # ------------------------------------------------------------------ objects
    def on_object(self, obj: dict[str, Any], force: bool = False) -> None:
        """An object appeared or changed: manage it per its spec. An unchanged generation
        (our own status write) is not processed again unless `force` (a resync, which
        also picks up an edited profile ConfigMap or a newly installed target CRD)."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        generation = int(meta.get("generation") or 0)
        with self._lock:
            if _newer(self._objects, key, obj):
                self._objects[key] = obj
            st = self._state.setdefault(key, _Managed(*key))
            if not force and st.generation == generation and st.ready[0] == "True" \
                    and st.managed and key[1] in self.service.variants:
                return  # a status write of ours, or a resync of what is applied
            st.generation = generation
            self._apply_spec(st, obj)
        self.write_status(key)
        self._sync_groups(key[0])

    def _apply_spec(self, st: _Managed, obj: dict[str, Any]) -> None:
        origin = origin_of(st.namespace, st.name)
        held = self.service.variants.get(st.name)
        if held is not None and held.origin != origin:
            where = "forescale's config file" if held.origin == "config" else held.origin
            st.ready = ("False", "NameConflict",
                        f"variant {st.name!r} is already defined by {where}, which keeps "
                        f"running it; rename this {KIND} (its name is the variant's) or "
                        f"remove the other definition")
            st.managed = False
            return
        try:
            v = variant_config(obj, self._profile)
            if self.check_target is not None:
                self._check_target(v)
        except SpecError as exc:
            keep = " (the last valid spec keeps running)" if st.managed else ""
            st.ready = ("False", exc.reason, f"{exc}{keep}")
            log.warning("%s %s/%s: %s%s", KIND, st.namespace, st.name, exc, keep)
            return
        except TemporaryError as exc:
            st.ready = ("Unknown", "TemporaryError",
                        f"cannot check the object now ({exc}); retried at the next resync")
            return
        try:
            if held is None:
                if self.service.add_variant(v, origin):  # no model stored for its inputs
                    self._train.put(v.name)
            elif self.service.update_variant(v, origin):
                self._train.put(v.name)  # its model's inputs changed
        except (ConfigError, PermanentError) as exc:
            st.ready = ("False", "NotManaged", str(exc))
            return
        st.managed = True
        group = (obj.get("spec") or {}).get("group")
        st.group = str(group) if group else None
        st.ready = ("True", "Managed", f"generation {st.generation} is applied")

    def _check_target(self, v: VariantConfig) -> None:
        assert self.check_target is not None
        try:
            self.check_target(v)
        except PermanentError as exc:
            t = v.target
            bad_version = "does not serve" in str(exc)
            raise SpecError("spec.scaleTargetRef.apiVersion" if bad_version
                            else "spec.scaleTargetRef.kind",
                            t.api_version if bad_version else t.kind, str(exc),
                            "InvalidScaleTarget") from None

    def _profile(self, namespace: str, name: str, key: str) -> Any:
        try:
            cm = self._core.read_namespaced_config_map(name, namespace,
                                                       _request_timeout=self.request_timeout_s)
        except CLIENT_ERRORS as exc:
            err = translate_error(exc, "get", "configmaps", namespace, name)
            if isinstance(exc, ApiException) and exc.status == 404:
                raise SpecError("spec.profileRef.name", name,
                                f"no ConfigMap {name!r} in namespace {namespace}",
                                "ProfileNotFound") from None
            if isinstance(err, TemporaryError):
                raise err from exc
            raise SpecError("spec.profileRef.name", name, str(err), "ProfileUnavailable"
                            ) from None
        data = cm.data or {}
        if key not in data:
            raise SpecError("spec.profileRef.key", key,
                            f"ConfigMap {name!r} has no such key (keys: "
                            f"{', '.join(sorted(data)) or 'none'})", "ProfileNotFound")
        try:
            return load_yaml_strict(data[key], f"configmap {namespace}/{name} key {key}")
        except ConfigError as exc:
            raise SpecError("spec.profileRef.key", key, str(exc), "InvalidProfile") from None

    def on_deleted(self, namespace: str, name: str) -> None:
        """The object is gone: stop managing its variant (its workload keeps its replicas)."""
        key = (namespace, name)
        with self._lock:
            st = self._state.pop(key, None)
            self._objects.pop(key, None)
            for k in [k for k in self._series if k[0] == f"{namespace}/{name}"]:
                del self._series[k]
        if self.service.remove_variant(name, origin_of(namespace, name)):
            log.info("%s %s/%s deleted: %s is no longer managed", KIND, namespace, name, name)
        elif st is not None and st.ready[1] == "NameConflict":
            self._sync_groups(namespace)
            return
        self._sync_groups(namespace)
        # A refused twin (same name, another namespace) may take the name now.
        with self._lock:
            twins = [self._objects[k] for k, s in self._state.items()
                     if k[1] == name and not s.managed and k in self._objects]
        for obj in twins:
            self.on_object(obj)

    # ------------------------------------------------------------------ groups
    def on_group(self, obj: dict[str, Any], force: bool = False) -> None:
        """A VariantGroup appeared or changed: plan its members together (see the module
        doc). `force` is accepted for the list's sake; membership is evaluated every time."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if _newer(self._group_objects, key, obj):
                self._group_objects[key] = obj
            self._groups.setdefault(key, _Group(*key))
        self._sync_group(key)

    def on_group_deleted(self, namespace: str, name: str) -> None:
        """The VariantGroup is gone: its members are planned independently."""
        key = (namespace, name)
        with self._lock:
            self._groups.pop(key, None)
            self._group_objects.pop(key, None)
        if self.service.remove_group(name, group_origin_of(namespace, name)):
            log.info("%s %s/%s deleted: its members are planned independently", GROUP_KIND,
                     namespace, name)
        self._member_statuses(namespace, name)
        # A refused twin (same name, another namespace) may take the name now.
        with self._lock:
            twins = [k for k, g in self._groups.items() if k[1] == name and not g.applied]
        for key in twins:
            self._sync_group(key)

    def _sync_groups(self, namespace: str) -> None:
        """Membership in `namespace` may have changed: evaluate its groups again."""
        with self._lock:
            keys = [k for k in self._groups if k[0] == namespace]
        for key in keys:
            self._sync_group(key)

    def _sync_group(self, key: tuple[str, str]) -> None:
        """Set the group in the service from its object and its members found now (or
        remove it), then write its status and its members' if they changed."""
        ns, name = key
        origin = group_origin_of(ns, name)
        with self._lock:
            g = self._groups.get(key)
            obj = self._group_objects.get(key)
            if g is None or obj is None:
                return
            g.generation = int(obj["metadata"].get("generation") or 0)
            named = {k[1]: st for k, st in self._state.items() if k[0] == ns
                     and (st.group == name if st.managed else
                          ((self._objects.get(k) or {}).get("spec") or {}).get("group")
                          == name)}
            g.members = tuple(sorted(n for n, st in named.items() if st.managed
                                     and (rt := self.service.variants.get(n)) is not None
                                     and rt.origin == origin_of(ns, n)))
            g.missing = {n: f"{st.ready[1]}: {st.ready[2]}" for n, st in sorted(named.items())
                         if n not in g.members}
            ready, applied = self._plan_group(g, obj, origin)
            if g.applied and not applied:
                self.service.remove_group(name, origin)
            g.ready, g.applied = ready, applied
            if not applied:
                g.plan = {}
        self.write_group_status(key)
        self._member_statuses(ns, name)

    def _plan_group(self, g: _Group, obj: Mapping[str, Any], origin: str
                    ) -> tuple[tuple[str, str, str], bool]:
        """The group's Ready condition and whether the service now plans it."""
        if any(f.name == g.name for f in self.service.config.groups):
            err = SpecError("metadata.name", g.name, "a group of this name is declared by "
                            "forescale's config file (groups[].name), which keeps planning "
                            "it; rename this VariantGroup or remove the file's group",
                            "NameConflict")
            return ("False", err.reason, str(err)), False
        twin = next((k for k, o in self._groups.items() if k[1] == g.name
                     and k[0] != g.namespace and o.applied), None)
        if twin is not None:
            err = SpecError("metadata.name", g.name, f"{GROUP_KIND} {twin[0]}/{twin[1]} "
                            "already declares a group of this name (group names are "
                            "forescale-wide, like variant names)", "NameConflict")
            return ("False", err.reason, str(err)), False
        missing = "; missing: " + "; ".join(f"{n} ({why})" for n, why in g.missing.items()) \
            if g.missing else ""
        if len(g.members) < 2:
            found = ", ".join(g.members) or "none"
            return ("False", "TooFewMembers",
                    f"a group needs at least two members (VariantAutoscalers of namespace "
                    f"{g.namespace} managed by forescale whose spec.group is {g.name!r}); "
                    f"found: {found}{missing}"), False
        try:
            self.service.set_group(group_config(obj, g.members), origin)
        except SpecError as exc:
            return ("False", exc.reason, str(exc)), False
        except ConfigError as exc:
            return ("False", "NotPlanned", str(exc)), False
        return ("True", "Planned", f"generation {g.generation} is planned with "
                f"{len(g.members)} members: {', '.join(g.members)}{missing}"), True

    def _member_statuses(self, namespace: str, group: str) -> None:
        """Write the status of the objects naming `group` (their Ready says where they are
        planned), if it changed."""
        with self._lock:
            keys = [k for k, st in self._state.items() if k[0] == namespace
                    and st.group == group]
        for key in keys:
            self.write_status(key)

    def _group_note(self, st: _Managed) -> str:
        """Where a managed object's variant is planned: in its group, or alone and why."""
        if st.group is None:
            return ""
        g = self._groups.get((st.namespace, st.group))
        if g is None:
            return (f"; spec.group {st.group!r}: no {GROUP_KIND} {st.group!r} in namespace "
                    f"{st.namespace}, planned on its own")
        if not g.applied:
            return (f"; spec.group {st.group!r}: the group is not planned ({g.ready[1]}), "
                    "planned on its own")
        return f"; planned in {GROUP_KIND} {st.group!r} with {len(g.members)} members"

    # ------------------------------------------------------------------ training
    def _trainer(self) -> None:
        """Trains variants as they appear (or their model inputs change), so a new object
        is served by a model within one training instead of at the next hourly pass."""
        while not self._stop.is_set():
            name = self._train.get()
            if name is None:
                return
            names = {name}
            while not self._train.empty():
                more = self._train.get()
                if more is None:
                    return
                names.add(more)
            names &= set(self.service.variants)
            while names and not self._stop.is_set():
                try:
                    self.service.retrain(sorted(names))
                    break
                except TemporaryError:  # another retrain runs: try after it
                    self._stop.wait(1.0)
                except Exception:
                    log.exception("training of %s failed", ", ".join(sorted(names)))
                    break

    # ------------------------------------------------------------------ status
    def after_reconcile(self, records: list[DecisionRecord]) -> None:
        """A reconcile pass ended: the status of each managed object, written once and only
        if changed; Events for scale changes and refusals."""
        for rec in records:
            rt = self.service.variants.get(rec.variant)
            if rt is None or not rt.origin.startswith(ORIGIN_PREFIX):
                continue
            ns, _, name = rt.origin.removeprefix(ORIGIN_PREFIX).partition("/")
            key = (ns, name)
            with self._lock:
                st = self._state.get(key)
                if st is None:
                    continue
                st.decision, st.conditions = self._decision_status(rt, rec)
            self.write_status(key)
            self._events_for(key, rt, rec)
        self._group_plans()

    def _group_plans(self) -> None:
        """Each planned group's share of the plan just made: routing weights and the demand
        left unserved, written to its status if they changed."""
        plan = self.service.allocation
        with self._lock:
            keys = []
            for key, g in self._groups.items():
                share: dict[str, Any] = {}
                if g.applied and plan is not None and g.name in plan.routing:
                    share = {"routingWeights": {n: round(min(1.0, max(0.0, float(w))), 4)
                                                for n, w in plan.routing[g.name].items()},
                             "unservedRps": round(max(0.0, float(
                                 plan.unserved_rps.get(g.name, 0.0))), 4)}
                if share != g.plan:
                    g.plan = share
                keys.append(key)
        for key in keys:
            self.write_group_status(key)

    def _decision_status(self, rt: VariantRuntime, rec: DecisionRecord
                         ) -> tuple[dict[str, Any], dict[str, tuple[str, str, str]]]:
        status: dict[str, Any] = {"state": rt.state,
                                  "provisioningQuantile": round(rt.policy.quantile, 6),
                                  "quantileReason": truncate_utf8(rt.headroom_reason,
                                                                  TEXT_LIMIT)}
        if rec.desired is not None:
            status["desiredReplicas"] = rec.desired
        if rec.current is not None:
            status["currentReplicas"] = rec.current
        if rt.model is not None:
            status["model"] = rt.model.model_name
            score = rt.model.trained.scores.get("ratio_vs_best_baseline")
            if score is not None and math.isfinite(score):
                status["backtestScore"] = round(float(score), 4)
        peak = self._forecast_peak(rt)
        if peak is not None:
            status["forecastPeak"] = peak
        status["lastReasons"] = [truncate_utf8(f"{r['code']}: {r['message']}", TEXT_LIMIT)
                                 for r in rec.reasons][:MAX_REASONS]
        conditions: dict[str, tuple[str, str, str]] = {}
        if rec.outcome == "failed":
            conditions["Active"] = ("False", "ReconcileFailed", rec.message)
        else:
            conditions["Active"] = ("True", "Reconciling",
                                    f"decided {rec.desired} replicas ({rec.outcome})")
        conditions["ForecastHealthy"] = {
            "predictive": ("True", "Predictive", f"served by {status.get('model')}"),
            "warming-up": ("False", "WarmingUp", "no model yet: the reactive floor decides"),
            "reactive-fallback": ("False", "ReactiveFallback",
                                  "the model is clearly worse than naive recently: served "
                                  "reactively until it recovers"),
        }[rt.state]
        refusal = _refusal(rec)
        if refusal is not None:
            conditions["AbleToScale"] = ("False", refusal, rec.message)
        elif rec.outcome in _ACTUATED:
            conditions["AbleToScale"] = ("True", "SucceededRescale" if rec.outcome == "scaled"
                                         else "ReadyForNewScale", rec.message)
        return status, conditions

    def _forecast_peak(self, rt: VariantRuntime) -> dict[str, float] | None:
        """Peak of the provisioned quantile over the cold-start horizon of the last forecast
        the policy stepped on."""
        fc = rt.policy.last_forecast
        if fc is None:
            return None
        horizon = rt.policy.cold_start_s
        steps = max(1, math.ceil(horizon / fc.step_s))
        try:
            values = fc.at(rt.policy.quantile)[:steps]
        except ValueError:
            return None
        finite = [float(x) for x in values if math.isfinite(float(x))]
        if not finite:
            return None
        return {"requestsPerSecond": round(max(0.0, max(finite)), 4),
                "horizonSeconds": round(float(horizon), 1)}

    def _compose(self, st: _Managed, current: Mapping[str, Any]) -> dict[str, Any]:
        """The status to write: the decision part, the conditions (a condition's
        lastTransitionTime changes only when its status does), observedGeneration."""
        status: dict[str, Any] = {"observedGeneration": st.generation}
        if st.managed:
            status.update(st.decision)
            if "lastScaleTime" in current and "lastScaleTime" not in status:
                status["lastScaleTime"] = current["lastScaleTime"]
        ready = st.ready
        if st.managed and ready[0] == "True":
            ready = (*ready[:2], ready[2] + self._group_note(st))
        wanted = {"Ready": ready, **(st.conditions if st.managed else {})}
        status["conditions"] = _conditions(wanted, current, st.generation)
        return status

    def _compose_group(self, g: _Group, current: Mapping[str, Any]) -> dict[str, Any]:
        """A VariantGroup's status: members found and missing, the last plan's share, Ready."""
        status: dict[str, Any] = {
            "observedGeneration": g.generation, "memberCount": len(g.members),
            "members": list(g.members),
            "missingMembers": [{"name": n, "reason": truncate_utf8(why, TEXT_LIMIT)}
                               for n, why in g.missing.items()],
            **g.plan}
        status["conditions"] = _conditions({"Ready": g.ready}, current, g.generation)
        return status

    def write_status(self, key: tuple[str, str]) -> bool:
        """Write a VariantAutoscaler's status if it differs from what it holds; True if
        written. A 409 (someone wrote in between) is retried from a fresh read."""
        return self._write_status(_VA, key)

    def write_group_status(self, key: tuple[str, str]) -> bool:
        """`write_status` for a VariantGroup."""
        return self._write_status(_VG, key)

    def _write_status(self, kind: _Kind, key: tuple[str, str]) -> bool:
        if not self.service.is_leader():
            return False  # the leader reports; a standby only follows the objects
        objects = self._objects if kind is _VA else self._group_objects
        for _ in range(STATUS_RETRIES):
            with self._lock:
                obj = objects.get(key)
                st = self._state.get(key) if kind is _VA else self._groups.get(key)
                if st is None or obj is None:
                    return False
                current = obj.get("status") or {}
                status = self._compose(st, current) if isinstance(st, _Managed) \
                    else self._compose_group(st, current)
                if status == obj.get("status"):
                    return False
                body = {**obj, "status": status}
            try:
                written = _as_dict(self._custom.replace_namespaced_custom_object_status(
                    GROUP, VERSION, key[0], kind.plural, key[1], body,
                    _request_timeout=self.request_timeout_s))
            except ApiException as exc:
                if exc.status == 409:
                    if not self._refresh(kind, key):
                        return False
                    continue
                if exc.status == 404:
                    return False  # deleted meanwhile: the watch will say so
                log.warning("cannot write the status of %s %s/%s: %s", kind.kind, *key,
                            translate_error(exc, "update", f"{kind.plural}/status", key[0],
                                            key[1]))
                return False
            except CLIENT_ERRORS as exc:
                log.warning("cannot write the status of %s %s/%s: %s", kind.kind, *key,
                            translate_error(exc, "update", f"{kind.plural}/status", key[0],
                                            key[1]))
                return False
            self.status_writes += 1
            with self._lock:
                if key in (self._state if kind is _VA else self._groups) \
                        and _newer(objects, key, written):
                    objects[key] = written
            return True
        log.warning("status of %s %s/%s kept changing under us; next reconcile", kind.kind,
                    *key)
        return False

    def _refresh(self, kind: _Kind, key: tuple[str, str]) -> bool:
        try:
            fresh = _as_dict(self._custom.get_namespaced_custom_object(
                GROUP, VERSION, key[0], kind.plural, key[1],
                _request_timeout=self.request_timeout_s))
        except CLIENT_ERRORS:
            return False
        with self._lock:
            if key not in (self._state if kind is _VA else self._groups):
                return False
            (self._objects if kind is _VA else self._group_objects)[key] = fresh
        return True

    # ------------------------------------------------------------------ events
    def _events_for(self, key: tuple[str, str], rt: VariantRuntime,
                    rec: DecisionRecord) -> None:
        if rec.outcome == "scaled":
            reasons = "; ".join(f"{r['code']}: {r['message']}" for r in rec.reasons)
            self.post_event(key, "Normal", "SuccessfulRescale", "Scale",
                            f"New size: {rec.desired} (from {rec.current}) for "
                            f"{rt.config.target.kind} {rt.config.target.name}"
                            + (f"; reasons: {reasons}" if reasons else ""), series=False)
            return
        refusal = _refusal(rec)
        if refusal is not None:
            self.post_event(key, "Warning", refusal, "Scale", rec.message)
        for r in rec.reasons:
            if r["code"] == "AtGpuQuota":
                self.post_event(key, "Warning", "QuotaLimited", "Scale",
                                f"{r['message']} (wanted {r['from']}, allowed {r['to']})")

    def post_event(self, key: tuple[str, str], etype: str, reason: str, action: str,
                   note: str, series: bool = True) -> None:
        """An Event on the object, best effort. With `series`, a repeat of the same reason
        and note counts in memory and is written (as the Event's series) at most every
        `event_series_s`, as client-go's recorder aggregates."""
        ns, name = key
        with self._lock:
            obj = self._objects.get(key)
        if obj is None or not self.service.is_leader():
            return
        note = truncate_utf8(note, NOTE_LIMIT_BYTES)
        skey = (f"{ns}/{name}", reason, _normalised(note))
        now = self.clock()
        with self._lock:
            known = self._series.get(skey) if series else None
            if known is not None:
                known.count += 1
                if now - known.written_at < self.event_series_s:
                    return
                count, ev_name = known.count, known.name
                known.written_count, known.written_at = count, now
        try:
            if known is not None:
                self._events.patch_namespaced_event(
                    ev_name, ns, {"series": {"count": count, "lastObservedTime":
                                             _micro_time(datetime.now(UTC)).isoformat()}},
                    _content_type=MERGE_PATCH, _request_timeout=self.request_timeout_s)
                return
            meta = obj["metadata"]
            event = k8s.EventsV1Event(
                metadata=k8s.V1ObjectMeta(name=f"{name}.{time.time_ns():x}", namespace=ns),
                event_time=_micro_time(datetime.now(UTC)), action=action, reason=reason,
                note=note, type=etype,
                regarding=k8s.V1ObjectReference(api_version=API_VERSION, kind=KIND, name=name,
                                                namespace=ns, uid=meta.get("uid")),
                reporting_controller=self.component, reporting_instance=self.instance)
            created = self._events.create_namespaced_event(
                ns, event, _request_timeout=self.request_timeout_s)
            if series:
                with self._lock:
                    self._series[skey] = _Series(str(getattr(created.metadata, "name", "")),
                                                 ns, 1, 1, now)
        except CLIENT_ERRORS as exc:
            log.warning("could not post the %s Event on %s %s/%s: %s", reason, KIND, ns, name,
                        translate_error(exc, "create", "events.events.k8s.io", ns))


def _newer(objects: Mapping[tuple[str, str], Mapping[str, Any]], key: tuple[str, str],
           obj: Mapping[str, Any]) -> bool:
    """Whether `obj` is at least as new as the copy held (resourceVersions compared as the
    integers the API server hands out; an unreadable one counts as newer)."""
    old = objects.get(key)
    if old is None:
        return True
    try:
        return int(obj["metadata"]["resourceVersion"]) >= int(
            old["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True


def _conditions(wanted: Mapping[str, tuple[str, str, str]], current: Mapping[str, Any],
                generation: int) -> list[dict[str, Any]]:
    """Conditions in `CONDITION_TYPES` order; a condition's lastTransitionTime changes only
    when its status does."""
    old = {c.get("type"): c for c in (current.get("conditions") or [])
           if isinstance(c, dict)}
    out = []
    for ctype in CONDITION_TYPES:
        if ctype not in wanted:
            continue
        cstatus, reason, message = wanted[ctype]
        prev = old.get(ctype) or {}
        since = prev.get("lastTransitionTime") if prev.get("status") == cstatus else None
        out.append({"type": ctype, "status": cstatus, "reason": reason,
                    "message": truncate_utf8(message, 4096), "observedGeneration": generation,
                    "lastTransitionTime": since or now_rfc3339()})
    return out


def _as_dict(answer: object) -> dict[str, Any]:
    """A custom-object answer (the client returns the decoded JSON), checked."""
    if not isinstance(answer, dict):
        raise TemporaryError(f"the API server answered with a {type(answer).__name__}, not an "
                             "object")
    return answer


def _normalised(note: str) -> str:
    """A note without its numbers' noise: repeats of one refusal differ only in figures."""
    return re.sub(r"\d+(\.\d+)?", "#", note)


def _refusal(rec: DecisionRecord) -> str | None:
    """The Event/condition reason of a decision the actuator refused, or None."""
    if rec.outcome != "failed" or "actuation failed" not in rec.message:
        return None
    text = rec.message
    if "HPA conflict" in text:
        return "HPAConflict"
    if "forbidden" in text:
        return "Forbidden"
    if "quota" in text.lower():
        return "QuotaExceeded"
    return "FailedRescale"


__all__ = ["API_VERSION", "GROUP", "GROUP_KIND", "GROUP_PLURAL", "KIND", "PLURAL",
           "SpecError", "VariantAutoscalerController", "group_config", "group_origin_of",
           "origin_of", "variant_config"]
