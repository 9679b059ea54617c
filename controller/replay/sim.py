"""The fleet simulator behind `forescale replay`: one variant's replicas serving a load trace.

A fluid queue on a fixed step (at most 10 s): each ready replica serves up to its capacity at
the SLO, work beyond capacity waits in a FIFO queue, an ordered replica becomes ready one cold
start after it is ordered, a removed replica stops at once. Replicas are billed from the moment
they are ordered, because a starting pod already holds its GPU while it loads the model.

The loop is plain Python over floats (about a microsecond per step): a 14-day trace at 10 s is
121k steps, and everything that could be vectorised (arrivals, prefix sums, TTFT) is.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from forecaster.base import FloatArray
from models.profile import VariantProfile

Arrivals = Literal["uniform", "poisson"]


@dataclass(frozen=True)
class Fleet:
    """What one replica delivers and costs, and the latency target the replay scores against."""

    capacity_rps: float
    base_ttft_s: float = 0.5
    ttft_slo_s: float = 5.0
    cold_start_s: float = 300.0
    gpus_per_replica: int = 1
    gpu_hourly_usd: float = 2.0
    #: (requests/s per replica, TTFT p95) measured points; empty means TTFT = base at any load.
    ttft_curve: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if not (self.capacity_rps > 0 and math.isfinite(self.capacity_rps)):
            raise ValueError(f"capacity_rps must be positive, got {self.capacity_rps!r}")
        if self.cold_start_s < 0:
            raise ValueError(f"cold_start_s must be >= 0, got {self.cold_start_s!r}")

    def base_ttft(self, per_replica_rps: FloatArray) -> FloatArray:
        """TTFT without queueing at the given per-replica load (the profile's curve, if any)."""
        if not self.ttft_curve:
            return np.full(per_replica_rps.shape, self.base_ttft_s)
        xs = np.array([0.0] + [p[0] for p in self.ttft_curve])
        ys = np.array([self.base_ttft_s] + [p[1] for p in self.ttft_curve])
        return np.asarray(np.interp(per_replica_rps, xs, ys), dtype=np.float64)


def fleet_from_profile(profile: VariantProfile, ttft_slo_s: float,
                       cold_start_s: float | None) -> Fleet:
    """A fleet from a `VariantProfile`: capacity is the throughput at which TTFT meets the SLO.

    With a curve, the capacity is where the interpolated TTFT p95 crosses the SLO (or the
    largest measured throughput if it never does), so the simulator and the replica math
    agree on what "one replica at SLO" means.
    """
    points = sorted((p.request_throughput, p.ttft_p95_s) for p in profile.curve)
    cap = profile.capacity_rps
    if points:
        cap = _capacity_at_slo(points, profile.base_ttft_s, ttft_slo_s)
    assert cap is not None  # the profile's validator guarantees curve or capacity_rps
    return Fleet(capacity_rps=cap, base_ttft_s=profile.base_ttft_s, ttft_slo_s=ttft_slo_s,
                 cold_start_s=profile.cold_start_s if cold_start_s is None else cold_start_s,
                 gpus_per_replica=profile.gpus_per_replica,
                 gpu_hourly_usd=profile.gpu_hourly_usd, ttft_curve=tuple(points))


def _capacity_at_slo(points: list[tuple[float, float]], base: float, slo: float) -> float:
    prev_x, prev_y = 0.0, base
    for x, y in points:
        if y > slo:
            if prev_y >= slo or y == prev_y:
                return max(prev_x, points[0][0])
            return prev_x + (x - prev_x) * (slo - prev_y) / (y - prev_y)
        prev_x, prev_y = x, y
    return points[-1][0]


@dataclass(frozen=True)
class Observation:
    """What a policy may see at a decision: only the past and the present of the fleet."""

    now: float
    step_index: int
    ready: int
    ordered: int
    queue: float
    #: Mean arrival rate (req/s) over the metrics window ending now, as Prometheus would say.
    load_rps: float


class Controller(Protocol):
    """A scaling policy under replay: observation in, replica target out."""

    def target(self, obs: Observation) -> int: ...


@dataclass(frozen=True)
class SimResult:
    """Per-step record of one replay and its summary counters."""

    start: float
    dt: float
    arrivals: FloatArray
    served: FloatArray
    queue: FloatArray
    ready: FloatArray
    ordered: FloatArray
    ttft_s: FloatArray
    met: FloatArray
    scale_events: int
    cold_starts: int

    @property
    def demand_rps(self) -> FloatArray:
        return self.arrivals / self.dt

    @property
    def slo_attainment(self) -> float:
        total = float(self.arrivals.sum())
        return float(self.met.sum()) / total if total > 0 else 1.0

    def utilisation(self, fleet: Fleet) -> float:
        """Requests served over the capacity paid for (every ordered replica, ready or not)."""
        paid = float(self.ordered.sum()) * self.dt * fleet.capacity_rps
        return float(self.served.sum()) / paid if paid > 0 else math.nan

    def tail(self, skip: int) -> SimResult:
        """The record from step `skip` on (a warm-up simulated but not scored); scale events
        and cold starts are counted from the ordered replicas' changes after it."""
        if skip <= 0:
            return self
        o = self.ordered[skip - 1:]
        steps = np.diff(o)
        return SimResult(self.start + skip * self.dt, self.dt, self.arrivals[skip:],
                         self.served[skip:], self.queue[skip:], self.ready[skip:],
                         self.ordered[skip:], self.ttft_s[skip:], self.met[skip:],
                         int(np.count_nonzero(steps)), int(steps[steps > 0].sum()))

    def gpu_hours(self, fleet: Fleet) -> float:
        return float(self.ordered.sum()) * self.dt * fleet.gpus_per_replica / 3600.0


def sim_step(step_s: int, limit_s: float = 10.0) -> float:
    """The largest divisor of the trace's window that is at most `limit_s` seconds."""
    for d in range(min(step_s, int(limit_s)), 0, -1):
        if step_s % d == 0:
            return float(d)
    return 1.0


def arrivals_per_step(rates: FloatArray, step_s: int, dt: float, mode: Arrivals,
                      seed: int) -> FloatArray:
    """Requests arriving in each simulation step: the window's rate spread evenly or Poisson.

    Missing windows (NaN) carry the last known rate forward: the simulator needs some truth,
    but forecasters still see them as missing. Poisson draws consume the random stream in
    time order, so perturbing the trace after t leaves every draw before t unchanged.
    """
    filled = _ffill(rates)
    per = round(step_s / dt)
    lam = np.repeat(filled * dt, per)
    if mode == "uniform":
        return lam
    rng = np.random.default_rng(seed)
    return rng.poisson(lam).astype(np.float64)


def _ffill(values: FloatArray) -> FloatArray:
    out = np.asarray(values, dtype=np.float64).copy()
    ok = np.isfinite(out)
    if not ok.any():
        return np.zeros_like(out)
    idx = np.where(ok, np.arange(out.size), 0)
    np.maximum.accumulate(idx, out=idx)
    out = out[idx]
    out[~np.isfinite(out)] = float(out[np.flatnonzero(ok)[0]])
    return out


class FleetSim:
    """One variant's fleet on the simulation clock, stepped from outside.

    `observe` says what a controller may see at step k, `order` applies its target (billing
    starts at once; a removed replica stops at once, still-starting ones first, newest first,
    as a ReplicaSet prefers deleting pods that are not ready), `serve` runs step k. Several
    fleets can be stepped in lockstep (the service decides for every variant at once);
    `simulate` drives one fleet with one controller.
    """

    def __init__(self, arrivals: FloatArray, start: float, dt: float, fleet: Fleet,
                 initial_replicas: int, metrics_window_s: float = 60.0) -> None:
        self.arrivals = arrivals
        self.start = start
        self.dt = dt
        self.fleet = fleet
        self.n = int(arrivals.shape[0])
        self._cap_step = fleet.capacity_rps * dt
        self._cum = np.concatenate(([0.0], np.cumsum(arrivals))).tolist()
        self._arr = arrivals.tolist()
        self._win = max(1, round(metrics_window_s / dt))
        self._pending: deque[float] = deque()
        self.ready = max(0, int(initial_replicas))
        self.queue = 0.0
        self.events = 0
        self.cold = 0
        self._q_start = [0.0] * self.n
        self._served = [0.0] * self.n
        self._ready = [0] * self.n
        self._ordered = [0] * self.n

    @property
    def ordered(self) -> int:
        return self.ready + len(self._pending)

    def observe(self, k: int) -> Observation:
        """What a controller sees before step k: the fleet and the mean arrival rate over the
        metrics window ending now (as Prometheus' `rate()` would say)."""
        lo = max(0, k - self._win)
        c = self._cum
        load = (c[k] - c[lo]) / ((k - lo) * self.dt) if k > lo else self._arr[0] / self.dt
        return Observation(self.start + k * self.dt, k, self.ready, self.ordered, self.queue,
                           load)

    def order(self, k: int, want: int) -> None:
        """Set the fleet's target (spec replicas) at step k."""
        now = self.start + k * self.dt
        want = max(0, int(want))
        have = self.ordered
        if want != have:
            self.events += 1
        if want > have:
            self.cold += want - have
            self._pending.extend([now + self.fleet.cold_start_s] * (want - have))
        else:
            drop = have - want
            while drop and self._pending:
                self._pending.pop()
                drop -= 1
            self.ready -= drop

    def serve(self, k: int) -> None:
        """Start replicas whose cold start has elapsed, then serve step k."""
        now = self.start + k * self.dt
        pending = self._pending
        while pending and pending[0] <= now + 1e-9:
            pending.popleft()
            self.ready += 1
        backlog = self.queue + self._arr[k]
        served = min(backlog, self.ready * self._cap_step)
        self._q_start[k] = self.queue
        self.queue = backlog - served
        self._served[k] = served
        self._ready[k] = self.ready
        self._ordered[k] = self.ready + len(pending)

    def result(self) -> SimResult:
        return _finish(self.arrivals, self.start, self.dt, self.fleet,
                       np.array(self._q_start), np.array(self._served),
                       np.array(self._ready, dtype=np.float64),
                       np.array(self._ordered, dtype=np.float64), self.events, self.cold)


def simulate(arrivals: FloatArray, start: float, dt: float, fleet: Fleet,
             controller: Controller, initial_replicas: int, decision_every: int,
             metrics_window_s: float = 60.0) -> SimResult:
    """Replay `arrivals` (requests per step) through a fleet driven by `controller`.

    Order within a step: decide (every `decision_every` steps), start replicas whose cold start
    has elapsed, then serve.
    """
    sim = FleetSim(arrivals, start, dt, fleet, initial_replicas, metrics_window_s)
    for k in range(sim.n):
        if k % decision_every == 0:
            sim.order(k, controller.target(sim.observe(k)))
        sim.serve(k)
    return sim.result()


def _finish(arrivals: FloatArray, start: float, dt: float, fleet: Fleet, q0: FloatArray,
            served: FloatArray, ready: FloatArray, ordered: FloatArray, events: int,
            cold: int) -> SimResult:
    """Vectorised TTFT and SLO scoring of a finished replay.

    Within a step the queue moves linearly from its start to its end value, so the wait of an
    arrival moves linearly from q0/mu to q1/mu (mu = the fleet's service rate); the share of the
    step's arrivals whose wait plus the base TTFT meets the SLO is read off that line.
    """
    q1 = q0 + arrivals - served
    mu = ready * fleet.capacity_rps
    with np.errstate(divide="ignore", invalid="ignore"):
        w0 = np.where(mu > 0, q0 / np.where(mu > 0, mu, 1.0), np.where(q0 > 0, np.inf, 0.0))
        w1 = np.where(mu > 0, q1 / np.where(mu > 0, mu, 1.0), np.where(q1 > 0, np.inf, 0.0))
        per_replica = np.where(ready > 0, served / (np.where(ready > 0, ready, 1.0) * dt), 0.0)
    base = fleet.base_ttft(per_replica)
    ttft = base + 0.5 * (w0 + w1)
    limit = fleet.ttft_slo_s - base
    lo, hi = np.minimum(w0, w1), np.maximum(w0, w1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(hi <= limit, 1.0,
                        np.where(lo > limit, 0.0,
                                 np.clip((limit - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)))
    frac = np.where(np.isinf(hi) & (lo <= limit), 0.0, frac)
    return SimResult(start=start, dt=dt, arrivals=arrivals, served=served, queue=q1,
                     ready=ready, ordered=ordered, ttft_s=ttft, met=frac * arrivals,
                     scale_events=events, cold_starts=cold)
