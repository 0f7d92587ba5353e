"""The ``pswd-gateway`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from pswd_gateway import __version__
from pswd_gateway.cli_workload import workload_app
from pswd_gateway.config import DEFAULT_CONFIG, load_config
from pswd_gateway.errors import ConfigError

if TYPE_CHECKING:
    from pswd_gateway.config import GatewayConfig
    from pswd_gateway.security.zones import Listener, Policy

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="PSWD gateway: makes an AI data centre a good citizen of the power grid.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check configuration files.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks behind docs/benchmarks.md.")
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens of the workload API.")
api_app = typer.Typer(no_args_is_help=True, help="The workload API's OpenAPI document.")
audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")
app.add_typer(workload_app, name="workload")
app.add_typer(token_app, name="token")
app.add_typer(api_app, name="api")
app.add_typer(audit_app, name="audit")
certs_app = typer.Typer(no_args_is_help=True, help="Certificates of the gateway's listeners.")
opcua_app = typer.Typer(no_args_is_help=True, help="OPC UA users and certificates.")
iec61850_app = typer.Typer(no_args_is_help=True, help="IEC 61850: the ICD file.")
app.add_typer(iec61850_app, name="iec61850")
app.add_typer(certs_app, name="certs")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Gateway TOML file (default: the embedded demo config)."),
]


@iec61850_app.command("icd")
def iec61850_icd(
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write.")] = Path(
        "docs/pswd-gateway.icd"
    ),
) -> None:
    """Write the ICD (SCL) of the served model (checked in as docs/pswd-gateway.icd)."""
    from pswd_gateway.northbound.iec61850.icd import write_icd  # noqa: PLC0415

    write_icd(out)
    typer.echo(f"wrote {out}")


app.add_typer(opcua_app, name="opcua")


CertsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Use this certificate directory instead of the config's opcua.certs_dir.",
        show_default=False,
    ),
]


@dataclass(frozen=True, slots=True)
class _CertsDir:
    """The certificate directory a ``certs`` command works on, and why that one."""

    root: Path
    origin: str
    """Said after the paths printed: ``the gateway's opcua.certs_dir from config/demo.toml``."""
    flags: str
    """The options that select it again, for the commands suggested in the output."""


def _certs_dir(directory: Path | None, config: Path | None) -> _CertsDir:
    """``--dir`` if given, else the config's ``opcua.certs_dir`` resolved as the OPC UA server
    resolves it. With both, ``--dir`` wins and a differing configured directory is named."""
    from pswd_gateway.security.certs import resolve_certs_dir  # noqa: PLC0415

    configured: Path | None = None
    if directory is None or config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            _fail(exc)
        configured = resolve_certs_dir(cfg.opcua.certs_dir)
    source = _shown(config or DEFAULT_CONFIG)
    if directory is None:
        assert configured is not None
        flags = "" if config is None else f" --config {shlex.quote(str(config))}"
        return _CertsDir(configured, f"the gateway's opcua.certs_dir from {source}", flags)
    if configured is not None and configured.resolve() != directory.resolve():
        typer.echo(
            f"note: --dir wins; {source} has opcua.certs_dir {_shown(configured)}, "
            f"so a gateway started with it does not read {_shown(directory)}",
            err=True,
        )
    return _CertsDir(directory, "given with --dir", f" --dir {shlex.quote(str(directory))}")


def _shown(path: Path) -> Path:
    """PATH relative to the working directory when it lies below it, else absolute."""
    absolute = path.resolve()
    with contextlib.suppress(ValueError):
        return absolute.relative_to(Path.cwd().resolve())
    return absolute


@certs_app.command("init")
def certs_init(
    config: ConfigOption = None,
    directory: CertsDirOption = None,
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Host name or address (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing certificate.")] = False,
) -> None:
    """Write the OPC UA server certificate and key into the gateway's opcua.certs_dir (kept if
    present) and make its trust folders. A relative certs_dir is taken from the working
    directory, as the gateway does. `make demo` writes them on its first start. The gateway
    loads its certificate when it starts: after --force, restart it."""
    from pswd_gateway.security.certs import OpcUaCertPaths, init_opcua_certs  # noqa: PLC0415
    from pswd_gateway.security.pki import SiteCa  # noqa: PLC0415

    where = _certs_dir(directory, config)
    existed = OpcUaCertPaths(where.root).exists()
    paths = init_opcua_certs(where.root, host, force=force)
    verb = "kept" if existed and not force else "wrote"
    typer.echo(f"{verb} {_shown(paths.cert)} and {_shown(paths.key)} ({where.origin})")
    cfg = load_config(config) if config is not None else None
    ca = SiteCa(where.root)
    had_ca = ca.exists()
    ca.init(cfg.site.name if cfg is not None else "pswd-gateway", host)
    typer.echo(
        f"{'kept' if had_ca else 'wrote'} the site CA {_shown(ca.cert_path)} "
        f"(key {_shown(ca.key_path)}, revocation list {_shown(ca.crl_path)}) and the TLS server "
        f"certificate {_shown(ca.server_cert)}"
    )
    if existed and force:
        typer.echo("a running gateway serves the old certificate until it restarts")
    typer.echo(
        f"trusted client certificates go in {_shown(paths.trusted)} "
        f"(`pswd-gateway certs trust --opcua CERT{where.flags}`)"
    )


@certs_app.command("issue")
def certs_issue(
    name: Annotated[str, typer.Argument(help="The holder: a person, a service (the cert's CN).")],
    role: Annotated[
        str, typer.Option(help="viewer, submitter, operator or admin (the API's roles).")
    ],
    config: ConfigOption = None,
    directory: CertsDirOption = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Valid for this many days.")] = 365,
) -> None:
    """Issue a client certificate with a role, signed by the site CA (mutual TLS: a listener
    with tls_client_ca maps it to that identity). Writes clients/NAME.pem and NAME.key."""
    import re  # noqa: PLC0415

    from pswd_gateway.security.pki import SiteCa  # noqa: PLC0415

    if role not in {"viewer", "submitter", "operator", "admin"}:
        typer.echo(f"--role: {role!r} is not a role (viewer, submitter, operator, admin)", err=True)
        raise typer.Exit(2)
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        typer.echo(f"NAME: {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -", err=True)
        raise typer.Exit(2)
    ca = SiteCa(_certs_dir(directory, config).root)
    try:
        issued = ca.issue_client(name, role, days=days)
    except (FileNotFoundError, TypeError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"issued {name} ({role}), serial {issued.serial}, valid until {issued.not_after[:10]}: "
        f"{_shown(Path(issued.path))} and {_shown(Path(issued.path).with_suffix('.key'))}"
    )


@certs_app.command("list")
def certs_list(config: ConfigOption = None, directory: CertsDirOption = None) -> None:
    """What the site CA issued, with expiry and revocation."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from pswd_gateway.security.pki import SiteCa  # noqa: PLC0415

    ca = SiteCa(_certs_dir(directory, config).root)
    table = Table(title=f"issued by {_shown(ca.cert_path)}", title_justify="left")
    for column in ("name", "role", "serial", "valid until", "revoked"):
        table.add_column(column)
    for row in ca.issued():
        table.add_row(row.name, row.role, row.serial, row.not_after[:19], row.revoked_at or "")
    Console(width=140).print(table)


@certs_app.command("revoke")
def certs_revoke(
    which: Annotated[str, typer.Argument(help="A holder's name or a serial (hex).")],
    config: ConfigOption = None,
    directory: CertsDirOption = None,
) -> None:
    """Revoke certificates and re-sign the CRL; a listener with tls_crl refuses them from its
    next connection on, without a restart."""
    from pswd_gateway.security.pki import SiteCa  # noqa: PLC0415

    ca = SiteCa(_certs_dir(directory, config).root)
    revoked = ca.revoke(which)
    if not revoked:
        typer.echo(f"{which}: no unrevoked certificate has this name or serial", err=True)
        raise typer.Exit(1)
    for row in revoked:
        typer.echo(f"revoked {row.name} ({row.role}), serial {row.serial}")
    typer.echo(f"wrote {_shown(ca.crl_path)}")


@certs_app.command("trust")
def certs_trust(
    opcua: Annotated[Path, typer.Option("--opcua", help="A client certificate (DER or PEM).")],
    config: ConfigOption = None,
    directory: CertsDirOption = None,
) -> None:
    """Admit an OPC UA client certificate: a copy goes into opcua/trusted/ under the gateway's
    opcua.certs_dir (a relative one is taken from the working directory, as the gateway does).
    No restart needed: the running gateway reads that folder again when a certificate it does
    not trust yet connects, so the client gets in at its next attempt. A certificate deleted
    from trusted/ can still get in until the gateway restarts."""
    from pswd_gateway.security.certs import OpcUaCertPaths, trust_opcua_client  # noqa: PLC0415

    where = _certs_dir(directory, config)
    try:
        target = trust_opcua_client(where.root, opcua)
    except (OSError, ValueError) as exc:
        typer.echo(f"{opcua}: not a readable certificate: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"trusted: {_shown(target)} ({where.origin})")
    if OpcUaCertPaths(where.root).exists():
        typer.echo("a running gateway admits the client at its next connection attempt")
    else:
        typer.echo(
            f"note: {_shown(where.root)} has no OPC UA server certificate yet; a gateway "
            "that reads this directory writes (`make demo`) or needs (`certs init`) one",
            err=True,
        )


@opcua_app.command("nodeset")
def opcua_nodeset(
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write.")] = Path(
        "docs/pswd-gateway.NodeSet2.xml"
    ),
) -> None:
    """Write the information model as a NodeSet2 XML file (checked in under docs/)."""
    from pswd_gateway.config import GatewayConfig  # noqa: PLC0415
    from pswd_gateway.northbound.opcua.server import OpcUaServer  # noqa: PLC0415

    asyncio.run(OpcUaServer.write_nodeset(GatewayConfig(), out))
    typer.echo(f"wrote {out}")


@opcua_app.command("client-cert")
def opcua_client_cert(
    name: Annotated[str, typer.Option(help="File stem and common name.")],
    uri: Annotated[str, typer.Option(help="The client's application URI.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Directory.")] = Path(),
) -> None:
    """Make a self-signed client certificate (NAME.der) and key (NAME.pem) for a script."""
    from pswd_gateway.security.certs import make_client_certificate  # noqa: PLC0415

    cert, key = make_client_certificate(out, name, uri)
    typer.echo(f"wrote {cert} and {key}; admit it with `pswd-gateway certs trust --opcua {cert}`")


@opcua_app.command("cert-user")
def opcua_cert_user(
    cert: Annotated[Path, typer.Option(help="The user's certificate (DER or PEM).")],
    name: Annotated[str, typer.Option(help="User name.")],
    role: Annotated[str, typer.Option(help="viewer, operator, engineer or admin.")],
) -> None:
    """Print the [[opcua.certificate_users]] entry that maps a certificate to a role."""
    import hashlib  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    data = cert.read_bytes()
    try:
        parsed = x509.load_der_x509_certificate(data)
    except ValueError:
        try:
            parsed = x509.load_pem_x509_certificate(data)
        except ValueError:
            typer.echo(f"{cert}: not a certificate", err=True)
            raise typer.Exit(2) from None
    digest = hashlib.sha256(parsed.public_bytes(serialization.Encoding.DER)).hexdigest()
    typer.echo("[[opcua.certificate_users]]")
    typer.echo(f'name = "{name}"\nrole = "{role}"\nsha256 = "{digest}"')


@opcua_app.command("password")
def opcua_password(
    name: Annotated[str, typer.Option(help="User name.")],
    role: Annotated[str, typer.Option(help="viewer, operator, engineer or admin.")],
) -> None:
    """Hash a password (asked for twice) and print the [[opcua.users]] entry."""
    from pswd_gateway.config import OpcUaUserConfig  # noqa: PLC0415
    from pswd_gateway.security.passwords import hash_password  # noqa: PLC0415

    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    entry = {"name": name, "role": role, "password_hash": hash_password(password)}
    from pydantic import ValidationError  # noqa: PLC0415

    try:
        OpcUaUserConfig.model_validate(entry)
    except ValidationError as exc:
        typer.echo(f"refused: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    typer.echo("[[opcua.users]]")
    for key, value in entry.items():
        typer.echo(f'{key} = "{value}"')


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
def zones(
    config: ConfigOption = None,
    output: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="table (default), dot (Graphviz: `| dot -Tsvg > zones.svg`), nft (an nftables "
            "input chain that lets each conduit's networks reach its listener), json.",
        ),
    ] = "table",
) -> None:
    """Print the zones and conduits in force: who may reach which listener, and do what."""
    import json  # noqa: PLC0415

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(exc)
    policy = cfg.policy()
    from pswd_gateway.security.zones import LISTENERS  # noqa: PLC0415

    endpoints: dict[Listener, str] = {
        name: f"{listener.host}:{listener.port}"
        for name in LISTENERS
        if (listener := getattr(cfg.listeners, name)).enabled
    }
    if output == "dot":
        sys.stdout.write(policy.dot(endpoints))
    elif output == "json":
        print(json.dumps({"endpoints": endpoints, "conduits": policy.rows()}, indent=2))
    elif output == "nft":
        sys.stdout.write(_nft(policy, cfg))
    elif output == "table":
        _zones_table(policy.rows(), endpoints)
    else:
        print(f"--format: unknown {output!r} (table, dot, nft, json)", file=sys.stderr)
        raise typer.Exit(2)


def _zones_table(rows: list[dict[str, str]], endpoints: dict[Listener, str]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="zones and conduits", title_justify="left")
    for column in ("conduit", "zone", "kind", "networks", "listener", "endpoint", "access"):
        table.add_column(column)
    for row in rows:
        endpoint = next((v for k, v in endpoints.items() if k == row["listener"]), "(disabled)")
        table.add_row(
            row["conduit"], row["zone"], row["kind"], row["networks"], row["listener"],
            endpoint, row["access"],
        )  # fmt: skip
    Console(width=140).print(table)


def _nft(policy: Policy, cfg: GatewayConfig) -> str:
    """An nftables table that admits each conduit's networks to its listener's port only."""
    lines = [
        "# generated by `pswd-gateway zones --format nft`: review, then `nft -f FILE`",
        "table inet pswd_gateway {",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
    ]
    from pswd_gateway.security.zones import LISTENERS  # noqa: PLC0415

    for name in LISTENERS:
        listener = getattr(cfg.listeners, name)
        if not listener.enabled:
            continue
        nets = policy.networks_of(name)
        for family, proto in ((4, "ip"), (6, "ip6")):
            chosen = [str(n) for n in nets if n.version == family]
            if chosen:
                lines.append(
                    f"    tcp dport {listener.port} {proto} saddr {{ {', '.join(chosen)} }} accept"
                    f"  # {name}"
                )
        lines.append(f"    tcp dport {listener.port} drop  # {name}: no conduit")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


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
    from pswd_gateway.tasks import PARENT_PID_ENV, die_with_parent  # noqa: PLC0415

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
    parent = os.environ.get(PARENT_PID_ENV, "")
    if parent.isdigit():  # started by a benchmark or a test: end with it (SIGTERM: cleanly)
        die_with_parent(int(parent), signal.SIGTERM)
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


@bench_app.command("api")
def bench_api(
    rate: Annotated[float, typer.Option(min=1.0, help="POST requests per second.")] = 200.0,
    duration_s: Annotated[float, typer.Option(min=1.0, help="Measured time.")] = 20.0,
    preload: Annotated[int, typer.Option(min=0, help="Workloads journalled first.")] = 1000,
    solver: Annotated[
        list[int] | None,
        typer.Option("--solver", help="Also time the MILP re-plan for N workloads (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """POST latency at a fixed rate against a real `pswd-gateway run`, and solver times."""
    from pswd_gateway.bench.api import run_api_bench  # noqa: PLC0415

    raise typer.Exit(
        asyncio.run(run_api_bench(rate, duration_s, preload, solver or [100, 1000], as_json))
    )


@bench_app.command("smoothing")
def bench_smoothing(
    trace: Annotated[
        Path | None,
        typer.Option(help="IT-load trace, CSV `t_s,it_power_mw` (default: the twin's generator)."),
    ] = None,
    announcements: Annotated[
        Path | None,
        typer.Option(help="JSON list of announcements in trace seconds (see docs/control.md)."),
    ] = None,
    ramp_limit_mw_per_s: Annotated[float, typer.Option(min=0.1)] = 20.0,
    sample_ms: Annotated[
        float, typer.Option(min=1.0, max=1000.0, help="Controller reading interval.")
    ] = 20.0,
    duration_s: Annotated[
        float, typer.Option(min=10.0, max=14_400.0, help="Generated trace length.")
    ] = 3600.0,
    no_optimum: Annotated[
        bool, typer.Option("--no-optimum", help="Skip the perfect-foresight LP.")
    ] = False,
    ideal: Annotated[
        bool,
        typer.Option(
            "--ideal",
            help="Perfect measurement (the old replay) instead of the twin's imperfections.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay an IT-load trace through the predictive and reactive controllers and the
    perfect-foresight optimum (simulated time; by default against the twin's physics with its
    imperfect meters, PCS and devices, as the live site runs)."""
    import json  # noqa: PLC0415

    from pswd_gateway.bench.smoothing import default_setup, render, run_smoothing  # noqa: PLC0415

    setup = default_setup(ramp_limit_mw_per_s, sample_ms / 1000.0)
    try:
        result = run_smoothing(
            trace,
            announcements,
            setup=setup,
            duration_s=duration_s,
            with_optimum=not no_optimum,
            ideal=ideal,
        )
    except ConfigError as exc:
        for where, problem in exc.problems:
            typer.echo(f"{exc.source}: {where}: {problem}" if where else problem, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2) if as_json else render(result))


@bench_app.command("control-latency")
def bench_control_latency(
    duration_s: Annotated[float, typer.Option(min=2.0, help="Length of each phase.")] = 20.0,
    rate: Annotated[
        float, typer.Option(min=1.0, help="API requests/s in the loaded phase.")
    ] = 200.0,
    meter_poll_ms: Annotated[
        int, typer.Option(min=10, max=1000, help="Grid meter and battery poll interval.")
    ] = 100,
    load: Annotated[
        str,
        typer.Option(help="`read`: GET /v1/site and /v1/workloads; `post`: announcements."),
    ] = "read",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Reading→setpoint latency and cycle lateness on the twin, quiet and under API load."""
    from pswd_gateway.bench.control import run_control_bench  # noqa: PLC0415

    if load not in {"read", "post"}:
        typer.echo("--load must be read or post", err=True)
        raise typer.Exit(2)
    raise typer.Exit(asyncio.run(run_control_bench(duration_s, rate, meter_poll_ms, as_json, load)))


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[
        float, typer.Option(min=0.1, help="Run to this far into the twin's run (job at 45 s).")
    ] = 10.0,
    busy_core: Annotated[
        bool, typer.Option("--busy-core", help="Keep one core busy from another process.")
    ] = False,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The whole demo site (twin, gateway with every listener, the ML platform's job) on free
    loopback ports: grid ramp and band, import limit, battery, guard, overruns."""
    from pswd_gateway.bench.soak import run_soak_bench  # noqa: PLC0415

    _bench_exit("soak", run_soak_bench(minutes, as_json, busy_core, config))


def _bench_exit(label: str, run: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a whole-site benchmark; exit with its code, 2 on a config error, 1 on another."""
    from pswd_gateway.errors import PswdError  # noqa: PLC0415

    try:
        code = asyncio.run(run)
    except ConfigError as exc:
        _fail(exc)
    except PswdError as exc:
        typer.echo(f"{label}: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@bench_app.command("flood")
def bench_flood(
    seconds: Annotated[
        float, typer.Option(min=1.0, help="Each listener flooded this long.")
    ] = 15.0,
    connections: Annotated[
        int, typer.Option(min=1, max=1000, help="Connections the flood holds at once.")
    ] = 50,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The whole demo site with each listener flooded in turn, from outside every zone and from
    inside: the control cycle's lateness, the event loop's lag and a legitimate client's
    answers during each flood."""
    from pswd_gateway.bench.flood import run_flood_bench  # noqa: PLC0415

    _bench_exit("flood", run_flood_bench(config, seconds, connections, as_json))


@bench_app.command("dr")
def bench_dr(
    events: Annotated[int, typer.Option(min=1, max=100, help="Import limits per door.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the limits' depths.")] = 2026,
    ffr_cases: Annotated[
        int, typer.Option(min=0, max=20, help="Generated frequency-response cases (0: none).")
    ] = 1,
    door: Annotated[
        list[str] | None,
        typer.Option(
            help="Doors to time (default: all): http, opcua, iec61850, openadr2b, openadr3."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Demand response end to end on the twin: a grid signal through each door to the battery
    setpoint written (p50/p99), delivered/requested per event, the frequency response's step
    time and accuracy."""
    from pswd_gateway.bench.dr import DOORS, run_dr_bench  # noqa: PLC0415

    chosen = tuple(door) if door else DOORS
    unknown = sorted(set(chosen) - set(DOORS))
    if unknown:
        raise typer.BadParameter(f"unknown door {', '.join(unknown)}; choose from {DOORS}")
    raise typer.Exit(run_dr_bench(events, seed, ffr_cases, chosen, as_json=as_json))


@bench_app.command("opcua")
def bench_opcua(
    duration_s: Annotated[float, typer.Option(min=2.0, help="Measured time.")] = 20.0,
    items: Annotated[int, typer.Option(min=1, help="Monitored items at 100 ms.")] = 1000,
    calls: Annotated[int, typer.Option(min=1, help="Method calls timed.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Notifications/s, CPU and control timing with N monitored items; method-call latency."""
    from pswd_gateway.bench.opcua import run_opcua_bench  # noqa: PLC0415

    raise typer.Exit(asyncio.run(run_opcua_bench(duration_s, items, calls, as_json)))


@bench_app.command("iec61850")
def bench_iec61850(
    clients: Annotated[int, typer.Option(min=1, max=100, help="Concurrent MMS clients.")] = 10,
    duration_s: Annotated[float, typer.Option(min=1.0, help="Read time per client.")] = 10.0,
    events: Annotated[int, typer.Option(min=0, help="GOOSE state changes timed.")] = 20,
    attributes: Annotated[
        int, typer.Option(min=0, max=100_000, help="Data attributes pushed per 100 ms batch.")
    ] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """MMS read latency with concurrent clients; time to push N attributes per cycle and what
    it adds to a 20 ms timer's lateness; GOOSE event-to-frame latency on lo."""
    from pswd_gateway.bench.iec61850 import run_iec61850_bench  # noqa: PLC0415

    raise typer.Exit(
        asyncio.run(run_iec61850_bench(clients, duration_s, events, as_json, attributes))
    )


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Option(help="Who holds it (shown in the audit log).")],
    role: Annotated[str, typer.Option(help="viewer, submitter, operator or admin.")],
) -> None:
    """Make a random token; print it once, and the [[api.tokens]] entry that admits it."""
    import secrets  # noqa: PLC0415

    from pswd_gateway.config import ApiTokenConfig  # noqa: PLC0415
    from pswd_gateway.northbound.http_api.security import hash_token  # noqa: PLC0415

    token = "pswd_" + secrets.token_urlsafe(32)
    from pydantic import ValidationError  # noqa: PLC0415

    try:
        entry = ApiTokenConfig(name=name, role=role, sha256=hash_token(token))
    except ValidationError as exc:
        from pswd_gateway.config import format_validation_error  # noqa: PLC0415

        for path, message in format_validation_error(exc):
            print(f"{path}: {message}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"token (give it to {name}; it is not stored anywhere): {token}")
    print()
    print("[[api.tokens]]")
    print(f'name = "{entry.name}"')
    print(f'role = "{entry.role}"')
    print(f'sha256 = "{entry.sha256}"')


@token_app.command("hash")
def token_hash(token: Annotated[str, typer.Argument(help="The token to hash.")]) -> None:
    """Print the SHA-256 that api.tokens stores for TOKEN."""
    from pswd_gateway.northbound.http_api.security import hash_token  # noqa: PLC0415

    print(hash_token(token))


@api_app.command("spec")
def api_spec(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
) -> None:
    """Print the OpenAPI document (docs/api.yaml is this output, checked in)."""
    from pswd_gateway.northbound.http_api.spec import openapi_yaml  # noqa: PLC0415

    text = openapi_yaml()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        print(f"wrote {output}")


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    anchor: Annotated[
        Path | None,
        typer.Option(
            help="The published head to check against (default: audit.anchor beside the "
            "journal, when it exists); also accepts the JSON of an `audit_head` log line's "
            "entry and hash."
        ),
    ] = None,
) -> None:
    """Walk the audit chain in the journal; exit 1 at the first broken link or a truncation."""
    from pswd_gateway.journal import AuditAnchor, Journal, JournalError, anchor_path  # noqa: PLC0415

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(exc)
    path = cfg.storage.journal_path
    if not path.exists():
        print(f"{path}: no journal yet")
        raise typer.Exit(1)
    anchor_file = anchor or anchor_path(path)
    head = None
    if anchor is not None or anchor_file.exists():
        try:
            head = AuditAnchor.loads(anchor_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"{anchor_file}: not an audit anchor: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
    try:
        journal = Journal(path, cfg.storage.journal_synchronous)
    except JournalError as exc:
        print(str(exc), file=sys.stderr)
        raise typer.Exit(1) from None
    try:
        check = journal.check_audit(head)
    finally:
        journal.close()
    if not check.ok:
        print(f"{path}: audit chain broken at entry {check.broken_at} (after {check.count} good "
              f"entries): {check.reason}")  # fmt: skip
        raise typer.Exit(1)
    against = f", holds the anchor's entry {head.entry}" if head is not None else ""
    print(f"OK: {check.count} audit entries, chain intact{against} ({path})")


def _fail(exc: ConfigError) -> NoReturn:
    for path, message in exc.problems:
        print(f"{path}: {message}" if path else f"{exc.source}: {message}", file=sys.stderr)
    raise typer.Exit(2)


def main() -> None:
    app()
