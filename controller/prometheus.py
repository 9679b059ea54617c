"""Prometheus as a `MetricsSource`: request-rate history for training, live signals for the floor.

Every answer that is not one clean number is an explicit, counted and logged outcome, never a
silent zero (as in KEDA's Prometheus scaler): an empty result is "not observed" (NaN in a
history, None in live signals); several series where one was expected is a configuration
error naming the query and the label sets (summing them silently would double count); NaN
and Inf samples are "not observed"; a live value whose newest input sample is older than
`stale_after_s` is "not observed" (Prometheus would otherwise serve it for 5 minutes).

Errors follow the two kinds of `controller.protocols`: an unreachable, slow or overloaded
server (connection refused, timeout, 5xx, 429) is a `TemporaryError` and the next reconcile
retries; a query Prometheus refuses (400 `bad_data`, 422) or credentials it rejects
(401/403) is a `PermanentError`, because asking again will not help. Messages name the URL
(without credentials) and the query; tokens and passwords are never logged or put in one.

Each query result is reported as `(variant, signal, outcome)` to `outcomes` (a Counter) and to
the optional `on_outcome` hook, so the controller can export them as metrics.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from controller.config import ConfigError, PrometheusConfig, VariantConfig
from controller.protocols import LiveSignals, PermanentError, TemporaryError
from forecaster.base import History

log = logging.getLogger(__name__)

Outcome = Literal["ok", "gaps", "empty", "nan", "stale", "several_series",
                  "temporary_error", "permanent_error"]
#: Called once per query result with `(variant, signal, outcome)`.
OutcomeHook = Callable[[str, str, Outcome], None]

#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS_PER_QUERY: Final = 11_000
#: `LiveSignals` field -> `Signals` field that feeds it.
LIVE_SIGNALS: Final[Mapping[str, str]] = {
    "request_rate": "requests",
    "queue_depth": "queue_depth",
    "running": "running",
    "kv_cache_usage": "kv_cache_usage",
    "ttft_p95_s": "ttft_p95",
}
_SHOWN_LABEL_SETS: Final = 5
# A vector selector `name{matchers}`; matcher values may hold braces inside quotes.
_SELECTOR_RE: Final = re.compile(
    r"""([A-Za-z_:][A-Za-z0-9_:]*)\s*\{((?:[^{}"'`]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*)\}""")


class AmbiguousResultError(PermanentError):
    """A query returned several series where one was expected: the PromQL must aggregate."""


class _HTTPError(Exception):
    """A non-2xx answer, raised from the session's response hook with Prometheus' own error."""

    def __init__(self, status: int, error_type: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {error_type}: {detail}".strip())
        self.status = status
        self.error_type = error_type
        self.detail = detail


def _raise_for_status(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Turn an HTTP error into `_HTTPError` carrying Prometheus' `errorType` and `error`.

    The client library only gives a message with the raw body; parsing that string to tell
    `bad_data` from an overloaded server would be fragile, so the answer is read here.
    """
    if response.status_code < 400:
        return
    error_type, detail = "", response.text[:300]
    try:
        body = response.json()
        if isinstance(body, dict):
            error_type = str(body.get("errorType", ""))
            detail = str(body.get("error", detail))
    except ValueError:
        pass
    raise _HTTPError(response.status_code, error_type, detail)


def _redact(url: str) -> str:
    """The URL without user:password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _read_secret(path: Path | None, env: str | None, what: str) -> str:
    """The secret from its file or env var; errors name the source, never the value."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TemporaryError(f"cannot read the {what} file {path}: "
                                 f"{exc.strerror or exc}") from None
        source = f"file {path}"
    elif env is not None:
        value = os.environ.get(env, "").strip()
        source = f"env var {env}"
    else:
        raise ConfigError(f"no source configured for the {what}")
    if not value:
        raise TemporaryError(f"the {what} in {source} is empty")
    return value


class _BearerAuth(requests.auth.AuthBase):
    """Bearer token read on every request, so a rotated token file is picked up."""

    def __init__(self, path: Path | None, env: str | None) -> None:
        self._path = path
        self._env = env

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = _read_secret(self._path, self._env, "bearer token")
        r.headers["Authorization"] = f"Bearer {token}"
        return r


class _BasicAuth(requests.auth.AuthBase):
    """HTTP basic auth with the password read on every request (rotation, as above)."""

    def __init__(self, username: str, path: Path | None, env: str | None) -> None:
        self._username = username
        self._path = path
        self._env = env

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        password = _read_secret(self._path, self._env, "basic-auth password")
        raw = f"{self._username}:{password}".encode()
        r.headers["Authorization"] = f"Basic {base64.b64encode(raw).decode('ascii')}"
        return r


def _make_auth(config: PrometheusConfig) -> requests.auth.AuthBase | None:
    """The configured auth, checked once at start so a missing secret fails early."""
    bearer = config.bearer_token_file is not None or config.bearer_token_env is not None
    if bearer and config.basic_auth is not None:
        raise ConfigError("prometheus: configure either a bearer token or basic_auth, not both")
    auth: requests.auth.AuthBase | None = None
    if bearer:
        if config.bearer_token_file is not None and config.bearer_token_env is not None:
            raise ConfigError("prometheus: set bearer_token_file or bearer_token_env, not both")
        auth = _BearerAuth(config.bearer_token_file, config.bearer_token_env)
    elif config.basic_auth is not None:
        ba = config.basic_auth
        if (ba.password_file is None) == (ba.password_env is None):
            raise ConfigError("prometheus.basic_auth: set exactly one of password_file or "
                              "password_env")
        auth = _BasicAuth(ba.username, ba.password_file, ba.password_env)
    if auth is not None:
        try:
            auth(requests.Request("GET", config.url).prepare())
        except TemporaryError as exc:
            raise ConfigError(f"prometheus: {exc}") from None
    return auth


def _number(raw: Any) -> float:
    """A sample value as float; NaN and ±Inf both become NaN (History refuses Inf)."""
    value = float(raw)
    return value if math.isfinite(value) else math.nan


class PrometheusSource:
    """Reads history and live signals of configured variants from one Prometheus server.

    `max_points_per_query` splits long ranges (Prometheus allows 11,000 points per series);
    `session` lets tests or callers bring their own `requests.Session`.
    """

    def __init__(self, config: PrometheusConfig, variants: Iterable[VariantConfig], *,
                 on_outcome: OutcomeHook | None = None,
                 max_points_per_query: int = MAX_POINTS_PER_QUERY,
                 session: requests.Session | None = None) -> None:
        if not 2 <= max_points_per_query <= MAX_POINTS_PER_QUERY:
            raise ValueError(f"max_points_per_query must be in [2, {MAX_POINTS_PER_QUERY}], "
                             f"got {max_points_per_query}")
        self.config = config
        self.variants: dict[str, VariantConfig] = {v.name: v for v in variants}
        self.outcomes: Counter[tuple[str, str, Outcome]] = Counter()
        self._on_outcome = on_outcome
        self._max_points = max_points_per_query
        self._url = config.url.rstrip("/")
        self._shown_url = _redact(self._url)
        self._timeout = config.timeout_s
        # Prometheus stops evaluating after this (durations take no fractions: "1500ms")
        self._server_timeout = f"{max(1, round(config.timeout_s * 1000))}ms"
        sess = session if session is not None else requests.Session()
        if config.ca_file is not None:
            sess.verify = str(config.ca_file)
        if config.insecure_skip_verify:
            sess.verify = False
            log.warning("prometheus: TLS certificate verification is disabled for %s",
                        self._shown_url)
        sess.hooks["response"].append(_raise_for_status)
        # One quick retry on connect only: a refused connection fails fast, while retrying
        # reads would multiply timeout_s; the reconcile loop is the retry for everything else.
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, redirect=3,
                      backoff_factor=0.0, raise_on_status=False)
        self._client = PrometheusConnect(url=self._url, retry=retry, auth=_make_auth(config),
                                         session=sess, timeout=config.timeout_s)

    def close(self) -> None:
        """Release pooled connections."""
        self._client.close()

    # ---------------------------------------------------------------- MetricsSource protocol

    def history(self, variant: str, start: float, end: float, step_s: int,
                signal: str = "requests") -> History:
        """`signal` of `variant` on the grid `start + i*step_s` for every full step before `end`.

        `values[i]` is the query evaluated at the *end* of its step (`start + (i+1)*step_s`),
        so that a `rate(...[w])` template looks back over that step rather than the one
        before (it is the step's exact mean when `w == step_s`; a shorter `w` samples the
        step's end, a longer one smooths across steps) and no point is evaluated after `end`.
        Points Prometheus has no answer for are NaN. A range shorter than a step is empty.
        """
        cfg = self._variant(variant)
        query = self._query(cfg, signal)
        if step_s <= 0 or end < start:
            raise ValueError(f"need step_s > 0 and end >= start, got step_s={step_s}, "
                             f"[{start}, {end})")
        n = int((end - start) // step_s)
        values = np.full(n, np.nan)
        if n == 0:
            return History(variant, float(start), int(step_s), values)
        first_eval = start + step_s
        saw_nan = False
        for lo in range(0, n, self._max_points):
            hi = min(n, lo + self._max_points)
            result = self._call(variant, signal, query, partial(
                self._client.custom_query_range, query, _dt(first_eval + lo * step_s),
                _dt(first_eval + (hi - 1) * step_s), step=str(step_s),
                params={"timeout": self._server_timeout}))
            series = self._single(variant, signal, query, result)
            if series is None:
                continue
            for ts, raw in series.get("values", []):
                idx = round((float(ts) - first_eval) / step_s)
                if 0 <= idx < n:  # Prometheus leaves missing points out: NaN here was sent
                    values[idx] = _number(raw)
                    saw_nan = saw_nan or math.isnan(values[idx])
        valid = int(np.isfinite(values).sum())
        outcome: Outcome = ("empty" if valid == 0 and not saw_nan else "nan" if saw_nan
                            else "gaps" if valid < n else "ok")
        self._record(variant, signal, outcome,
                     f"{valid}/{n} points" if outcome != "empty" else "no samples", query)
        return History(variant, float(start), int(step_s), values)

    def live(self, variant: str, now: float) -> LiveSignals:
        """The variant's instant signals at `now`; unobserved, NaN or stale ones are None."""
        cfg = self._variant(variant)
        queries = {field: self._query(cfg, sig) for field, sig in LIVE_SIGNALS.items()}
        freshness = self._freshness(variant, queries.values(), now)
        got = {field: self._instant(variant, LIVE_SIGNALS[field], query, now, freshness)
               for field, query in queries.items()}
        return LiveSignals(ts=now, request_rate=got["request_rate"],
                           queue_depth=got["queue_depth"], running=got["running"],
                           kv_cache_usage=got["kv_cache_usage"], ttft_p95_s=got["ttft_p95_s"])

    # ---------------------------------------------------------------- internals

    def _variant(self, name: str) -> VariantConfig:
        try:
            return self.variants[name]
        except KeyError:
            raise PermanentError(f"variant {name!r} is not configured for Prometheus; known: "
                                 f"{sorted(self.variants)}") from None

    @staticmethod
    def _query(cfg: VariantConfig, signal: str) -> str:
        template = getattr(cfg.signals, signal, None)
        if not isinstance(template, str):
            raise ValueError(f"unknown signal {signal!r}; known: "
                             f"{sorted(type(cfg.signals).model_fields)}")
        return template.replace("$selector", cfg.label_selector)

    def _instant(self, variant: str, signal: str, query: str, now: float,
                 freshness: Mapping[str, float | None]) -> float | None:
        result = self._call(variant, signal, query, lambda: self._client.custom_query(
            query, params={"time": repr(float(now)), "timeout": self._server_timeout}))
        series = self._single(variant, signal, query, result)
        if series is None:
            self._record(variant, signal, "empty", "no samples", query)
            return None
        value = _number(series["value"][1])
        if math.isnan(value):
            self._record(variant, signal, "nan", f"value {series['value'][1]}", query)
            return None
        ages = [now - ts if ts is not None else math.inf
                for ts in (freshness.get(sel) for sel in _selectors(query))]
        if ages and max(ages) > self.config.stale_after_s:
            self._record(variant, signal, "stale",
                         f"newest input sample is {max(ages):.0f}s old "
                         f"(stale_after_s={self.config.stale_after_s:g})", query)
            return None
        self._record(variant, signal, "ok", "", query)
        return value

    def _freshness(self, variant: str, queries: Iterable[str],
                   now: float) -> dict[str, float | None]:
        """Timestamp of the newest sample behind each vector selector of `queries`.

        An instant query reports its evaluation time, not the sample's, so staleness needs
        `timestamp()` on the raw selectors: one request for all of them, each tagged with a
        label. None means no sample within Prometheus' lookback (5 minutes by default).
        """
        selectors = sorted({sel for q in queries for sel in _selectors(q)})
        if not selectors:
            return {}
        parts = [f'label_replace(max(timestamp({sel})), "forescale_input", "{i}", "", "")'
                 for i, sel in enumerate(selectors)]
        query = " or ".join(parts)
        result = self._call(variant, "freshness", query, lambda: self._client.custom_query(
            query, params={"time": repr(float(now)), "timeout": self._server_timeout}))
        out: dict[str, float | None] = dict.fromkeys(selectors)
        for series in result:
            idx = int(series["metric"]["forescale_input"])
            out[selectors[idx]] = _number(series["value"][1])
        return out

    def _single(self, variant: str, signal: str, query: str,
                result: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The one series of `result`, None if empty; several are a configuration error."""
        if not result:
            return None
        if len(result) > 1:
            shown = [_label_set(r.get("metric", {})) for r in result[:_SHOWN_LABEL_SETS]]
            more = len(result) - len(shown)
            msg = (f"query {query!r} for variant {variant!r} ({signal}) returned "
                   f"{len(result)} series where one was expected: {', '.join(shown)}"
                   + (f" and {more} more" if more else "")
                   + "; aggregate it (e.g. sum(...)) or narrow the variant's selector")
            self._record(variant, signal, "several_series", f"{len(result)} series", query)
            raise AmbiguousResultError(msg)
        return result[0]

    def _call(self, variant: str, signal: str, query: str,
              fn: Callable[[], Any]) -> Any:
        """Run one HTTP query, mapping every failure to a Temporary or Permanent error."""
        where = f"Prometheus at {self._shown_url}, query {query!r}"
        try:
            result = fn()
        except _HTTPError as exc:
            temporary = exc.status >= 500 or exc.status in (408, 429)
            err: Exception = (TemporaryError if temporary else PermanentError)(f"{where}: {exc}")
        except requests.ConnectionError as exc:  # a read timeout arrives wrapped as this
            err = TemporaryError(f"{where}: no answer within timeout_s={self._timeout:g}s"
                                 if _timed_out(exc) else f"{where}: cannot connect: "
                                 f"{_cause(exc)}")
        except requests.Timeout:
            err = TemporaryError(f"{where}: no answer within timeout_s={self._timeout:g}s")
        except requests.RequestException as exc:
            err = TemporaryError(f"{where}: request failed: {_cause(exc)}")
        except TemporaryError as exc:  # from the auth hooks: a secret could not be read
            err = TemporaryError(f"{where}: {exc}")
        except PrometheusApiClientException as exc:  # a 2xx/3xx other than 200
            err = PermanentError(f"{where}: unexpected answer: {str(exc)[:300]}")
        except (ValueError, KeyError, TypeError) as exc:
            err = PermanentError(f"{where}: not a Prometheus API answer ({exc!r}); check the "
                                 "URL points at Prometheus' root")
        else:
            if not isinstance(result, list):
                err = PermanentError(f"{where}: expected a vector or matrix, got "
                                     f"{type(result).__name__}; the query must return one")
            else:
                return result
        outcome: Outcome = ("temporary_error" if isinstance(err, TemporaryError)
                            else "permanent_error")
        self._record(variant, signal, outcome, str(err), None)
        raise err

    def _record(self, variant: str, signal: str, outcome: Outcome, detail: str,
                query: str | None) -> None:
        self.outcomes[(variant, signal, outcome)] += 1
        if outcome == "ok":
            log.debug("prometheus %s/%s: ok %s", variant, signal, detail)
        elif outcome in ("gaps", "empty", "nan", "stale"):
            log.info("prometheus %s/%s: %s (%s) for %r", variant, signal, outcome, detail, query)
        elif query is not None:
            log.warning("prometheus %s/%s: %s (%s) for %r", variant, signal, outcome, detail,
                        query)
        else:
            log.warning("prometheus %s/%s: %s: %s", variant, signal, outcome, detail)
        if self._on_outcome is not None:
            self._on_outcome(variant, signal, outcome)


def _selectors(query: str) -> list[str]:
    """Every `name{matchers}` vector selector in `query`, as written."""
    return [m.group(0) for m in _SELECTOR_RE.finditer(query)]


def _label_set(metric: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (urllib3 keeps the reason in `.reason`)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        reason = getattr(cur, "reason", None)
        todo += [cur.__cause__, cur.__context__,
                 reason if isinstance(reason, BaseException) else None]
        todo += [a for a in cur.args if isinstance(a, BaseException)]


def _timed_out(exc: BaseException) -> bool:
    # not urllib3's TimeoutError: its NewConnectionError (connection refused) is one
    timeouts = (requests.Timeout, TimeoutError, urllib3.exceptions.ReadTimeoutError)
    return any(isinstance(e, timeouts) for e in _chain(exc))


def _cause(exc: BaseException) -> str:
    """The innermost reason (e.g. '[Errno 111] Connection refused'), not urllib3's wrapping."""
    inner: BaseException = exc
    while True:
        nxt = inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    return str(inner) or type(inner).__name__


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


__all__ = ["LIVE_SIGNALS", "MAX_POINTS_PER_QUERY", "AmbiguousResultError", "Outcome",
           "OutcomeHook", "PrometheusSource"]
