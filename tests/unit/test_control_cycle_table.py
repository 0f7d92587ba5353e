"""Cycle tables: inputs per cycle, expected writes per cycle (the style of OpenEMS's
ControllerTest), for the arbiter, the write policies and the real controllers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from pswd_gateway.config import ControlConfig, SiteConfig
from pswd_gateway.control.controllers import (
    Arbiter,
    Kind,
    ProcessImage,
    Resolved,
    SetpointRequest,
)
from pswd_gateway.control.cycle import ControlCycle
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit, from_mw, from_mwh
from pswd_gateway.store import PointStore

MW = from_mw(1.0)
SITE = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())
SET, ADD, AT_LEAST, AT_MOST = Kind.SET, Kind.ADD, Kind.AT_LEAST, Kind.AT_MOST
ENABLE = ("bess", "power_setpoint_enabled")
POWER = ("bess", "power_setpoint")


def req(value: float, kind: Kind = SET, point: str = "power_setpoint") -> SetpointRequest:
    return SetpointRequest("bess", point, value, kind)


@pytest.mark.parametrize(
    ("asked", "expect"),
    [
        pytest.param([("a", [req(10)])], [("a", 10.0, None)], id="one set"),
        pytest.param(
            [("a", [req(10)]), ("b", [req(20)])], [("a", 10.0, None)], id="first set wins"
        ),
        pytest.param(
            [("a", [req(10)]), ("droop", [req(2, ADD)])],
            [("a,droop", 12.0, None)],
            id="an add goes on top",
        ),
        pytest.param([("droop", [req(2, ADD)])], [("droop", 2.0, None)], id="an add alone on 0"),
        pytest.param(
            [("limit", [req(5, AT_MOST)]), ("a", [req(10)])],
            [("a", 5.0, "limit")],
            id="a bound clamps a lower-priority set",
        ),
        pytest.param(
            [("hard", [req(8, AT_MOST)]), ("soft", [req(6, AT_LEAST)]), ("a", [req(10)])],
            [("a", 8.0, "hard")],
            id="the higher-priority bound wins where bounds agree",
        ),
        pytest.param(
            [("hard", [req(4, AT_MOST)]), ("soft", [req(6, AT_LEAST)]), ("a", [req(10)])],
            [("a", 4.0, "hard")],
            id="the higher-priority bound wins where bounds disagree",
        ),
        pytest.param([("limit", [req(5, AT_MOST)])], [], id="bounds alone write nothing"),
        pytest.param(
            [("a", [req(1, point="power_setpoint_enabled"), req(10)])],
            [("a", 1.0, None), ("a", 10.0, None)],
            id="points keep the order first asked",
        ),
    ],
)
def test_the_arbiter(
    asked: list[tuple[str, list[SetpointRequest]]], expect: list[tuple[str, float, str | None]]
) -> None:
    resolved = Arbiter().resolve(asked)
    assert [(",".join(r.by), r.value, r.limited_by) for r in resolved] == expect
    assert all(isinstance(r, Resolved) for r in resolved)


# ---- the cycle, with scripted controllers --------------------------------------------------


@dataclass
class Scripted:
    """A controller that answers what the table says for the current run."""

    name: str
    script: dict[int, list[SetpointRequest]]
    run: int = 0

    def step(self, image: ProcessImage) -> Sequence[SetpointRequest]:
        self.run += 1
        return self.script.get(self.run - 1, [])


@dataclass
class CycleCase:
    t: float
    """Seconds after the first run."""
    expect: dict[tuple[str, str], float] = field(default_factory=dict)
    """What is written this run (nothing else is)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def run_table(
    cycle: ControlCycle,
    clock: Clock,
    writes: list[tuple[str, str, float]],
    cases: list[CycleCase],
    store: PointStore | None = None,
    inputs: dict[int, dict[str, float]] | None = None,
) -> None:
    start = clock.now
    for k, case in enumerate(cases):
        clock.now = start + case.t
        if store is not None and inputs and k in inputs:
            feed(store, clock.now, inputs[k])
        writes.clear()
        await cycle.run_once(received_ts=clock.now)
        got = {(d, p): v for d, p, v in writes}
        assert got == pytest.approx(case.expect), f"run {k} at t={case.t}"


def make_cycle(
    site: SiteConfig = SITE, config: ControlConfig | None = None
) -> tuple[ControlCycle, Clock, list[tuple[str, str, float]], PointStore]:
    store = PointStore()
    clock = Clock()
    writes: list[tuple[str, str, float]] = []

    async def write(device: str, point: str, value: float) -> None:
        writes.append((device, point, value))

    config = config or ControlConfig(enabled=True)
    return ControlCycle(config, site, store, write, clock=clock), clock, writes, store


async def test_priorities_bounds_deadband_and_keep_alive_per_cycle() -> None:
    cycle, clock, writes, _ = make_cycle()
    on = req(1, point="power_setpoint_enabled")
    grid = Scripted(
        "grid",
        {
            0: [on, req(10 * MW)],
            1: [on, req(10.02 * MW)],  # inside the deadband
            2: [on, req(12 * MW)],
            3: [on, req(12 * MW)],  # asked again: rewritten once a second
            4: [on, req(12 * MW)],
            5: [on, req(12 * MW)],
            6: [on, req(12 * MW)],
        },
    )
    droop = Scripted("droop", {5: [req(1 * MW, ADD)], 6: [req(1 * MW, ADD)]})
    limit = Scripted("rating", {6: [req(12.5 * MW, AT_MOST)]})
    cycle.controllers = [limit, grid, droop]
    await run_table(
        cycle,
        clock,
        writes,
        [
            CycleCase(0.0, {ENABLE: 1.0, POWER: 10 * MW}),
            CycleCase(0.1),
            CycleCase(0.5, {POWER: 12 * MW}),
            CycleCase(1.0),
            CycleCase(1.6, {POWER: 12 * MW}),  # kept alive 1 s after the last write
            CycleCase(1.7, {POWER: 13 * MW}),  # the droop term on top
            CycleCase(1.8, {POWER: 12.5 * MW}),  # a higher-priority bound: rated 12.5
        ],
    )


async def test_the_battery_controller_holds_its_last_decision_for_others_to_add_to() -> None:
    """A run that decides nothing new asks for the last setpoint again: a droop term added
    then goes on top of it, not on 0."""
    cycle, clock, writes, store = make_cycle()
    feed(store, clock.now, {**BATTERY, "meter.active_power": 450 * MW})
    await cycle.run_once(received_ts=clock.now)
    decided = writes[-1][2]
    droop = Scripted("droop", {0: [req(1 * MW, ADD)]})
    cycle.controllers = [cycle.battery, droop]
    writes.clear()
    clock.now += 0.05  # no new meter reading: the battery controller decides nothing new
    await cycle.run_once()
    assert writes == [("bess", "power_setpoint", pytest.approx(decided + 1 * MW))]


async def test_observe_only_runs_every_controller_and_writes_nothing() -> None:
    cycle, clock, writes, _ = make_cycle(config=ControlConfig(enabled=False))
    grid = Scripted("grid", {0: [req(10 * MW)]})
    cycle.controllers = [grid]
    await run_table(cycle, clock, writes, [CycleCase(0.0)])
    assert grid.run == 1


# ---- the cycle, with the real controllers -------------------------------------------------


def feed(store: PointStore, t: float, values: dict[str, float]) -> None:
    units = {"soc": SiUnit.RATIO, "energy_rating": SiUnit.JOULE, "chw_supply_temp": SiUnit.CELSIUS}
    store.update(
        Point(name, v, units.get(name.partition(".")[2], SiUnit.WATT), Quality.GOOD, t, t)
        for name, v in values.items()
    )


BATTERY = {
    "bess.active_power": 0.0,
    "bess.soc": 0.5,
    "bess.power_rating": 250 * MW,
    "bess.energy_rating": from_mwh(120.0),
}


async def test_an_import_over_the_limit_is_discharged_at_once_after_the_enable() -> None:
    cycle, clock, writes, store = make_cycle(
        SiteConfig(grid_meter="meter", bess="bess", thermal=None, grid_import_limit_mw=400.0)
    )
    feed(store, clock.now, {**BATTERY, "meter.active_power": 450 * MW})
    await cycle.run_once(received_ts=clock.now)
    assert [p for _, p, _ in writes] == ["power_setpoint_enabled", "power_setpoint"]
    assert writes[1][2] >= 50 * MW  # at least the excess, discharging
    assert writes[1][2] <= 250 * MW  # within the rating


async def test_a_steady_site_at_its_soc_target_keeps_the_battery_idle() -> None:
    cycle, clock, writes, store = make_cycle()
    inputs = {k: {**BATTERY, "meter.active_power": 100 * MW} for k in range(4)}
    await run_table(
        cycle,
        clock,
        writes,
        [
            CycleCase(0.0, {ENABLE: 1.0, POWER: 0.0}),
            CycleCase(0.1),
            CycleCase(0.2),
            CycleCase(1.2, {POWER: 0.0}),  # kept alive
        ],
        store,
        inputs,
    )  # fmt: skip


async def test_the_thermal_plant_gets_its_setpoints_once_a_second_without_a_battery() -> None:
    site = SiteConfig(grid_meter="meter", bess=None, thermal="plant", it_load=())
    cycle, clock, writes, store = make_cycle(site)
    store.update(
        [Point("plant.chw_supply_temp", 18.0, SiUnit.CELSIUS, Quality.GOOD, clock.now, clock.now)]
    )
    await cycle.run_once()
    first = {p for _, p, _ in writes}
    assert first == {"heat_supply_setpoint", "chw_supply_setpoint"}
    writes.clear()
    clock.now += 0.5
    await cycle.run_once()
    assert writes == []  # the heat setpoint is not rewritten; the loop waits for its second
