"""`PrometheusSource` against a real Prometheus backfilled with the real traces.

The edges are tested where they happen: an empty vector, several series, NaN/Inf, stale
samples, bad PromQL on the real server; refused connections, a server that never answers,
HTTP errors and credentials on small local servers. Every server started here is stopped here.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from controller.config import BasicAuth, ConfigError, DeploymentRef, PrometheusConfig, Signals
from controller.config import VariantConfig as VC
from controller.prometheus import AmbiguousResultError, PrometheusSource
from controller.protocols import PermanentError, TemporaryError
from models.profile import VariantProfile

if TYPE_CHECKING:  # imported at run time by pytest_plugins: importing it here first would
    # stop pytest from rewriting its asserts (PytestAssertRewriteWarning)
    from tests.support.prom import BackfilledPrometheus, PrometheusFactory

pytest_plugins = ["tests.support.prom"]
pytestmark = pytest.mark.integration

END_TIME = 1_735_689_600  # where the backfill ends (tests.support.prom.END_TIME)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

DAY = 86_400
SERVEGEN_14D = ("servegen-m-large", "servegen-m-mid", "servegen-m-small")
LIVE_FIELDS = ("request_rate", "queue_depth", "running", "kv_cache_usage", "ttft_p95_s")


def variant(name: str, selector: str = "", **signals: str) -> VC:
    return VC(name=name, deployment=DeploymentRef(namespace="llm", name="vllm"),
              selector=selector, signals=Signals(**signals),
              profile=VariantProfile(capacity_rps=1.0))


MakeSource = Callable[..., PrometheusSource]


@pytest.fixture
def make_source() -> Iterator[MakeSource]:
    """Build sources (`url`, variants, PrometheusConfig fields...) and close them all after."""
    made: list[PrometheusSource] = []

    def make(url: str, *variants: VC, on_outcome: Any = None, max_points: int = 11_000,
             **cfg: Any) -> PrometheusSource:
        src = PrometheusSource(PrometheusConfig(url=url, **cfg), variants,
                               on_outcome=on_outcome, max_points_per_query=max_points)
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


# ------------------------------------------------------------------------------- history


def test_history_reads_back_trace_rates_over_14_days_in_windows(
        prometheus_backfilled: BackfilledPrometheus, make_source: MakeSource) -> None:
    calls: list[tuple[str, str, str]] = []
    assert prometheus_backfilled.end_time == END_TIME
    src = make_source(prometheus_backfilled.url, *(variant(n) for n in SERVEGEN_14D),
                      on_outcome=lambda *a: calls.append(a))
    start = END_TIME - 14 * DAY
    expected_calls: list[tuple[str, str, str]] = []
    for name in SERVEGEN_14D:
        hist = src.history(name, start, END_TIME, 60)  # 20,160 points: two query windows
        samples = prometheus_backfilled.series[name]
        assert (hist.variant, hist.start, hist.step_s, len(hist)) == (name, start, 60, 14 * 1440)
        # values[i] is rate(...[2m]) at the end of step i: the mean of the two minutes around
        # it; i = 0 is the counter's first sample, where Prometheus can only extrapolate.
        # ServeGen's 0-request windows are gaps (no samples). At the first step of a gap the
        # window still holds the two samples before it, so Prometheus extrapolates the earlier
        # minute; one step later it holds one sample and answers nothing (NaN). After a gap the
        # first window has one sample (NaN), the next two, whose minute is the whole rate: it
        # equals the mean because gaps are whole 10-minute windows (both minutes share a rate).
        earlier, later = samples.rate[1:-1], samples.rate[2:]
        expected = np.where(np.isnan(later), earlier, (earlier + later) / 2)
        np.testing.assert_allclose(hist.values[1:], expected, rtol=1e-6)  # NaN where expected
        # the gaps are really read back as gaps, and counted as such: servegen-m-mid and
        # -small have some, -large none
        outcome = "ok" if samples.present.all() else "gaps"
        assert np.isnan(hist.values).any() == (outcome == "gaps")
        assert src.outcomes[(name, "requests", outcome)] == 1
        expected_calls.append((name, "requests", outcome))
    assert [o for _, _, o in expected_calls] == ["ok", "gaps", "gaps"]
    assert calls == expected_calls


def test_history_at_trace_resolution_equals_the_trace_exactly(
        prometheus_backfilled: BackfilledPrometheus, make_source: MakeSource) -> None:
    name = "servegen-m-small"
    src = make_source(prometheus_backfilled.url, variant(name), max_points=500)
    hist = src.history(name, END_TIME - 14 * DAY, END_TIME, 600)  # 2,016 points, 5 windows
    trace_rates = prometheus_backfilled.series[name].rate[1::10]  # one per 10-minute window
    np.testing.assert_allclose(hist.values, trace_rates, rtol=1e-6)


def test_history_of_a_one_hour_10s_trace(prometheus_backfilled: BackfilledPrometheus,
                                         make_source: MakeSource) -> None:
    name = "mooncake-conversation"
    src = make_source(prometheus_backfilled.url, variant(name))
    samples = prometheus_backfilled.series[name]
    start = int(samples.times[0])
    hist = src.history(name, start, END_TIME, 60)
    per_10s = samples.rate[1:]
    expected = [per_10s[max(0, 6 * (i + 1) - 12):6 * (i + 1)].mean() for i in range(len(hist))]
    np.testing.assert_allclose(hist.values[2:], expected[2:], rtol=1e-6)


def test_history_is_on_the_requested_grid_with_missing_points_as_nan(
        prometheus_backfilled: BackfilledPrometheus, make_source: MakeSource) -> None:
    name = "servegen-m-mid"
    src = make_source(prometheus_backfilled.url, variant(name))
    start = END_TIME - 3600 + 17  # off the minute: the grid follows start, not the clock
    hist = src.history(name, start, END_TIME + 3600 + 30, 60)
    assert hist.start == start and len(hist) == 120
    assert np.isfinite(hist.values[:58]).all()
    assert np.isnan(hist.values[62:]).all()  # after the data ends, never zero
    assert src.outcomes[(name, "requests", "gaps")] == 1
    assert len(src.history(name, END_TIME, END_TIME + 30, 60)) == 0  # no full step: no query
    assert sum(src.outcomes.values()) == 1


def test_history_of_unknown_series_is_all_nan_and_counted_empty(
        prometheus_backfilled: BackfilledPrometheus, make_source: MakeSource) -> None:
    src = make_source(prometheus_backfilled.url, variant("no-such-model"))
    hist = src.history("no-such-model", END_TIME - DAY, END_TIME, 300)
    assert len(hist) == 288 and np.isnan(hist.values).all()
    assert src.outcomes == {("no-such-model", "requests", "empty"): 1}


def test_history_of_other_signals(prometheus_backfilled: BackfilledPrometheus,
                                  make_source: MakeSource) -> None:
    name = "servegen-m-large"
    src = make_source(prometheus_backfilled.url, variant(name))
    hist = src.history(name, END_TIME - DAY, END_TIME, 600, signal="queue_depth")
    samples = prometheus_backfilled.series[name]
    # a gauge is read at the end of each step: the sample at that time
    ends = np.searchsorted(samples.times, END_TIME - DAY + 600 * np.arange(1, 145))
    np.testing.assert_allclose(hist.values, samples.waiting[ends], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="unknown signal"):
        src.history(name, END_TIME - DAY, END_TIME, 600, signal="nope")


# ------------------------------------------------------------------------------- live


def test_live_signals_at_the_end_of_the_history(prometheus_backfilled: BackfilledPrometheus,
                                                make_source: MakeSource) -> None:
    name = "servegen-m-small"
    src = make_source(prometheus_backfilled.url, variant(name))
    live = src.live(name, END_TIME)
    s = prometheus_backfilled.series[name]
    assert live.ts == END_TIME
    assert live.request_rate == pytest.approx(s.rate[-1], rel=1e-6)
    assert live.queue_depth == pytest.approx(s.waiting[-1], abs=1e-9)
    assert live.running == pytest.approx(s.running[-1], rel=1e-9)
    assert live.kv_cache_usage == pytest.approx(s.kv_cache_usage[-1], rel=1e-9)
    assert live.ttft_p95_s is not None  # interpolated inside a histogram bucket: coarse
    assert 0.5 < live.ttft_p95_s / s.ttft_p95_s(-1) < 2.0
    assert live.ready_replicas is None  # not a Prometheus signal
    assert {k[2] for k in src.outcomes} == {"ok"}


def test_live_signals_older_than_stale_after_are_none(
        prometheus_backfilled: BackfilledPrometheus, make_source: MakeSource) -> None:
    name = "servegen-m-large"
    src = make_source(prometheus_backfilled.url, variant(name), stale_after_s=120)
    # 200 s after the last sample Prometheus still serves gauges (5-minute lookback)
    live = src.live(name, END_TIME + 200)
    assert all(getattr(live, f) is None for f in LIVE_FIELDS)
    for signal in ("queue_depth", "running", "kv_cache_usage"):
        assert src.outcomes[(name, signal, "stale")] == 1
    assert src.outcomes[(name, "requests", "empty")] == 1  # rate[2m] has no samples left
    fresh = src.live(name, END_TIME + 60)
    assert fresh.queue_depth is not None


def test_live_signals_of_unknown_series_are_none(prometheus_backfilled: BackfilledPrometheus,
                                                 make_source: MakeSource) -> None:
    src = make_source(prometheus_backfilled.url, variant("no-such-model"))
    live = src.live("no-such-model", END_TIME)
    assert all(getattr(live, f) is None for f in LIVE_FIELDS)
    assert {k[2] for k in src.outcomes} == {"empty"}


def test_several_series_are_an_error_naming_query_and_label_sets(
        prometheus_backfilled: BackfilledPrometheus, make_source: MakeSource) -> None:
    v = variant("fleet", selector='namespace="llm"',
                queue_depth="vllm:num_requests_waiting{$selector}")
    src = make_source(prometheus_backfilled.url, v)
    with pytest.raises(AmbiguousResultError) as err:
        src.live("fleet", END_TIME)
    msg = str(err.value)
    assert 'vllm:num_requests_waiting{namespace="llm"}' in msg
    assert "8 series" in msg and 'model_name="azure2023-code"' in msg and "3 more" in msg
    with pytest.raises(PermanentError, match="8 series"):
        src.history("fleet", END_TIME - 3600, END_TIME, 60, signal="queue_depth")
    assert src.outcomes[("fleet", "queue_depth", "several_series")] == 2


def test_nan_and_inf_samples_are_not_observed(prometheus_backfilled: BackfilledPrometheus,
                                              make_source: MakeSource) -> None:
    name = "servegen-m-small"
    v = variant(name, requests="sum(rate(vllm:request_success_total{$selector}[2m])) * 0 / 0",
                queue_depth="(sum(vllm:num_requests_waiting{$selector}) + 1) / 0")
    src = make_source(prometheus_backfilled.url, v)
    hist = src.history(name, END_TIME - 3600, END_TIME, 60)
    assert np.isnan(hist.values).all()
    assert src.outcomes[(name, "requests", "nan")] == 1
    inf_hist = src.history(name, END_TIME - 3600, END_TIME, 60, signal="queue_depth")
    assert np.isnan(inf_hist.values).all()  # History refuses Inf: not observed
    live = src.live(name, END_TIME)
    assert live.request_rate is None and live.queue_depth is None
    assert live.running is not None
    assert src.outcomes[(name, "queue_depth", "nan")] == 2


def test_bad_promql_is_permanent(prometheus_backfilled: BackfilledPrometheus,
                                 make_source: MakeSource) -> None:
    # balanced (the config refuses unbalanced PromQL itself) but invalid: "2x" is no duration,
    # so only the server can tell, and it answers bad_data
    v = variant("broken", requests="sum(rate(vllm:request_success_total{$selector}[2x]))")
    src = make_source(prometheus_backfilled.url, v)
    with pytest.raises(PermanentError, match="bad_data") as err:
        src.history("broken", END_TIME - 3600, END_TIME, 60)
    assert prometheus_backfilled.url in str(err.value) and "sum(rate(" in str(err.value)
    with pytest.raises(PermanentError, match="bad_data"):
        src.live("broken", END_TIME)
    assert src.outcomes[("broken", "requests", "permanent_error")] == 2


def test_unknown_variant_is_permanent(prometheus_backfilled: BackfilledPrometheus,
                                      make_source: MakeSource) -> None:
    src = make_source(prometheus_backfilled.url, variant("a"))
    with pytest.raises(PermanentError, match="not configured"):
        src.live("b", END_TIME)


# ------------------------------------------------------------------------------- failures


def test_server_down_is_temporary(make_source: MakeSource) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    src = make_source(url, variant("a"), timeout_s=2)
    t0 = time.monotonic()
    with pytest.raises(TemporaryError, match="cannot connect") as err:
        src.live("a", END_TIME)
    assert time.monotonic() - t0 < 2
    assert url in str(err.value) and "vllm:" in str(err.value)
    with pytest.raises(TemporaryError):
        src.history("a", END_TIME - 3600, END_TIME, 60)
    assert src.outcomes[("a", "freshness", "temporary_error")] == 1
    assert src.outcomes[("a", "requests", "temporary_error")] == 1


@contextmanager
def silent_server() -> Iterator[str]:
    """A socket that completes TCP handshakes (the kernel does) but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_slow_server_is_temporary_after_timeout(make_source: MakeSource) -> None:
    with silent_server() as url:
        src = make_source(url, variant("a"), timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(TemporaryError, match=r"no answer within timeout_s=0.3s"):
            src.history("a", END_TIME - 3600, END_TIME, 60)
        assert time.monotonic() - t0 < 2


class Recorder:
    """What a local HTTP server received, and what it should answer."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.body: dict[str, Any] = {"status": "success",
                                     "data": {"resultType": "vector", "result": []}}


@contextmanager
def recording_server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rec.headers.append(dict(self.headers.items()))
            payload = json.dumps(rec.body).encode()
            self.send_response(rec.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("status", "error_type", "kind"), [
    (503, "unavailable", TemporaryError),
    (500, "internal", TemporaryError),
    (429, "", TemporaryError),
    (422, "execution", PermanentError),
    (403, "", PermanentError),
])
def test_http_errors_map_to_temporary_or_permanent(make_source: MakeSource, status: int,
                                                   error_type: str, kind: type) -> None:
    with recording_server() as (url, rec):
        rec.status = status
        rec.body = {"status": "error", "errorType": error_type, "error": "it broke"}
        src = make_source(url, variant("a"))
        with pytest.raises(kind, match=f"HTTP {status}") as err:
            src.history("a", END_TIME - 3600, END_TIME, 60)
        assert "it broke" in str(err.value)
        if kind is PermanentError:
            assert not isinstance(err.value, TemporaryError)
        assert len(rec.headers) == 1  # no retries inside one reconcile


def test_bearer_token_from_file_is_sent_and_never_shown(make_source: MakeSource,
                                                        tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with recording_server() as (url, rec):
        src = make_source(url, variant("a"), bearer_token_file=token_file)
        live = src.live("a", END_TIME)
        assert live.request_rate is None
        assert {h["Authorization"] for h in rec.headers} == {"Bearer s3cret-token"}
        token_file.write_text("rotated")  # projected tokens rotate: read on every request
        rec.status, rec.body = 500, {"status": "error", "errorType": "internal", "error": "x"}
        with pytest.raises(TemporaryError) as err:
            src.live("a", END_TIME)
        assert rec.headers[-1]["Authorization"] == "Bearer rotated"
        assert "s3cret" not in str(err.value) and "rotated" not in str(err.value)


def test_basic_auth_password_from_env_is_sent(make_source: MakeSource,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROM_PASSWORD", "pw")
    with recording_server() as (url, rec):
        src = make_source(url, variant("a"),
                          basic_auth=BasicAuth(username="fs", password_env="PROM_PASSWORD"))
        src.history("a", END_TIME - 600, END_TIME, 60)
        assert rec.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"fs:pw").decode()


def test_missing_secret_is_refused_at_start(tmp_path: Path) -> None:
    # the config refuses a missing file at load; here it goes missing between load and start
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    config = PrometheusConfig(url="http://127.0.0.1:1", bearer_token_file=token)
    token.unlink()
    with pytest.raises(ConfigError, match=rf"^prometheus: cannot read the bearer token file "
                                          rf"{re.escape(str(token))}: No such file") as err:
        PrometheusSource(config, [variant("a")]).close()
    assert "Bearer" not in str(err.value) and "s3cret" not in str(err.value)


def test_credentials_in_the_url_are_not_shown(make_source: MakeSource) -> None:
    port = free_port()
    src = make_source(f"http://user:hunter2@127.0.0.1:{port}", variant("a"), timeout_s=1)
    with pytest.raises(TemporaryError) as err:
        src.live("a", END_TIME)
    assert "hunter2" not in str(err.value) and f"http://127.0.0.1:{port}" in str(err.value)


# ------------------------------------------------------------------------------- fixtures


@pytest.mark.slow
def test_factory_server_scrapes_a_local_endpoint(prometheus_factory: PrometheusFactory,
                                                 make_source: MakeSource) -> None:
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    # no colon in the name: prometheus_client 0.26 escapes it to '_' for Prometheus 2.42
    Gauge("fs_test_waiting", "queue", ["model_name"], registry=registry).labels("scraped").set(7)
    port = free_port()
    http_server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory(scrape_targets=[f"127.0.0.1:{port}"])
        src = make_source(prom.url, variant("scraped",
                                            queue_depth="sum(fs_test_waiting{$selector})"))
        deadline = time.monotonic() + 20
        while (depth := src.live("scraped", time.time()).queue_depth) is None:
            assert time.monotonic() < deadline, "no scraped sample after 20 s"
            time.sleep(0.5)
        assert depth == 7
    finally:
        http_server.shutdown()
        http_server.server_close()
        thread.join(timeout=5)
