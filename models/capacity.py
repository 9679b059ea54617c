"""Capacity at SLO: how much load one replica sustains while meeting TTFT and ITL targets.

Three estimates, from most to least informed:

* `curve`: interpolate the measured benchmark curve (concurrency -> throughput, TTFT p95, ITL
  p95) and find the highest concurrency whose latencies stay within the SLO;
* `queueing`: an M/M/c model (slots = max concurrency) with the base TTFT added, for profiles
  with a single measured point or only a saturation throughput;
* `stated`: the profile's `capacity_rps`, taken on trust.

All are per replica, in requests/s for the request mix the forecast predicts: a curve measured
with 500-token prompts and 200-token answers does not hold for 4000-token prompts, so capacity
is rescaled by the mix's cost in decode-equivalent tokens. `correct_capacity` nudges the
result towards what the live fleet actually sustains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from models.profile import SLO, PerfPoint, VariantProfile

#: Percentile the SLO's latency targets refer to (`ttft_p95_s`, `itl_p95_s`).
SLO_PERCENTILE = 0.95


@dataclass(frozen=True)
class RequestMix:
    """Mean tokens per request, as the forecast predicts them for the decision window."""

    input_tokens: float
    output_tokens: float

    def __post_init__(self) -> None:
        for name, v in (("input_tokens", self.input_tokens),
                        ("output_tokens", self.output_tokens)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"RequestMix.{name} must be a positive number, got {v!r}")

    @property
    def tokens(self) -> float:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class CapacityEstimate:
    """Sustainable load per replica at the SLO, and how it was obtained.

    `rps == 0` means the variant cannot meet the SLO at any load (e.g. base TTFT above the
    target): it must not be given traffic, and `decide` refuses it.
    """

    rps: float
    method: str  # "curve" | "queueing" | "stated"
    limited_by: str  # "ttft" | "itl" | "max_concurrency" | "kv_cache" | "curve_end" | ...
    concurrency: float | None
    mix_factor: float
    explanation: str
    mix: RequestMix | None = None

    @property
    def feasible(self) -> bool:
        return self.rps > 0

    @property
    def tokens_per_s(self) -> float | None:
        """Prompt plus generated tokens/s per replica, when the mix is known."""
        return None if self.mix is None else self.rps * self.mix.tokens

    @property
    def output_tokens_per_s(self) -> float | None:
        return None if self.mix is None else self.rps * self.mix.output_tokens


def mix_factor(profile: VariantProfile, mix: RequestMix | None) -> float:
    """Requests/s multiplier for serving `mix` instead of the mix the curve was measured at.

    A request costs `input_token_weight * input + output` decode-equivalent tokens; the
    replica's token budget is fixed, so requests/s scale inversely with that cost. Without
    either mix the factor is 1 (no information, no change).
    """
    if mix is None or profile.mean_input_tokens is None or profile.mean_output_tokens is None:
        return 1.0
    w = profile.input_token_weight
    ref = w * profile.mean_input_tokens + profile.mean_output_tokens
    new = w * mix.input_tokens + mix.output_tokens
    return ref / new


def _concurrency_cap(profile: VariantProfile, mix: RequestMix | None) -> tuple[float, str]:
    """Most requests one replica can hold: max_concurrency, and what the KV cache fits.

    The KV cache bound assumes each request holds its full context (prompt + answer), which
    is conservative for the early part of a request's life.
    """
    cap, why = math.inf, "curve_end"
    if profile.max_concurrency is not None:
        cap, why = float(profile.max_concurrency), "max_concurrency"
    tokens = mix.tokens if mix is not None else (
        profile.mean_input_tokens + profile.mean_output_tokens
        if profile.mean_input_tokens is not None and profile.mean_output_tokens is not None
        else None)
    if profile.kv_cache_tokens is not None and tokens is not None:
        kv = profile.kv_cache_tokens / tokens
        if kv < cap:
            cap, why = kv, "kv_cache"
    return cap, why


def _crossing(c: np.ndarray, lat: np.ndarray, target: float) -> float:
    """Highest concurrency at which the (monotone) interpolated latency is within target."""
    over = np.flatnonzero(lat > target)
    if over.size == 0:
        return float(c[-1])
    i = int(over[0])
    if i == 0:
        return 0.0
    frac = (target - lat[i - 1]) / (lat[i] - lat[i - 1])
    return float(c[i - 1] + frac * (c[i] - c[i - 1]))


def _curve_capacity(profile: VariantProfile, slo: SLO, cap: float, cap_why: str
                    ) -> tuple[float, float, str, str]:
    """(rps, concurrency, limited_by, note) from the curve, with the origin prepended.

    Latencies are made monotone with a running max: a noisy dip at higher concurrency must not
    make a load look safe that a lower load already failed. The origin carries the profile's
    base TTFT and zero throughput, so SLOs tighter than the first point interpolate towards
    zero rather than extrapolating.
    """
    pts: tuple[PerfPoint, ...] = profile.curve
    c = np.array([0.0] + [p.concurrency for p in pts])
    x = np.array([0.0] + [p.request_throughput for p in pts])
    ttft_raw = [p.ttft_p95_s for p in pts]
    ttft = np.maximum.accumulate(np.array([min(profile.base_ttft_s, ttft_raw[0]), *ttft_raw]))
    limits = {"ttft": _crossing(c, ttft, slo.ttft_p95_s)}
    note = ""
    if slo.itl_p95_s is not None:
        itls = [p.itl_p95_s for p in pts]
        if all(v is not None for v in itls):
            arr = np.array([float(v) for v in itls if v is not None])
            itl = np.maximum.accumulate(np.concatenate([arr[:1], arr]))
            limits["itl"] = _crossing(c, itl, slo.itl_p95_s)
        else:
            note = "; ITL target not checked (curve lacks itl_p95_s)"
    why, c_star = min(limits.items(), key=lambda kv: kv[1])
    if c_star >= c[-1]:
        why = "curve_end"
    if cap < c_star:
        why, c_star = cap_why, cap
    rps = max(float(np.interp(c_star, c, x)), float(np.max(x[c <= c_star])))
    return rps, c_star, why, note


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (Erlang C).

    Computed through the Erlang B recursion, which stays stable for hundreds of servers.
    """
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    if offered_load <= 0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    rho = offered_load / servers
    return b / (1.0 - rho * (1.0 - b))


def mmc_wait_quantile(arrival_rps: float, saturation_rps: float, servers: int,
                      percentile: float = SLO_PERCENTILE) -> float:
    """The `percentile` of queueing delay in M/M/c with total service rate `saturation_rps`.

    P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t), so the quantile has a closed form.
    """
    if arrival_rps >= saturation_rps:
        return math.inf
    mu = saturation_rps / servers
    c_wait = erlang_c(servers, arrival_rps / mu)
    tail = 1.0 - percentile
    if c_wait <= tail:
        return 0.0
    return math.log(c_wait / tail) / (saturation_rps - arrival_rps)


def queueing_capacity(saturation_rps: float, servers: int, base_ttft_s: float,
                      ttft_target_s: float, percentile: float = SLO_PERCENTILE) -> float:
    """Highest arrival rate whose TTFT quantile (base TTFT + M/M/c wait) meets the target.

    TTFT = base TTFT (prefill at low load) + time waiting for a free slot. Solved by bisection
    since the wait quantile increases with load. Returns 0 when even an idle replica misses.
    """
    budget = ttft_target_s - base_ttft_s
    if budget < 0 or saturation_rps <= 0:
        return 0.0
    lo, hi = 0.0, saturation_rps
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if mmc_wait_quantile(mid, saturation_rps, servers, percentile) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _queueing_inputs(profile: VariantProfile, cap: float) -> tuple[float, int] | None:
    """(saturation rps, slots) for the queueing model, or None when it has nothing to go on."""
    saturation = profile.saturation_rps
    slots = float(profile.max_concurrency or 1)
    if profile.curve:
        point = profile.curve[-1]
        saturation = saturation or point.request_throughput
        slots = float(profile.max_concurrency or point.concurrency)
    if saturation is None:
        return None
    if cap < slots:  # fewer slots (e.g. the KV cache fits fewer requests): less throughput
        saturation *= cap / slots
        slots = cap
    return saturation, max(1, math.floor(slots))


def capacity_at_slo(profile: VariantProfile, slo: SLO,
                    mix: RequestMix | None = None) -> CapacityEstimate:
    """Sustainable requests/s per replica at the SLO for `mix` (or the curve's own mix).

    Uses the curve when it has two or more points, the queueing model when it has one point
    or a `saturation_rps`, and the stated `capacity_rps` otherwise.
    """
    factor = mix_factor(profile, mix)
    cap, cap_why = _concurrency_cap(profile, mix)
    mix_note = "" if factor == 1.0 else f", x{factor:.2f} for the request mix"
    if len(profile.curve) >= 2:
        rps, conc, why, note = _curve_capacity(profile, slo, cap, cap_why)
        return CapacityEstimate(
            rps * factor, "curve", why, conc, factor,
            f"curve: {rps:.3g} req/s at concurrency {conc:.3g} (limited by {why}, "
            f"TTFT p95 <= {slo.ttft_p95_s}s){mix_note}{note}", mix)
    q = _queueing_inputs(profile, cap)
    if q is not None:
        saturation, slots = q
        rps = queueing_capacity(saturation, slots, profile.base_ttft_s, slo.ttft_p95_s)
        why = "ttft" if rps > 0 else "infeasible"
        text = (f"M/M/{slots} queue: {rps:.3g} req/s of {saturation:.3g} saturation keeps "
                f"TTFT p95 (base {profile.base_ttft_s}s + wait) <= {slo.ttft_p95_s}s")
        if profile.capacity_rps is not None and not profile.curve and \
                profile.capacity_rps < rps:
            rps, why = profile.capacity_rps, "stated"
            text += f"; capped at stated capacity_rps {rps:.3g}"
        return CapacityEstimate(rps * factor, "queueing", why, float(slots), factor,
                                text + mix_note, mix)
    stated = float(profile.capacity_rps or 0.0)
    return CapacityEstimate(stated * factor, "stated", "stated", None, factor,
                            f"stated capacity_rps {stated:.3g} (not checked against the SLO)"
                            f"{mix_note}", mix)


# --- online correction ---------------------------------------------------------------------


@dataclass(frozen=True)
class FleetObservation:
    """What the live fleet of one variant did over the last interval; None = not observed."""

    ready_replicas: int
    throughput_rps: float
    ttft_p95_s: float | None
    itl_p95_s: float | None = None


@dataclass(frozen=True)
class CorrectionConfig:
    """How far and how fast the live fleet may move the profile's capacity."""

    #: Weight of one new observation in the smoothed factor.
    alpha: float = 0.2
    #: The corrected capacity stays within [min_factor, max_factor] x the profile's.
    min_factor: float = 0.5
    max_factor: float = 1.5
    #: Latency at or above this share of the target counts as "at the edge": the observed
    #: per-replica throughput is then a point estimate of capacity, not just a bound.
    edge_fraction: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise ValueError("need 0 < min_factor <= 1 <= max_factor, got "
                             f"{self.min_factor}, {self.max_factor}")
        if not 0 < self.edge_fraction <= 1:
            raise ValueError(f"edge_fraction must be in (0, 1], got {self.edge_fraction}")


@dataclass(frozen=True)
class CorrectionState:
    """The smoothed ratio of live capacity to profile capacity, and how many updates made it."""

    factor: float = 1.0
    samples: int = 0


@dataclass(frozen=True)
class CapacityCorrection:
    capacity_rps: float
    state: CorrectionState
    evidence: str  # "over_slo" | "at_edge" | "under_slo_above_estimate" | "none"
    explanation: str


def _latency_ratio(obs: FleetObservation, slo: SLO) -> float | None:
    """Worst observed latency as a share of its target; None when no latency was observed."""
    ratios = []
    if obs.ttft_p95_s is not None and math.isfinite(obs.ttft_p95_s):
        ratios.append(obs.ttft_p95_s / slo.ttft_p95_s)
    if obs.itl_p95_s is not None and slo.itl_p95_s is not None and math.isfinite(obs.itl_p95_s):
        ratios.append(obs.itl_p95_s / slo.itl_p95_s)
    return max(ratios) if ratios else None


def correct_capacity(prior_rps: float, obs: FleetObservation, slo: SLO,
                     state: CorrectionState = CorrectionState(),
                     config: CorrectionConfig = CorrectionConfig()) -> CapacityCorrection:
    """Move the capacity estimate towards what the live fleet shows, slowly and within bounds.

    Only load near or over the SLO says anything about capacity: a fleet at 30% load meeting
    its SLO tells us capacity is *at least* its throughput, nothing more. So:

    * latency over the SLO -> capacity is at most the observed per-replica throughput;
    * latency at the edge -> capacity is about the observed per-replica throughput;
    * latency well within -> capacity is at least the observed throughput (raise only).
    """
    if prior_rps <= 0 or not math.isfinite(prior_rps):
        raise ValueError(f"prior_rps must be positive, got {prior_rps!r}")
    current = prior_rps * state.factor
    ratio = _latency_ratio(obs, slo)
    if obs.ready_replicas < 1 or not math.isfinite(obs.throughput_rps) \
            or obs.throughput_rps <= 0 or ratio is None:
        return CapacityCorrection(current, state, "none",
                                  f"no usable observation: keeping {current:.3g} req/s "
                                  f"(x{state.factor:.2f} of profile)")
    per = obs.throughput_rps / obs.ready_replicas
    if ratio > 1.0:
        evidence, implied = "over_slo", min(per, current)
    elif ratio >= config.edge_fraction:
        evidence, implied = "at_edge", per
    elif per > current:
        evidence, implied = "under_slo_above_estimate", per
    else:
        return CapacityCorrection(current, state, "none",
                                  f"{per:.3g} req/s/replica within SLO is below the estimate "
                                  f"{current:.3g}: not informative")
    raw = (1 - config.alpha) * state.factor + config.alpha * implied / prior_rps
    factor = min(max(raw, config.min_factor), config.max_factor)
    bounded = " (bounded)" if factor != raw else ""
    new_state = replace(state, factor=factor, samples=state.samples + 1)
    return CapacityCorrection(
        prior_rps * factor, new_state, evidence,
        f"{evidence}: {per:.3g} req/s/replica at {ratio:.0%} of latency target implies "
        f"{implied:.3g}; capacity {current:.3g} -> {prior_rps * factor:.3g} req/s "
        f"(x{factor:.2f} of profile){bounded}")
