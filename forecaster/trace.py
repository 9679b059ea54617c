"""Read load traces (the `shared/data` format) into regular per-series histories.

Format: CSV or CSV.gz with a header; time in `timestamp_s` (seconds, relative or epoch) or
ISO `timestamp`; `series`; `requests` per window; optional `input_tokens`, `output_tokens`
and `active_clients`. Every problem is reported with the file, the line, the column and the
offending value: a trace is user input and a traceback tells the user nothing.

One rule for values that are not counts:

- an empty cell or `NaN` is a *missing window* (a gap: unknown, never zero load);
- `inf`, `-inf`, a negative number, text, or a count above the column's limit
  (`MAX_PER_WINDOW`: 1e12 requests or 1e15 tokens in one window, far past any real service
  and well inside what the forecasters and the replay can compute with) is an error naming
  the line, column and value;
- a window with `active_clients` 0 *and* `requests` 0 is a gap too: ServeGen writes its
  missing windows that way (m-small has 37, m-mid 84, m-large none). Zero requests with
  clients active, or in a file without the column, is a real idle window.

Rows missing from the file are gaps as well: the window length is the most common spacing of
a series' timestamps (the smallest of those tied), a multiple of it is rows missing (logged as
"rows missing between t1 and t2"), and a timestamp off that grid is an error. A
series is refused when more than half of its windows would be missing. `TraceSeries.gaps`
counts the missing windows of each series, whatever their cause.
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
#: Times beyond this many seconds from 1970 (year ~5138) are typos, and their differences
#: would lose the grid's precision.
_TIME_LIMIT = 1e11
TOKEN_COLUMNS = ("input_tokens", "output_tokens")
#: Largest count accepted in one window, per column (see the module docstring).
MAX_PER_WINDOW = {"requests": 1e12, "input_tokens": 1e15, "output_tokens": 1e15,
                  "active_clients": 1e9}

log = logging.getLogger(__name__)

_Row = tuple[float, float, float, float]


class TraceError(ValueError):
    """A trace file that cannot be read; the message names file, line and value."""


@dataclass(frozen=True)
class TraceSeries:
    """One series of a trace as rates per second on a regular grid (NaN = missing window).

    `gaps` counts the windows whose load is unknown (rows missing from the file, empty or NaN
    cells, windows marked missing by `active_clients` 0), so a replay or a forecast can say
    how much of what it read was never observed.
    """

    name: str
    start: float
    step_s: int
    requests: FloatArray
    input_tokens: FloatArray | None
    output_tokens: FloatArray | None
    gaps: int = 0

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
    if not math.isfinite(value) or abs(value) > _TIME_LIMIT:
        raise TraceError(f"{where}: column {column!r} has value {raw!r}, expected a finite "
                         f"time within {_TIME_LIMIT:.0e} s of 1970")
    return value


def _parse_count(raw: str | None, column: str, where: str) -> float:
    """A count per window; empty or NaN is a missing window (NaN), anything else that is not
    a finite number from 0 to the column's limit is an error."""
    if raw is None or raw.strip() == "":
        return math.nan
    limit = MAX_PER_WINDOW[column]
    try:
        value = float(raw)
    except ValueError:
        value = -1.0  # not a number: same message as a negative one
    if math.isnan(value):
        return math.nan
    if not (math.isfinite(value) and value >= 0):
        raise TraceError(f"{where}: column {column!r} has value {raw!r}, expected a "
                         "non-negative number (an empty cell or NaN marks a missing window)")
    if value > limit:
        raise TraceError(f"{where}: column {column!r} has value {raw!r}, expected at most "
                         f"{limit:.0e} per window")
    return value


def _check_path(p: Path) -> None:
    if p.is_dir():
        raise TraceError(f"{p}: is a directory, not a trace file")
    if not p.exists():
        raise TraceError(f"{p}: no such trace file")


def read_trace(path: str | Path, series: list[str] | None = None) -> dict[str, TraceSeries]:
    """Parse a trace file into regular series keyed by name.

    Missing windows become NaN (never zero): a window absent from the file is unknown, not idle.
    """
    p = Path(path)
    _check_path(p)
    rows: dict[str, list[_Row]] = {}
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
            has_clients = "active_clients" in header
            for lineno, row in enumerate(reader, start=2):
                where = f"{p}: line {lineno}"
                name = (row.get("series") or "").strip()
                if not name:
                    raise TraceError(f"{where}: column 'series' is empty")
                if series is not None and name not in series:
                    continue
                if row.get(tcol) is None or row.get("requests") is None:
                    raise TraceError(f"{where}: too few fields")
                rows.setdefault(name, []).append(
                    _parse_row(row, tcol, where, has_tokens, has_clients))
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


def _parse_row(row: dict[str, str], tcol: str, where: str, has_tokens: bool,
               has_clients: bool) -> _Row:
    """One row as (time, requests, input tokens, output tokens); a window ServeGen marks as
    missing (no active client and no request) comes back as NaN counts."""
    t = _parse_time(row[tcol], tcol, where)
    req = _parse_count(row["requests"], "requests", where)
    toks = (_parse_count(row["input_tokens"], "input_tokens", where),
            _parse_count(row["output_tokens"], "output_tokens", where)) \
        if has_tokens else (math.nan, math.nan)
    if has_clients and req == 0 \
            and _parse_count(row.get("active_clients"), "active_clients", where) == 0:
        return t, math.nan, math.nan, math.nan
    return t, req, *toks


def _regularise_all(path: Path, rows: dict[str, list[_Row]], whole_file: bool, has_tokens: bool,
                    relative: bool) -> dict[str, TraceSeries]:
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


def _grid_step(times: FloatArray) -> int:
    """The window length: the most common spacing of the timestamps, the smallest of those
    tied (three rows 0, 20, 30 are a 10 s grid with a row missing, not a 20 s grid with 30
    off it). 0 when no positive whole-second spacing exists."""
    spacings = np.round(np.diff(times)).astype(np.int64)
    counts = Counter(spacings.tolist()).most_common()
    return int(min(s for s, c in counts if c == counts[0][1]))


def _regularise(path: Path, name: str, rows: list[_Row], has_tokens: bool,
                relative: bool) -> TraceSeries:
    arr = np.array(sorted(rows), dtype=np.float64)
    t = arr[:, 0] + (RELATIVE_EPOCH if relative else 0.0)
    if arr.shape[0] < 2:
        raise TraceError(f"{path}: series {name!r} has {arr.shape[0]} row(s), need at least 2")
    diffs = np.diff(t)
    if (diffs == 0).any():
        dup = float(arr[int(np.flatnonzero(diffs == 0)[0]), 0])
        raise TraceError(f"{path}: series {name!r} has two rows for time {dup:g}")
    step = _grid_step(t)
    if step <= 0:
        raise TraceError(f"{path}: series {name!r}: cannot infer a window length")
    offsets = (t - t[0]) / step
    if not np.allclose(offsets, np.round(offsets), atol=1e-6):
        bad = int(np.flatnonzero(~np.isclose(offsets, np.round(offsets), atol=1e-6))[0])
        raise TraceError(f"{path}: series {name!r}: time {arr[bad, 0]:g} is off the "
                         f"{step} s grid")
    idx = np.round(offsets).astype(int)
    n = int(idx[-1]) + 1
    _check_missing_rows(path, name, arr[:, 0], idx, step)

    def grid(col: int) -> FloatArray:
        out = np.full(n, np.nan)
        out[idx] = arr[:, col] / step
        return out

    requests = grid(1)
    return TraceSeries(name, float(t[0]), int(step), requests,
                       grid(2) if has_tokens else None, grid(3) if has_tokens else None,
                       gaps=int(np.isnan(requests).sum()))


def _check_missing_rows(path: Path, name: str, times: FloatArray,
                        idx: np.ndarray[tuple[int], np.dtype[np.int64]], step: int) -> None:
    """Say where rows are missing (they are read as gaps); refuse a series that would be
    mostly gaps, which is a wrong grid or a typo in a timestamp rather than a trace."""
    jumps = np.flatnonzero(np.diff(idx) > 1)
    if jumps.shape[0] == 0:
        return
    widest = int(jumps[np.argmax(np.diff(idx)[jumps])])
    missing = int(idx[-1]) + 1 - idx.shape[0]
    first = int(jumps[0])
    more = f" and {jumps.shape[0] - 1} more place(s)" if jumps.shape[0] > 1 else ""
    if missing > idx.shape[0]:
        raise TraceError(
            f"{path}: series {name!r}: rows missing between {times[widest]:g} and "
            f"{times[widest + 1]:g}{more}: {missing} windows of {step} s missing against "
            f"{idx.shape[0]} present; a series must have at least half of its windows")
    log.warning("%s: series %r: rows missing between %g and %g%s (%d window(s) of %d s), "
                "read as gaps", path, name, times[first], times[first + 1], more, missing, step)
