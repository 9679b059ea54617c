"""Headroom by recent volatility, through the service as `forescale replay` runs it: on a
series whose volatility changes hour by hour, the quantile follows the volatility and the
SLO holds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.replay.harness import config_for_series, plan, run_forescale
from forecaster.trace import TraceSeries

STEP = 600
DAYS = 7


def _volatile_afternoons(seed: int = 0) -> TraceSeries:
    """10-minute windows: a daily shape, and noise whose spread goes from 2% at night to 25%
    in the afternoon, hour by hour (synthetic: an edge case no shipped trace isolates)."""
    rng = np.random.default_rng(seed)
    k = np.arange(DAYS * 86_400 // STEP)
    hour = (k * STEP / 3600.0) % 24.0
    shape = 1000.0 * (1.0 + 0.4 * np.sin(2.0 * math.pi * (hour - 9.0) / 24.0))
    sigma = 0.02 + 0.23 * 0.5 * (1.0 - np.cos(2.0 * math.pi * hour / 24.0))
    rates = shape * np.exp(sigma * rng.standard_normal(k.shape[0]) - sigma**2 / 2)
    return TraceSeries("volatile", 0.0, STEP, rates.astype(np.float64), None, None)


@pytest.mark.slow
def test_the_quantile_follows_the_volatility_and_the_slo_holds() -> None:
    ts = _volatile_afternoons()
    cfg = config_for_series(ts, None, 0.99, 5.0)
    p = plan(cfg, {ts.name: ts}, assumed_fleet=True, warmup_s=2 * 86_400.0)
    run = run_forescale(p)
    scored = run.sims[ts.name].tail(p.skip)
    assert scored.slo_attainment >= 0.99
    policy = run.service.variants[ts.name].policy
    groups = policy.headroom.groups
    assert groups is not None, policy.headroom.reason
    # Calm nights get less headroom than volatile afternoons.
    assert groups.quantiles[0] < groups.quantiles[-1]
    assert "by recent volatility" in policy.headroom.reason
