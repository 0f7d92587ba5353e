"""A grid limit the battery cannot hold asks running flexible workloads to cap their power: a
``power_cap`` event on each one's stream (journalled), fixed workloads left alone, the cap lifted
when the limit ends. The real workload service, journal and HTTP API on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_http_api import Api, body, config, start_api

from pswd_gateway.scheduling.service import GridLimit


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    running, stop = await start_api(tmp_path, config(sse_heartbeat_s=0.2))
    try:
        yield running
    finally:
        await stop()


async def caps_of(api: Api, workload_id: str) -> list[dict[str, Any]]:
    """The ``power_cap`` events of one workload, as its SSE stream serves them."""
    got: list[dict[str, Any]] = []
    async with (
        api.client("viewer") as http,
        http.stream("GET", "/v1/events", params={"workload": workload_id}) as stream,
    ):
        kind = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "power_cap":
                got.append(json.loads(line.removeprefix("data: ")))
            elif line.startswith(": keep-alive"):
                break  # the backlog is served
    return got


async def test_a_limit_caps_the_flexible_running_workload_and_spares_the_fixed_one(
    api: Api,
) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=5)
    async with api.client() as http:
        flexible = await http.post("/v1/workloads", json=body(peak_power_mw=150))
        fixed = await http.post(
            "/v1/workloads",
            json=body(peak_power_mw=100)
            | {
                "flexibility": "fixed",
                "timing_constraints": {
                    "earliest_start_time": soon.isoformat(),
                    "deadline": (soon + timedelta(hours=2)).isoformat(),
                },
            },
        )
        assert flexible.status_code == fixed.status_code == 201, (flexible.text, fixed.text)
        ids = flexible.json()["id"], fixed.json()["id"]
        for wid in ids:
            assert (await http.post(f"/v1/workloads/{wid}/start")).status_code == 200
    service = api.service
    # base 30 + 150 + 100 = 280 MW against a limit of 200 without an end: the battery sustains
    # nothing, so the flexible 150 MW holds 150 - 80 = 70 MW
    await service.follow_grid_limit(GridLimit(200.0, "gs_test", None))
    assert service.caps == {ids[0]: 70.0}
    await service.tick()  # nothing changed: asked once
    await service.follow_grid_limit(None)
    assert service.caps == {}

    flexible_caps, fixed_caps = await caps_of(api, ids[0]), await caps_of(api, ids[1])
    assert fixed_caps == []
    assert [c["data"]["cap_mw"] for c in flexible_caps] == [70.0, None]
    asked = flexible_caps[0]["data"]
    assert asked["import_limit_mw"] == 200.0
    assert asked["signal_id"] == "gs_test"
    assert asked["until"] is None
    assert "hold 70 MW" in asked["reason"]
