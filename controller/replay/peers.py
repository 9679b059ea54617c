"""The peers forescale is compared against in a replay: emulated, never forescale itself.

- `HPAPeer`: the Kubernetes HPA (autoscaling/v2) on a per-pod utilisation metric, its replica
  calculator (`models.hpa.plain_metric_replicas`: tolerance band returns the spec count,
  starting pods are pods without metrics) and its behaviour pipeline
  (`models.behaviour`, ported from the HPA with its upstream tests), in two settings: the
  seed-typical slow behaviour and the API defaults.
- `KedaQueuePeer`: a KEDA ScaledObject with Prometheus triggers on the request rate and the
  queue depth (External metrics, AverageValue targets), which KEDA hands to an HPA with the
  default behaviour.
- `Oracle`: knows the realised arrivals; each replica ordered exactly one cold start ahead.

forescale itself is replayed by running its `Service` (`controller.replay.drive`); nothing here
forecasts or tunes headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from controller.replay.sim import Fleet, Observation
from forecaster.base import FloatArray
from models.behaviour import Behaviour
from models.hpa import (
    HPAState,
    NoMetricsError,
    average_value_replicas,
    hpa_step,
    plain_metric_replicas,
)


@dataclass(frozen=True)
class HPASettings:
    """An HPA on a utilisation metric: target, tolerance, bounds and `behavior`."""

    target_utilisation: float = 0.75
    tolerance: float = 0.1
    min_replicas: int = 2
    max_replicas: int = 10_000
    behaviour: Behaviour = field(default_factory=Behaviour.seed_typical)
    #: The utilisation metric counts the queue drained over this window as load (requests
    #: in the system, not only those being served: a saturated replica reports 100% busy
    #: whatever the queue, so a metric of served load alone could never ask for more).
    queue_drain_s: float = 60.0


def utilisation(obs: Observation, fleet: Fleet, queue_drain_s: float) -> float:
    """The per-pod metric an HPA on vLLM scales on: load in the system (the arrival rate over
    the metrics window plus the queue drained over `queue_drain_s`) per ready replica, as a
    share of one replica's capacity at the SLO."""
    if obs.ready <= 0:
        return math.inf
    return (obs.load_rps + obs.queue / queue_drain_s) / (obs.ready * fleet.capacity_rps)


class HPAPeer:
    """The HPA: replica calculator on the utilisation metric, then its behaviour pipeline.

    Every ready pod reports the same utilisation (the replicas are identical); starting pods
    are pods without metrics (vLLM exports nothing until the model is loaded), which the HPA
    counts at zero usage on a scale-up (unless that flips the direction) and at target on a
    scale-down.
    """

    def __init__(self, fleet: Fleet, settings: HPASettings) -> None:
        self.fleet = fleet
        self.s = settings
        self.state = HPAState()

    def proposal(self, obs: Observation) -> int | None:
        s = self.s
        if obs.ready <= 0:
            return None  # no pod reports a metric: the HPA does not scale
        u = utilisation(obs, self.fleet, s.queue_drain_s)
        try:
            return plain_metric_replicas(
                obs.ordered, [u] * obs.ready, s.target_utilisation,
                missing=max(0, obs.ordered - obs.ready), tolerance=s.tolerance).replicas
        except NoMetricsError:
            return None

    def target(self, obs: Observation) -> int:
        p = self.proposal(obs)
        decision, self.state = hpa_step(self.state, obs.now, obs.ordered,
                                        [] if p is None else [p], self.s.min_replicas,
                                        self.s.max_replicas, self.s.behaviour)
        return decision.replicas


@dataclass(frozen=True)
class KedaSettings:
    """A KEDA ScaledObject with two Prometheus triggers (External, AverageValue)."""

    #: Request-rate trigger: this share of one replica's capacity per replica.
    target_utilisation: float = 0.75
    #: Queue trigger: waiting requests per replica, as seconds of one replica's capacity (a
    #: vLLM replica serving a few requests/s gets a threshold of a few requests; the same
    #: count would be noise for a replica serving a hundred).
    queue_target_s: float = 2.0
    tolerance: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 10_000
    behaviour: Behaviour = field(default_factory=Behaviour.hpa_defaults)


class KedaQueuePeer:
    """KEDA's HPA: each trigger proposes `ceil(total / target per pod)` (the spec count
    inside the tolerance), the largest wins, then the default HPA behaviour."""

    def __init__(self, fleet: Fleet, settings: KedaSettings) -> None:
        self.fleet = fleet
        self.s = settings
        self.state = HPAState()

    def target(self, obs: Observation) -> int:
        s = self.s
        current = obs.ordered
        proposals = [
            average_value_replicas(current, obs.load_rps,
                                   s.target_utilisation * self.fleet.capacity_rps,
                                   s.tolerance).replicas,
            average_value_replicas(current, obs.queue,
                                   s.queue_target_s * self.fleet.capacity_rps,
                                   s.tolerance).replicas,
        ]
        decision, self.state = hpa_step(self.state, obs.now, current, proposals,
                                        s.min_replicas, s.max_replicas, s.behaviour)
        return decision.replicas


def oracle_need(arrivals: FloatArray, dt: float, fleet: Fleet) -> FloatArray:
    """Fewest ready replicas per step that keep every arrival within the TTFT SLO.

    Knowing the realised arrivals, the oracle lets the queue take up the SLO's slack (wait up
    to SLO minus the base TTFT at full load) instead of provisioning for every Poisson spike,
    so that no policy meeting the SLO can be cheaper by queueing a little.
    """
    cap = fleet.capacity_rps
    full = float(fleet.base_ttft(np.array([cap]))[0])
    limit = max(0.0, (fleet.ttft_slo_s - full) * 0.999)
    out = np.empty(arrivals.shape[0])
    queue = 0.0
    for k, a in enumerate(arrivals.tolist()):
        n = math.ceil((queue + a) / (cap * (dt + limit)) - 1e-9)
        if limit > 0:
            n = max(n, math.ceil(queue / (cap * limit) - 1e-9))
        out[k] = n
        queue = max(0.0, queue + a - n * cap * dt)
    return out


class Oracle:
    """Exact future demand, each replica ordered exactly one cold start ahead.

    At each step it orders what `oracle_need` says the step a replica ordered now would be
    ready needs, and on the way down keeps what is needed before a replacement could be
    ready (the rule `models.decide` applies to forecasts, on exact demand). The resulting
    envelope, the peak need over the next cold start, is the cheapest schedule meeting the
    SLO when billing starts at the order: a replica idle for less than a cold start is cheaper
    kept than re-ordered. Precomputed with sliding maxima: the oracle is stepped every
    simulation step.
    """

    def __init__(self, fleet: Fleet, arrivals: FloatArray, dt: float) -> None:
        need = oracle_need(arrivals, dt, fleet)
        n = need.shape[0]
        lead = math.ceil(fleet.cold_start_s / dt - 1e-9)
        padded = np.concatenate((need, np.full(lead + 1, need[-1] if n else 0.0)))
        j = np.arange(n) + lead
        exact = np.isclose(fleet.cold_start_s / dt, lead)
        prev = np.where(exact & (j > 0), padded[np.maximum(j - 1, 0)], 0.0)
        #: Need of the step(s) a replica ordered now is ready for.
        self.at_ready = np.maximum(padded[j], prev if lead > 0 else 0.0)
        if lead > 0:
            window = np.lib.stride_tricks.sliding_window_view(padded, lead)[:n]
            #: Peak need before a replacement ordered now could be ready.
            self.soon = window.max(axis=1)
        else:
            self.soon = np.zeros(n)

    def target(self, obs: Observation) -> int:
        k = obs.step_index
        n = int(self.at_ready[k])
        soon = int(self.soon[k])
        if n < obs.ordered:
            n = max(n, min(soon, obs.ordered))
        if n == 0 and soon > 0:
            n = 1  # zero only when no demand is coming before a replica could be ready
        return n
