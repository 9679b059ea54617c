"""LightGBM features must never look ahead: perturbing data after t leaves features at t."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecaster.base import History
from forecaster.calibrated import NaivePoint
from forecaster.combination import Combination
from forecaster.models_lgbm import (
    LAGS,
    LGBMForecaster,
    Windows,
    build_features,
    feature_scale,
    fit_many,
    fit_many_booster,
    train_leads,
    training_rows,
)
from forecaster.models_stats import LevelBlend
from forecaster.prep import trailing_scale

floats = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(floats, st.just(float("nan"))), min_size=40, max_size=200),
    cut=st.integers(min_value=0, max_value=199),
    noise=st.lists(floats, min_size=200, max_size=200),
)
def test_features_at_t_ignore_everything_after_t(values: list[float], cut: int,
                                                 noise: list[float]) -> None:
    y = np.array(values)
    t = min(cut, y.shape[0] - 2)
    perturbed = y.copy()
    perturbed[t + 1:] = np.array(noise[: y.shape[0] - t - 1])
    origins = np.array([t], dtype=np.int64)
    leads = train_leads(30)
    a = build_features(y, 0.0, 60, origins, leads)
    b = build_features(perturbed, 0.0, 60, origins, leads)
    np.testing.assert_array_equal(a, b)


def test_feature_rows_are_origin_major_with_lead_first() -> None:
    y = np.arange(100, dtype=np.float64) + 1
    leads = np.array([1, 3], dtype=np.int64)
    x = build_features(y, 0.0, 600, np.array([50, 60], dtype=np.int64), leads)
    assert x.shape[0] == 4
    assert x[:, 0].tolist() == [1.0, 3.0, 1.0, 3.0]


def test_training_rows_for_the_newest_origins_equal_the_tail_of_all_rows() -> None:
    """The global model keeps a few hundred rows per variant: building only the newest
    origins must give exactly the tail of all rows, including where the newest origins lose
    rows to targets past the end."""
    rng = np.random.default_rng(1)
    y = 100 + 30 * np.sin(np.arange(5000) / 40) + rng.normal(0, 2, 5000)
    x_all, t_all, w_all = training_rows(y, 0.0, 60, 30)
    x, t, w = training_rows(y, 0.0, 60, 30, last_rows=200)
    assert t.shape[0] >= 200
    x, t, w = x[-200:], t[-200:], w[-200:]
    assert np.array_equal(x, x_all[-x.shape[0]:]) and np.array_equal(t, t_all[-t.shape[0]:])
    assert np.array_equal(w, w_all[-w.shape[0]:])


def test_a_released_combination_keeps_only_its_own_calibration() -> None:
    rng = np.random.default_rng(2)
    y = 100 + 30 * np.sin(2 * np.pi * np.arange(2000) / 144) + rng.normal(0, 3, 2000)
    h = History("v", 0.0, 600, y)
    members = [NaivePoint(3).fit(h), LevelBlend(3).fit(h)]
    combo = Combination(members)
    before = combo.predict(3, [0.5, 0.9])
    size = len(pickle.dumps(combo))
    combo.release()
    assert all(m._cal.errors.shape[0] == 0 for m in combo.members)
    assert len(pickle.dumps(combo)) < 0.6 * size
    after = combo.predict(3, [0.5, 0.9])
    assert all(np.allclose(before[q], after[q]) for q in (0.5, 0.9))


def test_a_subnormal_level_a_day_ago_is_an_unknown_ratio_not_an_overflow() -> None:
    """Found by the property above: a load of 1e-310 (subnormal) in the window the level
    ratio divides by overflowed with a RuntimeWarning (an error under this suite); the ratio
    is unknown, as a 0/0 is."""
    y = np.ones(60)
    y[0] = 1e-310
    # The suite turns warnings into errors: building the row is the check.
    x = build_features(y, 0.0, 60, np.array([40], dtype=np.int64),
                       np.array([1], dtype=np.int64))
    assert x.shape[0] == 1


def test_a_load_that_overflows_over_the_scale_is_an_unknown_feature_not_inf() -> None:
    """A lag, a trailing mean or yesterday's load over the scale that is not a finite number
    is unknown to the booster (NaN), never an infinite value a tree would split on as a
    real extreme. Here two loads near the float maximum overflow the running sums, the
    trailing mean is NaN, the scale falls back to its floor and the lags of those loads
    over it were +inf."""
    y = np.full(60, 0.5)
    y[30:32] = 1.7e308
    x = build_features(y, 0.0, 60, np.array([40], dtype=np.int64),
                       np.array([1], dtype=np.int64))
    assert not np.isinf(x).any()
    assert np.isnan(x[0, 1 + 9]) and np.isnan(x[0, 1 + 10])  # lags 9, 10: y[31], y[30]


def test_ramp_columns_carry_yesterdays_shape_relative_to_the_level_now() -> None:
    """On a series that is exactly the same every day, the mean daily ramp times the level
    now (the seasonal forecast column) is the target over the scale, whatever the level."""
    step, day = 600, 144
    t = np.arange(9 * day)
    y = 100 + 80 * np.sin(2 * np.pi * t / day)
    origins = np.array([8 * day + 30, 8 * day + 100], dtype=np.int64)
    leads = np.array([1, 3], dtype=np.int64)
    x = build_features(y, 0.0, step, origins, leads)
    x2 = build_features(3 * y, 0.0, step, origins, leads)
    np.testing.assert_allclose(x, x2, rtol=1e-9)  # scale-free
    # The last columns: the five ramps (level now, daily, weekly, daily x level now, weekly
    # x level now), then hour sin, hour cos, weekday and the log level.
    seasonal = x[:, -6]
    scale = feature_scale(y, step)[np.repeat(origins, 2)]
    target = y[np.repeat(origins, 2) + np.tile(leads, 2)] / scale
    # The smoothed load around the target (a 30-minute window) is within 3% of the load.
    np.testing.assert_allclose(seasonal, target, rtol=0.03)


def test_training_weights_make_the_relative_l1_loss_the_absolute_one() -> None:
    """Weight x |relative error| = |absolute error| / mean load: the booster fits what the
    forecast is judged by, so a quiet night's row counts less than the peak's."""
    rng = np.random.default_rng(3)
    y = 100 + 60 * np.sin(np.arange(3000) / 50) + rng.normal(0, 2, 3000)
    _, _, w = training_rows(y, 0.0, 60, 5)
    leads = train_leads(5)
    origins = np.repeat(np.arange(LAGS, 2999), leads.shape[0])
    origins = origins[origins + np.tile(leads, 2999 - LAGS) < 3000]  # targets in the series
    scale = feature_scale(y, 60)[origins]
    np.testing.assert_allclose(w, scale / np.abs(y).mean())
    assert w.min() < 0.6 < 1.4 < w.max()


def test_no_global_booster_without_rows_and_nothing_on_stderr(
        capfd: pytest.CaptureFixture[str]) -> None:
    """Young variants whose fit window holds no sample (their history is empty before the
    holdout) gave LightGBM an empty dataset: "[Fatal] Check failed: (num_data) > (0)" on
    stderr before the exception was caught. No rows, no booster, no message."""
    young = np.full(2000, np.nan)
    young[1990:] = 5.0
    hist = {f"v{i}": History(f"v{i}", 0.0, 60, young.copy()) for i in range(3)}
    assert fit_many_booster(hist, 5) is None
    assert fit_many(hist, 5) == {}
    assert "Fatal" not in capfd.readouterr().err


def test_a_young_variant_contributes_its_own_fit_window_to_the_global_booster() -> None:
    """Windows before a variant's first sample are not history: the global booster takes its
    rows from the fit window of what the variant has, as the variant's own selection does."""
    rng = np.random.default_rng(4)
    y = np.concatenate((np.full(4000, np.nan), 50 + rng.normal(0, 3, 2000)))
    assert fit_many_booster({"young": History("young", 0.0, 60, y)}, 5) is not None


def test_the_feature_scale_is_the_trailing_scale_of_prep() -> None:
    """`Windows.scale` reads only the indices it is asked for; it must give the values of
    `prep.trailing_scale` (gaps carried forward, idle floored) at every index."""
    rng = np.random.default_rng(5)
    y = rng.gamma(2.0, 50.0, 5000)
    y[rng.random(5000) < 0.05] = np.nan
    y[1000:1100] = np.nan  # a stretch longer than the window: the mean is carried forward
    y[2000:2500] = 0.0  # idle: the floor
    for window, floor in ((6, 0.0), (30, 2.5)):
        np.testing.assert_allclose(
            Windows(y).scale(np.arange(5000, dtype=np.int64), window, floor),
            trailing_scale(y, window, floor), rtol=1e-9)


def test_a_forecast_served_from_the_buffer_is_the_one_from_the_whole_history() -> None:
    """The buffer kept after the fit covers every feature the booster learnt from (the
    weekly ramp reads a week back): a day's buffer left the weekly and older daily ramps
    unknown in every served forecast while the holdout scored them known."""
    rng = np.random.default_rng(6)
    t = np.arange(22 * 144)
    y = 100 + 40 * np.sin(2 * np.pi * t / 144) + 20 * (t // 144 % 7 == 5) + rng.normal(0, 5,
                                                                                      t.size)
    h = History("v", 0.0, 600, y)
    model = LGBMForecaster(3).fit(h)
    full = model._paths(y, 0.0, 600, np.array([y.shape[0] - 1], dtype=np.int64), 3)[0]
    np.testing.assert_allclose(model.point(3), full, rtol=1e-12)
