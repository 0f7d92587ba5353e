"""Nothing acknowledged is lost: SIGKILL the daemon in a burst of announcements, restart, check."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from pswd_gateway.bench.api import free_port, gateway_config_text, start_gateway_process

AUTH = {"Authorization": "Bearer pswd-demo-submitter"}


def announcement(i: int) -> dict[str, Any]:
    start = datetime.now(UTC) + timedelta(hours=1, minutes=i % 300)
    return {
        "workload_type": "ai_training",
        "name": f"burst-{i}",
        "power_profile": {
            "peak_power_mw": 1 + i % 5,
            "ramp_rate_mw_per_sec": 50,
            "duration_estimate_sec": 1800,
        },
        "timing_constraints": {
            "earliest_start_time": start.isoformat(),
            "deadline": (start + timedelta(hours=6)).isoformat(),
        },
    }


async def test_every_201_survives_sigkill_with_its_allocation(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_config_text(tmp_path / "state", port))
    proc = await start_gateway_process(config, port)
    acknowledged: dict[str, dict[str, Any]] = {}
    counter = iter(range(1_000_000))
    url = f"http://127.0.0.1:{port}"

    async def burst(http: httpx.AsyncClient) -> None:
        for i in counter:
            try:
                r = await http.post("/v1/workloads", json=announcement(i))
            except httpx.HTTPError:
                return  # the daemon died under us: this request was never acknowledged
            if r.status_code == 201:
                acknowledged[r.json()["id"]] = r.json()

    try:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=5.0) as http:
            workers = [asyncio.create_task(burst(http)) for _ in range(8)]
            while len(acknowledged) < 150:
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await asyncio.gather(*workers)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    proc = await start_gateway_process(config, port)
    try:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=5.0) as http:
            for wid, answer in acknowledged.items():
                r = await http.get(f"/v1/workloads/{wid}")
                assert r.status_code == 200, f"{wid} got a 201 but is gone after SIGKILL"
                assert r.json()["allocation"] == answer["allocation"]
            r = await http.get("/v1/workloads", params={"limit": 10_000})
            assert len(r.json()["items"]) >= len(acknowledged)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
