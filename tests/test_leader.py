"""Leader election between `LeaderElector`s over the API emulator's Leases.

Most tests drive the electors round by round (`run_once`) on an injected `FakeClock`, so
expiry and renew deadlines are exact and nothing sleeps. The tests about the background
thread itself (stop releases, slow requests, renew cadence) run real threads with short
durations (lease 2 s, renew deadline 1 s, retry 0.2 s) and poll with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.leader import LeaderElector
from tests.support.k8s_emulator import (
    K8sEmulator,
    k8s_api,  # noqa: F401  (the fixture)
    rule,
    rules_from_manifests,
)

pytestmark = pytest.mark.integration

NS = "forescale"
LEASE = "forescale-leader"
LEASE_S, RENEW_S, RETRY_S = 2.0, 1.0, 0.2
LEASE_RULE = rule("get,create,update", "coordination.k8s.io", "leases", [NS])


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll `predicate` until true; return the seconds it took, or fail after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


class Contenders:
    """Builds electors with their own tokens, and stops every one of them at the end."""

    def __init__(self, api: K8sEmulator) -> None:
        self.api = api
        self.electors: list[LeaderElector] = []
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _note(self, who: str, what: str) -> None:
        with self._lock:
            self.log.append((who, what))

    def driven(self, identity: str, clock: FakeClock, **kw: object) -> LeaderElector:
        """An elector not started: the test calls `run_once` on the fake clock."""
        return self.new(identity, start=False, clock=clock, **kw)

    def new(self, identity: str, start: bool = True, **kw: object) -> LeaderElector:
        token = self.api.add_token(f"token-{identity}", [LEASE_RULE])
        elector = LeaderElector(
            self.api.api_client(token), NS, LEASE, identity, LEASE_S, RENEW_S, RETRY_S,
            on_started_leading=lambda: self._note(identity, "started"),
            on_stopped_leading=lambda: self._note(identity, "stopped"),
            on_new_leader=lambda leader: self._note(identity, f"sees {leader}"),
            **kw,  # type: ignore[arg-type]
        )
        self.electors.append(elector)
        if start:
            elector.start()
        return elector

    def leaders(self) -> list[str]:
        return [e.identity for e in self.electors if e.is_leader]

    def stop_all(self) -> None:
        for elector in self.electors:
            elector.stop(timeout=10)


@pytest.fixture
def contenders(k8s_api: K8sEmulator) -> Iterator[Contenders]:  # noqa: F811
    group = Contenders(k8s_api)
    try:
        yield group
    finally:
        group.stop_all()


def test_exactly_one_of_two_contenders_leads(contenders: Contenders,
                                             k8s_api: K8sEmulator) -> None:  # noqa: F811
    clock = FakeClock()
    a, b = contenders.driven("pod-a", clock), contenders.driven("pod-b", clock)
    for _ in range(20):  # several lease durations of rounds: never two leaders, never zero
        a.run_once()
        b.run_once()
        assert len(contenders.leaders()) == 1
        clock.advance(RETRY_S)
    assert contenders.leaders() == ["pod-a"]  # the first to create the Lease keeps it
    lease = k8s_api.lease(NS, LEASE)
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseDurationSeconds"] == 2
    assert b.leader == "pod-a" and not b.is_leader
    assert ("pod-a", "started") in contenders.log
    assert ("pod-b", "sees pod-a") in contenders.log
    assert ("pod-b", "started") not in contenders.log


def test_leader_renews_keeping_acquire_time(contenders: Contenders,
                                            k8s_api: K8sEmulator) -> None:  # noqa: F811
    contenders.new("pod-a")
    wait_until(lambda: contenders.leaders() == ["pod-a"], timeout=3)
    first = k8s_api.lease(NS, LEASE)
    wait_until(lambda: (k8s_api.lease(NS, LEASE) or {})["spec"]["renewTime"]
               != first["spec"]["renewTime"], timeout=2)  # type: ignore[index]
    renewed = k8s_api.lease(NS, LEASE)
    assert renewed is not None and first is not None
    assert renewed["spec"]["acquireTime"] == first["spec"]["acquireTime"]
    assert renewed["spec"]["leaseTransitions"] == first["spec"]["leaseTransitions"] == 0
    assert int(renewed["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


def test_stopped_leader_releases_and_the_other_takes_over_quickly(
    contenders: Contenders, k8s_api: K8sEmulator  # noqa: F811
) -> None:
    a, b = contenders.new("pod-a"), contenders.new("pod-b")
    wait_until(lambda: len(contenders.leaders()) == 1, timeout=3)
    leader, follower = (a, b) if a.is_leader else (b, a)
    leader.stop()
    assert not leader.is_leader
    assert (leader.identity, "stopped") in contenders.log
    took = wait_until(lambda: follower.is_leader, timeout=LEASE_S)
    assert took < LEASE_S  # released: no need to wait for expiry
    lease = k8s_api.lease(NS, LEASE)
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == follower.identity
    assert lease["spec"]["leaseTransitions"] >= 1


def test_crashed_leader_is_replaced_exactly_when_the_lease_expires(
        contenders: Contenders) -> None:
    clock = FakeClock()
    a = contenders.driven("pod-a", clock, release_on_stop=False)
    b = contenders.driven("pod-b", clock)
    assert a.run_once()
    assert not b.run_once() and b.leader == "pod-a"  # b saw the record change now
    # pod-a crashes: it renews no more and the Lease still names it.
    clock.advance(LEASE_S - 0.01)
    assert not b.run_once()  # a live lease is respected until its full duration
    clock.advance(0.01)
    assert b.run_once() and b.is_leader
    assert contenders.leaders() == ["pod-b"]


def test_leader_that_cannot_renew_steps_down_before_the_lease_expires(
    contenders: Contenders, k8s_api: K8sEmulator  # noqa: F811
) -> None:
    clock = FakeClock()
    a, b = contenders.driven("pod-a", clock), contenders.driven("pod-b", clock)
    assert a.run_once()
    assert not b.run_once()
    k8s_api.add_token("token-pod-a", [])  # pod-a loses its RBAC: every renew is a 403
    clock.advance(RETRY_S)
    assert not a.run_once()
    assert a.is_leader  # still within its renew deadline
    clock.advance(RENEW_S - RETRY_S)
    assert not a.is_leader  # the deadline passed: it stops before anyone may take over
    assert not a.run_once()
    assert ("pod-a", "stopped") in contenders.log
    assert not b.run_once()  # the lease (2 s) has not expired yet
    clock.advance(LEASE_S - RENEW_S)
    assert b.run_once()
    assert contenders.leaders() == ["pod-b"]


def test_api_outage_demotes_the_leader_and_it_recovers_after(
    contenders: Contenders, k8s_api: K8sEmulator  # noqa: F811
) -> None:
    a = contenders.new("pod-a")
    wait_until(lambda: a.is_leader, timeout=3)
    k8s_api.fail(500, times=None, path="/leases")
    wait_until(lambda: not a.is_leader, timeout=RENEW_S + 0.5)
    k8s_api.clear_faults()
    wait_until(lambda: a.is_leader, timeout=LEASE_S + 1.0)
    assert [e for who, e in contenders.log if who == "pod-a"].count("started") == 2


def test_slow_api_cannot_keep_a_stale_leader(contenders: Contenders,
                                             k8s_api: K8sEmulator) -> None:  # noqa: F811
    a = contenders.new("pod-a")
    wait_until(lambda: a.is_leader, timeout=3)
    k8s_api.delay(3.0, path="/leases")  # every renew hangs until the client times out
    wait_until(lambda: not a.is_leader, timeout=RENEW_S + 0.3)
    k8s_api.clear_faults()


def test_followers_do_not_touch_a_held_lease(contenders: Contenders,
                                             k8s_api: K8sEmulator) -> None:  # noqa: F811
    clock = FakeClock()
    a, b = contenders.driven("pod-a", clock), contenders.driven("pod-b", clock)
    assert a.run_once()
    for _ in range(8):  # rounds within the lease, the leader renewing
        assert not b.run_once()
        clock.advance(RETRY_S)
        assert a.run_once()
    writes = [r for r in k8s_api.requests_log
              if r.method in ("PUT", "POST") and r.user and r.user.endswith("token-pod-b")]
    assert writes == []


def test_stop_without_start_and_double_stop_are_harmless(contenders: Contenders) -> None:
    elector = contenders.new("pod-a", start=False)
    elector.stop()
    elector.start()
    wait_until(lambda: elector.is_leader, timeout=3)
    elector.stop()
    elector.stop()
    assert not elector.is_leader
    with pytest.raises(RuntimeError, match="already started"):
        elector.start()
        elector.start()


def test_context_manager_runs_and_stops(k8s_api: K8sEmulator) -> None:  # noqa: F811
    with LeaderElector(k8s_api.api_client(), NS, LEASE, "solo", LEASE_S, RENEW_S,
                       RETRY_S) as elector:
        wait_until(lambda: elector.is_leader, timeout=3)
    assert not elector.is_leader
    assert (k8s_api.lease(NS, LEASE) or {})["spec"].get("holderIdentity") is None


def test_callback_errors_do_not_stop_the_election(k8s_api: K8sEmulator) -> None:  # noqa: F811
    def boom() -> None:
        raise RuntimeError("callback bug")

    clock = FakeClock()
    elector = LeaderElector(k8s_api.api_client(), NS, LEASE, "pod-a", LEASE_S, RENEW_S,
                            RETRY_S, on_started_leading=boom, clock=clock)
    assert elector.run_once()
    for _ in range(int((RENEW_S + 0.2) / RETRY_S) + 1):
        clock.advance(RETRY_S)
        assert elector.run_once()
        assert elector.is_leader  # still renewing past the first renew deadline


@pytest.mark.parametrize(("lease", "renew", "retry"), [(1.0, 1.0, 0.2), (2.0, 1.0, 0.9),
                                                        (2.0, 1.0, 0.0), (1.0, 2.0, 0.2)])
def test_inconsistent_durations_are_refused(lease: float, renew: float, retry: float,
                                            k8s_api: K8sEmulator) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="retry_period"):
        LeaderElector(k8s_api.api_client(), NS, LEASE, "x", lease, renew, retry)


def test_the_rbac_shipped_in_deploy_is_enough_to_elect(k8s_api: K8sEmulator) -> None:  # noqa: F811
    import yaml

    manifest = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "rbac.yaml"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not present")
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    token = k8s_api.add_token("deploy-rbac",
                              rules_from_manifests(documents, "forescale", "forescale"))
    clock = FakeClock()
    elector = LeaderElector(k8s_api.api_client(token), "forescale", "forescale-leader",
                            "pod-a", LEASE_S, RENEW_S, RETRY_S, clock=clock)
    for _ in range(4):  # create, then a few renews (get + update on the named Lease)
        assert elector.run_once()
        clock.advance(RETRY_S)
    assert elector.is_leader
    elector.start()  # the thread renews, and stop() releases (update)
    elector.stop()
    lease = k8s_api.lease("forescale", "forescale-leader")
    assert lease is not None and "holderIdentity" not in lease["spec"]  # released
    denied = [r for r in k8s_api.requests_log if r.status == 403]
    assert denied == []
