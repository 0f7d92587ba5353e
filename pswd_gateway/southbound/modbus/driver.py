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
    RegisterMap,
    RegisterPoint,
    decode_point,
    encode_point,
    read_plan,
)
from pswd_gateway.southbound.modbus.sunspec import END_MODEL_ID, SUNS_MARKER, SunSpecRegisterMap

__all__ = ["ModbusDriver"]

log = get_logger("modbus")


def _signed16(raw: int) -> int:
    return raw - 0x10000 if raw >= 0x8000 else raw


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
        self._plan = read_plan(regmap.points)
        self._units = {p.name: to_si(1.0, p.unit)[1] for p in regmap.points}
        self._client: AsyncModbusTcpClient | None = None
        self._sf_cache: dict[int, int] = {}
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
        self._client = client
        if isinstance(self.regmap, SunSpecRegisterMap):
            try:
                await self._verify_sunspec(self.regmap)
            except DeviceError:
                await self.close()
                raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def read(self) -> Sequence[Point]:
        sent = self._wall()
        image: dict[int, int] = {}
        for block in self._plan:
            regs = await self._read_block(block.start, block.count)
            image.update(zip(range(block.start, block.start + block.count), regs, strict=True))
        received = self._wall()
        points: list[Point] = []
        for p in self.regmap.points:
            value = self._decode(p, image)
            if value is None:
                continue
            si, unit = to_si(value, p.unit)
            points.append(
                Point(point_key(self.name, p.name), si, unit, Quality.GOOD, sent, received)
            )
        return points

    async def write(self, point: str, value: float) -> None:
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
                sf = _signed16((await self._read_block(p.sf_address, 1))[0])
                self._sf_cache[p.sf_address] = sf
        try:
            regs = encode_point(p, native, self.regmap.orders(p), sf)
        except ValueError as exc:
            raise WriteRefusedError(self.name, str(exc)) from None
        client = self._require_client()
        try:
            async with self._io:
                reply = await client.write_registers(p.address, regs, device_id=self.cfg.unit_id)
        except (ModbusException, OSError) as exc:
            raise DeviceError(self.name, f"write {point} at {p.address}: {exc}") from None
        self._check(reply, f"write {point} at {p.address}")
        log.debug("device_write", device=self.name, point=point, value=native, unit=p.unit)

    # ---- helpers -------------------------------------------------------------------------

    def _decode(self, p: RegisterPoint, image: dict[int, int]) -> float | None:
        regs = [image[a] for a in range(p.address, p.end)]
        sf = None
        if p.sf_address is not None:
            sf = _signed16(image[p.sf_address])
            if sf == -0x8000:
                return None
        return decode_point(p, regs, self.regmap.orders(p), sf)

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
