"""Error budgets per model on recorded slices of the real traces (darts-style table).

Budgets are the holdout MAE relative to the calibrated naive forecast on the same origins.
Each is set from a recorded run (the value in its comment) plus a margin of 0.03 (3% of
naive's MAE), and held below 1.0 (at most 0.99) wherever the model is meant to beat naive;
the comments say why the few that are not stay where they are. The p90's holdout coverage
must stay within 0.04 of its recorded value: a quantile that collapses to the median (~0.5)
or widens to cover everything (1.0) fails, while the model's own small drift does not.
Recorded 2026-12 with ServeGen's missing windows read as gaps (issue 15); when they were read
as zero load, no m-small model beat naive (blend 0.97, hw 1.01, mstl 1.04, lgbm 1.01).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest

from forecaster.base import History, NotEnoughHistoryError
from forecaster.calibrated import NaivePoint, PointForecaster
from forecaster.models_lgbm import LGBMForecaster, fit_many
from forecaster.models_stats import LevelBlend, SeasonalHolt
from forecaster.trace import read_trace
from tests.support import SHARED_DATA

DATA = SHARED_DATA


@cache
def recorded(name: str) -> tuple[History, int]:
    """Two weeks of a ServeGen series at 30-minute horizon (half is the holdout, so the
    fit window is a week), or a 10 s trace at 5 minutes."""
    if name.startswith("servegen"):
        h = read_trace(DATA / "servegen_per_10min.csv.gz", [name])[name].history()
        return h, 3
    h = read_trace(DATA / "mooncake_per_10s.csv")[name].history()
    return h, 30


Make = Callable[[int], PointForecaster]
MARGIN = 0.03  # on the MAE ratio: 3% of naive's MAE
BEAT_NAIVE = 0.99  # the budget of a model meant to beat naive never reaches 1.0
COVERAGE_BAND = 0.04  # p90 coverage within this of its recorded value
#: (series, model, factory, MAE-ratio budget, recorded p90 coverage)
BUDGETS: list[tuple[str, str, Make, float, float]] = [
    # m-small: clear daily and weekly cycles; every model is meant to beat naive.
    ("servegen-m-small", "blend", lambda h: LevelBlend(h), 0.945, 0.895),  # recorded 0.915
    ("servegen-m-small", "ets_hw", lambda h: SeasonalHolt("hw", h), 0.985, 0.898),  # 0.955
    # recorded 0.982: MSTL beats naive by under 2% here, so the cap leaves 0.008 of margin.
    ("servegen-m-small", "mstl_ets", lambda h: SeasonalHolt("mstl", h), BEAT_NAIVE, 0.870),
    ("servegen-m-small", "lgbm", lambda h: LGBMForecaster(h), 0.92, 0.892),  # recorded 0.888
    # m-large is dominated by a few bursty clients with weak daily autocorrelation (see
    # shared/data/README.md): level models at best tie naive there, so their budget is "no
    # worse than naive" (1.0), not a margin under it. Recorded: blend 0.988, holt 0.979.
    ("servegen-m-large", "blend", lambda h: LevelBlend(h), 1.0, 0.926),
    ("servegen-m-large", "holt", lambda h: SeasonalHolt("none", h), 1.0, 0.928),
    # recorded 1.085 (1.098 before its rows were weighted by the load and the daily and
    # weekly ramps were features): LightGBM does NOT beat naive on m-large (9% worse;
    # selection picks another model there). The budget only stops it getting worse still.
    ("servegen-m-large", "lgbm", lambda h: LGBMForecaster(h), 1.12, 0.909),
    ("mooncake-conversation", "blend", lambda h: LevelBlend(h), 0.75, 0.926),  # rec. 0.718
    ("mooncake-conversation", "holt", lambda h: SeasonalHolt("none", h), 0.73, 0.937),  # 0.700
]


@pytest.mark.parametrize(("series", "model", "make", "budget", "coverage"), BUDGETS,
                         ids=[f"{s}-{m}" for s, m, _, _, _ in BUDGETS])
def test_model_stays_within_its_error_budget(series: str, model: str, make: Make,
                                             budget: float, coverage: float) -> None:
    history, horizon = recorded(series)
    naive = NaivePoint(horizon).fit(history)
    fitted = make(horizon).fit(history)
    assert fitted.name == model
    assert fitted.scores is not None and naive.scores is not None
    assert fitted.scores.mae / naive.scores.mae <= budget
    assert abs(fitted.scores.coverage - coverage) <= COVERAGE_BAND


def test_budgets_of_models_meant_to_beat_naive_are_below_one() -> None:
    """The table itself: only the rows whose comment says why may reach 1.0."""
    above = {(s, m) for s, m, _, b, _ in BUDGETS if b >= 1.0}
    assert above == {("servegen-m-large", "blend"), ("servegen-m-large", "holt"),
                     ("servegen-m-large", "lgbm")}
    assert all(b <= BEAT_NAIVE for s, m, _, b, _ in BUDGETS if (s, m) not in above)


def test_lgbm_refuses_a_history_of_a_few_hundred_points() -> None:
    history, horizon = recorded("mooncake-conversation")
    with pytest.raises(NotEnoughHistoryError, match="not enough history: have"):
        LGBMForecaster(horizon).fit(history)


def test_quantile_paths_are_ordered_and_non_negative() -> None:
    history, horizon = recorded("servegen-m-small")
    out = LevelBlend(horizon).fit(history).predict(horizon, [0.1, 0.5, 0.9, 0.99])
    stacked = np.vstack([out[q] for q in sorted(out)])
    assert (np.diff(stacked, axis=0) >= 0).all() and (stacked >= 0).all()


def test_update_moves_the_forecast_without_refitting() -> None:
    history, horizon = recorded("servegen-m-small")
    model = LevelBlend(horizon).fit(history.slice(900))
    alpha = model.alpha
    before = model.predict(horizon, [0.5])[0.5]
    tail = History(history.variant, history.start + 900 * history.step_s, history.step_s,
                   np.full(10, 5 * float(np.nanmax(history.values))))
    after = model.update(tail).predict(horizon, [0.5])[0.5]
    assert model.alpha == alpha
    assert after.mean() > before.mean() * 2


def test_global_model_serves_every_long_enough_variant() -> None:
    trace = read_trace(DATA / "servegen_per_10min.csv.gz")
    histories = {k: t.history() for k, t in trace.items()}
    models = fit_many(histories, horizon=3)
    assert {"servegen-m-large", "servegen-m-mid", "servegen-m-small"} <= set(models)
    assert all(m.name == "lgbm_global" for m in models.values())
    out = models["servegen-m-small"].predict(3, [0.5, 0.9])
    assert np.isfinite(out[0.9]).all()


@pytest.mark.parametrize("days", [2, 14])
def test_mstl_on_exactly_two_seasons_refuses_instead_of_crashing(days: int) -> None:
    """MSTL drops a period that is not shorter than half the series and then fails with an
    unbound local inside statsmodels (seen in replays); a fit window of exactly two days (or
    two weeks, for the weekly period) must refuse or fit on fewer periods, never crash."""
    source, _ = recorded("servegen-m-small")
    window = source.slice(days * 144)
    model = SeasonalHolt("mstl", 3)
    if days == 2:
        with pytest.raises(NotEnoughHistoryError, match="have 288, need 289"):
            model._fit_params(window.values, window.start, window.step_s)
    else:  # two weeks: the daily season only; the weekly one needs more than two cycles
        model._fit_params(window.values, window.start, window.step_s)
        assert [period for period, _ in model._season.profiles] == [86_400]


def _outage_series(seed: int = 3) -> tuple[np.ndarray, int, int]:
    """Load cycling 200..1800 with 10% multiplicative noise (so errors scale with the load
    and relative calibration is chosen), an hour-long outage (zeros), then load again."""
    rng = np.random.default_rng(seed)
    t = np.arange(3000)
    y = 1000.0 * (1 + 0.8 * np.sin(2 * np.pi * t / 240)) * rng.lognormal(0.0, 0.1, t.size)
    start, stop = 2000, 2060
    y[start:stop] = 0.0
    return y, start, stop


@pytest.mark.parametrize("make", [lambda h: NaivePoint(h, 0.99), lambda h: LevelBlend(h, 0.99)],
                         ids=["naive", "blend"])
def test_recovery_from_an_outage_does_not_set_the_upper_quantiles(make: Make) -> None:
    """Replays found a p99.9 forecast of 1e12 req/s after load came back from an idle hour:
    the recovery, divided by a scale floored at 1e-6 inside the model's short buffer, became
    a relative error of 1e9. Whether the outage is in the fit window or arrives through
    `update`, the p99.9 after recovery stays within 2.5x the median (a slow level lags)."""
    y, _, stop = _outage_series()
    fitted = make(5).fit(History("v", 0.0, 60, y[: stop + 100]))
    before = make(5).fit(History("v", 0.0, 60, y[:1990]))
    for chunk in range(1990, stop + 100, 10):
        before.update(History("v", chunk * 60.0, 60, y[chunk: chunk + 10]))
    for model in (fitted, before):
        out = model.predict(5, [0.5, 0.999])
        assert float(out[0.5][0]) > 100
        assert float((out[0.999] / out[0.5]).max()) < 2.5, model.name


@pytest.mark.parametrize("kind", ["mstl", "hw"])
def test_seasonal_models_serve_one_minute_steps(kind: str) -> None:
    """The service trains on one-minute steps: the daily season (1,440 phases) is fitted on
    10-minute means and interpolated back, instead of the model refusing to fit at all."""
    rng = np.random.default_rng(0)
    t = np.arange(10 * 1440)
    truth = 50 * np.sin(2 * np.pi * t / 1440)
    y = 100 + truth + rng.normal(0, 3, t.size)
    model = SeasonalHolt(kind, 30).fit(History("v", 0.0, 60, y))
    period_s, profile = model._season.profiles[0]
    assert period_s == 86_400 and profile.shape == (1440,)
    assert np.corrcoef(profile, truth[:1440])[0, 1] > 0.99
    assert model.scores is not None and model.scores.mae < 5.0  # noise sd 3: little more
