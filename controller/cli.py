"""The `forescale` command line: serve, demo, validate-config, backtest, replay.

User errors (a bad config, a bad trace file, a bad option) print one clear message and exit 2;
tracebacks are for bugs only.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from controller.config import ConfigError, load_config

# Plain (click) help: typer's rich help prints every flag as `--json <bool>`, as if it took a
# value, `--help` included.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="forescale: predictive, variant-aware autoscaler for LLM inference.")
err = Console(stderr=True)
out = Console()


def _print_table(table: Any) -> None:
    """A table on stdout, whole. Piped into a file or a CI log, rich assumes 80 columns and
    cuts names to `ser…`; there, print at the table's natural width instead."""
    if out.is_terminal:
        out.print(table)
        return
    width = Console(width=10_000).measure(table).maximum
    Console(width=max(80, width), highlight=False).print(table)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("forescale")
        except PackageNotFoundError:  # run from a checkout without installing
            v = "unknown (not installed)"
        sys.stdout.write(f"forescale {v}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """forescale: predictive, variant-aware autoscaler for LLM inference."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@app.command("validate-config")
def validate_config(file: Annotated[Path, typer.Argument(help="YAML config to check")]) -> None:
    """Check a config file; print what is wrong (field, value, what is allowed)."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    out.print(f"{file}: OK — {len(cfg.variants)} variant(s), {len(cfg.groups)} group(s), "
              f"actuation {cfg.actuation.value}")


@app.command()
def demo(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    speed: Annotated[float, typer.Option(min=0.1, max=10_000,
                                         help="Trace seconds per wall second")] = 1.0,
    log_level: Annotated[str, typer.Option(help="Log level")] = "warning",
) -> None:
    """Run the service on its embedded default: a bundled real trace, dry-run, no cluster."""
    from controller.runner import StopSignals, demo_runtime, exit_when_stuck, serve_http, token_for

    _logging(log_level)
    stop = StopSignals()
    runtime = demo_runtime(speed=speed)
    service = runtime.service
    token = token_for(service.config)
    runtime.scheduler.start()
    base = f"http://{host}:{port}"

    def hello() -> None:
        out.print(f"[bold green]forescale demo[/] on {base} — replaying the bundled ServeGen "
                  f"trace (Apache-2.0) at {speed:g}x, decisions in dry-run. Try:")
        for path in ("/forecast?variant=servegen-m-small", "/plan", "/variants",
                     "/decisions?limit=5", "/forecast.png?variant=servegen-m-small",
                     "/metrics", "/docs"):
            out.print(f"  curl '{base}{path}'", highlight=False)
        env = service.config.api.token_env
        if token is None:
            out.print(f"POST /retrain is off: start with {env}=<token> to use it.",
                      highlight=False)
        else:
            out.print(f"  curl -X POST -H 'Authorization: Bearer ${env}' '{base}/retrain'",
                      highlight=False)
        out.print("Ctrl-C stops it.")

    try:
        serve_http(service, host, port, token=token, on_started=hello, stop=stop)
    finally:
        runtime.stop()
    exit_when_stuck()


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config")],
    port: Annotated[int | None, typer.Option(min=1, max=65535,
                                             help="Override api.port")] = None,
    host: Annotated[str | None, typer.Option(help="Override api.host")] = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Run the service against Prometheus and Kubernetes as configured."""
    from controller.runner import (
        StopSignals,
        build_production,
        exit_when_stuck,
        serve_http,
        token_for,
    )

    _logging(log_level)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    stop = StopSignals()
    runtime = build_production(cfg, config_path=config)
    runtime.scheduler.start()
    try:
        serve_http(runtime.service, host or cfg.api.host, port or cfg.api.port,
                   token_for(cfg), stop=stop)
    finally:
        runtime.stop()
    exit_when_stuck()


@app.command()
def backtest(
    data: Annotated[Path, typer.Option("--data", help="Trace file (CSV or CSV.gz)")],
    series: Annotated[list[str] | None, typer.Option("--series",
                                                     help="Series to test (repeatable)")] = None,
    horizon: Annotated[int | None, typer.Option(min=1, max=10_000,
                                                help="Steps ahead (default: ~30 min)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False,
) -> None:
    """Rolling-origin backtest over the last 20% of each series, against three baselines."""
    from rich.progress import Progress

    from forecaster.backtest import BacktestError, render_table, rich_progress, run_backtest
    from forecaster.trace import TraceError

    try:
        with Progress(console=err, transient=True) as bar:
            result = run_backtest(data, series or None, horizon, progress=rich_progress(bar))
    except (TraceError, BacktestError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        _print_table(render_table(result))


@app.command()
def replay(
    data: Annotated[Path, typer.Option("--data", help="Trace file (CSV or CSV.gz)")],
    series: Annotated[str, typer.Option("--series", help="Series to replay")],
    profile: Annotated[Path | None, typer.Option(help="VariantProfile YAML")] = None,
    cold_start: Annotated[float | None, typer.Option("--cold-start", min=0,
                                                     help="Cold start, seconds")] = None,
    slo_target: Annotated[float, typer.Option("--slo-target", min=0.5, max=0.9999,
                                              help="SLO attainment target")] = 0.99,
    policies: Annotated[str, typer.Option(help="Comma-separated policies")] =
        "reactive,predictive,oracle",
    iso_slo: Annotated[bool, typer.Option("--iso-slo", help="Sweep the reactive target to "
                                          "match predictive's SLO")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG here")] = None,
    seed: Annotated[int, typer.Option(help="Arrival randomness seed")] = 0,
) -> None:
    """What forescale would have done on a trace, against a reactive HPA and an oracle."""
    from rich.progress import Progress

    from controller.replay import POLICIES, ReplayError, plot, render_table, run_replay
    from forecaster.trace import TraceError

    chosen = [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in POLICIES]
    if unknown or not chosen:
        raise _fail(f"--policies: unknown {unknown or policies!r}; allowed: "
                    f"{', '.join(POLICIES)}")
    try:
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("replay", total=None)
            result = run_replay(data, series, profile, cold_start, slo_target, chosen, iso_slo,
                                progress=lambda msg: bar.update(task, description=msg),
                                seed=seed)
    except (TraceError, ReplayError) as exc:
        raise _fail(str(exc)) from None
    if plot_out is not None:
        plot(result, plot_out)
        err.print(f"plot written to {plot_out}")
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    else:
        _print_table(render_table(result))
        # How each policy ran (the predictive quantile, models, forecast and overload
        # decisions) and how much the load jumps: what a reader needs to trust or question
        # the figures above.
        for note in result.notes:
            out.print(note, markup=False, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["app", "main"]
