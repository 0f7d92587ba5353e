"""`bench flood`: the flooding client counts what it did, from the address it was given, and
the insider's address joins every zone of the run's configuration."""

from __future__ import annotations

import asyncio
import ipaddress

from pswd_gateway.bench.flood import SOURCES, _lateness, _with_insider, flood
from pswd_gateway.config import load_config
from pswd_gateway.domain.histogram import LatencyHistogram


async def test_the_flood_counts_answered_and_refused_requests_from_its_source() -> None:
    peers: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        attempts = await flood("api", "127.0.0.1", port, 0.5, 4, SOURCES["insider"])
    finally:
        server.close()
        await server.wait_closed()
    assert attempts > 10
    assert set(peers) == {SOURCES["insider"]}


def test_lateness_quantiles_in_milliseconds() -> None:
    hist = LatencyHistogram(window=1000)
    for i in range(100):
        hist.append(i / 1000)
    late = _lateness(hist)
    assert (late.runs, late.p50_ms, late.p99_ms, late.max_ms) == (100, 50.0, 99.0, 99.0)
    assert _lateness(LatencyHistogram(window=10)).p99_ms is None


def test_the_insider_joins_every_zone_of_the_demo() -> None:
    cfg = _with_insider(load_config(None))
    insider = ipaddress.ip_network("127.0.0.3/32")
    assert all(insider in zone.networks for zone in cfg.zones.values())
    policy = cfg.policy()
    assert policy.admit("api", (SOURCES["insider"], 1)) is not None
    assert policy.admit("api", (SOURCES["outsider"], 1)) is None
