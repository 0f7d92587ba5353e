"""The twin's Modbus TCP devices, read and written by a real pymodbus client over loopback.

Values are checked against the physics truth over the window in which the request was in
flight (the device computes its answer at one instant of that window), so the assertions hold
however slow the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sunspec2.device as ss_device
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from pswd_gateway.config import ModbusDeviceConfig
from pswd_gateway.simulation.devices import THERMAL_MAP_PATH
from pswd_gateway.simulation.modbus_servers import TwinError
from pswd_gateway.simulation.physics import Truth
from pswd_gateway.simulation.twin import Twin, run_twin
from pswd_gateway.southbound.modbus.registermap import (
    decode_registers,
    load_register_map,
    read_plan,
)

pytestmark = pytest.mark.integration

BASE = 40000
CHUNK = 125
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3


@asynccontextmanager
async def modbus(
    twin: Twin, device: str, timeout_s: float = 2.0
) -> AsyncIterator[AsyncModbusTcpClient]:
    host, port = twin.endpoints[device]
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0)
    try:
        assert await client.connect(), f"cannot connect to {device} on {host}:{port}"
        yield client
    finally:
        client.close()


async def read(client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
    out: list[int] = []
    while count > 0:
        n = min(count, CHUNK)
        response = await client.read_holding_registers(address, count=n)
        assert not response.isError(), response
        out.extend(response.registers)
        address += n
        count -= n
    return out


async def walk_chain(client: AsyncModbusTcpClient) -> list[tuple[int, int, int]]:
    """``(model id, address, length)`` of every model, found the way a SunSpec client does:
    "SunS" at 40000, then model id and length headers until the end model."""
    assert await read(client, BASE, 2) == [0x5375, 0x6E53]  # "SunS"
    models: list[tuple[int, int, int]] = []
    address = BASE + 2
    while True:
        model_id, length = await read(client, address, 2)
        if model_id == 0xFFFF:
            assert length == 0
            return models
        models.append((model_id, address, length))
        address += 2 + length


def decode(model_id: int, length: int, registers: list[int]) -> Any:
    """A pysunspec2 model decoded from the registers read (ID and L included)."""
    data = b"".join(r.to_bytes(2, "big") for r in registers)
    model = ss_device.Model(model_id, model_len=length, data=data)
    assert not model.error_info, model.error_info
    return model


async def read_model(
    client: AsyncModbusTcpClient, twin: Twin, model_id: int, field: Callable[[Truth], float]
) -> tuple[Any, tuple[float, float]]:
    """Read the first 125 registers of a model (every value and scale factor of 1/701/702/704/
    802 but 701's trailing alarm text) and the truth range of ``field`` meanwhile."""
    chain = {mid: (address, length) for mid, address, length in await walk_chain(client)}
    address, length = chain[model_id]
    count = min(length + 2, CHUNK)
    t0 = time.time()
    registers = await read(client, address, count)
    t1 = time.time()
    registers += [0] * (length + 2 - count)  # not read: zeros stand in for the alarm text
    return decode(model_id, length, registers), twin.truth_range(t0, t1, field)


def offset(model_id: int, point: str) -> int:
    """A point's offset in its model, from pysunspec2's definitions."""
    return int(ss_device.Model(model_id).points[point].offset)


async def write_point(
    client: AsyncModbusTcpClient, address: int, registers: list[int]
) -> int | None:
    """Write registers; the Modbus exception code when refused, else None."""
    response = await client.write_registers(address, registers)
    return int(response.exception_code) if response.isError() else None


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------ SunSpec chain


async def test_grid_meter_serves_common_and_der_measure_ac_models(twin_site: Twin) -> None:
    """Walking the chain from "SunS" finds models 1 and 701 back to back, then the end model,
    at the addresses and lengths pysunspec2's definitions give."""
    async with modbus(twin_site, "grid_meter") as client:
        chain = await walk_chain(client)
    assert [m[0] for m in chain] == [1, 701]
    assert chain[0][1] == BASE + 2
    for model_id, _, length in chain:
        assert length == ss_device.Model(model_id).len - 2


async def test_bess_serves_models_1_701_702_704_802_at_consistent_addresses(
    twin_site: Twin,
) -> None:
    """Each model starts right after the previous one: address + 2 + L."""
    async with modbus(twin_site, "bess") as client:
        chain = await walk_chain(client)
    assert [m[0] for m in chain] == [1, 701, 702, 704, 802]
    for (_, address, length), (_, following, _) in itertools.pairwise(chain):
        assert following == address + 2 + length


async def test_grid_meter_values_decode_to_the_physics_truth(twin_site: Twin) -> None:
    """701 W (SunSpec sign: injection > 0, so an importing site reads negative), frequency and
    import energy, scaled by their SFs, equal the truth within one resolution step."""
    async with modbus(twin_site, "grid_meter") as client:
        model, (lo, hi) = await read_model(client, twin_site, 701, lambda t: -t.grid_w)
        assert lo - 5e3 <= model.W.cvalue <= hi + 5e3
        assert model.W.cvalue < -1e6  # the site imports
        model, (f_lo, f_hi) = await read_model(client, twin_site, 701, lambda t: t.frequency_hz)
        assert f_lo - 1e-3 <= model.Hz.cvalue <= f_hi + 1e-3
        model, (e_lo, e_hi) = await read_model(
            client, twin_site, 701, lambda t: t.grid_import_j / 3600.0
        )
        assert e_lo - 1 <= model.TotWhAbs.cvalue <= e_hi + 1
    assert model.LLV.cvalue == pytest.approx(132e3, rel=0.02)
    assert model.W_SF.value == 4
    assert model.ACType.value == 2  # three phase


async def test_bess_nameplate_and_battery_values_decode(twin_site: Twin) -> None:
    """702 ratings, 802 battery figures and SoC decode to the configured BESS."""
    async with modbus(twin_site, "bess") as client:
        m702, _ = await read_model(client, twin_site, 702, lambda t: t.soc)
        m802, (soc_lo, soc_hi) = await read_model(client, twin_site, 802, lambda t: t.soc)
    assert m702.WMaxRtg.cvalue == pytest.approx(250e6)
    assert m702.WChaRteMaxRtg.cvalue == pytest.approx(250e6)
    assert m702.WDisChaRteMaxRtg.cvalue == pytest.approx(250e6)
    assert m802.WHRtg.cvalue == pytest.approx(120e6)  # Wh
    assert m802.SoCMax.cvalue == pytest.approx(90.0)
    assert m802.SoCMin.cvalue == pytest.approx(10.0)
    assert soc_lo * 100 - 0.1 <= m802.SoC.cvalue <= soc_hi * 100 + 0.1
    assert m802.State.value == 3  # CONNECTED
    assert m802.Typ.value == 4  # lithium ion


async def test_wset_write_moves_the_bess_and_the_grid_meter(twin_site: Twin) -> None:
    """WSetEna = 1 and WSet = 50 MW (x 10^WSet_SF) make the PCS discharge 50 MW; the BESS's
    701 W shows it and the grid import drops by it."""
    async with modbus(twin_site, "bess") as client:
        chain = {mid: (address, length) for mid, address, length in await walk_chain(client)}
        m704, length = chain[704]
        sf = decode(704, length, await read(client, m704, length + 2)).WSet_SF.value
        raw = round(50e6 / 10**sf)
        assert await write_point(client, m704 + offset(704, "WSetMod"), [1]) is None  # WATTS
        wset = list(struct.unpack(">HH", struct.pack(">i", raw)))
        assert await write_point(client, m704 + offset(704, "WSet"), wset) is None
        assert await write_point(client, m704 + offset(704, "WSetEna"), [1]) is None
        await wait_until(lambda: abs(twin_site.truth_now().bess_w - 50e6) < 1e3, "50 MW")
        m701, (lo, hi) = await read_model(client, twin_site, 701, lambda t: t.bess_w)
    assert lo - 5e3 <= m701.W.cvalue <= hi + 5e3
    assert m701.W.cvalue == pytest.approx(50e6, abs=1e4)
    truth = twin_site.truth_now()
    assert truth.grid_w == pytest.approx(truth.it_w + truth.cooling_w - 50e6, abs=3e6)


async def test_wset_beyond_the_rating_is_accepted_and_clamped_by_the_pcs(twin_site: Twin) -> None:
    """A 400 MW setpoint is accepted (the register keeps it) and the BESS delivers 250 MW."""
    async with modbus(twin_site, "bess") as client:
        chain = {mid: (address, length) for mid, address, length in await walk_chain(client)}
        m704, length = chain[704]
        wset = list(struct.unpack(">HH", struct.pack(">i", 400_000_000)))
        assert await write_point(client, m704 + offset(704, "WSet"), wset) is None
        assert await write_point(client, m704 + offset(704, "WSetEna"), [1]) is None
        await wait_until(lambda: abs(twin_site.truth_now().bess_w - 250e6) < 1e3, "250 MW")
        stored = decode(704, length, await read(client, m704, length + 2)).WSet.cvalue
    assert stored == pytest.approx(400e6)


async def test_writes_to_read_only_points_partial_points_or_bad_enums_are_refused(
    twin_site: Twin,
) -> None:
    """Read-only and half-written points get exception 2, undefined enum values exception 3;
    nothing changes in the physics."""
    async with modbus(twin_site, "bess") as client:
        chain = {mid: address for mid, address, _ in await walk_chain(client)}
        assert await write_point(client, chain[701] + offset(701, "W"), [100]) == ILLEGAL_ADDRESS
        assert await write_point(client, BASE, [0]) == ILLEGAL_ADDRESS  # the "SunS" marker
        assert await write_point(client, chain[704] + offset(704, "WSet"), [1]) == ILLEGAL_ADDRESS
        ena = chain[704] + offset(704, "WSetEna")
        assert await write_point(client, ena, [7]) == ILLEGAL_VALUE
    assert twin_site.physics.latest.commands.bess.enabled is False
    assert twin_site.physics.latest.commands.bess.setpoint_w == 0.0


# ------------------------------------------------------------------------------ thermal plant


async def test_thermal_plant_decodes_with_the_shared_register_map(twin_site: Twin) -> None:
    """The gateway's own table and codec (``read_plan`` + ``decode_registers``) read the plant:
    every point is present and the temperatures equal the truth."""
    regmap = load_register_map(THERMAL_MAP_PATH)
    image: dict[int, int] = {}
    async with modbus(twin_site, "thermal") as client:
        t0 = time.time()
        for block in read_plan(regmap.points):
            regs = await read(client, block.start, block.count)
            image.update(zip(range(block.start, block.start + block.count), regs, strict=True))
        t1 = time.time()
    values = decode_registers(regmap, image)
    assert set(values) == {p.name for p in regmap.points}
    lo, hi = twin_site.truth_range(t0, t1, lambda t: t.chw_supply_c)
    assert lo - 0.01 <= (values["chw_supply_temp"] or 0.0) <= hi + 0.01
    assert values["chw_supply_setpoint"] == pytest.approx(18.0)
    assert values["heat_supply_setpoint"] == pytest.approx(80.0)
    assert 70.0 <= (values["heat_supply_temp"] or 0.0) <= 90.0
    assert (values["heat_export_power"] or 0.0) > 0.0


async def test_thermal_setpoint_writes_are_range_checked_and_reach_the_physics(
    twin_site: Twin,
) -> None:
    """95 °C is outside the 70-90 °C range (exception 3); 75 °C is taken by the plant.
    A measurement point cannot be written (exception 2)."""
    regmap = load_register_map(THERMAL_MAP_PATH)
    heat = regmap.point("heat_supply_setpoint").address
    async with modbus(twin_site, "thermal") as client:
        assert await write_point(client, heat, [9500]) == ILLEGAL_VALUE
        assert twin_site.physics.latest.commands.heat_setpoint_c == 80.0
        assert await write_point(client, heat, [7500]) is None
        supply = regmap.point("chw_supply_temp").address
        assert await write_point(client, supply, [1000]) == ILLEGAL_ADDRESS
    assert twin_site.physics.latest.commands.heat_setpoint_c == pytest.approx(75.0)


# ------------------------------------------------------------------------------ lifecycle


async def test_a_paused_device_stops_answering_and_resumes_on_the_same_port(
    twin_site: Twin,
) -> None:
    """Pausing closes the listener and the open connection; resuming serves the same port with
    the registers as they were (a setpoint written before the pause is still there)."""
    host, port = twin_site.endpoints["thermal"]
    regmap = load_register_map(THERMAL_MAP_PATH)
    chw = regmap.point("chw_supply_setpoint").address
    async with modbus(twin_site, "thermal", timeout_s=0.3) as client:
        assert await write_point(client, chw, [1650]) is None
        await twin_site.pause_device("thermal")
        assert twin_site.is_paused("thermal")
        await wait_until(lambda: not client.connected, "the connection to drop")
        with pytest.raises(ModbusException):
            await client.read_holding_registers(chw, count=1)
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    await twin_site.resume_device("thermal")
    assert twin_site.endpoints["thermal"] == (host, port)
    async with modbus(twin_site, "thermal") as client:
        assert await read(client, chw, 1) == [1650]


async def test_gateway_device_entries_point_at_the_bound_ports(twin_site: Twin) -> None:
    """``gateway_devices()`` are valid ``[[devices]]`` entries for the actual ports."""
    entries = {str(e["name"]): e for e in twin_site.gateway_devices()}
    assert set(entries) == {"grid_meter", "bess", "thermal"}
    for name, entry in entries.items():
        device = ModbusDeviceConfig.model_validate(entry)
        assert (device.host, device.port) == twin_site.endpoints[name]
        assert device.unit_id == 1
    assert entries["thermal"]["register_map"] == "thermal-plant"
    assert entries["bess"]["register_map"] == "sunspec-bess"
    assert entries["grid_meter"]["register_map"] == "sunspec-meter"


async def test_stop_is_idempotent_and_frees_every_port(twin_config: Any) -> None:
    """After stop (twice) nothing listens on the ports the twin had bound."""
    twin = Twin(twin_config)
    await twin.start()
    ports = list(twin.endpoints.values())
    await twin.stop()
    await twin.stop()
    for host, port in ports:
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)


async def test_a_port_in_use_fails_start_and_leaves_nothing_listening(twin_config: Any) -> None:
    """When one device cannot bind, start raises a TwinError naming it and the devices already
    started are stopped again."""
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        busy = blocker.sockets[0].getsockname()[1]
        ports = twin_config.ports.model_copy(update={"thermal": busy})
        twin = Twin(twin_config.model_copy(update={"ports": ports}))
        with pytest.raises(TwinError, match="thermal"):
            await twin.start()
        assert not any(server.running for server in twin.modbus.values())
        await twin.stop()
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_run_twin_serves_until_cancelled_then_stops(twin_config: Any) -> None:
    """``run_twin`` (what ``pswd-gateway simulate`` runs) serves the devices until its task is
    cancelled, and leaves no listener behind."""
    started: list[Twin] = []
    task = asyncio.create_task(run_twin(twin_config, on_started=started.append))
    await wait_until(lambda: bool(started), "the twin to start")
    host, port = started[0].endpoints["grid_meter"]
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    writer.close()
    await writer.wait_closed()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
