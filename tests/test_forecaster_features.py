"""LightGBM features must never look ahead: perturbing data after t leaves features at t."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forecaster.models_lgbm import build_features, train_leads

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
