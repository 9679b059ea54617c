"""Replay every series of the shared traces at two cold starts and print one table.

One configuration for all series (the defaults of `controller.replay`), never tuned per
trace. Targets (issue 8): predictive >= 99% SLO attainment on the 14-day ServeGen series at
300 s; at equal SLO predictive <= 0.70x the GPU-hours of the best seed-typical reactive
setting and <= 1.15x the oracle's. Misses are printed, not hidden.

Two figures say what the targets ask of a forecaster: "jump @ budget" (how much the load grows
over one cold start for the SLO's last 1% of requests) and, for the 14-day series at 300 s,
the hindsight-naive reference (`hindsight_naive`): the cheapest constant headroom over the
last window that reaches the predictive policy's SLO, chosen after the fact.

    python bench/replay_bench.py [--data DIR] [--forecaster auto|engine|baselines] [--quick]
                                 [--no-hindsight]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.replay import (
    PolicyOutcome,
    ReplayResult,
    ReplaySetup,
    default_fleet,
    prepare,
    run_replay,
)
from controller.replay_forecast import MIN_WINDOWS
from controller.replay_policies import HPASettings, Predictive, PredictiveSettings, ReactiveHPA
from controller.replay_sim import simulate
from forecaster.base import FloatArray, History
from forecaster.trace import read_trace

FILES = ("servegen_per_10min.csv.gz", "azure_llm_2023_per_10s.csv", "mooncake_per_10s.csv")


def _f(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def row(result: ReplayResult, cold: float, seconds: float) -> list[str]:
    p, r = result.policies["predictive"], result.policies["reactive"]
    o = result.policies["oracle"]
    iso = result.iso_slo
    ratio = iso.gpu_hours_ratio_predictive_vs_reactive if iso else None
    vs_oracle = result.vs_oracle("predictive")
    sim = result.policies["oracle"].sim
    long = sim.arrivals.shape[0] * sim.dt >= 7 * 86_400
    slo_ok = p.slo_attainment >= 0.99 or not (long and cold == 300.0)
    return [result.series, f"{cold:.0f}", f"{r.slo_attainment:.2%}",
            f"{p.slo_attainment:.2%}" + ("" if slo_ok else " ✗"),
            _f(result.vs_oracle("reactive"), ".2f"), _f(vs_oracle, ".2f")
            + ("" if vs_oracle is None or vs_oracle <= 1.15 else " ✗"),
            _f(iso.reactive_target if iso else None, ".0%"),
            _f(ratio, ".2f") + ("" if ratio is not None and ratio <= 0.70 else " ✗"),
            f"{p.utilisation:.2f}/{r.utilisation:.2f}/{o.utilisation:.2f}",
            f"{p.cold_starts}/{r.cold_starts}/{o.cold_starts}",
            _f(result.jump_at_budget, ".2f"), f"{seconds:.0f}"]


class _NaiveWithHeadroom:
    """Forecast: the last completed window (median) and `k` times it (the provisioned level)."""

    def __init__(self, k: float) -> None:
        self.k = k
        self.choices: list[tuple[float, str]] = []

    def forecast(self, history: History, horizon: int) -> dict[float, FloatArray] | None:
        y = history.values[np.isfinite(history.values)]
        if y.size < MIN_WINDOWS:
            return None  # the same warm-up as the predictive policy (the HPA serves)
        return {0.5: np.full(horizon, y[-1]), 0.99: np.full(horizon, self.k * y[-1])}


def _naive_run(setup: ReplaySetup, k: float) -> PolicyOutcome:
    settings = PredictiveSettings(provisioning_quantile=0.99, levels=(0.5, 0.99),
                                  tune_headroom=False, calibrate=False)
    every = setup.decision_every
    pred = Predictive(setup.fleet, settings, setup.windows, every * setup.dt,
                      ReactiveHPA(setup.fleet, HPASettings()), "baselines")
    pred.forecaster = _NaiveWithHeadroom(k)  # type: ignore[assignment]
    sim = simulate(setup.arrivals, setup.trace.start, setup.dt, setup.fleet, pred,
                   setup.initial_replicas, every)
    return PolicyOutcome.of("hindsight-naive", sim, setup.fleet)


def hindsight_naive(path: Path, series: str, cold: float, slo: float, steps: int = 7
                    ) -> tuple[float, PolicyOutcome] | None:
    """The cheapest naive policy reaching `slo`, its headroom chosen *after the fact*.

    The predictive policy's own pipeline (decide, nowcast, overload floor, break-even hold),
    fed the last completed window as its forecast and `k` times it as the provisioned level;
    `k` is bisected on the whole replay to the smallest that reaches `slo`. Knowing the
    best constant headroom in advance is cheating, so this is a reference, not a policy: a
    forecaster has to beat the last value to do better, and at the SLO's tail that is what
    the cost-vs-oracle target asks of it.
    """
    trace = read_trace(path, [series])[series]
    setup = prepare(trace, default_fleet(trace, cold))
    lo, hi = 1.0, 4.0
    best = _naive_run(setup, hi)
    if best.slo_attainment < slo:
        return None
    for _ in range(steps):
        mid = (lo + hi) / 2
        out = _naive_run(setup, mid)
        if out.slo_attainment >= slo:
            hi, best = mid, out
        else:
            lo = mid
    return hi, best


def _reference(refs: Table, path: Path, series: str, cold: float, res: ReplayResult) -> None:
    pred = res.policies["predictive"]
    oracle = res.policies["oracle"].gpu_hours
    ref = hindsight_naive(path, series, cold, pred.slo_attainment)
    if ref is None:
        refs.add_row(series, f"{cold:.0f}", f"{pred.slo_attainment:.2%}", "> 4", "—",
                     f"{pred.gpu_hours / oracle:.2f}", "—")
        return
    k, out = ref
    refs.add_row(series, f"{cold:.0f}", f"{pred.slo_attainment:.2%}", f"{k:.2f}",
                 f"{out.gpu_hours / oracle:.2f}", f"{pred.gpu_hours / oracle:.2f}",
                 f"{pred.gpu_hours / out.gpu_hours:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--forecaster", default="auto", choices=("auto", "engine", "baselines"))
    ap.add_argument("--quick", action="store_true", help="skip the iso-SLO sweep")
    ap.add_argument("--series", default="", help="comma-separated subset")
    ap.add_argument("--cold", default="120,300", help="comma-separated cold starts (s)")
    ap.add_argument("--no-hindsight", action="store_true",
                    help="skip the hindsight-naive reference on the 14-day series at 300 s")
    ap.add_argument("--quick-long", action="store_true",
                    help="skip the iso-SLO sweep on multi-day series at 120 s (time budget)")
    args = ap.parse_args()
    console = Console(width=210)
    table = Table(title=f"forescale replay bench (forecaster={args.forecaster})")
    for col in ("series", "cold s", "reactive SLO", "predictive SLO", "reactive/oracle",
                "predictive/oracle", "iso-SLO reactive target", "pred/reactive @ iso-SLO",
                "utilisation p/r/o", "cold starts p/r/o", "jump @ budget", "s"):
        table.add_column(col, justify="left" if col == "series" else "right")
    wanted = {s for s in args.series.split(",") if s}
    refs = Table(title="hindsight-naive reference at the predictive policy's SLO (headroom "
                       "over the last window chosen after the fact: no forecaster knows it)")
    for col in ("series", "cold s", "SLO", "headroom k", "naive/oracle", "predictive/oracle",
                "predictive/naive"):
        refs.add_column(col, justify="left" if col == "series" else "right")
    for name in FILES:
        path = Path(args.data) / name
        for series in read_trace(path):
            if wanted and series not in wanted:
                continue
            for cold in (float(c) for c in args.cold.split(",")):
                t0 = time.time()
                long = len(read_trace(path, [series])[series]) * 600 >= 7 * 86_400 \
                    and "servegen" in name
                iso = not args.quick and not (args.quick_long and long and cold < 300)
                res = run_replay(path, series, cold_start_s=cold, iso_slo=iso,
                                 forecaster=args.forecaster)
                table.add_row(*row(res, cold, time.time() - t0))
                console.print(f"{series} @ {cold:.0f}s: " + "; ".join(res.notes))
                if long and cold == 300.0 and not args.no_hindsight:
                    _reference(refs, path, series, cold, res)
    console.print(table)
    if refs.row_count:
        console.print(refs)
    console.print("✗ = target missed (predictive >= 99% SLO on 14-day series at 300 s; "
                  "<= 1.15x oracle; <= 0.70x reactive at equal SLO)")
    console.print("jump @ budget: the load growth over one cold start that the last 1% of "
                  "requests see (controller.replay.jump_at_budget); above 1.5x the issue's "
                  "own calibration expects 99% to cost several times the oracle")


if __name__ == "__main__":
    main()
