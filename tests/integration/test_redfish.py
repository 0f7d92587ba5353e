"""The Redfish driver against the BMC twin on loopback: every read path, auth, writes, failures.

A fake backend with 50 racks stands in for the site physics, so expected values are exact.
Servers are always stopped and drivers always closed in finalisers; waits are bounded guards,
never timing assertions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from starlette.requests import Request
from starlette.responses import Response

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.errors import DeviceError, WriteRefusedError
from pswd_gateway.simulation.redfish import (
    ChassisReading,
    RedfishError,
    RedfishTwinServer,
)
from pswd_gateway.southbound.base import Driver
from pswd_gateway.southbound.redfish.driver import RedfishDriver

pytestmark = pytest.mark.integration

USER, PASSWORD = "pswd-demo", "pswd-demo-bmc"
RACKS = 50


@dataclass
class FakeRacks:
    """Rack i (Rack001 … Rack050) draws i kW at an inlet of 20 + i/10 °C; limits 10 to 100 kW."""

    count: int = RACKS
    limits: dict[str, float] = field(default_factory=dict)
    boost_w: float = 0.0

    def chassis_ids(self) -> Sequence[str]:
        return [f"Rack{i:03d}" for i in range(1, self.count + 1)]

    def chassis_reading(self, chassis_id: str) -> ChassisReading:
        i = int(chassis_id[4:])
        return ChassisReading(1000.0 * i + self.boost_w, 20.0 + i / 10, 3.6e6 * i, 1.8e9 + i)

    def power_limit_range_w(self, chassis_id: str) -> tuple[float, float]:
        return 10_000.0, 100_000.0

    def power_limit_w(self, chassis_id: str) -> float | None:
        return self.limits.get(chassis_id)

    def set_power_limit_w(self, chassis_id: str, watts: float | None) -> None:
        if watts is None:
            self.limits.pop(chassis_id, None)
        else:
            self.limits[chassis_id] = watts


class NoStreamBmc(RedfishTwinServer):
    """A BMC that advertises an event stream but refuses to open it."""

    async def _sse(self, request: Request) -> Response:
        raise RedfishError(503, "GeneralError", "The event service is temporarily unavailable.")


ServerFactory = Callable[..., Awaitable[RedfishTwinServer]]
Connect = Callable[[RedfishDeviceConfig], Awaitable[RedfishDriver]]


@pytest.fixture
async def start_bmc() -> AsyncIterator[ServerFactory]:
    """Start twin servers (port 0) for a test; every one is stopped afterwards."""
    servers: list[RedfishTwinServer] = []

    async def start(
        cls: type[RedfishTwinServer] = RedfishTwinServer, *, port: int = 0, telemetry: bool = True
    ) -> RedfishTwinServer:
        server = cls(
            FakeRacks(),
            port=port,
            username=USER,
            password=PASSWORD,
            sse_interval_s=0.05,
            telemetry=telemetry,
        )
        servers.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
async def bmc(start_bmc: ServerFactory) -> RedfishTwinServer:
    return await start_bmc()


@pytest.fixture
async def drivers() -> AsyncIterator[Connect]:
    """Connect drivers for a test; every one is closed afterwards."""
    opened: list[RedfishDriver] = []

    async def connect(cfg: RedfishDeviceConfig) -> RedfishDriver:
        driver = RedfishDriver(cfg)
        opened.append(driver)
        await driver.connect()
        return driver

    try:
        yield connect
    finally:
        for driver in opened:
            await driver.close()


def config(server: RedfishTwinServer, **kw: object) -> RedfishDeviceConfig:
    return RedfishDeviceConfig.model_validate(
        {
            "name": "hall",
            "base_url": f"http://127.0.0.1:{server.port}",
            "username": USER,
            "password": PASSWORD,
            "poll_interval_ms": 200,
            "timeout_ms": 2000,
            **kw,
        }
    )


async def until(condition: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    """Wait for ``condition``; the bound only keeps a broken test from hanging."""
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


def values(points: Sequence[Point]) -> dict[str, float]:
    return {p.name: p.value for p in points}


def expected_power(racks: object) -> dict[str, float]:
    assert isinstance(racks, FakeRacks)
    return {
        f"hall.{cid.lower()}_power": racks.chassis_reading(cid).power_w
        for cid in racks.chassis_ids()
    }


async def test_the_driver_is_a_southbound_driver(bmc: RedfishTwinServer) -> None:
    """RedfishDriver satisfies the Driver protocol and takes name/interval/timeout from config."""
    driver = RedfishDriver(config(bmc, poll_interval_ms=500, timeout_ms=300))
    assert isinstance(driver, Driver)
    assert (driver.name, driver.poll_interval_s, driver.timeout_s) == ("hall", 0.5, 0.3)


async def test_rack_power_from_the_metric_report_equals_the_backend(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """One GET of the MetricReport gives every rack's power, inlet and total, in SI units."""
    driver = await drivers(config(bmc, use_event_service=False))
    assert driver.report_path == "/redfish/v1/TelemetryService/MetricReports/PowerReport"
    assert driver.stream_path is None
    before = bmc.requests_total
    points = await driver.read()
    assert bmc.requests_total == before + 1, "one request for 50 racks"
    got = values(points)
    for key, watts in expected_power(bmc.backend).items():
        assert got[key] == watts, key
    assert got["hall.total_power"] == 1000.0 * sum(range(1, RACKS + 1))
    assert got["hall.rack007_inlet_temp"] == pytest.approx(20.7)
    assert not [k for k in got if k.endswith("_power_limit")], "no limit set, no limit point"
    by_name = {p.name: p for p in points}
    assert by_name["hall.rack007_power"].unit == "W"
    assert by_name["hall.rack007_inlet_temp"].unit == "degC"
    assert by_name["hall.rack007_power"].source_ts == 1.8e9 + 7
    assert by_name["hall.total_power"].source_ts == 1.8e9 + 1, "the oldest rack reading"
    assert {p.quality for p in points} == {Quality.GOOD}
    assert len(points) == 2 * RACKS + 1
    assert set(driver.power_sources.values()) == {"MetricReport"}


async def test_without_telemetry_every_chassis_is_read_with_bounded_concurrency(
    start_bmc: ServerFactory, drivers: Connect
) -> None:
    """A BMC without TelemetryService is read through each chassis' EnvironmentMetrics."""
    bmc = await start_bmc(telemetry=False)
    driver = await drivers(config(bmc))
    assert driver.report_path is None
    assert driver.stream_path is None
    bmc.backend.set_power_limit_w("Rack003", 42_000.0)
    before = bmc.requests_total
    got = values(await driver.read())
    assert bmc.requests_total - before == RACKS
    for key, watts in expected_power(bmc.backend).items():
        assert got[key] == watts, key
    assert got["hall.rack003_power_limit"] == 42_000.0
    assert got["hall.total_power"] == 1000.0 * sum(range(1, RACKS + 1))
    assert set(driver.power_sources.values()) == {"EnvironmentMetrics"}
    assert len(driver.power_sources) == RACKS


async def test_a_chassis_filter_reads_only_those_racks(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """cfg.chassis limits the points and the total to the listed chassis."""
    driver = await drivers(config(bmc, use_event_service=False, chassis=["Rack002", "Rack010"]))
    got = values(await driver.read())
    assert set(got) == {
        "hall.rack002_power",
        "hall.rack002_inlet_temp",
        "hall.rack010_power",
        "hall.rack010_inlet_temp",
        "hall.total_power",
    }
    assert got["hall.total_power"] == 12_000.0


async def test_the_session_is_opened_at_connect_and_deleted_at_close(
    bmc: RedfishTwinServer,
) -> None:
    """connect() logs in (one session on the BMC); close() deletes it; both are idempotent."""
    driver = RedfishDriver(config(bmc, use_event_service=False))
    try:
        await driver.connect()
        await driver.connect()
        assert len(bmc.session_ids()) == 1
        assert driver.stats.logins_total == 1
    finally:
        await driver.close()
        await driver.close()
    assert bmc.session_ids() == []


async def test_wrong_credentials_are_refused_with_a_clear_device_error(
    bmc: RedfishTwinServer,
) -> None:
    """A bad password is a DeviceError naming the device, the user and the status."""
    driver = RedfishDriver(config(bmc, password="wrong"))
    with pytest.raises(DeviceError) as refused:
        await driver.connect()
    message = str(refused.value)
    assert "device 'hall'" in message
    assert "POST /redfish/v1/SessionService/Sessions" in message
    assert "login refused for user 'pswd-demo'" in message
    assert "401" in message
    with pytest.raises(DeviceError, match="not connected"):
        await driver.read()


async def test_an_expired_session_is_re_established_once_mid_run(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """When the BMC forgets the session (401), the next read logs in again and succeeds."""
    driver = await drivers(config(bmc, use_event_service=False))
    await driver.read()
    bmc.revoke_sessions()
    got = values(await driver.read())
    assert got["hall.total_power"] == 1000.0 * sum(range(1, RACKS + 1))
    assert driver.stats.logins_total == 2
    assert len(bmc.session_ids()) == 1


async def test_http_basic_reads_the_report_and_follows_the_stream(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """auth = basic: no session on the BMC, and the SSE stream carries Basic credentials too."""
    driver = await drivers(config(bmc, auth="basic"))
    assert driver.auth_mode == "basic"
    assert bmc.session_ids() == []
    await until(lambda: driver.streaming, "a report over SSE with HTTP Basic")
    assert values(await driver.read())["hall.rack050_power"] == 50_000.0


async def test_the_event_stream_feeds_reads_without_requests(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """With the event service, reads answer from the streamed report: no request per read."""
    driver = await drivers(config(bmc))
    assert driver.stream_path == "/redfish/v1/EventService/SSE"
    await until(lambda: driver.streaming, "a report over SSE")
    before = bmc.requests_total
    for _ in range(5):
        got = values(await driver.read())
        assert got["hall.rack050_power"] == 50_000.0
    assert bmc.requests_total == before
    assert driver.stats.stream_reads_total == 5
    racks = bmc.backend
    assert isinstance(racks, FakeRacks)
    racks.boost_w = 1.0
    await until(
        lambda: (
            driver._streamed is not None and driver._streamed.samples["Rack001"].power_w == 1001.0
        ),
        "a newer report",
    )
    assert values(await driver.read())["hall.rack001_power"] == 1001.0


async def test_a_dropped_stream_resumes_from_the_last_event_id(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """After a network blip the driver reconnects with Last-Event-ID and events flow again."""
    driver = await drivers(config(bmc))
    await until(lambda: driver.last_event_id is not None, "a first event")
    bmc.end_streams()
    await until(lambda: driver.stats.stream_failures_total >= 1, "the stream loss noticed")
    await until(lambda: any(i is not None for i in bmc.last_event_ids), "a resuming request")
    resumed_from = next(i for i in bmc.last_event_ids if i is not None)
    assert resumed_from.isdigit()
    await until(lambda: int(driver.last_event_id or 0) > int(resumed_from), "events after resuming")
    await until(lambda: driver.streaming, "streamed values again")


async def test_a_revoked_session_ends_the_stream_and_the_driver_logs_in_again(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """The BMC ends the stream of a deleted session; the reconnect gets 401, logs in, resumes."""
    driver = await drivers(config(bmc))
    await until(lambda: driver.streaming, "a first report")
    events = driver.stats.stream_events_total
    bmc.revoke_sessions()
    await until(lambda: driver.stats.logins_total == 2, "a new login")
    await until(lambda: driver.stats.stream_events_total > events + 2, "events in the new session")
    assert len(bmc.session_ids()) == 1


async def test_a_failing_stream_falls_back_to_polling_the_report(
    start_bmc: ServerFactory, drivers: Connect
) -> None:
    """When the event stream cannot be opened, reads GET the MetricReport and stay correct."""
    bmc = await start_bmc(NoStreamBmc)
    driver = await drivers(config(bmc))
    assert driver.stream_path is not None
    await until(lambda: driver.stats.stream_failures_total >= 1, "the stream refused")
    assert not driver.streaming
    before = bmc.requests_total
    got = values(await driver.read())
    assert bmc.requests_total > before, "the read went to the BMC"
    assert got["hall.total_power"] == 1000.0 * sum(range(1, RACKS + 1))


async def test_polling_is_used_when_the_event_service_is_off(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """use_event_service = false: no stream task; every read is one GET."""
    driver = await drivers(config(bmc, use_event_service=False))
    before = bmc.requests_total
    for _ in range(3):
        await driver.read()
    assert bmc.requests_total == before + 3
    assert bmc.stream_listeners == 0
    assert driver.stats.stream_events_total == 0


async def test_a_power_limit_write_reaches_the_backend(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """write('<rack>_power_limit') PATCHes the Control's SetPoint; the next read shows it."""
    driver = await drivers(config(bmc, use_event_service=False, power_limit_writes=True))
    await driver.write("rack007_power_limit", 50_000.0)
    assert bmc.backend.power_limit_w("Rack007") == 50_000.0
    got = values(await driver.read())
    assert got["hall.rack007_power_limit"] == 50_000.0
    await driver.write("hall.rack007_power_limit", 60_000.0)  # the store key works too
    assert bmc.backend.power_limit_w("Rack007") == 60_000.0


async def test_out_of_range_unknown_and_disabled_writes_are_refused(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """Limits outside AllowableMin/Max, non-limit points and disabled writes never reach the BMC."""
    driver = await drivers(config(bmc, use_event_service=False, power_limit_writes=True))
    with pytest.raises(WriteRefusedError, match=r"outside \[10000, 100000\] W"):
        await driver.write("rack007_power_limit", 5.0)
    with pytest.raises(WriteRefusedError, match="finite"):
        await driver.write("rack007_power_limit", float("nan"))
    for point in ("rack007_power", "total_power", "rack999_power_limit", "nonsense"):
        with pytest.raises(WriteRefusedError, match="not a writable point"):
            await driver.write(point, 50_000.0)
    readonly = await drivers(config(bmc, use_event_service=False))
    with pytest.raises(WriteRefusedError, match="disabled"):
        await readonly.write("rack007_power_limit", 50_000.0)
    assert bmc.backend.power_limit_w("Rack007") is None


async def test_a_stopped_bmc_is_a_device_error_within_the_timeout(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """A BMC that went away makes read() raise DeviceError naming the path, not an httpx error."""
    driver = await drivers(config(bmc, use_event_service=False, timeout_ms=500))
    await bmc.stop()
    with pytest.raises(DeviceError) as failed:
        await asyncio.wait_for(driver.read(), 5.0)  # a guard: the driver's own timeout is 0.5 s
    message = str(failed.value)
    assert "device 'hall'" in message
    assert "GET /redfish/v1/TelemetryService/MetricReports/PowerReport" in message


async def test_a_stopped_bmc_with_a_stream_is_a_device_error_once_the_stream_is_gone(
    bmc: RedfishTwinServer, drivers: Connect
) -> None:
    """Streamed values are not served after the stream is lost: reads go to the BMC and fail."""
    driver = await drivers(config(bmc, timeout_ms=500))
    await until(lambda: driver.streaming, "a first report")
    await bmc.stop()
    await until(lambda: not driver.streaming, "the stream loss noticed")
    with pytest.raises(DeviceError, match="ConnectError"):
        await asyncio.wait_for(driver.read(), 5.0)


async def test_a_restarted_bmc_is_read_again_after_reconnecting(
    start_bmc: ServerFactory, drivers: Connect
) -> None:
    """close() then connect() (what the poller does after a failure) works against a new BMC."""
    bmc = await start_bmc()
    driver = await drivers(config(bmc, use_event_service=False))
    port = bmc.port
    await bmc.stop()
    with pytest.raises(DeviceError):
        await driver.read()
    await driver.close()
    again = await start_bmc(port=port)
    await driver.connect()
    assert values(await driver.read())["hall.rack001_power"] == 1000.0
    assert again.session_ids() != []
