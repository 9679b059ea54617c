"""The backtest JSON contract the CLI prints."""

from __future__ import annotations

import io
import json

from rich.console import Console

from forecaster.backtest import backtest_origins, default_horizon, render_table, run_backtest
from tests.support import SHARED_DATA

DATA = SHARED_DATA
ROW_KEYS = {"name", "model", "mae", "mae_naive", "mae_window_average", "window_average_k",
            "mae_seasonal_daily", "mae_seasonal_weekly", "ratio_vs_best_baseline",
            "pinball_p90", "pinball_p90_baseline", "coverage_p90", "scored_origins",
            "fit_seconds", "predict_seconds"}
SUMMARY_KEYS = {"median_ratio_vs_best_baseline", "median_pinball_p90_ratio",
                "mean_coverage_p90"}


def test_backtest_json_shape_and_null_seasonal_baselines_on_one_hour_traces() -> None:
    calls: list[tuple[str, int, int]] = []
    result = run_backtest(DATA / "azure_llm_2023_per_10s.csv", ["azure2023-conv"], None,
                          lambda *a: calls.append(a), n_jobs=1)
    assert set(result) == {"series", "summary"}
    (row,) = result["series"]
    assert set(row) == ROW_KEYS and set(result["summary"]) == SUMMARY_KEYS
    assert row["mae_seasonal_daily"] is None and row["mae_seasonal_weekly"] is None
    # the best baseline is the better of naive and the window average (no seasonal baseline
    # fits in one hour); both are scored here, so the ratio is against a real competitor
    assert row["mae_window_average"] is not None and row["window_average_k"] >= 1
    best = min(row["mae_naive"], row["mae_window_average"])
    assert row["ratio_vs_best_baseline"] == row["mae"] / best
    # recorded naive 0.850, window average (k=6) 0.731: the window average is the one to beat
    assert row["mae_window_average"] < row["mae_naive"]
    # the row counts the origins it scored: every holdout origin of the 351 windows
    assert row["scored_origins"] == backtest_origins(351, default_horizon(10)).shape[0] > 0
    # Recorded 0.957 on this hour of 10 s windows (a short holdout, so a wide band): a p90
    # that is really the median (~0.5) or covers every window (1.0) fails.
    assert 0.85 <= row["coverage_p90"] <= 0.99, row["coverage_p90"]
    assert calls == [("azure2023-conv", 1, 1)]
    json.dumps(result, allow_nan=False)
    out = io.StringIO()
    Console(width=200, file=out).print(render_table(result))
    text = out.getvalue()
    # Absolute errors and ratios are two tables: no ratio sits among requests/s columns.
    absolute, _, ratios = text.partition("forescale backtest: ratios")
    assert text.count("azure2023-conv") == 2
    assert "MAE / best baseline" not in absolute and "cov p90" not in absolute
    header = next(line for line in ratios.splitlines() if "MAE / best baseline" in line)
    assert "naive" not in header and "seas.day" not in header
    assert f"{row['ratio_vs_best_baseline']:.2f}" in ratios


def test_default_horizon_is_thirty_minutes_capped_at_thirty_steps() -> None:
    assert (default_horizon(600), default_horizon(60), default_horizon(10)) == (3, 30, 30)
