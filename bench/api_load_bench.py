"""Bounded load test of the API on loopback: /forecast and /plan under concurrency.

Prints p50/p99 latency and requests/s per endpoint, with /healthz (no work at all) as the
baseline in the same run, so the ratio says what a forecast request costs beyond HTTP.
Forecasts are cached per training generation: the run also checks no request trained.

    python -m bench.api_load_bench [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.api import create_app
from tests.support.demo import frozen_demo
from tests.support.http import serve_app


def hammer(url: str, n: int, concurrency: int) -> tuple[list[float], float, int]:
    """`n` GETs of `url` from `concurrency` clients; latencies (s), wall time, error count."""
    errors = 0

    def worker(count: int) -> list[float]:
        nonlocal errors
        out = []
        with httpx.Client(timeout=30) as client:
            for _ in range(count):
                t0 = time.perf_counter()
                r = client.get(url)
                out.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1
        return out

    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = [x for chunk in pool.map(worker, per) for x in chunk]
    return lat, time.perf_counter() - t0, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    svc = frozen_demo()
    generation = svc.generation
    table = Table(title=f"API under load: {args.requests} requests, {args.concurrency} clients "
                  "(loopback, 2 cores shared with the server)")
    for col in ("endpoint", "p50 ms", "p99 ms", "req/s", "errors", "p50 vs /healthz"):
        table.add_column(col, justify="right" if col != "endpoint" else "left")
    with serve_app(create_app(svc, token=None)) as url:
        base_p50 = None
        for path in ("/healthz", "/forecast?variant=servegen-m-small",
                     "/forecast?variant=servegen-m-mid&horizon=12&quantiles=0.5,0.9,0.99",
                     "/plan"):
            httpx.get(url + path, timeout=30)  # warm the cache
            lat, wall, errs = hammer(url + path, args.requests, args.concurrency)
            p50 = statistics.median(lat) * 1000
            p99 = sorted(lat)[int(0.99 * (len(lat) - 1))] * 1000
            base_p50 = base_p50 or p50
            table.add_row(path, f"{p50:.1f}", f"{p99:.1f}", f"{len(lat) / wall:.0f}",
                          str(errs), f"{p50 / base_p50:.2f}x")
    Console(width=140).print(table)
    assert svc.generation == generation, "a request triggered training"
    print(f"training generations during the run: {svc.generation - generation} (must be 0)")


if __name__ == "__main__":
    main()
