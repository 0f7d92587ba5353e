"""One simulated Modbus TCP device per port, on pymodbus 3.16's ``SimDevice`` datastore.

A :class:`RegisterBank` owns a device's holding-register image. The pymodbus server calls our
``action`` hook on every request: a read first asks the bank to refresh the requested range
from the physics (at the exact time of the request), a write is validated and applied by the
bank, and may be refused with a Modbus exception. Read-only registers are flagged in the
``SimData`` so pymodbus itself refuses writes to them (exception 2, illegal data address).

Pausing a device (:meth:`ModbusDeviceServer.stop`) closes its listener and drops its
connections; starting it again binds the same port and serves the same image.

Faults (``[simulation.faults]``, :class:`~pswd_gateway.simulation.faults.DeviceFaults`) act in
the connection handler, around the datastore access, on the real socket: a request arriving in
a stall is held until the stall ends, then handled (the registers are read at that instant); a
lost request is dropped unhandled and never answered, so the client times out; the reply to any
other one is sent ``jitter`` after it was computed. pymodbus 3.16's own handler reads the
connection's *last* request again after the datastore's await, so a request held while the
client, timed out, sent the next one would be answered with the next one's transaction id; the
handler here keeps each request's PDU from arrival to reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from pswd_gateway.errors import PswdError
from pswd_gateway.logging import get_logger
from pswd_gateway.simulation.faults import DeviceFaults

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


class _Connection(ServerRequestHandler):
    """One client connection: pymodbus's handler, with the device's faults, answering each
    request with its own transaction id (see the module docstring)."""

    def __init__(self, listener: _Listener) -> None:
        super().__init__(listener, None, None, None)  # type: ignore[no-untyped-call]
        self._device = listener.device
        self._held: set[asyncio.Task[None]] = set()

    def handle_later(self) -> None:
        """Called (soon) after a request's PDU arrived: handle it in its own task."""
        pdu: ModbusPDU | None = self.last_pdu
        if pdu is None:
            return
        task = asyncio.get_running_loop().create_task(self._handle(pdu, self.last_addr))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        for task in self._held:  # nobody is left to answer
            task.cancel()

    async def _handle(self, pdu: ModbusPDU, addr: Any) -> None:
        device = self._device
        request = device.next_request()
        if not await device.hold(request):
            return
        response = await self._respond(pdu)
        await device.delay_reply(request)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.pdu_send(response, addr=addr)

    async def _respond(self, pdu: ModbusPDU) -> ModbusPDU:
        """The datastore's answer to ``pdu`` (an exception response if it failed)."""
        try:
            response: ModbusPDU = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except Exception:
            log.exception(
                "modbus_datastore_failed", device=self._device.name, function_code=pdu.function_code
            )
            return ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        return response


class _Listener(ModbusTcpServer):
    """pymodbus's TCP server with :class:`_Connection` handlers."""

    def __init__(
        self, device: ModbusDeviceServer, context: SimDevice, host: str, port: int
    ) -> None:
        self.device = device
        super().__init__(context, address=(host, port))

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)


class ModbusDeviceServer:
    """A Modbus TCP server for one :class:`RegisterBank` (unit id ``unit_id``).

    ``faults`` (with ``clock``, the twin's time in seconds) make it stall, lose requests and
    delay replies; without them it answers every request at once.
    """

    def __init__(
        self,
        name: str,
        bank: RegisterBank,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        faults: DeviceFaults | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if faults is not None and clock is None:
            raise ValueError("a device with faults needs the twin's clock")
        self.name = name
        self.bank = bank
        self.host = host
        self.unit_id = unit_id
        self.faults = faults
        self._clock = clock
        self._port = port
        self._server: ModbusTcpServer | None = None
        self.requests_total = 0
        """Requests that reached the register bank."""
        self.refused_total = 0
        self.received_total = 0
        """Requests received (the next one's number for :class:`DeviceFaults`)."""
        self.lost_total = 0
        self.stalled_total = 0
        """Requests that arrived in a stall and were held until it ended."""
        self._stall: tuple[float, asyncio.Event] | None = None
        """The stall under way: its end and the gate its requests wait at, in arrival order."""

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    # ----------------------------------------------------------------- faults (per request)

    def next_request(self) -> int:
        """The number of a request just received (0, 1, …)."""
        number = self.received_total
        self.received_total += 1
        return number

    async def hold(self, request: int) -> bool:
        """Wait out a stall the request arrived in; ``False`` when it is lost (never answered)."""
        faults = self.faults
        if faults is None or self._clock is None:
            return True
        now = self._clock()
        end = faults.stall_end(now)
        if end is not None:
            self.stalled_total += 1
            log.debug("modbus_request_stalled", device=self.name, request=request, until_s=end)
            await self._stall_gate(end, now).wait()
        if faults.lost(request):
            self.lost_total += 1
            log.debug("modbus_request_lost", device=self.name, request=request)
            return False
        return True

    def _stall_gate(self, end: float, now: float) -> asyncio.Event:
        """The gate of the stall ending at ``end``, opened then: one for all its requests, so
        that they go on in the order they arrived."""
        if self._stall is None or self._stall[0] != end:
            gate = asyncio.Event()
            asyncio.get_running_loop().call_later(end - now, gate.set)
            self._stall = (end, gate)
        return self._stall[1]

    async def delay_reply(self, request: int) -> None:
        """Hold a computed reply for its jitter."""
        if self.faults is not None and (delay := self.faults.jitter_s(request)) > 0.0:
            await asyncio.sleep(delay)

    # ---------------------------------------------------------------------------- serving

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
        server = _Listener(self, self._device(), self.host, self._port)
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
