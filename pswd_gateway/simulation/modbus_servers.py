"""One simulated Modbus TCP device per port, on pymodbus 3.16's ``SimDevice`` datastore.

A :class:`RegisterBank` owns a device's holding-register image. The pymodbus server calls our
``action`` hook on every request: a read first asks the bank to refresh the requested range
from the physics (at the exact time of the request), a write is validated and applied by the
bank, and may be refused with a Modbus exception. Read-only registers are flagged in the
``SimData`` so pymodbus itself refuses writes to them (exception 2, illegal data address).

Pausing a device (:meth:`ModbusDeviceServer.stop`) closes its listener and drops its
connections; starting it again binds the same port and serves the same image.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol, cast

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from pswd_gateway.errors import PswdError
from pswd_gateway.logging import get_logger

__all__ = [
    "READ_FUNCTIONS",
    "WRITE_FUNCTIONS",
    "ModbusDeviceServer",
    "RegisterBank",
    "TwinError",
]

log = get_logger("simulation.modbus")

READ_FUNCTIONS: Final = frozenset({3, 4})
"""Read holding registers (3) and, as many devices do, the same image as input registers (4)."""
WRITE_FUNCTIONS: Final = frozenset({6, 16, 22, 23})
LISTEN_TIMEOUT_S: Final = 5.0
SHUTDOWN_TIMEOUT_S: Final = 5.0


class TwinError(PswdError):
    """The twin could not do what it was asked (a port in use, an unknown device)."""


class RegisterBank(Protocol):
    """A device's holding registers from :attr:`base`; the image is the device's memory."""

    @property
    def base(self) -> int: ...

    @property
    def registers(self) -> list[int]:
        """The current image; index 0 is address :attr:`base`."""
        ...

    @property
    def readonly(self) -> list[bool]:
        """Per register: writes are refused."""
        ...

    def refresh(self, address: int, count: int) -> None:
        """Bring ``count`` registers from ``address`` up to date before they are read."""
        ...

    def write(self, address: int, values: list[int]) -> ExcCodes | None:
        """Validate and apply a write; an exception code refuses it (nothing is changed)."""
        ...


def _runs(readonly: list[bool]) -> list[tuple[int, int, bool]]:
    """Split the image into (start, end, readonly) runs."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(readonly) + 1):
        if i == len(readonly) or readonly[i] != readonly[start]:
            runs.append((start, i, readonly[start]))
            start = i
    return runs


class ModbusDeviceServer:
    """A Modbus TCP server for one :class:`RegisterBank` (unit id ``unit_id``)."""

    def __init__(
        self,
        name: str,
        bank: RegisterBank,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
    ) -> None:
        self.name = name
        self.bank = bank
        self.host = host
        self.unit_id = unit_id
        self._port = port
        self._server: ModbusTcpServer | None = None
        self.requests_total = 0
        self.refused_total = 0

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def _device(self) -> SimDevice:
        bank = self.bank
        regs = bank.registers
        simdata = [
            SimData(
                address=bank.base + start,
                values=list(regs[start:end]),
                datatype=DataType.REGISTERS,
                readonly=ro,
            )
            for start, end, ro in _runs(bank.readonly)
        ]
        return SimDevice(id=self.unit_id, simdata=simdata, action=self._action)

    async def start(self) -> None:
        """Listen on ``host:port`` (a free port when 0); idempotent."""
        if self._server is not None:
            return
        server = ModbusTcpServer(self._device(), address=(self.host, self._port))
        try:
            await asyncio.wait_for(server.serve_forever(background=True), LISTEN_TIMEOUT_S)
        except (RuntimeError, OSError, TimeoutError) as exc:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
            raise TwinError(
                f"simulated device {self.name!r} cannot listen on {self.host}:{self._port} "
                f"({exc}); is the port in use? Pick another in [simulation.ports]"
            ) from exc
        listener = cast("asyncio.Server", server.transport)
        self._port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        log.info("modbus_device_listening", device=self.name, host=self.host, port=self._port)

    async def stop(self) -> None:
        """Close the listener and every connection; idempotent. ``start`` serves again."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            await asyncio.wait_for(
                server.shutdown(),  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
                SHUTDOWN_TIMEOUT_S,
            )
        except TimeoutError:
            log.warning("modbus_device_shutdown_timeout", device=self.name, port=self._port)
        log.info("modbus_device_stopped", device=self.name, port=self._port)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook, called before every access with the runtime's register list."""
        self.requests_total += 1
        try:
            if set_values is None:
                if function_code not in READ_FUNCTIONS | WRITE_FUNCTIONS:  # writes read back
                    return self._refuse(function_code, address, ExcCodes.ILLEGAL_FUNCTION)
                self.bank.refresh(address, count)
                first = address - self.bank.base
                offset = address - start_address
                registers[offset : offset + count] = self.bank.registers[first : first + count]
                return None
            if function_code not in WRITE_FUNCTIONS:
                return self._refuse(function_code, address, ExcCodes.ILLEGAL_FUNCTION)
            code = self.bank.write(address, [int(v) for v in set_values])
            if code is not None:
                return self._refuse(function_code, address, code)
        except Exception:
            log.exception(
                "modbus_device_request_failed",
                device=self.name,
                function_code=function_code,
                address=address,
                count=count,
            )
            return ExcCodes.DEVICE_FAILURE
        return None

    def _refuse(self, function_code: int, address: int, code: ExcCodes) -> ExcCodes:
        self.refused_total += 1
        log.info(
            "modbus_request_refused",
            device=self.name,
            function_code=function_code,
            address=address,
            exception=code.name,
        )
        return code
