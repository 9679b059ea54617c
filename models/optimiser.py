"""Replicas and routing across substitutable variants under per-GPU-type quotas.

A variant group is a set of variants that can serve the same traffic (a model at several
sizes, precisions or GPU types). Given each group's forecast demand, the optimiser picks
replicas per variant and routing weights that, in this order of priority:

1. leave as little demand unserved as the GPU quotas allow;
2. send as little traffic as possible to *degraded* variants (quality below the group's
   floor but at or above its `degraded_quality_floor`): they take overflow only when quota
   runs short (elastic degradation);
3. cost the least per hour.

The priorities are lexicographic, so they are solved as three MILPs in turn (HiGHS through
`scipy.optimize.milp`), each fixing the optimum of the one before, rather than as one MILP
with big-M weights that would blur them. If HiGHS fails or runs out of time without a
solution, a greedy fill (cheapest capacity per req/s first) answers instead and says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp

from models.profile import VariantProfile

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class VariantOption:
    """One variant as the optimiser sees it: capacity at SLO per replica, GPUs, price."""

    name: str
    capacity_rps: float
    gpu_type: str
    gpus_per_replica: int
    cost_per_replica_hour: float
    quality: float
    min_replicas: int = 0
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        if self.capacity_rps < 0 or not math.isfinite(self.capacity_rps):
            raise ValueError(f"{self.name}: capacity_rps must be >= 0, got {self.capacity_rps}")
        if self.gpus_per_replica < 1 or self.cost_per_replica_hour < 0:
            raise ValueError(f"{self.name}: need gpus_per_replica >= 1 and cost >= 0")
        if self.min_replicas < 0 or (self.max_replicas is not None
                                     and self.max_replicas < self.min_replicas):
            raise ValueError(f"{self.name}: need 0 <= min_replicas <= max_replicas")

    @classmethod
    def from_profile(cls, name: str, profile: VariantProfile, capacity_rps: float,
                     min_replicas: int = 0, max_replicas: int | None = None) -> VariantOption:
        """Build from a profile and its capacity at SLO (see `models.capacity`)."""
        return cls(name, capacity_rps, profile.gpu_type, profile.gpus_per_replica,
                   profile.cost_per_replica_hour, profile.quality, min_replicas, max_replicas)


@dataclass(frozen=True)
class GroupDemand:
    """A group's forecast demand and the variants that may serve it.

    Variants with `quality >= quality_floor` serve normally; those with
    `degraded_quality_floor <= quality < quality_floor` only take overflow; the rest get no
    traffic (but keep their `min_replicas`).
    """

    name: str
    demand_rps: float
    variants: tuple[VariantOption, ...]
    quality_floor: float = 0.0
    degraded_quality_floor: float | None = None

    def tier(self, v: VariantOption) -> str:
        if v.capacity_rps <= 0:
            return "none"
        if v.quality >= self.quality_floor:
            return "primary"
        if self.degraded_quality_floor is not None and v.quality >= self.degraded_quality_floor:
            return "degraded"
        return "none"


@dataclass(frozen=True)
class Allocation:
    """The plan: replicas per variant, routing weights per group, what is left unserved."""

    replicas: Mapping[str, int]
    #: group -> variant -> share of the group's *served* traffic (sums to 1 when any served).
    routing: Mapping[str, Mapping[str, float]]
    #: variant -> req/s routed to it.
    served_rps: Mapping[str, float]
    degraded_rps: Mapping[str, float]
    unserved_rps: Mapping[str, float]
    gpus_used: Mapping[str, int]
    cost_per_hour: float
    solver: str  # "milp" | "greedy"
    optimal: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_unserved_rps(self) -> float:
        return float(sum(self.unserved_rps.values()))


@dataclass(frozen=True)
class _Problem:
    """The flattened instance: variables are n (per variant), x (per variant), u (per group)."""

    groups: tuple[GroupDemand, ...]
    variants: tuple[VariantOption, ...]
    group_of: tuple[int, ...]
    tiers: tuple[str, ...]
    quotas: Mapping[str, int]
    utilisation: float

    @property
    def nv(self) -> int:
        return len(self.variants)

    def upper_replicas(self, i: int) -> int:
        v = self.variants[i]
        if self.tiers[i] == "none":
            return v.min_replicas
        demand = self.groups[self.group_of[i]].demand_rps
        need = math.ceil(demand / (v.capacity_rps * self.utilisation) - 1e-9)
        top = max(v.min_replicas, need)
        return top if v.max_replicas is None else min(top, v.max_replicas)


def _build(groups: Sequence[GroupDemand], quotas: Mapping[str, int],
           utilisation: float) -> _Problem:
    seen: set[str] = set()
    variants: list[VariantOption] = []
    group_of: list[int] = []
    tiers: list[str] = []
    for gi, g in enumerate(groups):
        if g.demand_rps < 0 or not math.isfinite(g.demand_rps):
            raise ValueError(f"group {g.name!r}: demand_rps must be >= 0, got {g.demand_rps}")
        for v in g.variants:
            if v.name in seen:
                raise ValueError(f"variant {v.name!r} appears in more than one group; a "
                                 "variant's replicas serve one group")
            seen.add(v.name)
            variants.append(v)
            group_of.append(gi)
            tiers.append(g.tier(v))
    return _Problem(tuple(groups), tuple(variants), tuple(group_of), tuple(tiers),
                    dict(quotas), utilisation)


def _constraints(p: _Problem) -> list[LinearConstraint]:
    nv, ng = p.nv, len(p.groups)
    size = 2 * nv + ng
    rows: list[LinearConstraint] = []
    for gi, g in enumerate(p.groups):  # sum x + u = demand
        a = np.zeros(size)
        a[[nv + i for i in range(nv) if p.group_of[i] == gi]] = 1.0
        a[2 * nv + gi] = 1.0
        rows.append(LinearConstraint(a, g.demand_rps, g.demand_rps))
    cap = np.zeros((nv, size))  # x - cap*util*n <= 0
    for i, v in enumerate(p.variants):
        cap[i, i] = -v.capacity_rps * p.utilisation
        cap[i, nv + i] = 1.0
    if nv:
        rows.append(LinearConstraint(cap, -np.inf, 0.0))
    for gpu, quota in p.quotas.items():
        a = np.zeros(size)
        for i, v in enumerate(p.variants):
            if v.gpu_type == gpu:
                a[i] = v.gpus_per_replica
        if a.any():
            rows.append(LinearConstraint(a, -np.inf, float(quota)))
    return rows


def _bounds(p: _Problem) -> Bounds:
    nv = p.nv
    lo = np.zeros(2 * nv + len(p.groups))
    hi = np.zeros_like(lo)
    for i, v in enumerate(p.variants):
        lo[i], hi[i] = v.min_replicas, p.upper_replicas(i)
        hi[nv + i] = 0.0 if p.tiers[i] == "none" else p.groups[p.group_of[i]].demand_rps
    for gi, g in enumerate(p.groups):
        hi[2 * nv + gi] = g.demand_rps
    return Bounds(lo, hi)


def _objectives(p: _Problem) -> list[tuple[str, FloatArray]]:
    nv, size = p.nv, 2 * p.nv + len(p.groups)
    unserved = np.zeros(size)
    unserved[2 * nv:] = 1.0
    degraded = np.zeros(size)
    for i in range(nv):
        if p.tiers[i] == "degraded":
            degraded[nv + i] = 1.0
    cost = np.zeros(size)
    cost[:nv] = [v.cost_per_replica_hour for v in p.variants]
    return [("unserved", unserved), ("degraded", degraded), ("cost", cost)]


def _solve_milp(p: _Problem, time_limit_s: float) -> tuple[FloatArray, bool] | str:
    """Lexicographic MILP; the solution vector and whether every stage was optimal, or why
    it failed."""
    nv = p.nv
    integrality = np.concatenate([np.ones(nv), np.zeros(nv + len(p.groups))])
    bounds = _bounds(p)
    rows = _constraints(p)
    tol = 1e-6 * (1.0 + sum(g.demand_rps for g in p.groups))
    deadline = time.monotonic() + time_limit_s
    x: FloatArray | None = None
    optimal = True
    for name, c in _objectives(p):
        left = deadline - time.monotonic()
        if left <= 0:
            return f"time limit reached before the {name} stage"
        res = milp(c, integrality=integrality, bounds=bounds, constraints=rows,
                   options={"time_limit": left, "mip_rel_gap": 1e-9})
        if res.x is None:
            return f"HiGHS found no solution in the {name} stage: {res.message}"
        optimal = optimal and res.status == 0
        x = np.asarray(res.x, dtype=np.float64)
        rows = [*rows, LinearConstraint(c, -np.inf, float(c @ x) + tol)]
    assert x is not None
    return x, optimal


def _solve_greedy(p: _Problem) -> FloatArray:
    """Fill each group with its cheapest capacity per req/s, primary tier first, in quota.

    Minimum replicas are reserved first, so the quota they use is not handed out twice.
    """
    nv = p.nv
    sol = np.zeros(2 * nv + len(p.groups))
    left = dict(p.quotas)
    for i, v in enumerate(p.variants):
        sol[i] = v.min_replicas
        if v.gpu_type in left:
            left[v.gpu_type] -= v.min_replicas * v.gpus_per_replica
    for gi, g in enumerate(p.groups):
        remaining = g.demand_rps
        order = sorted((i for i in range(nv) if p.group_of[i] == gi and p.tiers[i] != "none"),
                       key=lambda i: (p.tiers[i] != "primary", p.variants[i].cost_per_replica_hour
                                      / p.variants[i].capacity_rps))
        for i in order:
            v = p.variants[i]
            per = v.capacity_rps * p.utilisation
            spare = sol[i] * per - sol[nv + i]
            take = min(remaining, max(spare, 0.0))
            sol[nv + i] += take
            remaining -= take
            want = max(0, math.ceil(remaining / per - 1e-9))
            room = p.upper_replicas(i) - int(sol[i])
            if v.gpu_type in left:
                room = min(room, max(0, left[v.gpu_type]) // v.gpus_per_replica)
            add = max(0, min(want, room))
            if v.gpu_type in left:
                left[v.gpu_type] -= add * v.gpus_per_replica
            sol[i] += add
            take = min(remaining, add * per)
            sol[nv + i] += take
            remaining -= take
        sol[2 * nv + gi] = max(remaining, 0.0)
    return sol


def _route(p: _Problem, sol: FloatArray) -> FloatArray:
    """Routing for fixed replicas: primary tier first, then degraded, each in proportion to
    capacity (equal utilisation within a tier); the rest is unserved.

    Given the replicas this routing is optimal for the first two priorities, and it removes
    the solver's tolerance slack from the reported split.
    """
    nv = p.nv
    out = sol.copy()
    out[:nv] = np.round(sol[:nv])
    out[nv:] = 0.0
    for gi, g in enumerate(p.groups):
        remaining = g.demand_rps
        for tier in ("primary", "degraded"):
            members = [i for i in range(nv) if p.group_of[i] == gi and p.tiers[i] == tier]
            caps = {i: out[i] * p.variants[i].capacity_rps * p.utilisation for i in members}
            total = sum(caps.values())
            take = min(remaining, total)
            for i in members:
                out[nv + i] = take * caps[i] / total if total > 0 else 0.0
            remaining -= take
        out[2 * nv + gi] = max(remaining, 0.0)
    return out


def _reasons(p: _Problem, replicas: Mapping[str, int], served: Mapping[str, float],
             unserved: Mapping[str, float], gpus: Mapping[str, int]) -> list[str]:
    out: list[str] = []
    short = [t for t, q in p.quotas.items() if gpus.get(t, 0) >= q]
    for gi, g in enumerate(p.groups):
        members = [i for i in range(p.nv) if p.group_of[i] == gi]
        for i in members:
            v = p.variants[i]
            if p.tiers[i] == "degraded" and served[v.name] > 1e-9:
                out.append(f"{g.name}: {served[v.name]:.3g} req/s overflow to {v.name} "
                           f"(quality {v.quality} below floor {g.quality_floor}): quota short "
                           f"on {', '.join(short) or 'capacity'}")
        if unserved[g.name] > 1e-9:
            out.append(f"{g.name}: {unserved[g.name]:.3g} of {g.demand_rps:.3g} req/s unserved "
                       f"(quota exhausted: {', '.join(short) or 'max_replicas reached'})")
    for t in short:
        out.append(f"quota {t}: {gpus.get(t, 0)}/{p.quotas[t]} GPUs used")
    return out


def _allocation(p: _Problem, sol: FloatArray, solver: str, optimal: bool,
                notes: list[str]) -> Allocation:
    nv = p.nv
    sol = _route(p, sol)
    replicas = {v.name: round(sol[i]) for i, v in enumerate(p.variants)}
    served = {v.name: max(float(sol[nv + i]), 0.0) for i, v in enumerate(p.variants)}
    unserved = {g.name: max(float(sol[2 * nv + gi]), 0.0) for gi, g in enumerate(p.groups)}
    degraded = {g.name: sum(served[v.name] for i, v in enumerate(p.variants)
                            if p.group_of[i] == gi and p.tiers[i] == "degraded")
                for gi, g in enumerate(p.groups)}
    routing: dict[str, dict[str, float]] = {}
    for gi, g in enumerate(p.groups):
        names = [v.name for i, v in enumerate(p.variants) if p.group_of[i] == gi]
        total = sum(served[n] for n in names)
        routing[g.name] = {n: served[n] / total for n in names if served[n] > 0} \
            if total > 0 else {}
    gpus: dict[str, int] = {}
    for v in p.variants:
        gpus[v.gpu_type] = gpus.get(v.gpu_type, 0) + replicas[v.name] * v.gpus_per_replica
    cost = sum(replicas[v.name] * v.cost_per_replica_hour for v in p.variants)
    reasons = [*notes, *_reasons(p, replicas, served, unserved, gpus)]
    return Allocation(replicas, routing, served, degraded, unserved, gpus, float(cost), solver,
                      optimal, tuple(reasons))


def optimise(groups: Sequence[GroupDemand], gpu_quotas: Mapping[str, int] | None = None, *,
             target_utilisation: float = 0.85, time_limit_s: float = 2.0,
             use_milp: bool = True) -> Allocation:
    """Replicas and routing for all groups at once (quotas are shared across groups).

    Variants not in any group can be passed as one-variant groups so they count against
    the quotas. GPU types without a quota are unlimited. If the variants' `min_replicas`
    alone exceed a quota, the quota is raised to fit them and a reason says so.
    """
    if not 0 < target_utilisation <= 1:
        raise ValueError(f"target_utilisation must be in (0, 1], got {target_utilisation}")
    quotas = dict(gpu_quotas or {})
    p = _build(groups, quotas, target_utilisation)
    notes: list[str] = []
    for gpu, q in quotas.items():
        floor = sum(v.min_replicas * v.gpus_per_replica for v in p.variants
                    if v.gpu_type == gpu)
        if floor > q:
            notes.append(f"quota {gpu}: min_replicas need {floor} GPUs, more than the quota "
                         f"{q}; quota raised to {floor}")
            quotas[gpu] = floor
    p = _build(groups, quotas, target_utilisation)
    found = _solve_milp(p, time_limit_s) if use_milp else "MILP disabled"
    if isinstance(found, str):
        return _allocation(p, _solve_greedy(p), "greedy", False,
                           [*notes, f"greedy fallback: {found}"])
    sol, optimal = found
    status = "optimal" if optimal else "time limit: best found, not proven optimal"
    return _allocation(p, sol, "milp", optimal, [*notes, f"HiGHS MILP: {status}"])
