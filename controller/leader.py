"""Leader election on a `coordination.k8s.io/v1` Lease, so only one forescale replica scales.

Several forescale replicas can run for availability; all of them serve (API, /metrics,
forecasts) but only the leader actuates. `LeaderElector.is_leader` is what the reconcile loop
checks before calling a `ScaleTarget`.

Why not `kubernetes.leaderelection` (client 37): we read it and it does not fit a long-running
service that must also shut down cleanly:
- `LeaderElection.run()` blocks forever in `acquire()` and has no stop or cancel; a stopped
  forescale could neither leave the election nor release the Lease.
- `LeaseLock` builds `CoordinationV1Api()` on the process-global default configuration, not on
  the ApiClient we are given (so no per-client credentials, and tests cannot run two contenders
  with different tokens).
- `Config` calls `sys.exit()` on bad arguments and requires whole-second periods >= 1 s.
- After losing the lease, `run()` returns for good; a replica cannot become leader again.
- It never releases the Lease, so a clean restart makes the others wait a full lease duration.

So this is a small elector written to client-go's algorithm (`tools/leaderelection`), on the
same Lease fields, so it interoperates with Go controllers' view of a Lease:
- Read the Lease. If it is absent, create it holding it (409 AlreadyExists = someone won).
- A Lease held by another identity is respected until `leaseDurationSeconds` have passed since
  we last saw its record change, measured on our monotonic clock (never comparing our wall
  clock with another machine's `renewTime`).
- Otherwise write ourselves in as holder with a PUT carrying the read `resourceVersion`;
  a 409 Conflict means another contender wrote first, and we stay follower.
- The leader renews every `retry_period`. If it has not renewed for `renew_deadline` it stops
  considering itself leader - before any follower may take over, since
  `renew_deadline < lease_duration` - and keeps competing as a follower.
- `stop()` releases the Lease (holder cleared, duration 1 s), as client-go's ReleaseOnCancel,
  so a follower takes over at its next retry instead of after a whole lease duration.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

#: Followers wait retry_period * U(1, JITTER) between attempts so contenders do not collide.
JITTER = 1.2

_FAILURES = (ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class _Record:
    """The fields of a Lease spec whose change proves the holder is alive."""

    holder: str
    duration_s: int
    renew_time: datetime | None
    acquire_time: datetime | None
    transitions: int


def _record(spec: k8s.V1LeaseSpec | None) -> _Record:
    spec = spec or k8s.V1LeaseSpec()
    return _Record(
        holder=spec.holder_identity or "",
        duration_s=spec.lease_duration_seconds or 0,
        renew_time=spec.renew_time,
        acquire_time=spec.acquire_time,
        transitions=spec.lease_transitions or 0,
    )


def _now() -> datetime:
    """Wall-clock time for the Lease's MicroTime fields (never zero microseconds: isoformat()
    would drop the fraction and RFC3339Micro parsers reject that)."""
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)


class LeaderElector:
    """Competes for the Lease `namespace/name` as `identity`, in a background thread.

    Callbacks run on the elector's thread; keep them short (set a flag, log). An exception in a
    callback is logged and does not stop the election. Durations are in seconds and may be
    fractional (tests use ~1 s); the Lease stores `ceil(lease_duration)` as it holds integers.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        *,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        on_new_leader: Callable[[str], None] | None = None,
        release_on_stop: bool = True,
        request_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not identity:
            raise ValueError("identity must be non-empty (use the pod name)")
        if not 0 < retry_period * JITTER < renew_deadline < lease_duration:
            raise ValueError(
                "need 0 < retry_period*1.2 < renew_deadline < lease_duration, got "
                f"retry_period={retry_period}, renew_deadline={renew_deadline}, "
                f"lease_duration={lease_duration}"
            )
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.release_on_stop = release_on_stop
        self.request_timeout = request_timeout or renew_deadline / 2
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._clock = clock
        self._api = k8s.CoordinationV1Api(api_client)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self._last_renew = -math.inf
        self._observed: _Record | None = None
        self._observed_at = -math.inf
        self._random = random.Random()

    # ------------------------------------------------------------------ public

    @property
    def is_leader(self) -> bool:
        """True while we hold the Lease and renewed it within `renew_deadline`.

        The deadline is checked here too, not only in the loop, so a renew stuck in a slow
        request cannot keep us "leader" past the point where a follower may take over.
        """
        with self._lock:
            return self._leading and self._clock() - self._last_renew < self.renew_deadline

    @property
    def leader(self) -> str | None:
        """The holder identity last seen on the Lease (None before the first read)."""
        with self._lock:
            return self._observed.holder or None if self._observed else None

    def start(self) -> None:
        """Start competing in a daemon thread; returns immediately."""
        if self._thread is not None:
            raise RuntimeError("LeaderElector already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"leader-election-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop competing; release the Lease if we hold it and `release_on_stop`. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> LeaderElector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def try_acquire_or_renew(self) -> bool:
        """One election round: True when we hold the Lease afterwards.

        Failures talking to the API count as "not acquired": the loop will try again, and the
        renew deadline decides when a leader must give up.
        """
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return self._create()
            logger.info("leader election: cannot read Lease %s/%s (%s)", self.namespace,
                        self.name, exc.status)
            return False
        except _FAILURES as exc:
            logger.info("leader election: cannot read Lease %s/%s (%s)", self.namespace,
                        self.name, exc)
            return False
        record = self._observe(_record(lease.spec))
        if record.holder and record.holder != self.identity and not self._expired(record):
            return False
        return self._take(lease, record)

    def run_once(self) -> bool:
        """One round exactly as the background thread runs it: acquire or renew, then update
        leadership (callbacks included); True when we hold the Lease afterwards.

        For driving an elector step by step on an injected clock (tests) instead of
        starting its thread and sleeping.
        """
        attempted_at = self._clock()
        acquired = self.try_acquire_or_renew()
        self._settle(acquired, attempted_at)
        return acquired

    # ------------------------------------------------------------------ election

    def _observe(self, record: _Record) -> _Record:
        """Remember when the Lease record last changed, on our clock; report a new holder."""
        with self._lock:
            changed_holder = self._observed is None or self._observed.holder != record.holder
            if record != self._observed:
                self._observed, self._observed_at = record, self._clock()
        if changed_holder and record.holder:
            logger.info("leader election: %s/%s is held by %s", self.namespace, self.name,
                        record.holder)
            self._callback(self._on_new_leader, record.holder)
        return record

    def _expired(self, record: _Record) -> bool:
        duration = record.duration_s or math.ceil(self.lease_duration)
        with self._lock:
            return self._clock() >= self._observed_at + duration

    def _spec(self, previous: _Record | None) -> k8s.V1LeaseSpec:
        now = _now()
        renewing = previous is not None and previous.holder == self.identity
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=math.ceil(self.lease_duration),
            acquire_time=previous.acquire_time if renewing and previous else now,
            renew_time=now,
            lease_transitions=(previous.transitions + (0 if renewing else 1))
            if previous is not None else 0,
        )

    def _create(self) -> bool:
        body = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=self._spec(None),
        )
        try:
            created = self._api.create_namespaced_lease(
                self.namespace, body, _request_timeout=self.request_timeout
            )
        except _FAILURES as exc:
            logger.info("leader election: could not create Lease %s/%s: %s", self.namespace,
                        self.name, getattr(exc, "status", exc))
            return False
        self._observe(_record(created.spec))
        return True

    def _take(self, lease: k8s.V1Lease, previous: _Record) -> bool:
        """Write ourselves in as holder, conditional on the resourceVersion we read."""
        lease.spec = self._spec(previous)
        try:
            written = self._api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=self.request_timeout
            )
        except _FAILURES as exc:
            logger.info("leader election: could not update Lease %s/%s: %s", self.namespace,
                        self.name, getattr(exc, "status", exc))
            return False
        self._observe(_record(written.spec))
        return True

    def _release(self) -> None:
        """Give the Lease up so a follower need not wait for it to expire (best effort)."""
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            now = _now()
            lease.spec = k8s.V1LeaseSpec(
                holder_identity=None,
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=lease.spec.lease_transitions,
            )
            self._api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=self.request_timeout
            )
            logger.info("leader election: %s released %s/%s", self.identity, self.namespace,
                        self.name)
        except _FAILURES as exc:
            logger.warning("leader election: could not release Lease %s/%s: %s",
                           self.namespace, self.name, getattr(exc, "status", exc))

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                acquired = self.run_once()
                pause = self.retry_period
                if not acquired:
                    pause *= self._random.uniform(1.0, JITTER)
                self._stop.wait(pause)
        finally:
            was_leading = self._set_leading(False)
            if was_leading and self.release_on_stop:
                self._release()
            if was_leading:
                self._callback(self._on_stopped)

    def _settle(self, acquired: bool, attempted_at: float) -> None:
        """Turn one round's outcome into leadership, calling the callbacks on transitions.

        A leader whose last renew is older than the renew deadline has lapsed - `is_leader`
        already said False - even if this round renewed again, so observers get a stop and a
        new start rather than a silent gap. A renew counts from when it was attempted, the
        conservative end of the request.
        """
        now = self._clock()
        with self._lock:
            was = self._leading
            lapsed = was and now - self._last_renew >= self.renew_deadline
            if lapsed:
                self._leading = False
            if acquired:
                self._last_renew, self._leading = attempted_at, True
            started = self._leading and (lapsed or not was)
        if lapsed:
            logger.warning("leader election: %s lost %s/%s (no renew within %.1fs)",
                           self.identity, self.namespace, self.name, self.renew_deadline)
            self._callback(self._on_stopped)
        if started:
            logger.info("leader election: %s became leader of %s/%s", self.identity,
                        self.namespace, self.name)
            self._callback(self._on_started)

    def _set_leading(self, value: bool) -> bool:
        with self._lock:
            was, self._leading = self._leading, value
        return was

    def _callback(self, fn: Callable[..., None] | None, *args: str) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # a user callback must not kill the election thread
            logger.exception("leader election callback %r failed", fn)
