"""Cost accounting: GPU-hours, dollars per hour and dollars per 1k tokens.

Kept separate from the decision so the optimiser, the replay simulator and the controller's
status all report cost the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CostBreakdown:
    """The running cost of a fleet of replicas at one moment.

    `cost_per_1k_tokens` is None when no tokens are served: a price per unit of nothing is
    not zero, it is undefined, and reporting it as zero would flatter an idle fleet.
    """

    replicas: int
    gpu_hours_per_hour: float
    cost_per_hour: float
    tokens_per_s: float | None = None
    cost_per_1k_tokens: float | None = None


def cost_per_1k_tokens(cost_per_hour: float, tokens_per_s: float | None) -> float | None:
    """Dollars per 1000 tokens served, or None when nothing (or an unknown amount) is served."""
    if tokens_per_s is None or not math.isfinite(tokens_per_s) or tokens_per_s <= 0:
        return None
    return cost_per_hour / (tokens_per_s * 3600.0) * 1000.0


def fleet_cost(replicas: int, gpus_per_replica: int, gpu_hourly_usd: float,
               tokens_per_s: float | None = None) -> CostBreakdown:
    """Cost of `replicas` replicas right now; `tokens_per_s` is what they actually serve."""
    if replicas < 0 or gpus_per_replica < 1 or gpu_hourly_usd < 0:
        raise ValueError(f"need replicas >= 0, gpus_per_replica >= 1, gpu_hourly_usd >= 0; "
                         f"got {replicas}, {gpus_per_replica}, {gpu_hourly_usd}")
    gpu_hours = float(replicas * gpus_per_replica)
    cost = gpu_hours * gpu_hourly_usd
    return CostBreakdown(replicas, gpu_hours, cost, tokens_per_s,
                         cost_per_1k_tokens(cost, tokens_per_s))


def gpu_hours(replicas: Sequence[int], step_s: float, gpus_per_replica: int) -> float:
    """GPU-hours spent by a replica count held for `step_s` at each step (replays, reports)."""
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    return float(sum(replicas)) * gpus_per_replica * step_s / 3600.0
