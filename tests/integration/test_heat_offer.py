"""The municipal heat offer on the whole gateway: ``GET /v1/heat/offer`` on a real uvicorn
listener and ``PSWD.HeatOffer`` read by a real asyncua client over a secure channel, both on
free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from asyncua import ua
from test_http_api import body
from test_opcua import Site, client_certificate, secure_client
from test_opcua import config as opcua_config

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import DEMO_TOKEN_SHA256, GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.security.certs import init_opcua_certs, trust_opcua_client

pytestmark = pytest.mark.integration

CAPACITY_MW = 40.0
"""``[heat] capacity_mw``'s default: a 200 MW job on the 30 MW base load fills the plant."""
BASE_HEAT_MW = 23.37
"""30 MW base load at 75 °C (docs/grid.md's worked example)."""


@dataclass
class Running:
    gw: Gateway
    api_url: str
    opcua: Site

    def http(self, role: str | None = "viewer") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer pswd-demo-{role}"} if role else {}
        return httpx.AsyncClient(base_url=self.api_url, headers=headers, timeout=10.0)


@contextlib.asynccontextmanager
async def api_and_opcua(tmp_path: Path) -> AsyncIterator[tuple[Gateway, str, Site]]:
    """A gateway with the HTTP API and OPC UA (a trusted client certificate) on free loopback
    ports: (the gateway, the API's URL, the OPC UA site)."""
    certs = tmp_path / "certs"
    init_opcua_certs(certs, ["127.0.0.1", "localhost"])
    cert, key = client_certificate(tmp_path, "scada")
    trust_opcua_client(certs, cert)
    opcua_port = free_port()
    settings = opcua_config(tmp_path, opcua_port).model_dump(mode="json", exclude={"config_dir"})
    settings["listeners"]["api"] = {"host": "127.0.0.1", "port": 0}
    settings["api"] = {
        "tokens": [
            {"name": f"demo-{role}", "role": role, "sha256": digest}
            for digest, role in DEMO_TOKEN_SHA256.items()
        ]
    }
    settings["scheduling"]["replan_interval_s"] = 3600
    gw = Gateway(GatewayConfig.model_validate(settings))
    await gw.start()
    try:
        assert gw.api_listener is not None
        site = Site(gw, f"opc.tcp://127.0.0.1:{opcua_port}/pswd", certs, cert, key)
        yield gw, f"http://127.0.0.1:{gw.api_listener.port}", site
    finally:
        await gw.stop()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with api_and_opcua(tmp_path) as (gw, url, site):
        yield Running(gw, url, site)


async def announce_fixed_job(running: Running) -> tuple[datetime, datetime]:
    """A 200 MW job for an hour, fixed two hours ahead; its scheduled start and end."""
    announcement = body(start_in_h=2.0) | {"flexibility": "fixed"}
    async with running.http("submitter") as http:
        r = await http.post("/v1/workloads", json=announcement)
    assert r.status_code == 201, r.text
    alloc = r.json()["allocation"]
    return (
        datetime.fromisoformat(alloc["scheduled_start"]),
        datetime.fromisoformat(alloc["scheduled_end"]),
    )


def times(slots: list[dict[str, Any]]) -> list[tuple[datetime, datetime]]:
    return [(datetime.fromisoformat(s["start"]), datetime.fromisoformat(s["end"])) for s in slots]


async def test_the_offer_answers_576_five_minute_slots_each_with_mw_and_supply_c(
    running: Running,
) -> None:
    async with running.http("viewer") as http:
        r = await http.get("/v1/heat/offer")
        hotter = await http.get("/v1/heat/offer", params={"supply_c": 85})
    assert r.status_code == 200, r.text
    offer = r.json()
    assert set(offer) == {"generated_at", "supply_c", "slot_s", "slots"}
    assert (offer["supply_c"], offer["slot_s"]) == (75.0, 300)
    slots = offer["slots"]
    assert len(slots) == 576
    assert all(set(s) == {"start", "end", "heat_mw", "supply_c", "requested_mw"} for s in slots)
    assert all(s["requested_mw"] == 0.0 for s in slots)  # no heat request open
    assert all(s["supply_c"] == 75.0 for s in slots)
    assert all(0.0 <= s["heat_mw"] <= CAPACITY_MW for s in slots)
    spans = times(slots)
    assert all(end - start == timedelta(minutes=5) for start, end in spans)
    assert all(a[1] == b[0] for a, b in pairwise(spans))
    assert spans[-1][1] - spans[0][0] == timedelta(hours=48)
    generated = datetime.fromisoformat(offer["generated_at"])
    assert spans[0][0] <= generated < spans[0][1]
    assert slots[0]["heat_mw"] == pytest.approx(BASE_HEAT_MW, abs=0.01)
    assert hotter.status_code == 200, hotter.text
    assert {s["supply_c"] for s in hotter.json()["slots"]} == {85.0}


async def test_a_supply_temperature_outside_70_to_90_gets_a_422_naming_supply_c(
    running: Running,
) -> None:
    """Too cold, too hot, not a number: an RFC 9457 problem naming the field; and no token,
    no offer."""
    async with running.http("viewer") as http:
        for value in ("69.9", "90.5", "hot", "nan"):
            r = await http.get("/v1/heat/offer", params={"supply_c": value})
            assert r.status_code == 422, (value, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert [e["pointer"] for e in problem["errors"]] == ["query:supply_c"], value
            assert "supply_c" in problem["detail"]
    async with running.http(None) as http:
        assert (await http.get("/v1/heat/offer")).status_code == 401


async def test_an_announced_job_raises_the_offer_in_its_window(running: Running) -> None:
    """Before: base load all along. After a 200 MW job is placed: every slot inside its run
    offers the plant's capacity, every slot before it the same as before."""
    async with running.http("viewer") as http:
        before = (await http.get("/v1/heat/offer")).json()["slots"]
        start, end = await announce_fixed_job(running)
        after = (await http.get("/v1/heat/offer")).json()["slots"]
    inside = [i for i, (a, b) in enumerate(times(after)) if start <= a and b <= end]
    earlier = [i for i, (_, b) in enumerate(times(after)) if b <= start - timedelta(minutes=10)]
    assert len(inside) >= 10
    assert len(earlier) >= 12
    assert all(after[i]["heat_mw"] == CAPACITY_MW > before[i]["heat_mw"] for i in inside)
    before_by_start = {s["start"]: s["heat_mw"] for s in before}
    assert all(
        after[i]["heat_mw"] == before_by_start[after[i]["start"]]
        for i in earlier
        if after[i]["start"] in before_by_start
    )


async def test_opcua_serves_the_offer_and_follows_a_new_job(running: Running) -> None:
    """``PSWD.HeatOffer``: the running slot's heat (W) and supply °C, the 576-slot profile and
    its slot starts; read-only; a job announced over HTTP shows in the profile."""
    client = await secure_client(running.opcua, "viewer")
    async with client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        offer = await client.nodes.objects.get_child([f"{idx}:PSWD", f"{idx}:HeatOffer"])
        heat = await offer.get_child(f"{idx}:Heat")
        supply = await offer.get_child(f"{idx}:SupplyTemperature")
        profile = await offer.get_child(f"{idx}:HeatProfile")
        starts = await offer.get_child(f"{idx}:SlotStarts")
        await asyncio.sleep(0.2)
        assert await heat.read_value() == pytest.approx(BASE_HEAT_MW * 1e6, rel=1e-3)
        assert await supply.read_value() == 75.0
        eu = await (await heat.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "W"
        assert await profile.read_value_rank() == ua.ValueRank.OneDimension
        assert await profile.read_array_dimensions() == [576]
        first = await profile.read_value()
        slot_starts = await starts.read_value()
        assert len(first) == len(slot_starts) == 576
        assert all(b - a == timedelta(minutes=5) for a, b in pairwise(slot_starts))
        with pytest.raises(ua.UaStatusCodeError) as denied:
            await heat.write_value(ua.Variant(1.0, ua.VariantType.Double))
        assert denied.value.code in {
            ua.StatusCodes.BadNotWritable,
            ua.StatusCodes.BadUserAccessDenied,
        }

        start, end = await announce_fixed_job(running)
        for _ in range(40):
            later = await profile.read_value()
            if later != first:
                break
            await asyncio.sleep(0.05)
        slot_starts = [s.replace(tzinfo=start.tzinfo) for s in await starts.read_value()]
    inside = [
        i for i, s in enumerate(slot_starts) if start <= s and s + timedelta(minutes=5) <= end
    ]
    assert len(inside) >= 10
    assert all(later[i] == CAPACITY_MW * 1e6 > first[i] for i in inside)
