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
        flood = {(await http.get("/metrics")).text for _ in range(50)}  # 50 more within 0.25 s
        assert len(flood) == 1
        assert len(renders) == 4
        now[0] += health.SCRAPE_REUSE_S
        assert (await http.get("/metrics")).text == "render 5\n"
