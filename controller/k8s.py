"""The Kubernetes actuator: reads and sets a workload's replicas through its scale subresource.

Why the scale subresource and not the workload: it is the narrow door the API offers
autoscalers (HPA and KEDA use it too), so the ServiceAccount needs only `get`/`patch` on
`<resource>/scale` rather than write access to whole Deployments (see deploy/rbac.yaml).

Any workload with a scale subresource can be a target, named as an HPA names it: a
`ScaleTargetRef` (namespace, apiVersion, kind, name) - Deployment, StatefulSet,
LeaderWorkerSet, an operator's scaling adapter. The kind is turned into its resource (plural)
through API discovery of its group/version, the way the HPA's RESTMapper does, and a kind whose
resource has no `/scale` is refused with a message saying so. The old `(namespace, name)` pair
still means an `apps/v1` Deployment. Discovery answers are cached per group/version
(`discovery_cache_s`), and dropped when a target answers 404 (its CRD may have been removed).

Each write is a merge patch carrying the `resourceVersion` that was read, so it is conditional:
if someone else changed the replicas in between, the server answers 409 and we re-read and try
again (a few times) instead of silently overwriting a value we never saw.

Errors are sorted the way the reconcile loop needs them (see `controller/protocols.py`):
timeouts, dropped connections, 429 and 5xx are `TemporaryError` (try again next tick); 401, 403,
404 and invalid requests are `PermanentError`, with a message that names the verb, the resource
and the namespace, because the fix is in RBAC or in the config, not in waiting.

forescale refuses to scale a workload that an HPA also targets: two controllers writing the
same `spec.replicas` fight and the replicas flap. The check lists HPAs in the namespace and is
cached briefly, so it costs one request per namespace per `hpa_cache_s`.

Only `controller/` imports `kubernetes` (STYLE.md); this module is the one place that talks to
the Kubernetes API for scaling.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from controller.protocols import PermanentError, ScaleResult, TemporaryError

logger = logging.getLogger(__name__)

T = TypeVar("T")

EVENT_REASON = "ForescaleScaled"
EVENT_ACTION = "Scale"
MERGE_PATCH = "application/merge-patch+json"
NOTE_LIMIT_BYTES = 1024  # events.k8s.io/v1 rejects longer notes
RBAC_HINT = "check deploy/rbac.yaml"

#: Errors that mean "the request may not have reached the server or got no answer".
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)
#: Everything a client call can fail with that `translate_error` understands.
CLIENT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def _server_message(exc: ApiException) -> str:
    """The `message` of the Status body the server sent, or the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or f"HTTP {exc.status}")


def _retry_after(exc: ApiException) -> str:
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    return f"; the server asks to retry after {value}s" if value else ""


def translate_error(
    exc: BaseException, verb: str, resource: str, namespace: str, name: str = ""
) -> TemporaryError | PermanentError:
    """Turn a client failure into the loop's two error kinds, with a message a human can act on.

    `verb` and `resource` are the RBAC terms (`patch`, `deployments/scale`), so a 403 message
    says exactly which rule is missing.
    """
    what = f"{resource} {namespace}/{name}" if name else f"{resource} in namespace {namespace!r}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(
        exc.reason, urllib3.exceptions.ResponseError
    ):  # urllib3 already retried a 429/503 with Retry-After, and gave up
        return TemporaryError(f"the API server is busy or failing on {verb} {what}: {exc.reason}")
    if not isinstance(exc, ApiException):
        return TemporaryError(
            f"could not reach the Kubernetes API to {verb} {what}: {type(exc).__name__}: {exc}"
        )
    status, detail = exc.status or 0, _server_message(exc)
    if status == 403:
        return PermanentError(
            f"forbidden: the ServiceAccount may not {verb} {resource} in ns {namespace} - "
            f"{RBAC_HINT} (server said: {detail})"
        )
    if status == 401:
        return PermanentError(
            f"unauthorized: the API server rejected forescale's credentials when trying to "
            f"{verb} {what} - check the ServiceAccount token or kubeconfig (server said: {detail})"
        )
    if status == 404:
        return PermanentError(
            f"not found: {verb} {what} failed because it does not exist - check the variant's "
            f"scale target (scaleTargetRef or deployment) and namespace in the forescale config "
            f"(server said: {detail})"
        )
    if status == 429 or status >= 500:
        return TemporaryError(
            f"the API server is busy or failing ({status}) on {verb} {what}: {detail}"
            f"{_retry_after(exc)}"
        )
    if status == 409:
        return TemporaryError(f"conflict on {verb} {what}: {detail}")
    return PermanentError(f"the API server refused to {verb} {what} ({status}): {detail}")


def _call(fn: Callable[[], T], verb: str, resource: str, namespace: str, name: str = "") -> T:
    """Run one client call, translating its failures (see `translate_error`)."""
    try:
        return fn()
    except CLIENT_ERRORS as exc:
        raise translate_error(exc, verb, resource, namespace, name) from exc


def _micro_time(now: datetime) -> datetime:
    """`now` safe to send as a MicroTime: isoformat() drops a zero microsecond part, and the
    server's RFC3339Micro parser then rejects it; one microsecond later avoids that."""
    return now if now.microsecond else now.replace(microsecond=1)


def truncate_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, marked with an ellipsis when cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def default_instance(component: str) -> str:
    """Who is reporting, for Event.reportingInstance: the pod name when the Downward API
    provides POD_NAME, else the host name (which is the pod name in a pod anyway)."""
    return f"{component}-{os.environ.get('POD_NAME') or socket.gethostname()}"[:128]


@dataclass(frozen=True)
class ScaleTargetRef:
    """What to scale, as an HPA's scaleTargetRef names it, plus the namespace it lives in."""

    namespace: str
    api_version: str
    kind: str
    name: str

    @classmethod
    def deployment(cls, namespace: str, name: str) -> ScaleTargetRef:
        """The file config's `deployment: {namespace, name}`: an apps/v1 Deployment."""
        return cls(namespace, "apps/v1", "Deployment", name)

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name} ({self.api_version})"


@dataclass(frozen=True)
class ScaleResource:
    """A kind resolved to its resource through discovery: where its scale subresource is."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def scale(self) -> str:
        """The RBAC name of the subresource, e.g. `statefulsets/scale`."""
        return f"{self.plural}/scale"


@dataclass(frozen=True)
class HpaConflict:
    """An HPA whose scaleTargetRef is a workload forescale was told to scale."""

    namespace: str
    hpa: str
    kind: str
    name: str


def _as_ref(value: ScaleTargetRef | tuple[str, str]) -> ScaleTargetRef:
    if isinstance(value, ScaleTargetRef):
        return value
    namespace, name = value
    return ScaleTargetRef.deployment(namespace, name)


class KubernetesScaleTarget:
    """`ScaleTarget` over the scale subresource of one workload per variant.

    `targets` maps variant -> `ScaleTargetRef`, or -> (namespace, deployment name) for an
    apps/v1 Deployment. `component` is the Event's reportingController. Time is read through
    `clock` (monotonic seconds) so the HPA and discovery caches can be tested without sleeping.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        targets: Mapping[str, ScaleTargetRef | tuple[str, str]],
        component: str = "forescale",
        *,
        instance: str | None = None,
        hpa_cache_s: float = 30.0,
        discovery_cache_s: float = 600.0,
        max_conflict_retries: int = 3,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_conflict_retries < 0:
            raise ValueError("max_conflict_retries must be >= 0")
        self.api_client = api_client  # shared with the LeaderElector: one connection pool
        self.targets = {variant: _as_ref(t) for variant, t in targets.items()}
        self.component = component
        self.instance = instance or default_instance(component)
        self.hpa_cache_s = hpa_cache_s
        self.discovery_cache_s = discovery_cache_s
        self.max_conflict_retries = max_conflict_retries
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self._custom = k8s.CustomObjectsApi(api_client)
        self._autoscaling = k8s.AutoscalingV2Api(api_client)
        self._events = k8s.EventsV1Api(api_client)
        self._hpa_cache: dict[str, tuple[float, tuple[HpaConflict, ...]]] = {}
        self._discovery: dict[str, tuple[float, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ targets

    def set_target(self, variant: str, target: ScaleTargetRef) -> None:
        """Start (or change) what `variant` scales, e.g. when its VariantAutoscaler changes."""
        self.targets[variant] = target

    def remove_target(self, variant: str) -> None:
        """Stop scaling `variant` (its VariantAutoscaler was deleted); unknown is a no-op."""
        self.targets.pop(variant, None)

    # ------------------------------------------------------------------ ScaleTarget

    def current_replicas(self, variant: str) -> int:
        """The target's spec.replicas, read from its scale subresource."""
        ref = self._target(variant)
        return _spec_replicas(self._read_scale(ref, self.resolve(ref)))

    def apply(self, variant: str, replicas: int, reasons: Sequence[str]) -> ScaleResult:
        """Set spec.replicas to `replicas` (conditionally on what was read), then post an Event.

        Does nothing, and posts nothing, when the target is already at `replicas`.
        """
        if replicas < 0:
            raise PermanentError(f"refusing to scale variant {variant!r} to {replicas} replicas")
        ref = self._target(variant)
        resource = self.resolve(ref)
        self._refuse_if_hpa(ref)
        where = f"{ref.namespace}/{ref.name}"
        for attempt in range(self.max_conflict_retries + 1):
            scale = self._read_scale(ref, resource)
            previous = _spec_replicas(scale)
            if previous == replicas:
                return ScaleResult(variant, previous, replicas, False,
                                   f"{where} already at {replicas} replicas")
            meta = scale.get("metadata") or {}
            if self._patch_replicas(ref, resource, meta.get("resourceVersion"), replicas):
                self._post_event(ref, meta.get("uid"), previous, replicas, reasons)
                return ScaleResult(variant, previous, replicas, True,
                                   f"scaled {ref.kind.lower()} {where} from {previous} to "
                                   f"{replicas} replicas")
            logger.info("conflict scaling %s (attempt %d); re-reading", ref, attempt + 1)
        raise TemporaryError(
            f"conflict: {resource.scale} {where} kept changing under us "
            f"({self.max_conflict_retries + 1} attempts); will retry on the next reconcile"
        )

    # ------------------------------------------------------------------ discovery

    def resolve(self, ref: ScaleTargetRef) -> ScaleResource:
        """The resource behind `ref`'s kind, found through discovery of its group/version
        (cached), as the HPA's RESTMapper finds it; refused if it has no scale subresource.

        A kind missing from a cached answer triggers one fresh discovery (a CRD may have been
        installed since), so a new kind is picked up without a restart.
        """
        if not ref.group:
            raise PermanentError(
                f"scaleTargetRef {ref}: core/v1 kinds have no scale subresource forescale "
                f"supports; give a group/version such as apps/v1")
        entry = self._discovery.get(ref.api_version)
        if entry is None or self._clock() - entry[0] >= self.discovery_cache_s:
            resources = self._discover(ref)
        else:
            resources = entry[1]
            if ref.kind not in resources:
                resources = self._discover(ref)
        found = resources.get(ref.kind)
        if found is None:
            kinds = ", ".join(sorted(resources)) or "none"
            raise PermanentError(
                f"scaleTargetRef {ref}: kind {ref.kind!r} is not served in {ref.api_version} "
                f"(served kinds: {kinds}) - check scaleTargetRef.kind and apiVersion")
        if f"{found.name}/scale" not in resources.get("/subresources", {}):
            raise PermanentError(
                f"scaleTargetRef {ref}: {found.name}.{ref.group} has no scale subresource, so "
                f"neither forescale nor an HPA can scale it - point scaleTargetRef at the "
                f"workload that owns the replicas")
        return ScaleResource(ref.group, ref.version, str(found.name), ref.kind)

    def _discover(self, ref: ScaleTargetRef) -> dict[str, Any]:
        """GET /apis/<group>/<version>: kind -> APIResource, plus "/subresources" (names)."""
        try:
            found = self._custom.get_api_resources(ref.group, ref.version,
                                                   _request_timeout=self.request_timeout_s)
        except ApiException as exc:
            if exc.status == 404:
                raise PermanentError(
                    f"scaleTargetRef {ref}: the API server does not serve {ref.api_version} - "
                    f"is the CRD of {ref.kind} installed? (check scaleTargetRef.apiVersion)"
                ) from exc
            raise translate_error(exc, "get", f"discovery of {ref.api_version}",
                                  ref.namespace) from exc
        except TRANSPORT_ERRORS as exc:
            raise translate_error(exc, "get", f"discovery of {ref.api_version}",
                                  ref.namespace) from exc
        resources: dict[str, Any] = {"/subresources": {}}
        for r in found.resources or []:
            if "/" in r.name:
                resources["/subresources"][r.name] = r
            else:
                resources[r.kind] = r
        self._discovery[ref.api_version] = (self._clock(), resources)
        return resources

    # ------------------------------------------------------------------ HPA guard

    def hpa_conflicts(self, ref: ScaleTargetRef) -> list[HpaConflict]:
        """HPAs in the target's namespace whose scaleTargetRef is the same workload (same API
        group, kind and name; cached per namespace)."""
        now, namespace = self._clock(), ref.namespace
        cached = self._hpa_cache.get(namespace)
        if cached is None or now - cached[0] >= self.hpa_cache_s:
            found = _call(
                lambda: self._autoscaling.list_namespaced_horizontal_pod_autoscaler(
                    namespace, _request_timeout=self.request_timeout_s
                ),
                "list", "horizontalpodautoscalers", namespace,
            )
            targets = tuple(
                HpaConflict(namespace, str(hpa.metadata.name), hpa.spec.scale_target_ref.kind,
                            hpa.spec.scale_target_ref.name)
                for hpa in found.items or []
                if hpa.metadata is not None and _same_group(
                    hpa.spec.scale_target_ref.api_version, ref.group)
            )
            cached = (now, targets)
            self._hpa_cache[namespace] = cached
        return [c for c in cached[1] if (c.kind, c.name) == (ref.kind, ref.name)]

    def _refuse_if_hpa(self, ref: ScaleTargetRef) -> None:
        conflicts = self.hpa_conflicts(ref)
        if conflicts:
            hpas = ", ".join(f"{c.namespace}/{c.hpa}" for c in conflicts)
            raise PermanentError(
                f"HPA conflict: {ref.kind.lower()} {ref.namespace}/{ref.name} is also scaled by "
                f"HorizontalPodAutoscaler {hpas}; forescale will not fight it. Delete the HPA, "
                f"or run forescale in metric mode so the HPA scales on forescale's target."
            )

    # ------------------------------------------------------------------ API calls

    def _target(self, variant: str) -> ScaleTargetRef:
        try:
            return self.targets[variant]
        except KeyError:
            raise PermanentError(
                f"variant {variant!r} has no scale target configured "
                f"(known: {', '.join(sorted(self.targets)) or 'none'})"
            ) from None

    def _forget_discovery(self, exc: ApiException, ref: ScaleTargetRef) -> None:
        """A 404 on a resolved target may mean its resource went away: re-discover next time."""
        if exc.status == 404:
            self._discovery.pop(ref.api_version, None)

    def _read_scale(self, ref: ScaleTargetRef, resource: ScaleResource) -> dict[str, Any]:
        try:
            scale = self._custom.get_namespaced_custom_object_scale(
                resource.group, resource.version, ref.namespace, resource.plural, ref.name,
                _request_timeout=self.request_timeout_s,
            )
        except ApiException as exc:
            self._forget_discovery(exc, ref)
            _raise(exc, "get", resource.scale, ref.namespace, ref.name)
        except TRANSPORT_ERRORS as exc:
            _raise(exc, "get", resource.scale, ref.namespace, ref.name)
        if not isinstance(scale, dict):
            raise PermanentError(f"{resource.scale} {ref.namespace}/{ref.name}: the server "
                                 f"answered with a {type(scale).__name__}, not a Scale object")
        return scale

    def _patch_replicas(self, ref: ScaleTargetRef, resource: ScaleResource,
                        resource_version: str | None, replicas: int) -> bool:
        """Patch spec.replicas if the Scale is still at `resource_version`; False on 409."""
        body = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": replicas}}
        try:
            self._custom.patch_namespaced_custom_object_scale(
                resource.group, resource.version, ref.namespace, resource.plural, ref.name,
                body, _content_type=MERGE_PATCH, _request_timeout=self.request_timeout_s,
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            self._forget_discovery(exc, ref)
            _raise(exc, "patch", resource.scale, ref.namespace, ref.name)
        except TRANSPORT_ERRORS as exc:
            _raise(exc, "patch", resource.scale, ref.namespace, ref.name)
        return True

    def _post_event(self, ref: ScaleTargetRef, uid: str | None, previous: int,
                    replicas: int, reasons: Sequence[str]) -> None:
        """Record the change on the target, best effort: a lost Event never fails a scale.

        The broad except is deliberate: whatever goes wrong while reporting, the replicas have
        already changed and the loop must learn that, so the error is only logged.
        """
        namespace, name = ref.namespace, ref.name
        note = f"Scaled from {previous} to {replicas} replicas"
        if reasons:
            note += ": " + "; ".join(reasons)
        now = _micro_time(datetime.now(UTC))
        event = k8s.EventsV1Event(
            metadata=k8s.V1ObjectMeta(name=f"{name}.{time.time_ns():x}", namespace=namespace),
            event_time=now,
            action=EVENT_ACTION,
            reason=EVENT_REASON,
            note=truncate_utf8(note, NOTE_LIMIT_BYTES),
            type="Normal",
            regarding=k8s.V1ObjectReference(
                api_version=ref.api_version, kind=ref.kind, name=name, namespace=namespace,
                uid=uid,
            ),
            reporting_controller=self.component,
            reporting_instance=self.instance,
        )
        try:
            self._events.create_namespaced_event(
                namespace, event, _request_timeout=self.request_timeout_s
            )
        except Exception as exc:
            reported: BaseException = (
                translate_error(exc, "create", "events.events.k8s.io", namespace)
                if isinstance(exc, CLIENT_ERRORS) else exc
            )
            logger.warning("scaled %s/%s but could not post the %s Event: %s", namespace, name,
                           EVENT_REASON, reported)


def _same_group(api_version: str | None, group: str) -> bool:
    """Whether an HPA's scaleTargetRef.apiVersion is in `group` (any version; unset: apps,
    which is what an HPA without apiVersion resolves a Deployment to)."""
    return (api_version or "apps/v1").rpartition("/")[0] == group


def _spec_replicas(scale: Mapping[str, Any]) -> int:
    replicas = (scale.get("spec") or {}).get("replicas")
    return int(replicas) if isinstance(replicas, int) else 0


def _raise(exc: BaseException, verb: str, resource: str, namespace: str, name: str) -> NoReturn:
    raise translate_error(exc, verb, resource, namespace, name) from exc


def in_cluster() -> bool:
    """Whether we run in a pod: the kubelet sets KUBERNETES_SERVICE_HOST in every container."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def make_api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """An ApiClient from the pod's ServiceAccount when in a pod, else from a kubeconfig.

    An explicit `kubeconfig` or `context` always wins, so an operator can point an in-cluster
    forescale elsewhere. Each call builds its own Configuration: nothing global is touched, so
    several clients (tests, multiple clusters) can coexist in one process.
    """
    configuration = k8s.Configuration()
    try:
        if kubeconfig is None and context is None and in_cluster():
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context,
                client_configuration=configuration, persist_config=False,
            )
    except (ConfigException, OSError) as exc:
        where = "the pod's ServiceAccount" if kubeconfig is None and in_cluster() else (
            f"kubeconfig {kubeconfig or '~/.kube/config'}"
            + (f" (context {context})" if context else "")
        )
        raise PermanentError(f"could not load Kubernetes credentials from {where}: {exc}") from exc
    return k8s.ApiClient(configuration)
