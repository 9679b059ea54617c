"""Trace files are user input: every problem names the file, line, column and value; one
unusable series does not make the rest of a file unusable."""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from controller.cli import app
from forecaster.backtest import BacktestError, run_backtest
from forecaster.trace import RELATIVE_EPOCH, TraceError, read_trace

HEADER = "timestamp_s,series,requests\n"


def _write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(p, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(("text", "message"), [
    ("time,series,requests\n0,a,1\n", r"line 1: missing column 'timestamp' \(have time"),
    (HEADER + "0,a,1\n600,,2\n", "line 3: column 'series' is empty"),
    (HEADER + "0,a,1\nsoon,a,2\n", "line 3: column 'timestamp_s' has value 'soon'"),
    (HEADER + "0,a,1\n600,a,-3\n", "line 3: column 'requests' has value '-3'"),
    (HEADER + "0,a,1\n600,a,inf\n", "line 3: column 'requests' has value 'inf'"),
    (HEADER + "0,a,1\n0,a,2\n", "series 'a' has two rows for time 0"),
    (HEADER + "0,a,1\n600,a,2\n1200,a,3\n1500,a,4\n", "time 1500 is off the 600 s grid"),
    ("timestamp,series,requests\n2025-01-01T00:00:00,a,1\nlater,a,2\n",
     "line 3: column 'timestamp' has value 'later', expected an ISO time"),
    (HEADER, "no data rows"),
])
def test_bad_trace_is_refused_naming_line_column_and_value(tmp_path: Path, text: str,
                                                           message: str) -> None:
    with pytest.raises(TraceError, match=message):
        read_trace(_write(tmp_path, text))


def test_missing_windows_are_nan_never_zero_and_rates_are_per_second(tmp_path: Path) -> None:
    p = _write(tmp_path, HEADER + "0,a,600\n600,a,1200\n1800,a,0\n", "t.csv.gz")
    a = read_trace(p)["a"]
    assert a.step_s == 600 and a.start == RELATIVE_EPOCH  # relative time on a fixed clock
    assert a.requests[:2].tolist() == [1.0, 2.0]
    assert math.isnan(a.requests[2]) and a.requests[3] == 0.0


def test_iso_timestamps_keep_their_dates(tmp_path: Path) -> None:
    p = _write(tmp_path, "timestamp,series,requests\n2025-03-03T00:00:00Z,a,60\n"
                         "2025-03-03T00:01:00+00:00,a,120\n")
    a = read_trace(p)["a"]
    assert a.step_s == 60 and a.start == 1_740_960_000.0
    assert np.allclose(a.requests, [1.0, 2.0])


def test_a_single_row_series_is_skipped_when_reading_the_whole_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _write(tmp_path, HEADER + "0,a,1\n600,a,2\n0,lonely,5\n")
    with caplog.at_level(logging.WARNING):
        assert list(read_trace(p)) == ["a"]
    assert "'lonely' skipped: it has 1 row(s), need at least 2" in caplog.text
    with pytest.raises(TraceError, match="'lonely' has 1 row"):  # asked for by name: refused
        read_trace(p, ["lonely"])


def _long_and_tiny(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [f"{600 * k},long,{int(rng.poisson(1000))}" for k in range(200)]
    rows += ["0,tiny,5", "600,tiny,6", "1200,tiny,7"]
    return _write(tmp_path, HEADER + "\n".join(rows) + "\n")


def test_backtest_skips_a_series_too_short_and_scores_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _long_and_tiny(tmp_path)
    with caplog.at_level(logging.WARNING):
        result = run_backtest(p, None, None, n_jobs=1)
    assert [r["name"] for r in result["series"]] == ["long"]
    assert "'tiny' skipped: tiny: too short to backtest at horizon 3" in caplog.text
    with pytest.raises(BacktestError, match="no series could be backtested"):
        run_backtest(p, ["tiny"], None, n_jobs=1)


def test_backtest_cli_exits_2_without_a_traceback_when_nothing_can_be_scored(
        tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["backtest", "--data", str(_long_and_tiny(tmp_path)),
                                      "--series", "tiny"])
    assert result.exit_code == 2
    assert "no series could be backtested" in result.output
    assert "Traceback" not in result.output
