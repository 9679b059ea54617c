"""The command line: clear errors and exit codes for user mistakes, never a traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from controller.cli import app

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


def test_replay_text_output_explains_how_the_predictive_policy_ran(tmp_path: Path) -> None:
    """Too short to forecast: the replay says the HPA fallback ran throughout, rather than
    showing predictive figures a reader would take for forecasts."""
    p = tmp_path / "short.csv"
    p.write_text("timestamp_s,series,requests\n"
                 + "".join(f"{600 * k},s,{1000 + 10 * k}\n" for k in range(20)))
    result = runner.invoke(app, ["replay", "--data", str(p), "--series", "s"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "predictive: never forecast: it needs 36 completed windows of 600 s and the trace " \
           "has 20, so the reactive fallback (the HPA) ran throughout" in text
    assert "Traceback" not in result.output
