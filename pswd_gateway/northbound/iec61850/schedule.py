"""The site's grid-import forecast as an IEC 61850 schedule (IEC 61850-7-4 Ed. 2.1 FSCH and FSCC,
the schedule model of IEC 61850-90-10).

The plan (``WorkloadService.site_forecast``: base load and announced workloads, with the battery
keeping the import under its limit) is served as one schedule of :data:`ENTRIES` intervals of
:data:`INTERVAL_S` from the 5-minute boundary at or before now: 48 h. Each entry is the planned
average grid import over its interval (:func:`resample`), served in MW like ``MMXU1.TotW``.

Pure: no libiec61850, no clock (time is passed in). :data:`OBJECTS` says what the two logical
nodes hold; ``model.py`` builds them, ``icd.py`` declares them, ``server.py`` writes the values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pswd_gateway.domain.units import from_mw
from pswd_gateway.scheduling.model import SiteForecast

__all__ = [
    "CONTROLLER_LN",
    "ENTRIES",
    "FORECAST_OF",
    "INTERVAL_S",
    "LD",
    "MULTIPLIER",
    "OBJECTS",
    "PRIORITY",
    "SCHEDULE_LN",
    "EnablingError",
    "ForecastSchedule",
    "ScheduleObject",
    "ScheduleState",
    "forecast_schedule",
    "resample",
    "value_name",
]

INTERVAL_S: Final = 300
"""SchdIntv: one entry per 5 minutes."""
ENTRIES: Final = 576
"""NumEntr: 48 h of 5-minute entries."""
LD: Final = "GRID"
"""The schedule forecasts the grid connection's import: it lives with ``MMXU1.TotW``."""
SCHEDULE_LN: Final = "FSCH1"
CONTROLLER_LN: Final = "FSCC1"
MULTIPLIER: Final = 6
"""Entries and ``ValMV`` are served in W x 10^6 (MW), as ``GRID/MMXU1.TotW``."""
PRIORITY: Final = 1
"""SchdPrio: the only schedule of its controller."""
FORECAST_OF: Final = "MMXU1.TotW"
"""What the schedule forecasts (FSCC1.CtlEnt), in the same LD."""


class ScheduleState:
    """IEC 61850-90-10 ScheduleStateKind (FSCH.SchdSt)."""

    NOT_READY: Final = 1
    START_TIME_REQUIRED: Final = 2
    READY: Final = 3
    RUNNING: Final = 4


class EnablingError:
    """IEC 61850-90-10 ScheduleEnablingErrorKind (FSCH.SchdEnaErr)."""

    NONE: Final = 1
    MISSING_VALID_VALUES: Final = 4


@dataclass(frozen=True, slots=True)
class ScheduleObject:
    """One data object of FSCH1 or FSCC1: its logical node, name, CDC and the DOType the ICD
    declares for it (its attributes)."""

    ln: str
    name: str
    cdc: str
    type_id: str
    description: str = ""


def value_name(entry: int) -> str:
    """The data object of entry ``entry`` (1-based): ``ValASG001`` … ``ValASG576``."""
    return f"ValASG{entry:03d}"


OBJECTS: Final[tuple[ScheduleObject, ...]] = (
    ScheduleObject(SCHEDULE_LN, "NamPlt", "LPL", "LPLRev_T",
                   "paramRev goes up by one with each new schedule"),
    ScheduleObject(SCHEDULE_LN, "SchdSt", "ENS", "ENS_T", "1 not ready, 4 running"),
    ScheduleObject(SCHEDULE_LN, "SchdEnaErr", "ENS", "ENS_T",
                   "1 none, 4 missing valid schedule values (no plan yet)"),
    ScheduleObject(SCHEDULE_LN, "SchdEntr", "INS", "INS_T", "the entry in force now (1-576)"),
    ScheduleObject(SCHEDULE_LN, "ActStrTm", "TSS", "TSS_T", "start of the schedule in force"),
    ScheduleObject(SCHEDULE_LN, "ValMV", "MV", "MV_T", "the entry in force now, MW"),
    ScheduleObject(SCHEDULE_LN, "SchdPrio", "ING", "ING_T"),
    ScheduleObject(SCHEDULE_LN, "NumEntr", "ING", "ING_T", "576"),
    ScheduleObject(SCHEDULE_LN, "SchdIntv", "ING", "INGUnit_T", "300 s"),
    *(
        ScheduleObject(SCHEDULE_LN, value_name(i), "ASG", "ASG_T",
                       "planned grid import of the entry, MW")
        for i in range(1, ENTRIES + 1)
    ),
    ScheduleObject(SCHEDULE_LN, "StrTm01", "TSG", "TSG_T", "start of entry 1"),
    ScheduleObject(SCHEDULE_LN, "EvTrg", "SPG", "SPG_T", "false: time-triggered"),
    ScheduleObject(SCHEDULE_LN, "SchdReuse", "SPG", "SPG_T", "false: not repeated"),
    ScheduleObject(CONTROLLER_LN, "ActSchdRef", "ORS", "ORS_T", "the schedule in force"),
    ScheduleObject(CONTROLLER_LN, "CtlEnt", "ORG", "ORG_T", "what the schedules forecast"),
    ScheduleObject(CONTROLLER_LN, "Schd01", "ORG", "ORG_T", "the controller's schedule"),
    ScheduleObject(CONTROLLER_LN, "ValMV", "MV", "MV_T", "the active schedule's value now, MW"),
)  # fmt: skip
"""Every data object of the two logical nodes (besides ``Beh``, which every LN has)."""


@dataclass(frozen=True, slots=True)
class ForecastSchedule:
    """The planned grid import (W) for each interval of ``interval_s`` from ``start_ts``."""

    start_ts: float
    """POSIX seconds, the start of entry 1 (StrTm01)."""
    interval_s: int
    values_w: tuple[float, ...]

    def entry(self, now: float) -> int:
        """The entry in force at ``now`` (1-based); 0 before the first or after the last."""
        index = math.floor((now - self.start_ts) / self.interval_s)
        return index + 1 if 0 <= index < len(self.values_w) else 0

    def value_w(self, entry: int) -> float | None:
        """The value of ``entry`` (1-based); None for 0 or beyond the last."""
        return self.values_w[entry - 1] if 1 <= entry <= len(self.values_w) else None


def resample(
    start_ts: float,
    slot_s: float,
    values: Sequence[float],
    now: float,
    *,
    interval_s: int = INTERVAL_S,
    entries: int = ENTRIES,
) -> ForecastSchedule:
    """The step series ``values`` (each held for ``slot_s`` from ``start_ts``) as ``entries``
    intervals of ``interval_s`` from the interval boundary at or before ``now`` (boundaries
    are multiples of ``interval_s`` since the epoch).

    Each entry is the series' average over its interval: the value of the slot that holds it
    when slots are whole multiples of the interval (the plan's 5, 10, 15 … minutes), their
    time-weighted mean when an interval spans several. Before ``start_ts`` the first value holds,
    beyond the series the last (the plan's last slot, continued), as the carbon forecast is
    resampled (``CarbonForecast.resampled``). ``values`` must not be empty.
    """
    if not values:
        raise ValueError("no values to resample")
    if slot_s <= 0 or interval_s <= 0:
        raise ValueError("slot and interval lengths must be positive")
    first = math.floor(now / interval_s) * interval_s
    last = len(values) - 1
    cumulative = [0.0]
    for value in values:
        cumulative.append(cumulative[-1] + value)

    def area(x: float) -> float:
        """Integral of the series from ``start_ts`` to slot position ``x`` (slot units)."""
        if x <= 0:
            return x * values[0]
        if x >= len(values):
            return cumulative[-1] + (x - len(values)) * values[-1]
        whole = math.floor(x)
        return cumulative[whole] + (x - whole) * values[whole]

    out = []
    for i in range(entries):
        x0 = (first + i * interval_s - start_ts) / slot_s
        x1 = x0 + interval_s / slot_s
        k0, k1 = min(max(math.floor(x0), 0), last), min(max(math.ceil(x1) - 1, 0), last)
        if k0 == k1:  # within one slot (or beyond an edge): its value, exactly
            out.append(float(values[k0]))
        else:
            out.append((area(x1) - area(x0)) / (x1 - x0))
    return ForecastSchedule(float(first), interval_s, tuple(out))


def forecast_schedule(plan: SiteForecast, now: float) -> ForecastSchedule | None:
    """The plan's grid import (MW per slot) as the served schedule (W); None for an empty
    plan (FSCH1 then stays not ready)."""
    if not plan.slots:
        return None
    return resample(
        plan.start.timestamp(), plan.slot_s, [from_mw(s.grid_import_mw) for s in plan.slots], now
    )
