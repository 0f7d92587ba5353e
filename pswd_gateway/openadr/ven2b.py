"""The OpenADR 2.0b VEN: the utility's events in as grid signals, the site's load out as reports.

:class:`OpenAdr2bVen` wraps openleadr's ``OpenADRClient`` (the simple-HTTP pull model). It
registers with the VTN, polls it every ``[openadr2b] poll_interval_s``, and hands each event it
receives to :func:`map_event`, the one pure statement of how an OpenADR event becomes grid
signals (the table in docs/grid.md repeats it). What the mapping accepts and the opt policy
allows is submitted through :class:`~pswd_gateway.openadr.site.VenSite` — journalled and
audited before openleadr sends the VTN the opt-in — and what it refuses is audited as refused,
logged, and opted out; it never changes what is in force.

Each interval of each signal of an event becomes a signal of its own, keyed
``openadr2b:<event id>:<signal>.<interval uid>``: a modified event replaces its earlier
version's signals (same key: in the same transaction), a cancelled one withdraws them. The VEN
reports the measured grid import (``TELEMETRY_USAGE``, reading type ``Direct Read``), the
planned import (``TELEMETRY_USAGE``, reading type ``Projected``) and, with a heat plant, the
municipal heat offer (:func:`heat_offer_values`) as the VTN requests them.

openleadr has no type hints; it is used through a small subclass (``_Client``) that sets the
poll interval, builds its HTTP session (timeout, TLS) and lets :meth:`OpenAdr2bVen.stop` wait for
a poll in flight instead of cancelling it half-way through an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import aiohttp
from openleadr import OpenADRClient, objects, utils
from pydantic import ValidationError

from pswd_gateway.config import OpenAdr2bConfig
from pswd_gateway.domain.grid_signals import (
    GridSignal,
    ImportLimit,
    PriceLevel,
    Shed,
    SignalInvalidError,
    SignalRequest,
    SignalSource,
)
from pswd_gateway.domain.units import to_mw
from pswd_gateway.errors import ConfigError, PswdError
from pswd_gateway.journal import AuditEntry
from pswd_gateway.logging import get_logger
from pswd_gateway.openadr.site import VenSite, vtn_identity
from pswd_gateway.scheduling.heat import HeatOffer
from pswd_gateway.scheduling.model import SiteForecast
from pswd_gateway.tasks import cancel_and_wait

__all__ = [
    "FORECAST_REPORT",
    "HEAT_REPORT",
    "KEY_PREFIX",
    "MAX_INTERVALS",
    "TELEMETRY_REPORT",
    "EventVersion",
    "OpenAdr2bVen",
    "event_key",
    "heat_offer_values",
    "infeasible",
    "map_event",
]

log = get_logger("openadr2b")

KEY_PREFIX: Final = "openadr2b"
MAX_INTERVALS: Final = 288
"""Intervals an event may carry, over all its signals (a day of 5-minute intervals)."""
MAX_AHEAD: Final = timedelta(days=366)
"""No interval starts or ends further than this from now."""
EVENT_ID: Final = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,128}")
LABEL: Final = re.compile(r"[0-9]+\.[0-9]+")
"""An interval's label in its key: ``<signal index>.<interval uid>``."""
TELEMETRY_REPORT: Final = ("pswd-delivered-load", "delivered_load")
"""(reportSpecifierID, rID) of the delivered-load report: the measured grid import, MW."""
FORECAST_REPORT: Final = ("pswd-planned-import", "planned_import")
"""(reportSpecifierID, rID) of the forecast report: the planned grid import per slot, MW."""
HEAT_REPORT: Final = ("pswd-heat-offer", "heat_offer", "supply_temperature")
"""(reportSpecifierID, rID of the heat, rID of the supply temperature) of the heat-offer
report: per 5-minute slot the heat available (MW, an ``oadr:customUnit`` of thermal power) at
the network's supply temperature (°C, ``oadr:temperature``)."""
OPT_IN: Final = "optIn"
OPT_OUT: Final = "optOut"
REGISTER_TIMEOUTS: Final = 8
"""Registration (query, register, reports, first event sync and poll) gets this many request
timeouts before it is abandoned and tried again."""
RETRY_MIN_S: Final = 1.0
RETRY_MAX_S: Final = 60.0
WATCH_S: Final = 1.0
STOP_WAIT_S: Final = 2.0
"""How long :meth:`OpenAdr2bVen.stop` lets a poll in flight finish before cancelling it."""
QUIET_S: Final = 60.0
"""openleadr and apscheduler log a failed poll at every poll: one such line per minute."""

_STATUSES: Final = frozenset({"none", "far", "near", "active", "completed", "cancelled"})
_SCALE: Final = {
    "p": 1e-12, "n": 1e-9, "micro": 1e-6, "m": 1e-3, "c": 1e-2, "d": 1e-1, "none": 1.0,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
}  # fmt: skip
"""SI scale codes of an itemBase (``siScaleCode``)."""
_CURRENCY: Final = {"EUR": "EUR/MWh", "USD": "USD/MWh", "GBP": "GBP/MWh"}


# ---- the mapping: an OpenADR event as grid-signal requests (pure) -----------------------------


@dataclass(frozen=True, slots=True)
class EventVersion:
    """One version of an event (its modification number) as the grid signals it asks for."""

    event_id: str
    modification_number: int
    status: str
    """``far``, ``near``, ``active``, ``completed``, ``cancelled`` or ``none``."""
    test: bool
    """A test event: acknowledged, never put in force."""
    requests: tuple[tuple[str, SignalRequest], ...]
    """(``<signal>.<interval uid>``, the request), in the event's order. An interval that has
    ended, or one asking for normal operation (a ``SIMPLE`` level 0), has none."""

    def key(self, label: str) -> str:
        return event_key(self.event_id, label)


def event_key(event_id: str, label: str = "") -> str:
    """The standing-setting key of an event's interval (``label`` empty: the event's prefix)."""
    return f"{KEY_PREFIX}:{event_id}:{label}"


@dataclass(frozen=True, slots=True)
class _Context:
    """What the mapping needs besides the event; passed in, never read."""

    now: datetime
    simple_shed_mw: Sequence[float]
    capacity_mw: float


@dataclass(frozen=True, slots=True)
class _Unit:
    """A signal's itemBase, resolved: the value times ``factor`` is in the request's unit (MW, or a
    currency per MWh named by ``unit``)."""

    factor: float = 1.0
    unit: str = "level"


_Body = Callable[[float, _Unit, str, _Context], dict[str, Any] | None]
"""An interval's value as a request's body, without its window (``None``: the interval asks
for nothing: normal operation). The string is the value's JSON pointer, for a refusal."""


def map_event(
    event: object,
    *,
    now: datetime,
    ven_id: str | None,
    simple_shed_mw: Sequence[float],
    capacity_mw: float,
) -> EventVersion:
    """The grid signals an OpenADR 2.0b event (openleadr's parsed ``oadrEvent``) asks for.

    ``ven_id``: this VEN's venID (an event whose targets name other VENs only is refused);
    ``simple_shed_mw``: the shed of levels 1-3; ``capacity_mw``: the site's connection limit
    (``x-loadControlCapacity`` is a fraction of it). Each interval that has not ended becomes
    one request with the interval's window. Raises :class:`SignalInvalidError`, naming the
    field as a JSON pointer into the event, and nothing else, whatever the event holds; an
    event whose every interval has ended is refused. The table of signals is in docs/grid.md.
    """
    top = _mapping(event, "")
    descriptor = _mapping(_field(top, "event_descriptor", ""), "/event_descriptor")
    event_id = _event_id(_field(descriptor, "event_id", "/event_descriptor"))
    modification = _field(descriptor, "modification_number", "/event_descriptor")
    if not isinstance(modification, int) or isinstance(modification, bool):
        raise SignalInvalidError("/event_descriptor/modification_number", "must be an integer")
    if not 0 <= modification < 2**31:
        raise SignalInvalidError("/event_descriptor/modification_number", "out of range")
    status = descriptor.get("event_status", "none")
    if not isinstance(status, str) or status not in _STATUSES:
        raise SignalInvalidError("/event_descriptor/event_status", "not an OpenADR status")
    test = descriptor.get("test_event", False)
    if not isinstance(test, bool):
        raise SignalInvalidError("/event_descriptor/test_event", "must be true or false")
    _for_this_ven(top.get("targets"), ven_id)
    if status in {"cancelled", "completed"}:
        return EventVersion(event_id, modification, status, test, ())
    context = _Context(now, tuple(simple_shed_mw), capacity_mw)
    return EventVersion(event_id, modification, status, test, _requests(top, context))


def _requests(top: Mapping[str, Any], context: _Context) -> tuple[tuple[str, SignalRequest], ...]:
    signals = _field(top, "event_signals", "")
    if not isinstance(signals, list) or not signals:
        raise SignalInvalidError("/event_signals", "an event needs at least one signal")
    counts = [s.get("intervals") for s in signals if isinstance(s, Mapping)]
    if sum(len(c) for c in counts if isinstance(c, list)) > MAX_INTERVALS:
        raise SignalInvalidError("/event_signals", f"more than {MAX_INTERVALS} intervals")
    period = top.get("active_period")
    base = period.get("dtstart") if isinstance(period, Mapping) else None
    out: list[tuple[str, SignalRequest]] = []
    labels: set[str] = set()
    open_intervals = 0
    last_end: datetime | None = None
    for i, raw in enumerate(signals):
        where = f"/event_signals/{i}"
        signal = _mapping(raw, where)
        unit_of, body = _signal(signal, where)
        unit = unit_of(signal.get("measurement"), f"{where}/measurement")
        intervals = _field(signal, "intervals", where)
        if not isinstance(intervals, list) or not intervals:
            raise SignalInvalidError(f"{where}/intervals", "a signal needs at least one interval")
        start: object = base
        for j, raw_interval in enumerate(intervals):
            here = f"{where}/intervals/{j}"
            interval = _mapping(raw_interval, here)
            start, end = _window(interval, start, here, context.now, last=j == len(intervals) - 1)
            label = f"{i}.{_uid(interval.get('uid', j), here)}"
            if label in labels:
                raise SignalInvalidError(f"{here}/uid", "two intervals of a signal share a uid")
            labels.add(label)
            value = _number(_field(interval, "signal_payload", here), f"{here}/signal_payload")
            if end is not None and end <= context.now:
                last_end = end if last_end is None else max(last_end, end)
            else:
                open_intervals += 1
                fields = body(value, unit, f"{here}/signal_payload", context)
                if fields is not None:
                    out.append((label, _request(fields, start, end, here)))
            start = end
    if open_intervals == 0 and last_end is not None:
        raise SignalInvalidError(
            "/active_period", f"the window ended at {last_end.isoformat()}, before it arrived"
        )
    return tuple(out)


def _window(
    interval: Mapping[str, Any],
    previous_end: object,
    where: str,
    now: datetime,
    *,
    last: bool,
) -> tuple[datetime, datetime | None]:
    """The interval's start (its own ``dtstart``, else where the previous one ended, else the
    event's active period) and end (``None``: a last interval of duration 0 is open-ended)."""
    start = interval.get("dtstart", previous_end)
    if start is None:
        raise SignalInvalidError(f"{where}/dtstart", "the interval has no start")
    if not isinstance(start, datetime) or start.utcoffset() is None:
        raise SignalInvalidError(f"{where}/dtstart", "must be a date-time with a timezone")
    duration = _field(interval, "duration", where)
    if not isinstance(duration, timedelta):
        raise SignalInvalidError(f"{where}/duration", "must be a duration")
    if duration < timedelta(0) or duration > MAX_AHEAD:
        raise SignalInvalidError(f"{where}/duration", "must be from PT0S to a year")
    if abs(start - now) > MAX_AHEAD:
        raise SignalInvalidError(f"{where}/dtstart", "more than a year from now")
    if duration == timedelta(0):
        if not last:
            raise SignalInvalidError(f"{where}/duration", "only the last interval may be open")
        return start, None
    return start, start + duration


_MODELS: Final[dict[str, type[ImportLimit | Shed | PriceLevel]]] = {
    "import_limit": ImportLimit,
    "shed": Shed,
    "price": PriceLevel,
}


def _request(
    fields: dict[str, Any], start: datetime, end: datetime | None, where: str
) -> SignalRequest:
    """The grid-signal model's own validation (MW ranges, the window) has the last word."""
    try:
        return _MODELS[fields["kind"]].model_validate({**fields, "start": start, "end": end})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "interval"
        raise SignalInvalidError(where, f"{loc}: {first['msg']}") from None


def _signal(signal: Mapping[str, Any], where: str) -> tuple[Callable[[Any, str], _Unit], _Body]:
    name = _field(signal, "signal_name", where)
    kind = _field(signal, "signal_type", where)
    if not isinstance(name, str) or not isinstance(kind, str):
        raise SignalInvalidError(f"{where}/signal_name", "name and type must be strings")
    found = _SIGNALS.get((name, kind))
    if found is None:
        known = ", ".join(f"{n}/{t}" for n, t in _SIGNALS if n != "simple")
        raise SignalInvalidError(
            f"{where}/signal_type",
            f"{name[:40]}/{kind[:40]} is not a signal this VEN acts on (it does: {known})",
        )
    return found


def _power(measurement: Any, where: str) -> _Unit:
    """MW: the value as it is without an itemBase, else ``powerReal`` W at its scale."""
    if measurement is None:
        return _Unit()
    item = _mapping(measurement, where)
    scale = item.get("scale") or "none"
    if not isinstance(scale, str) or scale not in _SCALE:
        raise SignalInvalidError(where, "a power is powerReal in W with an SI scale code")
    if item.get("name") != "powerReal" or item.get("unit") != "W":
        raise SignalInvalidError(where, "a power is powerReal in W with an SI scale code")
    return _Unit(factor=to_mw(_SCALE[scale]))


def _currency(measurement: Any, where: str) -> _Unit:
    """A price per MWh from ``currencyPerKWh`` in EUR, USD or GBP; a level without one."""
    if measurement is None:
        return _Unit()
    item = _mapping(measurement, where)
    currency = item.get("unit")
    unit = _CURRENCY.get(currency) if isinstance(currency, str) else None
    scale = item.get("scale") or "none"
    if item.get("name") != "currencyPerKWh" or unit is None or scale != "none":
        raise SignalInvalidError(where, "a price is currencyPerKWh in EUR, USD or GBP")
    return _Unit(factor=1000.0, unit=unit)


def _plain(_measurement: Any, _where: str) -> _Unit:
    """A level or a fraction: no unit (an itemBase, if any, says nothing to it)."""
    return _Unit()


def _mw(value: float, unit: _Unit, where: str) -> float:
    mw = value * unit.factor
    if not math.isfinite(mw):
        raise SignalInvalidError(where, "out of range")
    return mw


def _setpoint(value: float, unit: _Unit, where: str, _ctx: _Context) -> dict[str, Any]:
    return {"kind": "import_limit", "import_limit_mw": _mw(value, unit, where)}


def _delta(value: float, unit: _Unit, where: str, _ctx: _Context) -> dict[str, Any] | None:
    mw = _mw(value, unit, where)
    if mw > 0:
        raise SignalInvalidError(where, "a delta above 0 asks for more load: not a signal here")
    return None if mw == 0 else {"kind": "shed", "shed_mw": -mw}


def _capacity(value: float, _unit: _Unit, where: str, ctx: _Context) -> dict[str, Any]:
    if not 0.0 <= value <= 1.0:
        raise SignalInvalidError(where, "x-loadControlCapacity is a fraction from 0 to 1")
    return {"kind": "import_limit", "import_limit_mw": round(value * ctx.capacity_mw, 6)}


def _level(value: float, _unit: _Unit, where: str, ctx: _Context) -> dict[str, Any] | None:
    if value not in {0.0, 1.0, 2.0, 3.0}:
        raise SignalInvalidError(where, "a level is 0, 1, 2 or 3")
    level = int(value)
    return None if level == 0 else {"kind": "shed", "shed_mw": ctx.simple_shed_mw[level - 1]}


def _price(value: float, unit: _Unit, where: str, _ctx: _Context) -> dict[str, Any]:
    return {"kind": "price", "value": round(_mw(value, unit, where), 6), "unit": unit.unit}


_SIGNALS: Final[dict[tuple[str, str], tuple[Callable[[Any, str], _Unit], _Body]]] = {
    ("LOAD_DISPATCH", "setpoint"): (_power, _setpoint),
    ("LOAD_DISPATCH", "delta"): (_power, _delta),
    ("LOAD_CONTROL", "x-loadControlSetpoint"): (_power, _setpoint),
    ("LOAD_CONTROL", "x-loadControlCapacity"): (_plain, _capacity),
    ("LOAD_CONTROL", "x-loadControlLevelOffset"): (_plain, _level),
    ("SIMPLE", "level"): (_plain, _level),
    ("simple", "level"): (_plain, _level),
    ("ELECTRICITY_PRICE", "price"): (_currency, _price),
    ("ELECTRICITY_PRICE", "level"): (_plain, _price),
    ("ENERGY_PRICE", "price"): (_currency, _price),
    ("ENERGY_PRICE", "level"): (_plain, _price),
}
"""(signalName, signalType) → (its itemBase's unit, the request an interval's value makes):
the table in docs/grid.md."""


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SignalInvalidError(where or "/", "must be an object")
    return value


def _field(value: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in value:
        raise SignalInvalidError(f"{where}/{key}", "is missing")
    return value[key]


def _event_id(value: object) -> str:
    if not isinstance(value, str) or not EVENT_ID.fullmatch(value):
        raise SignalInvalidError(
            "/event_descriptor/event_id", "must be 1-128 of A-Z a-z 0-9 _ . : @ / + = -"
        )
    return value


def _uid(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 100_000:
        raise SignalInvalidError(f"{where}/uid", "must be an integer from 0 to 99999")
    return value


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SignalInvalidError(where, "must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise SignalInvalidError(where, "out of range") from None
    if not math.isfinite(number):
        raise SignalInvalidError(where, "must be finite")
    return number


def _for_this_ven(targets: object, ven_id: str | None) -> None:
    """An event that names VENs must name this one (no VEN named: every VEN it reaches)."""
    if targets is None:
        return
    if not isinstance(targets, list):
        raise SignalInvalidError("/targets", "must be a list")
    named = [t["ven_id"] for t in targets if isinstance(t, Mapping) and "ven_id" in t]
    if named and ven_id not in named:
        shown = ", ".join(_shown(n) for n in named[:3])
        raise SignalInvalidError("/targets", f"the event is for {shown}, not this VEN")


def _event_id_of(event: object) -> str:
    """The event's id for a log line or an audit record, whatever the event holds."""
    descriptor = event.get("event_descriptor") if isinstance(event, Mapping) else None
    raw = descriptor.get("event_id") if isinstance(descriptor, Mapping) else None
    if isinstance(raw, str) and EVENT_ID.fullmatch(raw):
        return raw
    return "?" if raw is None else _shown(raw)


def _shown(value: object) -> str:
    """A VTN's value in a message: a string cut short, else only its type (a huge number has
    no printable form)."""
    return repr(value[:40]) if isinstance(value, str) else f"<{type(value).__name__}>"


def _modification_of(event: object) -> int | None:
    descriptor = event.get("event_descriptor") if isinstance(event, Mapping) else None
    raw = descriptor.get("modification_number") if isinstance(descriptor, Mapping) else None
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None


# ---- the opt policy (pure) --------------------------------------------------------------------


def infeasible(
    requests: Sequence[tuple[str, SignalRequest]],
    plan: SiteForecast,
    battery_power_mw: float,
    now: datetime,
) -> str | None:
    """Why the site cannot do what ``requests`` ask (``None``: it can, or the plan cannot tell).

    In each slot of the plan the site can bring its import down to the planned import less the
    battery's spare power (its rated power less the discharge already planned there). An import
    limit, or a shed's cap (the highest planned import of its window less the shed), below that
    in some slot of its window cannot be held. Prices and levels ask for nothing to be held."""
    for label, request in requests:
        if not isinstance(request, ImportLimit | Shed):
            continue
        start = request.start or now
        slots = _slots(plan, start, request.end)
        if not slots:
            continue
        floors = [
            max(0.0, s.grid_import_mw - max(0.0, battery_power_mw - max(0.0, s.bess_mw)))
            for s in slots
        ]
        if isinstance(request, ImportLimit):
            asked = request.import_limit_mw
        else:
            baseline = request.baseline_mw
            if baseline is None:
                baseline = max(s.grid_import_mw for s in slots)
            asked = baseline - request.shed_mw
        floor = max(floors)
        if asked < floor - 1e-6:
            return (
                f"interval {label} asks for an import of at most {asked:.1f} MW from "
                f"{start.isoformat()}; the site can reach {floor:.1f} MW there (planned import "
                "less the battery's spare power)"
            )
    return None


def _slots(plan: SiteForecast, start: datetime, end: datetime | None) -> list[Any]:
    slot = timedelta(seconds=plan.slot_s)
    return [s for s in plan.slots if s.start + slot > start and (end is None or s.start < end)]


# ---- the heat offer as report values (pure) ---------------------------------------------------


def heat_offer_values(
    offer: HeatOffer, until: datetime
) -> tuple[list[tuple[datetime, float]], list[tuple[datetime, float]]]:
    """The heat-offer report's two series, one value per offer slot that starts before
    ``until``: (slot start, heat available MW, to the kW) and (slot start, supply °C, to a
    hundredth). The slots are the offer's own (from the 5-minute boundary at or before its
    ``generated_at``); heat is never below 0."""
    slots = [s for s in offer.slots if s.start < until]
    heat = [(s.start, round(max(0.0, s.heat_mw), 3)) for s in slots]
    supply = [(s.start, round(s.supply_c, 2)) for s in slots]
    return heat, supply


# ---- the client -------------------------------------------------------------------------------


class _Quiet(logging.Filter):
    """One record of a kind per :data:`QUIET_S`: openleadr logs every failed poll (twice a
    second while the VTN is away), apscheduler every skipped one."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = f"{record.name}:{record.levelno}:{str(record.msg)[:48]}"
        now = time.monotonic()
        last = self._seen.get(kind)
        if last is not None and now - last < QUIET_S:
            return False
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen[kind] = now
        return True


_QUIETED = ("openleadr", "apscheduler.scheduler", "apscheduler.executors.default")


def _quiet_openleadr() -> None:
    """openleadr sets its logger to INFO when imported (every message it handles, at INFO):
    back to WARNING, and repeated lines thinned out."""
    logging.getLogger("openleadr").setLevel(logging.WARNING)
    for name in _QUIETED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Quiet) for f in logger.filters):
            logger.addFilter(_Quiet())


def _ssl_context(config: OpenAdr2bConfig) -> ssl.SSLContext | None:
    """TLS to an https:// VTN: its certificate checked against ``ca_file`` (or the system's
    CAs) and its name; our client certificate when configured; TLS 1.2 at least. A file that
    cannot be read is a :class:`ConfigError` naming the key."""
    if not (config.vtn_url or "").startswith("https://"):
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.cert is not None and config.key is not None:
            context.load_cert_chain(config.cert, config.key)
    except (OSError, ssl.SSLError) as exc:
        which = "openadr2b.ca_file, cert or key"
        raise ConfigError("openadr2b", [(which, f"cannot be used for TLS: {exc}")]) from exc
    return context


class _Client(OpenADRClient):  # type: ignore[misc]  # openleadr has no type hints
    """openleadr's client with our poll interval, HTTP session and a clean stop."""

    poll_frequency: timedelta | None
    client_session: aiohttp.ClientSession | None
    report_queue_task: asyncio.Task[None] | None
    report_requests: list[dict[str, Any]] | None

    def __init__(
        self,
        config: OpenAdr2bConfig,
        tls: ssl.SSLContext | None,
        nothing_to_report: Callable[[str], bool],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._config = config
        self._tls = tls
        self._nothing_to_report = nothing_to_report
        self.vtn_poll_s: float | None = None
        """The poll frequency the VTN asked for at registration (used: ours)."""
        self.in_flight: set[asyncio.Task[Any]] = set()

    async def create_party_registration(self, *args: Any, **kwargs: Any) -> Any:
        """openleadr polls at the frequency the VTN requests in its registration answer (10 s
        unless it says otherwise: up to 10 s from an event to its signal, 5 s on average); it reads
        ``poll_frequency`` once, right after this, when it schedules its ``_poll`` job. The
        configured interval replaces it here, before that job exists."""
        result = await super().create_party_registration(*args, **kwargs)
        if self.registration_id is not None:
            requested = self.poll_frequency
            self.vtn_poll_s = (
                requested.total_seconds() if isinstance(requested, timedelta) else None
            )
            self.poll_frequency = timedelta(seconds=self._config.poll_interval_s)
        return result

    async def create_party_reregistration(self, *args: Any, **kwargs: Any) -> None:
        """openleadr registers its reports again when it registers again (the VTN asked it
        to) and starts another report sender, keeping the reports and the sender it had: those
        are stopped first, so each report is sent once."""
        for request in self.report_requests or []:
            if request.get("job") is not None:
                with contextlib.suppress(LookupError):  # removed already (a cancelled report)
                    request["job"].remove()
        self.report_requests = []
        if self.report_queue_task is not None:
            await cancel_and_wait(self.report_queue_task)
            self.report_queue_task = None
        await super().create_party_reregistration(*args, **kwargs)

    async def _ensure_client_session(self) -> None:
        """openleadr's session has no overall timeout and ignores ``ca_file`` without a client
        certificate: ours has both, and checks the VTN's name."""
        if self.client_session is not None:
            return
        self.client_session = aiohttp.ClientSession(
            headers={"content-type": "application/xml"},
            timeout=aiohttp.ClientTimeout(total=self._config.request_timeout_s),
            connector=aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else False),
        )

    async def update_report(self, report_request_id: str) -> None:
        """openleadr's ``create_report`` gathers the rIDs of all the report requests of one
        message into a single list that every request shares, so a request for one report
        would ask the other's callbacks too (and fail). Each request keeps its own report's."""
        request = utils.find_by(self.report_requests, "report_request_id", report_request_id)
        if request is not None:
            specifier = request["report_specifier_id"]
            if self._nothing_to_report(specifier):
                return  # a report without intervals: openleadr's VTN answers it with a 500
            report = utils.find_by(self.reports, "report_specifier_id", specifier)
            own = {d.r_id for d in report.report_descriptions} if report is not None else set()
            request["r_ids"] = [r_id for r_id in request["r_ids"] if r_id in own]
        await super().update_report(report_request_id)

    async def _poll(self) -> None:
        """A poll that :meth:`OpenAdr2bVen.stop` can wait for (it may be handling an event)."""
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            await super()._poll()
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def close(self) -> None:
        """Stop polling, let a poll in flight finish (a little while), close the session."""
        if self.scheduler.running:
            self.scheduler.pause()
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=STOP_WAIT_S)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.report_queue_task is not None:
            await cancel_and_wait(self.report_queue_task)
        if self.client_session is not None:
            await self.client_session.close()


# ---- the VEN ----------------------------------------------------------------------------------


Outcome = Literal["optIn", "optOut"]


class OpenAdr2bVen:
    """The site's OpenADR 2.0b VEN: a supervised component (``start``, ``stop``, ``unhealthy``)."""

    name = "openadr2b"

    def __init__(self, config: OpenAdr2bConfig, site: VenSite) -> None:
        if config.vtn_url is None:
            raise ValueError("openadr2b.vtn_url: the VEN needs the VTN's URL")
        self.config = config
        self.site = site
        self.who = vtn_identity(config.vtn_name)
        self._tls = _ssl_context(config)
        self.events_received_total = 0
        """Event versions handed to the VEN (a re-sent version openleadr answers itself)."""
        self.events_accepted_total = 0
        self.events_refused_total = 0
        """Refused: invalid, for another VEN, opted out by policy, or not kept by the journal."""
        self.registrations_total = 0
        self.registration_failures_total = 0
        self.last_event_s: float | None = None
        """Signal to action of the last event put in force: from openleadr's receipt of the
        VTN's message to the signals accepted (journalled, audited, in force), seconds."""
        self._client: _Client | None = None
        self._polling: _Client | None = None
        """The client once registered and its poll scheduled."""
        self._task: asyncio.Task[None] | None = None
        self._received_at: float | None = None
        self._requested_at: float | None = None
        self._answered = False
        _quiet_openleadr()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Register with the VTN and poll it, in a task that registers again when it must."""
        self._task = asyncio.create_task(self._run(), name="openadr2b")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        client, self._client, self._polling = self._client, None, None
        if client is not None:
            await self._close(client)

    def unhealthy(self, now: float) -> list[str]:
        """Unwell when the task died, or when registered but no request went out for a while
        (openleadr's scheduler stopped polling). A VTN that cannot be reached is not a fault of
        the gateway: it is retried, and shows as ``registered`` false."""
        if self._task is not None and self._task.done():
            return [self.name]
        silent_s = max(30.0, 10 * self.config.poll_interval_s + self.config.request_timeout_s)
        last = self._requested_at
        if self.registered and last is not None and now - last > silent_s:
            return [self.name]
        return []

    @property
    def registered(self) -> bool:
        """Registered with the VTN and polling it."""
        client = self._polling
        return client is not None and client.registration_id is not None

    @property
    def ven_id(self) -> str | None:
        """The venID the VTN knows this VEN by (once registered)."""
        ven_id = None if self._client is None else self._client.ven_id
        return ven_id if isinstance(ven_id, str) else None

    async def _run(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            client = self._new_client()
            self._client = client
            self._answered = False
            try:
                async with asyncio.timeout(REGISTER_TIMEOUTS * self.config.request_timeout_s):
                    await client.run()
            except TimeoutError:
                log.warning("openadr2b_registration_timeout", vtn=self.config.vtn_url)
            except Exception:  # openleadr's code on a VTN's answers: logged, tried again
                log.exception("openadr2b_registration_crashed", vtn=self.config.vtn_url)
            if client.registration_id is not None and client.scheduler.running:
                self._polling = client
                backoff = RETRY_MIN_S
                self.registrations_total += 1
                log.info(
                    "openadr2b_registered",
                    vtn=self.config.vtn_url,
                    ven_id=client.ven_id,
                    registration_id=client.registration_id,
                    poll_interval_s=self.config.poll_interval_s,
                    vtn_poll_s=client.vtn_poll_s,
                )
                # openleadr drops a registration (a VTN's cancel, a failed re-registration)
                # without telling anyone: looked at every WATCH_S.
                while client.registration_id is not None and client.scheduler.running:  # noqa: ASYNC110
                    await asyncio.sleep(WATCH_S)
                log.warning("openadr2b_registration_lost", vtn=self.config.vtn_url)
            else:
                self.registration_failures_total += 1
                log.warning(
                    "openadr2b_not_registered",
                    vtn=self.config.vtn_url,
                    answered=self._answered,
                    why=(
                        "the VTN answered, but refused the registration or its answers were "
                        "not signed by the configured vtn_fingerprint (openleadr's warning "
                        "says which)"
                        if self._answered
                        else "the VTN did not answer"
                    ),
                    retry_in_s=backoff,
                )
            self._client = self._polling = None
            await self._close(client)
            await asyncio.sleep(backoff)
            backoff = min(RETRY_MAX_S, backoff * 2)

    def _new_client(self) -> _Client:
        cfg = self.config
        client = _Client(
            cfg,
            self._tls,
            self._nothing_to_report,
            ven_name=cfg.ven_name,
            vtn_url=cfg.vtn_url,
            ven_id=cfg.ven_id,
            cert=str(cfg.cert) if cfg.cert is not None else None,
            key=str(cfg.key) if cfg.key is not None else None,
            ca_file=str(cfg.ca_file) if cfg.ca_file is not None else None,
            vtn_fingerprint=cfg.vtn_fingerprint,
            show_fingerprint=False,
        )
        client.add_handler("on_event", self._on_event)
        client.add_handler("on_update_event", self._on_event)
        client.add_hook("before_send_xml", self._sending)
        client.add_hook("after_receive_xml", self._received)
        self._add_reports(client)
        return client

    async def _close(self, client: _Client) -> None:
        try:
            async with asyncio.timeout(STOP_WAIT_S + self.config.request_timeout_s):
                await client.close()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("openadr2b_close_failed", error=repr(exc))

    def _sending(self, _xml: str) -> None:
        self._requested_at = time.monotonic()

    def _received(self, xml: str) -> None:
        self._answered = True
        if "oadrDistributeEvent" in xml:
            self._received_at = time.monotonic()

    # ---- reports -----------------------------------------------------------------------------

    def _add_reports(self, client: _Client) -> None:
        """The delivered load (measured import) and the forecast (planned import), both
        ``TELEMETRY_USAGE`` reports of real power in MW: reading type ``Direct Read`` for what
        the meter measures, ``Projected`` for the plan (the reading type OpenADR 2.0b has for
        forecast values; ``HISTORY_USAGE`` is for the past, ``x-`` names are not standard)."""
        cfg = self.config
        hour = timedelta(hours=1)
        telemetry = timedelta(seconds=cfg.telemetry_period_s)
        forecast = timedelta(seconds=cfg.forecast_period_s)
        specifier, r_id = TELEMETRY_REPORT
        client.add_report(
            callback=self._delivered_load,
            resource_id=cfg.ven_name,
            measurement=self._power(),
            report_specifier_id=specifier,
            r_id=r_id,
            report_name="TELEMETRY_USAGE",
            reading_type="Direct Read",
            report_type="usage",
            report_duration=hour,
            sampling_rate=objects.SamplingRate(
                min_period=telemetry, max_period=max(hour, telemetry), on_change=False
            ),
            scale="M",
        )
        specifier, r_id = FORECAST_REPORT
        client.add_report(
            callback=self._planned_import,
            resource_id=cfg.ven_name,
            measurement=self._power(),
            data_collection_mode="full",
            report_specifier_id=specifier,
            r_id=r_id,
            report_name="TELEMETRY_USAGE",
            reading_type="Projected",
            report_type="usage",
            report_duration=timedelta(hours=cfg.forecast_horizon_h),
            sampling_rate=objects.SamplingRate(
                min_period=forecast, max_period=max(timedelta(days=1), forecast), on_change=False
            ),
            scale="M",
        )
        if self.site.heat_offer is not None:
            self._add_heat_report(client, forecast)

    def _add_heat_report(self, client: _Client, period: timedelta) -> None:
        """The heat offer: one ``TELEMETRY_USAGE`` report (openleadr's VTN requests no other
        name but ``TELEMETRY_STATUS``) of two ``Projected`` series. OpenADR 2.0b has no heat
        measurement: the heat is an ``oadr:customUnit`` (itemDescription ``thermalPower``,
        ``W`` at scale ``M``) of report type ``x-heatOffer``; the supply temperature the
        standard ``oadr:temperature`` (``celsius``) of report type ``setPoint`` (what the heat
        pump holds for that offer)."""
        specifier, heat_r_id, supply_r_id = HEAT_REPORT
        common: dict[str, Any] = {
            "resource_id": self.config.ven_name,
            "data_collection_mode": "full",
            "report_specifier_id": specifier,
            "report_name": "TELEMETRY_USAGE",
            "reading_type": "Projected",
            "report_duration": timedelta(hours=self.config.forecast_horizon_h),
            "sampling_rate": objects.SamplingRate(
                min_period=period, max_period=max(timedelta(days=1), period), on_change=False
            ),
        }
        client.add_report(
            callback=self._heat_offered,
            measurement=objects.Measurement(
                name="customUnit", description="thermalPower", unit="W", scale="M"
            ),
            r_id=heat_r_id,
            report_type="x-heatOffer",
            scale="M",
            **common,
        )
        client.add_report(
            callback=self._supply_temperature,
            measurement=objects.Measurement(
                name="temperature",
                description="temperature",
                unit="celsius",
                acceptable_units=["celsius"],
                scale="none",
            ),
            r_id=supply_r_id,
            report_type="setPoint",
            scale="none",
            **common,
        )

    def _power(self) -> Any:
        """Real power in MW (openleadr's own enum entry is shared, and it changes its scale)."""
        return objects.Measurement(
            name="powerReal",
            description="RealPower",
            unit="W",
            acceptable_units=["W"],
            scale="M",
            power_attributes=objects.PowerAttributes(
                hertz=int(self.site.signals.settings.current.nominal_frequency_hz),
                voltage=self.config.connection_voltage_v,
                ac=True,
            ),
        )

    def _nothing_to_report(self, specifier: str) -> bool:
        """No fresh meter reading, or no plan ahead: that report is not sent this time."""
        if specifier == TELEMETRY_REPORT[0]:
            return not self._delivered_load()
        if specifier == FORECAST_REPORT[0]:
            return not self._planned_import()
        if specifier == HEAT_REPORT[0]:
            return not self._heat_offered()
        return False

    def _delivered_load(self) -> list[tuple[datetime, float]]:
        """The grid import now (none without a fresh reading: nothing is made up)."""
        mw = self.site.measured_import_mw()
        return [] if mw is None else [(self.site.signals.clock(), round(mw, 6))]

    def _planned_import(
        self,
        date_from: datetime | None = None,
        date_to: datetime | None = None,
        sampling_interval: timedelta | None = None,
    ) -> list[tuple[datetime, float]]:
        """The plan's import from the current slot to ``forecast_horizon_h`` ahead (openleadr
        asks for a window in the past; a forecast looks ahead, whatever it asks)."""
        del date_from, date_to, sampling_interval
        now = self.site.signals.clock()
        until = now + timedelta(hours=self.config.forecast_horizon_h)
        return [
            (s.start, round(s.grid_import_mw, 6)) for s in _slots(self.site.forecast(), now, until)
        ]

    def _heat_offered(
        self,
        date_from: datetime | None = None,
        date_to: datetime | None = None,
        sampling_interval: timedelta | None = None,
    ) -> list[tuple[datetime, float]]:
        """The heat offer (MW) per 5-minute slot, from the current slot to
        ``forecast_horizon_h`` ahead (a look ahead, whatever window openleadr asks)."""
        del date_from, date_to, sampling_interval
        return self._heat_offer_values()[0]

    def _supply_temperature(
        self,
        date_from: datetime | None = None,
        date_to: datetime | None = None,
        sampling_interval: timedelta | None = None,
    ) -> list[tuple[datetime, float]]:
        """The supply temperature (°C) of each slot of the heat offer."""
        del date_from, date_to, sampling_interval
        return self._heat_offer_values()[1]

    def _heat_offer_values(
        self,
    ) -> tuple[list[tuple[datetime, float]], list[tuple[datetime, float]]]:
        """Both series of the offer now; none when it cannot be worked out (logged)."""
        if self.site.heat_offer is None:
            return [], []
        try:
            offer = self.site.heat_offer()
        except ValueError as exc:  # [heat] and a request's supply are validated: not expected
            log.error("openadr2b_heat_offer_failed", error=str(exc))
            return [], []
        until = self.site.signals.clock() + timedelta(hours=self.config.forecast_horizon_h)
        return heat_offer_values(offer, until)

    # ---- events ------------------------------------------------------------------------------

    async def _on_event(self, event: Any) -> Outcome:
        """openleadr's ``on_event`` and ``on_update_event``: the opt answer, after the journal
        has kept what it means. Never raises: openleadr would opt out of every other event of
        the same message too."""
        self.events_received_total += 1
        try:
            return await self._handle(event)
        except Exception:  # the boundary to openleadr: logged, counted, refused
            self.events_refused_total += 1
            log.exception("openadr2b_event_failed", event_id=_event_id_of(event))
            return OPT_OUT

    async def _handle(self, event: Any) -> Outcome:
        received = self._received_at
        now = self.site.signals.clock()
        try:
            version = map_event(
                event,
                now=now,
                ven_id=self.ven_id,
                simple_shed_mw=self.config.simple_shed_mw,
                capacity_mw=self.site.signals.settings.current.grid_import_limit_mw,
            )
        except SignalInvalidError as exc:
            await self._refuse(_event_id_of(event), _modification_of(event), exc.field, exc.message)
            return OPT_OUT
        if version.status == "cancelled":
            await self._withdraw(version.event_id)
            return OPT_IN
        if version.status == "completed":
            return OPT_IN
        if version.test:
            await self._audit(version, "accepted", "openadr2b test event", "not put in force")
            return OPT_IN
        return await self._take(version, now, received)

    async def _take(self, version: EventVersion, now: datetime, received: float | None) -> Outcome:
        """A valid event: in force and opted in, unless the policy opts out of it."""
        if version.requests and self._in_force(version):
            return OPT_IN  # sent again (a restarted VEN, a re-sync): already in force
        why = self._policy(version, now)
        if why is not None:
            await self._refuse(version.event_id, version.modification_number, "/", why)
            return OPT_OUT
        try:
            await self._put_in_force(version)
        except (PswdError, ValueError) as exc:  # SignalInvalidError is a ValueError
            await self._refuse(
                version.event_id, version.modification_number, "/", f"not kept: {exc}"
            )
            return OPT_OUT
        self.events_accepted_total += 1
        if received is not None:
            self.last_event_s = time.monotonic() - received
        log.warning(
            "openadr2b_event_accepted",
            event_id=version.event_id,
            modification=version.modification_number,
            signals=len(version.requests),
            signal_to_action_s=None if self.last_event_s is None else round(self.last_event_s, 4),
        )
        return OPT_IN

    def _policy(self, version: EventVersion, now: datetime) -> str | None:
        if self.config.opt == "out":
            return 'the site opts out of every event ([openadr2b] opt = "out")'
        if self.config.opt == "in":
            return None
        return infeasible(version.requests, self.site.forecast(), self.site.battery_power_mw, now)

    def _open(self, event_id: str) -> dict[str, GridSignal]:
        """The event's open signals by key (``openadr2b:<id>:<n>.<uid>`` exactly: an event id
        that starts like another's does not reach its signals)."""
        prefix = event_key(event_id)
        return {
            s.key: s
            for s in self.site.signals.open_signals()
            if s.key is not None
            and s.key.startswith(prefix)
            and LABEL.fullmatch(s.key[len(prefix) :])
        }

    def _in_force(self, version: EventVersion) -> bool:
        """Whether exactly this version's signals are open already (kept in the journal)."""
        open_now = self._open(version.event_id)
        wanted = {version.key(label): request for label, request in version.requests}
        return open_now.keys() == wanted.keys() and all(
            _same(open_now[k].signal, r) for k, r in wanted.items()
        )

    async def _put_in_force(self, version: EventVersion) -> None:
        """Each interval's signal (replacing the earlier version's of the same key in one
        transaction), then the earlier version's signals this one no longer has withdrawn."""
        before = self._open(version.event_id)
        keys = set()
        for label, request in version.requests:
            key = version.key(label)
            keys.add(key)
            old = before.get(key)
            if old is not None and _same(old.signal, request):
                continue
            await self.site.submit(request, SignalSource.OPENADR2B, self.who, key=key)
        for key in sorted(before.keys() - keys):
            await self.site.withdraw(key, self.who)

    async def _withdraw(self, event_id: str) -> None:
        gone: list[str] = []
        for key in sorted(self._open(event_id)):
            gone += await self.site.withdraw(key, self.who)
        log.warning("openadr2b_event_cancelled", event_id=event_id, withdrawn=gone)

    async def _refuse(self, event_id: str, modification: int | None, field: str, why: str) -> None:
        """Refused: logged, audited as refused, opted out; nothing in force changes."""
        self.events_refused_total += 1
        log.warning(
            "openadr2b_event_refused",
            event_id=event_id,
            modification=modification,
            field=field,
            why=why,
        )
        entry = AuditEntry(
            actor=self.who.name,
            role=self.who.role,
            action="openadr2b event refused",
            target=event_key(event_id).rstrip(":"),
            outcome="refused",
            detail={
                "source": SignalSource.OPENADR2B.value,
                "event_id": event_id,
                "modification_number": modification,
                "field": field,
                "why": why,
                "opt": OPT_OUT,
            },
            at=self.site.signals.clock(),
        )
        await self._journal(entry)

    async def _audit(
        self,
        version: EventVersion,
        outcome: Literal["accepted", "refused"],
        action: str,
        why: str,
    ) -> None:
        entry = AuditEntry(
            actor=self.who.name,
            role=self.who.role,
            action=action,
            target=event_key(version.event_id).rstrip(":"),
            outcome=outcome,
            detail={
                "source": SignalSource.OPENADR2B.value,
                "event_id": version.event_id,
                "modification_number": version.modification_number,
                "why": why,
            },
            at=self.site.signals.clock(),
        )
        await self._journal(entry)

    async def _journal(self, entry: AuditEntry) -> None:
        journal = self.site.signals.journal
        try:
            await journal.call(journal.sync.audit, entry)
        except PswdError as exc:  # the refusal stands; only its record is lost
            log.error("openadr2b_audit_failed", action=entry.action, error=str(exc))


def _same(kept: SignalRequest, request: SignalRequest) -> bool:
    """The request as kept (the service fills a shed's baseline) is the one asked again."""
    if isinstance(kept, Shed) and isinstance(request, Shed) and request.baseline_mw is None:
        kept = kept.model_copy(update={"baseline_mw": None})
    return kept == request
