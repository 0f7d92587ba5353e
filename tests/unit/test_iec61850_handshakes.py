"""What the MMS process makes of libiec61850's TLS events and of handshakes that never finish,
without libiec61850: events as its TLS layer raises them (codes of tls_config.h), and sockets
accepted in this process as libiec61850 would hold them."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pswd_gateway.northbound.iec61850.tls import Handshakes

INFO, INCIDENT = 0, 2
ESTABLISHED = 16
PEERS = {1: "10.30.0.7:40001", 2: "10.30.0.8:40002", 3: "[::1]:40003", 4: "10.30.0.9:40004"}


def _handshakes(port: int = 3782, timeout_s: float = 5.0) -> tuple[Handshakes, list[tuple]]:
    told: list[tuple] = []
    seen = Handshakes(
        port,
        lambda *a: told.append(a),
        timeout_s,
        peer_of=lambda connection: PEERS.get(connection or 0, ""),
    )
    return seen, told


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([(3, b"Alarm: certificate unavailable")], "no_certificate"),
        ([(14, b"Alarm: Certificate validation: CA certificate not available"),
          (6, b"Alarm: Certificate verification failed")], "bad_certificate"),
        ([(12, b"Alarm: revoked certificate"), (6, b"Alarm: Certificate verification failed")],
         "revoked"),
        ([(11, b"Alarm: expired certificate"), (6, b"Alarm: Certificate verification failed")],
         "bad_certificate"),
        ([(8, b"Alarm: handshake failed for unknown reason")], "tls_handshake"),
    ],
    ids=["none", "another CA", "revoked", "expired", "plaintext or broken"],
)  # fmt: skip
def test_a_refused_handshake_is_told_once_with_its_reason(
    events: list[tuple[int, bytes]], reason: str
) -> None:
    """libiec61850 raises the event that says why and then "verification failed" for the same
    connection: one refusal, with the first one's reason."""
    seen, told = _handshakes()
    for code, message in events:
        seen.event(INCIDENT, code, message, 1)
    assert [(peer, r) for peer, _, r in told] == [("10.30.0.7", reason)]
    assert events[0][1].decode() in told[0][1]
    assert seen.refused_total == 1


def test_only_handshakes_are_refusals_not_errors_of_an_established_session() -> None:
    seen, told = _handshakes()
    seen.event(INFO, ESTABLISHED, b"Info: Session established", 1)
    seen.event(INCIDENT, 8, b"Alarm: handshake failed for unknown reason", 1)  # a read failed
    seen.event(INCIDENT, 6, b"Alarm: Certificate verification failed", 2)  # no reason first
    seen.event(INCIDENT, 3, b"Alarm: certificate unavailable", 3)  # IPv6
    seen.event(INCIDENT, 3, b"Alarm: certificate unavailable", None)  # no peer: logged only
    seen.event(INFO, 10, b"Info: session renegotiation started", 4)
    assert [(peer, r) for peer, _, r in told] == [
        ("10.30.0.8", "bad_certificate"),
        ("::1", "no_certificate"),
    ]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


def _connect(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection(server.getsockname(), timeout=5.0)
    accepted, _ = server.accept()
    return client, accepted


def test_a_handshake_that_does_not_finish_in_time_is_cut_and_told(
    listener: socket.socket,
) -> None:
    """A connection accepted on the MMS port (here by the test, as libiec61850 would) that has
    not finished its handshake when its time is up is shut down; one that finished is not, nor
    is any other socket of the process."""
    port = listener.getsockname()[1]
    seen, told = _handshakes(port, timeout_s=5.0)
    silent_client, silent = _connect(listener)
    speaking_client, speaking = _connect(listener)
    other = socket.socketpair()
    try:
        host, speaking_port = speaking.getpeername()
        seen.peer_of = lambda _c: f"{host}:{speaking_port}"
        seen.event(INFO, ESTABLISHED, b"Info: Session established", 7)
        assert seen.sweep(now=100.0) == []  # first seen now
        assert seen.sweep(now=104.9) == []
        assert seen.sweep(now=105.0) == ["127.0.0.1"]
        assert silent_client.recv(1) == b""  # shut down: the client sees the end
        speaking_client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            speaking_client.recv(1)  # still open
        assert silent.fileno() >= 0  # the descriptor stays its owner's to close
        assert [(p, r) for p, _, r in told] == [("127.0.0.1", "tls_handshake")]
        assert "no TLS handshake within 5 s" in told[0][1]
        assert seen.cut_total == 1
        # libiec61850's handshake then fails on the closed socket: not told a second time
        seen.peer_of = lambda _c: f"127.0.0.1:{silent.getpeername()[1]}"
        seen.event(INCIDENT, 8, b"Alarm: handshake failed for unknown reason", 8)
        assert len(told) == 1
        assert seen.sweep(now=200.0) == []  # nothing else to cut
    finally:
        for sock in (silent_client, silent, speaking_client, speaking, *other):
            sock.close()


def test_what_is_known_of_a_closed_connection_is_forgotten(listener: socket.socket) -> None:
    seen, _ = _handshakes(listener.getsockname()[1])
    client, accepted = _connect(listener)
    seen.sweep(now=0.0)
    assert seen._peers
    client.close()
    accepted.close()
    seen.sweep(now=1.0)
    assert not seen._peers
    assert not seen._first_seen
