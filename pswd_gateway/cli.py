"""The ``pswd-gateway`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from pswd_gateway import __version__
from pswd_gateway.config import DEFAULT_CONFIG, load_config
from pswd_gateway.errors import ConfigError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="PSWD gateway: makes an AI data centre a good citizen of the power grid.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check configuration files.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks behind docs/benchmarks.md.")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Gateway TOML file (default: the embedded demo config)."),
]


def _version(value: bool) -> None:
    if value:
        print(f"pswd-gateway {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    del version


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the gateway daemon (what systemd starts)."""
    from pswd_gateway.daemon import run_gateway  # noqa: PLC0415 - keep `config check` fast

    raise typer.Exit(asyncio.run(run_gateway(config)))


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="The TOML file to check.")] = DEFAULT_CONFIG,
) -> None:
    """Print OK, or every problem with its TOML path (exit status 2)."""
    problems: list[tuple[str, str]] = []
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        problems = exc.problems
    else:
        from pydantic import ValidationError  # noqa: PLC0415

        from pswd_gateway.config import format_validation_error  # noqa: PLC0415
        from pswd_gateway.simulation.config import SimulationConfig  # noqa: PLC0415

        try:
            SimulationConfig.model_validate(cfg.simulation)
        except ValidationError as exc:
            problems = format_validation_error(exc, prefix="simulation")
    if not problems:
        print("OK")
        return
    for path, message in problems:
        print(f"{path}: {message}" if path else f"{file}: {message}")
    raise typer.Exit(2)


@app.command()
def simulate(
    config: ConfigOption = None,
    write_trace: Annotated[
        Path | None,
        typer.Option(help="Write the IT-load trace as CSV (t_s,it_power_mw) and exit."),
    ] = None,
    duration_s: Annotated[float, typer.Option(min=0.001, help="Trace length.")] = 3600.0,
    step_ms: Annotated[float, typer.Option(min=1.0, help="Trace sample step.")] = 10.0,
) -> None:
    """Run the site's digital twin: Modbus TCP and Redfish servers with physics behind them."""
    from pswd_gateway.logging import configure_logging  # noqa: PLC0415
    from pswd_gateway.simulation.config import SimulationConfig  # noqa: PLC0415
    from pswd_gateway.simulation.trace import write_trace_csv  # noqa: PLC0415
    from pswd_gateway.simulation.twin import run_twin  # noqa: PLC0415

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(exc)
    sim = SimulationConfig.model_validate(cfg.simulation)
    if write_trace is not None:
        write_trace_csv(sim, write_trace, duration_s, step_ms / 1000.0)
        print(f"wrote {write_trace}")
        return
    configure_logging(cfg.logging.level, cfg.logging.format)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_twin(sim))


@app.command()
def demo(
    config: ConfigOption = None,
    duration_s: Annotated[
        float | None, typer.Option(help="Stop by itself after this many seconds.")
    ] = None,
) -> None:
    """Start the twin and the gateway on loopback and show what happens, live (Ctrl-C stops)."""
    from pswd_gateway.demo import run_demo  # noqa: PLC0415

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(exc)
    raise typer.Exit(asyncio.run(run_demo(cfg, config or DEFAULT_CONFIG, duration_s)))


@bench_app.command("poll")
def bench_poll(
    devices: Annotated[
        list[int], typer.Option("--devices", "-n", help="Device counts to measure (repeatable).")
    ],
    interval_ms: Annotated[int, typer.Option(min=10, help="Poll interval.")] = 100,
    duration_s: Annotated[float, typer.Option(min=1.0, help="Measured time per count.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Poll N real Modbus servers from the twin and report lateness p50/p99/max and CPU."""
    from pswd_gateway.bench.poll import run_poll_bench  # noqa: PLC0415

    raise typer.Exit(asyncio.run(run_poll_bench(devices, interval_ms, duration_s, as_json)))


def _fail(exc: ConfigError) -> NoReturn:
    for path, message in exc.problems:
        print(f"{path}: {message}" if path else f"{exc.source}: {message}", file=sys.stderr)
    raise typer.Exit(2)


def main() -> None:
    app()
