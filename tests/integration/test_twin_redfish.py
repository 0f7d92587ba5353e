"""The twin's Redfish BMCs: one server per GPU hall on loopback, paused and resumed like the
Modbus devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.errors import DeviceError, WriteRefusedError
from pswd_gateway.simulation.config import HALLS, SimulationConfig
from pswd_gateway.simulation.twin import Twin
from pswd_gateway.southbound.redfish.driver import RedfishDriver

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


async def test_a_limit_written_through_the_power_resource_caps_the_twins_rack(
    twin_config: SimulationConfig,
) -> None:
    """Against the twin's older BMC (power_resource = "Power", two racks, so each draws more
    than its lowest limit), the driver writes the limit through PowerControl[0].PowerLimit and
    the rack's PowerConsumedWatts drops to it; the twin refuses a limit below its range with the
    Redfish message, and one above PowerCapacityWatts never leaves the gateway."""
    redfish = twin_config.redfish.model_copy(
        update={"enabled": True, "racks_per_hall": 2, "power_resource": "Power"}
    )
    async with Twin(twin_config.model_copy(update={"redfish": redfish})) as twin:
        host, port = twin.endpoints["gpu_hall_a"]
        device = RedfishDeviceConfig.model_validate(
            {
                "name": "gpu_hall_a",
                "base_url": f"http://{host}:{port}",
                "username": redfish.username,
                "password": redfish.password,
                "timeout_ms": 3000,
                "power_limit_writes": True,
            }
        )
        driver = RedfishDriver(device)
        try:
            await driver.connect()
            before = {p.name: p.value for p in await driver.read()}
            assert driver.power_sources == {"Rack001": "Power", "Rack002": "Power"}
            low_w = redfish.rack_min_limit_fraction * redfish.rack_rated_kw * 1e3
            limit_w = low_w + 1000.0
            assert before["gpu_hall_a.rack001_power"] > limit_w
            await driver.write("rack001_power_limit", limit_w)
            after = {p.name: p.value for p in await driver.read()}
            with pytest.raises(DeviceError, match="PropertyValueOutOfRange"):
                await driver.write("rack001_power_limit", low_w / 2)
            with pytest.raises(WriteRefusedError, match="outside"):
                await driver.write("rack001_power_limit", 2e3 * redfish.rack_rated_kw)
        finally:
            await driver.close()
    assert after["gpu_hall_a.rack001_power_limit"] == limit_w
    assert after["gpu_hall_a.rack001_power"] == pytest.approx(limit_w)
    assert "gpu_hall_a.rack002_power_limit" not in after
