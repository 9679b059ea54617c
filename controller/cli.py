"""The `forescale` command line: serve, demo, validate-config, backtest, replay.

User errors (a bad config, a bad trace file, a bad option) print one clear message and exit 2;
tracebacks are for bugs only.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from controller.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="forescale: predictive, variant-aware autoscaler for LLM inference.")
err = Console(stderr=True)
out = Console()


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
    from controller.runner import build_demo, schedule, serve_http

    _logging(log_level)
    service = build_demo(speed=speed)
    sched = schedule(service, clock_speed=speed)
    sched.start()
    base = f"http://{host}:{port}"

    def hello() -> None:
        out.print(f"[bold green]forescale demo[/] on {base} — replaying the bundled ServeGen "
                  f"trace (Apache-2.0) at {speed:g}x, decisions in dry-run. Try:")
        for path in ("/forecast?variant=servegen-m-small", "/plan", "/variants",
                     "/decisions?limit=5", "/forecast.png?variant=servegen-m-small",
                     "/metrics", "/docs"):
            out.print(f"  curl '{base}{path}'", highlight=False)
        out.print("Ctrl-C stops it.")

    try:
        serve_http(service, host, port, token=None, on_started=hello)
    finally:
        sched.shutdown(wait=False)


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config")],
    port: Annotated[int | None, typer.Option(min=1, max=65535,
                                             help="Override api.port")] = None,
    host: Annotated[str | None, typer.Option(help="Override api.host")] = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Run the service against Prometheus and Kubernetes as configured."""
    from controller.runner import build_production, serve_http, token_for

    _logging(log_level)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    runtime = build_production(cfg)
    runtime.scheduler.start()
    try:
        serve_http(runtime.service, host or cfg.api.host, port or cfg.api.port,
                   token_for(cfg))
    finally:
        runtime.stop()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["app", "json", "main"]
