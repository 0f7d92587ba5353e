"""A full disk under the whole gateway: the journal's file system (tmpfs, mounted for the test)
filled while the gateway controls the twin's battery. Announcements are refused with 507 and
nothing acknowledged before is lost; the control cycle goes on stepping the battery on every
meter reading (it never waits for the journal); with space again, announcements are accepted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.twin import Twin

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

TOKEN = "full-disk-submitter"


@dataclass
class Site:
    gw: Gateway
    twin: Twin
    url: str
    disk: Path


def announcement() -> dict[str, Any]:
    start = datetime.now(UTC) + timedelta(hours=1)
    return {
        "workload_type": "ai_training",
        "power_profile": {
            "peak_power_mw": 20,
            "ramp_rate_mw_per_sec": 5,
            "duration_estimate_sec": 3600,
        },
        "timing_constraints": {
            "earliest_start_time": start.isoformat(),
            "deadline": (start + timedelta(hours=12)).isoformat(),
        },
    }


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True, timeout=10
    )
    twin = Twin(
        SimulationConfig.model_validate(
            {"seed": 5, "ports": {"grid_meter": 0, "bess": 0, "thermal": 0, "redfish": [0, 0]}}
        )
    )
    gw: Gateway | None = None
    try:
        await twin.start()
        port = free_port()
        # polled every 20 ms, as the demo's meter and battery are (the twin's default is
        # 100 ms: 20 runs in 2 s, the very bound the test holds the cycle to)
        devices = [
            {**d, "poll_interval_ms": 20}
            for d in twin.gateway_devices()
            if d["name"] in {"grid_meter", "bess"}
        ]
        gw = Gateway(
            GatewayConfig.model_validate(
                {
                    "listeners": {
                        "metrics": {"enabled": False, "port": 0},
                        "api": {"host": "127.0.0.1", "port": port},
                        "opcua": {"enabled": False, "port": 0},
                        "iec61850": {"enabled": False, "port": 0},
                    },
                    "site": {"grid_meter": "grid_meter", "bess": "bess", "thermal": None},
                    "devices": devices,
                    "storage": {"state_dir": str(disk), "journal_synchronous": "normal"},
                    "api": {
                        "tokens": [
                            {
                                "name": "ml",
                                "role": "submitter",
                                "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                            }
                        ]
                    },
                }
            )
        )
        await gw.start()
        yield Site(gw, twin, f"http://127.0.0.1:{port}", disk)
    finally:
        if gw is not None:
            await gw.stop()
        await twin.stop()
        subprocess.run(["umount", str(disk)], check=True, timeout=10)


def fill(disk: Path) -> Path:
    """Write a file until the file system has no space left."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:  # unbuffered: nothing is left to flush (and fail) at close
            f.write(b"\0" * 65536)
    return filler


async def steps(gw: Gateway, seconds: float) -> tuple[int, int]:
    """(meter-driven control runs, setpoint writes) the cycle made in ``seconds``."""
    assert gw.control is not None
    stats = gw.control.stats
    runs, writes = stats.meter_runs_total, stats.writes_total - stats.write_failures_total
    await asyncio.sleep(seconds)
    return (
        stats.meter_runs_total - runs,
        stats.writes_total - stats.write_failures_total - writes,
    )


async def test_a_full_disk_refuses_announcements_while_control_goes_on(site: Site) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=site.url, headers=headers, timeout=10) as http:
        for _ in range(200):  # the devices' first polls
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        kept = await http.post("/v1/workloads", json=announcement())
        assert kept.status_code == 201, kept.text
        before = await steps(site.gw, 2.0)
        assert before[0] > 20  # the cycle steps on the meter's readings (every 20 ms)

        filler = fill(site.disk)
        refused = None
        for _ in range(50):  # SQLite may still have room in pages it holds
            refused = await http.post("/v1/workloads", json=announcement())
            if refused.status_code == 507:
                break
        assert refused is not None
        assert refused.status_code == 507, refused.text
        assert "Nothing of this request was kept" in refused.json()["detail"]
        runs, _ = await steps(site.gw, 2.0)
        assert runs > 20, "the control cycle stopped stepping while the disk was full"
        listed = await http.get("/v1/workloads")
        assert listed.status_code == 200, listed.text
        assert kept.json()["id"] in {w["id"] for w in listed.json()["items"]}

        filler.unlink()  # space again: accepted again
        again = None
        for _ in range(50):
            again = await http.post("/v1/workloads", json=announcement())
            if again.status_code == 201:
                break
            await asyncio.sleep(0.1)
        assert again is not None
        assert again.status_code == 201, again.text
