"""Grid signals as one domain object: validation, and how signals in force are resolved."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from pswd_gateway.domain.grid_signals import (
    FastFrequencyResponse,
    GridSignal,
    HeatRequest,
    ImportLimit,
    PriceLevel,
    Shed,
    SignalInvalidError,
    SignalRequest,
    SignalSource,
    accept,
    boundaries,
    resolve,
    superseded,
)

T0 = datetime(2030, 1, 15, 17, 0, tzinfo=UTC)
REQUEST: TypeAdapter[SignalRequest] = TypeAdapter(SignalRequest)


def signal(body: object, n: int, *, at: datetime = T0, key: str | None = None) -> GridSignal:
    assert not isinstance(body, dict)
    return accept(
        body,  # type: ignore[arg-type]
        signal_id=f"gs_{n:04d}",
        source=SignalSource.HTTP,
        issuer="tso",
        received_at=at,
        key=key,
    )


def errors(body: dict[str, object]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as bad:
        REQUEST.validate_python(body)
    return [(e["loc"], e["msg"]) for e in bad.value.errors()]


def test_each_kind_is_chosen_by_kind_and_unknown_fields_are_refused() -> None:
    assert isinstance(REQUEST.validate_python({"kind": "shed", "shed_mw": 5}), Shed)
    assert errors({"kind": "import_limit", "import_limit_mw": 100, "mw": 1}) == [
        (("import_limit", "mw"), "Extra inputs are not permitted")
    ]
    assert errors({"kind": "brownout"})[0][0] == ()


def test_values_out_of_range_name_the_field_and_the_rule() -> None:
    assert errors({"kind": "import_limit", "import_limit_mw": -1}) == [
        (("import_limit", "import_limit_mw"), "Input should be greater than or equal to 0")
    ]
    (loc, msg), *_ = errors({"kind": "heat_request", "heat_mw": 10, "supply_temp_c": 95})
    assert loc == ("heat_request", "supply_temp_c")
    assert "less than or equal to 90" in msg
    (loc, msg), *_ = errors({"kind": "ffr", "enabled": True})
    assert "max_mw > 0" in msg


def test_a_window_must_be_ordered_timezoned_and_not_over() -> None:
    (_, msg), *_ = errors(
        {
            "kind": "price",
            "value": 80,
            "unit": "EUR/MWh",
            "start": "2030-01-15T18:00:00Z",
            "end": "2030-01-15T17:00:00Z",
        }
    )
    assert "end must be after start" in msg
    (loc, _), *_ = errors({"kind": "price", "value": 1, "unit": "level", "end": "2030-01-15T17:00"})
    assert loc == ("price", "end")
    over = ImportLimit(import_limit_mw=100, end=T0 - timedelta(minutes=1))
    with pytest.raises(SignalInvalidError) as ended:
        signal(over, 1)
    assert ended.value.field == "/end"


def test_without_a_start_a_signal_starts_at_its_reception_and_binds_until_its_end() -> None:
    s = signal(ImportLimit(import_limit_mw=100, end=T0 + timedelta(hours=1)), 1)
    assert s.start == T0
    assert s.in_force(T0)
    assert not s.in_force(T0 + timedelta(hours=1))
    assert boundaries([s], T0) == [T0 + timedelta(hours=1)]


def test_strictest_limit_wins_and_sheds_add_below_their_baseline() -> None:
    a = signal(ImportLimit(import_limit_mw=300), 1)
    b = signal(ImportLimit(import_limit_mw=250), 2)
    effective = resolve([a, b], T0)
    assert (effective.import_limit_mw, effective.import_limit_by) == (250, "gs_0002")
    s1 = signal(Shed(shed_mw=20, baseline_mw=260), 3)
    s2 = signal(Shed(shed_mw=15, baseline_mw=280), 4)
    effective = resolve([a, b, s1, s2], T0)
    assert effective.shed_mw == 35
    assert (effective.import_limit_mw, effective.import_limit_by) == (225, "gs_0003")


def test_a_later_ffr_replaces_an_earlier_one_and_can_switch_it_off() -> None:
    on = signal(FastFrequencyResponse(enabled=True, max_mw=50), 1)
    off = signal(FastFrequencyResponse(enabled=False), 2, at=T0 + timedelta(seconds=1))
    later = T0 + timedelta(seconds=2)
    effective = resolve([off, on], later)
    assert effective.ffr is not None
    assert (effective.ffr.enabled, effective.ffr_by) == (False, "gs_0002")
    assert resolve([on], later).ffr == on.signal


def test_price_carbon_and_heat_each_take_the_latest_in_force() -> None:
    old = signal(PriceLevel(value=80, unit="EUR/MWh"), 1)
    new = signal(PriceLevel(value=120, unit="EUR/MWh"), 2, at=T0 + timedelta(seconds=1))
    heat = signal(HeatRequest(heat_mw=30, supply_temp_c=75), 3)
    effective = resolve([new, heat, old], T0 + timedelta(seconds=5))
    assert effective.price is not None
    assert effective.price.value == 120
    assert effective.heat_request == heat.signal
    assert effective.import_limit_mw is None


def test_a_standing_setting_withdraws_the_one_before_it() -> None:
    first = signal(ImportLimit(import_limit_mw=250), 1, key="opcua:SetGridImportLimit")
    second = signal(ImportLimit(import_limit_mw=300), 2, key="opcua:SetGridImportLimit")
    other = signal(ImportLimit(import_limit_mw=200), 3)
    assert superseded([first, other], second) == ["gs_0001"]
    assert superseded([first, second], other) == []


def test_a_withdrawn_signal_binds_only_until_its_withdrawal() -> None:
    s = signal(ImportLimit(import_limit_mw=100), 1)
    gone = s.model_copy(update={"withdrawn_at": T0 + timedelta(minutes=5)})
    assert resolve([gone], T0 + timedelta(minutes=1)).import_limit_mw == 100
    assert resolve([gone], T0 + timedelta(minutes=5)).import_limit_mw is None


limits = st.floats(min_value=0, max_value=10_000, allow_nan=False)
offsets = st.integers(min_value=-120, max_value=120)


@st.composite
def signals(draw: st.DrawFn) -> list[GridSignal]:
    out = []
    for n in range(draw(st.integers(min_value=0, max_value=8))):
        start = T0 + timedelta(minutes=draw(offsets))
        end = start + timedelta(minutes=draw(st.integers(min_value=1, max_value=240)))
        received = T0 - timedelta(hours=3) + timedelta(seconds=draw(st.integers(0, 100)))
        if draw(st.booleans()):
            body: object = ImportLimit(import_limit_mw=draw(limits), start=start, end=end)
        else:
            body = Shed(
                shed_mw=draw(st.floats(min_value=0.1, max_value=500)),
                baseline_mw=draw(limits),
                start=start,
                end=end,
            )
        out.append(signal(body, n, at=received))
    return out


@given(signals(), limits, offsets)
def test_adding_a_looser_limit_never_raises_the_effective_limit(
    kept: list[GridSignal], extra_mw: float, at_min: int
) -> None:
    at = T0 + timedelta(minutes=at_min)
    before = resolve(kept, at).import_limit_mw
    looser = signal(ImportLimit(import_limit_mw=extra_mw), 9999, at=T0 - timedelta(hours=4))
    after = resolve([*kept, looser], at).import_limit_mw
    assert after is not None
    if before is not None:
        assert after <= before
        assert after == min(before, extra_mw)


@given(signals(), offsets, st.randoms(use_true_random=False))
def test_the_order_of_arrival_never_changes_the_effective_constraints(
    kept: list[GridSignal], at_min: int, rnd: random.Random
) -> None:
    at = T0 + timedelta(minutes=at_min)
    shuffled = list(kept)
    rnd.shuffle(shuffled)
    assert resolve(shuffled, at) == resolve(kept, at)


@given(signals(), offsets)
def test_the_effective_limit_is_never_above_any_limit_in_force(
    kept: list[GridSignal], at_min: int
) -> None:
    at = T0 + timedelta(minutes=at_min)
    effective = resolve(kept, at).import_limit_mw
    for s in kept:
        if s.in_force(at) and isinstance(s.signal, ImportLimit):
            assert effective is not None
            assert effective <= s.signal.import_limit_mw
