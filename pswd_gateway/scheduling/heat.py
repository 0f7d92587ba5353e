"""The municipal heat offer: heat at the network's supply temperature, 48 h in 5-minute slots.

Pure functions of the plan's site load and ``[heat]``; time is passed in.

The model (docs/grid.md, "Municipal heat"). All electrical power the site draws ends up as
heat; ``recovery_fraction`` of it reaches the heat pump's evaporator as warm water at
``source_temp_c``. The heat pump lifts it to the supply temperature ``T_s`` with

    COP = carnot_efficiency · T_s / (T_s - T_source)          (temperatures in kelvin)

and delivers the heat it takes from the water plus its own drive power. Per slot the heat at
``T_s`` is the least of three limits:

- source: ``Q_src · COP / (COP - 1)`` with ``Q_src = recovery_fraction · site load``;
- compressors: ``heat_pump_power_mw · COP``;
- plant: ``capacity_mw``.

A higher supply temperature lowers the COP: the compressors deliver less heat and take less
from the data centre, but where the source binds, the heat pump adds more of its own drive
power, so the heat it delivers there rises (docs/grid.md works an example).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from pswd_gateway.config import HeatConfig
from pswd_gateway.domain.grid_signals import GridSignal, HeatRequest
from pswd_gateway.scheduling.model import SiteForecast

__all__ = [
    "OFFER_SLOTS",
    "OFFER_SLOT_S",
    "SUPPLY_RANGE_C",
    "HeatOffer",
    "HeatSlot",
    "Requested",
    "heat_at_supply_mw",
    "heat_offer",
    "heat_per_site_mwh",
    "heat_pump_cop",
    "offer_from_plan",
    "requested_of",
    "site_load_for_heat_mw",
]

OFFER_SLOT_S: Final = 300
"""Each slot of the offer lasts 5 minutes."""
OFFER_SLOTS: Final = 576
"""48 h of 5-minute slots."""
SUPPLY_RANGE_C: Final = (70.0, 90.0)
"""The supply temperatures the heat network may ask for."""
KELVIN: Final = 273.15


@dataclass(frozen=True, slots=True)
class HeatSlot:
    """Heat available at ``supply_c`` from ``start`` to ``end``."""

    start: datetime
    end: datetime
    heat_mw: float
    supply_c: float
    requested_mw: float = 0.0
    """Heat the network's request in force over the slot asks (0: none)."""


@dataclass(frozen=True, slots=True)
class Requested:
    """A heat request's window, supply temperature and heat (a grid signal's)."""

    start: datetime
    end: datetime | None
    supply_c: float
    heat_mw: float


@dataclass(frozen=True, slots=True)
class HeatOffer:
    """The offer: :data:`OFFER_SLOTS` slots from the 5-minute boundary at or before
    ``generated_at``."""

    generated_at: datetime
    supply_c: float
    cop: float
    """The heat pump's COP at ``supply_c``."""
    slot_s: int
    slots: tuple[HeatSlot, ...]


def heat_pump_cop(supply_c: float, source_c: float, carnot_efficiency: float) -> float:
    """The heat pump's COP lifting water from ``source_c`` to ``supply_c`` (°C)."""
    lift_k = supply_c - source_c
    if lift_k <= 0.0:
        msg = f"supply {supply_c} °C must be above the source {source_c} °C"
        raise ValueError(msg)
    return carnot_efficiency * (supply_c + KELVIN) / lift_k


def heat_at_supply_mw(site_load_mw: float, supply_c: float, heat: HeatConfig) -> float:
    """Heat (MW) the recovery plant delivers at ``supply_c`` with the site drawing
    ``site_load_mw``: the least of the source, compressor and plant limits."""
    _check_supply(supply_c)
    cop = heat_pump_cop(supply_c, heat.source_temp_c, heat.carnot_efficiency)
    source_mw = heat.recovery_fraction * max(site_load_mw, 0.0)
    from_source = source_mw * cop / (cop - 1.0)
    return max(0.0, min(from_source, heat.heat_pump_power_mw * cop, heat.capacity_mw))


def heat_per_site_mwh(supply_c: float, heat: HeatConfig) -> float:
    """Heat (MWh at ``supply_c``) each MWh the site draws gives the network while the source
    binds (below the compressor and plant limits): ``recovery_fraction · COP / (COP - 1)``."""
    _check_supply(supply_c)
    cop = heat_pump_cop(supply_c, heat.source_temp_c, heat.carnot_efficiency)
    return heat.recovery_fraction * cop / (cop - 1.0)


def site_load_for_heat_mw(heat_mw: float, supply_c: float, heat: HeatConfig) -> float:
    """The site load (MW) at which the recovery plant delivers ``heat_mw`` at ``supply_c``, or
    the most it can deliver there (the compressor and plant limits); ``inf`` when no heat is
    recovered at all (``recovery_fraction`` 0)."""
    per_mwh = heat_per_site_mwh(supply_c, heat)
    if per_mwh <= 0.0:
        return math.inf
    cop = heat_pump_cop(supply_c, heat.source_temp_c, heat.carnot_efficiency)
    reachable = min(heat_mw, heat.heat_pump_power_mw * cop, heat.capacity_mw)
    return max(reachable, 0.0) / per_mwh


def requested_of(signals: Iterable[GridSignal]) -> tuple[Requested, ...]:
    """The heat requests among grid signals (open ones, as the grid-signal service lists them),
    in the order given."""
    return tuple(
        Requested(s.start, s.end, s.signal.supply_temp_c, s.signal.heat_mw)
        for s in signals
        if isinstance(s.signal, HeatRequest)
    )


def heat_offer(
    now: datetime,
    plan_start: datetime,
    plan_slot_s: int,
    site_load_mw: Sequence[float],
    heat: HeatConfig,
    supply_c: float | None = None,
    requests: Sequence[Requested] = (),
) -> HeatOffer:
    """The offer from the site load planned in slots of ``plan_slot_s`` from ``plan_start``.

    Each offer slot takes the planned load at its start; before the plan its first slot
    holds, after it its last; no plan at all is no load. ``supply_c`` defaults to
    ``heat.supply_temp_c``. A slot that overlaps a heat request's window is offered at
    that request's supply temperature and carries the heat it asks (the last request given
    wins where windows overlap)."""
    if now.tzinfo is None or plan_start.tzinfo is None:
        raise ValueError("times must carry a timezone")
    if plan_slot_s <= 0:
        raise ValueError("plan_slot_s must be positive")
    supply = heat.supply_temp_c if supply_c is None else supply_c
    _check_supply(supply)
    cop = heat_pump_cop(supply, heat.source_temp_c, heat.carnot_efficiency)
    epoch = math.floor(now.timestamp())
    first = datetime.fromtimestamp(epoch - epoch % OFFER_SLOT_S, UTC)
    step = timedelta(seconds=OFFER_SLOT_S)
    last = len(site_load_mw) - 1
    slots = []
    for k in range(OFFER_SLOTS):
        start = first + k * step
        if last < 0:
            load = 0.0
        else:
            index = math.floor((start - plan_start).total_seconds() / plan_slot_s)
            load = site_load_mw[min(max(index, 0), last)]
        end = start + step
        asked = [r for r in requests if r.start < end and (r.end is None or start < r.end)]
        at, wanted = (asked[-1].supply_c, asked[-1].heat_mw) if asked else (supply, 0.0)
        slots.append(HeatSlot(start, end, heat_at_supply_mw(load, at, heat), at, wanted))
    return HeatOffer(now, supply, cop, OFFER_SLOT_S, tuple(slots))


def offer_from_plan(
    now: datetime,
    plan: SiteForecast,
    heat: HeatConfig,
    supply_c: float | None = None,
    requests: Sequence[Requested] = (),
) -> HeatOffer:
    """:func:`heat_offer` from the scheduler's site forecast (the plan's site load)."""
    loads = [s.site_load_mw for s in plan.slots]
    return heat_offer(now, plan.start, plan.slot_s, loads, heat, supply_c, requests)


def _check_supply(supply_c: float) -> None:
    low, high = SUPPLY_RANGE_C
    if not low <= supply_c <= high:
        msg = f"supply temperature {supply_c} °C is outside {low:g} to {high:g} °C"
        raise ValueError(msg)
