"""The control cycle's I/O decisions, with a store and a recording device layer (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from pswd_gateway.config import ControlConfig, SiteConfig
from pswd_gateway.control.cycle import ControlCycle, SetpointWrite
from pswd_gateway.control.grid import Announced
from pswd_gateway.control.thermal import ThermalSettings, thermal_step
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.errors import DeviceError
from pswd_gateway.store import PointStore

MW = 1e6
SITE = SiteConfig(grid_meter="meter", bess="bess", thermal="plant", it_load=())


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def feed(
    store: PointStore,
    t: float,
    grid_mw: float,
    soc: float = 0.5,
    q: Quality = Quality.GOOD,
    bess_mw: float = 0.0,
) -> None:
    def p(name: str, value: float, unit: str) -> Point:
        return Point(name, value, unit, q, t, t)

    store.update(
        [
            p("meter.active_power", grid_mw * MW, "W"),
            p("bess.active_power", bess_mw * MW, "W"),
            p("bess.soc", soc, "1"),
            p("bess.power_rating", 250 * MW, "W"),
            p("bess.energy_rating", 120 * 3.6e9, "J"),
            p("plant.chw_supply_temp", 18.0, "Cel"),
            p("plant.chw_heat_load", 50 * MW, "W"),
        ]
    )


def make(
    enabled: bool = True, fail: set[str] | None = None
) -> tuple[ControlCycle, list[tuple[str, str, float]], Clock, PointStore]:
    store = PointStore()
    writes: list[tuple[str, str, float]] = []
    clock = Clock()

    async def write(device: str, point: str, value: float) -> None:
        if fail and point in fail:
            raise DeviceError(device, "refused")
        writes.append((device, point, value))

    cycle = ControlCycle(ControlConfig(enabled=enabled), SITE, store, write, clock=clock)
    return cycle, writes, clock, store


async def test_the_first_run_enables_the_battery_and_writes_every_setpoint() -> None:
    cycle, writes, clock, store = make()
    feed(store, clock.now, 100.0)
    await cycle.run_once()
    points = [w[1] for w in writes]
    assert points[0] == "power_setpoint_enabled"
    assert {"heat_supply_setpoint", "chw_supply_setpoint", "power_setpoint"} <= set(points)
    assert cycle.stats.writes_total == len(writes)


async def test_a_step_is_written_to_the_battery_and_small_changes_are_not_rewritten() -> None:
    cycle, writes, clock, store = make()
    feed(store, clock.now, 100.0)
    await cycle.run_once()
    writes.clear()
    clock.now += 0.02
    feed(store, clock.now, 300.0)
    await cycle.run_once(received_ts=clock.now)
    (setpoint,) = [w for w in writes if w[1] == "power_setpoint"]
    last = cycle.stats.last
    assert last is not None
    # the battery takes the 200 MW step, plus the pay-back of the 20 ms the grid carried it
    assert last.payback_w == pytest.approx(200 * MW * 0.02 / 0.5, rel=0.01)
    assert setpoint[2] == pytest.approx(200 * MW + last.payback_w, rel=0.02)
    assert len(cycle.stats.reading_to_setpoint_s) == 1
    writes.clear()
    clock.now += 0.02
    # the battery followed: the same load, the grid on its plan less the pay-back
    bess = last.bess_setpoint_w / MW
    feed(store, clock.now, 300.0 - bess, bess_mw=bess)
    await cycle.run_once()
    assert cycle.stats.last.bess_setpoint_w == pytest.approx(bess * MW, abs=1.5 * MW)  # type: ignore[union-attr]


async def test_without_a_good_meter_reading_nothing_is_decided_or_written_to_the_battery() -> None:
    cycle, writes, clock, store = make()
    feed(store, clock.now, 100.0, q=Quality.INVALID)
    assert await cycle.run_once() is None
    assert [w for w in writes if w[0] == "bess"] == []
    assert cycle.stats.skipped_total == 1


async def test_the_cooling_controller_runs_without_a_battery() -> None:
    store = PointStore()
    writes: list[tuple[str, str, float]] = []

    async def write(device: str, point: str, value: float) -> None:
        writes.append((device, point, value))

    site = SiteConfig(grid_meter="meter", bess=None, thermal="plant", it_load=())
    cycle = ControlCycle(ControlConfig(enabled=True), site, store, write, clock=Clock())
    feed(store, 1_000.0, 100.0)
    await cycle.run_once()
    assert {(d, p) for d, p, _ in writes} == {
        ("plant", "heat_supply_setpoint"),
        ("plant", "chw_supply_setpoint"),
    }


async def test_observe_only_decides_but_writes_nothing() -> None:
    cycle, writes, clock, store = make(enabled=False)
    feed(store, clock.now, 100.0)
    decision = await cycle.run_once()
    assert decision is not None
    assert writes == []


async def test_a_refused_write_is_counted_recorded_and_survived() -> None:
    cycle, _, clock, store = make(fail={"power_setpoint"})
    recorded: list[SetpointWrite] = []

    async def record(batch: list[SetpointWrite]) -> None:
        recorded.extend(batch)

    cycle.record = record
    feed(store, clock.now, 100.0)
    await cycle.run_once()
    assert cycle.stats.write_failures_total == 1
    failed = [w for w in recorded if not w.ok]
    assert failed
    assert failed[0].point == "power_setpoint"
    assert "refused" in (failed[0].error or "")


async def test_an_empty_battery_raises_a_fallback() -> None:
    cycle, _, clock, store = make()
    seen = []
    cycle.on_fallback = seen.append
    feed(store, clock.now, 100.0, soc=0.1)
    await cycle.run_once()
    clock.now += 0.02
    feed(store, clock.now, 300.0, soc=0.1)
    await cycle.run_once()
    assert seen
    assert cycle.stats.fallbacks_total == 1


async def test_a_reading_waiting_for_the_battery_is_not_counted_as_the_cycle_late() -> None:
    """Lateness is the cycle's: from the reading that let the run go, not from a meter reading
    that had to wait for the battery's reading at its time (the data's wait)."""
    cycle, _, clock, store = make()
    await cycle.start()
    try:
        t0 = clock.now
        feed(store, t0, 100.0)
        await asyncio.sleep(0.01)
        assert cycle.loop.meter_t == t0
        clock.now = t0 + 0.5  # the meter moves on; the battery's newest reading is 0.5 s old
        meter = Point("meter.active_power", 120 * MW, "W", Quality.GOOD, clock.now, clock.now)
        store.update([meter])
        await asyncio.sleep(0.01)
        assert cycle.loop.waiting == t0 + 0.5  # waits for the battery's reading at its time
        clock.now += 0.02  # that reading arrives 20 ms later
        store.update([Point("bess.active_power", 0.0, "W", Quality.GOOD, clock.now, clock.now)])
        await asyncio.sleep(0.01)
        assert cycle.loop.meter_t == t0 + 0.5  # stepped
        assert cycle.stats.meter_runs_total >= 3
        assert max(cycle.stats.lateness_s) == 0.0  # the clock stood still while the cycle ran
    finally:
        await cycle.stop()


@pytest.mark.parametrize(("supply_c", "direction"), [(18.5, -1), (17.5, 1)])
def test_the_thermal_loop_corrects_towards_its_setpoint_within_its_range(
    supply_c: float, direction: int
) -> None:
    s = ThermalSettings(18.0, 8.0, 26.0)
    command, state = thermal_step(None, 0.0, supply_c, 50 * MW, (), s)
    assert (command - 18.0) * direction > 0
    for i in range(1, 2000):  # a stuck sensor cannot wind the command out of range
        command, state = thermal_step(state, float(i), 30.0, 50 * MW, (), s)
    assert command == s.low_c


async def start_before_an_edge(cycle: ControlCycle, store: PointStore, t0: float) -> None:
    """A 200 MW job announced to start 0.1 s after ``t0`` with a 40 ms edge (its middle at
    +0.12 s), and a first run at ``t0`` on a 100 MW grid reading."""
    job = Announced(t0 + 0.1, t0 + 600.0, 200 * MW, 5000 * MW, peak_w=200 * MW)
    cycle.battery.jobs = lambda _now: (job,)
    feed(store, t0, 100.0)
    await cycle.run_once(t0)


async def test_a_lead_falls_due_while_the_meter_reading_waits_for_a_lost_battery_poll() -> None:
    """The battery's poll before an announced 40 ms edge is lost, so the meter's readings wait
    for its next one; the lead due meanwhile still goes on the battery (not one poll timeout
    after the edge)."""
    cycle, writes, clock, store = make()
    t0 = clock.now
    await start_before_an_edge(cycle, store, t0)
    before = [v for _, p, v in writes if p == "power_setpoint"][-1]
    clock.now = t0 + 0.02  # the battery moved (told to) and its next reading is lost
    store.update([Point("meter.active_power", 100 * MW - before, "W", Quality.GOOD, t0 + 0.02,
                        clock.now)])  # fmt: skip
    await cycle.run_once(clock.now)
    assert cycle.loop.waiting == t0 + 0.02
    clock.now = t0 + 0.12 - 0.03 + 0.001  # the lead is due (edge middle at +0.12 s)
    store.update([Point("meter.active_power", 100 * MW - before, "W", Quality.GOOD, clock.now,
                        clock.now)])  # fmt: skip
    await cycle.run_once(clock.now)
    assert cycle.loop.waiting == clock.now
    led = [v for _, p, v in writes if p == "power_setpoint"][-1]
    assert led - before == pytest.approx(200 * MW, rel=0.02)


async def test_a_write_whose_reply_is_lost_is_given_up_when_a_lead_falls_due() -> None:
    """A setpoint write whose reply never comes is waited for until the next lead is due (20 ms
    here), not the whole write timeout: the lead goes out on time."""
    store, clock = PointStore(), Clock()
    t0 = clock.now
    setpoints: list[float] = []
    lost = asyncio.Event()

    async def write(device: str, point: str, value: float) -> None:
        if point == "power_setpoint" and setpoints:
            await lost.wait()  # never set: the reply is lost
        if point == "power_setpoint":
            setpoints.append(value)

    config = ControlConfig(enabled=True, write_timeout_ms=500)
    cycle = ControlCycle(config, SITE, store, write, clock=clock)
    await start_before_an_edge(cycle, store, t0)
    clock.now = t0 + 0.07  # the lead (edge middle at +0.12 s) is due in 20 ms
    feed(store, clock.now, 150.0)
    await cycle.run_once(clock.now)
    assert cycle.stats.write_failures_total == 1
    assert cycle.stats.last_error == (
        "bess.power_setpoint: timed out after 20 ms (a lead ahead of an edge was due)"
    )


async def test_a_leads_write_left_unanswered_is_sent_once_more_at_once() -> None:
    """The lead's setpoint write gets no reply (lost): after 20 ms it is sent again, not left
    for the whole write timeout; the second is answered and is what counts."""
    store, clock = PointStore(), Clock()
    t0 = clock.now
    sent: list[float] = []
    lost = asyncio.Event()

    async def write(device: str, point: str, value: float) -> None:
        if point != "power_setpoint":
            return
        sent.append(value)
        if len(sent) == 2:
            await lost.wait()  # the lead's first write: its reply never comes

    cycle = ControlCycle(ControlConfig(enabled=True), SITE, store, write, clock=clock)
    await start_before_an_edge(cycle, store, t0)
    clock.now = t0 + 0.12 - 0.03  # the lead is due (edge middle at +0.12 s)
    await cycle.run_once(None, lead=True)
    assert len(sent) == 3
    assert sent[2] == sent[1]
    assert sent[1] - sent[0] == pytest.approx(200 * MW, rel=0.02)
    assert cycle.stats.last_error == (
        "bess.power_setpoint: timed out after 20 ms (a lead: sent again)"
    )
    assert cycle.stats.write_failures_total == 1
    assert cycle._written[("bess", "power_setpoint")][0] == sent[2]
