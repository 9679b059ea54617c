"""The trace-file metrics source: a real recorded trace replayed as if it were live.

The demo and benchmarks use it instead of Prometheus. Time is the *trace's* time: the service
runs on a clock mapped onto the trace (`TraceClock`), so the source can refuse to show any
sample after `now` and a demo can never forecast from the future.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.protocols import LiveSignals, PermanentError
from forecaster.base import History
from forecaster.trace import TraceSeries, read_trace


@dataclass
class TraceClock:
    """Maps wall-clock time onto trace time: `anchor` at start, advancing `speed` times faster."""

    anchor: float
    speed: float = 1.0
    _wall_start: float = field(default_factory=time.monotonic)

    def __call__(self) -> float:
        return self.anchor + (time.monotonic() - self._wall_start) * self.speed


class TraceSource:
    """`MetricsSource` over a trace file; only samples that end before `now` are visible."""

    def __init__(self, path: str | Path, series: list[str] | None = None) -> None:
        self.path = Path(path)
        self.series: dict[str, TraceSeries] = read_trace(self.path, series)

    def _get(self, variant: str) -> TraceSeries:
        try:
            return self.series[variant]
        except KeyError:
            raise PermanentError(f"trace {self.path} has no series {variant!r}; it has "
                                 f"{', '.join(sorted(self.series))}") from None

    def span(self, variant: str) -> tuple[float, float]:
        s = self._get(variant)
        return s.start, s.start + len(s) * s.step_s

    def history(self, variant: str, start: float, end: float, step_s: int) -> History:
        """Request rate on the `step_s` grid over `[start, end)`; windows not yet complete at
        `end` and times outside the trace are NaN (unknown), never zero."""
        s = self._get(variant)
        n = max(0, math.floor((end - start) / step_s))
        t = start + step_s * np.arange(n, dtype=np.float64)
        values = np.full(n, np.nan)
        if n:
            if step_s <= s.step_s:
                idx = np.floor((t - s.start) / s.step_s).astype(int)
                ok = (idx >= 0) & (idx < len(s)) & (s.start + (idx + 1) * s.step_s <= end)
                values[ok] = s.requests[idx[ok]]
            else:
                k = step_s / s.step_s
                for i, ti in enumerate(t):
                    lo = math.ceil((ti - s.start) / s.step_s)
                    hi = lo + int(k)
                    if lo >= 0 and hi <= len(s) and ti + step_s <= end:
                        values[i] = float(np.mean(s.requests[lo:hi]))
        return History(variant, start, step_s, values)

    def live(self, variant: str, now: float) -> LiveSignals:
        """The rate of the last complete window; queue/KV/TTFT are not in a trace (None)."""
        s = self._get(variant)
        idx = math.floor((now - s.start) / s.step_s) - 1
        rate = float(s.requests[idx]) if 0 <= idx < len(s) else math.nan
        return LiveSignals(ts=now, request_rate=rate if math.isfinite(rate) else None)
