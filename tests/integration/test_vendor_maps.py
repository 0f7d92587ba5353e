"""Non-SunSpec vendor register maps, read (and written) by the gateway's driver from the twin.

The twin serves each map (``config/devices/eastron-sdm630.toml``: IEEE 754 floats in input
registers; ``config/devices/chiller-controller.toml``: int16 tenths in holding registers;
``config/devices/trane-pic-rthd.toml``: a Trane PIC's (°C + 45) * 10 in input registers) from
its physics over loopback, on a frozen clock so that what the device served is exactly what the
test samples. Faulty sensors are made by overwriting a register after each refresh: a "not
available" pattern turns the point invalid (never a good -3276.8 °C), an implausible reading
questionable with the reason "out of range", each with one rate-limited warning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from pswd_gateway.config import DEVICE_MAPS_DIR, ModbusDeviceConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import to_si
from pswd_gateway.errors import WriteRefusedError
from pswd_gateway.simulation.clock import SimClock
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.devices import (
    PlainMapBank,
    SiteContext,
    chiller_controller_bank,
    sdm630_bank,
    thermal_plant_bank,
    trane_pic_rthd_bank,
)
from pswd_gateway.simulation.modbus_servers import ModbusDeviceServer
from pswd_gateway.simulation.physics import SitePhysics
from pswd_gateway.southbound.modbus import driver as driver_module
from pswd_gateway.southbound.modbus.driver import NOT_AVAILABLE, OUT_OF_RANGE, ModbusDriver
from pswd_gateway.southbound.modbus.sunspec import load_device_map

pytestmark = pytest.mark.integration

FLOAT32_REL = 1e-6
TENTH = 0.05  # half a step of a register in tenths


class StillClock:
    """A monotonic clock that moves only when told: every request between two moves sees the
    same instant of the physics."""

    def __init__(self) -> None:
        self.t = 30.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> StillClock:
    return StillClock()


@pytest.fixture
def site(twin_config: SimulationConfig, clock: StillClock) -> SiteContext:
    """The twin's physics on :class:`StillClock`."""
    sim_clock = SimClock(clock, wall=lambda: 1.7e9)
    return SiteContext(SitePhysics(twin_config), sim_clock)


class FaultySensor:
    """A register bank whose register at ``address`` reads ``raw`` once :attr:`broken` is set
    (a sensor fault the controller reports in its own register)."""

    def __init__(self, bank: PlainMapBank, address: int, raw: int) -> None:
        self.bank = bank
        self.address = address
        self.raw = raw
        self.broken = False

    @property
    def base(self) -> int:
        return self.bank.base

    @property
    def registers(self) -> list[int]:
        return self.bank.registers

    @property
    def readonly(self) -> list[bool]:
        return self.bank.readonly

    def refresh(self, address: int, count: int) -> None:
        self.bank.refresh(address, count)
        if self.broken:
            self.bank.registers[self.address - self.bank.base] = self.raw

    def write(self, address: int, values: list[int]) -> ExcCodes | None:
        return self.bank.write(address, values)


class Recorder:
    """Stands in for the driver's logger: keeps each warning's event and fields."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.warnings.append((event, kw))

    def info(self, event: str, **kw: Any) -> None:
        del event, kw

    def debug(self, event: str, **kw: Any) -> None:
        del event, kw


@asynccontextmanager
async def serving(
    name: str, bank: Any, register_map: str, **cfg: Any
) -> AsyncIterator[ModbusDriver]:
    """The bank on a free loopback port and a connected driver reading it with ``register_map``."""
    server = ModbusDeviceServer(name, bank)
    await server.start()
    device = ModbusDeviceConfig(
        name=name, host=server.host, port=server.port, register_map=register_map, **cfg
    )
    driver = ModbusDriver(device, load_device_map(DEVICE_MAPS_DIR / f"{register_map}.toml"))
    try:
        await driver.connect()
        yield driver
    finally:
        await driver.close()
        await server.stop()


def by_point(points: list[Point] | Any) -> dict[str, Point]:
    return {p.name.partition(".")[2]: p for p in points}


async def test_sdm630_floats_in_input_registers_are_read_as_the_meter_shows_the_grid(
    site: SiteContext,
) -> None:
    """Every SDM630 point arrives good, in SI units, equal (to float32 precision) to the grid
    connection the twin showed: import-positive power, frequency, voltages, energy in joules."""
    truth = site.sample()
    async with serving("sdm630", sdm630_bank(site), "eastron-sdm630") as driver:
        assert driver.regmap.table == "input"
        points = by_point(await driver.read())
    assert {p.quality for p in points.values()} == {Quality.GOOD}
    expected = {
        "active_power": truth.grid_w,
        "reactive_power": truth.grid_var,
        "apparent_power": truth.grid_va,
        "frequency": truth.frequency_hz,
        "voltage": truth.grid_voltage_v,
        "active_power_l1": truth.grid_w / 3,
        "energy_imported": to_si(truth.grid_import_j / 3.6e6, "kWh")[0],
    }
    for name, value in expected.items():
        assert points[name].value == pytest.approx(value, rel=FLOAT32_REL, abs=1e-3), name
    assert points["energy_imported"].unit == "J"
    assert -1.0 <= points["power_factor"].value <= 1.0


async def test_sdm630_nan_register_is_not_available(site: SiteContext) -> None:
    """A float register holding NaN (0x7FC00000) is no value: invalid after a good reading,
    with the last plausible value and the reason "not available"."""
    frequency = load_device_map(DEVICE_MAPS_DIR / "eastron-sdm630.toml").point("frequency")
    faulty = FaultySensor(sdm630_bank(site), frequency.address, 0x7FC0)
    async with serving("sdm630", faulty, "eastron-sdm630") as driver:
        good = by_point(await driver.read())["frequency"]
        faulty.broken = True
        bad = by_point(await driver.read())["frequency"]
    assert good.quality is Quality.GOOD
    assert (bad.quality, bad.reason, bad.value) == (Quality.INVALID, NOT_AVAILABLE, good.value)


async def test_chiller_controller_is_read_and_its_setpoints_written(
    site: SiteContext, clock: StillClock
) -> None:
    """The chiller controller's tenths of a degree decode to the plant's temperatures; a
    setpoint written through the driver moves the plant and reads back; a demand limit in
    percent is written as a ratio (SI) and reads back."""
    bank = chiller_controller_bank(site)
    truth = site.sample()
    async with serving("chiller", bank, "chiller-controller") as driver:
        before = by_point(await driver.read())
        await driver.write("chw_supply_setpoint", 16.0)
        await driver.write("demand_limit", 0.8)
        clock.t += 1.0
        after = by_point(await driver.read())
    assert {p.quality for p in before.values()} == {Quality.GOOD}
    assert before["chw_supply_temp"].value == pytest.approx(truth.chw_supply_c, abs=TENTH)
    assert before["chw_return_temp"].value == pytest.approx(truth.chw_return_c, abs=TENTH)
    assert before["chiller_power"].value == pytest.approx(truth.chiller_w, abs=1e3)
    assert before["chw_flow"].unit == "m3/s"
    assert site.sample().chw_setpoint_c == pytest.approx(16.0)
    assert after["chw_supply_setpoint"].value == pytest.approx(16.0, abs=TENTH)
    assert after["demand_limit"].value == pytest.approx(0.8, abs=1e-3)


async def test_trane_pic_rthd_is_read_in_the_pics_variable_format(site: SiteContext) -> None:
    """Table 7 of the PIC's manual (BAS-SVX08D-E4) read from input registers: a temperature
    travels as (°C + 45) * 10 and decodes to the plant's; capacity in whole percent arrives as a
    ratio; the Chiller Status bitfield (Appendix Table A) says run mode and cooling while the
    chillers draw power; the map is read-only, so a setpoint write never reaches the wire."""
    bank = trane_pic_rthd_bank(site)
    truth = site.sample()
    regmap = load_device_map(DEVICE_MAPS_DIR / "trane-pic-rthd.toml")
    raw = bank.registers[regmap.point("chw_supply_temp").address - bank.base]
    assert raw == round((truth.chw_supply_c + 45.0) * 10.0)
    async with serving("rthd", bank, "trane-pic-rthd") as driver:
        assert driver.regmap.table == "input"
        points = by_point(await driver.read())
        with pytest.raises(WriteRefusedError, match="read-only"):
            await driver.write("active_chw_setpoint", 16.0)
    assert {p.quality for p in points.values()} == {Quality.GOOD}
    assert set(points) == {p.name for p in regmap.points}
    assert points["chw_supply_temp"].value == pytest.approx(truth.chw_supply_c, abs=TENTH)
    assert points["chw_return_temp"].value == pytest.approx(truth.chw_return_c, abs=TENTH)
    assert points["active_chw_setpoint"].value == pytest.approx(truth.chw_setpoint_c, abs=TENTH)
    assert points["chw_supply_temp"].unit == "degC"
    assert points["capacity"].unit == "ratio"
    assert 0.0 <= points["capacity"].value <= 1.0
    assert points["current_limit"].value == pytest.approx(1.0)
    status = int(points["chiller_status"].value)
    assert status & 0x000F == (2 if truth.chiller_w > 0.0 else 0)  # run mode: 2 = run
    assert status & 0x00F0 == 0  # operating mode: 0 = cooling
    assert status & (1 << 9)  # enabled


@pytest.mark.parametrize(
    ("make_bank", "register_map", "address", "raw"),
    [
        pytest.param(thermal_plant_bank, "thermal-plant", 0, 0x8000, id="thermal-plant-0x8000"),
        pytest.param(chiller_controller_bank, "chiller-controller", 1, 0x7FFF, id="chiller-0x7fff"),
        pytest.param(trane_pic_rthd_bank, "trane-pic-rthd", 4, 0xFFFF, id="trane-pic-0xffff"),
    ],
)
async def test_failed_chw_supply_sensor_is_never_published_as_a_good_value(
    site: SiteContext,
    monkeypatch: pytest.MonkeyPatch,
    make_bank: Callable[[SiteContext], PlainMapBank],
    register_map: str,
    address: int,
    raw: int,
) -> None:
    """chw_supply_temp answering its "not available" pattern (the thermal plant's int16 0x8000,
    once -327.68 °C good) is left out by a driver that never saw it, and turns invalid, with
    its last good value and one warning per 10 s, in one that did."""
    recorder = Recorder()
    monkeypatch.setattr(driver_module, "log", recorder)
    faulty = FaultySensor(make_bank(site), address, raw)
    faulty.broken = True
    async with serving("plant", faulty, register_map) as fresh:
        assert "chw_supply_temp" not in by_point(await fresh.read())
    faulty.broken = False
    async with serving("plant", faulty, register_map) as driver:
        good = by_point(await driver.read())["chw_supply_temp"]
        faulty.broken = True
        polls = [by_point(await driver.read())["chw_supply_temp"] for _ in range(3)]
    assert good.quality is Quality.GOOD
    for p in polls:
        assert (p.quality, p.reason, p.value) == (Quality.INVALID, NOT_AVAILABLE, good.value)
        assert not p.plausible
    warnings = [w for w in recorder.warnings if w[0] == "point_not_available"]
    assert len(warnings) == 1
    assert warnings[0][1]["point"] == "chw_supply_temp"


async def test_implausible_chw_supply_is_questionable_out_of_range(
    site: SiteContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """95.0 °C in the chilled water (outside its 0..40 °C) is published as read, questionable,
    reason "out of range" (IEC 61850 detailQual outOfRange), with a warning naming the range;
    the next plausible reading is good again."""
    recorder = Recorder()
    monkeypatch.setattr(driver_module, "log", recorder)
    faulty = FaultySensor(chiller_controller_bank(site), 1, 950)
    faulty.broken = True
    async with serving("chiller", faulty, "chiller-controller") as driver:
        bad = by_point(await driver.read())["chw_supply_temp"]
        faulty.broken = False
        again = by_point(await driver.read())["chw_supply_temp"]
    assert (bad.quality, bad.reason) == (Quality.QUESTIONABLE, OUT_OF_RANGE)
    assert bad.value == pytest.approx(95.0)
    assert not bad.plausible
    assert (again.quality, again.reason) == (Quality.GOOD, None)
    event, fields = recorder.warnings[0]
    assert event == "point_out_of_range"
    assert (fields["low"], fields["high"]) == (0.0, 40.0)
