"""The Modbus driver's write path without a device: what it refuses before the wire."""

from __future__ import annotations

import pytest

from pswd_gateway.config import ModbusDeviceConfig
from pswd_gateway.errors import WriteRefusedError
from pswd_gateway.southbound.modbus.driver import ModbusDriver
from pswd_gateway.southbound.modbus.registermap import DataType, RegisterMap, RegisterPoint


def driver_with_scale_factor_register(register: int) -> tuple[ModbusDriver, list[int]]:
    """A driver over one scaled setpoint whose scale-factor register (address 1) reads
    ``register``; the second value lists the addresses it read."""
    regmap = RegisterMap(
        name="m",
        points=(
            RegisterPoint(
                name="w_set",
                address=0,
                type=DataType.INT16,
                unit="W",
                sf_address=1,
                access="rw",
                minimum=-1e6,
                maximum=1e6,
            ),
        ),
    )
    driver = ModbusDriver(ModbusDeviceConfig(name="bess", register_map="m"), regmap)
    reads: list[int] = []

    async def read_block(start: int, count: int) -> list[int]:
        reads.append(start)
        return [register] * count

    driver._read_block = read_block  # type: ignore[method-assign]
    return driver, reads


async def test_a_write_whose_scale_factor_is_not_implemented_is_refused() -> None:
    """A scale factor of 0x8000 (SunSpec: not implemented) cannot scale a setpoint: the write is
    refused, naming the point and the register, and nothing is cached for the next one."""
    driver, reads = driver_with_scale_factor_register(0x8000)
    for _ in range(2):
        with pytest.raises(WriteRefusedError, match=r"w_set: its scale factor at 1 is not impl"):
            await driver.write("w_set", 5000.0)
    assert reads == [1, 1]


async def test_a_setpoint_is_scaled_by_the_signed_scale_factor_read_once() -> None:
    """With a scale factor of 2 (10**2), 5000 W is written as 50 and -300 W as -3 (0xFFFD); the
    factor is read once, for every later write."""
    driver, reads = driver_with_scale_factor_register(2)
    encoded = [await driver._encode("w_set", watts) for watts in (5000.0, -300.0)]
    assert [regs for _, _, regs in encoded] == [[50], [0xFFFD]]
    assert reads == [1]
