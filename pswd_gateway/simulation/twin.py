"""The site's digital twin: every simulated device server on loopback, one physics behind them.

``Twin(cfg)`` builds the physics (trace → IT load → cooling and heat recovery, BESS, grid), one
Modbus TCP server per Modbus device (grid meter, BESS, thermal plant) and one Redfish BMC
server per GPU hall. ``await twin.start()`` binds them (port 0 = a free port; the actual ones are
in :attr:`Twin.endpoints`) and starts a slow background tick that keeps the physics integrated
between requests; ``await twin.stop()`` stops everything and may be called any number of times.

:meth:`Twin.pause_device` makes one device stop answering (its listener is closed, its
connections dropped); :meth:`Twin.resume_device` brings it back on the same port with the same
registers.

The devices are imperfect as real plant is: the meter's and the PCS's measurements refresh at
fixed instants (:attr:`Twin.meter`, :attr:`Twin.bess_meter`), the PCS acts after a dead time,
and the devices in ``[simulation.faults] devices`` stall, lose requests and answer with jitter
(:attr:`Twin.faults`). :meth:`Twin.truth_at` stays the instantaneous physics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from asyncio.subprocess import Process
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Protocol, Self

from pswd_gateway.logging import get_logger
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.simulation.clock import SimClock
from pswd_gateway.simulation.config import HALLS, SimulationConfig
from pswd_gateway.simulation.devices import (
    BessBehaviour,
    GridMeterBehaviour,
    SiteContext,
    thermal_plant_bank,
)
from pswd_gateway.simulation.faults import DeviceFaults
from pswd_gateway.simulation.measurement import BessView, MeterView, shown_range
from pswd_gateway.simulation.modbus_servers import ModbusDeviceServer, RegisterBank, TwinError
from pswd_gateway.simulation.physics import SitePhysics, Truth
from pswd_gateway.simulation.redfish import RedfishTwinServer
from pswd_gateway.simulation.redfish_backend import HallBackend
from pswd_gateway.simulation.sunspec_bank import SunSpecBank, SunSpecBehaviour
from pswd_gateway.simulation.sunspec_meters import (
    DER_AC_MODEL,
    SunSpecMeterBehaviour,
    meter_map_name,
)
from pswd_gateway.simulation.trace import TraceEvent, TrainingTrace
from pswd_gateway.tasks import PARENT_PID_ENV

__all__ = [
    "MODBUS_DEVICES",
    "REGISTER_MAPS",
    "Twin",
    "run_twin",
    "spawn_twin",
    "started_at",
    "stop_process",
]

log = get_logger("simulation.twin")

MODBUS_DEVICES: Final = ("grid_meter", "bess", "thermal")
REGISTER_MAPS: Final = {
    "grid_meter": "sunspec-meter",
    "bess": "sunspec-bess",
    "thermal": "thermal-plant",
}
"""Register map the gateway uses for each simulated Modbus device."""
UNIT_ID: Final = 1
MODBUS_POLL_INTERVAL_MS: Final = 100
REDFISH_POLL_INTERVAL_MS: Final = 1000
STOP_TIMEOUT_S: Final = 5.0
RANGE_STEP_S: Final = 0.001
MAX_RANGE_SAMPLES: Final = 10_000


class _Server(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Twin:
    """The simulated site. See the module docstring for the lifecycle."""

    def __init__(
        self,
        cfg: SimulationConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = cfg
        self.clock = SimClock(clock, wall)
        self.physics = SitePhysics(cfg)
        self.site = SiteContext(self.physics, self.clock)
        self.meter = MeterView.from_config(self.physics)
        """What the grid meter shows (W > 0 = import)."""
        self.bess_meter = BessView.from_config(self.physics)
        """What the PCS's measurements show (W > 0 = discharge)."""
        self.banks: dict[str, RegisterBank] = {
            "grid_meter": self._grid_meter_bank(),
            "bess": SunSpecBank(BessBehaviour(self.site, self.bess_meter), self.site.sample),
            "thermal": thermal_plant_bank(self.site),
        }
        self.faults: dict[str, DeviceFaults] = {
            name: DeviceFaults(cfg.faults, cfg.seed, name) for name in cfg.faults.devices
        }
        """The devices with faults, and when they stall, lose requests, delay replies."""
        self.modbus: dict[str, ModbusDeviceServer] = {
            name: ModbusDeviceServer(
                name,
                bank,
                host=cfg.host,
                port=cfg.ports.of(name),
                unit_id=UNIT_ID,
                faults=self.faults.get(name),
                clock=self.clock.now,
            )
            for name, bank in self.banks.items()
        }
        self.backends: dict[str, HallBackend] = {
            hall: HallBackend(self.site, index, cfg.redfish) for index, hall in enumerate(HALLS)
        }
        self.redfish: dict[str, RedfishTwinServer] = {}
        self._redfish_ports: dict[str, int] = {hall: cfg.ports.of(hall) for hall in HALLS}
        self._paused: set[str] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._started = False
        self._clock_started = False
        self.ticks_total = 0
        self.tick_overruns_total = 0

    def _grid_meter_bank(self) -> SunSpecBank:
        """The grid meter in the configured SunSpec model, at the configured base address."""
        grid = self.config.grid
        behaviour: SunSpecBehaviour = (
            GridMeterBehaviour(self.config, view=self.meter)
            if grid.meter_model == DER_AC_MODEL
            else SunSpecMeterBehaviour(grid.meter_model, self.config, view=self.meter)
        )
        return SunSpecBank(behaviour, self.site.sample, base=grid.meter_base_address)

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind every device and start the background tick. On failure, stops what started."""
        if self._started:
            return
        self._started = True
        if not self._clock_started:  # time runs on across a stop/start
            # building the devices sampled the physics already (at the clock's time since
            # construction): time starts from there, or early commands would act in its past
            self.clock.restart(self.physics.latest.t)
            self._clock_started = True
        try:
            for server in self.modbus.values():
                await server.start()
            if self.config.redfish.enabled:
                for hall in HALLS:
                    await self._start_redfish(hall)
        except BaseException:
            await self.stop()
            raise
        self._tick_task = asyncio.create_task(self._tick(), name="twin-tick")
        log.info(
            "twin_started",
            endpoints={k: f"{h}:{p}" for k, (h, p) in self.endpoints.items()},
            posix_start=round(self.clock.posix(0.0), 3),
        )

    async def stop(self) -> None:
        """Stop the tick and every server; idempotent, never leaves a listener behind."""
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        servers: list[tuple[str, _Server]] = [*self.modbus.items(), *self.redfish.items()]
        for name, server in servers:
            try:
                await asyncio.wait_for(server.stop(), STOP_TIMEOUT_S)
            except Exception:
                log.exception("twin_device_stop_failed", device=name)
        self.redfish.clear()
        self._paused.clear()
        if self._started:
            log.info("twin_stopped")
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _start_redfish(self, hall: str) -> None:
        cfg = self.config
        server = RedfishTwinServer(
            self.backends[hall],
            host=cfg.host,
            port=self._redfish_ports[hall],
            username=cfg.redfish.username,
            password=cfg.redfish.password,
            telemetry=cfg.redfish.power_resource == "EnvironmentMetrics",
            power_resource=cfg.redfish.power_resource,
        )
        self.redfish[hall] = server
        await server.start()
        self._redfish_ports[hall] = server.port

    # ------------------------------------------------------------------------ pause / resume

    def _check(self, name: str) -> None:
        known = [*self.modbus, *(HALLS if self.config.redfish.enabled else ())]
        if name not in known:
            raise TwinError(f"no simulated device {name!r}; devices: {', '.join(known)}")

    async def pause_device(self, name: str) -> None:
        """Make ``name`` stop answering: close its listener and drop its connections."""
        self._check(name)
        if name in self._paused:
            return
        self._paused.add(name)
        if name in self.modbus:
            await self.modbus[name].stop()
        else:
            server = self.redfish.pop(name, None)
            if server is not None:
                await server.stop()
        log.info("twin_device_paused", device=name)

    async def resume_device(self, name: str) -> None:
        """Bring a paused device back on the same port, with the same state."""
        self._check(name)
        if name not in self._paused:
            return
        if name in self.modbus:
            await self.modbus[name].start()
        else:
            await self._start_redfish(name)
        self._paused.discard(name)
        log.info("twin_device_resumed", device=name)

    def is_paused(self, name: str) -> bool:
        return name in self._paused

    # ------------------------------------------------------------------------------- queries

    @property
    def endpoints(self) -> dict[str, tuple[str, int]]:
        """Device name → (host, port) actually bound (the configured port before start)."""
        host = self.config.host
        out = {name: (host, server.port) for name, server in self.modbus.items()}
        if self.config.redfish.enabled:
            out.update({hall: (host, port) for hall, port in self._redfish_ports.items()})
        return out

    def gateway_devices(self) -> list[dict[str, object]]:
        """``[[devices]]`` entries for a gateway config that polls this twin."""
        cfg = self.config
        devices: list[dict[str, object]] = []
        for name, (host, port) in self.endpoints.items():
            if name in REGISTER_MAPS:
                devices.append(
                    {
                        "name": name,
                        "kind": "modbus",
                        "host": host,
                        "port": port,
                        "unit_id": UNIT_ID,
                        "register_map": (
                            meter_map_name(cfg.grid.meter_model)
                            if name == "grid_meter"
                            else REGISTER_MAPS[name]
                        ),
                        "poll_interval_ms": MODBUS_POLL_INTERVAL_MS,
                    }
                )
            else:
                url_host = f"[{host}]" if ":" in host else host
                devices.append(
                    {
                        "name": name,
                        "kind": "redfish",
                        "base_url": f"http://{url_host}:{port}",
                        "username": cfg.redfish.username,
                        "password": cfg.redfish.password,
                        "poll_interval_ms": REDFISH_POLL_INTERVAL_MS,
                    }
                )
        return devices

    def now(self) -> float:
        """Simulation time: seconds since :meth:`start`."""
        return self.clock.now()

    def truth_now(self) -> Truth:
        """The site at this instant."""
        return self.site.sample()

    def truth_at(self, t: float) -> Truth:
        """The site at simulation time ``t`` (see :meth:`SitePhysics.truth_at`)."""
        return self.physics.truth_at(t)

    def truth_at_posix(self, posix_ts: float) -> Truth:
        """The site at a POSIX time (e.g. a gateway point's ``source_ts``)."""
        return self.physics.truth_at(self.clock.from_posix(posix_ts))

    def truth_range(
        self, start_posix: float, end_posix: float, value: Callable[[Truth], float]
    ) -> tuple[float, float]:
        """(lowest, highest) of ``value(truth)`` between two POSIX times, sampled every 1 ms
        (at most :data:`MAX_RANGE_SAMPLES` samples) and at both ends.

        A reading of an instantaneous value (the thermal plant's) taken by a request sent at
        ``start`` and answered at ``end`` lies in this range, whatever the machine's speed: the
        device computed it at one instant in between. The meter and the PCS show refreshed
        window means instead: see :meth:`shown_range` and :meth:`meter_power_range_w`.
        """
        t0, t1 = sorted((self.clock.from_posix(start_posix), self.clock.from_posix(end_posix)))
        t0 = max(t0, self.physics.oldest_t)
        t1 = max(t1, t0)
        n = min(max(math.ceil((t1 - t0) / RANGE_STEP_S), 1), MAX_RANGE_SAMPLES)
        samples = [value(self.physics.truth_at(t0 + (t1 - t0) * i / n)) for i in range(n + 1)]
        return min(samples), max(samples)

    def grid_power_range_w(self, start_posix: float, end_posix: float) -> tuple[float, float]:
        """(lowest, highest) true grid active power (W, > 0 = import) between two POSIX times.

        This is the physics' load-positive truth, whatever sign the meter serves."""
        return self.truth_range(start_posix, end_posix, lambda t: t.grid_w)

    def shown_range(
        self,
        start_posix: float,
        end_posix: float,
        value: Callable[[float], float],
        refresh_s: float,
    ) -> tuple[float, float]:
        """(lowest, highest) of what a device refreshing every ``refresh_s`` showed between two
        POSIX times, ``value(t)`` being what it shows at twin time ``t`` (e.g.
        ``twin.meter.active_power_w``). A reading taken by a request sent at ``start`` and
        answered at ``end`` lies in this range."""
        oldest = self.physics.oldest_t  # a window must start within the truth buffer
        t0 = max(self.clock.from_posix(start_posix), oldest + refresh_s if oldest else 0.0)
        t1 = max(self.clock.from_posix(end_posix), t0)
        return shown_range(value, t0, t1, refresh_s)

    def meter_power_range_w(self, start_posix: float, end_posix: float) -> tuple[float, float]:
        """(lowest, highest) active power (W, > 0 = import) the grid meter showed between two
        POSIX times: refreshed window means with the meter's noise, not the instantaneous
        truth. A reading of its ``W`` register taken meanwhile lies in this range."""
        return self.shown_range(
            start_posix, end_posix, self.meter.active_power_w, self.meter.refresh_s
        )

    # ------------------------------------------------------------------------------ the tick

    async def _tick(self) -> None:
        """Integrate the physics every ``tick_ms`` on absolute deadlines (no drift)."""
        loop = asyncio.get_running_loop()
        period = self.config.tick_ms / 1000.0
        events = self._pending_events()
        deadline = loop.time()
        while True:
            deadline += period
            delay = deadline - loop.time()
            if delay < 0:
                self.tick_overruns_total += 1
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)
            try:
                truth = self.site.sample()
            except Exception:
                log.exception("twin_tick_failed")
                continue
            self.ticks_total += 1
            while events and events[0].t_s <= truth.t:
                event = events.pop(0)
                log.info("trace_event", kind=event.kind, job=event.job, t_s=event.t_s)

    def _pending_events(self) -> list[TraceEvent]:
        trace = self.physics.trace
        return trace.events() if isinstance(trace, TrainingTrace) else []


def started_at(log: Path, since: float | None = None) -> float | None:
    """The POSIX time of a twin's t = 0, read from its JSON log (the ``twin_started`` line that
    :meth:`Twin.start` writes); ``None`` until that line is there. ``since``: only a twin that
    started at or after that POSIX time (a log appended to by several runs)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"twin_started"' not in line:  # the event itself, not redfish_twin_started
            continue
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            value = json.loads(line).get("posix_start")
            if value is None or (since is not None and float(value) < since):
                return None
            return float(value)
    return None


async def spawn_twin(config: Path, out: IO[bytes] | int = asyncio.subprocess.DEVNULL) -> Process:
    """``pswd-gateway simulate --config CONFIG`` as its own process (its output to ``out``), so
    its servers never share an event loop with the gateway under test. It is stopped with
    :func:`stop_process`, and by the kernel when this process dies without stopping it."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pswd_gateway", "simulate", "--config", str(config),
        stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, PARENT_PID_ENV: str(os.getpid())},  # it dies with this process
    )  # fmt: skip


async def stop_process(proc: Process, timeout_s: float = 5.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout_s``; returns once it has."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout_s)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def run_twin(
    cfg: SimulationConfig, *, on_started: Callable[[Twin], object] | None = None
) -> None:
    """Start the twin, run until cancelled (or SIGINT/SIGTERM), then stop it.

    ``on_started`` is called with the running twin (tests use it to learn the bound ports).
    """
    twin = Twin(cfg)
    heap = HeapKeeper()  # the plant's loop does not stall on the collector either
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            log.debug("signal_handler_unavailable", signal=sig.name, error=str(exc))
        else:
            handled.append(sig)
    try:
        await twin.start()
        heap.install()
        if on_started is not None:
            on_started(twin)
        await stop.wait()
    finally:
        heap.uninstall()
        for sig in handled:
            loop.remove_signal_handler(sig)
        await twin.stop()
