"""Grid signals: what the grid side asks of the site, as one typed object whatever the door.

An import limit for a window, a shed of N MW below the planned import, fast frequency response
on or off with its curve, a price or carbon level, a heat request: each arrives as a
:class:`SignalRequest` (the HTTP body, an OPC UA call, an IEC 61850 operate, an OpenADR event)
and is kept as a :class:`GridSignal` (who sent it, through which door, when). Pure: no I/O, no
clock; the time is passed in.

:func:`resolve` turns the signals in force at an instant into the :class:`Effective`
constraints; its docstring is the one statement of how overlapping or contradictory signals are
settled (docs/grid.md repeats it for utility engineers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_MW",
    "CarbonLevel",
    "DeadbandHz",
    "DroopPct",
    "Effective",
    "FastFrequencyResponse",
    "GridSignal",
    "HeatRequest",
    "ImportLimit",
    "PositiveMw",
    "PriceLevel",
    "Shed",
    "SignalInvalidError",
    "SignalKind",
    "SignalRequest",
    "SignalSource",
    "accept",
    "active_at",
    "boundaries",
    "resolve",
    "superseded",
]

_T = TypeVar("_T", bound=BaseModel)

MAX_MW = 10_000.0
"""No power in a grid signal exceeds this (as the site's limits in the configuration)."""


class SignalKind(StrEnum):
    IMPORT_LIMIT = "import_limit"
    SHED = "shed"
    FFR = "ffr"
    PRICE = "price"
    CARBON = "carbon"
    HEAT_REQUEST = "heat_request"


class SignalSource(StrEnum):
    """The door a signal came through."""

    HTTP = "http"
    OPCUA = "opcua"
    IEC61850 = "iec61850"
    OPENADR2B = "openadr2b"
    OPENADR3 = "openadr3"
    CONFIG = "config"


class SignalInvalidError(ValueError):
    """A signal that cannot be accepted: ``field`` (a JSON pointer into the request) and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


Mw = Annotated[float, Field(ge=0, le=MAX_MW, allow_inf_nan=False)]
PositiveMw = Annotated[float, Field(gt=0, le=MAX_MW, allow_inf_nan=False)]
DeadbandHz = Annotated[float, Field(ge=0, le=0.5, allow_inf_nan=False)]
"""A fast frequency response's deadband around the nominal frequency."""
DroopPct = Annotated[float, Field(gt=0, le=20, allow_inf_nan=False)]
"""A fast frequency response's droop: the frequency deviation, in % of nominal, that gives the
whole ``max_mw``."""


class _Windowed(BaseModel):
    """Every signal has a window: ``start`` (absent: from its reception) and ``end`` (absent:
    until withdrawn). Times carry a timezone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: AwareDatetime | None = None
    end: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> _Windowed:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ImportLimit(_Windowed):
    """The site imports at most ``import_limit_mw`` during the window."""

    kind: Literal["import_limit"] = "import_limit"
    import_limit_mw: Mw


class Shed(_Windowed):
    """The site imports ``shed_mw`` less than planned during the window. ``baseline_mw`` is the
    planned import the shed counts from; absent, the gateway takes its own plan for the window
    when it accepts the signal, and keeps that figure with the signal."""

    kind: Literal["shed"] = "shed"
    shed_mw: PositiveMw
    baseline_mw: Mw | None = None


class FastFrequencyResponse(_Windowed):
    """Fast frequency response on or off, with its curve: outside ``±deadband_hz`` around the
    nominal frequency, ``max_mw`` per ``droop_pct`` % of frequency deviation, at most
    ``max_mw``, changing at most ``ramp_mw_per_s``."""

    kind: Literal["ffr"] = "ffr"
    enabled: bool
    deadband_hz: DeadbandHz = 0.015
    droop_pct: DroopPct = 4.0
    max_mw: Mw = 0.0
    ramp_mw_per_s: PositiveMw = 10.0

    @model_validator(mode="after")
    def _sized(self) -> FastFrequencyResponse:
        if self.enabled and self.max_mw <= 0:
            raise ValueError("an enabled response needs max_mw > 0")
        return self


class PriceLevel(_Windowed):
    """The energy price during the window (a tariff value, or an OpenADR price level)."""

    kind: Literal["price"] = "price"
    value: Annotated[float, Field(ge=-100_000, le=100_000, allow_inf_nan=False)]
    unit: Literal["EUR/MWh", "USD/MWh", "GBP/MWh", "level"]


class CarbonLevel(_Windowed):
    """The grid's carbon intensity during the window (or an OpenADR GHG level)."""

    kind: Literal["carbon"] = "carbon"
    value: Annotated[float, Field(ge=0, le=5_000, allow_inf_nan=False)]
    unit: Literal["gCO2/kWh", "level"]


class HeatRequest(_Windowed):
    """The district-heating network asks for ``heat_mw`` at ``supply_temp_c`` (70-90 °C)."""

    kind: Literal["heat_request"] = "heat_request"
    heat_mw: PositiveMw
    supply_temp_c: Annotated[float, Field(ge=70, le=90, allow_inf_nan=False)]


SignalRequest = Annotated[
    ImportLimit | Shed | FastFrequencyResponse | PriceLevel | CarbonLevel | HeatRequest,
    Field(discriminator="kind"),
]
"""What a door submits: one of the kinds, chosen by ``kind``."""


class GridSignal(BaseModel):
    """A signal as accepted: the request, its window made explicit, and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: SignalSource
    issuer: str
    """Who sent it: a token name, an OPC UA or MMS user, a VEN's VTN."""
    received_at: AwareDatetime
    signal: SignalRequest
    key: str | None = None
    """A door's standing setting (``opcua:SetGridImportLimit``, ``iec61850:GAPC1.DRAct``): a
    new signal with the same key withdraws the earlier one."""
    withdrawn_at: AwareDatetime | None = None
    withdrawn_by: str | None = None

    @property
    def kind(self) -> SignalKind:
        return SignalKind(self.signal.kind)

    @property
    def start(self) -> datetime:
        return self.signal.start or self.received_at

    @property
    def end(self) -> datetime | None:
        return self.signal.end

    def in_force(self, at: datetime) -> bool:
        """Whether the signal binds at ``at``: inside its window and not withdrawn by then."""
        if self.withdrawn_at is not None and self.withdrawn_at <= at:
            return False
        return self.start <= at and (self.end is None or at < self.end)

    def open_at(self, at: datetime) -> bool:
        """Not withdrawn and its window not ended at ``at`` (in force now or later)."""
        return self.withdrawn_at is None and (self.end is None or at < self.end)


def accept(
    request: ImportLimit | Shed | FastFrequencyResponse | PriceLevel | CarbonLevel | HeatRequest,
    *,
    signal_id: str,
    source: SignalSource,
    issuer: str,
    received_at: datetime,
    key: str | None = None,
) -> GridSignal:
    """The signal as kept: its start made explicit (the reception when absent). A window that
    has already ended is refused (:class:`SignalInvalidError` names the field)."""
    if request.end is not None and request.end <= received_at:
        raise SignalInvalidError(
            "/end", f"the window ended at {request.end.isoformat()}, before the signal arrived"
        )
    if request.start is None:
        request = request.model_copy(update={"start": received_at})
    return GridSignal(
        id=signal_id,
        source=source,
        issuer=issuer,
        received_at=received_at,
        signal=request,
        key=key,
    )


def superseded(signals: Iterable[GridSignal], new: GridSignal) -> list[str]:
    """The ids ``new`` withdraws: open signals with the same standing-setting key."""
    if new.key is None:
        return []
    return [s.id for s in signals if s.key == new.key and s.id != new.id and s.withdrawn_at is None]


def active_at(signals: Iterable[GridSignal], at: datetime) -> list[GridSignal]:
    """The signals in force at ``at``, oldest reception first (ties by id)."""
    return sorted((s for s in signals if s.in_force(at)), key=lambda s: (s.received_at, s.id))


@dataclass(frozen=True, slots=True)
class Effective:
    """What the grid signals in force at one instant ask of the site."""

    import_limit_mw: float | None = None
    """The strictest import limit (limits and sheds together); None: no signal limits it."""
    import_limit_by: str | None = None
    """The id of the signal that sets it (the earliest received among equals)."""
    shed_mw: float = 0.0
    """The sheds in force, added."""
    ffr: FastFrequencyResponse | None = None
    ffr_by: str | None = None
    price: PriceLevel | None = None
    carbon: CarbonLevel | None = None
    heat_request: HeatRequest | None = None
    in_force: tuple[str, ...] = ()
    """Every signal in force, oldest reception first."""


def resolve(signals: Iterable[GridSignal], at: datetime) -> Effective:
    """The effective constraints of the signals in force at ``at``.

    The rules, whatever door a signal came through:

    1. **In force**: from its start (its reception when it gave none) until its end (none:
       until withdrawn), not after it was withdrawn. Others play no part.
    2. **Import limit: the strictest wins.** The effective import limit is the lowest of the
       ``import_limit`` signals in force and of the shed cap (3). A looser limit never raises
       it; the order of arrival never changes it. The signal named as binding is the earliest
       received among those at the lowest value.
    3. **Sheds add.** The sheds in force are summed; the shed cap is the lowest baseline of
       those sheds minus that sum, at least 0. A shed without a baseline adds to ``shed_mw``
       but caps nothing.
    4. **Fast frequency response: the latest replaces.** Of the ``ffr`` signals in force, the
       one received last is the one in force (``enabled: false`` switches it off).
    5. **Price, carbon, heat request: the latest replaces**, each kind on its own.
    6. "Latest" and "earliest" order by reception time, then by id, so that the answer does
       not depend on the order the signals are handed in.

    The site's own import limit (``[site] grid_import_limit_mw``) is applied on top of this
    by the site settings: a signal can lower the limit in force, never raise it above the
    site's.
    """
    active = active_at(signals, at)
    limit: float | None = None
    limit_by: str | None = None
    shed_total = 0.0
    baseline: float | None = None
    shed_by: str | None = None
    latest: dict[SignalKind, GridSignal] = {}
    for s in active:
        body = s.signal
        if isinstance(body, ImportLimit):
            if limit is None or body.import_limit_mw < limit:
                limit, limit_by = body.import_limit_mw, s.id
        elif isinstance(body, Shed):
            shed_total += body.shed_mw
            if body.baseline_mw is not None and (baseline is None or body.baseline_mw < baseline):
                baseline, shed_by = body.baseline_mw, s.id
        else:
            latest[s.kind] = s  # later receptions overwrite earlier ones
    if baseline is not None:
        cap = max(0.0, baseline - shed_total)
        if limit is None or cap < limit:
            limit, limit_by = cap, shed_by
    ffr = latest.get(SignalKind.FFR)
    return Effective(
        import_limit_mw=limit,
        import_limit_by=limit_by,
        shed_mw=shed_total,
        ffr=_body(ffr, FastFrequencyResponse),
        ffr_by=ffr.id if ffr is not None else None,
        price=_body(latest.get(SignalKind.PRICE), PriceLevel),
        carbon=_body(latest.get(SignalKind.CARBON), CarbonLevel),
        heat_request=_body(latest.get(SignalKind.HEAT_REQUEST), HeatRequest),
        in_force=tuple(s.id for s in active),
    )


def boundaries(signals: Iterable[GridSignal], after: datetime) -> list[datetime]:
    """The instants after ``after`` at which the signals in force change (a window starts or
    ends), earliest first: when :func:`resolve` must be asked again."""
    times = set()
    for s in signals:
        if s.withdrawn_at is not None:
            continue
        for t in (s.start, s.end):
            if t is not None and t > after:
                times.add(t)
    return sorted(times)


def _body(signal: GridSignal | None, kind: type[_T]) -> _T | None:
    if signal is None:
        return None
    body = signal.signal
    return body if isinstance(body, kind) else None
