"""Forecasting benchmark: accuracy (the backtest) and speed on the shipped real traces.

Run: python bench/forecast_bench.py [--data DIR] [--jobs 2]

1. Accuracy: `run_backtest` on every trace in the data directory, ratios vs the best
   baseline (naive, window average with k chosen on the calibration part, seasonal naive);
   and the minute-level NASA trace at the cold-start horizon (5 steps ahead).
2. How much there is to win: an in-sample linear bound per series (`linear_bound`), and at
   the cold-start horizon a non-causal floor (`noncausal_floor`: the mean of the target's
   neighbours on both sides, which no forecast can know).
3. Speed: `train_all` on 1, 10 and 100 variants of 14 days at 1-minute steps. The series are
   the real ServeGen 10-minute series interpolated to 1 minute, with copies shifted in time
   (whole hours, wrapped) and rescaled — real shapes, no invented traffic. Peak memory is the
   max RSS of this process and its workers (live ones read from /proc); predict time is
   per variant for 30 steps.
Targets (from the issue) are printed beside the measurements.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecaster.backtest import backtest_origins, default_horizon, render_table, run_backtest
from forecaster.base import History
from forecaster.engine import fallback_count, train_all
from forecaster.trace import read_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
console = Console(width=160)


def minute_series(data: Path, count: int, seed: int = 0) -> dict[str, History]:
    """`count` 14-day 1-minute series from the long ServeGen series (see module doc)."""
    trace = read_trace(data / "servegen_per_10min.csv.gz")
    bases = [t for t in trace.values() if len(t) >= 2016]
    rng = np.random.default_rng(seed)
    out: dict[str, History] = {}
    for i in range(count):
        base = bases[i % len(bases)]
        src = base.requests
        t10 = np.arange(src.shape[0]) * 10.0
        t1 = np.arange(src.shape[0] * 10, dtype=np.float64)
        y = np.interp(t1, t10, src)
        if i >= len(bases):
            y = np.roll(y, 60 * int(rng.integers(1, 24 * 7))) * float(rng.uniform(0.2, 3.0))
        out[f"{base.name}-copy{i}"] = History(f"{base.name}-copy{i}", base.start, 60, y)
    return out


def accuracy(data: Path, jobs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(p for p in data.iterdir() if ".csv" in p.name):
        t0 = time.perf_counter()
        result = run_backtest(path, None, None, None, n_jobs=jobs)
        console.print(render_table(result))
        console.print(f"{path.name}: backtest took {time.perf_counter() - t0:.1f} s")
        rows.extend(result["series"])
    return rows


#: The cold-start-horizon row: minute-level data, 5 steps (a 5-minute cold start) ahead.
COLD_START_TRACE = "nasa_http_aug1995_per_minute.csv.gz"
COLD_START_STEPS = 5


def cold_start(data: Path, jobs: int) -> list[dict[str, Any]]:
    """The backtest of the minute-level trace at the cold-start horizon (if it is there),
    each row with its non-causal floor (`noncausal_floor`)."""
    path = data / COLD_START_TRACE
    if not path.exists():
        return []
    t0 = time.perf_counter()
    result = run_backtest(path, None, COLD_START_STEPS, None, n_jobs=jobs)
    console.print(render_table(result))
    console.print(f"{path.name} at {COLD_START_STEPS} steps: backtest took "
                  f"{time.perf_counter() - t0:.1f} s")
    traces = read_trace(path)
    rows = list(result["series"])
    for r in rows:
        y = traces[r["name"]].history().values
        r["mae_noncausal_floor"] = noncausal_floor(
            y, backtest_origins(y.shape[0], COLD_START_STEPS), COLD_START_STEPS)
    return rows


#: Neighbourhood widths (steps, odd) `noncausal_floor` tries.
FLOOR_WIDTHS = (5, 9, 15, 31, 61, 121, 241)


def noncausal_floor(y: np.ndarray[Any, Any], origins: np.ndarray[Any, Any], horizon: int,
                    widths: tuple[int, ...] = FLOOR_WIDTHS) -> float:
    """MAE of an estimate no forecaster can make: the mean of each target's neighbours on
    *both* sides (the target itself left out), over the same origins and leads 1..horizon;
    the best of `widths`.

    It knows the load around the target, before and after, so it is a floor for any point
    forecast made `horizon` steps ahead: what remains is the sample's own noise around its
    local rate. If the floor is above a target ratio, the target asks for more than the
    data holds at that step.
    """
    n = y.shape[0]
    idx = origins[:, None] + 1 + np.arange(horizon)[None, :]
    ok = np.isfinite(y)
    csum = np.concatenate(([0.0], np.cumsum(np.where(ok, y, 0.0))))
    ccnt = np.concatenate(([0], np.cumsum(ok)))
    actual = np.where(idx < n, y[np.minimum(idx, n - 1)], np.nan)
    best = float("inf")
    for w in widths:
        lo, hi = np.clip(idx - w // 2, 0, n), np.clip(idx + w // 2 + 1, 0, n)
        own = np.where(np.isfinite(actual), actual, 0.0)
        cnt = ccnt[hi] - ccnt[lo] - np.isfinite(actual)
        est = (csum[hi] - csum[lo] - own) / np.maximum(cnt, 1)
        err = np.abs(actual - np.where(cnt > 0, est, np.nan))
        if np.isfinite(err).any():
            best = min(best, float(np.nanmean(err)))
    return best


def speed(data: Path, jobs: int, counts: tuple[int, ...] = (1, 10, 100)
          ) -> list[tuple[int, float, float, int, float]]:
    out = []
    for count in counts:
        hist = minute_series(data, count)
        t0 = time.perf_counter()
        # The budget grows with the fleet, so the table measures cost, not the cut-off.
        models = train_all(hist, horizon_steps=30, quantiles=(0.5, 0.9),
                           budget_s=max(120.0, 0.6 * count), n_jobs=jobs)
        train_s = time.perf_counter() - t0
        times = []
        for m in models.values():
            m.forecast(None, None, 30)
            t1 = time.perf_counter()
            m.forecast(None, None, 30)
            times.append(time.perf_counter() - t1)
        out.append((count, train_s, statistics.median(times) * 1000, fallback_count(models),
                    _peak_mb()))
        picked: dict[str, int] = {}
        for m in models.values():
            picked[m.model_name] = picked.get(m.model_name, 0) + 1
        console.print(f"{count} variants: chosen models {picked}")
    return out


def _peak_mb() -> float:
    """Peak RSS of this process and of every worker, live or reaped.

    joblib's workers outlive a call and are never waited for, so RUSAGE_CHILDREN misses
    them; their own high-water mark (VmHWM) is read from /proc where it exists.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids, *_live_workers_kb()) / 1024.0


def _live_workers_kb() -> list[int]:
    """VmHWM (kB) of the live descendants of this process (Linux /proc; empty elsewhere)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        kids = [c for c, p in parents.items() if p == pid and c not in mine]
        mine.update(kids)
        todo.extend(kids)
    out = []
    for pid in mine:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]))
        except OSError:
            continue
    return out


#: Coverage is judged only where enough origins were scored for it to mean something.
MIN_ORIGINS_FOR_COVERAGE = 200


def summary(rows: list[dict[str, Any]], cold: list[dict[str, Any]]) -> Table:
    """Figures against the issue's targets; the best baseline includes the window average."""
    table = Table(title="accuracy vs targets (all traces, default horizons; best baseline = "
                        "naive, window average or seasonal naive)")
    for c in ("metric", "value", "target"):
        table.add_column(c)
    ratios = [r["ratio_vs_best_baseline"] for r in rows if r["ratio_vs_best_baseline"]]
    pins = [r["pinball_p90"] / r["pinball_p90_baseline"] for r in rows
            if r["pinball_p90_baseline"]]
    covs = [r["coverage_p90"] for r in rows if r["coverage_p90"] is not None
            and r["scored_origins"] >= MIN_ORIGINS_FOR_COVERAGE]
    table.add_row("median MAE / best baseline", f"{statistics.median(ratios):.3f}", "<= 0.97")
    table.add_row("worst MAE / best baseline", f"{max(ratios):.3f}", "<= 1.03")
    table.add_row("median p90 pinball / naive p90", f"{statistics.median(pins):.3f}", "-")
    if covs:
        table.add_row(f"p90 coverage range (>= {MIN_ORIGINS_FOR_COVERAGE} scored origins)",
                      f"{min(covs):.2f}-{max(covs):.2f}", "0.85-0.95")
    for r in cold:
        naive = r["mae"] / r["mae_naive"] if r["mae_naive"] else None
        table.add_row(f"{r['name']} {COLD_START_STEPS} steps: MAE / best baseline "
                      f"(/ naive)", f"{r['ratio_vs_best_baseline']:.3f} "
                      f"({'-' if naive is None else format(naive, '.3f')})", "<= 0.90")
        best = r["mae"] / r["ratio_vs_best_baseline"] if r["ratio_vs_best_baseline"] else None
        floor = r.get("mae_noncausal_floor")
        if best and floor is not None and np.isfinite(floor):
            over_naive = "-" if not r["mae_naive"] else format(floor / r["mae_naive"], ".3f")
            table.add_row(f"{r['name']} {COLD_START_STEPS} steps: non-causal floor / best "
                          f"baseline (/ naive)", f"{floor / best:.3f} ({over_naive})", "-")
    return table


def linear_bound(data: Path) -> Table:
    """How much a linear model could win at best: fitted on the test origins themselves.

    For each series, an L1 (median) regression of y[o+h] on the last 12 values and, with a
    week of history, the values one day and one week before the target (and the day-ago
    neighbours) is fitted *in-sample* on the backtest's own origins and steps 1..H. That is
    cheating by design, so its MAE over naive's on the same origins is a lower bound for any
    linear forecaster (ETS, ARIMA, Holt-Winters, linear lag models): if it stays above the
    target ratio, no honest linear model reaches it there. Series with fewer than ten
    origins per coefficient are skipped (an in-sample fit there measures only overfitting).
    """
    table = Table(title="in-sample linear bound (fitted on the test origins: no honest "
                        "linear model beats it)")
    for c in ("series", "origins", "coefficients", "bound MAE / naive"):
        table.add_column(c, justify="left" if c == "series" else "right")
    for path in sorted(p for p in data.iterdir() if ".csv" in p.name):
        for name, series in read_trace(path).items():
            y = series.requests.astype(np.float64)
            n = y.shape[0]
            horizon = default_horizon(series.step_s)
            day, week = round(86_400 / series.step_s), round(7 * 86_400 / series.step_s)
            origins = backtest_origins(n, horizon)  # the backtest's own origins
            seasonal = origins.size > 0 and int(origins[0]) > week + 1
            rows, target, naive = [], [], []
            for o in origins[origins >= (week + 1 if seasonal else 11)].tolist():
                for h in range(1, horizon + 1):
                    f = [1.0, *y[o - 11:o + 1][::-1]]
                    if seasonal:
                        f += [y[o + h - day - 1], y[o + h - day], y[o + h - day + 1],
                              y[o + h - week]]
                    rows.append(f)
                    target.append(y[o + h])
                    naive.append(y[o])
            x, z, nv = np.array(rows), np.array(target), np.array(naive)
            ok = np.isfinite(x).all(axis=1) & np.isfinite(z) & np.isfinite(nv)
            x, z, nv = x[ok], z[ok], nv[ok]
            used = z.shape[0] // horizon
            if used < 10 * x.shape[1]:
                table.add_row(name, str(used), str(x.shape[1]), "skipped: too few origins")
                continue
            beta = np.linalg.lstsq(x, z, rcond=None)[0]
            for _ in range(30):  # iteratively reweighted least squares -> L1 fit
                w = np.sqrt(1.0 / np.maximum(np.abs(z - x @ beta), 1e-6))
                beta = np.linalg.lstsq(x * w[:, None], z * w, rcond=None)[0]
            ratio = float(np.mean(np.abs(z - x @ beta)) / np.mean(np.abs(z - nv)))
            table.add_row(name, str(used), str(x.shape[1]), f"{ratio:.3f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--counts", default="1,10,100",
                        help="variant counts for the speed table (e.g. 1,10,100,1000)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if not args.skip_accuracy:
        rows = accuracy(args.data, args.jobs)
        cold = cold_start(args.data, args.jobs)
        console.print(summary(rows, cold))
        console.print(linear_bound(args.data))
    if args.skip_speed:
        return
    table = Table(title="training speed: 14 days x 1-minute steps (targets: 100 variants "
                        "< 30 s, < 1 GB; predict 30 steps < 5 ms/variant)")
    for c in ("variants", "train_all s", "s per variant", "per variant vs largest",
              "predict ms/variant", "fallbacks", "peak RSS MB"):
        table.add_column(c, justify="right")
    counts = tuple(int(c) for c in args.counts.split(",") if c)
    results = speed(args.data, args.jobs, counts)
    per_last = results[-1][1] / results[-1][0]
    for count, train_s, pred_ms, n_fb, mb in results:
        table.add_row(str(count), f"{train_s:.1f}", f"{train_s / count:.3f}",
                      f"{train_s / count / per_last:.2f}", f"{pred_ms:.2f}", str(n_fb),
                      f"{mb:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
