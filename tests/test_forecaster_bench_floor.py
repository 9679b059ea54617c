"""The forecast bench's non-causal floor: what no point forecast can beat at a step."""

from __future__ import annotations

import numpy as np

from bench.forecast_bench import noncausal_floor
from forecaster.baselines import trailing_means
from forecaster.calibrated import future_matrix


def test_a_smooth_series_has_no_floor() -> None:
    """Without noise the neighbours' mean is the value itself (a straight line here)."""
    y = np.arange(100, dtype=np.float64)
    assert noncausal_floor(y, np.arange(20, 80), 5, (3, 9)) == 0.0


def test_on_counts_at_a_constant_rate_the_floor_is_the_noise_and_beats_every_forecast() -> None:
    """Poisson counts at 40 a step: the floor is the counts' own spread around the rate
    (E|y - 40| ~ 5.0, plus a little for estimating the rate from the neighbours), and no
    forecast, here the best trailing mean, gets under it."""
    rng = np.random.default_rng(0)
    y = rng.poisson(40, 20_000).astype(np.float64)
    origins = np.arange(100, 19_900)
    floor = noncausal_floor(y, origins, 5)
    noise = float(np.mean(np.abs(y - 40.0)))
    assert noise <= floor <= 1.05 * noise
    actual = future_matrix(y, origins, 5)
    best_forecast = min(float(np.mean(np.abs(actual - trailing_means(y, k)[origins][:, None])))
                        for k in (8, 32, 128))
    assert floor < best_forecast


def test_missing_samples_are_left_out_not_read_as_zero() -> None:
    y = np.full(200, 10.0)
    y[50:60] = np.nan
    assert noncausal_floor(y, np.arange(20, 150), 5) == 0.0
