"""The `forescale` command line: serve, demo, validate-config, backtest, replay.

User errors (a bad config, a bad trace file, a bad option) print one clear message and exit 2;
tracebacks are for bugs only.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
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


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def _duration_s(text: str, field: str) -> float:
    """'14d', '36h', '90m' or seconds; a clear error naming the option otherwise."""
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * _DURATION[t[-1]] if t and t[-1] in _DURATION else float(t)
    except ValueError:
        raise _fail(f"{field}: expected a duration like 14d, 36h or 3600, got {text!r}") \
            from None
    if not 0 < value <= 90 * 86_400:
        raise _fail(f"{field}: must be between 1 s and 90 days, got {text!r}")
    return value


@app.command()
def replay(
    data: Annotated[Path | None, typer.Option(
        "--data", help="Trace file (CSV or CSV.gz); or --prometheus")] = None,
    series: Annotated[list[str] | None, typer.Option(
        "--series", help="Series to replay (repeat for several); with --config, its variants "
                         "(each named after a series)")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="The YAML `forescale serve` takes: every variant, group, quota, "
                         "behaviour and schedule of it is replayed")] = None,
    prometheus: Annotated[str | None, typer.Option(
        "--prometheus", help="Read each variant's history from this Prometheus (with --config) "
                             "instead of a trace file")] = None,
    since: Annotated[str, typer.Option(
        "--since", help="With --prometheus: how much history to replay (e.g. 14d)")] = "14d",
    until: Annotated[float | None, typer.Option(
        "--until", help="With --prometheus: end of the history, epoch seconds (default: "
                        "now)")] = None,
    profile: Annotated[Path | None, typer.Option(help="VariantProfile YAML (without "
                                                      "--config)")] = None,
    cold_start: Annotated[float | None, typer.Option(
        "--cold-start", help="Cold start override, seconds (0-3600)")] = None,
    slo_target: Annotated[float, typer.Option(
        "--slo-target", min=0.5, max=0.9999, help="SLO attainment target (without "
                                                  "--config)")] = 0.99,
    policies: Annotated[str, typer.Option(help="Comma-separated policies")] =
        "forescale,hpa-seed,hpa-default,keda-queue,oracle",
    iso_slo: Annotated[bool, typer.Option(
        "--iso-slo", help="Sweep each reactive peer's target to forescale's SLO")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout")] = False,
    plot_out: Annotated[Path | None, typer.Option(
        "--plot", help="Write a PNG of the first variant here")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write a PNG per variant, summary.md and decisions.jsonl into this "
                         "folder (created; its parent must exist)")] = None,
    seed: Annotated[int, typer.Option(help="Arrival randomness seed")] = 0,
    warmup: Annotated[str, typer.Option(
        "--warmup", help="Simulated but not scored, e.g. 1d (default 0)")] = "0",
) -> None:
    """What `forescale serve` would have done on a trace or on Prometheus history, against
    the HPA (seed and default behaviour), a KEDA-style queue scaler and an oracle."""
    from rich.progress import Progress

    from controller.replay import (
        POLICIES,
        ReplayError,
        check_output,
        plot,
        run_replay,
        write_report,
    )
    from forecaster.trace import TraceError

    chosen = _replay_args(policies, POLICIES, data, prometheus, config, series, profile)
    warmup_s = 0.0 if warmup.strip() in ("0", "") else _duration_s(warmup, "--warmup")
    cfg = None
    try:
        check_output(plot_out, "--plot")
        check_output(report, "--report")
        if config is not None:
            cfg = load_config(config)
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("replay", total=None)

            def progress(msg: str) -> None:
                bar.update(task, description=msg)

            if prometheus is not None:
                assert cfg is not None
                from controller.replay.prom import run_prometheus_replay

                results = run_prometheus_replay(
                    cfg, prometheus, _duration_s(since, "--since"), policies=chosen,
                    iso_slo=iso_slo, progress=progress, seed=seed, cold_start_s=cold_start,
                    warmup_s=warmup_s, now=until)
            else:
                assert data is not None
                results = run_replay(data, series or (), config=cfg, profile_path=profile,
                                     cold_start_s=cold_start, slo_target=slo_target,
                                     policies=chosen, iso_slo=iso_slo, progress=progress,
                                     seed=seed, warmup_s=warmup_s)
    except (TraceError, ReplayError, ConfigError) as exc:
        raise _fail(str(exc)) from None
    if plot_out is not None and results:
        plot(results[0], plot_out)
        err.print(f"plot written to {plot_out}")
    if report is not None:
        write_report(results, report)
        err.print(f"report written to {report}/summary.md")
    _show_replay(results, as_json)


def _replay_args(policies: str, known: Sequence[str], data: Path | None,
                 prometheus: str | None, config: Path | None, series: list[str] | None,
                 profile: Path | None) -> list[str]:
    """The replay's policies, once its options are known to fit together."""
    chosen = [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in known]
    if unknown or not chosen:
        raise _fail(f"--policies: unknown {unknown or policies!r}; allowed: {', '.join(known)}")
    if (data is None) == (prometheus is None):
        raise _fail("give exactly one of --data (a trace file) and --prometheus (a URL)")
    if prometheus is not None and config is None:
        raise _fail("--prometheus needs --config (the variants and their PromQL)")
    if config is not None and (series or profile is not None):
        raise _fail("--config names the variants and their profiles: drop --series/--profile")
    if config is None and not series:
        raise _fail("--series: name the series to replay (or give --config)")
    return chosen


def _show_replay(results: Sequence[Any], as_json: bool) -> None:
    if as_json:
        doc = results[0].to_json() if len(results) == 1 else \
            {"variants": [r.to_json() for r in results]}
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    from controller.replay import render_table

    for result in results:
        _print_table(render_table(result))
        # How each policy ran (forescale's quantiles, models, states) and how much the load
        # jumps: what a reader needs to trust or question the figures above.
        for note in result.notes:
            out.print(note, markup=False, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["app", "main"]
