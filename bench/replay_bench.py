"""Replay every series of the shared traces at two cold starts and print one table.

One configuration for all series (the defaults of `controller.replay`), never tuned per
trace. Targets (issue 8): predictive >= 99% SLO attainment on the 14-day ServeGen series at
300 s; at equal SLO predictive <= 0.70x the GPU-hours of the best seed-typical reactive
setting and <= 1.15x the oracle's. Misses are printed, not hidden.

    python bench/replay_bench.py [--data DIR] [--forecaster auto|engine|baselines] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.replay import ReplayResult, run_replay
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--forecaster", default="auto", choices=("auto", "engine", "baselines"))
    ap.add_argument("--quick", action="store_true", help="skip the iso-SLO sweep")
    ap.add_argument("--series", default="", help="comma-separated subset")
    ap.add_argument("--cold", default="120,300", help="comma-separated cold starts (s)")
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
    console.print(table)
    console.print("✗ = target missed (predictive >= 99% SLO on 14-day series at 300 s; "
                  "<= 1.15x oracle; <= 0.70x reactive at equal SLO)")
    console.print("jump @ budget: the load growth over one cold start that the last 1% of "
                  "requests see (controller.replay.jump_at_budget); above 1.5x the issue's "
                  "own calibration expects 99% to cost several times the oracle")


if __name__ == "__main__":
    main()
