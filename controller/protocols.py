"""The edges of the loop, as protocols, so the demo, tests and production plug in their own.

A `MetricsSource` gives history for training and live signals for the reactive path; a
`ScaleTarget` reads and sets replicas. Errors are either temporary (retry on the next
reconcile) or permanent (stop acting on that variant and report), as in kopf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from forecaster.base import History
from models.signals import LiveSignals

__all__ = ["LiveSignals", "MetricsSource", "PermanentError", "ScaleResult", "ScaleTarget",
           "TemporaryError"]


class TemporaryError(Exception):
    """The edge failed in a way that may clear by itself (timeouts, 5xx, 429, conflicts)."""


class PermanentError(Exception):
    """The edge failed in a way retrying will not fix (403, 404, bad query, HPA conflict)."""


class MetricsSource(Protocol):
    """Where load history and live signals come from (Prometheus, or a trace file)."""

    def history(self, variant: str, start: float, end: float, step_s: int) -> History:
        """Request rate (req/s) of `variant` over `[start, end)` on a `step_s` grid."""
        ...

    def live(self, variant: str, now: float) -> LiveSignals:
        """The variant's live signals at `now`."""
        ...


@dataclass(frozen=True)
class ScaleResult:
    """What an actuator did: `changed` is False in dry-run or when already at target."""

    variant: str
    previous: int
    replicas: int
    changed: bool
    message: str


class ScaleTarget(Protocol):
    """What replicas are, and how they change (Kubernetes scale subresource, metric, dry-run)."""

    def current_replicas(self, variant: str) -> int:
        """The variant's current desired replicas (the Deployment's spec.replicas)."""
        ...

    def apply(self, variant: str, replicas: int, reasons: Sequence[str]) -> ScaleResult:
        """Set the variant's replicas to `replicas`, explaining why with `reasons`."""
        ...
