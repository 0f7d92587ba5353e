"""``make demo``: the simulated site and the gateway on loopback, shown live.

The twin runs in its own process (as real devices would), the gateway in this one. One Ctrl-C
stops both. Logs go to ``<state_dir>/logs/`` so the live view stays readable.

Playing the ML platform's part, the demo announces a 200 MW training job through the real HTTP
API (with the demo submitter token), reports its start when the site says it is ready, and
shows it move through its states next to the plant.

Playing the utility's part (:func:`_play_utility`), it reads the heat offer, turns the fast
frequency response on over HTTP before the twin's frequency dip (120 s), issues a
demand-response event from the demo's own OpenADR 2.0b VTN (openleadr's, on loopback; the
gateway's VEN polls it), and asks for heat at 85 °C; the signals, their delivery reports and
the frequency response show in the live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pswd_gateway.config import GatewayConfig, ModbusDeviceConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain import signals as sig
from pswd_gateway.domain.points import Quality
from pswd_gateway.domain.units import to_mw
from pswd_gateway.logging import configure_logging
from pswd_gateway.ml_platform import play_demo_job, trace_job, twin_rhythm
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.security.certs import OpcUaCertPaths, init_opcua_certs, resolve_certs_dir
from pswd_gateway.simulation.twin import spawn_twin, stop_process
from pswd_gateway.simulation.twin import started_at as twin_started_at
from pswd_gateway.simulation.utility import with_vens
from pswd_gateway.simulation.vtn2b import Vtn2b

__all__ = ["run_demo"]

TWIN_START_TIMEOUT_S = 30.0
OPERATOR_TOKEN = "pswd-demo-operator"  # noqa: S105 -- the demo's published token
UTILITY_SCRIPT_S = {"offer": 20.0, "ffr": 75.0, "dr": 90.0, "heat": 150.0}
"""Twin time (s) of each of the utility's steps; the twin's frequency dip is at 120 s."""
DR_DEPTH_MW = 30.0
DR_HOLD_S = 90.0


def _endpoints(cfg: GatewayConfig) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for d in cfg.devices:
        if isinstance(d, ModbusDeviceConfig):
            out.append((d.name, d.host, d.port))
        else:
            url = urlsplit(d.base_url)
            out.append((d.name, url.hostname or "127.0.0.1", url.port or 80))
    return out


async def _twin_started(proc: asyncio.subprocess.Process, log: Path, since: float) -> bool:
    """Whether *this* twin started (its log says so): the ports answering may be another
    process's, left over from an earlier run, while this one failed to bind them and exited."""
    deadline = time.monotonic() + TWIN_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if twin_started_at(log, since) is not None:
            return True
        if proc.returncode is not None:
            return False
        await asyncio.sleep(0.1)
    return False


async def _wait_for_ports(
    endpoints: list[tuple[str, str, int]], proc: asyncio.subprocess.Process, timeout_s: float
) -> list[str]:
    """Wait until every endpoint accepts TCP; the names of those that never did."""
    pending = list(endpoints)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline and proc.returncode is None:
        still: list[tuple[str, str, int]] = []
        for name, host, port in pending:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
            except (OSError, TimeoutError):
                still.append((name, host, port))
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        pending = still
        if pending:
            await asyncio.sleep(0.2)
    return [name for name, _, _ in pending]


class EventLines(deque[str]):
    """The latest lines of the live view; :attr:`total` counts every line ever added (the
    plain printer prints each once)."""

    def __init__(self, maxlen: int) -> None:
        super().__init__(maxlen=maxlen)
        self.total = 0

    def append(self, line: str) -> None:
        super().append(line)
        self.total += 1


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``; ``—`` when unknown."""
    return "—" if value is None else format(value, spec)


def _mw(watts: float | None, spec: str = ",.1f") -> str:
    """Watts (or W/s) shown in MW (MW/s)."""
    return _fmt(None if watts is None else to_mw(watts), spec)


def _percent(ratio: float | None) -> str:
    return _fmt(None if ratio is None else ratio * 100, ",.1f")


def _view(gw: Gateway, started: float, events: Sequence[str] = ()) -> Group:
    cfg = gw.config
    site = cfg.site
    snap = gw.store.snapshot(time.time())

    def v(signal: sig.Signal) -> float | None:
        return snap.usable(signal, site)

    plant = Table(title=f"{site.name} — live (Ctrl-C stops)", title_justify="left", expand=False)
    control = gw.control.stats if gw.control is not None else None
    ramp = control.grid_ramp_w_per_s() if control is not None else None
    setpoint = control.last.bess_setpoint_w if control and control.last else None
    for col in (
        "grid MW",
        "limit MW",
        "ramp MW/s",
        "IT MW",
        "BESS set MW",
        "BESS MW",
        "SoC %",
        "CHW supply °C",
        "heat export MW",
        "heat supply °C",
        "grid Hz",
        "FFR MW",
    ):
        plant.add_column(col, justify="right")
    plant.add_row(
        _mw(v(sig.GRID_POWER)),
        _mw(v(sig.IMPORT_LIMIT_IN_FORCE), ",.1f"),
        _ramp_cell(ramp, v(sig.GRID_RAMP_LIMIT)),
        _mw(v(sig.IT_POWER)),
        _mw(setpoint),
        _mw(v(sig.BESS_POWER)),
        _percent(v(sig.BESS_SOC)),
        _fmt(v(sig.CHW_SUPPLY_TEMP), ",.2f"),
        _mw(v(sig.HEAT_EXPORT_POWER)),
        _fmt(v(sig.HEAT_SUPPLY_TEMP), ",.1f"),
        _fmt(v(sig.GRID_FREQUENCY), ",.3f"),
        _mw(control.ffr_response_w if control is not None else None),
    )
    devices = Table(title="devices", title_justify="left")
    for col in (
        "device",
        "quality",
        "polls",
        "errors",
        "overruns",
        "lateness p50 ms",
        "p99 ms",
        "max ms",
    ):
        devices.add_column(col, justify="right" if col != "device" else "left")
    style = {Quality.GOOD: "green", Quality.QUESTIONABLE: "yellow", Quality.INVALID: "red"}
    qualities = snap.worst_quality_by_device()
    for name, poller in gw.pollers.items():
        s = poller.stats
        worst = qualities.get(name)
        pct = s.lateness_percentiles()
        devices.add_row(
            name,
            Text(worst.value, style=style[worst]) if worst else Text("no data", style="dim"),
            str(s.polls_total),
            str(s.errors_total),
            str(s.overruns_total),
            f"{pct.p50 * 1e3:.2f}",
            f"{pct.p99 * 1e3:.2f}",
            f"{pct.max * 1e3:.2f}",
        )
    footer = Text(f"uptime {time.monotonic() - started:,.0f} s", style="dim")
    return Group(plant, devices, _workloads_view(gw, events), footer)


def _ramp_cell(ramp_w_per_s: float | None, limit_w_per_s: float | None) -> Text:
    """``+3.2 / 20`` (MW/s), red when over the limit."""
    if ramp_w_per_s is None or limit_w_per_s is None:
        return Text("—")
    style = "red" if abs(ramp_w_per_s) > limit_w_per_s else "green"
    return Text(f"{to_mw(ramp_w_per_s):+.1f} / {to_mw(limit_w_per_s):g}", style=style)


def _workloads_view(gw: Gateway, events: Sequence[str]) -> Group:
    table = Table(title="workloads (HTTP API)", title_justify="left")
    for col in ("id", "name", "state", "start", "battery MW / MWh", "CO2e kg", "why"):
        table.add_column(col, justify="left" if col in {"id", "name", "state", "why"} else "right")
    now = datetime.now(UTC)
    service = gw.workloads
    for w in service.active.values() if service is not None else ():
        a = w.allocation
        if a is None:
            continue
        due = (a.scheduled_start - now).total_seconds()
        table.add_row(
            w.id,
            w.announcement.name or w.announcement.workload_type,
            w.state.value,
            f"in {due:,.0f} s" if due > 0 else f"{-due:,.0f} s ago",
            f"{a.battery_reservation.power_mw:,.0f} / {a.battery_reservation.energy_mwh:.3f}",
            f"{a.expected_carbon_kg:,.0f}",
            a.explanation.binding_constraint,
        )
    lines = Text("\n".join(events) if events else "no events yet", style="dim")
    return Group(table, lines)


def _plain_line(gw: Gateway) -> str:
    site = gw.config.site
    snap = gw.store.snapshot(time.time())

    def v(signal: sig.Signal) -> float | None:
        return snap.usable(signal, site)

    stats = gw.control.stats if gw.control is not None else None
    ramp = stats.grid_ramp_w_per_s() if stats is not None else None
    return (
        f"grid {_mw(v(sig.GRID_POWER))} / {_mw(v(sig.IMPORT_LIMIT_IN_FORCE), ',.1f')} MW  "
        f"ramp {_mw(ramp)} / {_mw(v(sig.GRID_RAMP_LIMIT), 'g')} MW/s  "
        f"IT {_mw(v(sig.IT_POWER))} MW  BESS {_mw(v(sig.BESS_POWER))} MW  "
        f"SoC {_percent(v(sig.BESS_SOC))} %  {_fmt(v(sig.GRID_FREQUENCY), ',.3f')} Hz  "
        f"FFR {_mw(stats.ffr_response_w if stats is not None else None)} MW  "
        f"heat {_fmt(v(sig.HEAT_SUPPLY_TEMP), ',.1f')} °C"
    )


async def run_demo(cfg: GatewayConfig, config_path: Path, duration_s: float | None) -> int:
    """Run twin + gateway until Ctrl-C (or ``duration_s``); returns an exit code."""
    console = Console()
    if not console.is_terminal:  # a line a second: wide enough not to wrap
        console = Console(width=max(console.width, 140))
    log_dir = cfg.storage.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    gateway_log = (log_dir / "gateway.log").open("a", encoding="utf-8")
    twin_log = (log_dir / "twin.log").open("ab")
    configure_logging(cfg.logging.level, "json", stream=gateway_log)
    console.print(
        f"[bold]pswd-gateway demo[/] — site [cyan]{cfg.site.name}[/], config {config_path}"
    )
    console.print("starting the site's digital twin …")
    spawned = time.time() - 1.0  # the twin's own t = 0 comes after this
    proc = await spawn_twin(config_path, twin_log)
    gw: Gateway | None = None
    vtn = Vtn2b(vtn_id="PSWD-DEMO-VTN")
    try:
        await vtn.start()
        cfg = with_vens(cfg, vtn, None)
        missing = await _wait_for_ports(_endpoints(cfg), proc, TWIN_START_TIMEOUT_S)
        if not missing and not await _twin_started(proc, log_dir / "twin.log", spawned):
            missing = ["its own devices: another process may hold the demo's ports"]
        if missing:
            console.print(
                f"[red]the twin did not start[/] ({', '.join(missing)} not listening); "
                f"see {log_dir / 'twin.log'}"
            )
            return 1
        if cfg.listeners.opcua.enabled:
            paths = OpcUaCertPaths(resolve_certs_dir(cfg.opcua.certs_dir))
            if not paths.exists():
                init_opcua_certs(paths.root)
                console.print(f"wrote the OPC UA server certificate to {paths.cert}")
        gw = Gateway(cfg, config_path=config_path, heap=HeapKeeper())
        await gw.start()
        _print_listeners(console, cfg, gw, log_dir)
        events = EventLines(maxlen=10)
        twin_t0 = twin_started_at(log_dir / "twin.log")
        parts = [
            asyncio.create_task(
                _play_ml_platform(gw, events, log_dir / "twin.log"), name="demo-job"
            ),
            asyncio.create_task(_play_utility(gw, vtn, twin_t0, events), name="demo-utility"),
        ]
        try:
            await _show(console, gw, duration_s, events)
        finally:
            for part in parts:
                part.cancel()
            for part in parts:
                with contextlib.suppress(asyncio.CancelledError):
                    await part
    finally:
        if gw is not None:
            await gw.stop()
        await vtn.stop()
        await stop_process(proc)
        gateway_log.close()
        twin_log.close()
        console.print("stopped: gateway and twin")
    return 0


def _print_listeners(console: Console, cfg: GatewayConfig, gw: Gateway, log_dir: Path) -> None:
    table = Table(title="listening (loopback only)", title_justify="left")
    table.add_column("service")
    table.add_column("address")
    if gw.metrics_listener is not None:
        base = f"http://{gw.metrics_listener.host}:{gw.metrics_listener.port}"
        table.add_row("Prometheus metrics", f"{base}/metrics")
        table.add_row("health / readiness", f"{base}/healthz  {base}/readyz")
    if gw.api_listener is not None:
        api = f"http://{gw.api_listener.host}:{gw.api_listener.port}"
        table.add_row("workload API", f"{api}/v1  (token pswd-demo-submitter, demo only)")
        table.add_row(
            "follow it",
            f"pswd-gateway workload watch --url {api} --token pswd-demo-viewer --since 0",
        )
    if gw.opcua is not None:
        table.add_row(
            "OPC UA",
            f"{gw.opcua.endpoint}  (Basic256Sha256 SignAndEncrypt, user viewer / "
            "pswd-demo-viewer, demo only)",
        )
    if gw.mms is not None:
        table.add_row("IEC 61850 MMS", f"{gw.mms.host}:{gw.mms.port}  (IED {gw.mms.ied_name})")
    if cfg.openadr2b.enabled and cfg.openadr2b.vtn_url:
        table.add_row("utility: OpenADR 2.0b VTN", f"{cfg.openadr2b.vtn_url}  (the VEN polls it)")
    for name, host, port in _endpoints(cfg):
        table.add_row(f"twin: {name}", f"{host}:{port}")
    table.add_row("logs", f"{log_dir}/gateway.log, {log_dir}/twin.log")
    console.print(table)


async def _play_ml_platform(gw: Gateway, events: deque[str], twin_log: Path) -> None:
    """The ML platform's part (:func:`pswd_gateway.ml_platform.play_demo_job`), with its job's
    events shown as they happen."""
    if gw.api_listener is None or gw.workloads is None:
        return
    url = f"http://{gw.api_listener.host}:{gw.api_listener.port}"
    job = trace_job(gw.config.simulation)
    job_start_s = job.start_s if job is not None else 0.0  # none: announced for now + 30 s
    follow = asyncio.create_task(_follow_events(gw, events))
    try:
        t0 = twin_started_at(twin_log)
        rhythm = twin_rhythm(gw.config.simulation, t0) if t0 is not None else None
        await play_demo_job(url, t0, job_start_s, on_refused=events.append, rhythm=rhythm)
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow


async def _play_utility(gw: Gateway, vtn: Vtn2b, twin_t0: float | None, events: deque[str]) -> None:
    """The utility's part: the heat offer read, the frequency response on (HTTP), a DR event
    from the VTN, a heat request (HTTP), at the twin times of :data:`UTILITY_SCRIPT_S`."""
    if gw.api_listener is None:
        return
    t0 = twin_t0 if twin_t0 is not None else time.time()
    url = f"http://{gw.api_listener.host}:{gw.api_listener.port}"
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

    async def at(step: str) -> None:
        await asyncio.sleep(max(0.0, t0 + UTILITY_SCRIPT_S[step] - time.time()))

    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=10.0) as http:
        await at("offer")
        offer = (await http.get("/v1/heat/offer")).json()
        heat = [s["heat_mw"] for s in offer["slots"]]
        events.append(
            f"utility: heat offer, {len(heat)} five-minute slots, {min(heat):.1f}-"
            f"{max(heat):.1f} MW at {offer['supply_c']:g} °C"
        )
        await at("ffr")
        ffr = {"kind": "ffr", "enabled": True, "max_mw": 40.0, "droop_pct": 1.0}
        await _send(http, "/v1/grid/signals", ffr, events, "frequency response on, 40 MW")
        await at("dr")
        import_mw, _ = gw._measured_mw()  # noqa: SLF001 -- the demo reads the gateway's meter
        if import_mw is not None:
            limit = round(max(import_mw - DR_DEPTH_MW, 0.0), 1)
            now = datetime.now(UTC)
            await vtn.issue_limit(limit, now, timedelta(seconds=DR_HOLD_S))
            events.append(
                f"utility: OpenADR 2.0b event from the VTN, import ≤ {limit:g} MW for "
                f"{DR_HOLD_S:g} s"
            )
        await at("heat")
        end = datetime.now(UTC) + timedelta(minutes=30)
        request = {"heat_mw": 10.0, "supply_temp_c": 85.0, "end": end.isoformat()}
        await _send(http, "/v1/heat/requests", request, events, "10 MW of heat at 85 °C")


async def _send(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], events: deque[str], what: str
) -> None:
    r = await http.post(path, json=body)
    if r.status_code == 201:
        events.append(f"utility: {what} (HTTP)")
    else:
        events.append(f"utility: {what} refused: {r.status_code} {r.text[:120]}")


def _describe(event_type: str, data: dict[str, Any]) -> str:
    """A grid-signal event in a line of the live view."""
    if event_type == "grid_signal.delivered":
        ratio = data.get("ratio")
        return (
            f"{data.get('kind')} delivered {data.get('delivered_mw', 0):.1f} of "
            f"{data.get('requested_mw', 0):.1f} MW asked"
            + ("" if ratio is None else f" (ratio {ratio:.2f})")
        )
    signal = data.get("signal") or {}
    body = signal.get("signal") or {}
    return (
        f"{event_type.removeprefix('grid_signal.')} {body.get('kind')} from "
        f"{signal.get('source')} ({signal.get('issuer')})"
    )


async def _follow_events(gw: Gateway, events: deque[str]) -> None:
    if gw.workloads is None:
        return
    async with gw.workloads.hub.subscribe() as queue:
        while (event := await queue.get()) is not None:
            at = event.at.astimezone(UTC).strftime("%H:%M:%S")
            if event.type == "workload.state_changed":
                what = f"{event.data.get('from') or '·'} → {event.data.get('to')}"
                if event.data.get("reason"):
                    what += f" ({event.data['reason']})"
            elif event.type.startswith("grid_signal."):
                if event.type == "grid_signal.effective_changed":
                    continue
                events.append(f"{at}  #{event.id}  {_describe(event.type, event.data)}")
                continue
            else:
                what = event.type
            events.append(f"{at}  #{event.id}  {event.workload_id}  {what}")


async def _show(
    console: Console, gw: Gateway, duration_s: float | None, events: Sequence[str] = ()
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    started = time.monotonic()
    deadline = None if duration_s is None else started + duration_s
    try:
        if console.is_terminal:
            with Live(_view(gw, started, events), console=console, refresh_per_second=4) as live:
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    live.update(_view(gw, started, events))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)
        else:
            printed = 0
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                console.print(_plain_line(gw))
                fresh = getattr(events, "total", len(events)) - printed
                for line in list(events)[len(events) - min(fresh, len(events)) :]:
                    console.print(line)
                printed += fresh
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            console.print(_view(gw, started, events))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
