"""The Redfish driver against the BMC twin server: auth, fast paths, fallback, power limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.errors import DeviceError, WriteRefusedError
from pswd_gateway.simulation.redfish import ChassisReading, RedfishTwinServer
from pswd_gateway.southbound.redfish.driver import RedfishDriver, parse_metric_report

pytestmark = pytest.mark.integration


@dataclass
class FakeRacks:
    """50 racks, rack i drawing (i + 1) kW; limits between 10 kW and 100 kW."""

    count: int = 50
    limits: dict[str, float] = field(default_factory=dict)

    def chassis_ids(self) -> Sequence[str]:
        return [f"Rack{i:03d}" for i in range(1, self.count + 1)]

    def chassis_reading(self, chassis_id: str) -> ChassisReading:
        return ChassisReading(int(chassis_id[4:]) * 1000.0, 24.5, 3.6e6, 1.7e9)

    def power_limit_range_w(self, chassis_id: str) -> tuple[float, float]:
        del chassis_id
        return 10_000.0, 100_000.0

    def power_limit_w(self, chassis_id: str) -> float | None:
        return self.limits.get(chassis_id)

    def set_power_limit_w(self, chassis_id: str, watts: float | None) -> None:
        if watts is None:
            self.limits.pop(chassis_id, None)
        else:
            self.limits[chassis_id] = watts


@pytest.fixture
async def bmc() -> AsyncIterator[RedfishTwinServer]:
    server = RedfishTwinServer(FakeRacks(), sse_interval_s=0.05)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def config(server: RedfishTwinServer, **kw: object) -> RedfishDeviceConfig:
    return RedfishDeviceConfig.model_validate(
        {
            "name": "hall",
            "base_url": f"http://127.0.0.1:{server.port}",
            "username": "pswd-demo",
            "password": "pswd-demo-bmc",
            "poll_interval_ms": 200,
            **kw,
        }
    )


async def connected(cfg: RedfishDeviceConfig) -> RedfishDriver:
    driver = RedfishDriver(cfg)
    await driver.connect()
    return driver


async def test_rack_power_readings_arrive_and_sum(bmc: RedfishTwinServer) -> None:
    """Every rack's power arrives in watts; total_power is their sum (1 + … + 50 kW)."""
    driver = await connected(config(bmc, use_event_service=False))
    try:
        points = {p.name: p for p in await driver.read()}
    finally:
        await driver.close()
    assert points["hall.rack001_power"].value == 1000.0
    assert points["hall.rack050_inlet_temp"].unit == "degC"
    assert points["hall.total_power"].value == sum(range(1, 51)) * 1000.0


async def test_wrong_credentials_are_refused_with_a_clear_error(bmc: RedfishTwinServer) -> None:
    """A bad password is a DeviceError that names the user, not an HTTP traceback."""
    with pytest.raises(DeviceError, match="login refused for user 'pswd-demo'"):
        await connected(config(bmc, password="wrong"))


async def test_expired_session_is_re_established(bmc: RedfishTwinServer) -> None:
    """When the BMC forgets the session (401), the driver logs in again and reads on."""
    driver = await connected(config(bmc, use_event_service=False))
    try:
        bmc.sessions.clear()
        points = await driver.read()
    finally:
        await driver.close()
    assert any(p.name == "hall.total_power" for p in points)
    assert len(bmc.sessions) == 0, "the session was deleted on close"


async def test_sse_stream_feeds_reads_without_requests(bmc: RedfishTwinServer) -> None:
    """With the event service, reads come from the SSE stream: no GET per read."""
    driver = await connected(config(bmc))
    try:
        for _ in range(100):
            if driver._latest is not None:
                break
            await asyncio.sleep(0.02)
        assert driver._latest is not None, "no report arrived over SSE"
        before = bmc.requests_total
        for _ in range(5):
            await driver.read()
        assert bmc.requests_total == before
    finally:
        await driver.close()


async def test_power_limit_write_reaches_the_rack(bmc: RedfishTwinServer) -> None:
    """A power-limit write PATCHes the Control and the backend applies it."""
    driver = await connected(config(bmc, use_event_service=False, power_limit_writes=True))
    try:
        await driver.write("rack007_power_limit", 50_000.0)
        points = {p.name: p.value for p in await driver.read()}
    finally:
        await driver.close()
    assert bmc.backend.power_limit_w("Rack007") == 50_000.0
    assert points["hall.rack007_power_limit"] == 50_000.0


async def test_out_of_range_and_disallowed_writes_are_refused(bmc: RedfishTwinServer) -> None:
    """Limits outside AllowableMin/Max, unknown points and disabled writes never reach the BMC."""
    driver = await connected(config(bmc, use_event_service=False, power_limit_writes=True))
    try:
        with pytest.raises(WriteRefusedError, match="outside"):
            await driver.write("rack007_power_limit", 5.0)
        with pytest.raises(WriteRefusedError, match="not a writable"):
            await driver.write("rack007_power", 50_000.0)
    finally:
        await driver.close()
    readonly = await connected(config(bmc, use_event_service=False))
    try:
        with pytest.raises(WriteRefusedError, match="disabled"):
            await readonly.write("rack007_power_limit", 50_000.0)
    finally:
        await readonly.close()
    assert bmc.backend.power_limit_w("Rack007") is None


async def test_stopped_bmc_is_a_device_error(bmc: RedfishTwinServer) -> None:
    """A BMC that went away makes read() raise DeviceError, not an httpx exception."""
    driver = await connected(config(bmc, use_event_service=False, timeout_ms=500))
    await bmc.stop()
    try:
        with pytest.raises(DeviceError):
            await driver.read()
    finally:
        await driver.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    report=json_values
    | st.fixed_dictionaries(
        {
            "MetricValues": st.lists(
                st.fixed_dictionaries(
                    {
                        "MetricProperty": st.sampled_from(
                            [
                                "/redfish/v1/Chassis/R1/EnvironmentMetrics#/PowerWatts/Reading",
                                "x",
                                "",
                            ]
                        ),
                        "MetricValue": json_values,
                        "Timestamp": json_values,
                    }
                ),
                max_size=5,
            )
        }
    )
)
@settings(max_examples=200, deadline=None)
def test_hostile_metric_reports_never_crash_the_parser(report: object) -> None:
    """Whatever a BMC sends, parsing gives values or a DeviceError, nothing else."""
    try:
        values, _ = parse_metric_report("hall", report, 0.0)
    except DeviceError:
        return
    for value, unit, _ts in values.values():
        assert unit in ("W", "degC")
        assert value == value  # not NaN
