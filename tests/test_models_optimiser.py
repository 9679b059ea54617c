"""Variant groups under GPU quotas: MILP against brute force, degradation, fallback."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from models.optimiser import Allocation, GroupDemand, VariantOption, optimise
from models.profile import VariantProfile

UTIL = 0.85


def _route_objective(groups: list[GroupDemand], n: dict[str, int]
                     ) -> tuple[float, float, float]:
    """(unserved, degraded, cost) for fixed replicas, routing primary first then degraded."""
    unserved = degraded = cost = 0.0
    for g in groups:
        left = g.demand_rps
        for tier in ("primary", "degraded"):
            cap = sum(n[v.name] * v.capacity_rps * UTIL for v in g.variants
                      if g.tier(v) == tier)
            take = min(left, cap)
            left -= take
            if tier == "degraded":
                degraded += take
        unserved += left
        cost += sum(n[v.name] * v.cost_per_replica_hour for v in g.variants)
    return unserved, degraded, cost


def brute_force(groups: list[GroupDemand], quotas: dict[str, int]
                ) -> tuple[float, float, float]:
    variants = [v for g in groups for v in g.variants]
    ranges = []
    for g in groups:
        for v in g.variants:
            top = v.max_replicas if v.max_replicas is not None else \
                math.ceil(g.demand_rps / (v.capacity_rps * UTIL)) + 1
            ranges.append(range(v.min_replicas, max(v.min_replicas, top) + 1))
    best: tuple[float, float, float] | None = None
    for combo in itertools.product(*ranges):
        n = {v.name: k for v, k in zip(variants, combo, strict=True)}
        used: dict[str, int] = {}
        for v in variants:
            used[v.gpu_type] = used.get(v.gpu_type, 0) + n[v.name] * v.gpus_per_replica
        if any(used.get(t, 0) > q for t, q in quotas.items()):
            continue
        obj = _route_objective(groups, n)
        key = (round(obj[0], 6), round(obj[1], 6), obj[2])
        if best is None or key < best:
            best = key
    assert best is not None
    return best


def objective(a: Allocation) -> tuple[float, float, float]:
    return (round(a.total_unserved_rps, 6), round(sum(a.degraded_rps.values()), 6),
            a.cost_per_hour)


def random_instance(rng: random.Random) -> tuple[list[GroupDemand], dict[str, int]]:
    types = ["A", "B", "C"]
    groups = []
    k = 0
    for gi in range(rng.choice([1, 2])):
        vs = []
        for _ in range(rng.choice([2, 3])):
            vs.append(VariantOption(
                f"v{k}", capacity_rps=rng.choice([0.5, 1.0, 2.0, 3.0]),
                gpu_type=rng.choice(types), gpus_per_replica=rng.choice([1, 2]),
                cost_per_replica_hour=rng.choice([1.0, 2.5, 4.0, 7.0]),
                quality=rng.choice([0.6, 0.8, 0.95, 1.0]), max_replicas=rng.choice([3, 4])))
            k += 1
        groups.append(GroupDemand(f"g{gi}", rng.choice([0.0, 1.5, 3.0, 5.5]), tuple(vs),
                                  quality_floor=0.9, degraded_quality_floor=0.7))
    quotas = {t: rng.choice([1, 2, 4, 6]) for t in types if rng.random() < 0.7}
    return groups, quotas


@pytest.mark.parametrize("seed", range(40))
def test_milp_matches_brute_force_on_small_instances(seed: int) -> None:
    groups, quotas = random_instance(random.Random(seed))
    got = optimise(groups, quotas, target_utilisation=UTIL)
    assert got.solver == "milp" and got.optimal
    want = brute_force(groups, quotas)
    assert objective(got)[:2] == pytest.approx(want[:2], abs=1e-5)
    assert got.cost_per_hour == pytest.approx(want[2])
    for t, q in quotas.items():
        assert got.gpus_used.get(t, 0) <= q


@pytest.mark.parametrize("seed", range(20))
def test_greedy_fallback_is_feasible_and_never_beats_milp(seed: int) -> None:
    groups, quotas = random_instance(random.Random(seed))
    greedy = optimise(groups, quotas, target_utilisation=UTIL, use_milp=False)
    best = optimise(groups, quotas, target_utilisation=UTIL)
    assert greedy.solver == "greedy" and not greedy.optimal
    assert any("greedy fallback" in r for r in greedy.reasons)
    for t, q in quotas.items():
        assert greedy.gpus_used.get(t, 0) <= q
    assert objective(best) <= objective(greedy) or \
        objective(best)[:2] == pytest.approx(objective(greedy)[:2])


def _chat(demand: float) -> GroupDemand:
    return GroupDemand("chat", demand, (
        VariantOption("70b-h100", 2.0, "H100", 2, 24.0, 1.0),
        VariantOption("70b-fp8-l40s", 1.0, "L40S", 1, 2.0, 0.97),
        VariantOption("8b-l4", 10.0, "L4", 1, 0.8, 0.8),
    ), quality_floor=0.95, degraded_quality_floor=0.7)


def test_ample_quota_serves_all_at_least_cost_without_degradation() -> None:
    a = optimise([_chat(5.0)], {"H100": 100, "L40S": 100, "L4": 100})
    assert a.replicas == {"70b-h100": 0, "70b-fp8-l40s": 6, "8b-l4": 0}
    assert a.routing["chat"] == {"70b-fp8-l40s": 1.0}
    assert a.total_unserved_rps == 0 and a.degraded_rps["chat"] == 0
    assert a.cost_per_hour == pytest.approx(12.0)


def test_quota_shortage_shifts_overflow_to_cheaper_acceptable_variant() -> None:
    a = optimise([_chat(10.0)], {"H100": 4, "L40S": 4, "L4": 8})
    primary = 2 * 2.0 * 0.85 + 4 * 1.0 * 0.85
    assert a.degraded_rps["chat"] == pytest.approx(10.0 - primary)
    assert a.total_unserved_rps == pytest.approx(0.0)
    assert any("overflow to 8b-l4" in r for r in a.reasons)
    assert sum(a.routing["chat"].values()) == pytest.approx(1.0)


def test_quota_exhausted_everywhere_reports_unserved_demand() -> None:
    a = optimise([_chat(40.0)], {"H100": 2, "L40S": 1, "L4": 1})
    served = 1 * 2.0 * 0.85 + 1 * 1.0 * 0.85 + 1 * 10.0 * 0.85
    assert a.unserved_rps["chat"] == pytest.approx(40.0 - served)
    assert any("unserved" in r for r in a.reasons)


def test_variant_below_degraded_floor_gets_no_traffic() -> None:
    g = GroupDemand("chat", 5.0, (VariantOption("cheap-bad", 10, "L4", 1, 0.1, 0.3),
                                   VariantOption("good", 1.0, "H100", 1, 3.0, 1.0)),
                    quality_floor=0.9, degraded_quality_floor=0.5)
    a = optimise([g])
    assert a.replicas["cheap-bad"] == 0 and "cheap-bad" not in a.routing["chat"]


def test_groups_share_a_quota() -> None:
    g1 = GroupDemand("a", 3.4, (VariantOption("a1", 1.0, "H100", 1, 1.0, 1.0),))
    g2 = GroupDemand("b", 3.4, (VariantOption("b1", 1.0, "H100", 1, 1.0, 1.0),))
    a = optimise([g1, g2], {"H100": 6})
    assert a.gpus_used["H100"] == 6
    assert a.total_unserved_rps == pytest.approx(6.8 - 6 * 0.85)


def test_min_replicas_above_quota_raise_it_with_a_reason() -> None:
    g = GroupDemand("a", 1.0, (VariantOption("a1", 1.0, "H100", 2, 1.0, 1.0, min_replicas=3),))
    a = optimise([g], {"H100": 4})
    assert a.replicas["a1"] == 3
    assert any("quota raised to 6" in r for r in a.reasons)


def test_variant_in_two_groups_is_refused() -> None:
    v = VariantOption("x", 1.0, "H100", 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="more than one group"):
        optimise([GroupDemand("a", 1, (v,)), GroupDemand("b", 1, (v,))])


def test_option_from_profile_uses_profile_price_and_gpus() -> None:
    p = VariantProfile(capacity_rps=2.0, gpu_type="L4", gpus_per_replica=2, gpu_hourly_usd=0.5,
                       quality=0.8)
    v = VariantOption.from_profile("x", p, capacity_rps=1.7)
    assert (v.gpu_type, v.gpus_per_replica, v.cost_per_replica_hour, v.quality) == \
        ("L4", 2, 1.0, 0.8)
