"""The live fleet corrects the profile's capacity inside the policy, and decisions use it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.decide import ScalingPolicy
from models.policy import PolicySettings, VariantPolicy
from models.reactive import ReactiveTargets
from models.signals import LiveSignals

PROFILE_RPS = 10.0
SLO_S = 5.0


def _settings(**kw: object) -> PolicySettings:
    base = PolicySettings(
        scaling=ScalingPolicy(min_replicas=1, max_replicas=100, target_utilisation=0.9,
                              tolerance=0.0),
        capacity_rps=PROFILE_RPS, cold_start_s=120.0,
        reactive=ReactiveTargets(capacity_rps=PROFILE_RPS, target_utilisation=0.9,
                                 queue_per_replica=4.0, kv_cache_usage=0.9, ttft_slo_s=SLO_S),
        attainment_target=0.99, ttft_slack_s=4.5, interval_s=30.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def _saturated(policy: VariantPolicy, true_rps: float, ready: int, steps: int) -> None:
    """A fleet whose replicas really serve `true_rps` each, offered 20% more: the queue
    grows by the excess every step and the TTFT is over the SLO."""
    offered = 1.2 * true_rps * ready
    queue = 0.0
    for k in range(steps):
        now = 30.0 * k
        queue += (offered - true_rps * ready) * 30.0
        live = LiveSignals(ts=now, request_rate=offered, queue_depth=queue,
                           ready_replicas=ready, ttft_p95_s=0.5 + queue / (true_rps * ready))
        decision, _ = policy.step(now, ready, live, None)
        policy.commit(decision, now, applied=True)


def test_a_queueing_fleet_lowers_an_optimistic_profile_to_what_it_serves() -> None:
    policy = VariantPolicy(_settings(), 0.9)
    _saturated(policy, true_rps=8.0, ready=10, steps=40)
    assert policy.capacity_rps == pytest.approx(8.0, rel=0.03)
    assert "over_slo" in policy.capacity_reason and "x0.8" in policy.capacity_reason
    # The decision sizes replicas with the corrected capacity.
    assert policy.last is not None
    assert policy.last.capacity_per_replica == pytest.approx(policy.capacity_rps)


def test_the_correction_is_bounded() -> None:
    policy = VariantPolicy(_settings(), 0.9)
    _saturated(policy, true_rps=2.0, ready=10, steps=80)
    assert policy.capacity_rps == pytest.approx(0.5 * PROFILE_RPS)
    assert "(bounded)" in policy.capacity_reason


def test_a_slow_ttft_without_a_queue_says_nothing_about_capacity() -> None:
    """Long prompts at 20% load: TTFT over the SLO, nobody waiting. Taken as capacity, it
    would shrink the estimate to 2 req/s a replica and never grow back."""
    policy = VariantPolicy(_settings(), 0.9)
    for k in range(40):
        live = LiveSignals(ts=30.0 * k, request_rate=20.0, queue_depth=0.0, ready_replicas=10,
                           ttft_p95_s=8.0)
        policy.step(30.0 * k, 10, live, None)
    assert policy.capacity_rps == PROFILE_RPS
    assert policy.capacity_reason.startswith("profile's capacity")


def test_replicas_serving_more_than_the_profile_within_the_slo_raise_it() -> None:
    policy = VariantPolicy(_settings(), 0.9)
    for k in range(40):
        live = LiveSignals(ts=30.0 * k, request_rate=120.0, queue_depth=0.0, ready_replicas=10,
                           ttft_p95_s=1.0)
        policy.step(30.0 * k, 10, live, None)
    assert policy.capacity_rps == pytest.approx(12.0, rel=0.02)
    assert "under_slo_above_estimate" in policy.capacity_reason


def test_off_trusts_the_profile_and_a_new_profile_resets_the_correction() -> None:
    off = VariantPolicy(_settings(correct_capacity=False), 0.9)
    _saturated(off, true_rps=8.0, ready=10, steps=40)
    assert off.capacity_rps == PROFILE_RPS
    on = VariantPolicy(_settings(), 0.9)
    _saturated(on, true_rps=8.0, ready=10, steps=40)
    on.reconfigure(_settings(capacity_rps=7.0))
    assert on.capacity_rps == 7.0 and "reset" in on.capacity_reason
