"""SunSpec meters as the field has them, read by the gateway's driver from the twin over loopback.

The twin's grid meter serves each meter model (201-204 integer + scale factor, 211-214 float,
and 701) with its chain at each standard base address (0, 40000, 50000); the driver finds the
"SunS" marker, walks the chain and reads grid power, frequency and imported energy through the
model's register map. Values are checked against what the meter showed while the read was in
flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pswd_gateway.config import DEVICE_MAPS_DIR, ModbusDeviceConfig
from pswd_gateway.domain.points import Quality
from pswd_gateway.domain.units import to_si
from pswd_gateway.errors import DeviceError
from pswd_gateway.simulation.config import FaultsSimConfig, SimulationConfig
from pswd_gateway.simulation.modbus_servers import ModbusDeviceServer
from pswd_gateway.simulation.sunspec_bank import SunSpecBank
from pswd_gateway.simulation.sunspec_meters import (
    FLOAT_METER_MODELS,
    METER_MODELS,
    SunSpecMeterBehaviour,
    meter_map_name,
)
from pswd_gateway.simulation.twin import Twin
from pswd_gateway.southbound.modbus.driver import ModbusDriver
from pswd_gateway.southbound.modbus.sunspec import SunSpecRegisterMap, load_device_map

pytestmark = pytest.mark.integration

BASES = (0, 40000, 50000)
ENERGY_WAIT_S = 5.0
TOTWH_STEP_WH = 1000.0  # the twin's integer meters count kWh (TotWh_SF = 3)
W_STEP = 1e5  # and W in 100 kW steps (W_SF = 5), as the 701 meter


def meter_config(twin_config: SimulationConfig, model: int, base: int) -> SimulationConfig:
    grid = twin_config.grid.model_copy(
        update={"meter_model": model, "meter_base_address": base, "meter_energy_refresh_ms": 50.0}
    )
    return twin_config.model_copy(update={"grid": grid, "faults": FaultsSimConfig(devices=())})


@pytest.fixture
async def meter_twin(
    request: pytest.FixtureRequest, twin_config: SimulationConfig
) -> AsyncIterator[Twin]:
    model, base = request.param
    twin = Twin(meter_config(twin_config, model, base))
    try:
        await twin.start()
        yield twin
    finally:
        await twin.stop()


def driver_for(twin: Twin, register_map: str) -> ModbusDriver:
    host, port = twin.endpoints["grid_meter"]
    cfg = ModbusDeviceConfig(name="grid_meter", host=host, port=port, register_map=register_map)
    return ModbusDriver(cfg, load_device_map(DEVICE_MAPS_DIR / f"{register_map}.toml"))


async def read_until_energy(driver: ModbusDriver) -> tuple[dict[str, float], tuple[float, float]]:
    """A poll that carries the imported energy (0 Wh in an acc32 reads as not implemented, and
    the twin has imported nothing yet when it starts), with the POSIX times it was in flight;
    every reading in range, of good quality."""
    deadline = time.monotonic() + ENERGY_WAIT_S
    while True:
        t0 = time.time()
        read = await driver.read()
        t1 = time.time()
        assert {p.quality for p in read} == {Quality.GOOD}, read
        points = {p.name: p.value for p in read}
        if "grid_meter.energy_imported" in points or time.monotonic() > deadline:
            return points, (t0, t1)
        await asyncio.sleep(0.05)


def assert_shows(twin: Twin, points: Mapping[str, float], window: tuple[float, float]) -> None:
    """Grid power, frequency and imported energy are what the meter showed in ``window``."""
    meter = twin.meter
    t0, t1 = window
    lo, hi = twin.meter_power_range_w(t0, t1)
    power = points["grid_meter.active_power"]
    assert lo - W_STEP <= power <= hi + W_STEP
    assert power > 1e6  # the site imports: load-positive, as the gateway counts it
    f_lo, f_hi = twin.shown_range(t0, t1, lambda t: meter.reading(t).frequency_hz, meter.refresh_s)
    assert f_lo - 0.01 <= points["grid_meter.frequency"] <= f_hi + 0.01
    e_lo, e_hi = twin.shown_range(
        t0, t1, lambda t: meter.energy_j(t).imported_j, meter.energy_refresh_s
    )
    step_j, _ = to_si(TOTWH_STEP_WH, "Wh")
    assert e_lo - step_j <= points["grid_meter.energy_imported"] <= e_hi + step_j
    assert points["grid_meter.voltage"] == pytest.approx(132e3, rel=0.02)
    assert 0.9 <= abs(points["grid_meter.power_factor"]) <= 1.0  # 701: signed as its W


@pytest.mark.parametrize(
    "meter_twin",
    [(model, base) for model in (*METER_MODELS, 701) for base in BASES],
    ids=lambda p: f"model{p[0]}-base{p[1]}",
    indirect=True,
)
async def test_the_driver_finds_the_chain_and_reads_each_meter_model(meter_twin: Twin) -> None:
    """Every meter model at every standard base address: the driver finds "SunS", walks the
    chain, and reads load-positive grid power, frequency and imported energy."""
    model = meter_twin.config.grid.meter_model
    base = meter_twin.config.grid.meter_base_address
    entry = next(e for e in meter_twin.gateway_devices() if e["name"] == "grid_meter")
    assert entry["register_map"] == meter_map_name(model)
    driver = driver_for(meter_twin, meter_map_name(model))
    await driver.connect()
    try:
        points, window = await read_until_energy(driver)
    finally:
        await driver.close()
    assert isinstance(driver.regmap, SunSpecRegisterMap)
    layout = driver.regmap.layout
    assert layout.base_address == base
    assert layout.starts[model] == base + 2 + 68  # model 1 (ID, L and 66 registers) first
    assert_shows(meter_twin, points, window)
    if model in FLOAT_METER_MODELS:
        assert points["grid_meter.energy_exported"] == 0.0  # a float 0 is a value


class _ReorderedMeter(SunSpecMeterBehaviour):
    """A meter whose chain has the meter model first and an unused DER model between."""

    @property
    def model_ids(self) -> tuple[int, ...]:
        return (self.model_id, 701, 1)


@pytest.fixture
async def reordered_meter(twin_config: SimulationConfig) -> AsyncIterator[tuple[Twin, int]]:
    """A 213 meter at 50000 with models in another order: the twin's physics behind it, its
    own server on a free port (registered as the twin's grid meter endpoint)."""
    twin = Twin(meter_config(twin_config, 213, 50000))
    bank = SunSpecBank(_ReorderedMeter(213, twin.config, view=twin.meter), twin.site.sample, 50000)
    server = ModbusDeviceServer("grid_meter", bank, host="127.0.0.1", port=0)
    twin.modbus["grid_meter"] = server
    try:
        await twin.start()
        yield twin, bank.model_addresses[213]
    finally:
        await twin.stop()


async def test_models_are_found_wherever_the_chain_has_them(
    reordered_meter: tuple[Twin, int],
) -> None:
    """The map's nominal layout (1, then 213, from 40000) is not the device's: the points move
    to where the chain walk found 213."""
    twin, address_213 = reordered_meter
    driver = driver_for(twin, "sunspec-meter-213")
    nominal = driver.regmap.point("active_power").address
    await driver.connect()
    try:
        points, window = await read_until_energy(driver)
    finally:
        await driver.close()
    moved = driver.regmap.point("active_power").address
    assert address_213 == 50002
    assert moved - address_213 == nominal - 40070  # the same offset in the model
    assert_shows(twin, points, window)


@pytest.mark.parametrize("meter_twin", [(203, 50000)], ids=["model203-base50000"], indirect=True)
async def test_a_fixed_base_address_or_a_missing_model_is_a_clear_device_error(
    meter_twin: Twin, tmp_path: Path
) -> None:
    """A map that fixes base 40000 does not find a chain at 50000; a map for 213 does not find
    model 213 in a 203 meter's chain. Either says so, and the driver stays closed."""
    text = (DEVICE_MAPS_DIR / "sunspec-meter-203.toml").read_text()
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(text.replace('base_address = "auto"', "base_address = 40000"))
    host, port = meter_twin.endpoints["grid_meter"]
    cfg: dict[str, Any] = {"name": "grid_meter", "host": host, "port": port}
    driver = ModbusDriver(
        ModbusDeviceConfig(**cfg, register_map="sunspec-meter-203"), load_device_map(fixed)
    )
    with pytest.raises(DeviceError, match=r"no SunSpec marker 'SunS' at 40000;"):
        await driver.connect()
    assert driver._client is None
    wrong = driver_for(meter_twin, "sunspec-meter-213")
    with pytest.raises(DeviceError, match=r"model\(s\) 213, which the device's chain"):
        await wrong.connect()
    assert wrong._client is None
