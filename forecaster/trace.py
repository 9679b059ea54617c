"""Read load traces (the `shared/data` format) into regular per-series histories.

Format: CSV or CSV.gz with a header; time in `timestamp_s` (seconds, relative or epoch) or
ISO `timestamp`; `series`; `requests` per window; optional `input_tokens`, `output_tokens`.
Every problem is reported with the file, the line and the offending value: a trace is user
input and a traceback tells the user nothing.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from forecaster.base import FloatArray, History

#: Relative `timestamp_s` values (ServeGen publishes no dates) are placed on this clock:
#: Monday 2025-01-06 00:00 UTC, so calendar features see a plausible week.
RELATIVE_EPOCH = 1_736_121_600.0
_RELATIVE_LIMIT = 10 * 365 * 86_400  # below this a timestamp_s is read as relative
TOKEN_COLUMNS = ("input_tokens", "output_tokens")

log = logging.getLogger(__name__)


class TraceError(ValueError):
    """A trace file that cannot be read; the message names file, line and value."""


@dataclass(frozen=True)
class TraceSeries:
    """One series of a trace as rates per second on a regular grid (NaN = missing window)."""

    name: str
    start: float
    step_s: int
    requests: FloatArray
    input_tokens: FloatArray | None
    output_tokens: FloatArray | None

    def history(self, signal: str = "requests") -> History:
        values = getattr(self, signal)
        if values is None:
            raise TraceError(f"series {self.name!r} has no {signal!r} column")
        return History(self.name, self.start, self.step_s, values)

    def __len__(self) -> int:
        return int(self.requests.shape[0])


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _parse_time(raw: str, column: str, where: str) -> float:
    try:
        if column == "timestamp_s":
            value = float(raw)
        else:
            dt = datetime.fromisoformat(raw)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            value = dt.timestamp()
    except ValueError:
        raise TraceError(f"{where}: column {column!r} has value {raw!r}, "
                         f"expected {'seconds' if column == 'timestamp_s' else 'an ISO time'}")\
            from None
    if not math.isfinite(value):
        raise TraceError(f"{where}: column {column!r} has value {raw!r}, expected a finite time")
    return value


def _parse_count(raw: str, column: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise TraceError(f"{where}: column {column!r} has value {raw!r}, "
                         "expected a non-negative number") from None
    if math.isnan(value) or raw.strip() == "":
        return math.nan
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: column {column!r} has value {raw!r}, "
                         "expected a non-negative number")
    return value


def read_trace(path: str | Path, series: list[str] | None = None) -> dict[str, TraceSeries]:
    """Parse a trace file into regular series keyed by name.

    Missing windows become NaN (never zero): a window absent from the file is unknown, not idle.
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such trace file")
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    try:
        with _open_text(p) as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            tcol = "timestamp_s" if "timestamp_s" in header else "timestamp"
            for required in (tcol, "series", "requests"):
                if required not in header:
                    raise TraceError(f"{p}: line 1: missing column {required!r} "
                                     f"(have {', '.join(header) or 'nothing'}); need "
                                     "'timestamp_s' or 'timestamp', 'series', 'requests'")
            has_tokens = all(c in header for c in TOKEN_COLUMNS)
            for lineno, row in enumerate(reader, start=2):
                where = f"{p}: line {lineno}"
                name = (row.get("series") or "").strip()
                if not name:
                    raise TraceError(f"{where}: column 'series' is empty")
                if series is not None and name not in series:
                    continue
                if row.get(tcol) is None or row.get("requests") is None:
                    raise TraceError(f"{where}: too few fields")
                t = _parse_time(row[tcol], tcol, where)
                req = _parse_count(row["requests"], "requests", where)
                toks = (_parse_count(row["input_tokens"], "input_tokens", where),
                        _parse_count(row["output_tokens"], "output_tokens", where)) \
                    if has_tokens else (math.nan, math.nan)
                rows.setdefault(name, []).append((t, req, *toks))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, gzip.BadGzipFile) as exc:
        raise TraceError(f"{p}: cannot read trace: {exc}") from None
    if series is not None:
        missing = [s for s in series if s not in rows]
        if missing:
            raise TraceError(f"{p}: no rows for series {', '.join(map(repr, missing))}")
    if not rows:
        raise TraceError(f"{p}: no data rows")
    relative = tcol == "timestamp_s" and all(r[0][0] < _RELATIVE_LIMIT for r in rows.values())
    return _regularise_all(p, rows, series is None, has_tokens, relative)


def _regularise_all(path: Path, rows: dict[str, list[tuple[float, float, float, float]]],
                    whole_file: bool, has_tokens: bool, relative: bool
                    ) -> dict[str, TraceSeries]:
    """Every series on its grid. Reading a whole file, a series with a single window says
    nothing but must not make the others unreadable: it is skipped, and said so."""
    out: dict[str, TraceSeries] = {}
    for name, r in rows.items():
        if whole_file and len(r) < 2:
            log.warning("%s: series %r skipped: it has %d row(s), need at least 2", path, name,
                        len(r))
            continue
        out[name] = _regularise(path, name, r, has_tokens, relative)
    if not out:
        raise TraceError(f"{path}: no series with at least 2 rows")
    return out


def _regularise(path: Path, name: str, rows: list[tuple[float, float, float, float]],
                has_tokens: bool, relative: bool) -> TraceSeries:
    arr = np.array(sorted(rows), dtype=np.float64)
    t = arr[:, 0] + (RELATIVE_EPOCH if relative else 0.0)
    if arr.shape[0] < 2:
        raise TraceError(f"{path}: series {name!r} has {arr.shape[0]} row(s), need at least 2")
    diffs = np.diff(t)
    if (diffs == 0).any():
        dup = float(arr[int(np.flatnonzero(diffs == 0)[0]), 0])
        raise TraceError(f"{path}: series {name!r} has two rows for time {dup:g}")
    step = Counter(np.round(diffs).astype(int).tolist()).most_common(1)[0][0]
    if step <= 0:
        raise TraceError(f"{path}: series {name!r}: cannot infer a window length")
    offsets = (t - t[0]) / step
    if not np.allclose(offsets, np.round(offsets), atol=1e-6):
        bad = int(np.flatnonzero(~np.isclose(offsets, np.round(offsets), atol=1e-6))[0])
        raise TraceError(f"{path}: series {name!r}: time {arr[bad, 0]:g} is off the "
                         f"{step} s grid")
    idx = np.round(offsets).astype(int)
    n = int(idx[-1]) + 1

    def grid(col: int) -> FloatArray:
        out = np.full(n, np.nan)
        out[idx] = arr[:, col] / step
        return out

    return TraceSeries(name, float(t[0]), int(step), grid(1),
                       grid(2) if has_tokens else None, grid(3) if has_tokens else None)
