"""The MMS server in a process of its own, watched and restarted by the gateway.

libiec61850 parses whatever an MMS peer sends. In the gateway's process a crash or a hang
inside it would take the control cycle, the journal and every other listener with it; so it runs
in a child (:mod:`.worker`, which runs :class:`~pswd_gateway.northbound.iec61850.server.
MmsServer` unchanged), and :class:`MmsProcess` is what the daemon starts in its place, with the
same surface: ``start``/``stop``/``unhealthy``, ``control_guard``, ``stats``.

- **Down.** The gateway subscribes to the store and sends what changed at most every
  ``interval_s`` (at once on a quality change), the latest value per point: a child that falls
  behind costs a dictionary of points here, never a growing queue. Site settings, the zone
  policy, guard events and the load-step state follow as they change; so does the import
  forecast (FSCH1, :mod:`.schedule`), read from ``forecast`` every ``forecast_every_s`` and sent
  when it differs from the last one sent. A new child gets all of it in its first frame.
- **Up.** The child asks for an operate (the gateway checks the caller against its own users,
  or a certificate holder's certificate against the client CA and the CRL, and its conduits,
  and the value against :func:`~.controls.judge` again, carries it out through
  ``hooks.operate`` and answers), a refusal to audit, what its door decided for a peer
  (counted, and audited when refused, by the gateway's :class:`Gatekeeper`, whose policy and
  connection rate the child's door copies), and a heartbeat with its statistics every 0.25 s,
  sent only while libiec61850's worker can take the model lock. What comes up is JSON checked
  field by field (:mod:`.link`); a child that breaks the protocol is killed.
- **Supervision.** A child that exits, is killed, closes its end, breaks the protocol or sends
  no heartbeat for ``hang_after_s`` (then SIGKILL) is started again after a back-off: 0.5 s,
  doubling to 30 s, back to 0.5 s once a child has served for a minute. Each restart is logged
  (``mms_process_failed``), audited (``on_restart``) and counted (``restarts_total``; ``up``).
  Meanwhile the port is closed and nothing else waits for it; an operate in flight is carried
  out and answered nowhere (its client's association went with the child).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from pswd_gateway.config import LOCAL_ZONE, LOOPBACK_NETWORKS, Iec61850UserConfig, SiteConfig
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.domain.identity import Identity
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import to_mw
from pswd_gateway.logging import LogFormat, get_logger
from pswd_gateway.northbound.iec61850.controls import judge
from pswd_gateway.northbound.iec61850.link import (
    MAX_UP_BYTES,
    Answer,
    Beat,
    Caller,
    Door,
    Down,
    Failed,
    GuardChanged,
    LoadStep,
    MmsSettings,
    Operate,
    Points,
    PolicyChanged,
    ProtocolError,
    Ready,
    Refused,
    ScheduleChanged,
    SiteChanged,
    Start,
    Stop,
    Up,
    UsersChanged,
    down_frame,
    parse_up,
    read_frame,
)
from pswd_gateway.northbound.iec61850.model import CONTROLS, DataObject
from pswd_gateway.northbound.iec61850.schedule import forecast_schedule
from pswd_gateway.northbound.iec61850.server import MmsHooks, MmsStats
from pswd_gateway.scheduling.model import SiteForecast
from pswd_gateway.security.pki import ClientCertificates
from pswd_gateway.security.zones import Admission, Conduit, Gatekeeper, Policy, Zone
from pswd_gateway.store import PointStore
from pswd_gateway.tasks import cancel_and_wait

__all__ = ["LOOPBACK_POLICY", "Backoff", "MmsProcess"]

log = get_logger("iec61850")

WORKER: Final = "pswd_gateway.northbound.iec61850.worker"
START_TIMEOUT_S: Final = 15.0
"""A child that has not answered :class:`Ready` (or :class:`Failed`) by then is killed."""
STOP_TIMEOUT_S: Final = 2.0
"""A child still running this long after :class:`Stop` is killed."""
EXIT_AFTER_CLOSE_S: Final = 2.0
"""A child that closed its end of the link and still runs after this is killed."""
HANG_AFTER_S: Final = 3.0
"""No heartbeat for this long: the child is taken to hang, and killed."""
WATCH_EVERY_S: Final = 0.5
MAX_UNSENT_BYTES: Final = 1 << 20
"""Points wait here (the latest per point) while this much is still unsent to the child."""
SETTLE_S: Final = 1.0
"""At stop, operates in flight get this long to be journalled before they are cancelled."""
FORECAST_EVERY_S: Final = 5.0
"""How often the plan's import forecast is read for FSCH1 (~2.5 ms on the loop each time)."""

LOOPBACK_POLICY: Final = Policy(
    {LOCAL_ZONE: Zone(LOCAL_ZONE, "control", LOOPBACK_NETWORKS, "this machine")},
    (Conduit("local-iec61850", LOCAL_ZONE, "iec61850", "configure"),),
)
"""Without a policy: this machine only, with every access its users' roles have."""

CONTROL_BY_ACTION: Final[dict[str, DataObject]] = {
    row.control.action: row for row in CONTROLS.values() if row.control is not None
}


@dataclass
class Backoff:
    """How long to wait before the next start: ``first_s`` doubling to ``max_s``, back to
    ``first_s`` after a child that served ``healthy_s``."""

    first_s: float = 0.5
    max_s: float = 30.0
    healthy_s: float = 60.0
    _next_s: float = field(default=0.0, init=False)

    def delay(self, served_s: float) -> float:
        if served_s >= self.healthy_s or self._next_s == 0.0:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


@dataclass(frozen=True)
class Gone:
    """Why a child ended: the cause and its exit status (``None``: it never started)."""

    cause: str
    returncode: int | None

    def detail(self) -> dict[str, Any]:
        rc = self.returncode
        if rc is None:
            return {"cause": self.cause}
        if rc < 0:
            return {"cause": self.cause, "signal": signal.Signals(-rc).name}
        return {"cause": self.cause, "exit_code": rc}


class StartFailed(Exception):  # noqa: N818 - it carries the Gone, not an error of ours
    def __init__(self, gone: Gone) -> None:
        super().__init__(gone.cause)
        self.gone = gone


class NotVouched(Exception):  # noqa: N818 - a refusal, not an error
    """The gateway does not carry out an operate the child asked for."""


@dataclass(eq=False)
class Child:
    """One MMS process and the gateway's end of its link."""

    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ready_at: float | None = None
    """Monotonic time it answered :class:`Ready`."""
    beats: int = 0
    dropped: int = 0
    stats: MmsStats = field(default_factory=MmsStats)
    killed_for: str | None = None
    site: SiteConfig | None = None
    policy: Policy | None = None
    users: tuple[Iec61850UserConfig, ...] | None = None
    load_step: bool | None = None
    schedule: ScheduleChanged | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None and not self.writer.is_closing()

    @property
    def unsent(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    def send(self, message: Down) -> None:
        if not self.writer.is_closing():
            self.writer.write(down_frame(message))

    def kill(self, why: str) -> None:
        """SIGKILL, remembering the first reason (no-op once it has exited)."""
        if self.proc.returncode is None:
            self.killed_for = self.killed_for or why
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def served_s(self) -> float:
        return 0.0 if self.ready_at is None else time.monotonic() - self.ready_at


OnRestart = Callable[[dict[str, Any]], Awaitable[None]]
"""Audit a restart: the detail (cause, exit code or signal, restarts so far, delay)."""


async def _no_audit(_detail: dict[str, Any]) -> None:
    return None


Forecast = Callable[[], SiteForecast | None]
"""The plan's site forecast now (``WorkloadService.site_forecast``); None without a plan."""


class MmsProcess:
    """The daemon's IEC 61850 component: the MMS server in a child process, supervised."""

    name = "iec61850"

    def __init__(
        self,
        store: PointStore,
        site: Callable[[], SiteConfig],
        settings: MmsSettings,
        *,
        gate: Gatekeeper | None = None,
        hooks: MmsHooks | None = None,
        on_restart: OnRestart = _no_audit,
        log_level: str = "info",
        log_format: LogFormat = "auto",
        backoff: Backoff | None = None,
        hang_after_s: float = HANG_AFTER_S,
        forecast: Forecast | None = None,
        forecast_every_s: float = FORECAST_EVERY_S,
    ) -> None:
        self.store = store
        self.site = site
        self.settings = settings
        self.gate = gate or Gatekeeper(LOOPBACK_POLICY)
        """The door: counts and audits what the child's copy of it (the same policy and
        connection rate) decided for each peer at accept."""
        self.hooks = hooks or MmsHooks()
        self.on_restart = on_restart
        self.log_level = log_level
        self.log_format: LogFormat = log_format
        self.backoff = backoff or Backoff()
        self.hang_after_s = hang_after_s
        self.forecast = forecast
        """Where FSCH1's import forecast comes from (none: FSCH1 stays not ready)."""
        self.forecast_every_s = forecast_every_s
        self.forecast_errors_total = 0
        self._schedule: ScheduleChanged | None = None
        """The last forecast schedule made (sent to every child that serves)."""
        self._forecast_due = 0.0
        tls = settings.tls
        self.certificates = ClientCertificates(tls.client_ca, tls.crl) if tls is not None else None
        """What a certificate holder's operate is checked against again (MMS over TLS)."""
        self.restarts_total = 0
        self._child: Child | None = None
        self._carried = MmsStats()
        """The counters of children that have ended."""
        self._dirty: dict[str, Point] = {}
        self._qualities: dict[str, Quality] = {}
        self._guard: GuardEvent | None = None
        self._wake = asyncio.Event()
        self._subscription: Any = None
        self._feeding: asyncio.Task[None] | None = None
        self._supervising: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- what the daemon sees ----

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def ied_name(self) -> str:
        return self.settings.ied_name

    @property
    def interval_s(self) -> float:
        return self.settings.interval_s

    @property
    def pid(self) -> int | None:
        """The MMS process serving now (``None`` while there is none)."""
        child = self._child
        return child.pid if child is not None and child.running else None

    @property
    def up(self) -> bool:
        """A child is serving: it answered ready and runs."""
        child = self._child
        return child is not None and child.ready_at is not None and child.running

    @property
    def stats(self) -> MmsStats:
        """The server's statistics: counters summed over every child (they never go down), the
        rest the serving child's."""
        child = self._child
        out = MmsStats()
        for f in fields(MmsStats):
            if _counter(f.name):
                live = getattr(child.stats, f.name) if child is not None else 0
                setattr(out, f.name, getattr(self._carried, f.name) + live)
            elif child is not None and child.running:
                setattr(out, f.name, getattr(child.stats, f.name))
        return out

    async def start(self) -> None:
        """Start the first child; raises ``OSError`` when it cannot serve (a port in use)."""
        self._subscription = self.store.subscribe(self._on_points)
        try:
            child = await self._spawn()
        except BaseException as exc:
            self._subscription.cancel()
            if isinstance(exc, StartFailed):
                where = f"{self.host}:{self.port}"
                raise OSError(f"the IEC 61850 MMS server did not start on {where}: {exc}") from None
            raise
        self._feeding = asyncio.create_task(self._feed(), name="iec61850-feed")
        self._supervising = asyncio.create_task(self._supervise(child), name="iec61850-supervisor")
        log.info("mms_process_started", pid=child.pid, host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        await cancel_and_wait(self._supervising)
        await cancel_and_wait(self._feeding)
        child, self._child = self._child, None
        if child is not None:
            await self._end(child)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SETTLE_S)
            for task in list(self._tasks):
                await cancel_and_wait(task)

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        """The supervisor or the feed task, when either ended without being stopped. A child
        being restarted is not unhealthy here (``pswd_iec61850_up`` says so): the gateway
        restarts it itself, and withholding the systemd watchdog would restart everything."""
        return [
            name
            for name, task in (
                ("iec61850-supervisor", self._supervising),
                ("iec61850-feed", self._feeding),
            )
            if task is not None and task.done()
        ]

    def replace_users(self, users: tuple[Iec61850UserConfig, ...]) -> None:
        """New MMS users (SIGHUP): the gateway judges operates by them at once, the MMS process
        its next associations (a restarted one starts with them)."""
        self.settings = replace(self.settings, users=users)
        self._wake.set()  # the feed sends them (:meth:`_sync`)

    def control_guard(self, event: GuardEvent) -> None:
        """The control guard tripped or re-armed: to the child at once (``GGIO1.Ind4``)."""
        self._guard = event
        child = self._child
        if child is not None and child.ready_at is not None:
            child.send(GuardChanged(event))

    # ---- down: the store, settings and policy to the child ----

    def _on_points(self, points: Sequence[Point]) -> None:
        for p in points:
            self._dirty[p.name] = p
            if self._qualities.get(p.name) is not p.quality:
                self._qualities[p.name] = p.quality
                self._wake.set()  # an event: GOOSE carries it within milliseconds

    def _sync(self, child: Child) -> None:
        """Send the site settings, the policy, the users and the load-step state where they
        changed."""
        site, policy = self.site(), self.gate.policy
        if site is not child.site:
            child.site = site
            child.send(SiteChanged(site))
        if policy is not child.policy:
            child.policy = policy
            child.send(PolicyChanged(policy))
        if self.settings.users is not child.users:
            child.users = self.settings.users
            child.send(UsersChanged(child.users))
        imminent = self.hooks.load_step_imminent()
        if imminent != child.load_step:
            child.load_step = imminent
            child.send(LoadStep(imminent))
        schedule = self._forecast_schedule()
        if schedule is not child.schedule and schedule is not None:
            child.schedule = schedule
            child.send(schedule)

    def _forecast_schedule(self, *, now: bool = False) -> ScheduleChanged | None:
        """The import forecast as a schedule, read again from ``forecast`` when
        ``forecast_every_s`` has passed (or ``now``); a new :class:`ScheduleChanged` (the next
        revision) only when its start or a value differs from the last one's."""
        due = time.monotonic()
        if self.forecast is None or (due < self._forecast_due and not now):
            return self._schedule
        self._forecast_due = due + self.forecast_every_s
        try:
            plan = self.forecast()
            made = None if plan is None else forecast_schedule(plan, time.time())
        except Exception:  # the last schedule stays served; the next read may do better
            self.forecast_errors_total += 1
            log.exception("mms_forecast_failed", errors=self.forecast_errors_total)
            return self._schedule
        last = self._schedule
        if made is not None and (last is None or made != last.schedule):
            revision = 1 if last is None else last.revision + 1
            self._schedule = ScheduleChanged(made, revision)
            peak_mw = round(to_mw(max(made.values_w)), 3)
            log.info("mms_schedule_changed", revision=revision, start_ts=made.start_ts,
                     entries=len(made.values_w), peak_mw=peak_mw)  # fmt: skip
        return self._schedule

    async def _feed(self) -> None:
        while True:
            child = self._child
            if child is not None and child.ready_at is not None and child.running:
                self._sync(child)
                if self._dirty and child.unsent < MAX_UNSENT_BYTES:
                    child.send(Points(tuple(self._dirty.values())))
                    self._dirty.clear()
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    def _first_frame(self, child: Child) -> Start:
        """Everything now: the store's every point, settings, policy, guard, load step."""
        points = tuple(self.store.snapshot(time.time()).points.values())
        self._dirty.clear()
        child.site, child.policy = self.site(), self.gate.policy
        child.users = self.settings.users
        child.load_step = self.hooks.load_step_imminent()
        child.schedule = self._forecast_schedule(now=True)
        return Start(
            self.settings,
            child.policy,
            self.gate.rates.get("iec61850"),
            child.site,
            points,
            self._guard,
            child.load_step,
            self.log_level,
            self.log_format,
            child.schedule,
        )

    # ---- the child's life ----

    async def _spawn(self) -> Child:
        """Start a child and wait until it serves; :class:`StartFailed` when it does not."""
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", WORKER, str(theirs.fileno()), str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                # its logs and libiec61850's own prints go where the gateway's errors go
                # (journald under systemd), never into what a command prints on stdout
                stdout=sys.stderr.fileno(),
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_UP_BYTES)
        child = Child(proc, reader, writer)
        self._child = child
        try:
            child.send(self._first_frame(child))
            async with asyncio.timeout(START_TIMEOUT_S):
                await self._until_ready(child)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                child.kill("the gateway stopped")  # stop() reaps it
                raise
            if isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
                with contextlib.suppress(TimeoutError):  # it is ending: let it say how
                    async with asyncio.timeout(EXIT_AFTER_CLOSE_S):
                        await child.proc.wait()
            child.kill(_start_failure(exc))
            returncode = await child.proc.wait()
            writer.close()
            self._child = None
            cause = child.killed_for or f"exited before it served ({_exit_status(returncode)})"
            raise StartFailed(Gone(cause, returncode)) from None
        child.ready_at = time.monotonic()
        return child

    async def _until_ready(self, child: Child) -> None:
        while True:
            message = parse_up(await read_frame(child.reader, MAX_UP_BYTES))
            if isinstance(message, Ready):
                return
            if isinstance(message, Failed):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await child.proc.wait()
                child.killed_for = f"could not start: {message.error}"
                raise StartFailed(Gone(child.killed_for, child.proc.returncode))
            self._dispatch(child, message)

    async def _supervise(self, first: Child) -> None:
        """Serve each child until it is gone, then start the next after the back-off."""
        child: Child | None = first
        while True:
            if child is not None:
                gone = await self._serve(child)
                served_s = child.served_s()
            else:
                try:
                    child = await self._spawn()
                except StartFailed as exc:
                    gone, served_s = exc.gone, 0.0
                else:
                    restarts = self.restarts_total
                    log.warning("mms_process_restarted", pid=child.pid, restarts=restarts)
                    continue
            child = None
            delay = self.backoff.delay(served_s)
            self.restarts_total += 1
            detail = {
                **gone.detail(),
                "restarts": self.restarts_total,
                "restart_in_s": delay,
                "served_s": round(served_s, 3),
            }
            log.error("mms_process_failed", **detail)
            self._spawn_task(self._audit(detail), "iec61850-audit-restart")
            await asyncio.sleep(delay)

    async def _serve(self, child: Child) -> Gone:
        """Hear the child until its process has ended; why it did."""
        hearing = asyncio.create_task(self._hear(child), name="iec61850-link")
        watching = asyncio.create_task(self._watch(child), name="iec61850-watchdog")
        try:
            returncode = await child.proc.wait()
        finally:
            await cancel_and_wait(hearing)
            await cancel_and_wait(watching)
        child.writer.close()
        self._retire(child)
        return Gone(child.killed_for or _exit_status(returncode), returncode)

    async def _hear(self, child: Child) -> None:
        try:
            while True:
                self._dispatch(child, parse_up(await read_frame(child.reader, MAX_UP_BYTES)))
        except (asyncio.IncompleteReadError, ConnectionError):
            with contextlib.suppress(TimeoutError):  # it is ending: give it a moment to exit
                async with asyncio.timeout(EXIT_AFTER_CLOSE_S):
                    await child.proc.wait()
            child.kill("closed its end of the link and did not exit")
        except ProtocolError as exc:
            log.error("mms_process_protocol_error", pid=child.pid, error=str(exc))
            child.kill(f"broke the protocol: {exc}")

    async def _watch(self, child: Child) -> None:
        """Kill a child whose heartbeats stop. Counted in missed rounds of this loop, not by
        the clock: after a stall of the gateway's own loop the child's beats are read first."""
        limit = max(1, math.ceil(self.hang_after_s / WATCH_EVERY_S))
        seen, missed = child.beats, 0
        while missed < limit:
            await asyncio.sleep(WATCH_EVERY_S)
            missed = 0 if child.beats != seen else missed + 1
            seen = child.beats
        log.error("mms_process_hung", pid=child.pid, silent_s=missed * WATCH_EVERY_S)
        child.kill(f"hung: no heartbeat for {missed * WATCH_EVERY_S:g} s")

    async def _end(self, child: Child) -> None:
        """Ask the child to stop; SIGKILL when it has not within :data:`STOP_TIMEOUT_S`."""
        try:
            child.send(Stop())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await child.proc.wait()
        finally:
            child.kill("did not stop")
            child.writer.close()
        await child.proc.wait()
        log.info("mms_process_stopped", pid=child.pid, returncode=child.proc.returncode)

    def _retire(self, child: Child) -> None:
        """Keep the ended child's counters, so the totals never go down."""
        if self._child is child:
            self._child = None
        for f in fields(MmsStats):
            if _counter(f.name):
                carried = getattr(self._carried, f.name)
                setattr(self._carried, f.name, carried + getattr(child.stats, f.name))

    async def _audit(self, detail: dict[str, Any]) -> None:
        try:
            await self.on_restart(detail)
        except Exception:
            log.exception("mms_restart_audit_failed")

    # ---- up: what the child asks ----

    def _dispatch(self, child: Child, message: Up) -> None:
        if isinstance(message, Beat):
            child.beats += 1
            child.stats = message.stats
            if message.dropped > child.dropped:
                log.warning("mms_process_dropped", pid=child.pid, dropped=message.dropped)
            child.dropped = message.dropped
        elif isinstance(message, Door):
            self._door(message)
        elif isinstance(message, Refused):
            refused = self.hooks.refused(message.caller.identity(), message.action, message.why)
            self._spawn_task(refused, "iec61850-refused")
        elif isinstance(message, Operate):
            self._spawn_task(self._operate(child, message), "iec61850-operate")
        else:  # Ready or Failed again
            raise ProtocolError(f"{type(message).__name__.lower()} after it started")

    def _door(self, message: Door) -> None:
        """Count what the child's door decided, as the gateway's door would have."""
        if message.zone is not None:
            if message.zone not in self.gate.policy.zones:  # a label value: from the policy only
                raise ProtocolError(f"door.zone: no zone {message.zone[:40]!r}")
            self.gate.admitted["iec61850", message.zone] += 1
        elif message.reason is not None and message.why is not None:
            self.gate.refusals.refuse("iec61850", str(message.peer), message.why, message.reason)

    async def _operate(self, child: Child, request: Operate) -> None:
        """Carry out an operate the child accepted, if the gateway vouches for it too; answer
        the child (nowhere when it has gone: its client's association went with it)."""
        error: str | None = "not carried out"
        try:
            caller = self._vouch(request)
            await self.hooks.operate(request.action, request.value, caller)
            error = None
        except NotVouched as exc:
            error = f"refused by the gateway: {exc}"
            log.error("mms_operate_not_vouched", pid=child.pid, action=request.action, why=str(exc))
            row = CONTROL_BY_ACTION.get(request.action)
            target = row.reference if row is not None else request.action[:80]
            await self.hooks.refused(request.caller.identity(), f"operate {target}", error)
        except Exception as exc:  # noqa: BLE001 - answered to the child, which answers the client
            error = str(exc) or type(exc).__name__
        finally:
            if child.running:
                self._sync(child)  # the new settings reach the child before the answer does
                child.send(Answer(request.id, error))

    def _vouch(self, request: Operate) -> Identity:
        """The caller as the gateway's own configuration has them, once :func:`judge` accepts
        the operate for them again (the child's word is not enough)."""
        row = CONTROL_BY_ACTION.get(request.action)
        if row is None:
            raise NotVouched(f"no control sets {request.action[:80]!r}")
        caller = self._caller(request.caller)
        verdict = judge(row, request.value, caller, self.site())
        if not verdict.accepted:
            raise NotVouched(verdict.why)
        return caller

    def _caller(self, claim: Caller) -> Identity:
        """A configured user, or the holder of a certificate the client CA issued and did not
        revoke, through a conduit of the policy in force; or :class:`NotVouched`."""
        role = self._role(claim)
        conduit = next(
            (
                c
                for c in self.gate.policy.conduits_to("iec61850")
                if c.name == claim.conduit and c.zone == claim.zone
            ),
            None,
        )
        if conduit is None:
            raise NotVouched(f"no conduit {claim.conduit!r} from zone {claim.zone!r} to iec61850")
        admission = Admission("iec61850", conduit.zone, conduit.name, conduit.access)
        return admission.limit(Identity(claim.name, role))

    def _role(self, claim: Caller) -> str:
        """The role the gateway's own configuration gives the claimed caller."""
        der = claim.der()
        if der is not None:
            if self.certificates is None:
                raise NotVouched("a certificate holder, but MMS is not served over TLS")
            try:
                holder = self.certificates.holder(der)
            except (OSError, ValueError) as exc:
                raise NotVouched(f"{claim.name[:80]}: {exc}") from None
            if (holder.name, holder.role) != (claim.name, claim.role):
                raise NotVouched(f"the certificate names {holder.name} ({holder.role})")
            return holder.role
        users = self.settings.users
        user = next(
            (u for u in users if (f"mms:{u.name}", u.role) == (claim.name, claim.role)), None
        )
        if user is None:
            raise NotVouched(f"{claim.name[:80]} ({claim.role[:20]}) is no configured MMS user")
        return user.role

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mms_task_failed", task=task.get_name(), error=repr(task.exception()))


def _counter(name: str) -> bool:
    return name.endswith("_total")


def _exit_status(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def _start_failure(exc: BaseException) -> str:
    if isinstance(exc, StartFailed):
        return exc.gone.cause
    if isinstance(exc, TimeoutError):
        return f"did not serve within {START_TIMEOUT_S:g} s"
    if isinstance(exc, ProtocolError):
        return f"broke the protocol: {exc}"
    if isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
        return "closed its end of the link before it served"
    return repr(exc)
