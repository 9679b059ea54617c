"""What the live side of a variant looks like to a decision: instant signals, None if unseen.

Defined in `models/` because the decision is a pure function of them; the controller's
sources (Prometheus, a trace, the replay's simulated fleet) produce them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LiveSignals:
    """Instant signals of a variant for the reactive floor; None means not observed.

    A missing signal is None, never zero: zero queue and unknown queue are different facts.
    """

    ts: float
    request_rate: float | None = None
    queue_depth: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    ttft_p95_s: float | None = None
    ready_replicas: int | None = None
