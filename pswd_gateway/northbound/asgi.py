"""Serve an ASGI app with uvicorn inside the running event loop, on a socket we bind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from pswd_gateway.logging import get_logger

__all__ = ["AsgiListener"]

log = get_logger("asgi")

START_TIMEOUT_S = 10.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: the daemon owns SIGINT/SIGTERM, not the listener."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


Door = Callable[[object], object | None]
"""Asked with a connection's peer address at accept: an admission, or None to refuse it."""


def _guarded(door: Door) -> type[H11Protocol]:
    """uvicorn's HTTP protocol that closes a connection the door refuses, before reading it."""

    class Guarded(H11Protocol):
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if door(transport.get_extra_info("peername")) is None:
                self._refused = True
                transport.abort()
                return
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._refused:
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

    return Guarded


@dataclass
class AsgiListener:
    """One HTTP listener. ``port=0`` binds a free port; :attr:`port` tells which after start."""

    app: ASGIApp
    host: str
    port: int
    name: str = "http"
    stop_timeout_s: float = 2.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    admit: Door | None = None
    """The zone policy's door (``security.zones.Gatekeeper.door``); None admits everyone."""
    _server: uvicorn.Server | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it can tell are TCP;
        # without it every response waits ~40 ms for Nagle's algorithm.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"{self.name} listener cannot bind {self.host}:{self.port}: {exc.strerror}",
            ) from exc
        sock.listen(128)
        sock.setblocking(False)  # noqa: FBT003 - socket API
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
            ssl_certfile=self.tls_cert,
            ssl_keyfile=self.tls_key,
            http=H11Protocol if self.admit is None else _guarded(self.admit),
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                await self._task  # surfaces the start-up error
                raise RuntimeError(f"{self.name} listener stopped during start-up")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(f"{self.name} listener did not start within {START_TIMEOUT_S} s")
            await asyncio.sleep(0.01)
        log.info("listener_started", listener=self.name, host=self.host, port=self.port)

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        """The listener, when its server task ended without being stopped."""
        return [f"listener:{self.name}"] if self._task is not None and self._task.done() else []

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout_s)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None
        log.info("listener_stopped", listener=self.name)
