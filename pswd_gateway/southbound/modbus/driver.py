"""The Modbus TCP driver: reads a register map with the fewest requests, decodes to SI points."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from pswd_gateway.config import ModbusDeviceConfig
from pswd_gateway.domain.points import Point, Quality, point_key
from pswd_gateway.domain.units import from_si, to_si
from pswd_gateway.errors import DeviceError, WriteRefusedError
from pswd_gateway.logging import get_logger
from pswd_gateway.southbound.modbus.registermap import (
    ReadBlock,
    RegisterMap,
    RegisterPoint,
    decode_registers,
    encode_point,
    read_plan,
    scale_factor,
)
from pswd_gateway.southbound.modbus.sunspec import END_MODEL_ID, SUNS_MARKER, SunSpecRegisterMap
from pswd_gateway.southbound.source_time import SourceClock

__all__ = ["ModbusDriver"]

log = get_logger("modbus")


class ModbusDriver:
    """A :class:`~pswd_gateway.southbound.base.Driver` for one Modbus TCP device."""

    def __init__(
        self,
        cfg: ModbusDeviceConfig,
        regmap: RegisterMap,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.regmap = regmap
        self._wall = wall_clock
        self._every = sorted({p.poll_every for p in regmap.points})
        self._plans: dict[tuple[int, ...], tuple[list[ReadBlock], list[RegisterPoint]]] = {}
        self._polls = 0
        self._client: AsyncModbusTcpClient | None = None
        self._sf_cache: dict[int, int] = {}
        self._source = SourceClock(cfg.measurement_refresh_s)
        self._verified = False
        self._writer: AsyncModbusTcpClient | None = None
        self._write_io = asyncio.Lock()
        self._io = asyncio.Lock()
        """One request in flight per connection: a setpoint write between two read blocks of a
        poll, never beside one (pymodbus would match the answers to the wrong requests)."""

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def poll_interval_s(self) -> float:
        return self.cfg.poll_interval_s

    @property
    def timeout_s(self) -> float:
        return self.cfg.timeout_s

    async def connect(self) -> None:
        if self._client is not None and self._client.connected:
            return
        await self.close()
        self._client = await self._open()
        if isinstance(self.regmap, SunSpecRegisterMap) and not self._verified:
            # Once per process: a reconnect after a lost reply is the same device, and seven
            # more round trips right then are seven more chances to lose one.
            try:
                await self._verify_sunspec(self.regmap)
            except DeviceError:
                await self.close()
                raise
            self._verified = True

    async def _open(self) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(
            self.cfg.host,
            port=self.cfg.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=self.name,
        )
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise DeviceError(self.name, f"cannot connect to {self._where()}: {exc}") from None
        if not ok:
            client.close()
            raise DeviceError(self.name, f"cannot connect to {self._where()}")
        return client

    async def _write_client(self) -> tuple[AsyncModbusTcpClient, asyncio.Lock]:
        """The connection writes go over: the polls' own, or (``write_connection = "own"``)
        one of their own, opened on the first write and again after a failed one, so that a
        setpoint never queues behind a poll nor a late reply to it confuses the next read."""
        if self.cfg.write_connection == "shared":
            return self._require_client(), self._io
        if self._writer is None or not self._writer.connected:
            self._drop_writer()
            self._writer = await self._open()
        return self._writer, self._write_io

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        self._drop_writer()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def read(self) -> Sequence[Point]:
        sent = self._wall()
        self._source.begin(sent)
        plan, due = self._plan()
        self._polls += 1
        image: dict[int, int] = {}
        for block in plan:
            regs = await self._read_block(block.start, block.count)
            image.update(zip(range(block.start, block.start + block.count), regs, strict=True))
        received = self._wall()
        values = decode_registers(self.regmap, image, due)
        points: list[Point] = []
        for p in due:
            value = values[p.name]
            if value is None:
                continue
            si, unit = to_si(value, p.unit)
            key = point_key(self.name, p.name)
            source = self._source.stamp(key, si)
            points.append(Point(key, si, unit, Quality.GOOD, source, received))
        return points

    async def write(self, point: str, value: float) -> None:
        p, native, regs = await self._encode(point, value)
        client, lock = await self._write_client()
        try:
            async with lock:
                reply = await client.write_registers(p.address, regs, device_id=self.cfg.unit_id)
        except (ModbusException, OSError) as exc:
            if client is self._writer:
                self._drop_writer()
            raise DeviceError(self.name, f"write {point} at {p.address}: {exc}") from None
        except asyncio.CancelledError:
            if client is self._writer:
                self._drop_writer()  # its reply may still come: it must not answer the next write
            raise
        self._check(reply, f"write {point} at {p.address}")
        log.debug("device_write", device=self.name, point=point, value=native, unit=p.unit)

    # ---- helpers -------------------------------------------------------------------------

    def _plan(self) -> tuple[list[ReadBlock], list[RegisterPoint]]:
        """The reads of this poll and the points they serve (``poll_every``: slow points only
        on every N-th poll; the first poll reads them all)."""
        key = tuple(n for n in self._every if self._polls % n == 0)
        cached = self._plans.get(key)
        if cached is None:
            due = [p for p in self.regmap.points if p.poll_every in key]
            cached = (read_plan(tuple(due), self.regmap.read_gap), due)
            self._plans[key] = cached
        return cached

    async def _encode(self, point: str, value: float) -> tuple[RegisterPoint, float, list[int]]:
        """Validate a write and turn it into registers (the scale factor read once)."""
        try:
            p = self.regmap.point(point)
        except KeyError:
            raise WriteRefusedError(
                self.name, f"no point {point!r} in map {self.regmap.name!r}"
            ) from None
        if p.access != "rw":
            raise WriteRefusedError(self.name, f"point {point!r} is read-only")
        native = from_si(value, p.unit)
        if (p.minimum is not None and native < p.minimum) or (
            p.maximum is not None and native > p.maximum
        ):
            raise WriteRefusedError(
                self.name,
                f"{point} = {native:g} {p.unit} is outside [{p.minimum}, {p.maximum}]",
            )
        sf = None
        if p.sf_address is not None:
            # Scale factors are fixed by the device (SunSpec): read once, not on every write.
            sf = self._sf_cache.get(p.sf_address)
            if sf is None:
                sf = scale_factor((await self._read_block(p.sf_address, 1))[0])
                if sf is None:
                    raise WriteRefusedError(
                        self.name,
                        f"{point}: its scale factor at {p.sf_address} is not implemented "
                        "by the device",
                    )
                self._sf_cache[p.sf_address] = sf
        try:
            regs = encode_point(p, native, self.regmap.orders(p), sf)
        except ValueError as exc:
            raise WriteRefusedError(self.name, str(exc)) from None
        return p, native, regs

    def _require_client(self) -> AsyncModbusTcpClient:
        if self._client is None or not self._client.connected:
            raise DeviceError(self.name, f"not connected to {self._where()}")
        return self._client

    async def _read_block(self, start: int, count: int) -> list[int]:
        client = self._require_client()
        what = f"registers {start}..{start + count - 1}"
        try:
            async with self._io:
                reply = await client.read_holding_registers(
                    start, count=count, device_id=self.cfg.unit_id
                )
        except (ModbusException, OSError, asyncio.IncompleteReadError) as exc:
            raise DeviceError(self.name, f"read {what}: {exc}") from None
        self._check(reply, f"read {what}")
        regs = list(reply.registers)
        if len(regs) != count:
            raise DeviceError(self.name, f"read {what}: got {len(regs)} registers")
        return regs

    def _check(self, reply: ModbusPDU, what: str) -> None:
        if reply.isError():
            code = getattr(reply, "exception_code", None)
            raise DeviceError(self.name, f"{what}: Modbus exception {code}")

    async def _verify_sunspec(self, regmap: SunSpecRegisterMap) -> None:
        layout = regmap.layout
        marker = tuple(await self._read_block(layout.base_address, 2))
        if marker != SUNS_MARKER:
            raise DeviceError(
                self.name,
                f"no SunSpec marker 'SunS' at {layout.base_address} (found {marker!r}); "
                "check the device's base address",
            )
        for mid, start in layout.starts.items():
            mid_found, length = await self._read_block(start, 2)
            if mid_found != mid or length != layout.lengths[mid]:
                raise DeviceError(
                    self.name,
                    f"expected SunSpec model {mid} (L={layout.lengths[mid]}) at {start}, "
                    f"found model {mid_found} (L={length}); the device's model chain differs "
                    f"from register map {regmap.name!r}",
                )
        end_id = (await self._read_block(layout.end_address, 1))[0]
        if end_id != END_MODEL_ID:
            log.info("sunspec_more_models", device=self.name, next_model=end_id)

    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port} unit {self.cfg.unit_id}"
