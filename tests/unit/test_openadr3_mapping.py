"""The OpenADR 3 event → grid-signal mapping (``pswd_gateway.openadr.mapping3``), pure.

A table of events and what they become (payload types, units, windows and their inheritance);
then Hostile events (Hypothesis): any decoded JSON, and event-shaped documents whose every field
may be junk, are a valid set of requests or an :class:`EventRefusedError` naming a field, never
any other exception; what is accepted is always in range, in the future, with unique keys.
The heat-offer report (``reports3.heat_offer_report``) is any offer, slot by slot, in a shape
the specification's model takes.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from openadr3.entities.raw import RawReport

from fuzzing import bounded, long_run_marks
from pswd_gateway.config import HeatConfig
from pswd_gateway.domain.grid_signals import MAX_MW, CarbonLevel, ImportLimit, PriceLevel, Shed
from pswd_gateway.openadr.mapping3 import (
    ACTED_ON,
    MAX_INTERVALS,
    EventRefusedError,
    EventSignals,
    event_id_of,
    event_of_key,
    interval_of_key,
    map_event,
)
from pswd_gateway.openadr.reports3 import (
    HEAT_OFFER_PAYLOAD,
    MAX_HEAT_SLOTS,
    SUPPLY_TEMP_PAYLOAD,
    heat_offer_report,
)
from pswd_gateway.scheduling.heat import HeatOffer, HeatSlot, Requested, heat_offer

pytestmark = [pytest.mark.fuzz, *long_run_marks()]

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SHED = (10.0, 30.0, 60.0)


def descriptor(payload_type: str, units: str | None = None, currency: str | None = None) -> dict:
    d: dict[str, Any] = {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": payload_type}
    if units is not None:
        d["units"] = units
    if currency is not None:
        d["currency"] = currency
    return d


def event(
    *payloads: tuple[str, Any],
    descriptors: list[dict] | None = None,
    start: str | None = "2026-06-01T12:30:00Z",
    duration: str | None = "PT1H",
    intervals: list[dict] | None = None,
) -> dict[str, Any]:
    period: dict[str, Any] = {}
    if start is not None:
        period["start"] = start
    if duration is not None:
        period["duration"] = duration
    body: dict[str, Any] = {
        "id": "evt-1",
        "programID": "prog-1",
        "payloadDescriptors": descriptors
        if descriptors is not None
        else [descriptor("IMPORT_CAPACITY_LIMIT", "KW")],
        "intervals": intervals
        if intervals is not None
        else [{"id": 0, "payloads": [{"type": t, "values": [v]} for t, v in payloads]}],
    }
    if period:
        body["intervalPeriod"] = period
    return body


def mapped(raw: object, **kw: Any) -> EventSignals:
    return map_event(raw, now=kw.pop("now", NOW), simple_shed_mw=SHED, **kw)


def refused(raw: object, **kw: Any) -> EventRefusedError:
    with pytest.raises(EventRefusedError) as caught:
        mapped(raw, **kw)
    return caught.value


# ---- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "value", "mw"),
    [("KW", 250_000, 250.0), ("kW", 1500.5, 1.5005), ("MW", 240, 240.0), ("W", 5e6, 5.0)],
)
def test_an_import_capacity_limit_is_an_import_limit_in_mw(units: str, value: float, mw: float):
    (signal,) = mapped(
        event(
            ("IMPORT_CAPACITY_LIMIT", value),
            descriptors=[descriptor("IMPORT_CAPACITY_LIMIT", units)],
        )
    ).signals
    assert isinstance(signal.request, ImportLimit)
    assert signal.request.import_limit_mw == pytest.approx(mw)
    assert signal.request.start == datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
    assert signal.request.end == datetime(2026, 6, 1, 13, 30, tzinfo=UTC)
    assert (signal.key, signal.interval_id, signal.starts_now) == ("openadr3:evt-1:0", 0, False)


def test_a_dispatch_setpoint_is_an_import_limit_too():
    (signal,) = mapped(
        event(("DISPATCH_SETPOINT", 90), descriptors=[descriptor("DISPATCH_SETPOINT", "MW")])
    ).signals
    assert signal.request == ImportLimit(
        import_limit_mw=90.0, start=signal.request.start, end=signal.request.end
    )


def test_a_power_without_units_is_refused_rather_than_guessed():
    why = refused(event(("IMPORT_CAPACITY_LIMIT", 250), descriptors=[]))
    assert why.field == "/payloadDescriptors"
    assert "KW, MW or W" in why.why


def test_the_programs_descriptor_serves_when_the_event_has_none():
    program = [descriptor("IMPORT_CAPACITY_LIMIT", "MW")]
    (signal,) = mapped(
        event(("IMPORT_CAPACITY_LIMIT", 12), descriptors=[]), program_descriptors=program
    ).signals
    assert isinstance(signal.request, ImportLimit)
    assert signal.request.import_limit_mw == 12.0


@pytest.mark.parametrize(("level", "shed"), [(1, 10.0), (2, 30.0), (3, 60.0)])
def test_a_simple_level_sheds_the_configured_mw(level: int, shed: float):
    (signal,) = mapped(event(("SIMPLE", level), descriptors=[])).signals
    assert isinstance(signal.request, Shed)
    assert (signal.request.shed_mw, signal.request.baseline_mw) == (shed, None)


def test_simple_level_zero_is_normal_operation_and_asks_nothing():
    assert mapped(event(("SIMPLE", 0), descriptors=[])).signals == ()


@pytest.mark.parametrize("level", [4, -1, 1.5, True, "2"])
def test_a_simple_level_outside_0_to_3_is_refused(level: Any):
    assert refused(event(("SIMPLE", level), descriptors=[])).field.startswith("/intervals/0")


def test_a_price_per_kwh_is_kept_per_mwh_and_without_a_currency_as_a_level():
    (per_mwh,) = mapped(
        event(("PRICE", 0.12), descriptors=[descriptor("PRICE", "KWH", "EUR")])
    ).signals
    assert isinstance(per_mwh.request, PriceLevel)
    assert (per_mwh.request.value, per_mwh.request.unit) == (pytest.approx(120.0), "EUR/MWh")
    (level,) = mapped(event(("PRICE", 3), descriptors=[])).signals
    assert isinstance(level.request, PriceLevel)
    assert (level.request.value, level.request.unit) == (3.0, "level")
    assert (
        "currency"
        in refused(event(("PRICE", 1), descriptors=[descriptor("PRICE", "KWH", "XYZ")])).why
    )


def test_ghg_is_a_carbon_intensity():
    (signal,) = mapped(event(("GHG", 420), descriptors=[descriptor("GHG", "GHG")])).signals
    assert signal.request == CarbonLevel(
        value=420.0, unit="gCO2/kWh", start=signal.request.start, end=signal.request.end
    )


def test_two_payloads_in_one_interval_get_a_key_each():
    signals = mapped(
        event(("SIMPLE", 1), ("GHG", 300), descriptors=[descriptor("GHG", "GHG")])
    ).signals
    assert [s.key for s in signals] == ["openadr3:evt-1:0:SIMPLE", "openadr3:evt-1:0:GHG"]
    assert {event_of_key(s.key) for s in signals} == {"evt-1"}
    assert {interval_of_key(s.key) for s in signals} == {0}


def test_intervals_without_a_start_follow_one_another_from_the_events_start():
    intervals = [
        {"id": 5, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [100_000]}]},
        {
            "id": 9,
            "intervalPeriod": {"duration": "PT30M"},
            "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [200_000]}],
        },
        {"id": 2, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [300_000]}]},
    ]
    signals = mapped(event(intervals=intervals)).signals
    windows = [(s.interval_id, s.request.start, s.request.end) for s in signals]
    t = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
    assert windows == [
        (5, t, t + timedelta(hours=1)),
        (9, t + timedelta(hours=1), t + timedelta(hours=1, minutes=30)),
        (2, t + timedelta(hours=1, minutes=30), t + timedelta(hours=2, minutes=30)),
    ]


def test_now_and_infinity_are_the_specifications_0001_01_01_and_p9999y():
    (signal,) = mapped(
        event(("IMPORT_CAPACITY_LIMIT", 1000), start="0001-01-01T00:00:00Z", duration="P9999Y")
    ).signals
    assert (signal.request.start, signal.request.end, signal.starts_now) == (NOW, None, True)


def test_calendar_durations_add_months_and_years():
    (signal,) = mapped(
        event(("IMPORT_CAPACITY_LIMIT", 1000), start="2026-01-31T00:00:00+01:00", duration="P1Y1M"),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    ).signals
    assert signal.request.end == datetime(2027, 2, 28, tzinfo=signal.request.start.tzinfo)


def test_ended_intervals_are_skipped_and_an_event_that_has_wholly_ended_is_refused():
    intervals = [
        {
            "id": i,
            "intervalPeriod": {"start": start, "duration": "PT1H"},
            "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [100_000]}],
        }
        for i, start in enumerate(["2026-06-01T10:00:00Z", "2026-06-01T11:30:00Z"])
    ]
    result = mapped(event(intervals=intervals))
    assert ([s.interval_id for s in result.signals], result.skipped) == ([1], (0,))
    assert "ended" in refused(event(intervals=intervals[:1])).why


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "has space"}, "/id"),
        ({"id": None}, "/id"),
        ({"programID": 7}, "/programID"),
        ({"intervalPeriod": {"start": "2026-06-01T13:00:00", "duration": "PT1H"}}, "/start"),
        ({"intervalPeriod": {"start": "yesterday", "duration": "PT1H"}}, "/start"),
        ({"intervalPeriod": {"start": "2026-06-01T13:00:00Z", "duration": "-PT1H"}}, "/duration"),
        ({"intervalPeriod": {"start": "2026-06-01T13:00:00Z", "duration": "PT0S"}}, "/duration"),
        ({"intervalPeriod": {"start": "2026-06-01T13:00:00Z", "duration": "P8000Y"}}, "/duration"),
        ({"intervalPeriod": {"start": "2026-06-01T13:00:00Z", "duration": "1 hour"}}, "/duration"),
        ({"intervals": [{"id": 1, "payloads": []}, {"id": 1, "payloads": []}]}, "/intervals/1/id"),
        ({"intervals": [{"id": 2**40, "payloads": []}]}, "/intervals/0/id"),
        (
            {"intervals": [{"id": i, "payloads": []} for i in range(MAX_INTERVALS + 1)]},
            "/intervals",
        ),
        ({"payloadDescriptors": [{"payloadType": "X"}]}, "/payloadDescriptors/0/objectType"),
    ],
)
def test_what_is_wrong_is_refused_naming_its_field(changes: dict[str, Any], field: str):
    why = refused({**event(("IMPORT_CAPACITY_LIMIT", 1000)), **changes})
    assert field in why.field, (why.field, why.why)
    assert why.why


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, 1e9, "100", None, True, [1], {"x": 1.0}])
def test_an_absurd_or_mistyped_value_is_refused(value: Any):
    why = refused(event(("IMPORT_CAPACITY_LIMIT", value)))
    assert why.field.startswith("/intervals/0/payloads/0/values")


def test_an_unknown_payload_type_is_refused():
    why = refused(event(("EXPORT_CAPACITY_LIMIT", 5)))
    assert why.field == "/intervals/0/payloads/0/type"
    assert "IMPORT_CAPACITY_LIMIT" in why.why


def test_an_event_without_intervals_asks_nothing():
    assert mapped(event(intervals=[])).signals == ()


# ---- hostile events (Hypothesis) -------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
)
json_any = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4)
    ),
    max_leaves=25,
)
numbers = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 3, 250_000, 10_000_001, -0.0, 1e308, 5e-324]),
)
junk = json_any | st.text(max_size=200) | numbers
times = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 1),  # noqa: DTZ001 -- hypothesis: naive bounds, zones given
        max_value=datetime(9999, 12, 31),  # noqa: DTZ001
        timezones=st.just(UTC),
    ).map(lambda t: t.isoformat()),
    st.datetimes(min_value=datetime(2026, 6, 1), max_value=datetime(2026, 6, 2)).map(  # noqa: DTZ001 -- naive: refused
        lambda t: t.isoformat()
    ),
    st.sampled_from(["0001-01-01", "0001-01-01T00:00:00Z", "2026-06-01 12:00:00+00:00", ""]),
    junk,
)
durations = st.one_of(
    st.from_regex(
        r"P(\d{1,5}Y)?(\d{1,3}M)?(\d{1,4}[DW])?(T(\d{1,6}H)?(\d{1,6}M)?(\d{1,7}(\.\d{1,3})?S)?)?",
        fullmatch=True,
    ),
    st.sampled_from(["P9999Y", "PT0S", "-PT1H", "PT1H", "P1M", "PT99999999999999H"]),
    junk,
)
periods = st.none() | st.fixed_dictionaries(
    {}, optional={"start": times, "duration": durations, "randomizeStart": durations}
)
payload_types = st.sampled_from(ACTED_ON) | st.text(max_size=10)
payloads = st.lists(
    st.fixed_dictionaries({"type": payload_types, "values": st.lists(numbers | junk, max_size=2)})
    | junk,
    max_size=3,
)
intervals = st.lists(
    st.fixed_dictionaries(
        {"id": st.integers(min_value=-3, max_value=3) | junk, "payloads": payloads},
        optional={"intervalPeriod": periods},
    )
    | junk,
    max_size=5,
)
descriptors = st.lists(
    st.fixed_dictionaries(
        {
            "objectType": st.just("EVENT_PAYLOAD_DESCRIPTOR") | junk,
            "payloadType": payload_types,
        },
        optional={
            "units": st.sampled_from(["KW", "MW", "W", "KWH", "MWH", "GHG", "PERCENT"]) | junk,
            "currency": st.sampled_from(["EUR", "USD", "GBP", "JPY"]) | junk,
        },
    )
    | junk,
    max_size=4,
)
events = st.fixed_dictionaries(
    {"id": st.just("evt-1") | junk, "programID": st.just("prog-1") | junk},
    optional={
        "intervalPeriod": periods,
        "payloadDescriptors": st.none() | descriptors,
        "intervals": st.none() | intervals,
        "duration": durations,
        "eventName": junk,
        "targets": junk,
    },
)

near = st.datetimes(
    min_value=datetime(2026, 5, 31),  # noqa: DTZ001 -- hypothesis: naive bounds, zones given
    max_value=datetime(2026, 6, 2),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda t: t.isoformat())
plausible_numbers = st.one_of(
    st.floats(min_value=-10, max_value=1e8),
    st.integers(min_value=0, max_value=4),
    st.sampled_from([0.25, 250_000, 10_000_000, 10_000_001, 1e12]),
)
plausible_periods = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "start": near | st.sampled_from(["0001-01-01T00:00:00Z"]),
        "duration": st.sampled_from(["PT5M", "PT1H", "PT90M", "P1D", "P9999Y", "PT0S", "PT1S"]),
    },
)
plausible_events = st.fixed_dictionaries(
    {
        "id": st.just("evt-1"),
        "programID": st.just("prog-1"),
        "payloadDescriptors": st.lists(
            st.fixed_dictionaries(
                {
                    "objectType": st.just("EVENT_PAYLOAD_DESCRIPTOR"),
                    "payloadType": st.sampled_from(ACTED_ON),
                },
                optional={
                    "units": st.sampled_from(["KW", "MW", "W", "KWH", "MWH", "GHG"]),
                    "currency": st.sampled_from(["EUR", "USD", "GBP", "JPY"]),
                },
            ),
            max_size=5,
        ),
        "intervals": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.integers(min_value=0, max_value=6),
                    "payloads": st.lists(
                        st.fixed_dictionaries(
                            {
                                "type": st.sampled_from(ACTED_ON),
                                "values": st.lists(plausible_numbers, min_size=1, max_size=1),
                            }
                        ),
                        min_size=1,
                        max_size=2,
                    ),
                },
                optional={"intervalPeriod": plausible_periods},
            ),
            max_size=4,
        ),
    },
    optional={"intervalPeriod": plausible_periods},
)
"""Events a VTN might well send: many are accepted, so what is accepted is checked often."""


def check(result: EventSignals) -> None:
    """What an accepted event may ask: in range, windows that end after now, unique keys."""
    keys = [s.key for s in result.signals]
    assert len(keys) == len(set(keys))
    for s in result.signals:
        assert s.key.startswith(f"openadr3:{result.event_id}:")
        request = s.request
        assert request.start is not None
        assert request.end is None or (request.end > NOW and request.end > request.start)
        if isinstance(request, ImportLimit):
            assert 0 <= request.import_limit_mw <= MAX_MW
        if isinstance(request, Shed):
            assert request.shed_mw in SHED


def outcome(raw: object) -> None:
    try:
        result = mapped(raw)
    except EventRefusedError as exc:
        refusal: EventRefusedError | None = exc
    else:
        refusal = None
    if refusal is not None:
        assert isinstance(refusal.field, str)
        assert refusal.why
        return
    assert isinstance(raw, dict)
    assert result.event_id == event_id_of(raw)
    check(result)


@bounded(300)
@given(json_any)
@example([])
@example({"id": "e", "programID": "p", "intervals": [{"id": 0, "payloads": "x"}]})
def test_any_json_is_an_event_or_a_refusal(raw: object) -> None:
    outcome(raw)


@bounded(600)
@given(events)
@example(event(("IMPORT_CAPACITY_LIMIT", 1e308)))
@example(event(("IMPORT_CAPACITY_LIMIT", 2**80)))
@example(event(("PRICE", 1e300), descriptors=[descriptor("PRICE", "KWH", "USD")]))
@example(event(("IMPORT_CAPACITY_LIMIT", 1), start="9999-12-31T23:59:59Z", duration="PT2H"))
@example(event(("IMPORT_CAPACITY_LIMIT", 1), start="0001-01-01", duration="PT99999999999999H"))
def test_a_hostile_event_is_valid_requests_or_a_refusal_naming_a_field(raw: dict) -> None:
    outcome(raw)


@bounded(600)
@given(plausible_events)
def test_a_plausible_event_is_valid_requests_or_a_refusal_naming_a_field(raw: dict) -> None:
    outcome(raw)


@bounded(200)
@given(st.floats(min_value=0, max_value=1e8, allow_nan=False))
def test_a_limit_in_kw_is_that_many_thousandths_of_a_mw_or_refused_above_10_gw(kw: float):
    if kw / 1000 > MAX_MW:
        assert "MW" in refused(event(("IMPORT_CAPACITY_LIMIT", kw))).why
        return
    (signal,) = mapped(event(("IMPORT_CAPACITY_LIMIT", kw))).signals
    assert isinstance(signal.request, ImportLimit)
    assert signal.request.import_limit_mw == pytest.approx(kw / 1000)


# ---- the heat-offer report (reports3.heat_offer_report) -----------------------------------------

heat_requests = st.builds(
    lambda offset_min, length_min, supply_c, heat_mw: Requested(
        NOW + timedelta(minutes=offset_min),
        None if length_min is None else NOW + timedelta(minutes=offset_min + length_min),
        supply_c,
        heat_mw,
    ),
    st.integers(-600, 3000),
    st.none() | st.integers(1, 600),
    st.floats(70, 90),
    st.floats(0.1, 10_000),
)
heat_configs = st.builds(
    HeatConfig,
    source_temp_c=st.floats(20, 50),
    recovery_fraction=st.floats(0, 1),
    heat_pump_power_mw=st.floats(0, 10_000),
    capacity_mw=st.floats(0, 10_000),
)
heat_offers = st.builds(
    lambda now_s, slot_s, loads, heat, supply_c, requests: heat_offer(
        NOW + timedelta(seconds=now_s), NOW, slot_s, loads, heat, supply_c, requests
    ),
    st.integers(-3600, 86_400),
    st.sampled_from([60, 300, 900, 3600]),
    st.lists(st.floats(-100, 10_000), max_size=60),
    heat_configs,
    st.none() | st.floats(70, 90),
    st.lists(heat_requests, max_size=3),
)


@bounded(100)
@given(heat_offers)
def test_the_heat_offer_report_is_the_offer_slot_by_slot_in_kw_and_celsius(offer: HeatOffer):
    """Any offer is a report the specification's model takes (strict), plain JSON (no NaN), of
    at most 576 intervals: one per slot in order, its own 5-minute period, the heat in kW (to
    the watt, never negative) and the slot's supply temperature."""
    body = heat_offer_report(event_id="evt-1", ven_name="site-ven", offer=offer)
    RawReport.model_validate(body, strict=True)
    assert json.loads(json.dumps(body, allow_nan=False)) == body
    assert body["reportName"] == "site-ven:heat:evt-1"
    assert [d["payloadType"] for d in body["payloadDescriptors"]] == [
        HEAT_OFFER_PAYLOAD,
        SUPPLY_TEMP_PAYLOAD,
    ]
    (resource,) = body["resources"]
    intervals = resource["intervals"]
    assert len(intervals) == min(len(offer.slots), MAX_HEAT_SLOTS) == 576
    for i, (interval, slot) in enumerate(zip(intervals, offer.slots, strict=False)):
        assert interval["id"] == i
        assert interval["intervalPeriod"] == {
            "start": slot.start.isoformat(),
            "duration": "PT300S",
        }
        heat, supply = interval["payloads"]
        assert heat["type"] == HEAT_OFFER_PAYLOAD
        assert supply["type"] == SUPPLY_TEMP_PAYLOAD
        (kw,) = heat["values"]
        assert kw >= 0
        assert kw == pytest.approx(max(0.0, slot.heat_mw) * 1000, abs=5e-4)
        (celsius,) = supply["values"]
        assert 70 <= celsius <= 90
        assert celsius == pytest.approx(slot.supply_c, abs=5e-3)


def test_a_heat_offer_report_is_cut_at_576_intervals_and_never_offers_negative_heat() -> None:
    step = timedelta(minutes=5)
    slots = tuple(
        HeatSlot(NOW + k * step, NOW + (k + 1) * step, -1.0 if k == 0 else 12.3456789, 80.004)
        for k in range(700)
    )
    offer = HeatOffer(NOW, 80.0, 3.8, 300, slots)
    (resource,) = heat_offer_report(event_id="e", ven_name="v", offer=offer)["resources"]
    intervals = resource["intervals"]
    assert len(intervals) == MAX_HEAT_SLOTS
    assert intervals[0]["payloads"][0]["values"] == [0.0]
    assert intervals[1]["payloads"] == [
        {"type": HEAT_OFFER_PAYLOAD, "values": [12345.679]},
        {"type": SUPPLY_TEMP_PAYLOAD, "values": [80.0]},
    ]
