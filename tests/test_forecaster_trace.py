"""Trace files are user input: every problem names the file, line, column and value; one
unusable series does not make the rest of a file unusable."""

from __future__ import annotations

import gzip
import json
import logging
import math
import subprocess
import sys
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


# --- one rule for values that are not counts, gaps, limits (issue 14, issue 15) ---

FORESCALE = Path(sys.executable).parent / "forescale"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FORESCALE), *args], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.parametrize(("cell", "shown"), [("inf", "'inf'"), ("-inf", "'-inf'"),
                                             ("-1", "'-1'"), ("1e308", "'1e308'"),
                                             ("2e12", "'2e12'"), ("lots", "'lots'")])
def test_a_count_that_is_not_a_finite_number_within_the_limit_is_refused(
        tmp_path: Path, cell: str, shown: str) -> None:
    p = _write(tmp_path, HEADER + f"0,a,1\n600,a,{cell}\n1200,a,3\n")
    with pytest.raises(TraceError, match=rf"t\.csv: line 3: column 'requests' has value {shown}"):
        read_trace(p)


def test_the_limits_are_per_column_and_inclusive(tmp_path: Path) -> None:
    ok = _write(tmp_path, "timestamp_s,series,requests,input_tokens,output_tokens\n"
                          "0,a,1e12,1e15,1\n600,a,1,1,1\n")
    a = read_trace(ok)["a"]
    assert a.requests[0] == 1e12 / 600 and a.input_tokens is not None
    assert a.input_tokens[0] == 1e15 / 600
    bad = _write(tmp_path, "timestamp_s,series,requests,input_tokens,output_tokens\n"
                           "0,a,1,1,1\n600,a,1,1,1.1e15\n", "bad.csv")
    with pytest.raises(TraceError, match=r"line 3: column 'output_tokens' has value '1.1e15', "
                                         r"expected at most 1e\+15 per window"):
        read_trace(bad)


def test_an_empty_cell_and_nan_are_gaps_counted_on_the_series(tmp_path: Path) -> None:
    p = _write(tmp_path, HEADER + "0,a,600\n600,a,\n1200,a,NaN\n1800,a,nan\n2400,a,0\n")
    a = read_trace(p)["a"]
    assert np.isnan(a.requests[1:4]).all()
    assert a.requests[0] == 1.0 and a.requests[4] == 0.0  # a real zero stays a zero
    assert a.gaps == 3


def test_a_window_without_clients_or_requests_is_a_gap_not_idle(tmp_path: Path) -> None:
    """ServeGen writes a window it has no data for as 0 requests from 0 active clients;
    zero requests while clients are active is a real idle window."""
    p = _write(tmp_path, "timestamp_s,series,requests,input_tokens,output_tokens,"
                         "active_clients\n0,a,600,6,6,3\n600,a,0,0,0,0\n1200,a,0,0,0,2\n"
                         "1800,a,600,6,6,3\n")
    a = read_trace(p)["a"]
    assert a.input_tokens is not None
    assert math.isnan(a.requests[1]) and math.isnan(a.input_tokens[1])
    assert a.requests[2] == 0.0 and a.input_tokens[2] == 0.0
    assert a.gaps == 1
    no_column = _write(tmp_path, HEADER + "0,a,600\n600,a,0\n1200,a,600\n", "plain.csv")
    plain = read_trace(no_column)["a"]
    assert plain.requests[1] == 0.0 and plain.gaps == 0


def test_servegen_missing_windows_are_gaps_per_series(shared_data: Path) -> None:
    """Counted from the file: m-small has 37 windows of 0 requests from 0 clients, m-mid 84,
    m-large none; they are read as unknown, every other window keeps its load."""
    trace = read_trace(shared_data / "servegen_per_10min.csv.gz")
    assert {k: t.gaps for k, t in trace.items()} == {
        "servegen-m-large": 0, "servegen-m-mid": 84, "servegen-m-small": 37,
        "servegen-deepseek-r1": 0, "servegen-mm-image": 0}
    small = trace["servegen-m-small"].requests
    assert len(small) == 2016 and int(np.isnan(small).sum()) == 37
    assert (small[np.isfinite(small)] > 0).all()


def test_rows_missing_are_gaps_and_said_so_while_off_grid_times_are_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _write(tmp_path, HEADER + "0,a,10\n20,a,20\n30,a,30\n")  # 10 s, the row at 10 missing
    with caplog.at_level(logging.WARNING):
        a = read_trace(p)["a"]
    assert a.step_s == 10 and a.gaps == 1 and math.isnan(a.requests[1])
    assert "series 'a': rows missing between 0 and 20 (1 window(s) of 10 s)" in caplog.text
    off = _write(tmp_path, HEADER + "0,a,1\n20,a,1\n40,a,1\n60,a,1\n75,a,1\n", "off.csv")
    with pytest.raises(TraceError, match="time 75 is off the 20 s grid"):
        read_trace(off)


def test_a_series_mostly_missing_is_refused_naming_the_widest_gap(tmp_path: Path) -> None:
    """A typo in one timestamp must not make a grid of millions of empty windows."""
    p = _write(tmp_path, HEADER + "0,a,1\n10,a,1\n20,a,1\n2000000,a,1\n")
    with pytest.raises(TraceError, match=r"series 'a': rows missing between 20 and 2e\+06: "
                                         r"199997 windows of 10 s missing against 4 present"):
        read_trace(p)


def test_a_timestamp_beyond_any_plausible_date_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path, HEADER + "0,a,1\n1e300,a,1\n")
    with pytest.raises(TraceError, match="line 3: column 'timestamp_s' has value '1e300'"):
        read_trace(p)


def test_a_directory_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="is a directory, not a trace file"):
        read_trace(tmp_path)
    with pytest.raises(TraceError, match="no such trace file"):
        read_trace(tmp_path / "absent.csv")


def test_backtest_cli_says_a_directory_is_a_directory(tmp_path: Path) -> None:
    result = _cli("backtest", "--data", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path}: is a directory" in " ".join(result.stderr.split())
    assert "no such" not in result.stderr and "Traceback" not in result.stderr


def test_backtest_cli_refuses_a_huge_count_naming_line_column_and_value(
        tmp_path: Path) -> None:
    rows = [f"{600 * k},a,{1000 + k}" for k in range(60)]
    rows[41] = "24600,a,1e308"
    p = _write(tmp_path, HEADER + "\n".join(rows) + "\n")
    result = _cli("backtest", "--data", str(p))
    text = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert f"{p}: line 43: column 'requests' has value '1e308', expected at most 1e+12 per " \
           "window" in text
    assert "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr


def test_backtest_cli_scores_a_trace_with_gaps_without_warnings(tmp_path: Path) -> None:
    """Empty cells, NaN and missing rows are gaps the backtest steps over: it scores the
    series, prints no numpy warning, and the rows missing are said once."""
    rng = np.random.default_rng(1)
    rows = [f"{600 * k},a,{int(rng.poisson(1000))}" for k in range(300)]
    rows[100] = "60000,a,"
    rows[101] = "60600,a,NaN"
    del rows[200:203]
    p = _write(tmp_path, HEADER + "\n".join(rows) + "\n")
    result = _cli("backtest", "--data", str(p), "--json")
    assert result.returncode == 0, result.stderr
    assert "Warning:" not in result.stderr.replace("WARNING", "")
    assert "rows missing between 119400 and 121800" in result.stderr
    (row,) = json.loads(result.stdout)["series"]
    assert row["name"] == "a" and row["mae"] > 0
