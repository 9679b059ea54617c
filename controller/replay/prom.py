"""Replay from Prometheus: each variant's request history read through the service's own
`PrometheusSource`, so a user gets a replay of their own fleet without exporting anything.

The history is read once, on the config's training step (the grid the service trains on),
and replayed like a trace: missing points are gaps, not zero load.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from controller.config import Config
from controller.protocols import PermanentError, TemporaryError
from controller.replay.harness import (
    POLICIES,
    ReplayError,
    ReplayResult,
    _with_cold_start,
    check_cold_start,
    plan,
    replay_plan,
)
from controller.replay.sim import Arrivals
from forecaster.trace import TraceSeries


def read_history(config: Config, url: str, since_s: float, now: float | None = None
                 ) -> dict[str, TraceSeries]:
    """Every variant's request rate over the last `since_s`, on the training step."""
    from controller.prometheus import PrometheusSource

    step = config.prometheus.step_s
    end = math.floor((time.time() if now is None else now) / step) * step
    start = end - math.floor(since_s / step) * step
    source = PrometheusSource(config.prometheus.model_copy(update={"url": url}),
                              config.variants)
    out: dict[str, TraceSeries] = {}
    try:
        for v in config.variants:
            try:
                h = source.history(v.name, start, end, step)
            except (TemporaryError, PermanentError) as exc:
                raise ReplayError(f"cannot read the history of {v.name!r} from {url}: "
                                  f"{exc}") from None
            values = np.asarray(h.values, dtype=np.float64)
            if not np.isfinite(values).any():
                raise ReplayError(f"Prometheus at {url} has no samples for {v.name!r} "
                                  f"(signals.requests) over the last {since_s / 86400:g} days")
            gaps = int((~np.isfinite(values)).sum())
            out[v.name] = TraceSeries(v.name, float(h.start), int(h.step_s), values, None, None,
                                      gaps)
    finally:
        source.close()
    return out


def run_prometheus_replay(config: Config, url: str, since_s: float, *,
                          policies: Sequence[str] = POLICIES, iso_slo: bool = False,
                          progress: Callable[[str], None] | None = None, seed: int = 0,
                          arrivals: Arrivals = "poisson", cold_start_s: float | None = None,
                          warmup_s: float = 0.0, now: float | None = None
                          ) -> list[ReplayResult]:
    """`forescale replay --config FILE --prometheus URL --since 14d`."""
    if cold_start_s is not None:
        check_cold_start(cold_start_s)
    if progress:
        progress(f"reading {since_s / 86400:g} days of history from {url}")
    traces = read_history(config, url, since_s, now)
    cfg = config if cold_start_s is None else _with_cold_start(config, cold_start_s)
    p = plan(cfg, traces, source=url, arrivals=arrivals, seed=seed, warmup_s=warmup_s)
    return replay_plan(p, policies, iso_slo, progress)
