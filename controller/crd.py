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

VariantGroup objects are not acted on yet: a member's `spec.group` is reported in its Ready
message, and groups stay in the file config.
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

from controller.config import ConfigError, VariantConfig, load_yaml_strict
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


@dataclass
class _Managed:
    """What the controller knows of one object: its generation processed, the Ready
    condition from its spec, and the decision-side status of the last reconcile."""

    namespace: str
    name: str
    generation: int = 0
    ready: tuple[str, str, str] = ("Unknown", "Pending", "not processed yet")
    managed: bool = False
    decision: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, tuple[str, str, str]] = field(default_factory=dict)


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
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[k8s_watch.Watch] = []
        self._train: queue.Queue[str | None] = queue.Queue()
        #: Counters for tests and logs: lists done, watches restarted after 410, errors.
        self.lists = 0
        self.expired = 0
        self.errors = 0
        self.status_writes = 0
        service.reconcile_listeners.append(self.after_reconcile)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """One list+watch thread per namespace, and the trainer of new variants."""
        for ns in self.namespaces:
            t = threading.Thread(target=self._run, args=(ns,), daemon=True,
                                 name=f"va-watch-{ns or 'all'}")
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

    def _run(self, namespace: str) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                rv = self.resync(namespace)
                self._watch(namespace, rv)
                backoff = 1.0
            except ApiException as exc:
                if exc.status == 410:
                    self.expired += 1
                    log.info("watch of %s expired (410 Gone): listing again",
                             namespace or "all namespaces")
                    continue
                self._failed(namespace, exc, backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception as exc:  # a watch thread must never die
                self._failed(namespace, exc, backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    def _failed(self, namespace: str, exc: BaseException, backoff: float) -> None:
        self.errors += 1
        shown = translate_error(exc, "list", f"{PLURAL}.{GROUP}", namespace or "(all)") \
            if isinstance(exc, CLIENT_ERRORS) else exc
        log.warning("VariantAutoscaler watch of %s failed: %s; retrying in %.0f s",
                    namespace or "all namespaces", shown, backoff)
        self._stop.wait(backoff)

    # ------------------------------------------------------------------ list and watch
    def _list(self, namespace: str) -> dict[str, Any]:
        if namespace:
            return _as_dict(self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _request_timeout=self.request_timeout_s))
        return _as_dict(self._custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, _request_timeout=self.request_timeout_s))

    def resync(self, namespace: str) -> str:
        """List the objects, reconcile each, forget managed ones no longer there; the list's
        resourceVersion, to watch from."""
        listed = self._list(namespace)
        self.lists += 1
        seen = set()
        for obj in listed.get("items") or []:
            meta = obj["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            self.on_object(obj, force=True)
        with self._lock:
            gone = [k for k in self._state if (not namespace or k[0] == namespace)
                    and k not in seen]
        for ns, name in gone:
            self.on_deleted(ns, name)
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, namespace: str, resource_version: str) -> None:
        w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        with self._lock:
            self._watches.append(w)
        try:
            func = self._custom.list_namespaced_custom_object if namespace \
                else self._custom.list_cluster_custom_object
            args = (GROUP, VERSION, namespace, PLURAL) if namespace else (GROUP, VERSION,
                                                                          PLURAL)
            events = w.stream(  # type: ignore[no-untyped-call]
                func, *args, resource_version=resource_version,
                timeout_seconds=max(1, int(self.resync_s)))
            for event in events:
                if self._stop.is_set():
                    break
                obj = event["raw_object"]
                meta = obj.get("metadata") or {}
                if event["type"] == "DELETED":
                    self.on_deleted(meta.get("namespace", ""), meta.get("name", ""))
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self.on_object(obj)
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
            if self._newer(key, obj):
                self._objects[key] = obj
            st = self._state.setdefault(key, _Managed(*key))
            if not force and st.generation == generation and st.ready[0] == "True" \
                    and st.managed and key[1] in self.service.variants:
                return  # a status write of ours, or a resync of what is applied
            st.generation = generation
            self._apply_spec(st, obj)
        self.write_status(key)

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
        note = f"; spec.group {group!r} is not acted on yet (groups stay in the config " \
               "file)" if group else ""
        st.ready = ("True", "Managed", f"generation {st.generation} is applied{note}")

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
            return
        # A refused twin (same name, another namespace) may take the name now.
        with self._lock:
            twins = [self._objects[k] for k, s in self._state.items()
                     if k[1] == name and not s.managed and k in self._objects]
        for obj in twins:
            self.on_object(obj)

    def _newer(self, key: tuple[str, str], obj: Mapping[str, Any]) -> bool:
        old = self._objects.get(key)
        if old is None:
            return True
        try:
            return int(obj["metadata"]["resourceVersion"]) >= int(
                old["metadata"]["resourceVersion"])
        except (KeyError, TypeError, ValueError):
            return True

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
        old = {c.get("type"): c for c in (current.get("conditions") or [])
               if isinstance(c, dict)}
        status: dict[str, Any] = {"observedGeneration": st.generation}
        if st.managed:
            status.update(st.decision)
            if "lastScaleTime" in current and "lastScaleTime" not in status:
                status["lastScaleTime"] = current["lastScaleTime"]
        wanted = {"Ready": st.ready, **(st.conditions if st.managed else {})}
        conditions = []
        for ctype in CONDITION_TYPES:
            if ctype not in wanted:
                continue
            cstatus, reason, message = wanted[ctype]
            prev = old.get(ctype) or {}
            since = prev.get("lastTransitionTime") if prev.get("status") == cstatus \
                else None
            conditions.append({"type": ctype, "status": cstatus, "reason": reason,
                               "message": truncate_utf8(message, 4096),
                               "observedGeneration": st.generation,
                               "lastTransitionTime": since or now_rfc3339()})
        status["conditions"] = conditions
        return status

    def write_status(self, key: tuple[str, str]) -> bool:
        """Write the object's status if it differs from what it holds; True if written. A
        409 (someone wrote in between) is retried from a fresh read."""
        if not self.service.is_leader():
            return False  # the leader reports; a standby only follows the objects
        for _ in range(STATUS_RETRIES):
            with self._lock:
                st = self._state.get(key)
                obj = self._objects.get(key)
                if st is None or obj is None:
                    return False
                status = self._compose(st, obj.get("status") or {})
                if status == obj.get("status"):
                    return False
                body = {**obj, "status": status}
            try:
                written = _as_dict(self._custom.replace_namespaced_custom_object_status(
                    GROUP, VERSION, key[0], PLURAL, key[1], body,
                    _request_timeout=self.request_timeout_s))
            except ApiException as exc:
                if exc.status == 409:
                    if not self._refresh(key):
                        return False
                    continue
                if exc.status == 404:
                    return False  # deleted meanwhile: the watch will say so
                log.warning("cannot write the status of %s %s/%s: %s", KIND, *key,
                            translate_error(exc, "update", f"{PLURAL}/status", key[0],
                                            key[1]))
                return False
            except CLIENT_ERRORS as exc:
                log.warning("cannot write the status of %s %s/%s: %s", KIND, *key,
                            translate_error(exc, "update", f"{PLURAL}/status", key[0],
                                            key[1]))
                return False
            self.status_writes += 1
            with self._lock:
                if key in self._state and self._newer(key, written):
                    self._objects[key] = written
            return True
        log.warning("status of %s %s/%s kept changing under us; next reconcile", KIND, *key)
        return False

    def _refresh(self, key: tuple[str, str]) -> bool:
        try:
            fresh = _as_dict(self._custom.get_namespaced_custom_object(
                GROUP, VERSION, key[0], PLURAL, key[1], _request_timeout=self.request_timeout_s))
        except CLIENT_ERRORS:
            return False
        with self._lock:
            if key not in self._state:
                return False
            self._objects[key] = fresh
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


__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "SpecError",
           "VariantAutoscalerController", "origin_of", "variant_config"]
