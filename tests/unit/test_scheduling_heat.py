"""The municipal heat offer (``scheduling/heat.py``): the model, its limits and its slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pswd_gateway.config import HeatConfig
from pswd_gateway.scheduling.heat import (
    OFFER_SLOT_S,
    OFFER_SLOTS,
    Requested,
    heat_at_supply_mw,
    heat_offer,
    heat_pump_cop,
    offer_from_plan,
)
from pswd_gateway.scheduling.model import SiteForecast, SiteForecastSlot

NOW = datetime(2030, 1, 15, 12, 3, 17, tzinfo=UTC)

heat_configs = st.builds(
    HeatConfig,
    supply_temp_c=st.floats(70.0, 90.0),
    source_temp_c=st.floats(20.0, 50.0),
    recovery_fraction=st.floats(0.0, 1.0),
    carnot_efficiency=st.floats(0.3, 0.7),
    heat_pump_power_mw=st.floats(0.0, 10_000.0),
    capacity_mw=st.floats(0.0, 10_000.0),
)
supplies = st.floats(70.0, 90.0)
loads = st.floats(-100.0, 10_000.0)
plans = st.lists(st.floats(0.0, 10_000.0), max_size=700)
nows = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 -- hypothesis takes naive bounds
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def test_the_worked_example_of_the_docs() -> None:
    """docs/grid.md: 75 °C from 35 °C at half the Carnot COP; 30 MW site load is
    source-bound, 100 MW plant-bound, and at 90 °C the compressors bind."""
    heat = HeatConfig()
    assert heat_pump_cop(75.0, 35.0, 0.5) == pytest.approx(4.352, abs=1e-3)
    assert heat_at_supply_mw(30.0, 75.0, heat) == pytest.approx(23.37, abs=0.01)
    assert heat_at_supply_mw(100.0, 75.0, heat) == 40.0
    assert heat_at_supply_mw(100.0, 90.0, heat) == pytest.approx(39.62, abs=0.01)
    # source-bound, the heat pump adds more drive power at 90 °C to the same recovered heat
    assert heat_at_supply_mw(30.0, 90.0, heat) == pytest.approx(25.82, abs=0.01)


def test_the_offer_starts_at_the_five_minute_boundary_and_follows_the_plan() -> None:
    """Slot k starts k·5 min after the boundary at or before now; each takes the plan's load
    at its start, the last planned slot holding after the plan."""
    plan_start = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    loads = [30.0] * 12 + [100.0] * 12  # an hour of base load, then an hour of a job
    offer = heat_offer(NOW, plan_start, 300, loads, HeatConfig())
    assert offer.slots[0].start == plan_start
    assert offer.slots[-1].end == plan_start + timedelta(hours=48)
    assert [s.heat_mw for s in offer.slots[:12]] == [pytest.approx(23.37, abs=0.01)] * 12
    assert {s.heat_mw for s in offer.slots[12:]} == {40.0}
    assert {s.supply_c for s in offer.slots} == {75.0}


def test_a_plan_in_longer_slots_is_read_at_each_offer_slots_start() -> None:
    """A 15-minute plan gives three 5-minute offer slots per plan slot."""
    plan_start = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    offer = heat_offer(NOW, plan_start, 900, [0.0, 100.0], HeatConfig())
    assert [s.heat_mw for s in offer.slots[:6]] == [0.0, 0.0, 0.0, 40.0, 40.0, 40.0]


def test_the_offer_from_the_scheduler_forecast_uses_its_site_load() -> None:
    start = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    rows = tuple(
        SiteForecastSlot(start + timedelta(minutes=5 * k), load, load, 0.0, 0.0, 100.0, 320.0)
        for k, load in enumerate([30.0, 100.0])
    )
    offer = offer_from_plan(NOW, SiteForecast(start, 300, rows, "test"), HeatConfig(), 80.0)
    assert offer.supply_c == 80.0
    assert offer.slots[0].heat_mw == pytest.approx(24.16, abs=0.01)
    assert offer.slots[1].heat_mw == 40.0


@pytest.mark.parametrize("supply_c", [69.9, 90.1])
def test_a_supply_temperature_outside_70_to_90_is_refused(supply_c: float) -> None:
    with pytest.raises(ValueError, match="outside 70 to 90 °C"):
        heat_offer(NOW, NOW, 300, [50.0], HeatConfig(), supply_c)


def test_a_time_without_timezone_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        heat_offer(NOW.replace(tzinfo=None), NOW, 300, [50.0], HeatConfig())


@given(now=nows, plan=plans, offset_s=st.integers(-86_400, 86_400), heat=heat_configs)
def test_the_offer_always_has_576_five_minute_slots(
    now: datetime, plan: list[float], offset_s: int, heat: HeatConfig
) -> None:
    offer = heat_offer(now, now + timedelta(seconds=offset_s), 300, plan, heat)
    assert len(offer.slots) == OFFER_SLOTS
    assert offer.slot_s == OFFER_SLOT_S
    assert offer.slots[0].start <= now < offer.slots[0].end
    for a, b in pairwise(offer.slots):
        assert a.end == b.start == a.start + timedelta(seconds=OFFER_SLOT_S)


@given(plan=plans, heat=heat_configs, supply_c=supplies)
def test_heat_is_never_negative_nor_above_the_plant_capacity(
    plan: list[float], heat: HeatConfig, supply_c: float
) -> None:
    offer = heat_offer(NOW, NOW, 300, plan, heat, supply_c)
    assert all(0.0 <= s.heat_mw <= heat.capacity_mw for s in offer.slots)
    assert all(s.supply_c == supply_c for s in offer.slots)


@given(plan=plans, extra=st.lists(st.floats(0.0, 1_000.0), max_size=700), heat=heat_configs)
def test_more_site_load_never_offers_less_heat(
    plan: list[float], extra: list[float], heat: HeatConfig
) -> None:
    more = [p + (extra[i] if i < len(extra) else 0.0) for i, p in enumerate(plan)]
    low = heat_offer(NOW, NOW, 300, plan, heat)
    high = heat_offer(NOW, NOW, 300, more, heat)
    assert all(h.heat_mw >= lo.heat_mw for lo, h in zip(low.slots, high.slots, strict=True))


@given(load=loads, heat=heat_configs, a=supplies, b=supplies)
def test_a_higher_supply_temperature_never_takes_more_heat_from_the_data_centre(
    load: float, heat: HeatConfig, a: float, b: float
) -> None:
    """The heat drawn from the data centre's water, ``Q·(1 - 1/COP)``, never rises with the
    supply temperature, nor does the COP; and where the source does not bind (the compressors
    or the plant do), the heat delivered never rises either."""
    low, high = min(a, b), max(a, b)
    cop_low = heat_pump_cop(low, heat.source_temp_c, heat.carnot_efficiency)
    cop_high = heat_pump_cop(high, heat.source_temp_c, heat.carnot_efficiency)
    assert cop_high <= cop_low
    q_low, q_high = heat_at_supply_mw(load, low, heat), heat_at_supply_mw(load, high, heat)
    tolerance = 1e-9 * max(1.0, q_low, q_high)
    assert q_high * (1 - 1 / cop_high) <= q_low * (1 - 1 / cop_low) + tolerance
    source_mw = heat.recovery_fraction * max(load, 0.0)
    if source_mw * cop_low / (cop_low - 1) >= min(
        heat.heat_pump_power_mw * cop_low, heat.capacity_mw
    ):
        assert q_high <= q_low + tolerance


@given(load=loads, heat=heat_configs, supply_c=supplies)
def test_heat_is_never_more_than_the_source_and_the_drive_power_together(
    load: float, heat: HeatConfig, supply_c: float
) -> None:
    """Energy balance: delivered heat = heat from the water + compressor power, each within
    its limit."""
    cop = heat_pump_cop(supply_c, heat.source_temp_c, heat.carnot_efficiency)
    q = heat_at_supply_mw(load, supply_c, heat)
    tolerance = 1e-9 * max(1.0, q)
    assert q * (1 - 1 / cop) <= heat.recovery_fraction * max(load, 0.0) + tolerance
    assert q / cop <= heat.heat_pump_power_mw + tolerance


def test_slots_inside_a_heat_request_are_offered_at_its_supply_temperature() -> None:
    """A request for 20 MW at 88 °C from 12:30 to 13:00: those six slots are offered at 88 °C
    and carry the 20 MW asked; the slots around it keep the default supply and ask nothing."""
    heat = HeatConfig()
    start = datetime(2030, 1, 15, 12, 30, tzinfo=UTC)
    request = Requested(start, start + timedelta(minutes=30), 88.0, 20.0)
    plain = heat_offer(NOW, NOW, 300, [150.0], heat)
    offer = heat_offer(NOW, NOW, 300, [150.0], heat, requests=[request])
    inside = [s for s in offer.slots if request.start < s.end and s.start < (request.end or s.end)]
    assert len(inside) == 6
    assert all(s.supply_c == 88.0 and s.requested_mw == 20.0 for s in inside)
    outside = [s for s in offer.slots if s not in inside]
    assert all(s.supply_c == heat.supply_temp_c and s.requested_mw == 0.0 for s in outside)
    assert [s.heat_mw for s in outside] == [s.heat_mw for s in plain.slots if s.start not in
                                            {i.start for i in inside}]  # fmt: skip
    expected = heat_at_supply_mw(150.0, 88.0, heat)
    assert all(s.heat_mw == pytest.approx(expected) for s in inside)


@given(st.lists(st.tuples(st.integers(0, 600), st.integers(1, 600), supplies), max_size=4))
def test_a_slot_takes_the_last_request_given_that_overlaps_it(
    windows: list[tuple[int, int, float]],
) -> None:
    requests = [
        Requested(NOW + timedelta(minutes=a), NOW + timedelta(minutes=a + n), supply, 10.0 + i)
        for i, (a, n, supply) in enumerate(windows)
    ]
    offer = heat_offer(NOW, NOW, 300, [100.0], HeatConfig(), requests=requests)
    for slot in offer.slots:
        asked = [r for r in requests if r.start < slot.end and slot.start < (r.end or slot.end)]
        if asked:
            assert (slot.supply_c, slot.requested_mw) == (asked[-1].supply_c, asked[-1].heat_mw)
        else:
            assert slot.requested_mw == 0.0
