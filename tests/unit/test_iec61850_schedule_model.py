"""The import forecast as an IEC 61850 schedule, without libiec61850: how the plan is resampled
onto 576 five-minute entries, which entry is in force, what crosses the link to the MMS process
and when, and what the ICD declares for FSCH1 and FSCC1."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.config import SiteConfig
from pswd_gateway.northbound.iec61850.icd import SCL_NS, icd_structure, icd_xml
from pswd_gateway.northbound.iec61850.link import (
    MmsSettings,
    ScheduleChanged,
    down_frame,
    parse_down,
)
from pswd_gateway.northbound.iec61850.process import MmsProcess
from pswd_gateway.northbound.iec61850.schedule import (
    ENTRIES,
    INTERVAL_S,
    OBJECTS,
    ForecastSchedule,
    forecast_schedule,
    resample,
    value_name,
)
from pswd_gateway.scheduling.model import SiteForecast, SiteForecastSlot
from pswd_gateway.store import PointStore

SITE = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())
DAY = 86_400.0

values_w = st.lists(st.floats(0.0, 2e9, allow_nan=False), min_size=1, max_size=700)
times = st.floats(1.7e9, 1.9e9, allow_nan=False)


def held(start_ts: float, slot_s: float, values: list[float], t: float) -> float:
    """The series at ``t``: its slot's value, the first before it, the last after it."""
    k = math.floor((t - start_ts) / slot_s)
    return values[min(max(k, 0), len(values) - 1)]


@settings(max_examples=200, deadline=None)
@given(
    values=values_w,
    minutes=st.sampled_from([5, 10, 15, 20, 30, 60]),
    now=times,
    lead_slots=st.integers(0, 3),
)
def test_a_plan_of_whole_five_minute_multiples_is_held_slot_by_slot_and_its_last_value_beyond(
    values: list[float], minutes: int, now: float, lead_slots: int
) -> None:
    """The plan's slots start at its own boundary at or before now (as the scheduler's do), up
    to a few slots earlier; each entry is exactly the value of the plan slot holding it, and
    the last slot's value continues past the plan's end."""
    slot_s = minutes * 60
    plan_start = math.floor(now / slot_s) * slot_s - lead_slots * slot_s
    got = resample(plan_start, slot_s, values, now)
    assert got.start_ts == math.floor(now / INTERVAL_S) * INTERVAL_S
    assert got.start_ts <= now < got.start_ts + INTERVAL_S
    assert (got.interval_s, len(got.values_w)) == (INTERVAL_S, ENTRIES)
    for i, value in enumerate(got.values_w):
        assert value == held(plan_start, slot_s, values, got.start_ts + i * INTERVAL_S)


@settings(max_examples=200, deadline=None)
@given(
    values=values_w,
    slot_s=st.integers(30, 7200),
    offset_s=st.floats(-DAY, DAY, allow_nan=False),
    now=times,
)
def test_any_plan_becomes_interval_averages_within_its_range_that_keep_its_energy(
    values: list[float], slot_s: int, offset_s: float, now: float
) -> None:
    """Slots of any length, starting anywhere: each entry is the plan's average power over its
    five minutes, so it lies between the plan's least and greatest value, and the entries hold
    the plan's energy over the 48 hours (the first value before the plan, the last after it)."""
    plan_start = now + offset_s
    got = resample(plan_start, slot_s, values, now)
    low, high = min(values), max(values)
    tolerance = 1e-9 * max(abs(high), 1.0)
    assert all(low - tolerance <= v <= high + tolerance for v in got.values_w)

    def energy(a: float, b: float) -> float:
        """Of the held series over [a, b), W·s: piece by piece between slot boundaries."""
        first, last = math.ceil((a - plan_start) / slot_s), math.floor((b - plan_start) / slot_s)
        inner = [plan_start + k * slot_s for k in range(first, last + 1)]
        cuts = [a, *(c for c in inner if a < c < b), b]
        return sum(
            held(plan_start, slot_s, values, (p + q) / 2) * (q - p)
            for p, q in itertools.pairwise(cuts)
        )

    span = (got.start_ts, got.start_ts + ENTRIES * INTERVAL_S)
    assert sum(got.values_w) * INTERVAL_S == pytest.approx(energy(*span), rel=1e-9, abs=1e-3)


def test_the_entry_in_force_counts_from_one_and_is_none_outside_the_schedule() -> None:
    sched = ForecastSchedule(1_000_200.0, 300, (1.0, 2.0, 3.0))
    assert [sched.entry(t) for t in (1_000_199.9, 1_000_200.0, 1_000_499.9, 1_000_500.0)] == [
        0, 1, 1, 2
    ]  # fmt: skip
    assert sched.entry(1_000_200.0 + 900) == 0
    assert [sched.value_w(e) for e in (0, 1, 3, 4)] == [None, 1.0, 3.0, None]


def slot(start: datetime, import_mw: float) -> SiteForecastSlot:
    return SiteForecastSlot(start, import_mw, import_mw, 0.0, 0.0, 300.0, 500.0)


def plan(start: datetime, slot_s: int, imports_mw: list[float]) -> SiteForecast:
    rows = tuple(
        slot(datetime.fromtimestamp(start.timestamp() + i * slot_s, UTC), mw)
        for i, mw in enumerate(imports_mw)
    )
    return SiteForecast(start, slot_s, rows, "test")


def test_the_plans_grid_import_in_mw_is_served_in_watts_from_the_boundary_before_now() -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    now = start.timestamp() + 17 * 60 + 3  # 12:17:03 in the second 15-minute slot
    got = forecast_schedule(plan(start, 900, [30.0, 42.5, 55.0]), now)
    assert got is not None
    assert got.start_ts == start.timestamp() + 15 * 60
    assert got.values_w[:4] == (42.5e6, 42.5e6, 42.5e6, 55e6)
    assert got.values_w[-1] == 55e6  # the plan's last slot holds beyond its end
    assert forecast_schedule(SiteForecast(start, 900, (), "test"), now) is None


def test_a_schedule_crosses_the_link_to_the_mms_process_as_it_was() -> None:
    sched = ScheduleChanged(resample(1.8e9, 900, [30e6, 31e6], 1.8e9 + 5), 3)
    assert parse_down(down_frame(sched)[4:]) == sched


def test_the_gateway_sends_a_new_schedule_only_when_the_forecast_changed() -> None:
    """The forecast is read at most every ``forecast_every_s``; the same plan makes no new
    revision, a changed one the next; a failing read keeps the last schedule and is counted."""
    start = datetime.fromtimestamp(math.floor(datetime.now(UTC).timestamp() / 900) * 900, UTC)
    answers: list[SiteForecast | Exception] = [
        plan(start, 900, [30.0] * 200),
        plan(start, 900, [30.0] * 200),
        plan(start, 900, [30.0, 80.0] + [30.0] * 198),
        RuntimeError("solver gone"),
    ]

    def forecast() -> SiteForecast:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    mms = MmsProcess(PointStore(), lambda: SITE, MmsSettings(), forecast=forecast,
                     forecast_every_s=3600.0)  # fmt: skip
    first = mms._forecast_schedule(now=True)
    assert first is not None
    assert first.revision == 1
    assert mms._forecast_schedule() is first  # not read again before forecast_every_s
    assert len(answers) == 3
    assert mms._forecast_schedule(now=True) is first  # the same plan: nothing new
    changed = mms._forecast_schedule(now=True)
    assert changed is not None
    assert changed.revision == 2
    assert 80e6 in changed.schedule.values_w
    assert mms._forecast_schedule(now=True) is changed  # a failing read keeps it
    assert mms.forecast_errors_total == 1


def test_the_icd_declares_fsch1_with_every_entry_and_a_type_for_each_data_object() -> None:
    text = icd_xml()
    lns = icd_structure(text)["GRID"]
    assert lns["FSCH1"][:1] == ["Beh"]
    assert [value_name(i) for i in range(1, ENTRIES + 1)] == [
        name for name in lns["FSCH1"] if name.startswith("ValASG")
    ]
    assert {"SchdSt", "SchdEntr", "NumEntr", "SchdIntv", "StrTm01", "ValMV"} <= set(lns["FSCH1"])
    assert set(lns["FSCC1"]) == {"Beh", "ActSchdRef", "CtlEnt", "Schd01", "ValMV"}
    root = ET.fromstring(text)
    ns = {"scl": SCL_NS}
    declared = {t.get("id") for t in root.iterfind(".//scl:DOType", ns)}
    used = {d.get("type") for d in root.iterfind(".//scl:LNodeType/scl:DO", ns)}
    assert used <= declared
    assert {obj.type_id for obj in OBJECTS} <= declared
    assert '<EnumVal ord="4">s</EnumVal>' in text  # SchdIntv's unit
