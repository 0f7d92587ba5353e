"""``pswd-gateway bench soak``: the whole demo site, as ``make demo`` runs it, measured.

The twin runs as its own process with the config's ``[simulation]`` section (grid meter, battery,
thermal plant, both GPU halls' Redfish BMCs); the gateway runs in this one with every listener
the config enables (metrics, workload API, OPC UA with a server certificate made for the run,
IEC 61850 MMS with GOOSE as configured); the ML platform announces the demo's training job over
the API for the twin's job start and reports its start (:mod:`pswd_gateway.ml_platform`, as the
demo does). Every port is a free loopback port, the state and the logs live in a temporary
directory, and everything started is stopped at the end, on Ctrl-C and on errors.

The gateway's store is recorded (a subscription): each new grid-meter and battery measurement
and the IT load, on the twin's clock (the point's ``source_ts`` minus the twin's t = 0; a
repeated reading of the same measurement keeps its ``source_ts`` and is recorded once). The
figures are those of :mod:`pswd_gateway.bench.figures`, the one definition of how a grid
operator judges the meter's readings:

- the largest 1 s-mean step (sliding) and the seconds over the ramp limit, from the job's start
  to the end of the run;
- the grid band while the IT load is flat: from 10 s after the twin's start (5 s after the
  gateway was ready, if later) until the announced job's planned climb could begin — its mean
  level at the planning ramp (``ramp limit x control.ramp_margin``) before its start, less 1 s;
- the largest grid import, and whether it was above the import limit while the battery charged;
- the battery's throughput, guard trips, fallbacks, write failures, poll overruns per device;
- whether each listener answered once at the end of the run (``/metrics``, ``/v1/site``, OPC UA
  GetEndpoints, an MMS read of the grid power from another process).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog
from pydantic import ValidationError

from pswd_gateway.bench import figures
from pswd_gateway.bench.api import free_port
from pswd_gateway.client import AsyncPswdClient
from pswd_gateway.config import (
    DEFAULT_CONFIG,
    GatewayConfig,
    ModbusDeviceConfig,
    RedfishDeviceConfig,
    format_validation_error,
    load_config,
)
from pswd_gateway.control.cycle import ControlStats
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.errors import ConfigError, PswdError
from pswd_gateway.journal import JournalGrowth, RetentionPolicy, journal_growth
from pswd_gateway.logging import configure_logging
from pswd_gateway.ml_platform import (
    DEMO_TOKEN,
    PlatformRun,
    demo_job_level_mw,
    play_demo_job,
    trace_job,
    twin_rhythm,
)
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.security.certs import init_opcua_certs
from pswd_gateway.security.tls import default_client_context
from pswd_gateway.simulation.config import HALLS, SimulationConfig
from pswd_gateway.simulation.twin import MODBUS_DEVICES, spawn_twin, started_at, stop_process

__all__ = [
    "Recording",
    "SoakResult",
    "first_job_at",
    "measure_soak",
    "render",
    "run_soak_bench",
    "site_on_free_ports",
    "soak_figures",
]

Sample = tuple[float, float]

TWIN_START_TIMEOUT_S: Final = 30.0
STARTUP_S: Final = 10.0
"""The first seconds of the twin's run are start-up, not judged."""
SETTLE_AFTER_READY_S: Final = 5.0
PRERAMP_MARGIN_S: Final = 1.0
MIN_FLAT_S: Final = 5.0
PROBE_TIMEOUT_S: Final = 20.0
PROGRESS_EVERY_S: Final = 10.0
CHUNK_S: Final = 60.0
"""Seconds over the limit are counted in chunks of this length (same bins, fewer readings
handed to each call)."""
MAX_LISTED: Final = 20
"""At most this many seconds over the limit are listed (all are counted)."""
BUSY_MARGIN_S: Final = 120.0
BUSY_LOOP: Final = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)
"""The busy process: a plain loop, bounded so that it ends by itself if never killed."""
MMS_PROBE: Final = """
import json, os, sys, time
import pyiec61850.pyiec61850 as m
out = {"connect": None, "read": None, "value": None, "lost": 0}
for _ in range(5):
    con = m.IedConnection_create()
    _, connect = m.IedConnection_connect(con, sys.argv[1], int(sys.argv[2]))
    out.update(connect=connect)
    if connect != 0:
        break
    value, read = m.IedConnection_readFloatValue(con, sys.argv[3], m.IEC61850_FC_MX)
    out.update(read=read, value=round(value, 3))
    m.IedConnection_close(con)
    if read != m.IED_ERROR_CONNECTION_LOST:
        break
    out["lost"] += 1
    time.sleep(0.1)
print(json.dumps(out), flush=True)
os._exit(0)  # skip the C library's destructors in a throwaway process
"""
"""One anonymous MMS read, in a process of its own (libiec61850's client calls hold the
interpreter lock while the gateway's MMS server calls back into Python). An association the
client library itself closes right after it was made (no request sent: on a loaded machine,
see :func:`_probe_mms`) is made again, up to five in all."""
MMS_PROBE_TRIES: Final = 3


# --------------------------------------------------------------------------- the recording


@dataclass
class Recording:
    """Every new measurement of the grid meter, the battery and the IT load, in twin seconds.

    :meth:`record` is a store subscriber: it keeps one sample per new ``source_ts`` of each
    point (good quality only); the IT load is the sum of the halls' latest readings, one
    sample each time a hall reports a new measurement once every hall has reported.
    """

    t0: float
    """POSIX time of the twin's t = 0."""
    grid_key: str
    bess_key: str | None
    it_keys: tuple[str, ...]
    grid: list[Sample] = field(default_factory=list)
    battery: list[Sample] = field(default_factory=list)
    it_load: list[Sample] = field(default_factory=list)
    _last_ts: dict[str, float] = field(default_factory=dict, repr=False)
    _halls: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def keys(self) -> list[str]:
        bess = [self.bess_key] if self.bess_key is not None else []
        return [self.grid_key, *bess, *self.it_keys]

    def record(self, points: Sequence[Point]) -> None:
        for p in points:
            if p.quality is not Quality.GOOD:
                continue
            last = self._last_ts.get(p.name)
            if last is not None and p.source_ts <= last:
                continue  # the same measurement read again (or an older one)
            self._last_ts[p.name] = p.source_ts
            t = p.source_ts - self.t0
            if p.name == self.grid_key:
                self.grid.append((t, p.value))
            elif p.name == self.bess_key:
                self.battery.append((t, p.value))
            elif p.name in self.it_keys:
                self._halls[p.name] = p.value
                if len(self._halls) == len(self.it_keys):
                    self.it_load.append((t, sum(self._halls.values())))


# ------------------------------------------------------------------------------ the result


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    usable_cores: int
    python: str
    busy_core: bool
    """Another process kept one core busy for the whole run."""


@dataclass(frozen=True)
class JobInfo:
    name: str
    start_s: float
    """When the twin starts it (``[[simulation.trace.jobs]]``), twin seconds."""
    peak_mw: float
    announced_start_s: float | None
    start_reported_s: float | None
    """When the platform reported its start over the API, twin seconds."""
    workload_id: str | None
    refused: str | None
    edges_told: int = 0
    """Rhythm edges the platform told ahead and the gateway took."""
    rhythm_refused: str | None = None


@dataclass(frozen=True)
class DeviceFigures:
    polls: int
    """Poll slots, answered or not (slots skipped while reconnecting count as errors)."""
    errors: int
    overruns: int
    answered: bool
    """The device answered at least once."""
    up: bool
    """It answered its last poll."""


@dataclass(frozen=True)
class ListenerProbe:
    address: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class SoakFigures:
    """The figures of one run; MW, MW/s, MWh, twin seconds. ``None``: not measured."""

    ramp_limit_mw_per_s: float
    import_limit_mw: float
    ramp_window_s: tuple[float, float] | None
    """From the job's start to the end of the run (``None``: the run ended before)."""
    max_step_mw_per_s: float | None
    max_step_at_s: float | None
    """The second (its start) that held the largest step."""
    seconds_over_ramp_limit: int | None
    share_over_ramp_limit: float | None
    """Share of the sliding 1 s windows (every 100 ms) whose step was over the limit."""
    p90_step_mw_per_s: float | None
    """The 90th percentile of those windows' steps (the largest is one coincidence)."""
    steps_over_limit: tuple[tuple[float, float], ...]
    """(second, largest step in it) for the first seconds whose sliding step was over."""
    flat_window_s: tuple[float, float] | None
    grid_band_flat_mw: float | None
    grid_mean_flat_mw: float | None
    it_load_band_flat_mw: float | None
    max_grid_mw: float | None
    max_grid_at_s: float | None
    import_limit_crossed_while_charging: bool
    crossings_while_charging: int
    first_crossing: tuple[float, float, float] | None
    """(second, grid MW, battery MW) of the first whole second whose mean grid was over the
    limit while the battery's mean charged."""
    battery_throughput_mwh: float
    guard_trips: int | None
    rhythm_leads: int | None
    """Training-rhythm edges the control put on the battery ahead of them."""
    fallbacks: int | None
    write_failures: int | None
    readings: dict[str, int]


@dataclass(frozen=True)
class SoakResult:
    config: str
    planned_s: float
    """Twin time the run was to end at."""
    ended_s: float
    interrupted: bool
    machine: Machine
    job: JobInfo
    figures: SoakFigures
    devices: dict[str, DeviceFigures]
    listeners: dict[str, ListenerProbe]
    notes: tuple[str, ...]
    workdir: str | None
    journal: JournalGrowth | None = None
    """The journal's growth at this load, and its bound under the configured retention."""
    """Where the state and the logs were kept (``None``: a temporary directory, removed)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- the figures


def _index_before(times: Sequence[float], t: float) -> int:
    """Index of the last reading at or before ``t`` (0 when there is none)."""
    return max(0, bisect.bisect_right(times, t) - 1)


def _steps_by_second(samples: Sequence[Sample], t0: float, t1: float) -> list[Sample]:
    """(second, largest sliding 1 s-mean step with its window end in that second, W/s) for each
    second from ``t0`` to ``t1``: :func:`figures.max_step_w_per_s` on the readings around it."""
    times = [t for t, _ in samples]
    out: list[Sample] = []
    for k in range(math.ceil(t1 - t0)):
        a = t0 + k
        b = min(a + 1.0, t1)
        around = samples[_index_before(times, a - 2.0) : bisect.bisect_right(times, b)]
        out.append((a, figures.max_step_w_per_s(around, a, b)))
    return out


def _seconds_over(samples: Sequence[Sample], t0: float, t1: float, limit_w_per_s: float) -> int:
    """:func:`figures.seconds_over` from ``t0`` to ``t1``, counted chunk by chunk (each chunk
    starts one second early so that no pair of seconds is missed or counted twice)."""
    times = [t for t, _ in samples]
    total = 0
    for k in range(math.ceil((t1 - t0) / CHUNK_S)):
        a = t0 + k * CHUNK_S
        b = min(a + CHUNK_S, t1)
        start = a - 1.0 if k else a
        around = samples[_index_before(times, start) : bisect.bisect_right(times, b)]
        total += figures.seconds_over(around, start, b, limit_w_per_s)
    return total


def soak_figures(
    rec: Recording,
    *,
    job_start_s: float,
    flat_window_s: tuple[float, float] | None,
    ended_s: float,
    ramp_limit_mw_per_s: float,
    import_limit_mw: float,
    control: ControlStats | None,
) -> SoakFigures:
    """The figures of a recording (see the module docstring)."""
    limit_w = ramp_limit_mw_per_s * 1e6
    grid = rec.grid
    ramp_window = (job_start_s, ended_s) if ended_s > job_start_s else None
    max_step = max_step_at = seconds_over = share = p90 = None
    over: list[Sample] = []
    if ramp_window is not None and grid:
        by_second = _steps_by_second(grid, *ramp_window)
        if by_second:
            max_step_at, worst = max(by_second, key=lambda s: s[1])
            max_step = worst / 1e6
            over = [(t, w / 1e6) for t, w in by_second if w > limit_w]
        seconds_over = _seconds_over(grid, *ramp_window, limit_w)
        share = figures.share_over(grid, *ramp_window, limit_w)
        p90 = figures.step_quantile(grid, *ramp_window, 0.9)
    band = mean = it_band = None
    if flat_window_s is not None:
        a, b = flat_window_s
        inside = [w for t, w in grid if a <= t <= b]
        if inside:
            band = figures.band_w(grid, a, b) / 1e6
            mean = sum(inside) / len(inside) / 1e6
        if any(a <= t <= b for t, _ in rec.it_load):
            it_band = figures.band_w(rec.it_load, a, b) / 1e6
    # The import limit as a contracted capacity is judged: on 1 s means, whole seconds.
    crossings = [
        (t, g / 1e6, b / 1e6)
        for t, g, b in figures.import_crossings(
            grid, rec.battery, 0.0, ended_s, import_limit_mw * 1e6
        )
    ]
    top = max(grid, key=lambda s: s[1]) if grid else None
    throughput = (
        figures.throughput_j(rec.battery, rec.battery[0][0], rec.battery[-1][0])
        if rec.battery
        else 0.0
    )
    return SoakFigures(
        ramp_limit_mw_per_s=ramp_limit_mw_per_s,
        import_limit_mw=import_limit_mw,
        ramp_window_s=_r2(ramp_window),
        max_step_mw_per_s=_r(max_step, 2),
        max_step_at_s=_r(max_step_at, 1),
        seconds_over_ramp_limit=seconds_over,
        share_over_ramp_limit=_r(share, 3),
        p90_step_mw_per_s=_r(None if p90 is None else p90 / 1e6, 2),
        steps_over_limit=tuple((round(t, 1), round(w, 2)) for t, w in over[:MAX_LISTED]),
        flat_window_s=_r2(flat_window_s),
        grid_band_flat_mw=_r(band, 2),
        grid_mean_flat_mw=_r(mean, 2),
        it_load_band_flat_mw=_r(it_band, 2),
        max_grid_mw=_r(top[1] / 1e6, 2) if top else None,
        max_grid_at_s=_r(top[0], 2) if top else None,
        import_limit_crossed_while_charging=bool(crossings),
        crossings_while_charging=len(crossings),
        first_crossing=(
            (round(crossings[0][0], 2), round(crossings[0][1], 2), round(crossings[0][2], 2))
            if crossings
            else None
        ),
        battery_throughput_mwh=round(throughput / 3.6e9, 4),
        guard_trips=control.guard_trips_total if control is not None else None,
        rhythm_leads=control.rhythm_leads_total if control is not None else None,
        fallbacks=control.fallbacks_total if control is not None else None,
        write_failures=control.write_failures_total if control is not None else None,
        readings={
            "grid_meter": len(rec.grid),
            "bess": len(rec.battery),
            "it_load": len(rec.it_load),
        },
    )


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _r2(window: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if window is None else (round(window[0], 2), round(window[1], 2))


# ---------------------------------------------------------------------------- the set-up


def _toml(value: Any) -> str:
    """One TOML value on one line (inline tables): enough for a ``[simulation]`` section."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    for _ in range(10 * n):
        if len(ports) == n:
            break
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def site_on_free_ports(cfg: GatewayConfig, workdir: Path) -> tuple[GatewayConfig, str]:
    """The gateway config and the twin's config file text for one run in ``workdir``.

    The twin's devices and the gateway's listeners move to free loopback ports (each gateway
    device follows the twin device it pointed at); state and OPC UA certificates go under
    ``workdir``. Raises :class:`ConfigError` when a device is not served by the twin.
    """
    sim = SimulationConfig.model_validate(cfg.simulation)
    twin_devices = [*MODBUS_DEVICES, *HALLS]
    listener_names = ("metrics", "api", "opcua", "iec61850")
    free = _free_ports(len(twin_devices) + len(listener_names))
    ports = dict(zip([*twin_devices, *listener_names], free, strict=True))
    served = MODBUS_DEVICES if not sim.redfish.enabled else twin_devices
    moved = {sim.ports.of(name): ports[name] for name in served}
    devices = []
    problems: list[tuple[str, str]] = []
    for i, d in enumerate(cfg.devices):
        if not d.enabled:
            devices.append(d)
            continue
        new_device: ModbusDeviceConfig | RedfishDeviceConfig
        if isinstance(d, ModbusDeviceConfig):
            old = d.port
            new_device = d.model_copy(update={"port": moved.get(old, old)})
        else:
            url = urlsplit(d.base_url)
            old = url.port or (443 if url.scheme == "https" else 80)
            host = url.hostname or "127.0.0.1"
            netloc = (
                f"[{host}]:{moved.get(old, old)}"
                if ":" in host
                else f"{host}:{moved.get(old, old)}"
            )
            new_device = d.model_copy(update={"base_url": urlunsplit(url._replace(netloc=netloc))})
        if old not in moved:
            problems.append(
                (f"devices[{i}]", f"{d.name} (port {old}) is not one of the twin's devices")
            )
        devices.append(new_device)
    if problems:
        raise ConfigError("soak", problems)
    listeners = cfg.listeners
    updates = {
        name: getattr(listeners, name).model_copy(update={"port": ports[name]})
        for name in listener_names
        if getattr(listeners, name).enabled
    }
    gateway = cfg.model_copy(
        update={
            "devices": tuple(devices),
            "listeners": listeners.model_copy(update=updates),
            "storage": cfg.storage.model_copy(update={"state_dir": workdir / "state"}),
            "opcua": cfg.opcua.model_copy(update={"certs_dir": workdir / "certs"}),
        }
    )
    simulation = dict(cfg.simulation) | {
        "ports": {
            "grid_meter": ports["grid_meter"],
            "bess": ports["bess"],
            "thermal": ports["thermal"],
            "redfish": [ports[hall] for hall in HALLS],
        }
    }
    level = cfg.logging.level if cfg.logging.level in {"debug", "info"} else "info"
    twin = f'simulation = {_toml(simulation)}\n\n[logging]\nlevel = "{level}"\nformat = "json"\n'
    return gateway, twin


@contextlib.contextmanager
def logging_to(stream: TextIO, level: str) -> Iterator[None]:
    """The gateway's logs to ``stream`` for the run; the previous set-up back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    configure_logging(level, "json", stream=stream)
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)


async def twin_t0(log: Path, proc: asyncio.subprocess.Process) -> float:
    deadline = time.monotonic() + TWIN_START_TIMEOUT_S
    while time.monotonic() < deadline:
        t0 = started_at(log)
        if t0 is not None:
            return t0
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    tail = _tail(log)
    why = f"exited with {proc.returncode}" if proc.returncode is not None else "did not start"
    raise PswdError(f"the twin {why} within {TWIN_START_TIMEOUT_S:.0f} s; its log ends:\n{tail}")


def _tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError as exc:
        return f"(unreadable: {exc})"


def machine(busy_core: bool) -> Machine:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return Machine(cpu, cores, usable, platform.python_version(), busy_core)


# ------------------------------------------------------------------------------- probes


async def _probe_listeners(gw: Gateway) -> dict[str, ListenerProbe]:
    """Ask each enabled listener one question (all at once); what each answered."""
    questions: dict[str, tuple[str, Coroutine[Any, Any, tuple[bool, str]]]] = {}
    if gw.metrics_listener is not None:
        url = f"http://{gw.metrics_listener.host}:{gw.metrics_listener.port}"
        questions["metrics"] = (url, probe_metrics(url))
    if gw.api_listener is not None:
        url = f"http://{gw.api_listener.host}:{gw.api_listener.port}"
        questions["api"] = (url, probe_api(url))
    if gw.opcua is not None:
        questions["opcua"] = (gw.opcua.endpoint, probe_opcua(gw.opcua.endpoint))
    if gw.mms is not None:
        ref = f"{gw.mms.ied_name}GRID/MMXU1.TotW.mag.f"
        questions["iec61850"] = (
            f"{gw.mms.host}:{gw.mms.port}",
            _probe_mms(gw.mms.host, gw.mms.port, ref),
        )
    answers = await asyncio.gather(*(_probe(a, q) for a, q in questions.values()))
    return dict(zip(questions, answers, strict=True))


async def _probe(address: str, question: Awaitable[tuple[bool, str]]) -> ListenerProbe:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            ok, detail = await question
    except TimeoutError:
        ok, detail = False, f"no answer within {PROBE_TIMEOUT_S:.0f} s"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer, kept in the result
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return ListenerProbe(address, ok, detail)


async def probe_metrics(url: str) -> tuple[bool, str]:
    async with httpx.AsyncClient(
        base_url=url, timeout=5.0, verify=default_client_context()
    ) as http:
        metrics = await http.get("/metrics")
        ready = await http.get("/readyz")
    has_grid = "pswd_grid_active_power_watts" in metrics.text
    ok = metrics.status_code == 200 and has_grid
    grid = "with" if has_grid else "WITHOUT"
    return ok, f"/metrics {metrics.status_code} {grid} the grid power, /readyz {ready.status_code}"


async def probe_api(url: str) -> tuple[bool, str]:
    async with AsyncPswdClient(url, DEMO_TOKEN, timeout_s=5.0) as pswd:
        site = await pswd.site()
    return True, f"/v1/site answered ({len(site)} fields)"


async def probe_opcua(endpoint: str) -> tuple[bool, str]:
    from asyncua import Client  # noqa: PLC0415 - heavy; only the soak needs a client

    client = Client(endpoint, timeout=5)
    endpoints = await client.connect_and_get_server_endpoints()
    policies = sorted({str(e.SecurityPolicyUri).rsplit("#", 1)[-1] for e in endpoints})
    return bool(endpoints), f"GetEndpoints: {len(endpoints)} endpoints ({', '.join(policies)})"


async def _probe_mms(host: str, port: int, ref: str) -> tuple[bool, str]:
    """An MMS read; a probe whose read failed is run again (twice at most). On a 2-core machine
    with both cores busy, 10-30 % of the libiec61850 client's *first* associations in a fresh
    process are lost before their first request: the server's system calls show it answer the
    association (AARE) and then read the end of the client's connection, no request sent. That
    is the client library's, not the listener's, and says nothing of whether the listener
    serves; a second association from the same process has always been served, so each probe
    associates again itself (:data:`MMS_PROBE`)."""
    tries: list[str] = []
    for _ in range(MMS_PROBE_TRIES):
        ok, detail = await probe_mms_once(host, port, ref)
        if ok:
            return ok, detail + (f" (after {len(tries)} dropped)" if tries else "")
        tries.append(detail)
    return False, "; ".join(tries)


async def probe_mms_once(host: str, port: int, ref: str) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MMS_PROBE, host, str(port), ref,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            await stop_process(proc, 1.0)
    try:
        got = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, f"the MMS client failed: {err.decode(errors='replace')[-300:]}"
    ok = got["connect"] == 0 and got["read"] == 0
    value = got.get("value")
    lost = f" ({got['lost']} associations lost by the client first)" if got.get("lost") else ""
    return ok, f"connect {got['connect']}, read {ref} error {got['read']}, value {value} MW{lost}"


# ------------------------------------------------------------------------------- the run


def _busy_process(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and a constant program
        [sys.executable, "-c", BUSY_LOOP, str(seconds)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_busy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def _progress_line(rec: Recording, now_s: float) -> str:
    """Lowest to highest of each reading over the last 10 s."""

    def span(samples: list[Sample]) -> str:
        recent = [w / 1e6 for t, w in samples[-2000:] if t > now_s - PROGRESS_EVERY_S]
        return f"{min(recent):6.1f} to {max(recent):6.1f}" if recent else "     —"

    return (
        f"{now_s:6.0f} s  grid {span(rec.grid)} MW  BESS {span(rec.battery)} MW  "
        f"IT {span(rec.it_load)} MW  meter readings {len(rec.grid)}"
    )


def _flat_window(
    cfg: GatewayConfig, job_start_s: float, ready_s: float, ended_s: float
) -> tuple[float, float] | None:
    planning_ramp = cfg.site.grid_ramp_limit_mw_per_s * cfg.control.ramp_margin
    climb_s = demo_job_level_mw() / planning_ramp
    a = max(STARTUP_S, ready_s + SETTLE_AFTER_READY_S)
    b = min(job_start_s - climb_s - PRERAMP_MARGIN_S, ended_s)
    return (a, b) if b - a >= MIN_FLAT_S else None


async def measure_soak(
    config_path: Path | None = None,
    duration_s: float = 600.0,
    *,
    busy_core: bool = False,
    workdir: Path | None = None,
    stop: asyncio.Event | None = None,
    progress: Callable[[str], object] | None = None,
    job_start_s: float | None = None,
) -> SoakResult:
    """Run the whole site until ``duration_s`` into the twin's run (or ``stop``) and measure it.

    ``workdir`` keeps the state and the logs (default: a temporary directory, removed);
    ``progress`` is called with a status line every 10 s; ``job_start_s`` moves the twin's first
    job (the one the ML platform announces) to start then, e.g. sooner for a test.
    """
    path = config_path or DEFAULT_CONFIG
    cfg = load_config(path)
    if job_start_s is not None:
        cfg = cfg.model_copy(update={"simulation": first_job_at(cfg.simulation, job_start_s)})
    try:
        SimulationConfig.model_validate(cfg.simulation)
    except ValidationError as exc:
        raise ConfigError(str(path), format_validation_error(exc, prefix="simulation")) from None
    if workdir is not None:
        return await _measure(cfg, path, duration_s, busy_core, workdir, stop, progress)
    with tempfile.TemporaryDirectory(prefix="pswd-soak-") as tmp:
        result = await _measure(cfg, path, duration_s, busy_core, Path(tmp), stop, progress)
    return replace(result, workdir=None)


def first_job_at(simulation: Mapping[str, Any], start_s: float) -> dict[str, Any]:
    """``[simulation]`` with its first trace job starting at ``start_s`` (nothing else moved)."""
    sim = copy.deepcopy(dict(simulation))
    jobs = sim.get("trace", {}).get("jobs")
    if not jobs:
        raise ConfigError("simulation", [("simulation.trace.jobs", "the soak needs a job to run")])
    jobs[0] = {**jobs[0], "start_s": start_s}
    return sim


async def _measure(
    cfg: GatewayConfig,
    path: Path,
    duration_s: float,
    busy_core: bool,
    workdir: Path,
    stop: asyncio.Event | None,
    progress: Callable[[str], object] | None,
) -> SoakResult:
    job = trace_job(cfg.simulation)
    if job is None:
        raise ConfigError(str(path), [("simulation.trace.jobs", "the soak needs a job to run")])
    gateway_cfg = prepare_run(cfg, workdir)
    stop = stop or asyncio.Event()
    notes: list[str] = []
    run = PlatformRun()
    async with contextlib.AsyncExitStack() as started:  # stops everything, whatever happens
        twin_log = started.enter_context((workdir / "twin.log").open("wb"))
        gateway_log = started.enter_context((workdir / "gateway.log").open("a", encoding="utf-8"))
        started.enter_context(logging_to(gateway_log, gateway_cfg.logging.level))
        if busy_core:
            busy = _busy_process(duration_s + TWIN_START_TIMEOUT_S + BUSY_MARGIN_S)
            started.callback(_stop_busy, busy)
        twin = await spawn_twin(workdir / "twin.toml", twin_log)
        started.push_async_callback(stop_process, twin)
        t0 = await twin_t0(workdir / "twin.log", twin)
        site = gateway_cfg.site
        meter = site.point_key("grid_meter", "active_power")
        assert meter is not None  # the grid meter is not optional
        rec = Recording(t0, meter, site.point_key("bess", "active_power"), site.it_load_points)
        gw = Gateway(gateway_cfg, heap=HeapKeeper())  # as `pswd-gateway run` has it
        recording = gw.store.subscribe(rec.record, rec.keys)
        started.push_async_callback(gw.stop)
        await gw.start()
        ready_s = time.time() - t0
        assert gw.journal is not None
        footprint_at = (time.monotonic(), await gw.journal.call(gw.journal.sync.footprint))
        platform_task: asyncio.Task[None] | None = None
        if gw.api_listener is not None:
            url = f"http://{gw.api_listener.host}:{gw.api_listener.port}"
            platform_task = asyncio.create_task(
                play_demo_job(
                    url, t0, job.start_s, run=run, rhythm=twin_rhythm(cfg.simulation, t0)
                ),
                name="soak-ml-platform",
            )
            started.push_async_callback(_cancel, platform_task)
        else:
            notes.append("the API listener is off: the job was not announced")
        await _run_until(t0 + duration_s, stop, twin, rec, progress, notes)
        recording.cancel()
        ended_s = min(time.time() - t0, duration_s)
        if platform_task is not None and platform_task.done():
            failure = platform_task.exception()
            if failure is not None:
                notes.append(f"the ML platform failed: {type(failure).__name__}: {failure}")
        footprint = await gw.journal.call(gw.journal.sync.footprint)
        growth = journal_growth(
            footprint_at[1], footprint, time.monotonic() - footprint_at[0], _retention(cfg)
        )
        listeners = await _probe_listeners(gw)
        devices = {
            name: DeviceFigures(
                p.stats.polls_total,
                p.stats.errors_total,
                p.stats.overruns_total,
                p.stats.last_success_wall is not None,
                p.stats.up,
            )
            for name, p in gw.pollers.items()
        }
        control = gw.control.stats if gw.control is not None else None
    flat = _flat_window(cfg, job.start_s, ready_s, ended_s)
    notes += _notes(job.start_s, ended_s, duration_s, flat, run, t0)
    result_figures = soak_figures(
        rec,
        job_start_s=job.start_s,
        flat_window_s=flat,
        ended_s=ended_s,
        ramp_limit_mw_per_s=cfg.site.grid_ramp_limit_mw_per_s,
        import_limit_mw=cfg.site.import_limit_mw,
        control=control,
    )
    return SoakResult(
        config=str(path),
        planned_s=duration_s,
        ended_s=round(ended_s, 2),
        interrupted=ended_s < duration_s - 1.0,
        machine=machine(busy_core),
        job=JobInfo(
            name=job.name,
            start_s=job.start_s,
            peak_mw=job.peak_mw,
            announced_start_s=_r(_since(run.announced_start, t0), 2),
            start_reported_s=_r(_since(run.started_at, t0), 2),
            workload_id=run.workload_id,
            refused=run.refused,
            edges_told=run.edges_told,
            rhythm_refused=run.rhythm_refused,
        ),
        figures=result_figures,
        devices=devices,
        listeners=listeners,
        notes=tuple(notes),
        workdir=str(workdir),
        journal=growth,
    )


def _retention(cfg: GatewayConfig) -> RetentionPolicy:
    storage = cfg.storage
    return RetentionPolicy(
        setpoint_full_days=storage.setpoint_full_days,
        setpoint_days=storage.setpoint_days,
        workload_days=storage.workload_days,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it; a failure of its own is reported in the notes."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: the run's notes say what it was


def prepare_run(cfg: GatewayConfig, workdir: Path) -> GatewayConfig:
    """The run's directory: the twin's config file and the OPC UA server certificate."""
    workdir.mkdir(parents=True, exist_ok=True)
    gateway_cfg, twin_text = site_on_free_ports(cfg, workdir)
    (workdir / "twin.toml").write_text(twin_text, encoding="utf-8")
    if gateway_cfg.listeners.opcua.enabled:
        init_opcua_certs(gateway_cfg.opcua.certs_dir)
    return gateway_cfg


def _since(posix: float | None, t0: float) -> float | None:
    return None if posix is None else posix - t0


async def _run_until(
    end: float,
    stop: asyncio.Event,
    twin: asyncio.subprocess.Process,
    rec: Recording,
    progress: Callable[[str], object] | None,
    notes: list[str],
) -> None:
    """Wait until the POSIX time ``end``, ``stop``, or the twin's exit."""
    next_progress = time.time() + PROGRESS_EVERY_S
    while (now := time.time()) < end and not stop.is_set():
        if twin.returncode is not None:
            notes.append(f"the twin exited ({twin.returncode}) at {now - rec.t0:.1f} s")
            return
        if progress is not None and now >= next_progress:
            progress(_progress_line(rec, now - rec.t0))
            next_progress += PROGRESS_EVERY_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(1.0, max(0.0, end - now)))
    if stop.is_set():
        notes.append(f"stopped early at {time.time() - rec.t0:.1f} s")


def _notes(
    job_start_s: float,
    ended_s: float,
    planned_s: float,
    flat: tuple[float, float] | None,
    run: PlatformRun,
    t0: float,
) -> list[str]:
    notes = []
    if ended_s <= job_start_s:
        need = math.ceil((job_start_s + 15.0) / 6.0) / 10.0
        notes.append(
            f"the run ends at {ended_s:.0f} s, before the job starts ({job_start_s:.0f} s into "
            f"the twin's run): no ramp figures; run at least --minutes {need:g}"
        )
    elif planned_s < job_start_s + 15.0:
        notes.append(
            f"the run ends {ended_s - job_start_s:.0f} s after the job's start: the ramp "
            "figures cover only its first swings"
        )
    if flat is None:
        notes.append("no flat stretch before the job long enough for the grid band (≥ 5 s)")
    if run.refused is not None:
        notes.append(run.refused)
    elif run.announced_start is not None and abs(run.announced_start - t0 - job_start_s) > 0.5:
        notes.append(
            f"the job was announced for {run.announced_start - t0:.1f} s, not the twin's "
            f"{job_start_s:.0f} s (the twin's start time was not known in time)"
        )
    if run.workload_id is not None and run.started_at is None and ended_s > job_start_s:
        notes.append("the platform never reported the job's start")
    return notes


# ------------------------------------------------------------------------------ output


def _fmt(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.2f}{unit}"


def render(result: SoakResult) -> str:
    """The result as a table of figures, for people."""
    f = result.figures
    m = result.machine
    ramp = f"from {f.ramp_window_s[0]:g} to {f.ramp_window_s[1]:g} s" if f.ramp_window_s else "—"
    flat = f"{f.flat_window_s[0]:g} to {f.flat_window_s[1]:g} s" if f.flat_window_s else "—"
    crossing = (
        f"yes, {f.crossings_while_charging} seconds (1 s means); "
        f"first at {f.first_crossing[0]:g} s "
        f"(grid {f.first_crossing[1]:g} MW, battery {f.first_crossing[2]:g} MW)"
        if f.first_crossing
        else "no"
    )
    rows = [
        ("max 1 s-mean step", _fmt(f.max_step_mw_per_s, " MW/s"),
         f"limit {f.ramp_limit_mw_per_s:g} MW/s; {ramp}"
         + (f"; worst in the second from {f.max_step_at_s:g} s" if f.max_step_at_s else "")),
        ("seconds over the ramp limit", "—" if f.seconds_over_ramp_limit is None
         else str(f.seconds_over_ramp_limit), ramp),
        ("sliding 1 s windows over it", "—" if f.share_over_ramp_limit is None
         else f"{f.share_over_ramp_limit:.1%}", f"every 100 ms; {ramp}"),
        ("p90 1 s-mean step", _fmt(f.p90_step_mw_per_s, " MW/s"), f"sliding; {ramp}"),
        ("grid band, IT load flat", _fmt(f.grid_band_flat_mw, " MW"),
         f"± around {_fmt(f.grid_mean_flat_mw, ' MW')}, {flat}; IT load band "
         + _fmt(f.it_load_band_flat_mw, " MW")),
        ("max grid import", _fmt(f.max_grid_mw, " MW"),
         f"at {_fmt(f.max_grid_at_s, ' s')}; import limit {f.import_limit_mw:g} MW"),
        ("over the import limit while charging", crossing, ""),
        ("battery throughput", f"{f.battery_throughput_mwh:.3f} MWh", "whole run"),
        ("guard trips / fallbacks / write failures",
         f"{f.guard_trips} / {f.fallbacks} / {f.write_failures}", ""),
        ("rhythm edges led", str(f.rhythm_leads),
         f"put on the battery ahead of them; {result.job.edges_told} told by the job"
         + (f" (then refused: {refused})" if (refused := result.job.rhythm_refused) else "")),
        ("poll overruns", ", ".join(f"{n} {d.overruns}" for n, d in result.devices.items()), ""),
        ("polls (errors)", ", ".join(f"{n} {d.polls} ({d.errors})"
                                     for n, d in result.devices.items()),
         "readings: " + ", ".join(f"{k} {v}" for k, v in f.readings.items())),
        ("listeners", ", ".join(f"{n} {'up' if p.ok else 'DOWN'}"
                                for n, p in result.listeners.items()), ""),
        ("job", f"{result.job.name} at {result.job.start_s:g} s",
         f"announced for {_fmt(result.job.announced_start_s, ' s')}, start reported at "
         + _fmt(result.job.start_reported_s, " s")),
        ("machine", f"{m.cpu}", f"{m.cores} cores ({m.usable_cores} usable), Python {m.python}"
         + (", one core kept busy" if m.busy_core else "")),
    ]  # fmt: skip
    if result.journal is not None:
        rows.append(_journal_row(result.journal))
    if f.steps_over_limit:
        listed = ", ".join(f"{t:g} s {w:g}" for t, w in f.steps_over_limit)
        rows.append(("seconds with a step over", listed, "MW/s (first 20)"))
    width = max(len(r[0]) for r in rows)
    value_width = min(max(len(r[1]) for r in rows), 40)
    lines = [f"soak: {result.config}, to {result.ended_s:g} s of the twin's run"]
    lines += [f"{a:<{width}}  {b:>{value_width}}  {c}".rstrip() for a, b, c in rows]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _journal_row(g: JournalGrowth) -> tuple[str, str, str]:
    mb = 1e6
    raw = sum(g.bytes_per_day.values()) / mb
    bound = "—" if g.bounded_setpoint_bytes is None else f"{g.bounded_setpoint_bytes / mb:,.0f} MB"
    return (
        "journal growth",
        f"{raw:,.0f} MB/day",
        (
            f"{g.rows_per_day.get('setpoints', 0):,.0f} setpoint rows/day; with retention the "
            f"setpoint history stays under {bound}; the audit chain (kept whole) grows "
            f"{g.audit_bytes_per_year / mb:,.1f} MB/year"
        ),
    )


async def run_soak_bench(
    minutes: float, as_json: bool, busy_core: bool, config_path: Path | None
) -> int:
    """The CLI command: run, print the figures (JSON or a table); Ctrl-C ends the run early
    and still reports what was measured."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        result = await measure_soak(
            config_path,
            minutes * 60.0,
            busy_core=busy_core,
            stop=stop,
            progress=lambda line: print(line, file=sys.stderr, flush=True),  # noqa: T201
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print(json.dumps(result.as_json(), indent=2) if as_json else render(result))  # noqa: T201
    return 0
