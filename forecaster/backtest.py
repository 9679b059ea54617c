"""Rolling-origin backtest of the forecasting engine against three baselines.

Run as a service would: over the last 20% of each series, at every origin the engine
forecasts steps 1..H from the past only; it is retrained on its schedule (every hour of
trace time, or more rarely so a series sees at most MAX_RETRAINS retrains) and, between
retrains, only *updated* with the newest samples (no refit), exactly like
`TrainedModel.forecast` in production. Errors are averaged over steps 1..H and origins.

Baselines on the same origins: naive (last value), window average (mean of the last k
steps), seasonal naive daily and weekly. A seasonal baseline whose season is longer than the
history before the first origin reports null and is left out of the best baseline.
`pinball_p90_baseline` is the p90 of `baselines.Naive` (last value + empirical quantile of
its past errors).

Calibration and scored parts: the scored origins are the last 20% (`backtest_origins`).
The window average's k is chosen (`baselines.choose_window`, grid `WINDOW_GRID` bounded by
the history) on the *calibration* part (`calibration_origins`): the stretch of the same
length just before the scored part, keeping only origins whose every lead is at or before
the first scored origin. So the choice reads nothing a scored forecast is judged on; the
models, retrained from the past at each origin, see the same data and no more. A series too
short for a calibration origin reports the window average as null.

Default horizon (`default_horizon`): 30 minutes of steps, at most 30 steps — 3 steps for
10-minute data, 30 steps (5 minutes) for 10-second data.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.base import FloatArray, History
from forecaster.baselines import Naive, choose_window, trailing_means
from forecaster.calibrated import future_matrix, last_finite_values, pinball
from forecaster.engine import train_one
from forecaster.prep import steps_per
from forecaster.selection import default_factories
from forecaster.trace import read_trace

log = logging.getLogger(__name__)

EVAL_FRACTION = 0.2
MAX_RETRAINS = 8
QUANTILES = (0.5, 0.9)
Progress = Callable[[str, int, int], None]


def default_horizon(step_s: int) -> int:
    """30 minutes of steps, between 1 and 30 steps."""
    return int(min(30, max(1, round(1800 / step_s))))


def backtest_origins(n: int, horizon: int) -> np.ndarray[tuple[int], np.dtype[np.int64]]:
    """The origins scored: every step of the last `EVAL_FRACTION` of `n` that has `horizon`
    steps after it."""
    first = n - max(1, round(n * EVAL_FRACTION)) - 1
    return np.arange(max(first, 1), n - horizon, dtype=np.int64)


def calibration_origins(n: int, horizon: int) -> np.ndarray[tuple[int], np.dtype[np.int64]]:
    """The origins that tune baselines (see the module doc): before the scored part, every
    lead at or before the first scored origin, at most `EVAL_FRACTION` of `n` of them."""
    scored = backtest_origins(n, horizon)
    if scored.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    first = int(scored[0])
    lo = max(0, first - max(1, round(n * EVAL_FRACTION)))
    return np.arange(lo, first - horizon + 1, dtype=np.int64)


def window_average_mae(y: FloatArray, origins: Any, horizon: int
                       ) -> tuple[float | None, int | None]:
    """(MAE on the scored `origins`, k) of the window average whose k is chosen on the
    calibration origins; (None, None) when the series has none."""
    cal = calibration_origins(y.shape[0], horizon)
    if cal.shape[0] == 0 or origins.shape[0] == 0:
        return None, None
    k = choose_window(y, cal, horizon)
    err = np.abs(future_matrix(y, origins, horizon) - trailing_means(y, k)[origins][:, None])
    return (float(np.nanmean(err)) if np.isfinite(err).any() else None), k


def _seasonal_mae(y: FloatArray, origins: Any, horizon: int, period_s: int,
                  step_s: int) -> float | None:
    p = steps_per(period_s, step_s)
    if origins.shape[0] == 0 or int(origins[0]) + 1 < p + 1:
        return None
    k = np.arange(1, horizon + 1)
    idx = origins[:, None] + k[None, :] - p * ((k[None, :] - 1) // p + 1)
    pred = y[idx]
    err = np.abs(future_matrix(y, origins, horizon) - pred)
    return float(np.nanmean(err)) if np.isfinite(err).any() else None


def _none_if_nan(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def backtest_series(history: History, horizon: int) -> dict[str, Any]:
    """Backtest one series; returns one row of the `run_backtest` JSON."""
    y = history.values
    origins = backtest_origins(len(history), horizon)
    if origins.shape[0] == 0:
        raise ValueError(f"{history.variant}: too short to backtest at horizon {horizon}")
    every = max(steps_per(3600, history.step_s), math.ceil(origins.shape[0] / MAX_RETRAINS))
    actual = future_matrix(y, origins, horizon)
    med = np.full(actual.shape, np.nan)
    p90 = np.full(actual.shape, np.nan)
    base90 = np.full(actual.shape, np.nan)
    names: Counter[str] = Counter()
    fit_s: list[float] = []
    pred_s: list[float] = []
    factories = default_factories()
    model = None
    last_o = -1
    for i, o in enumerate(origins.tolist()):
        if model is None or i % every == 0:
            t0 = time.perf_counter()
            new = train_one(history.slice(o + 1), factories, horizon, QUANTILES, 0.9,
                            None, "")
            if model is not None:
                new.continue_from(model)  # as the service does (see `train_all`)
            model = new
            fit_s.append(time.perf_counter() - t0)
            tail = None
        else:
            tail = history.slice(o + 1, start=last_o + 1)
        t0 = time.perf_counter()
        fc = model.forecast(tail, None, horizon, QUANTILES)
        pred_s.append(time.perf_counter() - t0)
        last_o = o
        names[fc.model] += 1
        med[i], p90[i] = fc.quantiles[0.5], fc.quantiles[0.9]
        base90[i] = Naive().fit(history.slice(o + 1)).predict(horizon, [0.9])[0.9]
    naive = last_finite_values(y)[origins][:, None]
    mae_naive = float(np.nanmean(np.abs(actual - naive)))
    mae_day = _seasonal_mae(y, origins, horizon, 86_400, history.step_s)
    mae_week = _seasonal_mae(y, origins, horizon, 7 * 86_400, history.step_s)
    mae_win, win_k = window_average_mae(y, origins, horizon)
    best = min(v for v in (mae_naive, mae_win, mae_day, mae_week) if v is not None)
    mae = float(np.nanmean(np.abs(actual - med)))
    ok = np.isfinite(actual) & np.isfinite(p90)
    return {
        "name": history.variant,
        "model": names.most_common(1)[0][0],
        "mae": mae,
        "mae_naive": mae_naive,
        "mae_window_average": mae_win,
        "window_average_k": win_k,
        "mae_seasonal_daily": mae_day,
        "mae_seasonal_weekly": mae_week,
        "ratio_vs_best_baseline": _none_if_nan(mae / best if best > 0 else math.nan),
        "pinball_p90": pinball(actual, p90, 0.9),
        "pinball_p90_baseline": pinball(actual, base90, 0.9),
        "coverage_p90": float((actual[ok] <= p90[ok]).mean()) if ok.any() else None,
        "scored_origins": int(origins.shape[0]),
        "fit_seconds": float(np.mean(fit_s)),
        "predict_seconds": float(np.mean(pred_s)),
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    ratios = [r["ratio_vs_best_baseline"] for r in rows if r["ratio_vs_best_baseline"] is not None]
    pins = [r["pinball_p90"] / r["pinball_p90_baseline"] for r in rows
            if r["pinball_p90_baseline"] and math.isfinite(r["pinball_p90_baseline"])]
    covs = [r["coverage_p90"] for r in rows if r["coverage_p90"] is not None]
    return {
        "median_ratio_vs_best_baseline": statistics.median(ratios) if ratios else None,
        "median_pinball_p90_ratio": statistics.median(pins) if pins else None,
        "mean_coverage_p90": statistics.fmean(covs) if covs else None,
    }


class BacktestError(ValueError):
    """No series of the trace could be backtested (each reason is logged)."""


def _job(history: History, horizon: int | None) -> dict[str, Any] | str:
    """One series' row, or why it cannot be backtested (a short series must not stop the
    others: held-out traces mix long and short series)."""
    try:
        return backtest_series(history, horizon or default_horizon(history.step_s))
    except ValueError as exc:
        return str(exc)


def run_backtest(path: str | Path, series: list[str] | None = None, horizon: int | None = None,
                 progress: Progress | None = None, n_jobs: int = 2) -> dict[str, Any]:
    """Backtest every (or the named) series of a trace; see the module doc for the method.

    `horizon=None` uses `default_horizon` per series. `progress(series, done, total)` is
    called as each series finishes (see `rich_progress`). Returns
    `{"series": [row, ...], "summary": {...}}` with null for undefined values.
    """
    traces = read_trace(path, series)
    histories = [t.history() for t in traces.values()]
    rows: list[dict[str, Any]] = []
    if n_jobs == 1:
        results: Any = (_job(h, horizon) for h in histories)
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_job)(h, horizon) for h in histories)
    skipped: list[str] = []
    for i, (hist, row) in enumerate(zip(histories, results, strict=True)):
        if isinstance(row, str):
            log.warning("backtest: series %r skipped: %s", hist.variant, row)
            skipped.append(row)
        else:
            rows.append({k: (_none_if_nan(v) if isinstance(v, float) else v)
                         for k, v in row.items()})
        if progress is not None:
            progress(hist.variant, i + 1, len(histories))
    if not rows:
        raise BacktestError(f"{path}: no series could be backtested: {'; '.join(skipped)}")
    return {"series": rows, "summary": _summary(rows)}


def rich_progress(progress: Any, description: str = "backtest") -> Progress:
    """A `run_backtest` progress hook driving a `rich.progress.Progress` (already started)."""
    task: list[Any] = []

    def hook(name: str, done: int, total: int) -> None:
        if not task:
            task.append(progress.add_task(description, total=total))
        progress.update(task[0], completed=done, description=f"{description}: {name}")

    return hook


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def render_table(result: dict[str, Any]) -> Any:
    """The backtest result as `rich` tables: absolute errors (requests/s) in one, ratios,
    coverage and timings in the other, so no column mixes units with its neighbours."""
    from rich.console import Group
    from rich.table import Table

    absolute = Table(title="forescale backtest: mean absolute error and p90 pinball loss "
                           "(requests/s; lower is better)")
    for c in ("series", "model", "MAE", "naive", "win.avg (k)", "seas.day", "seas.week",
              "p90 pinball", "baseline p90 pinball"):
        absolute.add_column(c, justify="left" if c in ("series", "model") else "right")
    ratios = Table(title="forescale backtest: ratios (< 1 beats the best baseline), p90 "
                         "coverage, cost")
    for c in ("series", "model", "MAE / best baseline", "p90 pinball / baseline", "cov p90",
              "scored origins", "fit s", "predict ms"):
        ratios.add_column(c, justify="left" if c in ("series", "model") else "right")
    for r in result["series"]:
        pred = r["predict_seconds"]
        win = _fmt(r["mae_window_average"])
        if r["window_average_k"] is not None:
            win += f" ({r['window_average_k']})"
        absolute.add_row(r["name"], r["model"], _fmt(r["mae"]), _fmt(r["mae_naive"]), win,
                         _fmt(r["mae_seasonal_daily"]), _fmt(r["mae_seasonal_weekly"]),
                         _fmt(r["pinball_p90"]), _fmt(r["pinball_p90_baseline"]))
        pin, base = r["pinball_p90"], r["pinball_p90_baseline"]
        ratios.add_row(r["name"], r["model"], _fmt(r["ratio_vs_best_baseline"], ".2f"),
                       _fmt(pin / base if pin is not None and base else None, ".2f"),
                       _fmt(r["coverage_p90"], ".2f"), str(r["scored_origins"]),
                       _fmt(r["fit_seconds"], ".2f"),
                       _fmt(None if pred is None else pred * 1000, ".2f"))
    s = result["summary"]
    ratios.add_row("summary (median, mean coverage)", "",
                   _fmt(s["median_ratio_vs_best_baseline"], ".2f"),
                   _fmt(s["median_pinball_p90_ratio"], ".2f"),
                   _fmt(s["mean_coverage_p90"], ".2f"), "", "", "")
    return Group(absolute, ratios)
