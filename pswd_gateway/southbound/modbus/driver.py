"""The Modbus TCP driver: reads a register map with the fewest requests, decodes to SI points."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from pswd_gateway.config import ModbusDeviceConfig
from pswd_gateway.domain.points import Point, Quality, point_key
from pswd_gateway.domain.units import from_si, si_unit, to_si
from pswd_gateway.errors import DeviceError, WriteRefusedError
from pswd_gateway.logging import get_logger
from pswd_gateway.southbound.modbus.registermap import (
    SUNSSF_LIMIT,
    ReadBlock,
    RegisterMap,
    RegisterPoint,
    decode_registers,
    encode_point,
    in_valid_range,
    read_plan,
    scale_factor,
    signed_scale_factor,
)
from pswd_gateway.southbound.modbus.sunspec import (
    END_MODEL_ID,
    SUNS_MARKER,
    SunSpecLayout,
    SunSpecRegisterMap,
)
from pswd_gateway.southbound.source_time import SourceClock

__all__ = ["ModbusDriver"]

log = get_logger("modbus")

LOG_EVERY_S: Final = 10.0
"""At most one implausible-reading warning per point and kind in this long."""
OUT_OF_RANGE: Final = "out of range"
NOT_AVAILABLE: Final = "not available"
MAX_CHAIN_MODELS: Final = 256
"""Model headers walked before a chain without an end model is given up on."""
MODBUS_ADDRESSES: Final = 0x10000
READ_FUNCTIONS: Final[Mapping[str, int]] = {"holding": 3, "input": 4}
"""The function code that reads each register table."""
WRITE_REGISTERS: Final = 16
EXCEPTION_FLAG: Final = 0x80
"""Set in the function code of an exception reply."""
EXCEPTION_NAMES: Final[Mapping[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
"""The Modbus application protocol's exception codes."""
SUNSSF_NOT_IMPLEMENTED: Final = 0x8000


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
        self._last_good: dict[str, float] = {}
        """Each point's last plausible SI value: what an unavailable reading is shown with."""
        self._last_log: dict[tuple[str, str], float] = {}
        self._monotonic = time.monotonic
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
                self.regmap = await self._discover_sunspec(self.regmap)
            except DeviceError:
                await self.close()
                raise
            self._plans.clear()
            self._sf_cache.clear()
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
            if p.sf_address is not None:
                self._check_scale_factor(p, image[p.sf_address])
            point = self._point(p, values[p.name], received)
            if point is not None:
                points.append(point)
        return points

    def _point(self, p: RegisterPoint, value: float | None, received: float) -> Point | None:
        """One decoded reading as a point, judged for plausibility.

        A "not available" reading (``value`` None) of a point never seen is left out (the device
        does not implement it); of one seen before it is published invalid with its last
        plausible value, so nothing goes on showing that value as good. A reading outside the
        point's ``valid_range`` is published questionable, "out of range". A value too large
        for a float in SI units (1e307 kWh) counts as not available."""
        key = point_key(self.name, p.name)
        si, unit = to_si(value, p.unit) if value is not None else (math.nan, si_unit(p.unit))
        if value is None or not math.isfinite(si):
            last = self._last_good.get(key)
            if last is None:
                return None
            self._log_rate_limited("point_not_available", p.name)
            return Point(key, last, unit, Quality.INVALID, received, received, NOT_AVAILABLE)
        source = self._source.stamp(key, si)
        if not in_valid_range(p, value):
            assert p.valid_range is not None
            lo, hi = p.valid_range
            self._log_rate_limited(
                "point_out_of_range", p.name, value=value, unit=p.unit, low=lo, high=hi
            )
            return Point(key, si, unit, Quality.QUESTIONABLE, source, received, OUT_OF_RANGE)
        self._last_good[key] = si
        return Point(key, si, unit, Quality.GOOD, source, received)

    def _check_scale_factor(self, p: RegisterPoint, register: int) -> None:
        """Warn (rate-limited) when a point's scale factor is outside -10..10: the point then
        has no value, as with an unimplemented one, but the device is misbehaving."""
        sf = signed_scale_factor(register)
        if register != SUNSSF_NOT_IMPLEMENTED and abs(sf) > SUNSSF_LIMIT:
            self._log_rate_limited(
                "scale_factor_out_of_range", p.name, register=p.sf_address, scale_factor=sf
            )

    def _log_rate_limited(self, event: str, point: str, **kw: object) -> None:
        """One warning per point and event every :data:`LOG_EVERY_S` (a broken sensor answers
        every poll, 50 times a second)."""
        now = self._monotonic()
        if now - self._last_log.get((event, point), -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[event, point] = now
            log.warning(event, device=self.name, point=point, **kw)

    async def write(self, point: str, value: float) -> None:
        p, native, regs = await self._encode(point, value)
        client, lock = await self._write_client()
        what = f"write {point} at {p.address}"
        try:
            async with lock:
                reply = await client.write_registers(p.address, regs, device_id=self.cfg.unit_id)
        except (ModbusException, OSError) as exc:
            if client is self._writer:
                self._drop_writer()
            raise DeviceError(self.name, f"{what}: {exc}") from None
        except asyncio.CancelledError:
            if client is self._writer:
                self._drop_writer()  # its reply may still come: it must not answer the next write
            raise
        self._check(reply, WRITE_REGISTERS, what)
        if (reply.address, reply.count) != (p.address, len(regs)):
            raise DeviceError(
                self.name,
                f"{what}: the device acknowledged {reply.count} register(s) at {reply.address}, "
                f"not the {len(regs)} written",
            )
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
                register = (await self._read_block(p.sf_address, 1))[0]
                sf = scale_factor(register)
                if sf is None:
                    problem = (
                        "is not implemented by the device"
                        if register == SUNSSF_NOT_IMPLEMENTED
                        else f"reads {signed_scale_factor(register)}, outside the "
                        f"-{SUNSSF_LIMIT}..{SUNSSF_LIMIT} SunSpec allows"
                    )
                    raise WriteRefusedError(
                        self.name, f"{point}: its scale factor at {p.sf_address} {problem}"
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
        what = f"read registers {start}..{start + count - 1}"
        reply = await self._read(self.regmap.table, start, count, what)
        self._check(reply, READ_FUNCTIONS[self.regmap.table], what)
        regs = list(reply.registers)
        if len(regs) != count:
            raise DeviceError(self.name, f"{what}: got {len(regs)} registers")
        return regs

    async def _read(self, table: str, start: int, count: int, what: str) -> ModbusPDU:
        """One read request; a lost connection, a timeout or an undecodable answer is a
        :class:`DeviceError`."""
        client = self._require_client()
        try:
            async with self._io:
                if table == "input":
                    return await client.read_input_registers(
                        start, count=count, device_id=self.cfg.unit_id
                    )
                return await client.read_holding_registers(
                    start, count=count, device_id=self.cfg.unit_id
                )
        except (ModbusException, OSError, asyncio.IncompleteReadError) as exc:
            raise DeviceError(self.name, f"{what}: {exc}") from None

    def _check(self, reply: ModbusPDU, function: int, what: str) -> None:
        """Refuse an exception reply, and a reply to another function than the request's (its
        registers would be another table's, or no registers at all)."""
        if reply.function_code == function | EXCEPTION_FLAG:
            code = reply.exception_code
            name = EXCEPTION_NAMES.get(code, "not a Modbus exception code")
            raise DeviceError(self.name, f"{what}: Modbus exception {code} ({name})")
        if reply.function_code != function:
            raise DeviceError(
                self.name,
                f"{what}: the answer is to function code {reply.function_code}, "
                f"not to the request's {function}",
            )

    async def _discover_sunspec(self, regmap: SunSpecRegisterMap) -> SunSpecRegisterMap:
        """Find the device's ``SunS`` marker, walk its model chain and place the map's points
        where the device has their models."""
        base = None
        for address in regmap.base_addresses:
            marker = await self._probe(address, 2)
            if marker is not None and tuple(marker) == SUNS_MARKER:
                base = address
                break
        if base is None:
            where = ", ".join(map(str, regmap.base_addresses))
            raise DeviceError(
                self.name,
                f"no SunSpec marker 'SunS' at {where}; check the device's base address "
                f"(register map {regmap.name!r})",
            )
        found = await self._walk_chain(base)
        try:
            resolved = regmap.relocated(found)
        except ValueError as exc:
            raise DeviceError(self.name, str(exc)) from None
        for mid in resolved.models:
            expected = regmap.layout.lengths[mid]
            if found.lengths[mid] != expected:
                log.info(
                    "sunspec_model_length_differs",
                    device=self.name,
                    model=mid,
                    length=found.lengths[mid],
                    defined=expected,
                )
        log.info("sunspec_chain", device=self.name, base=base, models=found.describe())
        return resolved

    async def _walk_chain(self, base: int) -> SunSpecLayout:
        """Every model's header from ``base`` + 2 to the end model (the first of each ID)."""
        starts: dict[int, int] = {}
        lengths: dict[int, int] = {}
        address = base + len(SUNS_MARKER)
        for _ in range(MAX_CHAIN_MODELS):
            if address + 2 > MODBUS_ADDRESSES:
                break
            mid, length = await self._read_block(address, 2)
            if mid == END_MODEL_ID:
                return SunSpecLayout(base_address=base, starts=starts, lengths=lengths)
            starts.setdefault(mid, address)
            lengths.setdefault(mid, length)
            address += 2 + length
        raise DeviceError(
            self.name, f"SunSpec chain from {base} has no end model (0xFFFF) before {address}"
        )

    async def _probe(self, start: int, count: int) -> list[int] | None:
        """Registers at ``start``, or ``None`` when the device answers with a Modbus exception
        (nothing there); a lost connection, a timeout or an answer to another function is still
        a :class:`DeviceError`."""
        what = f"read registers {start}..{start + count - 1}"
        function = READ_FUNCTIONS["holding"]
        reply = await self._read("holding", start, count, what)
        if reply.function_code == function | EXCEPTION_FLAG:
            return None
        self._check(reply, function, what)
        if len(reply.registers) != count:
            return None
        return list(reply.registers)

    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port} unit {self.cfg.unit_id}"
