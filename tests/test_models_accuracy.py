"""The accuracy fallback: the model is held against the best of naive and window averages."""

from __future__ import annotations

import numpy as np
import pytest

from models.reactive import WINDOW_AVERAGE_KS, AccuracyTracker


def _run(loads: np.ndarray, p50: np.ndarray, tracker: AccuracyTracker | None = None
         ) -> AccuracyTracker:
    """Score window k's forecast `p50[k]` against `loads[k]`, as the policy does: the
    expectation is made when window k-1 has completed, then k-1 is observed."""
    tr = tracker or AccuracyTracker()
    for k in range(1, len(loads)):
        tr.expect(600.0 * k, float(p50[k]), float(p50[k]), float(loads[k - 1]))
        tr.observe(600.0 * (k - 1), float(loads[k - 1]))
    return tr


def test_a_noisy_level_is_forecast_best_by_a_window_average_and_naive_alone_would_miss_it(
        ) -> None:
    rng = np.random.default_rng(0)
    loads = 100.0 + 10.0 * rng.standard_normal(200)
    # A model that repeats the last value is naive: as good as naive, so against naive alone
    # it would be trusted; a 12-window average forecasts the level with a third less error.
    p50 = np.concatenate(([100.0], loads[:-1]))
    tr = _run(loads, p50)
    assert tr.best_baseline == f"window_average({max(WINDOW_AVERAGE_KS)})"
    assert tr.fallback_active
    # The fallback centres on that average, not on the noisy live value.
    assert tr.centre(160.0) == pytest.approx(float(np.mean(loads[-13:-1])))


def test_a_model_that_knows_the_level_is_trusted() -> None:
    rng = np.random.default_rng(1)
    loads = 100.0 + 10.0 * rng.standard_normal(200)
    tr = _run(loads, np.full(200, 100.0))
    assert not tr.fallback_active


def test_a_trend_is_forecast_best_by_naive_and_the_centre_is_the_live_load() -> None:
    loads = np.linspace(100.0, 1000.0, 200)
    tr = _run(loads, np.full(200, 100.0))  # a model stuck at the start
    assert tr.best_baseline == "naive" and tr.fallback_active
    assert tr.centre(987.0) == 987.0


def test_no_verdict_before_enough_windows_and_gaps_are_not_scored() -> None:
    tr = AccuracyTracker(min_samples=12)
    loads = np.full(12, 100.0)
    loads[5] = np.nan
    _run(loads, np.full(12, 500.0), tr)
    assert not tr.fallback_active and tr.best_baseline == "naive"
    assert len(tr.baselines(100.0)) >= 2  # the averages exist once there are loads
