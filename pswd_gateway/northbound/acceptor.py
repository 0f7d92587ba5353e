"""A listening socket read by the event loop itself, the zone policy's door at accept.

asyncio's server takes up to its backlog (uvicorn: 2,048) connections in one callback and gives
each a task, a transport and a protocol before any code of ours sees the peer; refusing a peer
then costs all of that and a close. Under a connection flood from a refused peer (thousands a
second) that is most of a core and callbacks of tens of milliseconds, which the control cycle
waits behind. Here each readiness of the socket accepts at most :data:`ACCEPT_BATCH`
connections and asks the door of each: a refused one is closed at once (an accept, the door and
a close), an admitted one becomes the protocol's connection through
``loop.connect_accepted_socket`` (TLS handshake included), as asyncio's server would make it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Final

from pswd_gateway.logging import get_logger

__all__ = ["ACCEPT_BATCH", "Acceptor"]

log = get_logger("acceptor")

ACCEPT_BATCH: Final = 16
"""Connections accepted per readiness of the socket: one callback stays well under a millisecond
however many wait, and the loop's other callbacks run between batches."""
PAUSE_AFTER_ERROR_S: Final = 1.0
"""After accept fails for want of resources (file descriptors, buffers), as asyncio pauses."""
HANDSHAKE_TIMEOUT_S: Final = 10.0


class Acceptor:
    """Accepts on ``sock`` (listening, non-blocking) while open; ``door(peer)`` None refuses.

    It answers to ``close()`` and ``wait_closed()`` as an ``asyncio.Server`` does, so uvicorn
    can stop it as one of its servers.
    """

    def __init__(
        self,
        sock: socket.socket,
        door: Callable[[object], object | None],
        protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None = None,
    ) -> None:
        self._sock = sock
        self._door = door
        self._protocol = protocol
        self._context = context
        self._loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task[None]] = set()
        self._serving = False
        self.accepted = 0
        self.refused = 0

    def start(self) -> None:
        self._serving = True
        self._loop.add_reader(self._sock.fileno(), self._ready)

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
        for task in self._connecting:
            task.cancel()

    async def wait_closed(self) -> None:
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)

    def _ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM
                log.error("accept_failed", error=str(exc), pause_s=PAUSE_AFTER_ERROR_S)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(PAUSE_AFTER_ERROR_S, self._resume)
                return
            if self._door(peer) is None:
                self.refused += 1
                conn.close()
                continue
            self.accepted += 1
            conn.setblocking(False)  # noqa: FBT003 - socket API
            task = self._loop.create_task(self._connect(conn, peer))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._ready)

    async def _connect(self, conn: socket.socket, peer: object) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self._protocol,
                conn,
                ssl=self._context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._context else None,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # a handshake that failed
            log.debug("connection_not_set_up", peer=str(peer), error=str(exc))
            with contextlib.suppress(OSError):
                conn.close()
