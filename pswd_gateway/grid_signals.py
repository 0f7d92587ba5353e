"""The grid-signal service: every door's grid signals through one place, journalled first.

HTTP (``/v1/grid/signals``), OPC UA (``SetGridImportLimit``) and IEC 61850 (``GAPC1.DRLimW`` with
``GAPC1.DRAct``; ``GAPC2.FFRAct`` with its curve) hand their requests to one
:class:`GridSignalService`. It checks the caller may operate, makes the
:class:`~pswd_gateway.domain.grid_signals.GridSignal`, journals it with its
audit line and its event in one transaction (nothing is acknowledged before that commit),
then resolves the signals in force (:func:`~pswd_gateway.domain.grid_signals.resolve`) and
hands the effective import limit to the site settings, the one owner the control cycle and the
scheduler read. At start the open signals are read back from the journal, so a window still
open after a crash is honoured again; a timer re-resolves at each window's start and end.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pswd_gateway.domain.delivery import (
    LIMIT_TOLERANCE_MW,
    DeliveryReport,
    DeliverySample,
    baseline_of,
    report,
)
from pswd_gateway.domain.grid_signals import (
    Effective,
    FastFrequencyResponse,
    GridSignal,
    HeatRequest,
    ImportLimit,
    Shed,
    SignalRequest,
    SignalSource,
    accept,
    active_at,
    boundaries,
    resolve,
    superseded,
)
from pswd_gateway.domain.identity import SYSTEM, Identity, Permission
from pswd_gateway.errors import ForbiddenError, NotFoundError, PswdError
from pswd_gateway.journal import AsyncJournal, AuditEntry, EventRow
from pswd_gateway.logging import get_logger
from pswd_gateway.site_settings import SiteSettings
from pswd_gateway.tasks import cancel_and_wait

__all__ = [
    "DR_KEY",
    "FFR_KEY",
    "FFR_SETTINGS",
    "OPCUA_IMPORT_KEY",
    "Delivery",
    "GridSignalService",
    "OperatorLimit",
    "delivery_json",
    "new_signal_id",
]

log = get_logger("grid_signals")

OPCUA_IMPORT_KEY: Final = "opcua:SetGridImportLimit"
"""The standing import limit set by OPC UA ``SetGridImportLimit``: a new call replaces it."""
DR_KEY: Final = "iec61850:GAPC1.DRAct"
"""The demand-response limit switched on by IEC 61850 ``GAPC1.DRAct`` (at ``GAPC1.DRLimW``)."""
DR_SETTINGS: Final = frozenset({"demand_response_limit_mw", "demand_response_active"})
FFR_KEY: Final = "iec61850:GAPC2.FFRAct"
"""The fast frequency response switched on by IEC 61850 ``GAPC2.FFRAct`` (with the curve of
``GAPC2.FFRMaxW``, ``FFRDbHz``, ``FFRDroop`` and ``FFRRmpW``)."""
FFR_SETTINGS: Final = {
    "ffr_max_mw": "max_mw",
    "ffr_deadband_hz": "deadband_hz",
    "ffr_droop_pct": "droop_pct",
    "ffr_ramp_mw_per_s": "ramp_mw_per_s",
    "ffr_active": "enabled",
}
"""The site settings of ``GAPC2`` → the :class:`FastFrequencyResponse` field each one is (the
switch last: it needs the maximum before it may go on)."""
MAX_SLEEP_S: Final = 3600.0
"""The boundary timer wakes at least this often (a clock step is caught within the hour)."""

OperatorLimit = Callable[[str, float | bool, Identity], Coroutine[Any, Any, None]]
"""What an OPC UA or IEC 61850 server calls with an operator's limit: (setting, value, who)."""
Publish = Callable[[Sequence[EventRow]], None]
PlannedImport = Callable[[datetime, datetime | None], float | None]
"""The planned grid import (MW) over a window, the highest of its slots; None without a plan."""
Measured = Callable[[], tuple[float | None, float | None]]
"""The grid import and the heat delivered to the heat network now (MW; None: no fresh reading)."""
HISTORY_S: Final = 120.0
"""Import measurements kept for baselines (:data:`~pswd_gateway.domain.delivery.BASELINE_S`)."""
DELIVERY_SAMPLES: Final = 86_400
"""Samples kept per signal (a day at one a second); older ones are dropped from the series."""
FINISHED_KEPT: Final = 100
"""Delivery reports of ended signals kept for ``GET /v1/grid/signals/{id}/delivery``."""


def new_signal_id() -> str:
    return "gs_" + secrets.token_hex(8)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Delivery:
    """One signal's delivery: its baseline and its samples while in force."""

    signal: GridSignal
    baseline_mw: float | None
    samples: deque[DeliverySample] = field(default_factory=lambda: deque(maxlen=DELIVERY_SAMPLES))
    ended: bool = False

    def report(self) -> DeliveryReport:
        return report(self.signal.id, self.signal.kind.value, self.baseline_mw, self.samples)


@dataclass
class GridSignalService:
    """Grid signals in, the effective constraints out; one per gateway."""

    journal: AsyncJournal
    settings: SiteSettings
    publish: Publish = lambda _events: None
    planned_import_mw: PlannedImport = lambda _start, _end: None
    clock: Callable[[], datetime] = utcnow
    measured: Measured = lambda: (None, None)
    on_effective: Callable[[Effective], None] = lambda _effective: None
    """Told what is in force after every change and at every window boundary (the control
    cycle's frequency response and heat setpoint follow it)."""
    sample_s: float = 0.25
    """How often delivery is measured while a limit, shed or heat request is in force."""
    hold_margin_mw: float = 0.0
    """How far under a binding import limit the control cycle holds the grid
    (``[control] import_hold_margin_mw``): an import that close to a limit is bound by it, and
    not taken into a later signal's baseline."""
    name: str = field(default="grid-signals", init=False)
    accepted_total: int = field(default=0, init=False)
    _signals: dict[str, GridSignal] = field(default_factory=dict, init=False)
    """Every signal not withdrawn whose window has not ended (and some that have, until the
    next pass of the timer)."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _sampler: asyncio.Task[None] | None = field(default=None, init=False)
    _history: deque[tuple[datetime, float, bool]] = field(default_factory=deque, init=False)
    """(when, grid import MW, whether no limit or shed bound the import then)."""
    _delivery: dict[str, Delivery] = field(default_factory=dict, init=False)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read back the open signals, put their limit in force, start the boundary timer."""
        now = self.clock()
        kept = await self.journal.call(self.journal.sync.open_grid_signals, now)
        self._signals = {s.id: s for s in kept}
        log.info("grid_signals_loaded", open=len(kept), ids=[s.id for s in kept])
        await self._restore_demand_response()
        await self._restore_ffr()
        await self._apply(SYSTEM)
        self._task = asyncio.create_task(self._run(), name="grid-signals")
        self._sampler = asyncio.create_task(self._sample_loop(), name="grid-signal-delivery")

    async def stop(self) -> None:
        for task in (self._task, self._sampler):
            if task is not None:
                await cancel_and_wait(task)
        self._task = self._sampler = None

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        tasks = (self._task, self._sampler)
        return ["grid-signals"] if any(t is not None and t.done() for t in tasks) else []

    # ---- what is in force --------------------------------------------------------------------

    def effective(self, at: datetime | None = None) -> Effective:
        """The effective constraints at ``at`` (now by default)."""
        return resolve(self._signals.values(), self.clock() if at is None else at)

    def delivery(self, signal_id: str) -> Delivery | None:
        """Requested against delivered of a limit, shed or heat request that has been in force
        (``None``: never in force since the start, or its report was dropped)."""
        return self._delivery.get(signal_id)

    def open_signals(self) -> list[GridSignal]:
        """Signals not withdrawn whose window has not ended, oldest reception first."""
        now = self.clock()
        return sorted(
            (s for s in self._signals.values() if s.open_at(now)),
            key=lambda s: (s.received_at, s.id),
        )

    # ---- changes -----------------------------------------------------------------------------

    async def submit(
        self,
        request: SignalRequest,
        source: SignalSource,
        who: Identity,
        *,
        key: str | None = None,
    ) -> GridSignal:
        """Accept a signal: checked, journalled and audited, then in force. Raises
        ``ForbiddenError`` (the caller may not operate), ``SignalInvalidError`` (a window that
        has ended), ``JournalError`` (not kept: not accepted)."""
        _check(who)
        async with self._lock:
            now = self.clock()
            if isinstance(request, Shed) and request.baseline_mw is None:
                planned = self.planned_import_mw(request.start or now, request.end)
                baseline = planned if planned is not None else self.settings.current.import_limit_mw
                request = request.model_copy(update={"baseline_mw": round(baseline, 6)})
            signal = accept(
                request,
                signal_id=new_signal_id(),
                source=source,
                issuer=who.name,
                received_at=now,
                key=key,
            )
            withdraws = superseded(self._signals.values(), signal)
            after = resolve([*self._others(withdraws), signal], now)
            audit = _audit(who, "grid signal accepted", signal, now, withdraws=withdraws)
            event = _event("grid_signal.accepted", signal, now, after, withdraws=withdraws)
            events = await self.journal.call(
                self.journal.sync.record_grid_signal, signal, withdraws, audit, [event]
            )
            for old in withdraws:
                self._withdrawn(old, now, who.name)
            self._signals[signal.id] = signal
            self.accepted_total += 1
            self.publish(events)
            log.warning(
                "grid_signal_accepted",
                id=signal.id,
                kind=signal.kind.value,
                source=source.value,
                by=who.name,
                withdraws=withdraws,
            )
            await self._apply(who)
            self._changed.set()
            return signal

    async def withdraw(self, signal_id: str, who: Identity) -> GridSignal:
        """Withdraw an open signal (audited); ``NotFoundError`` when none is open by that id."""
        _check(who)
        async with self._lock:
            now = self.clock()
            signal = self._signals.get(signal_id)
            if signal is None or not signal.open_at(now):
                raise NotFoundError(f"open grid signal {signal_id!r}")
            gone = signal.model_copy(update={"withdrawn_at": now, "withdrawn_by": who.name})
            after = resolve(self._others([signal_id]), now)
            audit = _audit(who, "grid signal withdrawn", gone, now)
            event = _event("grid_signal.withdrawn", gone, now, after)
            events = await self.journal.call(
                self.journal.sync.withdraw_grid_signal, signal_id, now, who.name, audit, [event]
            )
            self._signals[signal_id] = gone
            self.publish(events)
            log.warning("grid_signal_withdrawn", id=signal_id, by=who.name)
            await self._apply(who)
            self._changed.set()
            return gone

    def door(self, source: SignalSource) -> OperatorLimit:
        """The operator-limit callable of an OPC UA or IEC 61850 server (``set_limit``,
        ``MmsHooks.operate``): its import limit, demand response and fast frequency response
        become grid signals of ``source``; other settings (the ramp limit, the site's own limit
        over MMS) go to the site settings as before. ``ValueError`` names a value out of
        range."""

        async def set_limit(what: str, value: float | bool, who: Identity) -> None:
            if source is SignalSource.OPCUA and what == "grid_import_limit_mw":
                limit = ImportLimit(import_limit_mw=float(value))
                await self.submit(limit, source, who, key=OPCUA_IMPORT_KEY)
                return
            await self.settings.set(what, value, who)
            if source is SignalSource.IEC61850 and what in DR_SETTINGS:
                await self._follow_demand_response(who)
            elif source is SignalSource.IEC61850 and what in FFR_SETTINGS:
                await self._follow_ffr(who)

        return set_limit

    # ---- inside ------------------------------------------------------------------------------

    async def _follow_demand_response(self, who: Identity) -> None:
        """``GAPC1.DRAct`` on with a ``DRLimW``: the standing DR signal at that limit (a new
        limit replaces it); off: the signal withdrawn."""
        site = self.settings.current
        standing = [s for s in self.open_signals() if s.key == DR_KEY]
        if site.demand_response_active and site.demand_response_limit_mw is not None:
            limit = site.demand_response_limit_mw
            body = standing[-1].signal if standing else None
            if isinstance(body, ImportLimit) and body.import_limit_mw == limit:
                return
            request = ImportLimit(import_limit_mw=limit)
            await self.submit(request, SignalSource.IEC61850, who, key=DR_KEY)
        else:
            for signal in standing:
                await self.withdraw(signal.id, who)

    async def _restore_demand_response(self) -> None:
        """After a restart the standing DR signal switches ``GAPC1.DRAct`` on again, so what
        the MMS clients read matches what is in force."""
        standing = [s for s in self.open_signals() if s.key == DR_KEY]
        if not standing or not isinstance(standing[-1].signal, ImportLimit):
            return
        limit = standing[-1].signal.import_limit_mw
        site = self.settings.current
        if site.demand_response_limit_mw != limit:
            await self.settings.set("demand_response_limit_mw", limit, SYSTEM)
        if not site.demand_response_active:
            await self.settings.set("demand_response_active", True, SYSTEM)  # noqa: FBT003

    async def _follow_ffr(self, who: Identity) -> None:
        """``GAPC2.FFRAct`` on: the standing FFR signal with the curve as operated (defaults
        where a value never was), a changed curve value replacing it; off: the signal withdrawn,
        so what the other doors ask is in force again (rule 4 of ``resolve``)."""
        site = self.settings.current
        standing = [s for s in self.open_signals() if s.key == FFR_KEY]
        if not site.ffr_active:
            for signal in standing:
                await self.withdraw(signal.id, who)
            return
        request = site.ffr
        body = standing[-1].signal if standing else None
        if isinstance(body, FastFrequencyResponse) and _curve(body) == _curve(request):
            return
        await self.submit(request, SignalSource.IEC61850, who, key=FFR_KEY)

    async def _restore_ffr(self) -> None:
        """After a restart the standing FFR signal switches ``GAPC2.FFRAct`` on again with its
        curve, and without one ``FFRAct`` is off: what the MMS clients read matches what is
        in force."""
        standing = [s for s in self.open_signals() if s.key == FFR_KEY]
        body = standing[-1].signal if standing else None
        wanted: dict[str, float | bool] = {"ffr_active": False}
        if isinstance(body, FastFrequencyResponse) and body.enabled:
            wanted = {name: getattr(body, field) for name, field in FFR_SETTINGS.items()}
        for name, value in wanted.items():
            if getattr(self.settings.current, name) != value:
                await self.settings.set(name, value, SYSTEM)

    def _others(self, leaving: Sequence[str]) -> list[GridSignal]:
        return [s for s in self._signals.values() if s.id not in leaving]

    def _withdrawn(self, signal_id: str, at: datetime, by: str) -> None:
        old = self._signals.get(signal_id)
        if old is not None:
            self._signals[signal_id] = old.model_copy(
                update={"withdrawn_at": at, "withdrawn_by": by}
            )

    async def _apply(self, who: Identity) -> Effective:
        """Resolve now and put the import limit in force through the site settings."""
        effective = self.effective()
        await self.settings.apply_signal_limit(
            effective.import_limit_mw, effective.import_limit_by, who
        )
        self.on_effective(effective)
        return effective

    # ---- delivery ----------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        """Measure delivery every ``sample_s``; a signal that ends gets its report journalled."""
        while True:
            await asyncio.sleep(self.sample_s)
            ended = self.sample(self.clock())
            for delivery in ended:
                await self._delivered(delivery)

    def sample(self, now: datetime) -> list[Delivery]:
        """One measurement: the import into the history (baselines), a sample for every limit,
        shed and heat request in force. The deliveries that ended since the last sample."""
        import_mw, heat_mw = self.measured()
        in_force = {s.id: s for s in active_at(self._signals.values(), now)}
        if import_mw is not None:  # unconstrained: no limit or shed in force binds the import
            near = import_mw + LIMIT_TOLERANCE_MW + self.hold_margin_mw
            free = not any(
                isinstance(s.signal, ImportLimit | Shed) and _asked_mw(s.signal) <= near
                for s in in_force.values()
            )
            self._history.append((now, import_mw, free))
            while self._history and (now - self._history[0][0]).total_seconds() > HISTORY_S:
                self._history.popleft()
        for signal in in_force.values():
            body = signal.signal
            if not isinstance(body, ImportLimit | Shed | HeatRequest):
                continue
            delivery = self._delivery.get(signal.id)
            if delivery is None:
                baseline = (
                    body.baseline_mw
                    if isinstance(body, Shed)
                    else baseline_of(self._history, signal.start)
                )
                delivery = self._delivery[signal.id] = Delivery(signal, baseline)
            measured = heat_mw if isinstance(body, HeatRequest) else import_mw
            if measured is not None:
                delivery.samples.append(DeliverySample(now, _asked_mw(body), measured))
        ended = [d for k, d in self._delivery.items() if not d.ended and k not in in_force]
        for delivery in ended:
            delivery.ended = True
        finished = [k for k, d in self._delivery.items() if d.ended]
        for key in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            del self._delivery[key]
        return ended

    async def _delivered(self, delivery: Delivery) -> None:
        """A signal's window ended or it was withdrawn: its report as an event on the stream."""
        summary = delivery.report()
        log.info(
            "grid_signal_delivered",
            id=summary.signal_id,
            kind=summary.kind,
            requested_mw=round(summary.requested_mw, 3),
            delivered_mw=round(summary.delivered_mw, 3),
            ratio=None if summary.ratio is None else round(summary.ratio, 4),
            samples=summary.samples,
        )
        event = EventRow("grid_signal.delivered", None, self.clock(), delivery_json(summary))
        try:
            events = await self.journal.call(self.journal.sync.append_events, [event])
        except PswdError as exc:  # the report stays readable over HTTP; only the event is lost
            log.error("grid_signal_delivery_event_failed", error=str(exc))
            return
        self.publish(events)

    async def _run(self) -> None:
        """Re-resolve at each window boundary; forget what has ended or been withdrawn."""
        while True:
            now = self.clock()
            ahead = boundaries(self._signals.values(), now)
            sleep_s = MAX_SLEEP_S
            if ahead:
                sleep_s = min(MAX_SLEEP_S, max(0.0, (ahead[0] - now).total_seconds()))
            self._changed.clear()
            try:
                async with asyncio.timeout(sleep_s):
                    await self._changed.wait()
                continue  # a change: the boundaries are different now
            except TimeoutError:
                pass
            async with self._lock:
                before = self.settings.current.grid_signal_limit_mw
                try:
                    effective = await self._apply(SYSTEM)
                except (PswdError, ValueError) as exc:  # not audited: not in force; try again
                    log.error("grid_signal_apply_failed", error=str(exc))
                    await asyncio.sleep(1.0)
                    continue
                now = self.clock()
                self._signals = {
                    k: s for k, s in self._signals.items() if s.open_at(now) or s.in_force(now)
                }
                if effective.import_limit_mw != before:
                    await self._notice(effective, now)

    async def _notice(self, effective: Effective, at: datetime) -> None:
        """A window started or ended and the limit in force moved: an event on the stream."""
        event = EventRow(
            "grid_signal.effective_changed",
            None,
            at,
            {
                "import_limit_mw": effective.import_limit_mw,
                "import_limit_by": effective.import_limit_by,
                "in_force": list(effective.in_force),
            },
        )
        try:
            events = await self.journal.call(self.journal.sync.append_events, [event])
        except PswdError as exc:  # the change is in force; only its notice is lost
            log.error("grid_signal_notice_failed", error=str(exc))
            return
        self.publish(events)


def delivery_json(summary: DeliveryReport) -> dict[str, Any]:
    """A delivery report as JSON (the event's data, the HTTP answer's summary)."""
    return {
        "signal_id": summary.signal_id,
        "kind": summary.kind,
        "baseline_mw": summary.baseline_mw,
        "requested_mw": round(summary.requested_mw, 6),
        "delivered_mw": round(summary.delivered_mw, 6),
        "ratio": None if summary.ratio is None else round(summary.ratio, 6),
        "within_share": None if summary.within_share is None else round(summary.within_share, 6),
        "samples": summary.samples,
        "first": None if summary.first is None else summary.first.isoformat(),
        "last": None if summary.last is None else summary.last.isoformat(),
    }


def _asked_mw(body: ImportLimit | Shed | HeatRequest) -> float:
    if isinstance(body, ImportLimit):
        return body.import_limit_mw
    if isinstance(body, HeatRequest):
        return body.heat_mw
    base = body.baseline_mw if body.baseline_mw is not None else math.inf
    return max(0.0, base - body.shed_mw)


def _curve(body: FastFrequencyResponse) -> dict[str, Any]:
    """A response without its window: what two standing signals are compared by."""
    return body.model_dump(exclude={"start", "end"})


def _check(who: Identity) -> None:
    if not who.can(Permission.OPERATE):
        why = who.why_not(Permission.OPERATE)
        raise ForbiddenError(f"{who.name} may not send grid signals: {why}")


def _audit(
    who: Identity,
    action: str,
    signal: GridSignal,
    at: datetime,
    *,
    withdraws: Sequence[str] = (),
) -> AuditEntry:
    detail: dict[str, Any] = {
        "source": signal.source.value,
        "signal": signal.signal.model_dump(mode="json"),
        **who.via,
    }
    if withdraws:
        detail["withdraws"] = list(withdraws)
    return AuditEntry(
        actor=who.name,
        role=who.role,
        action=action,
        target=signal.id,
        outcome="accepted",
        detail=detail,
        at=at,
    )


def _event(
    kind: str,
    signal: GridSignal,
    at: datetime,
    after: Effective,
    *,
    withdraws: Sequence[str] = (),
) -> EventRow:
    return EventRow(
        kind,
        None,
        at,
        {
            "signal": signal.model_dump(mode="json"),
            "withdraws": list(withdraws),
            "import_limit_mw": after.import_limit_mw,
            "import_limit_by": after.import_limit_by,
        },
    )
