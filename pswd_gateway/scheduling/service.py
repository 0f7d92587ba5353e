"""The workload service: announcements in, allocations out, every change journalled first.

One instance per gateway, shared by every northbound surface (HTTP, OPC UA). It keeps the
active workloads in memory (loaded from the journal at start), places each new announcement at
once (exact insertion among the others), re-optimises the whole plan with the MILP in a worker
thread when something changed, and moves workloads through their lifecycle on a timer.

Concurrency: the in-memory picture is changed synchronously (no ``await`` between the check and
the change), then committed; a failed commit reverts it. So two requests can never both take
the same capacity or both move the same workload.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pswd_gateway.config import GatewayConfig
from pswd_gateway.domain.identity import SYSTEM, Identity, Permission
from pswd_gateway.domain.workloads import (
    MOVABLE_STATES,
    TERMINAL_STATES,
    Action,
    Allocation,
    Announcement,
    Flexibility,
    IllegalTransitionError,
    PowerProfile,
    RhythmHint,
    StateChange,
    Workload,
    WorkloadState,
    next_state,
)
from pswd_gateway.errors import (
    DoesNotFitError,
    ForbiddenError,
    IdempotencyConflictError,
    NotFoundError,
    RhythmRefusedError,
)
from pswd_gateway.journal import (
    AsyncJournal,
    AuditEntry,
    EventRow,
    IdempotencyRecord,
    Transition,
)
from pswd_gateway.logging import get_logger
from pswd_gateway.scheduling.caps import Running, battery_sustains_mw, power_caps
from pswd_gateway.scheduling.model import CarbonForecast, PlacedJob, SiteForecast
from pswd_gateway.scheduling.scheduler import Scheduler
from pswd_gateway.tasks import cancel_and_wait

__all__ = ["EventHub", "GridLimit", "WorkloadService", "new_workload_id", "utcnow"]

log = get_logger("workloads")

LIFECYCLE_TICK_S = 1.0
RHYTHM_LATE_S = 1.0
"""A told edge may lie this far in the past (a hint delayed on its way): it is then ignored
by the loop, not refused."""
RHYTHM_AHEAD_PERIODS = 4
RHYTHM_AHEAD_MIN_S = 10.0
"""A told edge lies at most this many periods (and at least this long) ahead."""
EXPIRE_GRACE_S = 60.0
"""A workload that has not started this long after its latest start expires."""
SUBSCRIBER_QUEUE = 2048


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_workload_id() -> str:
    return "wl_" + secrets.token_hex(8)


class EventHub:
    """Fan-out of committed events to live subscribers (the SSE streams, OPC UA events).

    A subscriber that falls :data:`SUBSCRIBER_QUEUE` events behind is dropped; it resumes
    from the journal with the last id it saw.
    """

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[EventRow | None]] = set()
        self.last_id = 0

    def publish(self, events: Sequence[EventRow]) -> None:
        for event in events:
            self.last_id = max(self.last_id, event.id)
            for queue in list(self._queues):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._queues.discard(queue)
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                    queue.put_nowait(None)  # tells the reader it was dropped
                    log.warning("event_subscriber_dropped", reason="fell behind")

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[EventRow | None]]:
        queue: asyncio.Queue[EventRow | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._queues.clear()

    @property
    def subscribers(self) -> int:
        return len(self._queues)


@dataclass(frozen=True, slots=True)
class GridLimit:
    """A grid signal's import limit in force: what running flexible workloads are capped
    against (:mod:`pswd_gateway.scheduling.caps`)."""

    limit_mw: float
    signal_id: str | None
    until: datetime | None
    """The end of the signal's window; None: until withdrawn."""


@dataclass
class WorkloadService:
    """Announcements, lifecycle and re-planning over one journal."""

    config: GatewayConfig
    journal: AsyncJournal
    scheduler: Scheduler
    forecast: Callable[[], CarbonForecast]
    clock: Callable[[], datetime] = utcnow
    hub: EventHub = field(default_factory=EventHub)
    on_rhythm: Callable[[Sequence[tuple[float, bool]]], None] | None = None
    """Where a running job's told rhythm edges go (``(middle, rise)``, POSIX seconds): the
    control cycle's grid loop."""
    announcements_total: int = field(default=0, init=False)
    refusals_total: int = field(default=0, init=False)
    replans_total: int = field(default=0, init=False)
    last_replan: dict[str, Any] = field(default_factory=dict, init=False)
    _active: dict[str, Workload] = field(default_factory=dict, init=False)
    _placed: dict[str, PlacedJob] = field(default_factory=dict, init=False)
    _due: dict[str, tuple[tuple[WorkloadState, datetime], datetime]] = field(
        default_factory=dict, init=False
    )
    _inflight_keys: dict[tuple[str, str], str] = field(default_factory=dict, init=False)
    _version: int = field(default=0, init=False)
    _planned_version: int = field(default=0, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _load_step: tuple[float, float, bool] = field(default=(-1.0, 0.0, False), init=False)
    _grid_limit: GridLimit | None = field(default=None, init=False)
    _battery_mw: float = field(default=0.0, init=False)
    """What the battery sustains to the end of ``_grid_limit`` (MW)."""
    _told: set[str] = field(default_factory=set, init=False)
    """Workloads whose rhythm hints were audited (the first of each stream)."""
    _caps: dict[str, float] = field(default_factory=dict, init=False)
    """The power cap each running workload was last asked to hold (MW)."""
    name: str = field(default="workloads", init=False)

    # ---- lifecycle of the service ----

    async def load(self) -> None:
        """Read the active workloads and the event position from the journal."""
        active = await self.journal.call(self.journal.sync.active_workloads)
        self._active, self._placed, self._due = {}, {}, {}
        for w in active:
            self._track(w, w.id)
        self.hub.last_id = await self.journal.call(self.journal.sync.last_event_id)
        self._version += 1
        log.info("workloads_loaded", active=len(self._active), last_event_id=self.hub.last_id)

    async def start(self) -> None:
        await self.load()
        self._tasks = [
            asyncio.create_task(self._lifecycle_loop(), name="workload-lifecycle"),
            asyncio.create_task(self._replan_loop(), name="workload-replan"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        self.hub.close()

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks)

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        """The service's loops that have stopped."""
        return [t.get_name() for t in self._tasks if t.done()]

    def runs(self) -> list[tuple[float, float, PowerProfile]]:
        """(start, end, power profile) of every placed workload, POSIX seconds."""
        out = []
        for placed in self._placed.values():
            profile = placed.announcement.power_profile
            start = placed.start.timestamp()
            out.append((start, start + profile.duration_estimate_sec, profile))
        return out

    def load_step_within(self, now: float, lead_s: float) -> bool:
        """Whether a placed job starts or stops within ``lead_s`` of ``now`` (POSIX seconds;
        worked out at most once a second: the placed jobs may be thousands)."""
        cached_at, cached_lead, answer = self._load_step
        if 0.0 <= now - cached_at < 1.0 and cached_lead == lead_s:
            return answer
        answer = any(
            now <= start <= now + lead_s or now <= end <= now + lead_s
            for start, end, _ in self.runs()
        )
        self._load_step = (now, lead_s, answer)
        return answer

    @property
    def active(self) -> dict[str, Workload]:
        return dict(self._active)

    # ---- announcements ----

    async def announce(
        self,
        announcement: Announcement,
        who: Identity,
        *,
        idempotency_key: str | None = None,
        request_sha256: str = "",
    ) -> tuple[Workload, bool]:
        """Place and journal a new workload; ``(workload, replayed)``.

        Raises :class:`ForbiddenError`, :class:`IdempotencyConflictError`,
        :class:`DoesNotFitError` (each refusal is audited).
        """
        owner = announcement.owner or who.name
        if not who.can(Permission.ANNOUNCE) or (
            owner != who.name and not who.can(Permission.ACT_ANY)
        ):
            why = (
                f"cannot announce workloads: {who.why_not(Permission.ANNOUNCE)}"
                if not who.can(Permission.ANNOUNCE)
                else f"cannot announce on behalf of {owner!r} "
                f"({who.why_not(Permission.ACT_ANY)}); leave owner out or ask an operator"
            )
            await self._refuse(who, "workload.announce", None, why)
            raise ForbiddenError(why)
        slot = (who.name, idempotency_key) if idempotency_key else None
        if slot is not None:
            if slot in self._inflight_keys:
                raise IdempotencyConflictError(slot[1], "in_progress")
            self._inflight_keys[slot] = request_sha256
        try:
            if slot is not None:
                replay = await self._replay(slot, request_sha256)
                if replay is not None:
                    return replay, True
            return await self._place_and_commit(
                announcement, owner, who, slot, request_sha256
            ), False
        finally:
            if slot is not None:
                self._inflight_keys.pop(slot, None)

    async def _replay(self, slot: tuple[str, str], request_sha256: str) -> Workload | None:
        record = await self.journal.call(self.journal.sync.find_idempotency, *slot)
        if record is None:
            return None
        if record.request_sha256 != request_sha256:
            raise IdempotencyConflictError(slot[1], "mismatch")
        workload = await self.get(record.workload_id)
        log.info("announce_replayed", workload=record.workload_id, key=slot[1])
        return workload

    async def _place_and_commit(
        self,
        announcement: Announcement,
        owner: str,
        who: Identity,
        slot: tuple[str, str] | None,
        request_sha256: str,
    ) -> Workload:
        now = self.clock()
        workload_id = new_workload_id()
        try:
            allocation = self.scheduler.place(workload_id, announcement, None, self.forecast(), now)
        except DoesNotFitError as exc:
            await self._refuse(
                who,
                "workload.announce",
                None,
                exc.reason,
                binding_constraint=exc.binding_constraint,
            )
            raise
        history = (
            StateChange(state=WorkloadState.ANNOUNCED, at=now),
            StateChange(
                state=WorkloadState.SCHEDULED,
                at=now,
                action=Action.SCHEDULE,
                reason=allocation.explanation.reason,
            ),
        )
        workload = Workload(
            id=workload_id,
            owner=owner,
            state=WorkloadState.SCHEDULED,
            announcement=announcement,
            allocation=allocation,
            created_at=now,
            updated_at=now,
            history=history,
        )
        self._track(workload, workload_id)  # reserves its capacity before any await
        self._version += 1
        transitions = [
            Transition(workload_id, None, WorkloadState.ANNOUNCED, None, None, who.name, now),
            Transition(
                workload_id,
                WorkloadState.ANNOUNCED,
                WorkloadState.SCHEDULED,
                Action.SCHEDULE,
                allocation.explanation.reason,
                SYSTEM.name,
                now,
            ),
        ]
        events = [
            EventRow("workload.announced", workload_id, now, _dump(workload)),
            _state_event(
                workload_id,
                WorkloadState.ANNOUNCED,
                WorkloadState.SCHEDULED,
                now,
                Action.SCHEDULE,
                allocation,
            ),
        ]
        audit = AuditEntry(
            actor=who.name,
            role=who.role,
            action="workload.announce",
            target=workload_id,
            outcome="accepted",
            detail={"peak_power_mw": announcement.power_profile.peak_power_mw, **who.via},
            at=now,
        )
        record = IdempotencyRecord(who.name, slot[1], request_sha256, workload_id) if slot else None
        try:
            committed = await self.journal.call(
                self.journal.sync.insert_workload, workload, transitions, events, audit, record
            )
        except BaseException:
            self._track(None, workload_id)
            raise
        self.announcements_total += 1
        self.hub.publish(committed)
        log.info(
            "workload_scheduled",
            workload=workload_id,
            owner=owner,
            start=allocation.scheduled_start.isoformat(),
            carbon_saved_kg=round(allocation.carbon_saved_kg, 1),
            binding=allocation.explanation.binding_constraint,
        )
        return workload

    # ---- actions ----

    async def act(
        self, workload_id: str, action: Action, who: Identity, reason: str | None = None
    ) -> Workload:
        """Apply a lifecycle action; raises NotFound, Forbidden or IllegalTransition."""
        workload = await self._owned(
            workload_id, who, f"workload.{action.value}", f"{action.value} workloads", "change it"
        )
        try:
            return await self._transition(workload, action, who, reason)
        except IllegalTransitionError as exc:
            await self._refuse(who, f"workload.{action.value}", workload_id, str(exc))
            raise

    async def tell_rhythm(self, workload_id: str, hint: RhythmHint, who: Identity) -> int:
        """A running job tells its next rhythm edges; they go to the grid loop at once. Raises
        NotFound, Forbidden (owner rule, as for the lifecycle actions) or RhythmRefused; each
        refusal is audited. Accepted hints are not journalled (they are worth seconds: after a
        restart the edges have passed) and only the first of each workload is audited; the
        rest are counted (``pswd_control_rhythm_edges_told_total``). Returns the edges taken."""
        action = "workload.rhythm"
        workload = await self._owned(
            workload_id, who, action, "tell a workload's rhythm", "tell its rhythm"
        )
        try:
            edges = self._told_edges(workload, hint)
        except RhythmRefusedError as exc:
            await self._refuse(who, action, workload_id, str(exc), field=exc.field)
            raise
        if workload_id not in self._told:
            self._told.add(workload_id)
            await self.journal.call(
                self.journal.sync.audit,
                AuditEntry(
                    actor=who.name,
                    role=who.role,
                    action=action,
                    target=workload_id,
                    outcome="accepted",
                    detail={"edges": len(edges), "note": "first rhythm hint; later ones are "
                            "counted, not audited", **who.via},
                    at=self.clock(),
                ),
            )  # fmt: skip
        if self.on_rhythm is not None:
            self.on_rhythm(edges)
        return len(edges)

    def _told_edges(self, workload: Workload, hint: RhythmHint) -> list[tuple[float, bool]]:
        """The hint's edges as ``(middle, rise)`` (POSIX seconds), or why not."""
        if workload.state is not WorkloadState.RUNNING:
            raise RhythmRefusedError(
                "not-running",
                f"workload {workload.id} is {workload.state.value}: only a running job's "
                "rhythm is followed (report its start first)",
            )
        period = workload.announcement.power_profile.oscillation_period_sec
        if period is None:
            raise RhythmRefusedError(
                "no-rhythm",
                f"workload {workload.id} announced no training rhythm "
                "(power_profile.oscillation_period_sec)",
            )
        now = self.clock().timestamp()
        ahead = max(RHYTHM_AHEAD_PERIODS * period, RHYTHM_AHEAD_MIN_S)
        out = []
        for i, edge in enumerate(hint.edges):
            at = edge.at.timestamp()
            if not now - RHYTHM_LATE_S <= at <= now + ahead:
                raise RhythmRefusedError(
                    "out-of-window",
                    f"edges[{i}].at {edge.at.isoformat()} is {at - now:+.3f} s from now: an "
                    f"edge is told at most {RHYTHM_LATE_S:g} s late and {ahead:g} s ahead",
                    field=f"#/edges/{i}/at",
                )
            out.append((at, edge.direction == "rise"))
        return out

    async def _owned(
        self, workload_id: str, who: Identity, action: str, doing: str, changing: str
    ) -> Workload:
        """The workload, if ``who`` may act on it (its owner, or an operator); otherwise the
        refusal is audited under ``action`` and raised as Forbidden ("cannot ``doing``: …",
        "only its owner or an operator may ``changing``")."""
        workload = self._active.get(workload_id) or await self.get(workload_id)
        own = workload.owner == who.name and who.can(Permission.ACT_OWN)
        if not (own or who.can(Permission.ACT_ANY)):
            why = (
                f"cannot {doing}: {who.why_not(Permission.ACT_OWN)}"
                if not who.can(Permission.ACT_OWN)
                else f"workload {workload_id} belongs to {workload.owner!r}; only its owner "
                f"or an operator may {changing}"
            )
            await self._refuse(who, action, workload_id, why)
            raise ForbiddenError(why)
        return workload

    async def _transition(
        self,
        workload: Workload,
        action: Action,
        who: Identity,
        reason: str | None,
        allocation: Allocation | None = None,
    ) -> Workload:
        current = self._active.get(workload.id, workload)
        new_state = next_state(current.state, action)
        now = self.clock()
        new_allocation = allocation or current.allocation
        updated = current.model_copy(
            update={
                "state": new_state,
                "allocation": new_allocation,
                "updated_at": now,
                "history": (
                    *current.history,
                    StateChange(state=new_state, at=now, action=action, reason=reason),
                ),
            }
        )
        previous = self._active.get(workload.id)
        self._track(updated, workload.id)
        self._version += 1
        events = [_state_event(workload.id, current.state, new_state, now, action, None, reason)]
        if allocation is not None and allocation != current.allocation:
            events.append(
                EventRow(
                    "workload.allocation_changed",
                    workload.id,
                    now,
                    {"allocation": allocation.model_dump(mode="json")},
                )
            )
        audit = AuditEntry(
            actor=who.name,
            role=who.role,
            action=f"workload.{action.value}",
            target=workload.id,
            outcome="accepted",
            detail={
                "from": current.state.value,
                "to": new_state.value,
                "reason": reason,
                **who.via,
            },
            at=now,
        )
        transition = Transition(
            workload.id, current.state, new_state, action, reason, who.name, now
        )
        try:
            committed = await self.journal.call(
                self.journal.sync.update_workload,
                workload.id,
                new_state,
                new_allocation,
                now,
                [transition],
                events,
                audit,
            )
        except BaseException:
            self._track(previous, workload.id)
            raise
        self.hub.publish(committed)
        log.info(
            "workload_transition",
            workload=workload.id,
            action=action.value,
            state_from=current.state.value,
            state_to=new_state.value,
            actor=who.name,
        )
        return updated

    # ---- reads ----

    async def get(self, workload_id: str) -> Workload:
        workload = await self.journal.call(self.journal.sync.get_workload, workload_id)
        if workload is None:
            raise NotFoundError(f"workload {workload_id!r}")
        return workload

    def placed(self) -> list[PlacedJob]:
        """Every active workload with an allocation, as the scheduler sees it."""
        return list(self._placed.values())

    def _track(self, workload: Workload | None, workload_id: str) -> None:
        """Keep ``_active`` and the scheduler's view of it in step (one place for both)."""
        alloc = workload.allocation if workload is not None else None
        if workload is None or workload.state in TERMINAL_STATES or alloc is None:
            if workload is not None and workload.state not in TERMINAL_STATES:
                self._active[workload_id] = workload
            else:
                self._active.pop(workload_id, None)
                self._due.pop(workload_id, None)
            if self._placed.pop(workload_id, None) is not None:
                self.scheduler.release(workload_id)
            return
        self._active[workload_id] = workload
        held = self._placed.get(workload_id)
        if held is None or held.start != alloc.scheduled_start:
            job = PlacedJob(workload_id, workload.announcement, alloc.scheduled_start)
            self._placed[workload_id] = job
            self.scheduler.hold(job)

    async def site_notice(self, kind: str, data: dict[str, Any]) -> None:
        """Journal and publish an event that concerns every workload (e.g. a power request)."""
        events = await self.journal.call(
            self.journal.sync.append_events, [EventRow(kind, None, self.clock(), data)]
        )
        self.hub.publish(events)

    def site_forecast(self) -> SiteForecast:
        return self.scheduler.site_forecast(None, self.forecast(), self.clock())

    # ---- power caps while a grid limit binds ----

    @property
    def caps(self) -> dict[str, float]:
        """The power cap (MW) each running workload is asked to hold now."""
        return dict(self._caps)

    async def follow_grid_limit(self, limit: GridLimit | None) -> None:
        """A grid signal's import limit came into force, changed or ended: the flexible
        workloads that run are asked to cap their power where the battery cannot hold the
        limit to its end, and the movable ones are placed again."""
        if limit != self._grid_limit:
            self._grid_limit = limit
            self._battery_mw = self._battery_sustains(limit)
            self.mark_dirty()
        await self.update_caps()

    def _battery_sustains(self, limit: GridLimit | None) -> float:
        """What the battery holds from now to the limit's end (MW), worked out once when the
        limit comes into force (so caps change when workloads do, not as the window runs)."""
        sched = self.config.scheduling
        if limit is None or not self.config.site.bess:
            return 0.0
        remaining = None if limit.until is None else (limit.until - self.clock()).total_seconds()
        return battery_sustains_mw(sched.bess_power_mw, sched.bess_usable_energy_mwh, remaining)

    async def update_caps(self) -> None:
        """Ask each running workload for its cap (a ``power_cap`` event on its stream) when
        it changed; a cap no longer needed is lifted (``cap_mw`` null)."""
        now, limit = self.clock(), self._grid_limit
        running = [w for w in self._active.values() if w.state is WorkloadState.RUNNING]
        caps: dict[str, float] = {}
        if limit is not None:
            caps = power_caps(
                [
                    Running(
                        w.id,
                        w.announcement.power_profile.mean_power_mw(),
                        w.announcement.flexibility is Flexibility.FLEXIBLE,
                    )
                    for w in running
                ],
                self.config.scheduling.base_load_mw,
                limit.limit_mw,
                self._battery_mw,
            )
        events = []
        for w in running:
            cap, asked = caps.get(w.id), self._caps.get(w.id)
            if cap == asked:
                continue
            data: dict[str, Any] = {
                "cap_mw": cap,
                "mean_power_mw": round(w.announcement.power_profile.mean_power_mw(), 6),
            }
            if cap is not None and limit is not None:
                data |= {
                    "import_limit_mw": limit.limit_mw,
                    "signal_id": limit.signal_id,
                    "until": None if limit.until is None else limit.until.isoformat(),
                    "reason": "a grid import limit the battery cannot hold to its end: hold "
                    f"{cap:g} MW until it ends",
                }
            else:
                data["reason"] = "the grid limit no longer needs a cap"
            events.append(EventRow("power_cap", w.id, now, data))
        if events:  # kept only once committed: a failed commit asks again at the next tick
            committed = await self.journal.call(self.journal.sync.append_events, events)
            self.hub.publish(committed)
            log.warning(
                "power_caps",
                caps={e.workload_id: e.data["cap_mw"] for e in events},
                limit_mw=None if limit is None else limit.limit_mw,
            )
        self._caps = caps

    # ---- timers ----

    async def tick(self) -> None:
        """Move workloads whose time has come: prepare, ready, expire; caps follow the
        workloads that start or stop running under a grid limit."""
        if self._grid_limit is not None or self._caps:
            await self.update_caps()
        now = self.clock()
        sched = self.config.scheduling
        for workload in list(self._active.values()):
            if workload.allocation is None:
                continue
            start = workload.allocation.scheduled_start
            key = (workload.state, start)
            cached = self._due.get(workload.id)
            if cached is not None and cached[0] == key and now < cached[1]:
                continue  # nothing is due yet: skip the arithmetic below
            self._due[workload.id] = (key, self._next_due(workload, start))
            action: Action | None = None
            reason = None
            late = now - workload.announcement.latest_start
            if workload.state in {
                WorkloadState.SCHEDULED,
                WorkloadState.PREPARING,
                WorkloadState.READY,
            } and late > timedelta(seconds=EXPIRE_GRACE_S):
                action, reason = Action.EXPIRE, "latest start passed without a start"
            elif workload.state is WorkloadState.SCHEDULED and now >= start - timedelta(
                seconds=sched.prepare_lead_s
            ):
                action = Action.PREPARE
                reason = "start is near: preparing battery, cooling, grid ramp"
            elif workload.state is WorkloadState.PREPARING and now >= start - timedelta(
                seconds=sched.ready_lead_s
            ):
                action, reason = Action.MAKE_READY, "site prepared"
            if action is not None:
                await self._transition(workload, action, SYSTEM, reason)

    def _next_due(self, workload: Workload, start: datetime) -> datetime:
        """The earliest time ``tick`` could act on this workload in its present state."""
        sched = self.config.scheduling
        waiting = {WorkloadState.SCHEDULED, WorkloadState.PREPARING, WorkloadState.READY}
        if workload.state not in waiting:
            return datetime.max.replace(tzinfo=UTC)
        due = workload.announcement.latest_start + timedelta(seconds=EXPIRE_GRACE_S)
        if workload.state is WorkloadState.SCHEDULED:
            due = min(due, start - timedelta(seconds=sched.prepare_lead_s))
        elif workload.state is WorkloadState.PREPARING:
            due = min(due, start - timedelta(seconds=sched.ready_lead_s))
        return due

    async def replan(self, time_limit_s: float | None = None) -> int:
        """Re-optimise every movable workload; returns how many allocations changed."""
        version = self._version
        movable = [
            w
            for w in self._active.values()
            if w.state in MOVABLE_STATES
            and w.announcement.flexibility is Flexibility.FLEXIBLE
            and w.allocation is not None
        ]
        if not movable:
            self._planned_version = version
            return 0
        ids = {w.id for w in movable}
        fixed = [p for p in self.placed() if p.id not in ids]
        current = {w.id: w.allocation.scheduled_start for w in movable if w.allocation}
        forecast, now = self.forecast(), self.clock()
        result = await asyncio.to_thread(
            self.scheduler.optimise,
            [(w.id, w.announcement) for w in movable],
            fixed,
            forecast,
            now,
            current=current,
            time_limit_s=time_limit_s or self.config.scheduling.solver_time_limit_s,
        )
        self.replans_total += 1
        self.last_replan = {
            "status": result.status,
            "solve_s": result.solve_s,
            "objective_kg": result.objective_kg,
            "workloads": len(movable),
        }
        if self._version != version:
            log.info("replan_discarded", reason="workloads changed while solving")
            return 0
        changed = 0
        for workload_id, allocation in result.allocations.items():
            workload = self._active.get(workload_id)
            if workload is None or workload.state not in MOVABLE_STATES:
                continue
            old = workload.allocation
            if old is not None and old.scheduled_start == allocation.scheduled_start:
                continue
            await self._transition(
                workload, Action.SCHEDULE, SYSTEM, allocation.explanation.reason, allocation
            )
            changed += 1
        self._planned_version = self._version
        log.info(
            "replanned",
            status=result.status,
            solve_s=round(result.solve_s, 3),
            workloads=len(movable),
            moved=changed,
        )
        return changed

    def mark_dirty(self) -> None:
        """Something outside the service changed (a new forecast): re-plan at the next chance."""
        self._version += 1

    async def _lifecycle_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle_tick_failed")
            await asyncio.sleep(LIFECYCLE_TICK_S)

    async def _replan_loop(self) -> None:
        interval = self.config.scheduling.replan_interval_s
        while True:
            await asyncio.sleep(interval)
            if self._version == self._planned_version:
                continue
            try:
                await self.replan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replan_failed")

    # ---- audit ----

    async def _refuse(
        self, who: Identity, action: str, target: str | None, why: str, **detail: Any
    ) -> None:
        self.refusals_total += 1
        entry = AuditEntry(
            actor=who.name,
            role=who.role,
            action=action,
            target=target,
            outcome="refused",
            detail={"reason": why, **who.via, **detail},
            at=self.clock(),
        )
        await self.journal.call(self.journal.sync.audit, entry)
        log.info("request_refused", actor=who.name, action=action, target=target, reason=why)

    async def audit_refusal(self, who: Identity | None, action: str, why: str) -> None:
        """Audit a refusal decided outside the service (authentication, validation)."""
        await self._refuse(who or Identity("anonymous", "none"), action, None, why)


def _dump(workload: Workload) -> dict[str, Any]:
    return workload.model_dump(mode="json", exclude={"history"})


def _state_event(
    workload_id: str,
    old: WorkloadState | None,
    new: WorkloadState,
    at: datetime,
    action: Action | None,
    allocation: Allocation | None,
    reason: str | None = None,
) -> EventRow:
    data: dict[str, Any] = {
        "from": old.value if old else None,
        "to": new.value,
        "action": action.value if action else None,
        "reason": reason,
    }
    if allocation is not None:
        data["scheduled_start"] = allocation.scheduled_start.isoformat()
    return EventRow("workload.state_changed", workload_id, at, data)
