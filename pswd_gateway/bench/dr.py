"""``pswd-gateway bench dr``: a grid signal through each door to the battery's setpoint.

The demo site's twin (a steady 150 MW IT load: its jobs left out, so that the signal is all
that moves the grid) runs as its own process, the gateway in this one on the demo config,
every door on a free loopback port: the HTTP API (the demo's ``grid-operator-api`` conduit),
OPC UA (Basic256Sha256 SignAndEncrypt, the demo ``operator``), IEC 61850 (libiec61850's
client in a process of its own, the demo ``operator``: ``GAPC1.DRLimW`` then ``GAPC1.DRAct``),
an OpenADR 2.0b VTN (openleadr's) and an OpenADR 3 VTN (:mod:`pswd_gateway.simulation.vtn2b`,
:mod:`pswd_gateway.simulation.vtn3`) with the gateway's VENs polling and subscribed.

Each door sends ``events`` import limits, one after the other, each ``LIMIT_DROP_MW`` (drawn
from a seed) under the import before it and in force for ``HOLD_S``, then released. Timed:

- **signal → setpoint**: from the moment the door's client sends (for OpenADR: the VTN issues
  the event) to the first battery setpoint the gateway writes (and the battery acknowledges)
  that moves by at least half the drop;
- **delivered / requested**: the gateway's own report of each event (``GET
  /v1/grid/signals/{id}/delivery``: requested = import before - limit, delivered = import
  before - mean import measured while in force);

and the fast frequency response (:mod:`pswd_gateway.bench.ffr`, its generated cases).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from asyncio.subprocess import Process
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx

from pswd_gateway.bench.api import free_port, percentile
from pswd_gateway.bench.control import demo_config_text, wait_port
from pswd_gateway.bench.ffr import measure_ffr
from pswd_gateway.config import GatewayConfig, load_config
from pswd_gateway.control.battery import SETPOINT_POINT
from pswd_gateway.daemon import Gateway
from pswd_gateway.grid_signals import delivery_json
from pswd_gateway.logging import configure_logging
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.security.certs import (
    init_opcua_certs,
    make_client_certificate,
    trust_opcua_client,
)
from pswd_gateway.simulation.twin import spawn_twin, stop_process
from pswd_gateway.simulation.utility import with_vens
from pswd_gateway.simulation.vtn2b import Vtn2b
from pswd_gateway.simulation.vtn3 import OpenAdr3Vtn

__all__ = ["DOORS", "measure_dr", "mms_main", "run_dr_bench"]

DOORS = ("http", "opcua", "iec61850", "openadr2b", "openadr3")
SITE_LOAD_MW = 150.0
"""The twin's IT load, steady: the demo's jobs are left out, so that the signal moves the grid."""
HOLD_S = 10.0
"""Each limit is in force this long (by default)."""
REST_S = 4.0
"""Between one limit's release and the next signal, at least; then until the battery's setpoint
is back within :data:`IDLE_W` of where it was before the signal, at most :data:`REST_MAX_S`."""
IDLE_W = 3e6
REST_MAX_S = 30.0
LIMIT_DROP_MW = (20.0, 60.0)
"""Each limit lies this far under the import before it (uniform, from the seed)."""
SETTLE_S = 8.0
"""After the gateway is ready, before the first signal (baselines, the limiter settled)."""
MOVE_SHARE = 0.5
"""A setpoint that moved by this share of the drop answers the signal."""
ANSWER_TIMEOUT_S = 10.0
CLIENT_URI = "urn:pswd:bench-dr"
OPERATOR_TOKEN = "pswd-demo-operator"  # noqa: S105 -- the demo's published token


@dataclass
class Setpoints:
    """The battery setpoints the gateway wrote, (wall time, W)."""

    writes: list[tuple[float, float]] = field(default_factory=list)

    def last(self) -> float:
        return self.writes[-1][1] if self.writes else 0.0

    async def answer(self, after: float, from_w: float, move_w: float) -> float | None:
        """The wall time of the first write after ``after`` at least ``move_w`` from
        ``from_w``; ``None`` if none within :data:`ANSWER_TIMEOUT_S`."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while time.monotonic() < deadline:
            for t, w in self.writes:
                if t >= after and abs(w - from_w) >= move_w:
                    return t
            await asyncio.sleep(0.005)
        return None


class Door(Protocol):
    """A way in for an import limit: ``send`` returns when the client has sent it (the wall
    time it was sent, the signal's id if the door tells it); ``release`` ends it."""

    name: str

    async def send(self, limit_mw: float, hold_s: float) -> float: ...

    async def release(self) -> None: ...


@dataclass
class HttpDoor:
    api: str
    name: str = "http"

    async def send(self, limit_mw: float, hold_s: float) -> float:
        end = datetime.now(UTC) + timedelta(seconds=hold_s)
        body = {"kind": "import_limit", "import_limit_mw": limit_mw, "end": end.isoformat()}
        async with httpx.AsyncClient(base_url=self.api, timeout=10.0) as http:
            t0 = time.time()
            r = await http.post(
                "/v1/grid/signals",
                json=body,
                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            )
        if r.status_code != 201:
            raise RuntimeError(f"the HTTP door refused the limit: {r.status_code} {r.text}")
        return t0

    async def release(self) -> None:
        """The window ends by itself."""


@dataclass
class OpcUaDoor:
    url: str
    cert: Path
    key: str
    server_cert: Path
    site_limit_mw: float
    name: str = "opcua"
    _client: Any = None
    _pswd: Any = None
    _idx: int = 0

    async def open(self) -> None:
        from asyncua import Client, ua  # noqa: PLC0415
        from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256  # noqa: PLC0415

        client = Client(self.url, timeout=10)
        client.application_uri = CLIENT_URI
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=str(self.cert),
            private_key=self.key,
            server_certificate=str(self.server_cert),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        client.set_user("operator")
        client.set_password(OPERATOR_TOKEN)
        await client.connect()
        self._client = client
        self._idx = await client.get_namespace_index("urn:pswd:gateway")
        self._pswd = client.get_node(f"ns={self._idx};s=PSWD")

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.disconnect()

    async def send(self, limit_mw: float, hold_s: float) -> float:  # noqa: ARG002
        t0 = time.time()
        await self._pswd.call_method(f"{self._idx}:SetGridImportLimit", limit_mw)
        return t0

    async def release(self) -> None:
        """A standing limit: a new one at the site's own limit replaces it."""
        await self._pswd.call_method(f"{self._idx}:SetGridImportLimit", self.site_limit_mw)


@dataclass
class MmsDoor:
    """libiec61850's client in a process of its own (:func:`mms_main`), driven over stdin."""

    port: int
    password: str
    name: str = "iec61850"
    _proc: asyncio.subprocess.Process | None = None

    async def open(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pswd_gateway.bench.dr",
            str(self.port),
            self.password,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        ready = await self._ask(["hello"])
        if not ready.get("ok"):
            raise RuntimeError(f"the MMS client did not connect: {ready}")

    async def _ask(self, command: list[Any]) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write((json.dumps(command) + "\n").encode())
        await proc.stdin.drain()
        async with asyncio.timeout(20.0):
            line = await proc.stdout.readline()
        if not line:
            raise RuntimeError("the MMS client exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def send(self, limit_mw: float, hold_s: float) -> float:  # noqa: ARG002
        out = await self._ask(["limit", limit_mw])
        if not out.get("ok"):
            raise RuntimeError(f"DR operate refused: {out}")
        return float(out["t0"])

    async def release(self) -> None:
        await self._ask(["release"])

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(Exception):
                await self._ask(["quit"])
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()


@dataclass
class VtnDoor:
    """An OpenADR VTN of the simulated site issuing the event (``issue_limit``/``cancel``)."""

    name: str
    issue: Callable[[float, datetime, timedelta], Awaitable[str]]
    cancel: Callable[[str], Awaitable[object]]
    _event: str | None = None

    async def send(self, limit_mw: float, hold_s: float) -> float:
        t0 = time.time()
        self._event = await self.issue(limit_mw, datetime.now(UTC), timedelta(seconds=hold_s))
        return t0

    async def release(self) -> None:
        """The event's interval ends by itself."""


def mms_main(argv: list[str]) -> int:
    """The MMS client process: ``PORT PASSWORD``, then one JSON command a line on stdin
    (``["hello"]``, ``["limit", MW]``, ``["release"]``, ``["quit"]``), one JSON answer each."""
    import pyiec61850.pyiec61850 as m  # noqa: PLC0415

    port, password = int(argv[0]), argv[1]
    con = m.IedConnection_create()
    m.IedConnection_setConnectTimeout(con, 5000)
    m.IedConnection_setRequestTimeout(con, 5000)
    params = m.MmsConnection_getIsoConnectionParameters(m.IedConnection_getMmsConnection(con))
    auth = m.AcseAuthenticationParameter_create()
    m.AcseAuthenticationParameter_setAuthMechanism(auth, m.ACSE_AUTH_PASSWORD)
    m.AcseAuthenticationParameter_setPassword(auth, password)
    m.IsoConnectionParameters_setAcseAuthenticationParameter(params, auth)
    _, err = m.IedConnection_connect(con, "127.0.0.1", port)

    def operate(ref: str, value: Any) -> bool:
        ctl = m.ControlObjectClient_create(ref, con)
        if ctl is None:
            return False
        m.ControlObjectClient_setOrigin(ctl, "bench-dr", 3)
        if isinstance(value, bool):
            ctl_val = m.MmsValue_newBoolean(value)
            if m.ControlObjectClient_getControlModel(ctl) in {2, 4}:  # select before operate
                m.ControlObjectClient_selectWithValue(ctl, ctl_val)
        else:
            ctl_val = m.MmsValue_createEmptyStructure(1)
            m.MmsValue_setElement(ctl_val, 0, m.MmsValue_newFloat(float(value)))
        return bool(m.ControlObjectClient_operate(ctl, ctl_val, 0))

    for line in sys.stdin:
        command = json.loads(line)
        if command[0] == "hello":
            out: dict[str, Any] = {"ok": err == 0, "err": err}
        elif command[0] == "limit":
            ok = operate("PSWDGRID/GAPC1.DRLimW", float(command[1]))
            time.sleep(0.3)  # the setting reaches the gateway before the switch
            t0 = time.time()
            out = {"ok": ok and operate("PSWDGRID/GAPC1.DRAct", True), "t0": t0}  # noqa: FBT003
        elif command[0] == "release":
            out = {"ok": operate("PSWDGRID/GAPC1.DRAct", False)}  # noqa: FBT003
        else:
            break
        print(json.dumps(out), flush=True)  # noqa: T201 -- the answer to the bench
    m.IedConnection_close(con)
    os._exit(0)  # skip pyiec61850's destructors at interpreter exit


@dataclass
class DrSite:
    """The twin and the gateway of the bench, with what each door needs."""

    root: Path
    cfg: GatewayConfig
    twin: Process
    gw: Gateway
    setpoints: Setpoints
    ports: dict[str, int]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"


def site_config(root: Path) -> tuple[GatewayConfig, dict[str, int]]:
    """The demo config on free ports: HTTP API, OPC UA, MMS; meter and battery every 20 ms."""
    text, ports = demo_config_text(root / "state", 20)
    ports["opcua"], ports["mms"] = free_port(), free_port()
    text = text.replace("port = 4840", f"port = {ports['opcua']}")
    text = text.replace("port = 10102", f"port = {ports['mms']}")
    text = text.replace('certs_dir = "var/certs"', f'certs_dir = "{root / "certs"}"')
    # the twin: a steady IT load, the demo's jobs left out
    jobs, ports_table = text.find("[[simulation.trace.jobs]]"), text.find("[simulation.ports]")
    if not 0 <= jobs < ports_table:
        raise RuntimeError("the demo config's simulated jobs have moved; update the bench")
    steady = f"[simulation.trace]\nbaseline_mw = {SITE_LOAD_MW}\njobs = []\n\n"
    text = text[:jobs] + steady + text[ports_table:]
    path = root / "gateway.toml"
    path.write_text(text)
    return load_config(path), ports


async def start_site(root: Path, cfg: GatewayConfig, ports: dict[str, int]) -> DrSite:
    """The twin (its own process, on ``root/gateway.toml``) and the gateway in this one;
    stopped by :func:`stop_site` (also when this fails part way)."""
    twin = await spawn_twin(root / "gateway.toml")
    try:
        await wait_port(ports["rf_b"], twin)
    except BaseException:
        await stop_process(twin)
        raise
    gw = Gateway(cfg, heap=HeapKeeper())
    site = DrSite(root, cfg, twin, gw, Setpoints(), ports)
    try:
        await gw.start()
    except BaseException:
        await stop_site(site)
        raise
    assert gw.control is not None
    write = gw.control.write

    async def recorded(device: str, point: str, value: float) -> None:
        await write(device, point, value)
        if point == SETPOINT_POINT:
            site.setpoints.writes.append((time.time(), value))

    gw.control.write = recorded
    return site


async def stop_site(site: DrSite) -> None:
    try:
        await site.gw.stop()
    finally:
        await stop_process(site.twin)


@dataclass
class DoorResult:
    latencies_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    missed: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_s
        return {
            "p50_s": round(percentile(lat, 0.5), 4) if lat else None,
            "p99_s": round(percentile(lat, 0.99), 4) if lat else None,
            "max_s": round(max(lat), 4) if lat else None,
            "n": len(lat),
            "missed": self.missed,
            "delivered_ratio_min": round(min(self.ratios), 4) if self.ratios else None,
            "events": self.events,
        }


async def run_door(
    site: DrSite, door: Door, events: int, rng: random.Random, hold_s: float = HOLD_S
) -> DoorResult:
    """``events`` limits through ``door``, one after the other (see the module docstring)."""
    out = DoorResult()
    signals = site.gw.grid_signals
    assert signals is not None
    for _ in range(events):
        import_mw, _heat = site.gw._measured_mw()  # noqa: SLF001 -- the gateway's own reading
        if import_mw is None:
            raise RuntimeError("no grid import reading")
        drop = rng.uniform(*LIMIT_DROP_MW)
        before = set(signals._delivery)  # noqa: SLF001 -- which report is this event's
        sp0 = site.setpoints.last()
        t0 = await door.send(round(import_mw - drop, 1), hold_s)
        answered = await site.setpoints.answer(t0, sp0, MOVE_SHARE * drop * 1e6)
        if answered is None:
            out.missed += 1
        else:
            out.latencies_s.append(answered - t0)
        event: dict[str, Any] = {
            "limit_mw": round(import_mw - drop, 1),
            "import_before_mw": round(import_mw, 1),
            "answer_s": None if answered is None else round(answered - t0, 4),
        }
        out.events.append(event)
        await asyncio.sleep(max(0.0, t0 + hold_s - time.time()))
        await door.release()
        await asyncio.sleep(REST_S)
        rest_until = time.monotonic() + REST_MAX_S
        while abs(site.setpoints.last() - sp0) > IDLE_W and time.monotonic() < rest_until:  # noqa: ASYNC110 -- polls the twin's battery
            await asyncio.sleep(0.2)
        for key in set(signals._delivery) - before:  # noqa: SLF001
            delivery = signals.delivery(key)
            report = delivery.report() if delivery is not None else None
            if report is not None and report.ratio is not None and report.requested_mw > 1.0:
                out.ratios.append(report.ratio)
                event["delivery"] = delivery_json(report)
    return out


async def measure_dr(
    events: int = 5,
    seed: int = 2026,
    ffr_cases: int = 1,
    doors: tuple[str, ...] = DOORS,
    hold_s: float = HOLD_S,
) -> dict[str, Any]:
    """Every door in turn on one site, then the frequency response: the figures of the
    command (its ``--json`` keys)."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible limits, not secrets
    results: dict[str, DoorResult] = {}
    with tempfile.TemporaryDirectory(prefix="pswd-bench-dr-") as tmp:
        root = Path(tmp)
        log = (root / "bench.log").open("a", encoding="utf-8")
        configure_logging("warning", "json", stream=log)
        init_opcua_certs(root / "certs", ["127.0.0.1", "localhost"])
        cert, key = make_client_certificate(root, "bench-dr", CLIENT_URI)
        trust_opcua_client(root / "certs", cert)
        cfg, ports = site_config(root)
        vtns, cfg = await _start_vtns(cfg, doors)
        try:
            site = await start_site(root, cfg, ports)
            try:
                await asyncio.sleep(SETTLE_S)
                for name in doors:
                    door = await _open_door(site, name, vtns, cert, key)
                    try:
                        results[name] = await run_door(site, door, events, rng, hold_s)
                    finally:
                        await _close_door(door)
            finally:
                await stop_site(site)
            ffr = await measure_ffr(cases=ffr_cases) if ffr_cases > 0 else {}
        finally:
            for vtn in vtns.values():
                await vtn.stop()
            configure_logging("warning", "json", stream=sys.stderr)  # off the file, it closes
            log.close()
    ratios = [r for d in results.values() for r in d.ratios]
    return {
        "doors": {name: r.summary() for name, r in results.items()},
        "ffr": {
            "step_response_p99_s": ffr.get("step_response_p99_s"),
            "max_error_ratio": ffr.get("max_error_ratio"),
            "cases": ffr.get("cases", []),  # each event's expected, response, error
        },
        "delivered_ratio": round(min(ratios), 4) if ratios else None,
        "delivered_ratio_mean": round(sum(ratios) / len(ratios), 4) if ratios else None,
        "events_per_door": events,
        "hold_s": hold_s,
    }


async def _start_vtns(
    cfg: GatewayConfig, doors: tuple[str, ...]
) -> tuple[dict[str, Vtn2b | OpenAdr3Vtn], GatewayConfig]:
    """The OpenADR VTNs the doors ask for (started), and the gateway's config with its VENs on
    them (:func:`with_vens`)."""
    vtns: dict[str, Vtn2b | OpenAdr3Vtn] = {}
    try:
        if "openadr2b" in doors:
            vtns["openadr2b"] = Vtn2b(vtn_id="PSWD-DEMO-VTN")
            await vtns["openadr2b"].start()
        if "openadr3" in doors:
            vtns["openadr3"] = OpenAdr3Vtn()
            await vtns["openadr3"].start()
    except BaseException:
        for vtn in vtns.values():
            await vtn.stop()
        raise
    vtn2b, vtn3 = vtns.get("openadr2b"), vtns.get("openadr3")
    return vtns, with_vens(
        cfg,
        vtn2b if isinstance(vtn2b, Vtn2b) else None,
        vtn3 if isinstance(vtn3, OpenAdr3Vtn) else None,
    )


async def _open_door(site: DrSite, name: str, vtns: dict[str, Any], cert: Path, key: Path) -> Door:
    if name == "http":
        return HttpDoor(site.api)
    if name == "opcua":
        door = OpcUaDoor(
            f"opc.tcp://127.0.0.1:{site.ports['opcua']}/pswd",
            cert,
            str(key),
            site.root / "certs" / "opcua" / "server_cert.der",
            site.cfg.site.grid_import_limit_mw,
        )
        await door.open()
        return door
    if name == "iec61850":
        mms = MmsDoor(site.ports["mms"], "pswd-demo-operator")
        await mms.open()
        return mms
    vtn = vtns[name]
    if isinstance(vtn, OpenAdr3Vtn):
        connected = site.gw.openadr3.connected if site.gw.openadr3 is not None else None
    else:
        connected = None
    if connected is not None:
        async with asyncio.timeout(30.0):
            await connected.wait()
    return VtnDoor(name, vtn.issue_limit, vtn.cancel)


async def _close_door(door: Door) -> None:
    close = getattr(door, "close", None)
    if close is not None:
        await close()


def run_dr_bench(
    events: int, seed: int, ffr_cases: int, doors: tuple[str, ...], *, as_json: bool
) -> int:
    result = asyncio.run(measure_dr(events, seed, ffr_cases, doors))
    if as_json:
        print(json.dumps(result, indent=2))  # noqa: T201 -- the command's output
        return 0
    for name, d in result["doors"].items():
        print(  # noqa: T201
            f"{name:>10}: signal → battery setpoint p50 {d['p50_s']} s, p99 {d['p99_s']} s "
            f"(n={d['n']}, missed {d['missed']}); delivered/requested ≥ {d['delivered_ratio_min']}"
        )
    f = result["ffr"]
    print(  # noqa: T201
        f"       ffr: step response p99 {f['step_response_p99_s']} s, "
        f"max error {f['max_error_ratio']}; delivered/requested over all events ≥ "
        f"{result['delivered_ratio']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(mms_main(sys.argv[1:]))
