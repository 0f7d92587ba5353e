"""The HTTP listeners' acceptor: the door at accept, refused peers closed without a connection's
set-up, a bounded batch per readiness (real sockets on loopback, free ports)."""

from __future__ import annotations

import asyncio
import socket

from pswd_gateway.northbound.acceptor import ACCEPT_BATCH, Acceptor


class Echo(asyncio.Protocol):
    made: list[object] = []  # noqa: RUF012 - shared by the test's instances

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Echo.made.append(transport.get_extra_info("peername"))
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.setblocking(False)  # noqa: FBT003 - socket API
    return sock


def only_loopback_one(peer: object) -> object | None:
    return "admitted" if isinstance(peer, tuple) and peer[0] == "127.0.0.1" else None


async def test_a_refused_peer_is_closed_and_an_admitted_one_served() -> None:
    Echo.made = []
    sock = listening()
    port = sock.getsockname()[1]
    acceptor = Acceptor(sock, only_loopback_one, Echo)
    acceptor.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        assert await asyncio.wait_for(reader.read(10), 5) == b""  # closed without a word
        writer.close()
        assert (acceptor.accepted, acceptor.refused) == (1, 1)
        assert [p[0] for p in Echo.made] == ["127.0.0.1"]  # type: ignore[index]
    finally:
        acceptor.close()
        await acceptor.wait_closed()
        sock.close()


async def test_one_readiness_accepts_a_bounded_batch() -> None:
    """However many connections wait, one callback takes at most ACCEPT_BATCH of them: the
    loop's other callbacks (the control cycle's) run between batches."""
    sock = listening()
    port = sock.getsockname()[1]
    asked: list[object] = []

    def refuse_all(peer: object) -> None:
        asked.append(peer)

    acceptor = Acceptor(sock, refuse_all, Echo)
    clients = []
    for _ in range(3 * ACCEPT_BATCH):
        c = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
        clients.append(c)
    try:
        acceptor._ready()  # one readiness, by hand
        assert len(asked) == ACCEPT_BATCH
        acceptor.start()
        for _ in range(100):
            if len(asked) == 3 * ACCEPT_BATCH:
                break
            await asyncio.sleep(0.01)
        assert len(asked) == 3 * ACCEPT_BATCH
        assert acceptor.refused == 3 * ACCEPT_BATCH
    finally:
        for c in clients:
            c.close()
        acceptor.close()
        sock.close()
