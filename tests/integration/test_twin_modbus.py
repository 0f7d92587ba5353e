"""The twin's Modbus TCP devices, read and written by a real pymodbus client over loopback.

Values are checked against what the device showed while the request was in flight — the
meter's and the PCS's refreshed window means (``twin.meter``, ``twin.bess_meter``), the thermal
plant's instantaneous truth — so the assertions hold however slow the machine is. The device
faults (stalls, lost requests, jitter) are off but in the tests that switch them on; those
assert presence and order, and time only with generous margins.
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

from pswd_gateway.config import DEVICE_MAPS_DIR, ModbusDeviceConfig
from pswd_gateway.simulation.config import FaultsSimConfig, SimulationConfig
from pswd_gateway.simulation.devices import THERMAL_MAP_PATH
from pswd_gateway.simulation.faults import DeviceFaults
from pswd_gateway.simulation.measurement import refresh_index
from pswd_gateway.simulation.modbus_servers import TwinError
from pswd_gateway.simulation.twin import Twin, run_twin
from pswd_gateway.southbound.modbus.driver import ModbusDriver
from pswd_gateway.southbound.modbus.registermap import (
    decode_registers,
    load_register_map,
    read_plan,
)
from pswd_gateway.southbound.modbus.sunspec import load_device_map

pytestmark = pytest.mark.integration

BASE = 40000
CHUNK = 125
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
NO_FAULTS = FaultsSimConfig(devices=())


@pytest.fixture
def twin_config(twin_config: SimulationConfig) -> SimulationConfig:
    """conftest's twin with the device faults off: a lost request would fail a register test
    at random. The fault tests below switch them on."""
    return twin_config.model_copy(update={"faults": NO_FAULTS})


def with_faults(cfg: SimulationConfig, **faults: Any) -> SimulationConfig:
    """``cfg`` with only the given faults, on the grid meter alone."""
    settings: dict[str, Any] = {
        "reply_jitter_ms": 0.0,
        "lost_reply_ratio": 0.0,
        "stall_every_s": 0.0,
        "stall_ms": 0.0,
        "devices": ("grid_meter",),
        **faults,
    }
    return cfg.model_copy(update={"faults": FaultsSimConfig.model_validate(settings)})


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
    client: AsyncModbusTcpClient, model_id: int
) -> tuple[Any, tuple[float, float]]:
    """Read the first 125 registers of a model (every value and scale factor of 1/701/702/704/
    802 but 701's trailing alarm text); also the POSIX times the read was in flight."""
    chain = {mid: (address, length) for mid, address, length in await walk_chain(client)}
    address, length = chain[model_id]
    count = min(length + 2, CHUNK)
    t0 = time.time()
    registers = await read(client, address, count)
    t1 = time.time()
    registers += [0] * (length + 2 - count)  # not read: zeros stand in for the alarm text
    return decode(model_id, length, registers), (t0, t1)


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


async def test_grid_meter_values_decode_to_what_the_meter_shows(twin_site: Twin) -> None:
    """701 W (SunSpec sign: injection > 0, so an importing site reads negative), frequency and
    import energy, scaled by their SFs, equal the meter's refreshed values (window mean with
    its noise, Hz at the refresh, energy at the last energy refresh) within one resolution
    step."""
    meter = twin_site.meter
    async with modbus(twin_site, "grid_meter") as client:
        model, (t0, t1) = await read_model(client, 701)
        lo, hi = twin_site.meter_power_range_w(t0, t1)
        assert -hi - 5e4 <= model.W.cvalue <= -lo + 5e4  # half a 100 kW step
        assert model.W.cvalue < -1e6  # the site imports
        f_lo, f_hi = twin_site.shown_range(
            t0, t1, lambda t: meter.reading(t).frequency_hz, meter.refresh_s
        )
        assert f_lo - 1e-3 <= model.Hz.cvalue <= f_hi + 1e-3
        e_lo, e_hi = twin_site.shown_range(
            t0, t1, lambda t: meter.energy_j(t).imported_j / 3600.0, meter.energy_refresh_s
        )
        assert e_lo - 1 <= model.TotWhAbs.cvalue <= e_hi + 1
    assert model.LLV.cvalue == pytest.approx(132e3, rel=0.02)
    assert model.W_SF.value == 5
    assert model.ACType.value == 2  # three phase


async def test_bess_nameplate_and_battery_values_decode(twin_site: Twin) -> None:
    """702 ratings, 802 battery figures and SoC (as the PCS shows it) decode to the BESS."""
    bess = twin_site.bess_meter
    async with modbus(twin_site, "bess") as client:
        m702, _ = await read_model(client, 702)
        m802, (t0, t1) = await read_model(client, 802)
        soc_lo, soc_hi = twin_site.shown_range(t0, t1, bess.soc, bess.refresh_s)
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
    701 W shows it (its refreshed window mean) and the grid import drops by it."""
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
        settled = time.time()
        bess = twin_site.bess_meter
        m701, (t0, t1) = await read_model(client, 701)
        lo, hi = twin_site.shown_range(t0, t1, bess.power_w, bess.refresh_s)
        assert lo - 5e3 <= m701.W.cvalue <= hi + 5e3  # what its window shows, on the way too
        # Once a whole refresh window has passed since the PCS settled, it shows 50 MW (a read
        # sooner, on a slow machine, may still hold part of the approach in its window mean).
        while t0 < settled + 2 * bess.refresh_s:
            await asyncio.sleep(bess.refresh_s)
            m701, (t0, t1) = await read_model(client, 701)
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


# ------------------------------------------------------------------------------ imperfections


def read_frame(transaction: int, address: int, count: int) -> bytes:
    """A raw Modbus TCP "read holding registers" request to unit 1."""
    return struct.pack(">HHHBBHH", transaction, 0, 6, 1, 3, address, count)


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, list[int]]:
    """(transaction id, registers) of the next raw reply on the socket."""
    transaction, _, length, _ = struct.unpack(">HHHB", await reader.readexactly(7))
    pdu = await reader.readexactly(length - 1)
    assert pdu[0] == 3, f"exception reply {pdu.hex()}"
    return transaction, list(struct.unpack(f">{pdu[1] // 2}H", pdu[2 : 2 + pdu[1]]))


def signed(raw: int) -> int:
    return raw - 0x10000 if raw >= 0x8000 else raw


async def test_meter_w_holds_between_refreshes_and_changes_at_refresh_instants(
    twin_config: SimulationConfig,
) -> None:
    """With a 200 ms refresh, every read of 701 W within one refresh period returns that
    refresh's value — the meter's window mean, in the 701 sign, in 10 kW steps — and the value
    moves from one refresh to the next (the load's noise and the meter's own)."""
    period = 0.2
    grid = twin_config.grid.model_copy(update={"meter_refresh_ms": period * 1000})
    async with Twin(twin_config.model_copy(update={"grid": grid})) as twin:
        async with modbus(twin, "grid_meter") as client:
            chain = {mid: address for mid, address, _ in await walk_chain(client)}
            w_address = chain[701] + offset(701, "W")
            seen: list[tuple[int, int, int]] = []  # (refresh at send, refresh at answer, raw)
            deadline = twin.now() + 1.3
            while twin.now() < deadline:
                k0 = refresh_index(twin.now(), period)
                (raw,) = await read(client, w_address, 1)
                seen.append((k0, refresh_index(twin.now(), period), signed(raw)))
                await asyncio.sleep(0.005)

        def shown(k: int) -> int:
            return round(-twin.meter.active_power_w(k * period) / 1e5)  # W_SF = 5, 701 sign

        for k0, k1, raw in seen:
            assert raw in {shown(k) for k in range(k0, k1 + 1)}, (k0, k1, raw)
        within = {}
        for k0, k1, raw in seen:
            if k0 == k1:
                within.setdefault(k0, set()).add(raw)
        assert all(len(values) == 1 for values in within.values()), within
        assert sum(1 for k0, k1, _ in seen if k0 == k1) > len(within)  # several reads per refresh
        assert len({shown(k) for k in within}) >= 2, "the value changes from refresh to refresh"


async def test_a_lost_request_is_never_answered_and_the_client_times_out(
    twin_config: SimulationConfig,
) -> None:
    """With lost_reply_ratio = 1 the meter reads the request and never answers: no byte comes
    back on the open socket, pymodbus's client times out; the BESS (no faults) answers."""
    async with Twin(with_faults(twin_config, lost_reply_ratio=1.0)) as twin:
        reader, writer = await asyncio.open_connection(*twin.endpoints["grid_meter"])
        try:
            writer.write(read_frame(1, BASE, 2))
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.5)
            assert not reader.at_eof(), "the connection stays open: only the answer is missing"
        finally:
            writer.close()
            await writer.wait_closed()
        async with modbus(twin, "grid_meter", timeout_s=0.3) as client:
            with pytest.raises(ModbusException):
                await client.read_holding_registers(BASE, count=2)
        assert twin.modbus["grid_meter"].lost_total == 2
        async with modbus(twin, "bess") as client:
            assert await read(client, BASE, 2) == [0x5375, 0x6E53]


async def test_the_seed_decides_which_requests_are_lost(twin_config: SimulationConfig) -> None:
    """With a 30 % loss the requests the seed marks (by their number at the device) get no
    answer and every other one is answered with its own transaction id."""
    cfg = with_faults(twin_config, lost_reply_ratio=0.3)
    plan = DeviceFaults(cfg.faults, cfg.seed, "grid_meter")
    lost = [plan.lost(n) for n in range(12)]
    assert any(lost)
    assert not all(lost)
    async with Twin(cfg) as twin:
        reader, writer = await asyncio.open_connection(*twin.endpoints["grid_meter"])
        try:
            for n, dropped in enumerate(lost):
                writer.write(read_frame(n + 1, BASE, 2))
                await writer.drain()
                if dropped:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(reader.read(1), 0.3)
                else:
                    reply = await asyncio.wait_for(read_reply(reader), 5.0)
                    assert reply == (n + 1, [0x5375, 0x6E53])
        finally:
            writer.close()
            await writer.wait_closed()
        assert twin.modbus["grid_meter"].lost_total == sum(lost)


async def test_requests_in_a_stall_are_answered_when_it_ends_each_with_its_own_id(
    twin_config: SimulationConfig,
) -> None:
    """Two requests sent on one connection during a 1 s stall are answered after it ends, in
    order, each with its own transaction id and registers (pymodbus's own handler would label
    the first with the second's id); the BESS, without faults, answers meanwhile."""
    cfg = with_faults(twin_config, stall_every_s=2.0, stall_ms=1000.0)
    async with Twin(cfg) as twin:
        faults, server = twin.faults["grid_meter"], twin.modbus["grid_meter"]
        for _attempt in range(3):  # a machine too slow to send both within a stall tries again
            reader, writer = await asyncio.open_connection(*twin.endpoints["grid_meter"])
            try:
                held, received = server.stalled_total, server.received_total
                stall = faults.next_stall(twin.now() + 0.1)
                assert stall is not None
                start, end = stall
                await asyncio.sleep(max(start + 0.02 - twin.now(), 0.0))
                writer.write(read_frame(1, BASE, 1))
                await writer.drain()
                await wait_until(lambda r=received: server.received_total > r, "request 1")
                writer.write(read_frame(2, BASE, 2))  # its own segment, after the first
                await writer.drain()
                await wait_until(lambda r=received: server.received_total > r + 1, "request 2")
                async with modbus(twin, "bess") as client:
                    assert await read(client, BASE, 2) == [0x5375, 0x6E53]
                    bess_answered = twin.now()
                first = await asyncio.wait_for(read_reply(reader), 5.0)
                answered = twin.now()
                second = await asyncio.wait_for(read_reply(reader), 5.0)
            finally:
                writer.close()
                await writer.wait_closed()
            if server.stalled_total == held + 2:
                break
        else:
            pytest.fail("no attempt got both requests into a stall")
    assert first == (1, [0x5375])
    assert second == (2, [0x5375, 0x6E53])
    assert answered >= end - 1e-3, "held until the stall ended"
    assert bess_answered < answered, "another device is not stalled"


async def test_each_reply_leaves_no_earlier_than_its_seeded_jitter(
    twin_config: SimulationConfig,
) -> None:
    """With reply_jitter_ms = 80 every round trip lasts at least the jitter the seed gives that
    request (and, loosely, not much more)."""
    cfg = with_faults(twin_config, reply_jitter_ms=80.0)
    plan = DeviceFaults(cfg.faults, cfg.seed, "grid_meter")
    round_trips: list[float] = []
    async with Twin(cfg) as twin, modbus(twin, "grid_meter") as client:
        for _ in range(15):
            t0 = time.monotonic()
            await read(client, BASE, 2)
            round_trips.append(time.monotonic() - t0)
    jitters = [plan.jitter_s(n) for n in range(15)]
    assert max(jitters) > 0.04
    assert all(0.0 <= j < 0.08 for j in jitters)
    for jitter, round_trip in zip(jitters, round_trips, strict=True):
        assert jitter - 1e-3 <= round_trip <= jitter + 2.0


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


@pytest.mark.parametrize("connection", ["shared", "own"])
async def test_the_driver_writes_setpoints_over_the_configured_connection(
    twin_site: Twin, connection: str
) -> None:
    """``write_connection = "own"``: setpoints go over a second connection, the polls keep
    theirs; a writer that was dropped (a failed write) reconnects on the next write."""
    host, port = twin_site.endpoints["bess"]
    cfg = ModbusDeviceConfig(
        name="bess",
        host=host,
        port=port,
        register_map="sunspec-bess",
        write_connection=connection,  # type: ignore[arg-type]
    )
    driver = ModbusDriver(cfg, load_device_map(DEVICE_MAPS_DIR / "sunspec-bess.toml"))
    await driver.connect()
    try:
        await driver.write("power_setpoint_enabled", 1.0)
        await driver.write("power_setpoint", 40e6)
        await wait_until(lambda: abs(twin_site.truth_now().bess_w - 40e6) < 1e3, "40 MW")
        assert (driver._writer is not None) is (connection == "own")
        points = {p.name: p.value for p in await driver.read()}  # the polls' connection
        assert points["bess.power_setpoint"] == pytest.approx(40e6)
        driver._drop_writer()
        await driver.write("power_setpoint", -30e6)
        await wait_until(lambda: abs(twin_site.truth_now().bess_w + 30e6) < 1e3, "-30 MW")
    finally:
        await driver.close()
    assert driver._writer is None
