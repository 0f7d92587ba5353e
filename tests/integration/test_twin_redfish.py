"""The twin's Redfish BMCs: one server per GPU hall on loopback, paused and resumed like the
Modbus devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.simulation.config import HALLS, SimulationConfig
from pswd_gateway.simulation.twin import Twin

pytestmark = pytest.mark.integration


@pytest.fixture
async def twin_with_bmcs(twin_config: SimulationConfig) -> AsyncIterator[Twin]:
    cfg = twin_config.model_copy(
        update={"redfish": twin_config.redfish.model_copy(update={"enabled": True})}
    )
    twin = Twin(cfg)
    try:
        await twin.start()
        yield twin
    finally:
        await twin.stop()


async def test_each_hall_has_a_bmc_with_a_service_root(twin_with_bmcs: Twin) -> None:
    """Both halls listen on their own port and answer the Redfish service root."""
    entries = {str(e["name"]): e for e in twin_with_bmcs.gateway_devices()}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for hall in HALLS:
            device = RedfishDeviceConfig.model_validate(entries[hall])
            host, port = twin_with_bmcs.endpoints[hall]
            assert device.base_url == f"http://{host}:{port}"
            response = await client.get(f"{device.base_url}/redfish/v1")
            assert response.status_code == 200


async def test_a_paused_bmc_refuses_connections_and_comes_back_on_its_port(
    twin_with_bmcs: Twin,
) -> None:
    """Pausing a hall's BMC closes its port; resuming opens the same port again."""
    host, port = twin_with_bmcs.endpoints["gpu_hall_b"]
    await twin_with_bmcs.pause_device("gpu_hall_b")
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    await twin_with_bmcs.resume_device("gpu_hall_b")
    assert twin_with_bmcs.endpoints["gpu_hall_b"] == (host, port)
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    writer.close()
    await writer.wait_closed()


async def test_a_twin_switched_to_the_power_resource_serves_power_control_only(
    twin_config: SimulationConfig,
) -> None:
    """redfish.power_resource = "Power": each rack reports PowerControl[0].PowerConsumedWatts;
    EnvironmentMetrics and the TelemetryService are gone (an older BMC)."""
    redfish = twin_config.redfish.model_copy(
        update={"enabled": True, "racks_per_hall": 2, "power_resource": "Power"}
    )
    async with Twin(twin_config.model_copy(update={"redfish": redfish})) as twin:
        host, port = twin.endpoints["gpu_hall_a"]
        auth = (redfish.username, redfish.password)
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}", auth=auth, timeout=5.0
        ) as client:
            chassis = (await client.get("/redfish/v1/Chassis/Rack001")).json()
            assert "EnvironmentMetrics" not in chassis
            power = (await client.get(chassis["Power"]["@odata.id"])).json()
            assert power["PowerControl"][0]["PowerConsumedWatts"] > 0.0
            env = await client.get("/redfish/v1/Chassis/Rack001/EnvironmentMetrics")
            assert env.status_code == 404
            assert "TelemetryService" not in (await client.get("/redfish/v1")).json()
