"""Replay the shared traces through `forescale serve`'s own Service and print what it costs
against each peer and the oracle, and how fast the replay runs.

One configuration for every series: the defaults a user gets from `forescale replay --series`
(the assumed fleet, capacity = mean / 20, every config default), never tuned per trace.

For each series and cold start it prints forescale's SLO attainment, GPU-hours over the
oracle's, utilisation of the capacity paid for, cold starts, and its GPU-hours over each
reactive peer's at forescale's own SLO (each peer's target swept: the seed HPA, the HPA on
its API defaults, the KEDA-style queue scaler), never only against the weakest. Targets of
issue 15 are printed beside the figures, misses marked.

Speed (issue 16): the seconds of one 14-day, 10-minute replay with `--iso-slo` (the whole
command, peers included), and `--scale` replays N variants x D days at 1-minute steps
(copies of the minute-level NASA trace shifted by a day each) through one Service.

    python bench/replay_bench.py [--data DIR] [--series NAME ...] [--cold-starts 120,300]
                                 [--scale 10x14] [--quick] [--profile-error] [--no-series]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.replay import REACTIVE, ReplayResult, run_replay
from controller.replay.harness import config_for_series, plan, replay_plan
from forecaster.trace import read_trace

LONG = ("servegen-m-large", "servegen-m-mid", "servegen-m-small")
#: Issue 15's targets: per cold start, the SLO floor and the median GPU-hours over the oracle.
TARGETS = {300.0: (0.99, 1.30), 120.0: (0.99, 1.20)}
#: ... and the median GPU-hours over each peer at equal SLO (300 s).
PEER_TARGETS = {"hpa-seed": 0.75, "hpa-default": 0.85}


def _f(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def replay_row(res: ReplayResult, cold: float, seconds: float) -> list[str]:
    f = res.policies["forescale"]
    slo_floor = TARGETS.get(cold, (0.99, 0.0))[0]
    mark = "" if f.slo_attainment >= slo_floor else " ✗"
    cells = [res.series, f"{cold:.0f}", f"{f.slo_attainment:.2%}{mark}",
             _f(res.vs_oracle("forescale"), ".2f"), f"{f.utilisation:.0%}",
             f"{res.policies['oracle'].utilisation:.0%}", str(f.cold_starts),
             str(res.policies["oracle"].cold_starts)]
    for peer in REACTIVE:
        iso = res.iso_slo.get(peer)
        cells.append("never" if iso is None or iso.ratio is None else
                     f"{iso.ratio:.2f} (@{iso.target:.0%})")
    cells += [_f(res.jump_at_budget, ".2f"), f"{seconds:.0f}"]
    return cells


def run_series(data: Path, names: list[str], colds: list[float], console: Console
               ) -> dict[float, list[ReplayResult]]:
    table = Table(title="forescale serve, replayed (its Service on a virtual clock), assumed "
                        "fleet, SLO target 99%; peers at forescale's SLO (target swept)")
    for col in ("series", "cold s", "SLO", "GPU-h / oracle", "util", "oracle util",
                "cold starts", "oracle cold starts", *(f"/ {p} at equal SLO" for p in REACTIVE),
                "jump @ budget", "seconds"):
        table.add_column(col, justify="left" if col == "series" else "right", no_wrap=True)
    out: dict[float, list[ReplayResult]] = {c: [] for c in colds}
    for cold in colds:
        for name in names:
            t0 = time.perf_counter()
            res = run_replay(data / "servegen_per_10min.csv.gz", [name], cold_start_s=cold,
                             iso_slo=True)[0]
            seconds = time.perf_counter() - t0
            out[cold].append(res)
            table.add_row(*replay_row(res, cold, seconds))
            console.log(f"{name} at {cold:.0f} s: {seconds:.0f} s")
    console.print(table)
    return out


def summary(results: dict[float, list[ReplayResult]], console: Console) -> None:
    """The medians issue 15 sets targets on, beside the targets."""
    table = Table(title="medians over the 14-day series (issue 15 targets)")
    for col in ("cold s", "min SLO", "median / oracle", "target", *(
            f"median / {p}" for p in REACTIVE)):
        table.add_column(col, justify="right", no_wrap=True)
    for cold, rs in results.items():
        if not rs:
            continue
        slo_floor, oracle_target = TARGETS.get(cold, (0.99, float("nan")))
        vs_o = statistics.median(r.vs_oracle("forescale") or float("nan") for r in rs)
        cells = [f"{cold:.0f}", f"{min(r.policies['forescale'].slo_attainment for r in rs):.2%}"
                 + ("" if all(r.policies["forescale"].slo_attainment >= slo_floor for r in rs)
                    else " ✗"),
                 f"{vs_o:.2f}" + ("" if vs_o <= oracle_target else " ✗"),
                 f"<= {oracle_target:.2f}"]
        for peer in REACTIVE:
            ratios = [r.iso_slo[peer].ratio for r in rs if r.iso_slo[peer].ratio is not None]
            med = statistics.median(ratios) if ratios else float("nan")
            want = PEER_TARGETS.get(peer) if cold == 300.0 else None
            ok = "" if want is None or med <= want else " ✗"
            cells.append(f"{med:.2f}{ok}" + (f" (<= {want})" if want else ""))
        table.add_row(*cells)
    console.print(table)


def speed_scale(data: Path, variants: int, days: int, console: Console) -> None:
    """N variants x D days at 1-minute steps through one Service (real minute-level load:
    the NASA trace, each copy shifted by a day)."""
    nasa = read_trace(data / "nasa_http_aug1995_per_minute.csv.gz")
    base = next(iter(nasa.values()))
    n = days * 1440
    traces = {}
    for i in range(variants):
        off = (i * 1440) % max(1, base.requests.shape[0] - n)
        name = f"nasa-{i}"
        traces[name] = replace(base, name=name, requests=base.requests[off:off + n].copy(),
                               input_tokens=None, output_tokens=None, start=base.start)
    cfgs = [config_for_series(t, None, 0.99, 5.0) for t in traces.values()]
    cfg = cfgs[0].model_copy(update={"variants": [c.variants[0] for c in cfgs]})
    p = plan(cfg, traces, assumed_fleet=True)
    t0 = time.perf_counter()
    res = replay_plan(p, policies=("forescale", "oracle"))
    seconds = time.perf_counter() - t0
    slo = [r.policies["forescale"].slo_attainment for r in res]
    console.print(f"[bold]scale[/]: {variants} variants x {days} days at 60 s steps through one "
                  f"Service: {seconds:.0f} s ({seconds / variants:.1f} s per variant); "
                  f"forescale SLO {min(slo):.2%}..{max(slo):.2%}, GPU-h / oracle median "
                  f"{statistics.median(r.vs_oracle('forescale') or 0 for r in res):.2f}")


def profile_error(data: Path, name: str, cold: float, console: Console) -> None:
    """What a profile 20% wrong either way costs, with the online capacity correction on
    and off: the simulated replicas serve 0.8x / 1.2x what the profile says; the oracle sees
    the real fleet."""
    path = data / "servegen_per_10min.csv.gz"
    trace = read_trace(path, [name])[name]
    table = Table(title=f"a wrong profile ({name}, {cold:.0f} s cold start): the real "
                        "replicas serve this many times the profile's capacity")
    for col in ("real / profile", "correction", "SLO", "GPU-h / oracle", "util", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    for factor in (0.8, 1.0, 1.2):
        for on in (True, False):
            cfg = config_for_series(trace, None, 0.99, 5.0)
            v = cfg.variants[0]
            v = v.model_copy(update={"profile": v.profile.model_copy(
                update={"correct_online": on, "cold_start_s": cold})})
            t0 = time.perf_counter()
            res = run_replay(path, config=cfg.model_copy(update={"variants": [v]}),
                             policies=("forescale", "oracle"), fleet_capacity_factor=factor)[0]
            f = res.policies["forescale"]
            table.add_row(f"{factor:.1f}", "on" if on else "off", f"{f.slo_attainment:.2%}",
                          _f(res.vs_oracle("forescale"), ".2f"), f"{f.utilisation:.0%}",
                          f"{time.perf_counter() - t0:.0f}")
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--series", nargs="*", default=list(LONG))
    ap.add_argument("--cold-starts", default="300,120")
    ap.add_argument("--scale", default="", help="NxD: N variants x D days at 1 min")
    ap.add_argument("--quick", action="store_true", help="300 s and m-mid only")
    ap.add_argument("--profile-error", action="store_true",
                    help="also replay m-mid at 300 s with a profile 20%% wrong either way, "
                         "the online capacity correction on and off")
    ap.add_argument("--no-series", action="store_true", help="skip the per-series table")
    args = ap.parse_args()
    console = Console(width=240)
    colds = [float(c) for c in args.cold_starts.split(",") if c]
    names = list(args.series)
    if args.quick:
        colds, names = [300.0], ["servegen-m-mid"]
    t0 = time.perf_counter()
    if not args.no_series:
        results = run_series(args.data, names, colds, console)
        summary(results, console)
    if args.profile_error:
        profile_error(args.data, "servegen-m-mid", 300.0, console)
    if args.scale:
        v, d = (int(x) for x in args.scale.lower().split("x"))
        speed_scale(args.data, v, d, console)
    console.print(f"bench took {time.perf_counter() - t0:.0f} s on {np.__name__} "
                  "with 2 worker processes for the peers")


if __name__ == "__main__":
    main()
