"""A real Prometheus for tests: backfilled with the real traces, in vLLM's metric names.

Why a real server: the PromQL forescale ships (`controller.config.Signals`) and the answers a
real Prometheus gives at the edges (empty vectors, several series, NaN, staleness, `bad_data`)
are exactly what a fake would get wrong. Prometheus starts in well under a second; the slow
part is backfilling, so blocks are built once with `promtool` and cached on disk, keyed by a
hash of the trace files, the trace reader's and this module's source and promtool's version.

What is real and what is modelled
- Load is real: `vllm:request_success_total`, `vllm:prompt_tokens_total` and
  `vllm:generation_tokens_total` accumulate the trace's per-second rates (linear within each
  trace window), so `rate()` over them gives the trace back.
- Everything that depends on a server is modelled from that load against a nominal capacity
  per series (the 95th percentile of its request rate): running requests, the waiting queue
  (a fluid queue that grows while load exceeds capacity), KV-cache usage and a time-to-first-
  token histogram (lognormal around a median that rises with utilisation and queueing). They
  have the right names, types, shapes and plausible dynamics, not measured values.

Layout: every series ends at `END_TIME` (2025-01-01T00:00:00Z). The 14-day ServeGen series
cover the 14 days before it, the one-day ones the last day, the one-hour Azure and Mooncake
traces the last hour. Each series carries `model_name="<series name>"` and `namespace="llm"`.

Register with `pytest_plugins = ["tests.support.prom"]`; fixtures: `prometheus_blocks` (session,
the cached block directory), `prometheus_backfilled` (session, a started server on those
blocks) and `prometheus_factory` (function, starts empty/custom servers, stops them all).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import pytest
import yaml
from scipy.special import ndtr

import forecaster.trace
from forecaster.trace import TraceSeries, read_trace
from tests.support import SHARED_DATA
from tests.support.net import free_port

FloatArray = npt.NDArray[np.float64]

#: Where every backfilled series ends: 2025-01-01T00:00:00Z.
END_TIME = 1_735_689_600
#: Bump when the block layout changes in a way the source hash would not catch.
FORMAT_VERSION = 1
DATA_DIR = Path(os.environ.get("FORESCALE_TEST_DATA", SHARED_DATA))
TRACE_FILES = ("servegen_per_10min.csv.gz", "azure_llm_2023_per_10s.csv", "mooncake_per_10s.csv")
NAMESPACE = "llm"
#: vLLM's `max_num_seqs` default: the ceiling of `vllm:num_requests_running` per replica.
MAX_RUNNING = 256
#: vLLM's TTFT histogram buckets (vllm/engine/metrics.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: Spread of the modelled TTFT lognormal (sigma of log seconds).
TTFT_SIGMA = 0.5
PROMETHEUS_BIN = os.environ.get("FORESCALE_PROMETHEUS", "prometheus")
PROMTOOL_BIN = os.environ.get("FORESCALE_PROMTOOL", "promtool")
_DAY = 86_400


# --------------------------------------------------------------------------------------------
# Modelled signals


@dataclass(frozen=True)
class SeriesSamples:
    """One trace series as the samples a vLLM server would have exposed, on `times`.

    `times[0]` is the series' start, `times[-1]` is `END_TIME`. `present[j]` is False where the
    trace has no data for the interval ending at `times[j]`: no sample is written there.
    Counters are cumulative; `rate` is the load of the interval ending at each sample.
    """

    name: str
    interval_s: int
    times: npt.NDArray[np.int64]
    present: npt.NDArray[np.bool_]
    capacity_rps: float
    rate: FloatArray
    requests_total: FloatArray
    prompt_tokens_total: FloatArray | None
    generation_tokens_total: FloatArray | None
    running: FloatArray
    waiting: FloatArray
    kv_cache_usage: FloatArray
    ttft_median_s: FloatArray
    ttft_buckets: FloatArray  # shape (len(times), len(TTFT_BUCKETS) + 1), cumulative, +Inf last
    ttft_sum: FloatArray

    def ttft_p95_s(self, j: int) -> float:
        """The modelled TTFT p95 at sample `j` (the lognormal's, not the histogram's)."""
        return float(self.ttft_median_s[j] * math.exp(1.6448536269514722 * TTFT_SIGMA))


def _cumulative(per_interval: FloatArray) -> FloatArray:
    """Counter values at each sample: 0 at the start, then the running sum (NaN adds 0)."""
    return np.concatenate([[0.0], np.cumsum(np.nan_to_num(per_interval, nan=0.0))])


def model_series(ts: TraceSeries, end: int = END_TIME) -> SeriesSamples:
    """Turn a trace series into vLLM samples ending at `end` (see the module docstring)."""
    window = int(ts.step_s)
    interval = 60 if window % 60 == 0 else window
    per_window = window // interval
    n_int = len(ts) * per_window
    start = end - len(ts) * window
    times = start + interval * np.arange(n_int + 1, dtype=np.int64)
    win = np.repeat(np.arange(len(ts)), per_window)
    r_int = ts.requests[win]
    valid = np.isfinite(r_int)
    present = np.concatenate([[bool(valid[0])], valid])
    rate = np.concatenate([[r_int[0]], r_int])

    finite = ts.requests[np.isfinite(ts.requests)]
    capacity = float(np.quantile(finite, 0.95)) if finite.size else 1.0
    capacity = capacity if capacity > 0 else 1.0
    util = np.nan_to_num(rate, nan=0.0) / capacity
    backlog = np.zeros(n_int + 1)
    for j in range(1, n_int + 1):
        backlog[j] = max(0.0, backlog[j - 1] + (util[j] - 1.0) * capacity * interval)
    running = MAX_RUNNING * np.minimum(util, 1.0)
    kv = np.minimum(1.0, 0.9 * util)
    median = 0.05 + 0.1 * util / (1.0 - np.minimum(util, 0.95)) + backlog / capacity

    n_req = np.nan_to_num(r_int, nan=0.0) * interval  # requests finished in each interval
    les = np.log(np.array(TTFT_BUCKETS))
    share = ndtr((les[None, :] - np.log(median[1:, None])) / TTFT_SIGMA)
    per_bucket = np.concatenate([share, np.ones((n_int, 1))], axis=1) * n_req[:, None]
    buckets = np.vstack([np.zeros((1, len(TTFT_BUCKETS) + 1)), np.cumsum(per_bucket, axis=0)])
    mean_ttft = median[1:] * math.exp(TTFT_SIGMA**2 / 2)
    ttft_sum = _cumulative(n_req * mean_ttft)

    def tokens(arr: FloatArray | None) -> FloatArray | None:
        return None if arr is None else _cumulative(arr[win] * interval)

    return SeriesSamples(
        name=ts.name, interval_s=interval, times=times, present=present, capacity_rps=capacity,
        rate=rate, requests_total=_cumulative(r_int * interval),
        prompt_tokens_total=tokens(ts.input_tokens),
        generation_tokens_total=tokens(ts.output_tokens),
        running=running, waiting=backlog, kv_cache_usage=kv, ttft_median_s=median,
        ttft_buckets=buckets, ttft_sum=ttft_sum)


def load_series(data_dir: Path = DATA_DIR) -> dict[str, SeriesSamples]:
    """Every series of the shared traces, modelled and placed to end at `END_TIME`."""
    out: dict[str, SeriesSamples] = {}
    for name in TRACE_FILES:
        for series, ts in read_trace(data_dir / name).items():
            out[series] = model_series(ts)
    return out


# --------------------------------------------------------------------------------------------
# OpenMetrics writer


def _fmt(values: FloatArray) -> list[str]:
    return [repr(v) for v in values.tolist()]


def _labels(s: SeriesSamples, extra: str = "") -> str:
    return f'model_name="{s.name}",namespace="{NAMESPACE}"{extra}'


@dataclass
class _Family:
    """One metric family's text, per series, as rows of lines aligned with `times`."""

    header: str
    rows: dict[str, npt.NDArray[np.object_]] = field(default_factory=dict)


def _scalar_family(header: str, sample: str, series: Sequence[SeriesSamples],
                   pick: Callable[[SeriesSamples], FloatArray | None],
                   extra_labels: str = "") -> _Family:
    fam = _Family(header)
    for s in series:
        values = pick(s)
        if values is None:
            continue
        prefix = f"{sample}{{{_labels(s, extra_labels)}}} "
        lines = [f"{prefix}{v} {t}\n" for v, t in zip(_fmt(values), s.times.tolist(),
                                                       strict=True)]
        rows = np.empty((len(lines), 1), dtype=object)
        rows[:, 0] = lines
        fam.rows[s.name] = rows
    return fam


def _histogram_family(series: Sequence[SeriesSamples]) -> _Family:
    name = "vllm:time_to_first_token_seconds"
    fam = _Family(f"# HELP {name} Histogram of time to first token in seconds.\n"
                  f"# TYPE {name} histogram\n")
    les = [*(repr(le) for le in TTFT_BUCKETS), "+Inf"]
    for s in series:
        lab = _labels(s)
        t = s.times.tolist()
        rows = np.empty((len(t), len(les) + 2), dtype=object)
        for b, le in enumerate(les):
            prefix = f'{name}_bucket{{{lab},le="{le}"}} '
            rows[:, b] = [f"{prefix}{v} {ti}\n" for v, ti in
                          zip(_fmt(s.ttft_buckets[:, b]), t, strict=True)]
        rows[:, -2] = [f"{name}_count{{{lab}}} {v} {ti}\n" for v, ti in
                       zip(_fmt(s.ttft_buckets[:, -1]), t, strict=True)]
        rows[:, -1] = [f"{name}_sum{{{lab}}} {v} {ti}\n" for v, ti in
                       zip(_fmt(s.ttft_sum), t, strict=True)]
        fam.rows[s.name] = rows
    return fam


def _families(series: Sequence[SeriesSamples]) -> list[_Family]:
    def counter(name: str, help_: str) -> str:
        return f"# HELP {name} {help_}\n# TYPE {name} counter\n"

    def gauge(name: str, help_: str) -> str:
        return f"# HELP {name} {help_}\n# TYPE {name} gauge\n"

    return [
        _scalar_family(counter("vllm:request_success", "Count of successfully processed "
                               "requests."), "vllm:request_success_total", series,
                       lambda s: s.requests_total, ',finished_reason="stop"'),
        _scalar_family(counter("vllm:prompt_tokens", "Number of prefill tokens processed."),
                       "vllm:prompt_tokens_total", series, lambda s: s.prompt_tokens_total),
        _scalar_family(counter("vllm:generation_tokens", "Number of generation tokens "
                               "processed."), "vllm:generation_tokens_total", series,
                       lambda s: s.generation_tokens_total),
        _scalar_family(gauge("vllm:num_requests_running", "Number of requests currently "
                             "running on GPU."), "vllm:num_requests_running", series,
                       lambda s: s.running),
        _scalar_family(gauge("vllm:num_requests_waiting", "Number of requests waiting to be "
                             "processed."), "vllm:num_requests_waiting", series,
                       lambda s: s.waiting),
        _scalar_family(gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 "
                             "percent usage."), "vllm:gpu_cache_usage_perc", series,
                       lambda s: s.kv_cache_usage),
        _histogram_family(series),
    ]


def write_openmetrics(series: Sequence[SeriesSamples], out_dir: Path) -> list[Path]:
    """Write one OpenMetrics file per UTC day (samples at the series' end go in the last day).

    One file per day because promtool re-reads a file once per 2-hour block it creates:
    small files keep that quadratic cost down and let several promtools run in parallel.
    """
    families = _families(series)
    first = min(int(s.times[0]) for s in series)
    last = max(int(s.times[-1]) for s in series)
    day0 = first - first % _DAY
    paths: list[Path] = []
    for lo in range(day0, last, _DAY):
        hi = lo + _DAY if lo + _DAY < last else last + 1
        chunks: list[str] = []
        for fam in families:
            chunks.append(fam.header)
            for s in series:
                rows = fam.rows.get(s.name)
                if rows is None:
                    continue
                a, b = np.searchsorted(s.times, [lo, hi])
                keep = np.flatnonzero(s.present[a:b]) + a
                chunks.append("".join(rows[keep].ravel().tolist()))
        chunks.append("# EOF\n")
        path = out_dir / f"day-{lo}.om"
        path.write_text("".join(chunks), encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Blocks, cached


def _cache_root() -> Path:
    env = os.environ.get("FORESCALE_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "forescale-test-blocks"


def blocks_key(data_dir: Path = DATA_DIR) -> str:
    """Hash of everything the blocks depend on: traces, the trace reader, this module, promtool.

    The reader decides which windows become samples and which are gaps (ServeGen's 0-client
    windows are NaN), so a change to it changes the blocks as surely as a change to the traces.
    """
    h = hashlib.sha256(f"v{FORMAT_VERSION} end={END_TIME}".encode())
    h.update(Path(__file__).read_bytes())
    h.update(Path(forecaster.trace.__file__).read_bytes())
    for name in TRACE_FILES:
        h.update(name.encode())
        h.update((data_dir / name).read_bytes())
    version = subprocess.run([PROMTOOL_BIN, "--version"], capture_output=True, text=True,
                             check=True, timeout=30)
    h.update((version.stdout + version.stderr).encode())
    return h.hexdigest()[:20]


def _promtool(src: Path, out: Path) -> None:
    proc = subprocess.run([PROMTOOL_BIN, "tsdb", "create-blocks-from", "openmetrics", "-q",
                           str(src), str(out)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"promtool failed on {src}: {proc.stderr.strip() or proc.stdout}")


def build_blocks(out: Path, series: Sequence[SeriesSamples] | None = None, *,
                 parallel: int = 2) -> Path:
    """Write the OpenMetrics files and turn them into TSDB blocks in `out` (no cache)."""
    series = list(load_series().values()) if series is None else list(series)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="forescale-om-") as tmp:
        files = write_openmetrics(series, Path(tmp))
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for fut in [pool.submit(_promtool, f, out) for f in files]:
                fut.result()
    return out


def cached_blocks(data_dir: Path = DATA_DIR) -> Path:
    """The backfilled blocks of the shared traces, built on first use and then reused.

    Built in a temporary sibling and renamed into place, so a crash or a concurrent build
    never leaves a half-written cache entry behind.
    """
    root = _cache_root()
    target = root / blocks_key(data_dir)
    if target.is_dir():
        os.utime(target)  # marks it used, so pruning keeps it
        return target
    root.mkdir(parents=True, exist_ok=True)
    _prune(root)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        build_blocks(tmp / "blocks", list(load_series(data_dir).values()))
        with contextlib.suppress(OSError):  # someone else finished first: keep theirs
            os.rename(tmp / "blocks", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not target.is_dir():
        raise RuntimeError(f"could not create the block cache at {target}")
    return target


def _prune(root: Path, unused_for_s: float = 2 * _DAY) -> None:
    """Delete cache entries nobody used for a while: every edit of this module makes one.

    Servers never run on the cache itself (blocks are linked into their own data dir), so
    removing an entry cannot break a running server.
    """
    cutoff = time.time() - unused_for_s
    for entry in root.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


def install_blocks(blocks: Path, data_dir: Path) -> None:
    """Put cached blocks into a server's data dir, hard-linked when possible (instant).

    Prometheus never rewrites a block's files in place (compaction writes new blocks and
    deletes old directories), so links cannot corrupt the cache.
    """
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    data_dir.mkdir(parents=True, exist_ok=True)
    for block in sorted(blocks.iterdir()):
        if block.is_dir():
            shutil.copytree(block, data_dir / block.name, copy_function=link_or_copy)


# --------------------------------------------------------------------------------------------
# Server


def _duration(seconds: float) -> str:
    """Prometheus durations take no fractions: 1.5 s is written "1500ms"."""
    return f"{round(seconds * 1000)}ms"


class PrometheusServer:
    """A throwaway Prometheus on 127.0.0.1, started on `start()`/`with`, stopped by PID.

    `scrape_targets` ("host:port") are scraped every `scrape_interval_s` under job
    `forescale`; `rule_files` are evaluated every `evaluation_interval_s`. The lifecycle API
    (`reload()`) and, on request, the remote-write receiver are enabled. Block compaction is
    disabled (max block duration 2h) so that no background rewrite competes with a test.
    """

    def __init__(self, workdir: Path, *, blocks: Path | None = None,
                 scrape_targets: Sequence[str] = (), scrape_interval_s: float = 1.0,
                 rule_files: Sequence[Path] = (), evaluation_interval_s: float = 1.0,
                 remote_write_receiver: bool = False, out_of_order_window: str | None = None,
                 extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
                 extra_args: Sequence[str] = (), ready_timeout_s: float = 30.0) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.blocks = blocks
        self.scrape_targets = list(scrape_targets)
        self.scrape_interval_s = scrape_interval_s
        self.rule_files = [Path(p) for p in rule_files]
        self.evaluation_interval_s = evaluation_interval_s
        self.remote_write_receiver = remote_write_receiver
        self.out_of_order_window = out_of_order_window
        self.extra_scrape_configs = [dict(c) for c in extra_scrape_configs]
        self.extra_args = list(extra_args)
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the Prometheus server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def config(self) -> dict[str, Any]:
        """The configuration written to `config_path` (rebuilt from the attributes)."""
        cfg: dict[str, Any] = {"global": {
            "scrape_interval": _duration(self.scrape_interval_s),
            "scrape_timeout": _duration(min(self.scrape_interval_s, 10.0)),
            "evaluation_interval": _duration(self.evaluation_interval_s)}}
        scrapes = list(self.extra_scrape_configs)
        if self.scrape_targets:
            scrapes.insert(0, {"job_name": "forescale",
                               "static_configs": [{"targets": self.scrape_targets}]})
        if scrapes:
            cfg["scrape_configs"] = scrapes
        if self.rule_files:
            cfg["rule_files"] = [str(p.resolve()) for p in self.rule_files]
        if self.out_of_order_window:
            cfg["storage"] = {"tsdb": {"out_of_order_time_window": self.out_of_order_window}}
        return cfg

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False),
                                    encoding="utf-8")

    def _command(self) -> list[str]:
        cmd = [PROMETHEUS_BIN, f"--config.file={self.config_path}",
               f"--storage.tsdb.path={self.data_dir}",
               "--storage.tsdb.retention.time=100y",
               "--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h",
               f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
               "--log.level=warn"]
        if self.remote_write_receiver:
            cmd.append("--web.enable-remote-write-receiver")
        return cmd + self.extra_args

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError("the Prometheus server is already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.blocks is not None and not self.data_dir.exists():
            install_blocks(self.blocks, self.data_dir)
        self.write_config()
        last = ""
        keep = getattr(self, "port", None)  # a restart comes back on the same address
        for attempt in range(3):  # the free port may be taken between probe and bind
            self.port = keep if keep and attempt == 0 else free_port()
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(self._command(), stdout=log,
                                              stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL)
            try:
                self._wait_ready()
                return self
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
                if "address already in use" not in last:
                    break
        raise RuntimeError(last)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"prometheus not ready after {self.ready_timeout_s}s: "
                           f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def reload(self) -> None:
        """Re-read the config (write it first with `write_config`), e.g. after new rules."""
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL after 10 s. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Fixtures


@dataclass(frozen=True)
class BackfilledPrometheus:
    """A running server holding the shared traces; `series` has the modelled samples."""

    url: str
    end_time: int
    series: Mapping[str, SeriesSamples]
    server: PrometheusServer

    @property
    def names(self) -> list[str]:
        return sorted(self.series)

    def days(self, name: str) -> float:
        s = self.series[name]
        return float(s.times[-1] - s.times[0]) / _DAY


@pytest.fixture(scope="session")
def prometheus_blocks() -> Path:
    """The cached TSDB blocks of the shared traces (built on first use, ~20 s; then ~0 s)."""
    return cached_blocks()


@pytest.fixture(scope="session")
def prometheus_backfilled(prometheus_blocks: Path,
                          tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[BackfilledPrometheus]:
    """A Prometheus holding 14 days of ServeGen and the one-hour traces, ending at END_TIME.

    Shared by the session: tests must only read from it.
    """
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus-backfilled"),
                              blocks=prometheus_blocks)
    with server:
        yield BackfilledPrometheus(server.url, END_TIME, load_series(), server)


PrometheusFactory = Callable[..., PrometheusServer]


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start servers with `prometheus_factory(**PrometheusServer kwargs)`; all stop at the end.

    Each call gets its own working directory under the test's `tmp_path`.
    """
    servers: list[PrometheusServer] = []

    def start(**kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
