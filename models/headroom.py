"""SLO-targeted headroom: tune each variant's provisioning quantile from its own misses.

The user states an attainment target ("99% of requests within the TTFT SLO"), not a forecast
quantile; which quantile delivers that depends on how good the variant's forecast is and how
much slack its utilisation target leaves. So the quantile is a control variable, moved in
logit space by the smoothed miss share relative to the miss budget (1 - target):

* misses above budget -> more headroom (higher quantile), faster than it comes down, since a
  miss costs users and over-serving costs only money;
* misses well below budget (over-served) -> less headroom, slowly;
* misses near budget -> hold (dead band), so the quantile does not wander on noise.

A "miss" is the share of requests over the TTFT SLO in an interval. When latency was not
observed, an under-forecast (actual load above the provisioned forecast) counts as a miss of
the whole interval instead, so the tuner still learns from forecast error alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadroomConfig:
    """Bounds and speeds of the quantile tuner."""

    min_quantile: float = 0.5
    max_quantile: float = 0.995
    #: Weight of one interval in the smoothed miss share.
    alpha: float = 0.2
    #: Logit step per unit of (miss share / budget - 1), up and down.
    gain_up: float = 0.4
    gain_down: float = 0.1
    #: Largest logit move in one update.
    max_step: float = 0.5
    #: No move while the smoothed miss share is within this share of the budget.
    dead_band: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.min_quantile < self.max_quantile < 1:
            raise ValueError("need 0 < min_quantile < max_quantile < 1, got "
                             f"{self.min_quantile}, {self.max_quantile}")
        if not 0 < self.alpha <= 1 or min(self.gain_up, self.gain_down, self.max_step) <= 0:
            raise ValueError("alpha must be in (0, 1]; gains and max_step must be positive")
        if self.dead_band < 0:
            raise ValueError(f"dead_band must be >= 0, got {self.dead_band}")


@dataclass(frozen=True)
class HeadroomState:
    """A variant's current quantile and its smoothed miss share (None before any data)."""

    quantile: float = 0.9
    miss_share: float | None = None
    samples: int = 0


@dataclass(frozen=True)
class HeadroomObservation:
    """One interval of a variant's realised service.

    `attainment` is the share of requests within the TTFT SLO (None when not observed);
    `forecast_rps` is the demand provisioned for, `actual_rps` the demand that came.
    """

    forecast_rps: float
    actual_rps: float
    attainment: float | None = None


@dataclass(frozen=True)
class HeadroomUpdate:
    state: HeadroomState
    quantile: float
    direction: str  # "up" | "down" | "hold"
    reason: str


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def interval_miss_share(obs: HeadroomObservation) -> float | None:
    """Share of the interval's requests that missed, or None when the interval says nothing."""
    if obs.attainment is not None and math.isfinite(obs.attainment):
        return min(max(1.0 - obs.attainment, 0.0), 1.0)
    if math.isfinite(obs.forecast_rps) and math.isfinite(obs.actual_rps):
        return 1.0 if obs.actual_rps > obs.forecast_rps else 0.0
    return None


def tune_quantile(state: HeadroomState, obs: HeadroomObservation, attainment_target: float,
                  config: HeadroomConfig = HeadroomConfig()) -> HeadroomUpdate:
    """The next provisioning quantile for a variant after one observed interval."""
    if not 0 < attainment_target < 1:
        raise ValueError(f"attainment_target must be in (0, 1), got {attainment_target}")
    q = min(max(state.quantile, config.min_quantile), config.max_quantile)
    share = interval_miss_share(obs)
    if share is None:
        return HeadroomUpdate(state, q, "hold", "no usable observation: quantile held at "
                              f"{q:.3f}")
    prev = state.miss_share
    smoothed = share if prev is None else (1 - config.alpha) * prev + config.alpha * share
    budget = 1.0 - attainment_target
    error = smoothed / budget - 1.0
    new_state = HeadroomState(q, smoothed, state.samples + 1)
    if abs(error) <= config.dead_band:
        return HeadroomUpdate(new_state, q, "hold",
                              f"miss share {smoothed:.2%} within {config.dead_band:.0%} of "
                              f"budget {budget:.2%}: quantile held at {q:.3f}")
    gain = config.gain_up if error > 0 else config.gain_down
    move = max(-config.max_step, min(config.max_step, gain * error))
    raw = _expit(_logit(q) + move)
    new_q = min(max(raw, config.min_quantile), config.max_quantile)
    direction = "up" if new_q > q else "down" if new_q < q else "hold"
    bound = " (at bound)" if new_q != raw or direction == "hold" else ""
    word = "over" if error > 0 else "under"
    return HeadroomUpdate(
        HeadroomState(new_q, smoothed, state.samples + 1), new_q, direction,
        f"miss share {smoothed:.2%} {word} budget {budget:.2%}: quantile {q:.3f} -> "
        f"{new_q:.3f}{bound}")
