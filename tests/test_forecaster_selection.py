"""The selection guard: nothing worse than the best baseline on the selection window wins."""

from __future__ import annotations

import numpy as np

from forecaster.base import FloatArray, History
from forecaster.calibrated import IntArray, NaivePoint, PointForecaster, dm_upper
from forecaster.combination import Combination
from forecaster.selection import choose, combinations, select


def random_walk(n: int = 2000, seed: int = 0) -> History:
    rng = np.random.default_rng(seed)
    y = 500 + np.cumsum(rng.normal(0, 5, n))
    return History(f"rw{seed}", 1_736_121_600.0, 60, np.maximum(y, 1.0))


class Biased(PointForecaster):
    """The last value plus a fixed bias: strictly worse than naive on a random walk."""

    name = "biased"

    def __init__(self, horizon: int, bias: float) -> None:
        super().__init__(horizon)
        self.bias = bias

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        del y, start, step_s

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        return np.repeat(y[origins][:, None] + self.bias, horizon, axis=1)


class Oracle(PointForecaster):
    """Reads the future (only possible in a test): far better than naive."""

    name = "oracle"

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        del y, start, step_s

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        idx = np.minimum(origins[:, None] + 1 + np.arange(horizon)[None, :], y.shape[0] - 1)
        return np.asarray(y[idx], dtype=np.float64)


def test_a_candidate_worse_than_naive_on_the_selection_window_is_never_selected() -> None:
    hist = random_walk()
    naive = NaivePoint(6).fit(hist)
    for bias in (0.5, 2.0, 10.0):
        worse = Biased(6, bias).fit(hist)
        assert worse.scores is not None and naive.scores is not None
        assert worse.scores.mae > naive.scores.mae
        assert choose([naive, worse]) is naive


def test_a_tiny_win_within_noise_does_not_displace_the_baseline() -> None:
    hist = random_walk(seed=3)
    naive = NaivePoint(6).fit(hist)
    same = Biased(6, 0.0).fit(hist)
    assert choose([naive, same]) is naive


def test_a_clearly_better_candidate_is_selected() -> None:
    hist = random_walk(seed=1)
    naive = NaivePoint(6).fit(hist)
    oracle = Oracle(6).fit(hist)
    assert choose([naive, oracle]) is oracle


def test_select_serves_the_baseline_with_its_calibrated_quantiles() -> None:
    hist = random_walk(seed=2)
    sel = select(hist, [lambda h, q: Biased(h, 5.0)], 6)
    assert sel.model is not None and sel.model.name == "naive"
    out = sel.model.predict(6, [0.5, 0.9])
    assert (out[0.9] > out[0.5]).all()


def test_dm_upper_is_negative_only_for_a_consistent_win() -> None:
    rng = np.random.default_rng(0)
    assert dm_upper(-1.0 + rng.normal(0, 0.1, 400), lag=5) < 0
    assert dm_upper(rng.normal(0, 1.0, 400), lag=5) > 0
    assert dm_upper(np.array([-1.0, -1.0]), lag=1) == np.inf


def test_combination_averages_its_members_and_forecasts_from_new_data() -> None:
    hist = random_walk(seed=4)
    members: list[PointForecaster] = [NaivePoint(6).fit(hist), Biased(6, 4.0).fit(hist)]
    combo = combinations(members)
    assert len(combo) == 1 and isinstance(combo[0], Combination)
    c = combo[0]
    expect = np.mean([m.point(6) for m in members], axis=0)
    np.testing.assert_allclose(c.point(6), expect)
    c.release()
    tail = History(hist.variant, hist.end, hist.step_s, np.full(5, 2000.0))
    assert c.update(tail).predict(6, [0.5])[0.5][0] > 1500


def test_quantiles_widen_online_when_new_errors_are_larger() -> None:
    hist = random_walk(seed=5)
    naive = NaivePoint(6).fit(hist)
    before = naive.predict(6, [0.5, 0.9])
    rng = np.random.default_rng(9)
    last = float(hist.values[-1])
    wild = np.maximum(last + np.cumsum(rng.normal(0, 60, 300)), 1.0)
    for i in range(0, 300, 5):  # as the service does: a few new samples per forecast
        naive.update(History(hist.variant, hist.end + i * hist.step_s, hist.step_s,
                             wild[i:i + 5]))
    after = naive.predict(6, [0.5, 0.9])
    assert (after[0.9] - after[0.5]).mean() > 1.5 * (before[0.9] - before[0.5]).mean()
