"""Workloads: what an announcement may say, the lifecycle, and what an allocation holds.

Units follow the seed's example at the boundary: MW, MW/s, seconds, RFC 3339 times with a
timezone. Everything here is plain data and rules: no clock reads, no I/O.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "ACTIVE_STATES",
    "MAX_REASON_CHARS",
    "MOVABLE_STATES",
    "TERMINAL_STATES",
    "Action",
    "Allocation",
    "Announcement",
    "BatteryReservation",
    "BindingConstraint",
    "CoolingPreposition",
    "Explanation",
    "Flexibility",
    "GridRampStep",
    "IllegalTransitionError",
    "PowerProfile",
    "ProfilePoint",
    "RhythmEdge",
    "RhythmHint",
    "StateChange",
    "TimingConstraints",
    "Workload",
    "WorkloadState",
    "allowed_actions",
    "next_state",
]

MAX_POWER_MW = 10_000.0
MAX_DURATION_S = 30 * 86_400.0
MAX_SERIES_POINTS = 10_000
MAX_REASON_CHARS = 500
"""The longest reason a start, completion or cancellation may give (it is journalled)."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _fail(field: str, rule: str, message: str) -> PydanticCustomError:
    """A cross-field error that still names its field (``ctx.field``) for the problem body."""
    return PydanticCustomError(rule, message, {"field": field})


class ProfilePoint(_In):
    """One step of a detailed power profile: from ``offset_sec`` after the start, ``power_mw``."""

    offset_sec: Annotated[float, Field(ge=0.0, le=MAX_DURATION_S)]
    power_mw: Annotated[float, Field(ge=0.0, le=MAX_POWER_MW)]


class PowerProfile(_In):
    """How much power the workload draws and how fast it gets there."""

    peak_power_mw: Annotated[float, Field(gt=0.0, le=MAX_POWER_MW)]
    ramp_rate_mw_per_sec: Annotated[float, Field(gt=0.0, le=1_000_000.0)]
    duration_estimate_sec: Annotated[float, Field(gt=0.0, le=MAX_DURATION_S)]
    idle_power_mw: Annotated[float, Field(ge=0.0, le=MAX_POWER_MW)] = 0.0
    """Power drawn while allocated but not computing (before the start, during checkpoints)."""
    min_power_mw: Annotated[float, Field(ge=0.0, le=MAX_POWER_MW)] | None = None
    """The lowest level the job can be held at if the site asks it to ramp (a power floor)."""
    oscillation_period_sec: Annotated[float, Field(gt=0.0, le=3600.0)] | None = None
    """Period of the compute/communication rhythm of synchronous training."""
    oscillation_depth_mw: Annotated[float, Field(ge=0.0, le=MAX_POWER_MW)] | None = None
    """Peak-to-trough swing of that rhythm."""
    oscillation_duty: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    """Share of each period at the peak (computing; the rest communicating). With it the
    rhythm's mean is ``peak - depth x (1 - duty)``; without it the rhythm is taken as half and
    half. An iteration that computes for three quarters of its period is 0.75."""
    time_series: (
        Annotated[tuple[ProfilePoint, ...], Field(min_length=1, max_length=MAX_SERIES_POINTS)]
        | None
    ) = None
    """A step profile: each point holds until the next one (offsets strictly increasing)."""

    @model_validator(mode="after")
    def _consistent(self) -> PowerProfile:
        peak = self.peak_power_mw
        for name in ("idle_power_mw", "min_power_mw", "oscillation_depth_mw"):
            value = getattr(self, name)
            if value is not None and value > peak:
                raise _fail(name, "above_peak", f"{name} ({value} MW) exceeds peak_power_mw")
        if (self.oscillation_period_sec is None) != (self.oscillation_depth_mw is None):
            raise _fail(
                "oscillation_period_sec",
                "incomplete_oscillation",
                "oscillation_period_sec and oscillation_depth_mw go together: give both or none",
            )
        if self.oscillation_duty is not None and self.oscillation_depth_mw is None:
            raise _fail(
                "oscillation_duty",
                "incomplete_oscillation",
                "oscillation_duty describes a rhythm: give oscillation_period_sec and "
                "oscillation_depth_mw with it",
            )
        if self.ramp_duration_s > self.duration_estimate_sec:
            raise _fail(
                "ramp_rate_mw_per_sec",
                "ramp_longer_than_run",
                f"at {self.ramp_rate_mw_per_sec:g} MW/s the ramp from idle to peak takes "
                f"{self.ramp_duration_s:g} s, longer than duration_estimate_sec "
                f"({self.duration_estimate_sec:g} s)",
            )
        if self.time_series is not None:
            offsets = [p.offset_sec for p in self.time_series]
            if any(b <= a for a, b in pairwise(offsets)):
                raise _fail(
                    "time_series",
                    "offsets_not_increasing",
                    "time_series offsets must be strictly increasing",
                )
            if offsets[-1] >= self.duration_estimate_sec:
                raise _fail(
                    "time_series",
                    "offset_after_end",
                    "time_series offsets must lie before duration_estimate_sec",
                )
            top = max(p.power_mw for p in self.time_series)
            if top > peak:
                raise _fail(
                    "time_series",
                    "above_peak",
                    f"time_series reaches {top} MW, above peak_power_mw ({peak} MW)",
                )
        return self

    def mean_power_mw(self) -> float:
        """The energy-equivalent constant power over the run (what carbon and capacity use)."""
        if self.time_series:
            points = self.time_series
            ends = [p.offset_sec for p in points[1:]] + [self.duration_estimate_sec]
            first = points[0].offset_sec
            energy = first * self.idle_power_mw + sum(
                p.power_mw * (end - p.offset_sec) for p, end in zip(points, ends, strict=True)
            )
            return energy / self.duration_estimate_sec
        return self.level_mw()

    def level_mw(self) -> float:
        """The mean power while it computes: the peak, or the rhythm's mean (peak less the
        depth for the share of each period spent communicating; half of it without a duty)."""
        if self.oscillation_depth_mw is None:
            return self.peak_power_mw
        duty = 0.5 if self.oscillation_duty is None else self.oscillation_duty
        return self.peak_power_mw - self.oscillation_depth_mw * (1.0 - duty)

    @property
    def ramp_duration_s(self) -> float:
        """How long the workload's own edge from idle to peak lasts."""
        return (self.peak_power_mw - self.idle_power_mw) / self.ramp_rate_mw_per_sec


class TimingConstraints(_In):
    """The window the workload may run in."""

    earliest_start_time: AwareDatetime
    deadline: AwareDatetime
    """When the workload must have finished."""

    @model_validator(mode="after")
    def _ordered(self) -> TimingConstraints:
        if self.deadline <= self.earliest_start_time:
            raise _fail("deadline", "deadline_before_start", "must be after earliest_start_time")
        return self


class Flexibility(StrEnum):
    FLEXIBLE = "flexible"
    """The site may choose the start inside the window (carbon-aware placement)."""
    FIXED = "fixed"
    """The workload starts at its earliest start time or not at all."""


class Announcement(_In):
    """What a workload tells the site before it runs (the seed's example, plus optional detail)."""

    workload_type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    power_profile: PowerProfile
    timing_constraints: TimingConstraints
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    owner: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] | None = None
    """Who runs it; defaults to the caller's identity."""
    priority: Annotated[int, Field(ge=0, le=9)] = 5
    """0 lowest, 9 highest: higher priorities are placed first when capacity is short."""
    flexibility: Flexibility = Flexibility.FLEXIBLE

    @model_validator(mode="after")
    def _fits_window(self) -> Announcement:
        window_s = (
            self.timing_constraints.deadline - self.timing_constraints.earliest_start_time
        ).total_seconds()
        if self.power_profile.duration_estimate_sec > window_s:
            raise _fail(
                "power_profile.duration_estimate_sec",
                "longer_than_window",
                f"duration_estimate_sec ({self.power_profile.duration_estimate_sec:g} s) is "
                f"longer than the window from earliest_start_time to deadline ({window_s:g} s)",
            )
        return self

    @property
    def duration(self) -> timedelta:
        return timedelta(seconds=self.power_profile.duration_estimate_sec)

    @property
    def latest_start(self) -> datetime:
        return self.timing_constraints.deadline - self.duration

    @property
    def earliest_start(self) -> datetime:
        return self.timing_constraints.earliest_start_time


# ---- lifecycle -------------------------------------------------------------------------------


MAX_TOLD_EDGES = 16
"""The most edges one rhythm hint tells."""


class RhythmEdge(_In):
    """One edge of a running job's training rhythm, told ahead of it."""

    at: AwareDatetime
    """The middle of the edge: when the job's power is halfway between its levels."""
    direction: Literal["rise", "fall"]
    """``rise``: into a compute phase; ``fall``: into communication (the all-reduce)."""


class RhythmHint(_In):
    """``POST /v1/workloads/{id}/rhythm``: the next edges of a running job's training rhythm,
    as its framework knows them (e.g. when the backward pass will end); they replace those told
    before from the first of them on."""

    edges: list[RhythmEdge] = Field(min_length=1, max_length=MAX_TOLD_EDGES)


class WorkloadState(StrEnum):
    ANNOUNCED = "announced"
    SCHEDULED = "scheduled"
    PREPARING = "preparing"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    EXPIRED = "expired"


class Action(StrEnum):
    SCHEDULE = "schedule"
    """The site placed (or re-placed) the workload."""
    PREPARE = "prepare"
    """The start is near: the site prepares battery, cooling and grid ramp."""
    MAKE_READY = "make_ready"
    """The site is prepared."""
    START = "start"
    """The workload reports it started (accepted early too: it is a fact, not a request)."""
    COMPLETE = "complete"
    CANCEL = "cancel"
    FAIL = "fail"
    EXPIRE = "expire"
    """Its latest start passed without a start."""


S, A = WorkloadState, Action
_TABLE: dict[WorkloadState, dict[Action, WorkloadState]] = {
    S.ANNOUNCED: {A.SCHEDULE: S.SCHEDULED, A.CANCEL: S.CANCELLED, A.FAIL: S.FAILED},
    S.SCHEDULED: {
        A.SCHEDULE: S.SCHEDULED,
        A.PREPARE: S.PREPARING,
        A.START: S.RUNNING,
        A.CANCEL: S.CANCELLED,
        A.EXPIRE: S.EXPIRED,
    },
    S.PREPARING: {
        A.MAKE_READY: S.READY,
        A.START: S.RUNNING,
        A.CANCEL: S.CANCELLED,
        A.EXPIRE: S.EXPIRED,
    },
    S.READY: {A.START: S.RUNNING, A.CANCEL: S.CANCELLED, A.EXPIRE: S.EXPIRED},
    S.RUNNING: {A.COMPLETE: S.COMPLETED, A.FAIL: S.FAILED, A.CANCEL: S.CANCELLED},
    S.COMPLETED: {},
    S.CANCELLED: {},
    S.FAILED: {},
    S.EXPIRED: {},
}
del S, A

TERMINAL_STATES = frozenset(s for s, moves in _TABLE.items() if not moves)
ACTIVE_STATES = frozenset(WorkloadState) - TERMINAL_STATES
MOVABLE_STATES = frozenset({WorkloadState.ANNOUNCED, WorkloadState.SCHEDULED})
"""States whose start the scheduler may still move; later states are held where they are."""


class IllegalTransitionError(ValueError):
    """``action`` is not allowed in ``state``."""

    def __init__(self, state: WorkloadState, action: Action) -> None:
        self.state = state
        self.action = action
        allowed = ", ".join(a.value for a in allowed_actions(state)) or "none (final state)"
        super().__init__(
            f"cannot {action.value} a workload that is {state.value}; allowed: {allowed}"
        )


def allowed_actions(state: WorkloadState) -> tuple[Action, ...]:
    return tuple(_TABLE[state])


def next_state(state: WorkloadState, action: Action) -> WorkloadState:
    """The state after ``action``; raises :class:`IllegalTransitionError` when not allowed."""
    try:
        return _TABLE[state][action]
    except KeyError:
        raise IllegalTransitionError(state, action) from None


class StateChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: WorkloadState
    at: datetime
    action: Action | None = None
    reason: str | None = None


# ---- allocation ------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


BindingConstraint = Literal[
    "none",
    "earliest_start",
    "deadline",
    "fixed_start",
    "grid_import_limit",
    "demand_response",
    "cooling_capacity",
    "bess_energy",
    "bess_power",
]


class GridRampStep(_Out):
    """A corner of the planned grid draw for this workload (linear between corners)."""

    at: datetime
    grid_power_mw: float
    """This workload's share of the grid import at ``at``."""


class BatteryReservation(_Out):
    """Battery power and energy held for this workload, and when."""

    power_mw: float
    energy_mwh: float
    start: datetime
    end: datetime
    target_soc: float | None = None
    """State of charge to reach before ``start`` (None: whatever the site holds)."""


class CoolingPreposition(_Out):
    """Pre-cooling before the heat arrives."""

    start_at: datetime
    chw_supply_setpoint_c: float
    heat_load_mw: float


class Explanation(_Out):
    chosen_slot_start: datetime
    binding_constraint: BindingConstraint
    reason: str


class Allocation(_Out):
    """The site's answer to an announcement."""

    scheduled_start: datetime
    scheduled_end: datetime
    grid_ramp_plan: tuple[GridRampStep, ...]
    battery_reservation: BatteryReservation
    cooling_preposition: CoolingPreposition
    expected_carbon_kg: float
    """CO2e of the workload's energy at the chosen start, from the carbon forecast."""
    run_now_carbon_kg: float
    """The same for starting at the earliest start."""
    carbon_saved_kg: float
    expected_cost: float | None = None
    """Energy cost at the chosen start, when the forecast carries prices."""
    explanation: Explanation
    solver: str
    """``insert`` (exact placement of one workload among the others) or ``highs-milp``."""
    planned_at: datetime
    forecast_source: str


# ---- the record ------------------------------------------------------------------------------


class Workload(_Out):
    """A workload as the site knows it: what it announced, where it stands, what it got."""

    id: str
    owner: str
    state: WorkloadState
    announcement: Announcement
    allocation: Allocation | None = None
    created_at: datetime
    updated_at: datetime
    history: tuple[StateChange, ...] = ()
