"""Bounded load test of the API on loopback, and a memory soak.

Default run, two parts:
1. Each endpoint alone under `--concurrency` clients: p50/p99 latency and requests/s, with
   /healthz (no work at all) as the baseline in the same run.
2. `/forecast.png` for the three demo variants under `--png-clients` clients (32) while one
   client probes `/healthz` every 50 ms: the picture's p50 and the probe's p95 under that
   load (a kubelet's liveness probe fails at 1 s by default). `--new-picture-every S` moves
   the service clock one forecast step every S seconds, so pictures must be redrawn (cache
   misses) instead of served from the cache.

`--soak N`: N mixed requests (forecasts of varied horizons and quantiles, pictures, plan,
decisions, metrics) after a warm-up of `--warmup` requests, printing this process's RSS (the
server runs in it) after the warm-up, every N/5 requests and at the end; exits 1 if it grew
by more than `--rss-bound-mb`. `--tracemalloc` prints the allocation sites that grew most.

    python -m bench.api_load_bench [--requests 2000] [--concurrency 16] [--png-clients 32]
    python -m bench.api_load_bench --soak 2000 [--tracemalloc]

Forecasts are cached per training generation: the run also checks no request trained.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.api import create_app
from controller.service import Service
from tests.support.demo import frozen_demo
from tests.support.http import serve_app

VARIANTS = ("servegen-m-small", "servegen-m-mid", "servegen-m-large")


def hammer(url: str, n: int, concurrency: int,
           paths: Callable[[int], str] | None = None) -> tuple[list[float], float, dict[int, int]]:
    """`n` GETs from `concurrency` clients; latencies (s) of the 200s, wall time, and the count
    of each other status (0 for a transport error)."""
    others: dict[int, int] = {}
    lock = threading.Lock()

    def worker(first: int, count: int) -> list[float]:
        out = []
        with httpx.Client(timeout=120) as client:
            for i in range(first, first + count):
                t0 = time.perf_counter()
                try:
                    status = client.get(url + (paths(i) if paths else "")).status_code
                except httpx.TransportError:
                    status = 0
                if status == 200:
                    out.append(time.perf_counter() - t0)
                else:
                    with lock:
                        others[status] = others.get(status, 0) + 1
        return out

    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    starts = [sum(per[:i]) for i in range(concurrency)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = [x for chunk in pool.map(worker, starts, per) for x in chunk]
    return lat, time.perf_counter() - t0, others


def pct(lat: list[float], q: float) -> float:
    """The q-quantile of latencies, in ms (nan when there are none)."""
    if not lat:
        return float("nan")
    return sorted(lat)[int(q * (len(lat) - 1))] * 1000


def endpoints_table(url: str, requests: int, concurrency: int) -> Table:
    table = Table(title=f"Each endpoint alone: {requests} requests, {concurrency} clients "
                  "(loopback, 2 cores shared with the server)")
    for col in ("endpoint", "p50 ms", "p99 ms", "req/s", "non-200", "p50 vs /healthz"):
        table.add_column(col, justify="right" if col != "endpoint" else "left")
    base_p50 = None
    for path in ("/healthz", "/forecast?variant=servegen-m-small", "/plan"):
        httpx.get(url + path, timeout=60)  # warm the cache
        lat, wall, others = hammer(url + path, requests, concurrency)
        p50 = pct(lat, 0.5)
        base_p50 = base_p50 or p50
        table.add_row(path, f"{p50:.1f}", f"{pct(lat, 0.99):.1f}", f"{len(lat) / wall:.0f}",
                      str(others or 0), f"{p50 / base_p50:.2f}x")
    return table


def advance_clock(svc: Service, every_s: float, stop: threading.Event) -> None:
    """Move the service's (frozen) clock one forecast step every `every_s` seconds."""
    step = svc.config.prometheus.step_s
    start = svc.clock()
    k = 0
    while not stop.wait(every_s):
        k += 1
        fixed = start + k * step
        svc.clock = lambda fixed=fixed: fixed  # type: ignore[misc]


def png_under_load(url: str, svc: Service, requests: int, clients: int,
                   new_every_s: float | None) -> Table:
    probe: list[float] = []
    stop = threading.Event()

    def probe_healthz() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                client.get(url + "/healthz")
                probe.append(time.perf_counter() - t0)
                stop.wait(0.05)

    threads = [threading.Thread(target=probe_healthz, daemon=True)]
    if new_every_s:
        threads.append(threading.Thread(target=advance_clock, args=(svc, new_every_s, stop),
                                        daemon=True))
    rss_before = rss_mb()
    for t in threads:
        t.start()
    lat, _, others = hammer(url, requests, clients,
                               lambda i: f"/forecast.png?variant={VARIANTS[i % 3]}")
    stop.set()
    for t in threads:
        t.join(timeout=60)
    title = (f"/forecast.png under {clients} clients ({requests} requests, 3 variants"
             + (f", a new forecast step every {new_every_s:g} s" if new_every_s else "")
             + f") with /healthz probed every 50 ms; RSS {rss_before:.0f} -> {rss_mb():.0f} MB")
    table = Table(title=title)
    for col in ("what", "p50 ms", "p95 ms", "p99 ms", "count", "non-200"):
        table.add_column(col, justify="right" if col != "what" else "left")
    table.add_row("/forecast.png", f"{pct(lat, 0.5):.0f}", f"{pct(lat, 0.95):.0f}",
                  f"{pct(lat, 0.99):.0f}", str(len(lat)), str(others or 0))
    table.add_row("/healthz (probe)", f"{pct(probe, 0.5):.1f}", f"{pct(probe, 0.95):.1f}",
                  f"{pct(probe, 0.99):.1f}", str(len(probe)), "")
    return table


def rss_mb() -> float:
    """This process's resident set size (the server runs in it), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


SOAK_PATHS = (
    lambda i: f"/forecast?variant={VARIANTS[i % 3]}&horizon_steps={1 + i % 24}"
              f"&quantiles=0.5,0.{9 - i % 3}",
    lambda i: f"/forecast.png?variant={VARIANTS[i % 3]}",
    lambda i: "/plan",
    lambda i: f"/decisions?limit={1 + i % 50}",
    lambda i: "/metrics",
)


def soak(url: str, n: int, warmup: int, bound_mb: float, trace: bool,
         out: Console) -> bool:
    def path(i: int) -> str:
        return SOAK_PATHS[i % len(SOAK_PATHS)](i // len(SOAK_PATHS))

    hammer(url, warmup, 8, path)
    if trace:
        tracemalloc.start(15)
        before = tracemalloc.take_snapshot()
    base = rss_mb()
    out.print(f"RSS after warm-up ({warmup} requests): {base:.0f} MB")
    chunk = max(1, n // 5)
    done = 0
    while done < n:
        count = min(chunk, n - done)
        _, _, others = hammer(url, count, 8, lambda i, d=done: path(warmup + d + i))
        done += count
        out.print(f"RSS after {done} requests: {rss_mb():.0f} MB"
                  + (f" (non-200: {others})" if others else ""))
    grew = rss_mb() - base
    if trace:
        top = tracemalloc.take_snapshot().compare_to(before, "traceback")[:5]
        for stat in top:
            out.print(f"+{stat.size_diff / 1e6:.1f} MB in {stat.count_diff:+d} blocks at",
                      highlight=False)
            for line in stat.traceback.format()[-6:]:
                out.print("    " + line, highlight=False)
    ok = grew <= bound_mb
    out.print(f"RSS grew {grew:+.0f} MB over {n} requests after warm-up (bound "
              f"{bound_mb:g} MB): {'flat' if ok else 'GROWING'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--png-clients", type=int, default=32)
    ap.add_argument("--png-requests", type=int, default=320)
    ap.add_argument("--new-picture-every", type=float, default=None, metavar="S")
    ap.add_argument("--soak", type=int, default=0, metavar="N")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--rss-bound-mb", type=float, default=25.0)
    ap.add_argument("--tracemalloc", action="store_true")
    args = ap.parse_args()
    out = Console(width=140)
    svc = frozen_demo()
    generation = svc.generation
    ok = True
    with serve_app(create_app(svc, token=None)) as url:
        if args.soak:
            ok = soak(url, args.soak, args.warmup, args.rss_bound_mb, args.tracemalloc, out)
        else:
            out.print(endpoints_table(url, args.requests, args.concurrency))
            out.print(png_under_load(url, svc, args.png_requests, args.png_clients,
                                     args.new_picture_every))
    assert svc.generation == generation, "a request triggered training"
    out.print(f"training generations during the run: {svc.generation - generation} (must be 0)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
