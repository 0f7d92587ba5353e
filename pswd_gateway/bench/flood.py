"""``pswd-gateway bench flood``: each listener flooded in turn, the control cycle measured.

The whole demo site runs as in ``bench soak`` (the twin in its own process, the gateway with
every listener in this one, on free loopback ports). After a quiet baseline, each listener is
flooded for ``--seconds`` by another process (:func:`flood`, run as
``python -m pswd_gateway.bench.flood KIND HOST PORT SECONDS CONNECTIONS``) holding
``--connections`` connections at once:

- ``api``: HTTP requests with unknown bearer tokens on kept-alive connections (each a 401);
- ``metrics``: ``GET /metrics`` scrapes on kept-alive connections;
- ``opcua``: connections that send a Hello declaring a 4 GiB message, or random bytes;
- ``iec61850``: connections that send random bytes where a TPKT/COTP connect belongs.

The flooding process runs at ``nice 19`` (:data:`FLOODER_NICE`).

For each phase: the control cycle's lateness (p50, p99, max, from its own histogram, cleared
when the phase starts), the flood's attempts per second, and the listener's *goodput*: a
legitimate client asking it one question after another (the soak's probes: ``/metrics``,
``/v1/site``, OPC UA GetEndpoints, an MMS read from another process), answers per second and the
slowest answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from pswd_gateway.bench.soak import (
    TWIN_START_TIMEOUT_S,
    Machine,
    logging_to,
    machine,
    prepare_run,
    probe_api,
    probe_metrics,
    probe_mms_once,
    probe_opcua,
    twin_t0,
)
from pswd_gateway.config import DEFAULT_CONFIG, GatewayConfig, load_config
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.simulation.twin import spawn_twin, stop_process

__all__ = ["FloodResult", "flood", "run_flood_bench"]

LISTENERS: Final = ("api", "metrics", "opcua", "iec61850")
SOURCES: Final = {"outsider": "127.0.0.2", "insider": "127.0.0.3"}
"""Where each flood comes from; the legitimate client asks from 127.0.0.1. The run adds the
insider's address to every zone, as a compromised machine on the plant's networks would be."""
FLOODER_NICE: Final = 19
"""The flooding process runs at the lowest CPU priority: an attacker's own CPU is not the edge
box's, and on a 2-core machine a flooder at the gateway's priority takes a core's share from it
that no flood over a network would. The kernel's work for the flood (both ends of every loopback
connection) still runs here at full priority."""
SETTLE_S: Final = 3.0
"""Between phases: the listener's backlog drains before the next is measured."""


@dataclass(frozen=True)
class Lateness:
    runs: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class Lag:
    """How late the gateway's event loop woke a 5 ms sleep (what any of its tasks waits)."""

    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class Phase:
    listener: str
    """``baseline`` or the listener flooded."""
    source: str
    """``outsider`` (an address in no zone), ``insider`` (one in every zone), or ``-``."""
    seconds: float
    lateness: Lateness
    """The control cycle's own lateness histogram (a meter-triggered run: from the reading's
    arrival; a timer run: from its deadline)."""
    loop_lag: Lag
    flood_attempts_per_s: float | None
    """Connections (HTTP: requests) the flood made per second, answered or refused."""
    asked: int
    """Questions the legitimate client asked (paced at ten a second)."""
    answered: int
    slowest_answer_ms: float | None


@dataclass(frozen=True)
class FloodResult:
    machine: Machine
    connections: int
    phases: tuple[Phase, ...]


# ------------------------------------------------------------------ the flooding process


def _hello_4gib() -> bytes:
    url = b"opc.tcp://flood/"
    body = (0).to_bytes(4, "little") + (65536).to_bytes(4, "little") * 2
    body += (0).to_bytes(8, "little") + len(url).to_bytes(4, "little") + url
    return b"HELF" + (0xFFFFFFF0).to_bytes(4, "little") + body


async def _http_loop(
    target: tuple[str, int, str], request: bytes, deadline: float, count: list[int]
) -> None:
    host, port, source = target
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.01)
            continue
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                count[0] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            count[0] += 1  # a refused or closed connection is an attempt too
        finally:
            writer.close()


async def _bytes_loop(
    target: tuple[str, int, str], payload: Callable[[], bytes], deadline: float, count: list[int]
) -> None:
    host, port, source = target
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
            writer.write(payload())
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await reader.read(4096)
            count[0] += 1
            writer.close()
        except OSError:
            await asyncio.sleep(0.01)


async def flood(
    kind: str, host: str, port: int, seconds: float, connections: int, source: str
) -> int:
    """Flood ``host:port`` from ``source`` as ``kind`` for ``seconds``; the attempts made."""
    deadline = time.monotonic() + seconds
    target = (host, port, source)
    count = [0]
    rnd = random.Random(0x5EED)  # noqa: S311 - test traffic, not secrets

    def noise() -> bytes:
        return rnd.randbytes(rnd.randint(1, 512))

    loops: list[Awaitable[None]]
    if kind == "api":
        request = (
            f"GET /v1/workloads HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer flood-{rnd.getrandbits(64):x}\r\n\r\n"
        ).encode()
        loops = [_http_loop(target, request, deadline, count) for _ in range(connections)]
    elif kind == "metrics":
        request = f"GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        loops = [_http_loop(target, request, deadline, count) for _ in range(connections)]
    elif kind == "opcua":
        hello = _hello_4gib()
        loops = [
            _bytes_loop(target, (lambda: hello) if i % 2 else noise, deadline, count)
            for i in range(connections)
        ]
    elif kind == "iec61850":
        loops = [_bytes_loop(target, noise, deadline, count) for _ in range(connections)]
    else:
        raise ValueError(f"unknown flood {kind!r} ({', '.join(LISTENERS)})")
    await asyncio.gather(*loops)
    return count[0]


# ------------------------------------------------------------------ measuring


def _lateness(hist: LatencyHistogram) -> Lateness:
    samples = sorted(hist)
    if not samples:
        return Lateness(0, None, None, None)

    def q(p: float) -> float:
        return round(samples[min(len(samples) - 1, int(p * len(samples)))] * 1000, 2)

    return Lateness(len(samples), q(0.5), q(0.99), round(samples[-1] * 1000, 2))


ASK_EVERY_S: Final = 0.1
"""The legitimate client asks ten questions a second at most (each its own connection for
OPC UA and MMS: an operator's tool, not a flood of its own)."""


LAG_SLEEP_S: Final = 0.005


async def _loop_lag(until: float) -> Lag:
    """Sleep 5 ms again and again on the gateway's loop until ``until``; how late each woke."""
    late: list[float] = []
    while time.monotonic() < until:
        t0 = time.perf_counter()
        await asyncio.sleep(LAG_SLEEP_S)
        late.append(max(0.0, time.perf_counter() - t0 - LAG_SLEEP_S))
    if not late:
        return Lag(None, None, None)
    late.sort()

    def q(p: float) -> float:
        return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 2)

    return Lag(q(0.5), q(0.99), round(late[-1] * 1000, 2))


async def _goodput(
    ask: Callable[[], Awaitable[tuple[bool, str]]], until: float
) -> tuple[int, int, float | None]:
    """Ask one question after another, paced, until ``until``: (answered, failed, slowest ms)."""
    ok = failed = 0
    slowest = 0.0
    while (start := time.monotonic()) < until:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(10.0):
                good, _ = await ask()
        except Exception:  # noqa: BLE001 - a failed question is the figure
            good = False
        slowest = max(slowest, time.perf_counter() - t0)
        if good:
            ok += 1
        else:
            failed += 1
        await asyncio.sleep(max(0.0, start + ASK_EVERY_S - time.monotonic()))
    return ok, failed, round(slowest * 1000, 1) if ok or failed else None


def _questions(gw: Gateway) -> dict[str, Callable[[], Awaitable[tuple[bool, str]]]]:
    cfg = gw.config.listeners
    asks: dict[str, Callable[[], Awaitable[tuple[bool, str]]]] = {}
    if gw.metrics_listener is not None:
        url = f"http://{cfg.metrics.host}:{gw.metrics_listener.port}"
        asks["metrics"] = lambda: probe_metrics(url)
    if gw.api_listener is not None:
        api = f"http://{cfg.api.host}:{gw.api_listener.port}"
        asks["api"] = lambda: probe_api(api)
    if gw.opcua is not None:
        endpoint = gw.opcua.endpoint
        asks["opcua"] = lambda: probe_opcua(endpoint)
    if cfg.iec61850.enabled:
        ref = f"{gw.config.iec61850.ied_name}GRID/MMXU1.TotW.mag.f"
        host, port = cfg.iec61850.host, cfg.iec61850.port
        asks["iec61850"] = lambda: probe_mms_once(host, port, ref)
    return asks


async def _phase(
    gw: Gateway,
    listener: str,
    seconds: float,
    connections: int,
    port: int | None,
    source: str = "",
) -> Phase:
    assert gw.control is not None
    hist = gw.control.stats.lateness_s
    hist.clear()
    until = time.monotonic() + seconds
    flooder = None
    if port is not None:
        flooder = await asyncio.create_subprocess_exec(
            "nice", "-n", str(FLOODER_NICE),
            sys.executable, "-m", "pswd_gateway.bench.flood", listener, "127.0.0.1", str(port),
            str(seconds), str(connections), SOURCES[source],
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    asks = _questions(gw)
    ask = asks.get(listener)
    lag = asyncio.create_task(_loop_lag(until))
    try:
        if ask is not None:
            ok, failed, slowest = await _goodput(ask, until)
        else:
            await asyncio.sleep(seconds)
            ok, failed, slowest = 0, 0, None
        attempts = None
        if flooder is not None:
            async with asyncio.timeout(seconds + 30):
                out, _ = await flooder.communicate()
            attempts = round(int(out.decode().strip() or 0) / seconds, 1)
    finally:
        if flooder is not None and flooder.returncode is None:
            await stop_process(flooder, 1.0)
    loop_lag = await lag
    lateness = _lateness(hist)
    return Phase(
        listener, source or "-", seconds, lateness, loop_lag, attempts, ok + failed, ok,
        slowest if port is not None else None,
    )  # fmt: skip


def _ports(gw: Gateway) -> dict[str, int]:
    ports: dict[str, int] = {}
    if gw.api_listener is not None:
        ports["api"] = gw.api_listener.port
    if gw.metrics_listener is not None:
        ports["metrics"] = gw.metrics_listener.port
    if gw.config.listeners.opcua.enabled:
        ports["opcua"] = gw.config.listeners.opcua.port
    if gw.config.listeners.iec61850.enabled:
        ports["iec61850"] = gw.config.listeners.iec61850.port
    return ports


async def measure_flood(
    config_path: Path | None,
    seconds: float,
    connections: int,
    listeners: tuple[str, ...] = LISTENERS,
    progress: Callable[[str], object] | None = None,
) -> FloodResult:
    cfg = load_config(config_path or DEFAULT_CONFIG)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="pswd-flood-") as tmp:
        workdir = Path(tmp)
        gateway_cfg = _with_insider(prepare_run(cfg, workdir))
        async with contextlib.AsyncExitStack() as started:
            twin_log = started.enter_context((workdir / "twin.log").open("wb"))
            gateway_log = started.enter_context((workdir / "gateway.log").open("a"))
            started.enter_context(logging_to(gateway_log, "info"))
            twin = await spawn_twin(workdir / "twin.toml", twin_log)
            started.push_async_callback(stop_process, twin)
            await twin_t0(workdir / "twin.log", twin)
            gw = Gateway(gateway_cfg, heap=HeapKeeper())  # as `pswd-gateway run` has it
            started.push_async_callback(gw.stop)
            await gw.start()
            await asyncio.sleep(SETTLE_S)
            ports = _ports(gw)
            plan = [("baseline", "")] + [
                (name, source) for name in listeners if name in ports for source in SOURCES
            ]
            for name, source in plan:
                if progress is not None:
                    progress(f"{name} {source}: {seconds:g} s".replace("  ", " "))
                port = ports.get(name) if source else None
                phase = await _phase(gw, name, seconds, connections, port, source)
                phases.append(phase)
                if progress is not None:
                    progress(_line(phase))
                await asyncio.sleep(SETTLE_S)
    return FloodResult(machine(busy_core=False), connections, tuple(phases))


def _with_insider(cfg: GatewayConfig) -> GatewayConfig:
    """Every zone also holds the insider's address (a configuration without zones admits
    all of loopback already, the outsider too)."""
    if not cfg.zones:
        return cfg
    insider = ipaddress.ip_network(f"{SOURCES['insider']}/32")
    zones = {
        name: zone.model_copy(update={"networks": (*zone.networks, insider)})
        for name, zone in cfg.zones.items()
    }
    return cfg.model_copy(update={"zones": zones})


def _line(p: Phase) -> str:
    late = p.lateness
    flood = f"{p.flood_attempts_per_s:g}/s" if p.flood_attempts_per_s is not None else "-"
    client = (
        f"answered {p.answered}/{p.asked}, slowest {p.slowest_answer_ms} ms" if p.asked else "-"
    )
    return (
        f"{p.listener:>9} {p.source:>8}  cycle lateness p50 {late.p50_ms} ms "
        f"p99 {late.p99_ms} ms max {late.max_ms} ms ({late.runs} runs)  loop lag p99 "
        f"{p.loop_lag.p99_ms} ms max {p.loop_lag.max_ms} ms  flood {flood}  client {client}"
    )


async def run_flood_bench(
    config: Path | None, seconds: float, connections: int, as_json: bool
) -> int:
    def say(line: str) -> None:
        if not as_json:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    async with asyncio.timeout(TWIN_START_TIMEOUT_S + 10 * (seconds + 2 * SETTLE_S) + 60):
        result = await measure_flood(config, seconds, connections, progress=say)
    if as_json:
        sys.stdout.write(json.dumps(asdict(result), indent=2) + "\n")
    else:
        m = result.machine
        sys.stdout.write(
            f"machine: {m.cpu}, {m.usable_cores} of {m.cores} cores, Python {m.python}\n"
        )
    return 0


def main() -> None:
    """The flooding process: ``KIND HOST PORT SECONDS CONNECTIONS SOURCE``; prints the
    attempts made."""
    kind, host, port, seconds, connections, source = sys.argv[1:7]
    attempts = asyncio.run(flood(kind, host, int(port), float(seconds), int(connections), source))
    sys.stdout.write(f"{attempts}\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
