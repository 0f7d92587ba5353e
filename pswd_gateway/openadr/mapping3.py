"""An OpenADR 3 event as grid signals: the one mapping, pure (no I/O; the time is passed in).

:func:`map_event` takes an event as the VTN sent it (decoded JSON) and answers the grid-signal
requests it asks for, one per interval and payload, each with its window and its key
(``openadr3:<event id>:<interval id>``), or raises :class:`EventRefusedError` naming the field
(a JSON pointer into the event) and why. Nothing else escapes it, whatever the input
(``tests/unit/test_openadr3_mapping.py`` proves it with Hypothesis).

=========================  ==============================================================
payload type               grid signal
=========================  ==============================================================
``IMPORT_CAPACITY_LIMIT``  :class:`ImportLimit` (units ``KW``, ``MW`` or ``W``, in MW)
``DISPATCH_SETPOINT``      :class:`ImportLimit`: the site imports at most the setpoint
``SIMPLE``                 level 1-3: :class:`Shed` of the configured MW; level 0: none
``PRICE``                  :class:`PriceLevel` per MWh (currency ``EUR``/``USD``/``GBP``,
                           units ``KWH`` or ``MWH``); without a currency: a ``level``
``GHG``                    :class:`CarbonLevel` in gCO2/kWh
=========================  ==============================================================

Windows follow the specification's inheritance: an interval's ``intervalPeriod`` overrides the
event's; an interval without a start begins where the previous ones end. A start of
``0001-01-01`` (or none at all) is "now"; a duration of ``P9999Y`` (or none) has no end.
``randomizeStart`` is not applied. An interval whose window has ended is skipped; an event whose
every interval has ended is refused. The structure is checked with the ``openadr3`` package's
models of the JSON (strict: no ``"3"`` for ``3``), then every value by the grid signal's own
model (an import limit above 10,000 MW is refused as the HTTP door refuses it).
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from openadr3.entities.raw import (
    RawEvent,
    RawEventPayloadDescriptor,
    RawInterval,
    RawIntervalPeriod,
    RawValuesMap,
)
from pydantic import ValidationError

from pswd_gateway.domain.grid_signals import CarbonLevel, ImportLimit, PriceLevel, Shed

__all__ = [
    "ACTED_ON",
    "KEY_PREFIX",
    "MAX_INTERVALS",
    "EventRefusedError",
    "EventRequest",
    "EventSignals",
    "MappedSignal",
    "event_id_of",
    "event_key_prefix",
    "event_of_key",
    "interval_of_key",
    "map_event",
]

KEY_PREFIX: Final = "openadr3:"
MAX_INTERVALS: Final = 300
"""More intervals in one event are refused (each becomes a journalled signal)."""
MAX_TEXT: Final = 64
"""A time or duration longer than this is refused before it is parsed."""
INT32: Final = 2**31
ACTED_ON: Final = (
    "IMPORT_CAPACITY_LIMIT",
    "DISPATCH_SETPOINT",
    "SIMPLE",
    "PRICE",
    "GHG",
)
"""The payload types this VEN acts on; an event with another one is refused."""

OBJECT_ID = re.compile(r"[a-zA-Z0-9_-]{1,128}")
"""The specification's ``objectID``: URL safe, 1-128 characters."""
DURATION = re.compile(
    r"(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?"
    r"(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?"
)
"""The specification's ``duration`` (ISO 8601)."""
POWER_UNITS_MW: Final = {"W": 1e-6, "KW": 1e-3, "MW": 1.0}
PRICE_PER_MWH: Final = {"KWH": 1000.0, "MWH": 1.0}
CURRENCIES: Final = ("EUR", "USD", "GBP")

EventRequest = ImportLimit | Shed | PriceLevel | CarbonLevel
"""What an OpenADR 3 event becomes."""


class EventRefusedError(ValueError):
    """An event this VEN does not act on: ``field`` (a JSON pointer into it) and ``why``."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field or '/'}: {why}")
        self.field = field
        self.why = why


@dataclass(frozen=True, slots=True)
class MappedSignal:
    """One grid-signal request of an event: its interval, payload type and standing key."""

    key: str
    interval_id: int
    payload_type: str
    request: EventRequest
    starts_now: bool
    """The window starts at the reception (no start, or ``0001-01-01``): mapping the same event
    again later gives a later window, so a repeat is recognised by its values only."""


@dataclass(frozen=True, slots=True)
class EventSignals:
    """What an event asks: its grid-signal requests, and the intervals skipped as ended."""

    event_id: str
    program_id: str
    signals: tuple[MappedSignal, ...]
    skipped: tuple[int, ...] = ()


def event_key_prefix(event_id: str) -> str:
    """The keys of an event's signals start with this (an objectID has no colon)."""
    return f"{KEY_PREFIX}{event_id}:"


def event_of_key(key: str | None) -> str | None:
    """The event id of an OpenADR 3 signal's key (None: not one)."""
    if key is None or not key.startswith(KEY_PREFIX):
        return None
    return key[len(KEY_PREFIX) :].split(":", 1)[0] or None


def interval_of_key(key: str) -> int | None:
    """The interval id of an OpenADR 3 signal's key (None: not one)."""
    parts = key.split(":")
    if len(parts) < 3 or parts[0] != KEY_PREFIX.rstrip(":"):
        return None
    try:
        return int(parts[2])
    except ValueError:
        return None


def event_id_of(raw: object) -> str | None:
    """The event's ``id`` when it has a valid one (to name it in a refusal)."""
    if not isinstance(raw, Mapping):
        return None
    value = raw.get("id")
    return value if isinstance(value, str) and OBJECT_ID.fullmatch(value) else None


def map_event(
    raw: object,
    *,
    now: datetime,
    simple_shed_mw: Sequence[float],
    program_descriptors: Sequence[object] = (),
) -> EventSignals:
    """The grid-signal requests of the event ``raw`` (decoded JSON) at ``now`` (aware).

    ``simple_shed_mw`` is the shed of ``SIMPLE`` levels 1, 2 and 3; ``program_descriptors``
    are the program's ``payloadDescriptors`` (the event's own come first). Raises
    :class:`EventRefusedError` and nothing else."""
    try:
        return _map(raw, now, simple_shed_mw, program_descriptors)
    except EventRefusedError:
        raise
    except ValidationError as exc:
        raise _refusal(exc, "") from None
    except (ValueError, TypeError, OverflowError, ArithmeticError, RecursionError) as exc:
        raise EventRefusedError("", f"not an event this VEN can read: {exc}") from None


# ---- inside --------------------------------------------------------------------------------


def _map(
    raw: object,
    now: datetime,
    simple_shed_mw: Sequence[float],
    program_descriptors: Sequence[object],
) -> EventSignals:
    if not isinstance(raw, dict):
        raise EventRefusedError("", "an event is a JSON object")
    event = RawEvent.model_validate(raw, strict=True)
    event_id = event.id
    if event_id is None or not OBJECT_ID.fullmatch(event_id):
        raise EventRefusedError("/id", "an event needs an id of 1-128 of a-z A-Z 0-9 _ -")
    if not OBJECT_ID.fullmatch(event.program_id):
        raise EventRefusedError("/programID", "must be 1-128 of a-z A-Z 0-9 _ -")
    intervals = event.intervals or []
    if len(intervals) > MAX_INTERVALS:
        raise EventRefusedError(
            "/intervals", f"{len(intervals)} intervals; at most {MAX_INTERVALS} are acted on"
        )
    descriptors = _descriptors(event.payload_descriptors or [], program_descriptors)
    seen: set[int] = set()
    signals: list[MappedSignal] = []
    skipped: list[int] = []
    chain = _Chain(*_period(event.interval_period, "/intervalPeriod", now), now=now)
    for i, interval in enumerate(intervals):
        where = f"/intervals/{i}"
        _check_interval_id(interval.id, f"{where}/id", seen)
        start, end, starts_now = chain.window(interval, f"{where}/intervalPeriod", now)
        requests = _requests(interval, where, descriptors, simple_shed_mw)
        if end is not None and end <= now:
            skipped.append(interval.id)
            continue
        for payload_type, request in requests:
            windowed = _windowed(request, start, end, f"{where}/intervalPeriod")
            key = f"{event_key_prefix(event_id)}{interval.id}"
            if len(requests) > 1:
                key = f"{key}:{payload_type}"
            signals.append(MappedSignal(key, interval.id, payload_type, windowed, starts_now))
    if intervals and len(skipped) == len(intervals):
        raise EventRefusedError(
            "/intervals", f"every interval's window ended before {now.isoformat()}"
        )
    return EventSignals(event_id, event.program_id, tuple(signals), tuple(skipped))


def _check_interval_id(interval_id: int, where: str, seen: set[int]) -> None:
    """An interval id is a 32-bit integer, unique in its event (it makes the signal's key)."""
    if not -INT32 <= interval_id < INT32:
        raise EventRefusedError(where, "must be a 32-bit integer")
    if interval_id in seen:
        raise EventRefusedError(where, f"interval id {interval_id} is repeated")
    seen.add(interval_id)


@dataclass(frozen=True, slots=True)
class _Start:
    at: datetime
    now: bool
    """Given as ``0001-01-01`` (the specification's "now")."""


class _Chain:
    """The specification's inheritance: an interval's ``intervalPeriod`` overrides the event's;
    one without a start begins at the event's start advanced by every earlier interval's
    duration (no start anywhere: now)."""

    def __init__(self, start: _Start | None, duration: _Duration | None, *, now: datetime) -> None:
        self.duration = duration
        self.next = start.at if start is not None else now
        self.next_is_now = start is None or start.now
        self.unbounded = False

    def window(
        self, interval: RawInterval, where: str, now: datetime
    ) -> tuple[datetime, datetime | None, bool]:
        """(start, end or None, whether the window was worked out from ``now``)."""
        own_start, own_duration = _period(interval.interval_period, where, now)
        duration = own_duration if own_duration is not None else self.duration
        if own_start is not None:
            start, starts_now = own_start.at, own_start.now
        elif self.unbounded:
            raise EventRefusedError(
                f"{where}/start", "no start, and an earlier interval has no end to start from"
            )
        else:
            start, starts_now = self.next, self.next_is_now
        end = None if duration is None else duration.after(start, where)
        if end is not None and end <= start:
            raise EventRefusedError(f"{where}/duration", "the window has no length")
        if duration is None or duration.infinite:
            self.unbounded = True
        else:
            self.next = duration.after(self.next, where) or self.next
        return start, end, starts_now


@dataclass(frozen=True, slots=True)
class _Duration:
    years: int
    months: int
    rest: timedelta
    infinite: bool = False

    def after(self, start: datetime, where: str) -> datetime | None:
        """``start`` plus this duration (calendar years and months); None: no end."""
        if self.infinite:
            return None
        total = start.month - 1 + self.months + 12 * self.years
        year, month = start.year + total // 12, total % 12 + 1
        if year > 9999:
            raise EventRefusedError(f"{where}/duration", "ends after the year 9999")
        day = min(start.day, calendar.monthrange(year, month)[1])
        try:
            return start.replace(year=year, month=month, day=day) + self.rest
        except OverflowError:
            raise EventRefusedError(f"{where}/duration", "ends after the year 9999") from None


def _period(
    period: RawIntervalPeriod | None, where: str, now: datetime
) -> tuple[_Start | None, _Duration | None]:
    """(start, duration) of an ``intervalPeriod``; a start of 0001-01-01 is ``now``."""
    if period is None:
        return None, None
    start = None if period.start is None else _instant(period.start, f"{where}/start", now)
    duration = None if period.duration is None else _duration(period.duration, f"{where}/duration")
    return start, duration


def _instant(text: str, where: str, now: datetime) -> _Start:
    if len(text) > MAX_TEXT:
        raise EventRefusedError(where, "not an RFC 3339 date-time")
    try:
        value = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise EventRefusedError(where, f"{text!r} is not an RFC 3339 date-time") from None
    if (value.year, value.month, value.day) == (1, 1, 1):
        return _Start(now, now=True)  # the specification's "now"
    if value.tzinfo is None or value.utcoffset() is None:
        raise EventRefusedError(where, f"{text!r} has no UTC offset (RFC 3339 needs one)")
    return _Start(value, now=False)


def _duration(text: str, where: str) -> _Duration:
    match = DURATION.fullmatch(text) if len(text) <= MAX_TEXT else None
    if match is None:
        raise EventRefusedError(where, f"{text[:MAX_TEXT]!r} is not an ISO 8601 duration")
    sign, years, months, days, day_unit, hours, minutes, seconds = match.groups()
    if sign:
        raise EventRefusedError(where, f"{text!r} is negative")
    if text == "P9999Y":
        return _Duration(0, 0, timedelta(0), infinite=True)  # the specification's "infinity"
    n_days = int(days or 0) * (7 if day_unit == "W" else 1)
    try:
        rest = timedelta(
            days=n_days,
            hours=int(hours or 0),
            minutes=int(minutes or 0),
            seconds=float(seconds or 0),
        )
    except OverflowError:
        raise EventRefusedError(where, f"{text!r} is too long") from None
    return _Duration(int(years or 0), int(months or 0), rest)


@dataclass(frozen=True, slots=True)
class _Descriptor:
    units: str | None
    currency: str | None


def _descriptors(
    own: Sequence[RawEventPayloadDescriptor], program: Sequence[object]
) -> dict[str, _Descriptor]:
    """Payload type → its units and currency: the event's descriptors, then the program's."""
    found: dict[str, _Descriptor] = {}
    for i, raw in enumerate(program):
        if not isinstance(raw, Mapping) or raw.get("objectType") == "REPORT_PAYLOAD_DESCRIPTOR":
            continue
        try:
            d = RawEventPayloadDescriptor.model_validate(raw, strict=True)
        except ValidationError as exc:
            raise _refusal(exc, f"program:/payloadDescriptors/{i}") from None
        found[d.payload_type] = _Descriptor(d.units, d.currency)
    for d in own:
        found[d.payload_type] = _Descriptor(d.units, d.currency)
    return found


def _requests(
    interval: RawInterval,
    where: str,
    descriptors: Mapping[str, _Descriptor],
    simple_shed_mw: Sequence[float],
) -> list[tuple[str, EventRequest]]:
    """The requests of one interval's payloads (without their window yet)."""
    out: list[tuple[str, EventRequest]] = []
    types = [p.type for p in interval.payloads]
    for j, payload in enumerate(interval.payloads):
        at = f"{where}/payloads/{j}"
        kind = payload.type
        if kind not in ACTED_ON:
            raise EventRefusedError(
                f"{at}/type",
                f"payload type {kind[:128]!r} is not one this VEN acts on ({', '.join(ACTED_ON)})",
            )
        if types.count(kind) > 1:
            raise EventRefusedError(f"{at}/type", f"{kind} is repeated in the interval")
        value = _one_number(payload, at)
        request = _request(kind, value, descriptors.get(kind), at, simple_shed_mw)
        if request is not None:
            out.append((kind, request))
    return out


def _one_number(payload: RawValuesMap, at: str) -> float:
    if len(payload.values) != 1:
        raise EventRefusedError(f"{at}/values", f"one value expected, {len(payload.values)} given")
    value: Any = payload.values[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventRefusedError(f"{at}/values/0", f"a number expected, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise EventRefusedError(f"{at}/values/0", "must be a finite number")
    return number


def _request(
    kind: str,
    value: float,
    descriptor: _Descriptor | None,
    at: str,
    simple_shed_mw: Sequence[float],
) -> EventRequest | None:
    units = (descriptor.units or "").upper() if descriptor is not None else ""
    where = f"{at}/values/0"
    if kind in {"IMPORT_CAPACITY_LIMIT", "DISPATCH_SETPOINT"}:
        scale = POWER_UNITS_MW.get(units)
        if scale is None:
            raise EventRefusedError(
                "/payloadDescriptors",
                f"{kind} needs units KW, MW or W in its payload descriptor, not "
                f"{(descriptor.units if descriptor else None)!r}",
            )
        mw = value * scale
        note = f"{value:g} {units} is {mw:g} MW"
        return _validated(ImportLimit, {"import_limit_mw": mw}, where, note=note)
    if kind == "SIMPLE":
        if not value.is_integer() or not 0 <= value <= 3:
            raise EventRefusedError(where, f"a SIMPLE level is 0, 1, 2 or 3, not {value:g}")
        level = int(value)
        return None if level == 0 else Shed(shed_mw=simple_shed_mw[level - 1])
    if kind == "PRICE":
        return _validated(PriceLevel, _price(value, descriptor), where)
    if units not in {"", "GHG"}:
        raise EventRefusedError(
            "/payloadDescriptors", f"GHG is in g/kWh (units GHG), not {units!r}"
        )
    return _validated(CarbonLevel, {"value": value, "unit": "gCO2/kWh"}, where)


def _price(value: float, descriptor: _Descriptor | None) -> dict[str, Any]:
    """A price per MWh in its currency; without a currency, a price level."""
    currency = (descriptor.currency or "").upper() if descriptor is not None else ""
    units = (descriptor.units or "").upper() if descriptor is not None else ""
    if not currency:
        return {"value": value, "unit": "level"}
    if currency not in CURRENCIES:
        raise EventRefusedError(
            "/payloadDescriptors",
            f"currency {currency[:16]!r} is not one of {', '.join(CURRENCIES)}",
        )
    per_mwh = PRICE_PER_MWH.get(units)
    if per_mwh is None:
        raise EventRefusedError(
            "/payloadDescriptors",
            f"a price in {currency} needs units KWH or MWH, not {units[:16] or None!r}",
        )
    return {"value": value * per_mwh, "unit": f"{currency}/MWh"}


def _validated(
    model: type[EventRequest], fields: dict[str, Any], where: str, *, note: str | None = None
) -> EventRequest:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        refusal = _refusal(exc, where, value_only=True)
        if note is not None:
            refusal = EventRefusedError(where, f"{refusal.why} ({note})")
        raise refusal from None


def _windowed(
    request: EventRequest, start: datetime, end: datetime | None, where: str
) -> EventRequest:
    try:
        return type(request).model_validate({**request.model_dump(), "start": start, "end": end})
    except ValidationError as exc:
        raise _refusal(exc, where) from None


def _refusal(exc: ValidationError, prefix: str, *, value_only: bool = False) -> EventRefusedError:
    """The first of pydantic's errors as a refusal naming its field (camelCase, as sent)."""
    first = exc.errors(include_url=False)[0]
    if value_only:
        return EventRefusedError(prefix, str(first.get("msg", "invalid")))
    loc = [_alias(part) for part in first.get("loc", ())]
    pointer = prefix + "".join(f"/{part}" for part in loc)
    return EventRefusedError(pointer, str(first.get("msg", "invalid")))


_ALIASES: Final = {
    "program_id": "programID",
    "interval_period": "intervalPeriod",
    "payload_descriptors": "payloadDescriptors",
    "report_descriptors": "reportDescriptors",
    "payload_type": "payloadType",
    "object_type": "objectType",
    "event_name": "eventName",
    "randomize_start": "randomizeStart",
}


def _alias(part: int | str) -> str:
    return _ALIASES.get(str(part), str(part))
