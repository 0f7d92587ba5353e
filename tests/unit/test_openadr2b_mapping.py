"""An OpenADR 2.0b event as grid signals (``map_event``), the opt policy (``infeasible``) and the
``[openadr2b]`` section.

The mapping is pure: the event as openleadr parses it in, the requests (or a refusal naming the
field) out. The table of docs/grid.md is checked row by row; Hypothesis hands it hostile
payloads, which must give valid requests or a clear refusal, never anything else. The heat-offer
report's values (``heat_offer_values``) are any offer's slots up to the horizon.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from fuzzing import bounded
from pswd_gateway.config import HeatConfig, OpenAdr2bConfig
from pswd_gateway.domain.grid_signals import (
    ImportLimit,
    PriceLevel,
    Shed,
    SignalInvalidError,
    SignalRequest,
)
from pswd_gateway.openadr.ven2b import (
    MAX_INTERVALS,
    EventVersion,
    event_key,
    heat_offer_values,
    infeasible,
    map_event,
)
from pswd_gateway.scheduling.heat import OFFER_SLOT_S, Requested, heat_offer
from pswd_gateway.scheduling.model import SiteForecast, SiteForecastSlot

NOW = datetime(2030, 1, 15, 17, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
VEN = "VEN-1"
SHEDS = (20.0, 50.0, 100.0)
CAPACITY_MW = 400.0
REQUEST: TypeAdapter[SignalRequest] = TypeAdapter(SignalRequest)


def event(
    name: str = "LOAD_DISPATCH",
    kind: str = "setpoint",
    values: tuple[float, ...] = (250.0,),
    *,
    start: datetime = NOW,
    duration: timedelta = HOUR,
    measurement: dict[str, Any] | None = None,
    status: str = "far",
    targets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An event as openleadr's ``parse_message`` hands it to ``on_event``."""
    signal: dict[str, Any] = {
        "intervals": [
            {
                "dtstart": start + k * duration,
                "duration": duration,
                "signal_payload": v,
                "uid": k,
            }
            for k, v in enumerate(values)
        ],
        "signal_name": name,
        "signal_type": kind,
        "signal_id": "sig-1",
    }
    if measurement is not None:
        signal["measurement"] = copy.deepcopy(measurement)
    return {
        "event_descriptor": {
            "event_id": "ev-1",
            "modification_number": 0,
            "event_status": status,
            "market_context": "oadr://utility/capacity",
            "priority": 0,
            "test_event": False,
        },
        "active_period": {"dtstart": start, "duration": duration * len(values)},
        "event_signals": [signal],
        "targets": [{"ven_id": VEN}] if targets is None else targets,
        "response_required": "always",
    }


def mapped(raw: object, now: datetime = NOW) -> EventVersion:
    return map_event(raw, now=now, ven_id=VEN, simple_shed_mw=SHEDS, capacity_mw=CAPACITY_MW)


def refused(raw: object, now: datetime = NOW) -> SignalInvalidError:
    with pytest.raises(SignalInvalidError) as exc:
        mapped(raw, now)
    return exc.value


def bodies(version: EventVersion) -> list[tuple[str, SignalRequest]]:
    return list(version.requests)


W = {"start": NOW, "end": NOW + HOUR}
MINUTE = timedelta(minutes=1)
AT = "/event_signals/0/intervals/0"
PAYLOAD = f"{AT}/signal_payload"
ITEM = "/event_signals/0/measurement"
KW = {"name": "powerReal", "description": "RealPower", "unit": "W", "scale": "k"}
EUR_KWH = {"name": "currencyPerKWh", "description": "currencyPerKWh", "unit": "EUR"}


@pytest.mark.parametrize(
    ("name", "kind", "value", "measurement", "expected"),
    [
        ("LOAD_DISPATCH", "setpoint", 250.0, None, ImportLimit(import_limit_mw=250.0, **W)),
        ("LOAD_DISPATCH", "setpoint", 250_000.0, KW, ImportLimit(import_limit_mw=250.0, **W)),
        ("LOAD_DISPATCH", "delta", -30.0, None, Shed(shed_mw=30.0, **W)),
        ("LOAD_CONTROL", "x-loadControlSetpoint", 240, None, ImportLimit(import_limit_mw=240, **W)),
        ("LOAD_CONTROL", "x-loadControlCapacity", 0.5, None, ImportLimit(import_limit_mw=200, **W)),
        ("LOAD_CONTROL", "x-loadControlLevelOffset", 2, None, Shed(shed_mw=50.0, **W)),
        ("SIMPLE", "level", 1, None, Shed(shed_mw=20.0, **W)),
        ("SIMPLE", "level", 3, None, Shed(shed_mw=100.0, **W)),
        ("simple", "level", 2, None, Shed(shed_mw=50.0, **W)),
        ("ELECTRICITY_PRICE", "price", 0.12, EUR_KWH, PriceLevel(value=120.0, unit="EUR/MWh", **W)),
        ("ELECTRICITY_PRICE", "price", 3.0, None, PriceLevel(value=3.0, unit="level", **W)),
        ("ENERGY_PRICE", "level", 2.0, None, PriceLevel(value=2.0, unit="level", **W)),
    ],
)  # fmt: skip
def test_each_row_of_the_signal_table_makes_its_request(
    name: str, kind: str, value: float, measurement: dict[str, Any] | None, expected: object
) -> None:
    version = mapped(event(name, kind, (value,), measurement=measurement))
    assert bodies(version) == [("0.0", expected)]
    assert (version.event_id, version.modification_number, version.test) == ("ev-1", 0, False)
    assert version.key("0.0") == event_key("ev-1", "0.0") == "openadr2b:ev-1:0.0"


def test_every_interval_becomes_a_signal_with_its_own_window() -> None:
    version = mapped(event(values=(250.0, 230.0, 260.0), duration=timedelta(minutes=30)))
    half = timedelta(minutes=30)
    assert bodies(version) == [
        (f"0.{k}", ImportLimit(import_limit_mw=v, start=NOW + k * half, end=NOW + (k + 1) * half))
        for k, v in enumerate((250.0, 230.0, 260.0))
    ]


def test_an_interval_without_a_start_follows_the_one_before_or_the_active_period() -> None:
    raw = event(values=(250.0, 230.0))
    for interval in raw["event_signals"][0]["intervals"]:
        del interval["dtstart"]
    assert [r.start for _, r in bodies(mapped(raw))] == [NOW, NOW + HOUR]


def test_a_last_interval_of_duration_zero_is_open_ended() -> None:
    (only,) = bodies(mapped(event(duration=timedelta(0))))
    assert only[1] == ImportLimit(import_limit_mw=250.0, start=NOW, end=None)
    raw = event(values=(250.0, 230.0), duration=timedelta(0))
    assert refused(raw).field == "/event_signals/0/intervals/0/duration"


def test_level_zero_and_a_zero_delta_ask_for_nothing() -> None:
    assert bodies(mapped(event("SIMPLE", "level", (0, 2)))) == [
        ("0.1", Shed(shed_mw=50.0, start=NOW + HOUR, end=NOW + 2 * HOUR))
    ]
    assert bodies(mapped(event("LOAD_DISPATCH", "delta", (0.0,)))) == []


def test_intervals_that_have_ended_are_left_out_and_an_event_that_has_ended_is_refused() -> None:
    raw = event(values=(250.0, 230.0), start=NOW - HOUR - timedelta(minutes=1))
    assert [label for label, _ in bodies(mapped(raw))] == ["0.1"]
    late = refused(event(start=NOW - 2 * HOUR))
    assert late.field == "/active_period"
    assert "ended" in late.message


def test_a_cancelled_or_completed_event_asks_for_nothing_and_needs_no_signals() -> None:
    for status in ("cancelled", "completed"):
        raw = event(status=status)
        raw["event_signals"] = "not even a list"
        version = mapped(raw)
        assert (version.status, version.requests) == (status, ())


def test_an_event_for_other_vens_is_refused_and_one_for_a_group_is_taken() -> None:
    other = refused(event(targets=[{"ven_id": "VEN-2"}, {"ven_id": "VEN-3"}]))
    assert other.field == "/targets"
    assert "not this VEN" in other.message
    assert mapped(event(targets=[{"ven_id": "VEN-2"}, {"ven_id": VEN}])).requests
    assert mapped(event(targets=[{"group_id": "north"}])).requests
    assert mapped(event(targets=[])).requests


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (event(values=(-50.0,)), AT, "greater than or equal to 0"),
        (event(values=(1e9,)), AT, "less than or equal to 10000"),
        (event(values=(float("nan"),)), PAYLOAD, "finite"),
        (event("DEMAND_CHARGE", "price"), "/event_signals/0/signal_type", "not a signal"),
        (event("LOAD_DISPATCH", "delta", (20.0,)), PAYLOAD, "more load"),
        (event("LOAD_CONTROL", "x-loadControlCapacity", (1.5,)), PAYLOAD, "fraction"),
        (event("SIMPLE", "level", (4,)), PAYLOAD, "0, 1, 2 or 3"),
        (event("SIMPLE", "level", (1.5,)), PAYLOAD, "0, 1, 2 or 3"),
        (event(measurement={**KW, "unit": "VA"}), ITEM, "powerReal in W"),
        (event("ENERGY_PRICE", "price", measurement={**EUR_KWH, "unit": "JPY"}), ITEM, "GBP"),
        (event(start=NOW + timedelta(days=400)), f"{AT}/dtstart", "a year"),
        (event(duration=timedelta(days=400)), f"{AT}/duration", "a year"),
        (event(duration=-HOUR), f"{AT}/duration", "PT0S"),
        (event(start=NOW.replace(tzinfo=None)), f"{AT}/dtstart", "timezone"),
        (event(values=(True,)), PAYLOAD, "number"),
        (event(values=("250",)), PAYLOAD, "number"),
        (event(values=(1.0,) * (MAX_INTERVALS + 1), duration=MINUTE), "/event_signals", "more"),
        ([], "/", "object"),
        ({"event_descriptor": {}}, "/event_descriptor/event_id", "missing"),
    ],
)  # fmt: skip
def test_bad_events_are_refused_naming_the_field(raw: object, field: str, words: str) -> None:
    problem = refused(raw)
    assert problem.field == field
    assert words in problem.message


def test_bad_descriptors_are_refused() -> None:
    cases: list[tuple[str, object, str]] = [
        ("event_id", "has spaces in it", "/event_descriptor/event_id"),
        ("event_id", "x" * 129, "/event_descriptor/event_id"),
        ("event_id", 7, "/event_descriptor/event_id"),
        ("modification_number", -1, "/event_descriptor/modification_number"),
        ("modification_number", "1", "/event_descriptor/modification_number"),
        ("modification_number", True, "/event_descriptor/modification_number"),
        ("event_status", "over", "/event_descriptor/event_status"),
        ("test_event", "yes", "/event_descriptor/test_event"),
    ]
    for key, value, field in cases:
        raw = event()
        raw["event_descriptor"][key] = value
        assert refused(raw).field == field, (key, value)


def test_duplicate_uids_and_missing_intervals_are_refused() -> None:
    raw = event(values=(250.0, 230.0))
    raw["event_signals"][0]["intervals"][1]["uid"] = 0
    assert refused(raw).field == "/event_signals/0/intervals/1/uid"
    raw = event()
    raw["event_signals"][0]["intervals"] = []
    assert refused(raw).field == "/event_signals/0/intervals"
    raw = event()
    raw["event_signals"] = []
    assert refused(raw).field == "/event_signals"


def test_a_test_event_is_marked_so() -> None:
    raw = event()
    raw["event_descriptor"]["test_event"] = True
    assert mapped(raw).test


# ---- the opt policy ----------------------------------------------------------------------------


def site_plan(import_mw: float = 300.0, bess_mw: float = 0.0) -> SiteForecast:
    slots = tuple(
        SiteForecastSlot(NOW + k * timedelta(minutes=5), import_mw, import_mw, bess_mw, 0, 0, 400)
        for k in range(-2, 48)
    )
    return SiteForecast(NOW, 300, slots, "test")


def limit(mw: float, start: datetime = NOW, end: datetime | None = NOW + HOUR) -> ImportLimit:
    return ImportLimit(import_limit_mw=mw, start=start, end=end)


def test_a_limit_the_battery_can_reach_is_feasible_and_one_below_it_is_not() -> None:
    plan = site_plan(300.0)
    assert infeasible([("0.0", limit(200.0))], plan, 100.0, NOW) is None
    why = infeasible([("0.0", limit(199.0))], plan, 100.0, NOW)
    assert why is not None
    assert "can reach 200.0 MW" in why
    assert "interval 0.0" in why


def test_a_discharge_already_planned_leaves_less_of_the_battery() -> None:
    assert infeasible([("0.0", limit(200.0))], site_plan(300.0, bess_mw=40.0), 100.0, NOW)
    assert infeasible([("0.0", limit(240.0))], site_plan(300.0, bess_mw=40.0), 100.0, NOW) is None


def test_a_shed_is_feasible_up_to_the_battery_s_spare_power() -> None:
    plan = site_plan(300.0)
    assert (
        infeasible([("0.0", Shed(shed_mw=100.0, start=NOW, end=NOW + HOUR))], plan, 100.0, NOW)
        is None
    )
    assert infeasible([("0.0", Shed(shed_mw=101.0, start=NOW, end=NOW + HOUR))], plan, 100.0, NOW)


def test_prices_ask_nothing_to_be_held_and_no_plan_cannot_tell() -> None:
    price = PriceLevel(value=5.0, unit="level", start=NOW, end=NOW + HOUR)
    assert infeasible([("0.0", price)], site_plan(300.0), 0.0, NOW) is None
    empty = SiteForecast(NOW, 300, (), "none")
    assert infeasible([("0.0", limit(0.0))], empty, 0.0, NOW) is None
    later = NOW + timedelta(days=30)  # beyond the plan
    assert infeasible([("0.0", limit(0.0, later, later + HOUR))], site_plan(), 0.0, NOW) is None


# ---- hostile payloads ----------------------------------------------------------------------------

KEYS = (
    "event_descriptor", "event_id", "modification_number", "event_status", "test_event",
    "active_period", "dtstart", "duration", "event_signals", "intervals", "signal_payload",
    "signal_name", "signal_type", "uid", "targets", "ven_id", "measurement", "name", "unit",
    "scale",
)  # fmt: skip

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["SIMPLE", "level", "LOAD_DISPATCH", "setpoint", "delta", "cancelled",
                      "powerReal", "W", "k", "M", "currencyPerKWh", "EUR", VEN, "far"])
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.timedeltas()
)  # fmt: skip
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)


def check(raw: object) -> None:
    """Valid requests, or a refusal naming a field: nothing else."""
    try:
        version = mapped(raw)
    except SignalInvalidError as exc:
        problem = exc
    else:
        problem = None
    if problem is not None:
        assert problem.field.startswith("/")
        assert problem.message
        return
    assert isinstance(version, EventVersion)
    for label, request in version.requests:
        assert REQUEST.validate_python(request.model_dump()) == request
        assert request.start is not None
        assert request.end is None or request.end > NOW, label


@bounded(300)
@given(values)
def test_any_payload_maps_to_valid_requests_or_a_clear_refusal(raw: object) -> None:
    check(raw)


def paths(value: object, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*here, i))
    return out


@bounded(400)
@given(st.data())
def test_a_valid_event_with_any_field_replaced_or_removed_is_never_anything_else(
    data: st.DataObject,
) -> None:
    names = ["LOAD_DISPATCH", "SIMPLE", "ELECTRICITY_PRICE", "LOAD_CONTROL"]
    kinds = ["setpoint", "level", "price", "delta", "x-loadControlCapacity"]
    numbers = st.lists(st.floats(-1e6, 1e6) | st.integers(0, 3), min_size=1, max_size=3)
    raw = event(
        data.draw(st.sampled_from(names)),
        data.draw(st.sampled_from(kinds)),
        tuple(data.draw(numbers)),
        measurement=data.draw(st.none() | st.just(KW) | st.just(EUR_KWH)),
    )
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(raw)[1:]))
        parent = raw
        for step in where[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(values)
        check(copy.deepcopy(raw))


# ---- the heat-offer report's values ----------------------------------------------------------


@bounded(100)
@given(
    now_s=st.integers(0, 86_400),
    loads=st.lists(st.floats(-100, 10_000), max_size=48),
    horizon_h=st.floats(0.01, 48),
    supply_c=st.floats(70, 90),
    request=st.none() | st.tuples(st.integers(-60, 3000), st.integers(1, 600), st.floats(70, 90)),
)
def test_the_heat_offer_values_are_the_offers_slots_up_to_the_horizon(
    now_s: int,
    loads: list[float],
    horizon_h: float,
    supply_c: float,
    request: tuple[int, int, float] | None,
) -> None:
    """Two series on the same slot starts (5 minutes apart, from the offer's first slot, before
    the horizon): heat in MW to the kW, never negative; the slot's supply temperature."""
    now = NOW + timedelta(seconds=now_s)
    requests = []
    if request is not None:
        offset, length, asked_c = request
        begin = NOW + timedelta(minutes=offset)
        requests.append(Requested(begin, begin + timedelta(minutes=length), asked_c, 10.0))
    offer = heat_offer(now, NOW, 900, loads, HeatConfig(), supply_c, requests)
    until = now + timedelta(hours=horizon_h)
    heat, supply = heat_offer_values(offer, until)
    slots = [s for s in offer.slots if s.start < until]
    assert [at for at, _ in heat] == [at for at, _ in supply] == [s.start for s in slots]
    assert heat[0][0] <= now < heat[0][0] + timedelta(seconds=OFFER_SLOT_S)
    asked = {round(c, 2) for c in (supply_c, *(r.supply_c for r in requests))}
    for (_, mw), (_, celsius), slot in zip(heat, supply, slots, strict=True):
        assert mw >= 0
        assert mw == pytest.approx(max(0.0, slot.heat_mw), abs=5e-4)
        assert celsius == pytest.approx(slot.supply_c, abs=5e-3)
        assert celsius in asked  # the network's temperature, or a request's


# ---- the configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"enabled": True}, "needs vtn_url"),
        ({"vtn_url": "http://10.1.2.3/OpenADR2/Simple/2.0b"}, "plain HTTP to 10.1.2.3"),
        ({"vtn_url": "http://vtn.example/OpenADR2/Simple/2.0b"}, "plain HTTP"),
        ({"vtn_url": "ftp://vtn.example/x"}, "https://"),
        ({"vtn_url": "https://user:pw@vtn.example/x"}, "credentials"),
        ({"vtn_url": "https://vtn.example/x", "cert": "ven.pem"}, "cert and key go together"),
        ({"vtn_url": "http://127.0.0.1:8080/x", "cert": "a", "key": "b"}, "https://"),
        ({"vtn_url": "http://127.0.0.1:8080/x", "ca_file": "ca.pem"}, "https://"),
        ({"poll_interval_s": 0}, "greater than 0"),
        ({"poll_interval_s": 61}, "less than or equal to 60"),
        ({"vtn_fingerprint": "not-a-fingerprint"}, "pattern"),
        ({"simple_shed_mw": [50, 20, 100]}, "must not shed less"),
        ({"simple_shed_mw": [20, 50]}, "simple_shed_mw.2\n  Field required"),
        ({"opt": "maybe"}, "'in', 'out' or 'feasible'"),
        ({"vtn_name": "has space"}, "pattern"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_the_section_refuses_what_it_cannot_run_safely(section: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as bad:
        OpenAdr2bConfig.model_validate(section)
    assert words in str(bad.value)


def test_plain_http_to_this_machine_is_allowed_and_fingerprints_are_upper_case() -> None:
    cfg = OpenAdr2bConfig(
        enabled=True,
        vtn_url="http://localhost:8080/OpenADR2/Simple/2.0b/",
        vtn_fingerprint="ab:cd:ef:01:23:45:67:89:0a:bc",
    )
    assert cfg.vtn_url == "http://localhost:8080/OpenADR2/Simple/2.0b"
    assert cfg.vtn_fingerprint == "AB:CD:EF:01:23:45:67:89:0A:BC"
    assert not OpenAdr2bConfig().enabled
