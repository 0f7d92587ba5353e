"""What the control cycle tells the rest of the site: power requests and guard events.

A fallback (the battery cannot hold the grid inside its limits) becomes a ``power_request``
notice on the workload event stream, at most one per :data:`FALLBACK_NOTICE_S`. A guard trip or
re-arm reaches the OPC UA and MMS servers at once (their alarms and GOOSE), and is audited and
sent to workloads as a ``control_guard`` notice in the background, one event at a time in the
order they came.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from pswd_gateway.control.grid import Fallback
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.domain.units import to_mw
from pswd_gateway.journal import AsyncJournal, AuditEntry, format_ts
from pswd_gateway.logging import get_logger
from pswd_gateway.scheduling.service import WorkloadService

__all__ = ["FALLBACK_NOTICE_S", "ControlNotices", "GuardListener"]

log = get_logger("daemon")

FALLBACK_NOTICE_S: Final = 5.0
"""At most one power request on the event stream per this many seconds."""


class GuardListener(Protocol):
    def control_guard(self, event: GuardEvent) -> None: ...


@dataclass
class ControlNotices:
    """The control cycle's ``on_fallback``/``on_guard`` (a component: ``stop`` waits for the
    last guard event's records)."""

    site_name: str
    journal: AsyncJournal | None
    workloads: WorkloadService | None
    listeners: Sequence[GuardListener] = ()
    name: str = "control-notices"
    _last_fallback: float = field(default=-1e9, init=False)
    _pending: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _order: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def start(self) -> None:
        """Nothing to start: notices come from the control cycle's callbacks."""

    async def stop(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending)

    def on_fallback(self, fallback: Fallback) -> None:
        now = time.monotonic()
        if self.workloads is None or now - self._last_fallback < FALLBACK_NOTICE_S:
            return
        self._last_fallback = now
        log.warning("workload_fallback", reason=fallback.reason)
        self._spawn(
            self.workloads.site_notice(
                "power_request",
                {
                    "reason": fallback.reason,
                    "shortfall_mw": round(to_mw(fallback.shortfall_w), 3),
                    "ramp_mw_per_s": round(to_mw(fallback.ramp_w_per_s), 3),
                },
            ),
            "workload-fallback-notice",
        )

    def on_guard(self, event: GuardEvent) -> None:
        """The guard tripped or re-armed (called on the loop by the control cycle, which logs
        it): the listeners now; audit and the workloads' notice in the background."""
        for listener in self.listeners:
            listener.control_guard(event)
        self._spawn(self._record(event), "control-guard-record")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, event: GuardEvent) -> None:
        async with self._order:
            await self._record_now(event)

    async def _record_now(self, event: GuardEvent) -> None:
        at = datetime.fromtimestamp(event.at, UTC)
        reason = event.reason.value if event.reason is not None else None
        action = "guard_trip" if event.tripped else "guard_rearm"
        if self.journal is not None:
            entry = AuditEntry(
                actor="control:guard",
                role=None,
                action=action,
                target=self.site_name,
                outcome="accepted",
                detail={"reason": reason, "detail": event.detail},
                at=at,
            )
            try:
                await self.journal.call(self.journal.sync.audit, entry)
            except Exception:
                log.exception("control_guard_audit_failed", action=action)
        if self.workloads is not None:
            notice = {
                "tripped": event.tripped,
                "reason": reason,
                "detail": event.detail,
                "at": format_ts(at),
            }
            try:
                await self.workloads.site_notice("control_guard", notice)
            except Exception:
                log.exception("control_guard_notice_failed", action=action)
