"""The MMS server's own process: ``python -P -m pswd_gateway.northbound.iec61850.worker FD PID``.

libiec61850 parses whatever an MMS peer sends. Here a crash or a hang inside it ends this
process only; the gateway (:mod:`.process`, the parent ``PID``) notices and starts another.
This side runs :class:`~pswd_gateway.northbound.iec61850.server.MmsServer` unchanged, on a
store of its own that the gateway's point batches fill, and asks the gateway over the socket
``FD`` (:mod:`.link`) for what the hooks would do in one process: carry out an operate, audit a
refusal, count a peer at the door (refused there, or at its TLS handshake).

Nothing here waits for the gateway on libiec61850's thread: what goes up is queued in a
bounded outbox (heartbeats, refusals and door reports are dropped, and counted, when it is
full; operates are few, one per control at most) and written by one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import structlog

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.identity import Identity
from pswd_gateway.logging import configure_logging, get_logger
from pswd_gateway.northbound.iec61850.link import (
    MAX_DOWN_BYTES,
    Answer,
    Beat,
    Caller,
    Door,
    Down,
    Failed,
    GuardChanged,
    LoadStep,
    Operate,
    Points,
    PolicyChanged,
    ProtocolError,
    Ready,
    Refused,
    ScheduleChanged,
    SiteChanged,
    Start,
    Up,
    UsersChanged,
    parse_down,
    read_frame,
    up_frame,
)
from pswd_gateway.northbound.iec61850.server import MmsHooks, MmsServer
from pswd_gateway.security.zones import Admission, Gatekeeper, Listener, Policy, Refusals
from pswd_gateway.store import PointStore
from pswd_gateway.tasks import cancel_and_wait, die_with_parent

__all__ = ["BEAT_S", "main"]

log = get_logger("iec61850")

DoorHook = Callable[[object], Admission | None]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BEAT_S: Final = 0.25
"""Heartbeat period, while libiec61850's worker takes the model lock."""
OUTBOX: Final = 256
"""Messages waiting for the gateway beyond which heartbeats, refusals and door reports drop."""
ANSWER_TIMEOUT_S: Final = 10.0
"""An operate the gateway has not answered by then fails (AddCause Blocked-by-process)."""
START_TIMEOUT_S: Final = 10.0
"""The first frame (:class:`Start`) must arrive within this."""
EXIT_UNHEALTHY: Final = 70
"""Exit code when the server's worker thread or feed task ended (``EX_SOFTWARE``)."""


class Link:
    """The socket to the gateway, from this side."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.dropped = 0
        self._out: deque[bytes] = deque()
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._answers: dict[int, asyncio.Future[str | None]] = {}
        self._ids = itertools.count(1)

    def post(self, message: Up, *, droppable: bool = True) -> None:
        """Queue ``message`` (on the loop). A droppable one is dropped, and counted, when the
        outbox is full: the gateway is behind, and a stalled gateway must not grow this."""
        if droppable and len(self._out) >= OUTBOX:
            self.dropped += 1
            return
        self._out.append(up_frame(message))
        self._idle.clear()
        self._more.set()

    async def run(self) -> None:
        """Write what is queued; ends (``ConnectionError``) when the gateway has gone."""
        while True:
            await self._more.wait()
            self._more.clear()
            while self._out:
                self.writer.write(self._out.popleft())
            await self.writer.drain()
            if not self._out:
                self._idle.set()

    async def flush(self, timeout_s: float) -> None:
        """Wait until what is queued has been written (at most ``timeout_s``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()

    async def operate(self, action: str, value: float | bool, caller: Identity) -> None:
        """``MmsHooks.operate``: the gateway carries it out; raises what it answered."""
        ident = next(self._ids)
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._answers[ident] = answer
        try:
            self.post(Operate(ident, action, value, Caller.of(caller)), droppable=False)
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                error = await answer
        except TimeoutError:
            raise TimeoutError(f"the gateway did not answer in {ANSWER_TIMEOUT_S:g} s") from None
        finally:
            self._answers.pop(ident, None)
        if error is not None:
            raise RuntimeError(error)

    async def refused(self, caller: Identity, action: str, why: str) -> None:
        """``MmsHooks.refused``: the gateway audits it."""
        self.post(Refused(Caller.of(caller), action, why))

    def answer(self, message: Answer) -> None:
        waiting = self._answers.get(message.id)
        if waiting is not None and not waiting.done():
            waiting.set_result(message.error)


@dataclass
class Shared:
    """What the gateway keeps current here: read by the server (its thread and its loop)."""

    site: SiteConfig
    load_step: bool


@dataclass
class ReportedRefusals(Refusals):
    """Refusals at this process's door, each told to the gateway (which counts them and audits
    them at most once a minute per peer)."""

    report: Callable[[str, str, str], None] = lambda *_: None

    def refuse(
        self, listener: Listener, peer: str, why: str, reason: str = "not_in_conduit"
    ) -> None:
        del listener  # always iec61850 here
        self.report(peer, why, reason)


def door(
    policy: Policy, rate_per_s: float | None, link: Link, loop: asyncio.AbstractEventLoop
) -> tuple[Gatekeeper, DoorHook]:
    """This process's copy of the gateway's door (the zone policy, the listener's connection
    rate) and the connection hook that asks it (on libiec61850's thread); the gateway is told
    what it decided for each peer."""

    def tell(message: Door) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
            loop.call_soon_threadsafe(link.post, message)

    def refused(peer: str, why: str, reason: str) -> None:
        with contextlib.suppress(ValueError):
            tell(Door(ipaddress.ip_address(peer), reason=reason, why=why))

    rates: dict[Listener, float] = {"iec61850": rate_per_s} if rate_per_s else {}
    gate = Gatekeeper(policy, ReportedRefusals(report=refused), rates=rates)

    def admit(peer: object) -> Admission | None:
        admission = gate.admit("iec61850", peer)
        if admission is not None and isinstance(peer, IpAddress):
            tell(Door(peer, zone=admission.zone))
        return admission

    return gate, admit


@dataclass
class Receiver:
    """Applies what the gateway sends (a lookup table by message type)."""

    server: MmsServer
    store: PointStore
    shared: Shared
    gate: Gatekeeper
    link: Link

    def apply(self, message: Down) -> bool:
        """Apply ``message``; False when it ends the process (stop, or a second start)."""
        handler = self.HANDLERS.get(type(message))
        if handler is None:
            return False
        handler(self, message)
        return True

    def _points(self, message: Points) -> None:
        self.store.update(message.points)
        self.server.wake()

    def _site(self, message: SiteChanged) -> None:
        self.shared.site = message.site
        self.server.wake()

    def _policy(self, message: PolicyChanged) -> None:
        self.gate.policy = message.policy

    def _users(self, message: UsersChanged) -> None:
        self.server.replace_users(message.users)

    def _guard(self, message: GuardChanged) -> None:
        self.server.control_guard(message.event)

    def _load_step(self, message: LoadStep) -> None:
        self.shared.load_step = message.imminent
        self.server.wake()

    def _schedule(self, message: ScheduleChanged) -> None:
        self.server.replace_schedule(message.schedule, message.revision)

    def _answer(self, message: Answer) -> None:
        self.link.answer(message)

    HANDLERS: ClassVar[dict[type[Any], Callable[[Receiver, Any], None]]] = {
        Points: _points,
        SiteChanged: _site,
        PolicyChanged: _policy,
        UsersChanged: _users,
        GuardChanged: _guard,
        LoadStep: _load_step,
        ScheduleChanged: _schedule,
        Answer: _answer,
    }

    async def run(self, reader: asyncio.StreamReader) -> None:
        """Until the gateway says stop or goes away."""
        while True:
            try:
                message = parse_down(await read_frame(reader, MAX_DOWN_BYTES))
            except (asyncio.IncompleteReadError, ConnectionError):
                log.warning("mms_gateway_gone")
                return
            if not self.apply(message):
                return


async def _beat(server: MmsServer, link: Link) -> None:
    """A heartbeat with the server's statistics each time the worker thread took an empty
    batch (the model lock) since the last; the next probe after it. A worker that hangs (in
    libiec61850, holding the lock) stops the heartbeats, and the gateway kills the process. A
    worker or feed that ended ends the process."""
    seen = -1
    while True:
        bad = server.unhealthy(time.monotonic())
        if bad:
            log.error("mms_server_unhealthy", parts=bad)
            return
        if server.rounds != seen:
            seen = server.rounds
            link.post(Beat(server.stats, link.dropped))  # encoded now, on this thread
            server.submit([])
        await asyncio.sleep(BEAT_S)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Serve MMS as :class:`Start` says until the gateway says stop or goes; the exit code."""
    async with asyncio.timeout(START_TIMEOUT_S):
        start = parse_down(await read_frame(reader, MAX_DOWN_BYTES))
    if not isinstance(start, Start):
        return 2
    configure_logging(start.log_level, start.log_format)
    structlog.contextvars.bind_contextvars(pid=os.getpid())  # this process's lines, by pid
    link = Link(writer)
    writing = asyncio.create_task(link.run(), name="iec61850-link")
    shared = Shared(start.site, start.load_step)
    gate, admit = door(start.policy, start.rate_per_s, link, asyncio.get_running_loop())
    store = PointStore()
    store.update(start.points)
    server = MmsServer(
        store,
        lambda: shared.site,
        **start.settings.server_kwargs(),
        door=admit,
        hooks=MmsHooks(
            operate=link.operate,
            refused=link.refused,
            load_step_imminent=lambda: shared.load_step,
            peer_refused=lambda peer, why, reason: gate.refusals.refuse(
                "iec61850", peer, why, reason
            ),
        ),
    )
    if start.guard is not None:
        server.control_guard(start.guard)
    if start.schedule is not None:
        server.replace_schedule(start.schedule.schedule, start.schedule.revision)
    try:
        await server.start()
    except Exception as exc:  # noqa: BLE001 - reported to the gateway, which logs and audits it
        link.post(Failed(str(exc)[:1000] or type(exc).__name__), droppable=False)
        await _drain(link, writing)
        return 1
    link.post(Ready(), droppable=False)
    receiver = Receiver(server, store, shared, gate, link)
    receiving = asyncio.create_task(receiver.run(reader), name="receive")
    beating = asyncio.create_task(_beat(server, link), name="beat")
    try:
        done, _ = await asyncio.wait(
            {receiving, beating, writing}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        await cancel_and_wait(beating)
        await cancel_and_wait(receiving)
        await server.stop()
        await _drain(link, writing)
    return EXIT_UNHEALTHY if beating in done else 0


async def _drain(link: Link, writing: asyncio.Task[None]) -> None:
    """Let the outbox go out (at most a second), then close."""
    if not writing.done():
        await link.flush(1.0)
    await cancel_and_wait(writing)
    link.writer.close()


async def _main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        return await serve(reader, writer)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ProtocolError) as exc:
        log.error("mms_process_not_started", error=repr(exc))  # no Start frame from the gateway
        return 2


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    fd, parent = int(args[0]), int(args[1])
    die_with_parent(parent)  # an MMS server never outlives the gateway holding the port
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the gateway's to act on
    code = asyncio.run(_main(fd))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: pyiec61850's destructors at exit are not needed


if __name__ == "__main__":
    main()
