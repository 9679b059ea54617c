"""Actuators that need no cluster: dry-run (decide and record) and metric mode (publish).

The Kubernetes scale-subresource actuator lives in `controller/k8s.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.metrics import ForescaleMetrics
from controller.protocols import ScaleResult, ScaleTarget


class DryRunTarget:
    """Pretends to scale: remembers the replicas it was told, so the loop's state evolves as
    it would in a cluster, and changes nothing anywhere."""

    def __init__(self, initial: dict[str, int]) -> None:
        self.replicas = dict(initial)
        self.applied: list[tuple[str, int, tuple[str, ...]]] = []

    def current_replicas(self, variant: str) -> int:
        return self.replicas[variant]

    def apply(self, variant: str, replicas: int, reasons: Sequence[str]) -> ScaleResult:
        previous = self.replicas[variant]
        self.replicas[variant] = replicas
        self.applied.append((variant, replicas, tuple(reasons)))
        return ScaleResult(variant, previous, replicas, False,
                           f"dry-run: would scale {previous} -> {replicas}")


class MetricTarget:
    """Publishes the target as `forescale_desired_replicas{variant}` for KEDA or an HPA via
    prometheus-adapter; they own the Deployment, we only say what it should be."""

    def __init__(self, metrics: ForescaleMetrics, current: ScaleTarget | None = None,
                 initial: dict[str, int] | None = None) -> None:
        self.metrics = metrics
        self._reader = current
        self._last = dict(initial or {})

    def current_replicas(self, variant: str) -> int:
        if self._reader is not None:
            return self._reader.current_replicas(variant)
        return self._last[variant]

    def apply(self, variant: str, replicas: int, reasons: Sequence[str]) -> ScaleResult:
        previous = self._last.get(variant, replicas)
        self._last[variant] = replicas
        self.metrics.desired.labels(variant).set(replicas)
        return ScaleResult(variant, previous, replicas, False,
                           f"metric: published forescale_desired_replicas={replicas}")

