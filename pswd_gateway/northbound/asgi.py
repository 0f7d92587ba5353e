"""Serve an ASGI app with uvicorn inside the running event loop, on a socket we bind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from pswd_gateway.domain.identity import Identity
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.acceptor import Acceptor
from pswd_gateway.security.pki import RevocationList, certificate_holder, load_certificate

__all__ = ["AsgiListener", "ClientTls", "ssl_context"]

log = get_logger("asgi")

START_TIMEOUT_S = 10.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: the daemon owns SIGINT/SIGTERM, not the listener. With a
    door, our :class:`~pswd_gateway.northbound.acceptor.Acceptor` accepts on the socket in place
    of asyncio's server (a refused peer costs an accept and a close, not a connection's set-up)."""

    def __init__(self, config: uvicorn.Config, door: Door | None = None) -> None:
        super().__init__(config)
        self.door = door

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.door is None or not sockets:
            await super().startup(sockets)
            return
        config = self.config

        def protocol() -> asyncio.Protocol:  # as uvicorn's startup makes it
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        self.servers = []
        for sock in sockets:
            sock.listen(config.backlog)
            acceptor = Acceptor(sock, self.door, protocol, config.ssl)
            acceptor.start()
            self.servers.append(acceptor)  # type: ignore[arg-type]  # close() and wait_closed()
        self.started = True


Door = Callable[[object], object | None]
"""Asked with a connection's peer address at accept: an admission, or None to refuse it."""
Refused = Callable[[object, str, str], None]
"""Told of a TLS peer refused after the handshake: (peer address, why, reason label)."""
Peer = tuple[str, int]


@dataclass
class ClientTls:
    """Mutual TLS of one listener: the CA that signs client certificates, whether a client must
    show one, and the revocation list (re-read whenever the file changes)."""

    ca: Path
    required: bool = True
    crl: Path | None = None
    _list: RevocationList | None = field(default=None, init=False)

    def revoked(self, serial: int, context: ssl.SSLContext | None = None) -> bool:
        """Whether the CRL revokes ``serial``; a changed CRL is re-read (and loaded into
        ``context``, so the next handshakes refuse the certificate themselves)."""
        if self.crl is None:
            return False
        first = self._list is None
        if self._list is None:
            self._list = RevocationList(self.crl)
        try:
            if self._list.refresh():
                if context is not None and not first:
                    context.load_verify_locations(cafile=str(self.crl))
                log.info("crl_loaded", crl=str(self.crl), revoked=len(self._list.serials))
        except (OSError, ValueError) as exc:  # keep the last good list; say why
            log.error("crl_unreadable", crl=str(self.crl), error=str(exc))
        return self._list.revokes(serial)


def ssl_context(cert: Path, key: Path, client: ClientTls | None) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer; with ``client``, certificates verified against its
    CA and CRL (a certificate the CRL names fails the handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client is not None:
        context.load_verify_locations(cafile=str(client.ca))
        context.verify_mode = ssl.CERT_REQUIRED if client.required else ssl.CERT_OPTIONAL
        if client.crl is not None:
            context.load_verify_locations(cafile=str(client.crl))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
            client.revoked(0)  # read it once now, so a later change is noticed
    return context


def _certificate(
    transport: asyncio.Transport, client: ClientTls, context: ssl.SSLContext | None
) -> tuple[str | None, Identity | None]:
    """(why it is refused, or None; the holder it names) of a TLS peer's certificate."""
    tls = transport.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    if not der:
        return None, None
    serial = load_certificate(der).serial_number
    if client.revoked(serial, context):
        return f"client certificate {serial:X} is revoked", None
    return None, certificate_holder(der)


@dataclass(frozen=True)
class _Gate:
    """What :class:`_GuardedProtocol` checks once the TLS handshake is done, for one listener
    (the zone policy's door is the :class:`~pswd_gateway.northbound.acceptor.Acceptor`'s)."""

    client: ClientTls
    peers: dict[Peer, Identity]
    refused: Refused
    context: ssl.SSLContext | None


class _GuardedProtocol(H11Protocol):
    """uvicorn's HTTP protocol for mutual TLS: it closes a connection whose client certificate
    was revoked since the CRL was loaded, before reading it. The certificate's holder is kept in
    ``peers`` by the client's address while it is open."""

    gate: _Gate
    _refused = False
    _peer: Peer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """uvicorn's set-up waits for :meth:`connection_made`: a refused connection costs no
        HTTP connection's state."""
        self._init = (args, kwargs)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gate = self.gate
        peer = transport.get_extra_info("peername")
        args, kwargs = self._init
        super().__init__(*args, **kwargs)
        revoked, who = _certificate(transport, gate.client, gate.context)
        if revoked is not None:
            gate.refused(peer, revoked, "revoked")
            self._refuse(transport)
            return
        if who is not None and isinstance(peer, tuple):
            self._peer = (str(peer[0]), int(peer[1]))
            gate.peers[self._peer] = who
        super().connection_made(transport)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self.gate.peers.pop(self._peer, None)
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)


def _guarded(gate: _Gate) -> type[H11Protocol]:
    return type("GuardedProtocol", (_GuardedProtocol,), {"gate": gate})


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
    client_tls: ClientTls | None = None
    """Mutual TLS (with ``tls_cert``): client certificates verified, revoked ones refused."""
    admit: Door | None = None
    """The zone policy's door (``security.zones.Gatekeeper.door``); None admits everyone."""
    refused: Refused = lambda *_: None
    peers: dict[Peer, Identity] = field(default_factory=dict)
    """The holder of each open connection's client certificate, by the client's address."""
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
        context = None
        if self.tls_cert is not None and self.tls_key is not None:
            context = ssl_context(self.tls_cert, self.tls_key, self.client_tls)
        # The door is the acceptor's (at accept, before any set-up); the protocol checks what
        # only the TLS handshake shows (a revoked client certificate).
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
            http=(
                _guarded(_Gate(self.client_tls, self.peers, self.refused, context))
                if self.client_tls is not None
                else H11Protocol
            ),
        )
        config.load()
        config.ssl = context
        self._server = _EmbeddedServer(config, self.admit)
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
