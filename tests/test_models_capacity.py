"""Capacity at SLO: curve interpolation, request-mix scaling, queueing, online correction."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.capacity import (
    CorrectionConfig,
    CorrectionState,
    FleetObservation,
    RequestMix,
    capacity_at_slo,
    correct_capacity,
    erlang_c,
    mix_factor,
    mmc_wait_quantile,
    queueing_capacity,
)
from models.profile import SLO, PerfPoint, VariantProfile


def _curve(ttfts: tuple[float, float, float] = (1.0, 2.0, 4.0),
           itls: tuple[float, float, float] | None = None, **kw: object) -> VariantProfile:
    conc, thr = (10, 20, 40), (1.0, 1.8, 2.5)
    pts = tuple(PerfPoint(concurrency=c, request_throughput=x, ttft_p95_s=t,
                          itl_p95_s=None if itls is None else itls[i])
                for i, (c, x, t) in enumerate(zip(conc, thr, ttfts, strict=True)))
    return VariantProfile.model_validate({"curve": pts, "base_ttft_s": 0.5, **kw})


@pytest.mark.parametrize(("ttft_slo", "rps", "concurrency", "limited_by"), [
    (2.0, 1.8, 20.0, "ttft"),          # exactly on a measured point
    (3.0, 2.15, 30.0, "ttft"),         # interpolated between points
    (10.0, 2.5, 40.0, "curve_end"),    # never extrapolated past the last point
    (0.75, 0.5, 5.0, "ttft"),          # below the first point: towards base TTFT at zero load
    (0.4, 0.0, 0.0, "ttft"),           # tighter than an idle replica: infeasible
])
def test_capacity_from_curve_at_ttft_slo(ttft_slo: float, rps: float, concurrency: float,
                                         limited_by: str) -> None:
    est = capacity_at_slo(_curve(), SLO(ttft_p95_s=ttft_slo))
    assert est.method == "curve"
    assert est.rps == pytest.approx(rps)
    assert est.concurrency == pytest.approx(concurrency)
    assert est.limited_by == limited_by
    assert est.feasible == (rps > 0)


def test_itl_target_binds_before_ttft() -> None:
    est = capacity_at_slo(_curve(itls=(0.02, 0.04, 0.08)), SLO(ttft_p95_s=10, itl_p95_s=0.06))
    assert est.limited_by == "itl"
    assert est.rps == pytest.approx(2.15)


def test_itl_target_without_itl_in_curve_is_reported_unchecked() -> None:
    est = capacity_at_slo(_curve(), SLO(ttft_p95_s=10, itl_p95_s=0.06))
    assert "ITL target not checked" in est.explanation


def test_max_concurrency_caps_the_curve() -> None:
    est = capacity_at_slo(_curve(max_concurrency=15), SLO(ttft_p95_s=10))
    assert est.limited_by == "max_concurrency"
    assert est.rps == pytest.approx(1.4)


def test_kv_cache_caps_concurrency_for_long_requests() -> None:
    prof = _curve(kv_cache_tokens=15_000, mean_input_tokens=500, mean_output_tokens=500)
    est = capacity_at_slo(prof, SLO(ttft_p95_s=10))
    assert est.limited_by == "kv_cache"
    assert est.concurrency == pytest.approx(15.0)


def test_noisy_latency_dip_does_not_make_higher_load_look_safe() -> None:
    est = capacity_at_slo(_curve(ttfts=(1.0, 3.0, 2.0)), SLO(ttft_p95_s=2.5))
    assert est.concurrency is not None and est.concurrency < 20


def test_longer_requests_lower_capacity_by_their_token_cost() -> None:
    prof = _curve(mean_input_tokens=500, mean_output_tokens=200)
    base = capacity_at_slo(prof, SLO(ttft_p95_s=2.0))
    longer = capacity_at_slo(prof, SLO(ttft_p95_s=2.0), RequestMix(500, 400))
    factor = (0.1 * 500 + 200) / (0.1 * 500 + 400)
    assert longer.rps == pytest.approx(base.rps * factor)
    assert longer.tokens_per_s == pytest.approx(longer.rps * 900)
    assert longer.output_tokens_per_s == pytest.approx(longer.rps * 400)


def test_mix_factor_is_one_without_a_reference_mix() -> None:
    assert mix_factor(_curve(), RequestMix(100, 100)) == 1.0


def test_stated_capacity_is_used_as_given_and_says_so() -> None:
    est = capacity_at_slo(VariantProfile(capacity_rps=3.0), SLO())
    assert (est.method, est.rps) == ("stated", 3.0)
    assert "not checked" in est.explanation


def test_queueing_estimate_for_single_point_profile() -> None:
    prof = VariantProfile(curve=(PerfPoint(concurrency=16, request_throughput=2.0,
                                           ttft_p95_s=1.0),), base_ttft_s=0.2)
    est = capacity_at_slo(prof, SLO(ttft_p95_s=1.0))
    assert est.method == "queueing"
    assert 0 < est.rps < 2.0


def test_queueing_estimate_is_capped_by_stated_capacity() -> None:
    prof = VariantProfile(capacity_rps=1.0, saturation_rps=5.0, max_concurrency=32)
    est = capacity_at_slo(prof, SLO(ttft_p95_s=3.0))
    assert (est.method, est.limited_by, est.rps) == ("queueing", "stated", 1.0)


def test_erlang_c_single_server_is_utilisation() -> None:
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    assert erlang_c(4, 0.0) == 0.0
    assert erlang_c(4, 4.0) == 1.0


def test_mm1_wait_quantile_matches_closed_form() -> None:
    lam, mu = 0.8, 1.0
    expected = math.log(0.8 / 0.05) / (mu - lam)
    assert mmc_wait_quantile(lam, mu, 1, 0.95) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(sat=st.floats(0.5, 50), servers=st.integers(1, 128), base=st.floats(0.05, 1.0),
       extra=st.floats(0.01, 5.0))
def test_queueing_capacity_meets_target_and_stays_below_saturation(
        sat: float, servers: int, base: float, extra: float) -> None:
    target = base + extra
    lam = queueing_capacity(sat, servers, base, target)
    assert 0 <= lam < sat
    assert base + mmc_wait_quantile(lam, sat, servers) <= target + 1e-6
    assert queueing_capacity(sat, servers, base, target * 2) >= lam


def test_queueing_capacity_is_zero_when_idle_replica_misses() -> None:
    assert queueing_capacity(10, 8, base_ttft_s=2.0, ttft_target_s=1.0) == 0.0


# --- online correction -----------------------------------------------------------------


SLO_2S = SLO(ttft_p95_s=2.0)


def _obs(per_replica: float, ttft: float | None, replicas: int = 4) -> FleetObservation:
    return FleetObservation(replicas, per_replica * replicas, ttft)


def test_correction_lowers_capacity_when_fleet_misses_slo_below_estimate() -> None:
    out = correct_capacity(10.0, _obs(6.0, ttft=3.0), SLO_2S)
    assert out.evidence == "over_slo"
    assert out.capacity_rps == pytest.approx(0.8 * 10 + 0.2 * 6)
    assert "->" in out.explanation


def test_correction_moves_towards_throughput_at_the_edge_of_the_slo() -> None:
    out = correct_capacity(10.0, _obs(12.0, ttft=1.9), SLO_2S)
    assert out.evidence == "at_edge" and out.capacity_rps > 10


def test_correction_ignores_light_load_within_slo() -> None:
    out = correct_capacity(10.0, _obs(3.0, ttft=0.5), SLO_2S)
    assert (out.evidence, out.capacity_rps, out.state) == ("none", 10.0, CorrectionState())


def test_correction_raises_when_fleet_beats_estimate_within_slo() -> None:
    out = correct_capacity(10.0, _obs(13.0, ttft=0.5), SLO_2S)
    assert out.evidence == "under_slo_above_estimate" and out.capacity_rps > 10


def test_correction_holds_without_latency_or_replicas() -> None:
    assert correct_capacity(10.0, _obs(13.0, ttft=None), SLO_2S).evidence == "none"
    assert correct_capacity(10.0, FleetObservation(0, 5.0, 1.0), SLO_2S).evidence == "none"


def test_correction_is_bounded_after_many_bad_observations() -> None:
    cfg = CorrectionConfig(min_factor=0.5, max_factor=1.5)
    state = CorrectionState()
    for _ in range(100):
        out = correct_capacity(10.0, _obs(1.0, ttft=9.0), SLO_2S, state, cfg)
        state = out.state
    assert out.capacity_rps == pytest.approx(5.0)
    assert "(bounded)" in out.explanation
