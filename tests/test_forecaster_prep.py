"""Gap handling: short holes bridged, long holes stay unknown (never zero)."""

from __future__ import annotations

import numpy as np
import pytest

from forecaster.base import History, NotEnoughHistoryError
from forecaster.calibrated import NaivePoint
from forecaster.models_stats import LevelBlend
from forecaster.prep import fill_short_gaps, merge_tail, nan_runs, prepare, require_history


def test_short_gap_is_linearly_interpolated() -> None:
    y = np.array([1.0, np.nan, np.nan, 4.0, 5.0])
    assert fill_short_gaps(y, max_gap=2).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_long_gap_stays_nan_and_is_never_zero_filled() -> None:
    y = np.array([1.0, np.nan, np.nan, np.nan, np.nan, 6.0])
    out = fill_short_gaps(y, max_gap=3)
    assert np.isnan(out[1:5]).all()
    assert not (out == 0).any()


def test_leading_and_trailing_gaps_are_not_extrapolated() -> None:
    out = fill_short_gaps(np.array([np.nan, 2.0, 3.0, np.nan]), max_gap=5)
    assert np.isnan(out[0]) and np.isnan(out[-1])


def test_nan_runs_reports_half_open_ranges() -> None:
    assert nan_runs(np.array([1.0, np.nan, np.nan, 2.0, np.nan])) == [(1, 3), (4, 5)]


def test_prepare_keeps_the_grid() -> None:
    h = History("v", 100.0, 60, np.array([1.0, np.nan, 3.0]))
    p = prepare(h)
    assert (p.start, p.step_s, p.values.tolist()) == (100.0, 60, [1.0, 2.0, 3.0])


def test_min_history_message_says_have_and_need() -> None:
    h = History("v", 0.0, 60, np.array([1.0, np.nan, 2.0]))
    with pytest.raises(NotEnoughHistoryError, match="not enough history: have 2, need 5"):
        require_history("m", h, 5)


def test_models_cope_with_a_long_masked_gap() -> None:
    rng = np.random.default_rng(0)
    y = 100 + rng.normal(0, 5, 600)
    y[200:260] = np.nan  # an hour-long outage of the exporter
    h = History("v", 0.0, 60, y)
    for model in (NaivePoint(10), LevelBlend(10)):
        out = model.fit(h).predict(10, [0.5, 0.9])
        assert np.isfinite(out[0.9]).all()
        assert 80 < out[0.5].mean() < 120


def test_merge_tail_overwrites_and_appends() -> None:
    vals, start = merge_tail(np.array([1.0, 2.0, 3.0]), 0.0, 10,
                             History("v", 20.0, 10, np.array([30.0, 4.0])), keep=3)
    assert (vals.tolist(), start) == ([2.0, 30.0, 4.0], 10.0)
