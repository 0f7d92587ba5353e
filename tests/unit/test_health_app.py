"""The metrics listener's app: a flood of scrapes shares renderings, Prometheus never does."""

from __future__ import annotations

import httpx
import pytest

from pswd_gateway.config import SiteConfig
from pswd_gateway.northbound import health
from pswd_gateway.northbound.metrics import GatewayCollector
from pswd_gateway.store import PointStore


async def test_only_a_flood_of_scrapes_shares_a_rendering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    renders: list[int] = []

    def render(_registry: object) -> bytes:
        renders.append(1)
        return f"render {len(renders)}\n".encode()

    monkeypatch.setattr(health, "generate_latest", render)
    now = [0.0]
    collector = GatewayCollector(PointStore(), SiteConfig, list)
    app = health.health_app(collector, lambda: {"healthy": True, "ready": True}, lambda: now[0])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        answers = []
        for _ in range(4):  # Prometheus-like: each scrape fresh, even close together
            answers.append((await http.get("/metrics")).text)
            now[0] += 0.05
        assert answers == [f"render {i}\n" for i in range(1, 5)]
        flood = set()
        for i in range(5):  # 50 more within 0.25 s, from five addresses (each under its limit)
            peer = httpx.ASGITransport(app=app, client=(f"192.0.2.{i + 1}", 40000))
            async with httpx.AsyncClient(transport=peer, base_url="http://gw") as other:
                flood |= {(await other.get("/metrics")).text for _ in range(10)}
        assert len(flood) == 1
        assert len(renders) == 4
        now[0] += health.SCRAPE_REUSE_S
        assert (await http.get("/metrics")).text == "render 5\n"


async def test_an_address_asking_too_often_gets_429_and_its_connection_closed() -> None:
    now = [0.0]
    collector = GatewayCollector(PointStore(), SiteConfig, list)
    app = health.health_app(collector, lambda: {"healthy": True, "ready": True}, lambda: now[0])
    flooder = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    prometheus = httpx.ASGITransport(app=app, client=("192.0.2.8", 40000))
    burst = int(health.REQUESTS_PER_ADDRESS_PER_S)
    async with (
        httpx.AsyncClient(transport=flooder, base_url="http://gw") as flood,
        httpx.AsyncClient(transport=prometheus, base_url="http://gw") as scraper,
    ):
        paths = ["/metrics", "/healthz", "/readyz"]
        codes = [(await flood.get(paths[i % 3])).status_code for i in range(burst)]
        assert codes == [200] * burst
        refused = await flood.get("/metrics")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert f"192.0.2.7 asked more than {burst} times a second" in refused.text
        assert (await flood.get("/healthz")).status_code == 429
        assert (await scraper.get("/metrics")).status_code == 200  # another address is not held
        now[0] += 1.0
        assert (await flood.get("/metrics")).status_code == 200
