"""The window-average baseline: its k is chosen without the scored part, and it counts as
the best baseline wherever one is reported (backtest CLI, trained models' scores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from forecaster.backtest import backtest_origins, calibration_origins
from forecaster.base import History
from forecaster.baselines import WINDOW_GRID, WindowAverage, choose_window, trailing_means
from forecaster.calibrated import WindowAveragePoint, future_matrix, holdout_origins
from forecaster.engine import train_all

STEP_S = 600
HORIZON = 3


def regime_change(n: int, change: int, seed: int = 0) -> np.ndarray:
    """Flat noisy load (a long trailing mean wins) up to `change`, then a random walk with
    large steps and little noise (the shortest window wins)."""
    rng = np.random.default_rng(seed)
    y = 100.0 + rng.normal(0.0, 10.0, n)
    walk = np.cumsum(rng.normal(0.0, 25.0, n - change))
    y[change:] = np.maximum(300.0 + walk + rng.normal(0.0, 1.0, n - change), 1.0)
    return y


def scored_mae(y: np.ndarray, origins: np.ndarray, k: int) -> float:
    pred = trailing_means(y, k)[origins][:, None]
    return float(np.nanmean(np.abs(future_matrix(y, origins, HORIZON) - pred)))


def write_trace(path: Path, y: np.ndarray, name: str) -> Path:
    """A trace whose load (requests per second: the count over the window) is `y`."""
    lines = ["timestamp_s,series,requests"]
    lines += [f"{i * STEP_S},{name},{v * STEP_S:.4f}" for i, v in enumerate(y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def backtest_cli(path: Path, name: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "backtest", "--data", str(path), "--series",
         name, "--horizon", str(HORIZON), "--json"],
        capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["series"]
    assert isinstance(row, dict)
    return row


def test_backtest_chooses_the_window_on_the_calibration_part_not_the_scored_part(
        tmp_path: Path) -> None:
    n = 1500
    scored = backtest_origins(n, HORIZON)
    cal = calibration_origins(n, HORIZON)
    assert cal.shape[0] > 100 and int(cal[-1]) + HORIZON <= int(scored[0])
    y = regime_change(n, change=int(scored[0]) + 1)
    on_cal = choose_window(y, cal, HORIZON)
    on_scored = min(WINDOW_GRID, key=lambda k: scored_mae(y, scored, k))
    assert (on_cal, on_scored) == (24, 2)  # the two parts disagree by construction

    row = backtest_cli(write_trace(tmp_path / "t.csv", y, "regime"), "regime")

    assert row["window_average_k"] == on_cal
    assert row["mae_window_average"] == pytest.approx(scored_mae(y, scored, on_cal), rel=1e-6)


def test_the_window_average_is_the_best_baseline_on_a_noisy_flat_series(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = 50.0 + rng.normal(0.0, 8.0, 1500)

    row = backtest_cli(write_trace(tmp_path / "flat.csv", y, "flat"), "flat")

    naive, win = row["mae_naive"], row["mae_window_average"]
    assert isinstance(naive, float) and isinstance(win, float) and isinstance(row["mae"], float)
    assert win < 0.85 * naive
    assert row["ratio_vs_best_baseline"] == pytest.approx(row["mae"] / win)


def test_a_trained_model_reports_the_window_average_as_its_best_baseline() -> None:
    rng = np.random.default_rng(2)
    hist = History("flat", 1_736_121_600.0, STEP_S, 50.0 + rng.normal(0.0, 8.0, 1200))
    m = train_all({"flat": hist}, HORIZON, (0.5, 0.9), n_jobs=1, use_global=False)["flat"]
    win = m.candidates["window_average"]["mae"]
    assert win < m.candidates["naive"]["mae"]
    assert m.scores["mae_best_baseline"] == win
    assert m.scores["window_average_k"] in WINDOW_GRID and m.scores["window_average_k"] >= 6
    assert m.scores["ratio_vs_best_baseline"] == pytest.approx(m.scores["mae"] / win)
    fc = m.forecast(None, None, HORIZON)
    assert fc.scores["mae_best_baseline"] == win  # what /forecast shows
    k = int(m.scores["window_average_k"])
    tail = History("flat", hist.end, STEP_S, np.array([80.0, 90.0]))
    m.forecast(tail, None, HORIZON)
    expect = np.concatenate((hist.values, tail.values))[-k:].mean()
    assert m.window_average_level() == pytest.approx(expect)


def test_the_selection_baseline_tunes_k_on_calibration_origins_only() -> None:
    n = 1600
    _, origins = holdout_origins(n, HORIZON)
    model = WindowAveragePoint(HORIZON)
    # The scoring rows start half-way through the holdout (`SCORE_SPLIT`).
    first_scored = int(origins[origins.shape[0] // 2])
    y = regime_change(n, change=first_scored + 1, seed=3)
    model.fit(History("regime", 0.0, STEP_S, y))
    assert model.k == 24
    assert model.scores is not None
    later = origins[origins >= first_scored]
    assert scored_mae(y, later, 2) < scored_mae(y, later, 24)  # the scored part prefers 2


def test_trailing_means_skip_missing_samples_instead_of_reading_zero() -> None:
    y = np.array([np.nan, 4.0, np.nan, 8.0, np.nan, np.nan, np.nan])
    out = trailing_means(y, 2)
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:], [4.0, 4.0, 8.0, 8.0, 8.0, 8.0])


def test_the_plain_window_average_forecasts_the_trailing_mean_with_ordered_quantiles() -> None:
    rng = np.random.default_rng(4)
    y = 20.0 + rng.normal(0.0, 2.0, 600)
    model = WindowAverage(8).fit(History("w", 0.0, 60, y))
    out = model.predict(5, [0.1, 0.5, 0.9])
    assert out[0.5][0] == pytest.approx(y[-8:].mean() + np.quantile(
        y[1:] - trailing_means(y, 8)[:-1], 0.5), rel=1e-9)
    assert (out[0.1] <= out[0.5]).all() and (out[0.5] <= out[0.9]).all()
    assert WindowAverage().fit(History("w", 0.0, 60, y)).k in WINDOW_GRID


@pytest.mark.parametrize("k", [0, -3])
def test_a_window_shorter_than_one_step_is_refused_with_its_value(k: int) -> None:
    with pytest.raises(ValueError, match=f"window k must be at least 1 step, got {k}"):
        WindowAverage(k)
    with pytest.raises(ValueError, match="window grid must hold positive step counts"):
        WindowAveragePoint(3, grid=[k, 2])
