"""The measured cold start: from a scale-up to the matching rise of ready replicas."""

from __future__ import annotations

import pytest

from models.coldstart import ColdStartEstimator


def test_the_prior_serves_until_three_scale_ups_are_measured() -> None:
    est = ColdStartEstimator(120.0)
    est.ordered(0.0, 2, 3)
    est.observe(30.0, 2)
    est.observe(300.0, 3)
    assert est.cold_start_s == 120.0 and "1 of 3" in est.explain()
    for t0 in (1000.0, 2000.0):
        est.ordered(t0, 3, 4)
        est.observe(t0 + 330.0, 4)
        est.ordered(t0 + 400.0, 4, 3)  # scale back down for the next round
    assert est.measured and est.cold_start_s == pytest.approx(330.0, abs=30.0)
    assert "measured p90" in est.explain()


def test_each_replica_counts_from_its_own_order_and_p90_covers_the_slow_ones() -> None:
    est = ColdStartEstimator(60.0)
    est.ordered(0.0, 0, 2)  # two at once
    est.observe(100.0, 1)
    est.observe(200.0, 2)
    est.ordered(300.0, 2, 3)
    est.observe(400.0, 3)
    est.ordered(500.0, 3, 4)
    est.observe(1400.0, 4)  # one slow node: 900 s
    assert sorted(est.samples) == [100.0, 100.0, 200.0, 900.0]
    assert est.cold_start_s > 600.0  # the p90, not the median


def test_orders_cancelled_before_they_are_ready_are_never_counted() -> None:
    est = ColdStartEstimator(60.0)
    est.ordered(0.0, 2, 6)
    est.ordered(60.0, 6, 3)  # replicas 4..6 cancelled while starting
    est.observe(200.0, 3)
    est.observe(5000.0, 6)  # someone else's later scale-up: not ours to time
    assert list(est.samples) == [200.0]


def test_unobserved_readiness_and_impossible_priors_are_handled() -> None:
    est = ColdStartEstimator(60.0)
    est.ordered(0.0, 1, 2)
    est.observe(100.0, None)
    assert not est.samples
    with pytest.raises(ValueError, match="prior_s"):
        ColdStartEstimator(1e9)
