"""The command line: clear errors and exit codes for user mistakes, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from tests.support import SHARED_DATA

runner = CliRunner()


def test_validate_config_accepts_the_demo_config() -> None:
    from controller.runner import data_path

    result = runner.invoke(app, ["validate-config", str(data_path("demo.yaml"))])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "3 variant(s)" in result.output


def test_validate_config_rejects_a_bad_file_naming_field_and_value(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("actuation: scaled\nvariants:\n  - name: a\n    deployment: {namespace: x, "
                 "name: y}\n    profile: {capacity_rps: 0}\n")
    result = runner.invoke(app, ["validate-config", str(p)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "actuation" in text and "'scaled'" in text
    assert "variants[0](a).profile.capacity_rps" in text
    assert "Traceback" not in result.output


def test_validate_config_reports_a_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate-config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read config" in result.output


def test_serve_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("variants: []\n")
    result = runner.invoke(app, ["serve", "--config", str(p)])
    assert result.exit_code == 2
    assert "variants" in result.output


def test_replay_text_output_says_when_forescale_never_forecast(tmp_path: Path) -> None:
    """Shorter than one retrain interval: the replay says forescale only held and caught
    overload, rather than showing figures a reader would take for forecasts."""
    p = tmp_path / "short.csv"
    p.write_text("timestamp_s,series,requests\n"
                 + "".join(f"{600 * k},s,{1000 + 10 * k}\n" for k in range(6)))
    result = runner.invoke(app, ["replay", "--data", str(p), "--series", "s"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "forescale: never forecast: no model was trained before the trace ended" in text
    assert "Traceback" not in result.output


def forescale(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, stdout piped (not a terminal, as in CI logs), no COLUMNS."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_version_prints_the_installed_version() -> None:
    done = forescale("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"forescale {version('forescale')}\n"


@pytest.mark.parametrize("command", ["backtest", "replay"])
def test_help_shows_json_as_a_flag_not_a_bool_value(command: str) -> None:
    done = forescale(command, "--help")
    assert done.returncode == 0, done.stderr
    assert "<bool>" not in done.stdout, done.stdout
    (line,) = [ln for ln in done.stdout.splitlines() if ln.strip().startswith("--json")]
    assert line.split()[1:3] == ["One", "JSON"], line  # the help text follows the flag


def test_backtest_table_prints_whole_names_when_stdout_is_not_a_terminal() -> None:
    """Piped output used to be cut to 80 columns: `azure…` and `sea…` in CI logs."""
    done = forescale("backtest", "--data", str(SHARED_DATA / "azure_llm_2023_per_10s.csv"),
                     "--series", "azure2023-conv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "…" not in done.stdout, done.stdout
    row = next(ln for ln in done.stdout.splitlines() if "azure2023-conv" in ln)
    assert "summary" in done.stdout and len(row) > 80
