"""Serve an ASGI app with uvicorn inside the running event loop, on a socket we bind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

import uvicorn
from starlette.types import ASGIApp

from pswd_gateway.logging import get_logger

__all__ = ["AsgiListener"]

log = get_logger("asgi")


@dataclass
class AsgiListener:
    """One HTTP listener. ``port=0`` binds a free port; :attr:`port` tells which after start."""

    app: ASGIApp
    host: str
    port: int
    name: str = "http"
    stop_timeout_s: float = 2.0
    _server: uvicorn.Server | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
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
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        while not self._server.started:
            if self._task.done():
                await self._task  # surfaces the start-up error
                raise RuntimeError(f"{self.name} listener stopped during start-up")
            await asyncio.sleep(0.01)
        log.info("listener_started", listener=self.name, host=self.host, port=self.port)

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
