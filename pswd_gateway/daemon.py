"""The daemon: wires the store, pollers and listeners; supervision, readiness, systemd, signals.

Start order: store → journal → forecast → workload service → drivers and pollers → metrics
and API listeners → READY=1. Stop order is the reverse (event streams are ended first, so the
API listener closes at once). Each poller runs in a supervised task: a crash is logged,
counted, and the task is restarted after a back-off; the systemd watchdog is fed only while
every loop ticks on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sdnotify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pswd_gateway import __version__
from pswd_gateway.config import GatewayConfig, SiteConfig, load_config
from pswd_gateway.control.cycle import ControlCycle, SetpointWrite
from pswd_gateway.control.grid import Announced, Fallback
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.domain.identity import Identity
from pswd_gateway.domain.workloads import PowerProfile
from pswd_gateway.errors import ConfigError, DeviceError, PswdError
from pswd_gateway.integration.feed import ForecastFeed
from pswd_gateway.integration.forecasts import build_forecast_provider
from pswd_gateway.journal import AsyncJournal, AuditEntry, format_ts
from pswd_gateway.logging import configure_logging, get_logger
from pswd_gateway.northbound.asgi import AsgiListener
from pswd_gateway.northbound.http_api import ApiContext, create_app
from pswd_gateway.northbound.http_api.security import HttpStats
from pswd_gateway.northbound.http_api.site import site_view
from pswd_gateway.northbound.iec61850.model import GooseAddress
from pswd_gateway.northbound.iec61850.server import MmsHooks, MmsServer
from pswd_gateway.northbound.metrics import GatewayCollector, OpsView, make_registry
from pswd_gateway.northbound.opcua.server import OpcUaServer
from pswd_gateway.scheduling.scheduler import Scheduler
from pswd_gateway.scheduling.service import WorkloadService
from pswd_gateway.site_settings import SiteSettings
from pswd_gateway.southbound.base import Driver
from pswd_gateway.southbound.factory import build_driver
from pswd_gateway.southbound.poller import Poller, PollStats
from pswd_gateway.store import PointStore

__all__ = ["Gateway", "SystemdNotifier", "run_gateway"]

log = get_logger("daemon")


def _not_after(cert: Path) -> float:
    """When a DER certificate expires (POSIX seconds)."""
    from cryptography import x509  # noqa: PLC0415

    return x509.load_der_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()


RESTART_BACKOFF_S = 1.0
SETPOINT_FLUSH_S = 1.0
SETPOINT_BUFFER_MAX = 100_000
FALLBACK_NOTICE_S = 5.0
"""At most one power request on the event stream per this many seconds."""
GC_GEN0_THRESHOLD = 10_000
GC_UNFREEZE_INTERVAL_S = 3600.0


class SystemdNotifier:
    """sd_notify READY/WATCHDOG/STOPPING/RELOADING; silent when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) else None
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)


@dataclass
class _Supervised:
    name: str
    factory: Callable[[], Any]
    task: asyncio.Task[None] | None = None
    restarts: int = 0


@dataclass
class Gateway:
    """One running gateway. ``start()``, then ``stop()``; or ``run()`` until a signal."""

    config: GatewayConfig
    config_path: Path | None = None
    store: PointStore = field(default_factory=PointStore)
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)
    pollers: dict[str, Poller] = field(default_factory=dict, init=False)
    drivers: dict[str, Driver] = field(default_factory=dict, init=False)
    metrics_listener: AsgiListener | None = field(default=None, init=False)
    api_listener: AsgiListener | None = field(default=None, init=False)
    journal: AsyncJournal | None = field(default=None, init=False)
    control: ControlCycle | None = field(default=None, init=False)
    opcua: OpcUaServer | None = field(default=None, init=False)
    _http_stats: HttpStats | None = field(default=None, init=False)
    _certificate_expiry: dict[str, float] = field(default_factory=dict, init=False)
    mms: MmsServer | None = field(default=None, init=False)
    _load_step_cache: tuple[float, bool] = field(default=(0.0, False), init=False)
    heap: HeapKeeper | None = None
    """Garbage-collector tuning; set by ``pswd-gateway run`` (it is process-wide)."""
    forecast: ForecastFeed | None = field(default=None, init=False)
    workloads: WorkloadService | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    _supervised: dict[str, _Supervised] = field(default_factory=dict, init=False)
    _setpoint_buffer: list[SetpointWrite] = field(default_factory=list, init=False)
    _last_fallback_notice: float = field(default=-1e9, init=False)
    _guard_records: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    """Audit records and site notices of guard events still being written."""
    _guard_order: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    """Guard events are recorded one at a time, in the order they came."""
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _watchdog_task: asyncio.Task[None] | None = field(default=None, init=False)
    _ready: bool = field(default=False, init=False)
    settings: SiteSettings = field(init=False)
    """The one owner of the site's settings (limits operators change, reloads)."""

    def __post_init__(self) -> None:
        self.settings = SiteSettings(self.config.site, audit=self._audit_setting)
        self.settings.subscribe(self._on_site)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start pollers and listeners; READY=1 once every device had its first poll."""
        self.started_at = time.monotonic()
        log.info(
            "gateway_starting",
            version=__version__,
            site=self.config.site.name,
            devices=len(self.config.devices),
        )
        await self._start_workloads()
        for device in self.config.devices:
            if device.enabled:
                self._add_poller(device.name)
        listener = self.config.listeners.metrics
        if listener.enabled:
            self.metrics_listener = AsgiListener(
                self._health_app(), listener.host, listener.port, name="metrics"
            )
            await self.metrics_listener.start()
        api = self.config.listeners.api
        if api.enabled and self.workloads is not None:
            context = ApiContext(
                self.workloads,
                site_view(self.store, self._site, self.workloads),
                lambda: self._ready,
            )
            app = create_app(self.config.api, context)
            self._http_stats = app.state.http_stats
            self.api_listener = AsgiListener(
                app,
                api.host,
                api.port,
                name="api",
                tls_cert=api.tls_cert,
                tls_key=api.tls_key,
            )
            await self.api_listener.start()
        if self.config.listeners.opcua.enabled:
            self.opcua = OpcUaServer(
                self.config,
                self.store,
                self._site,
                self.workloads,
                self.set_site_limit,
                ramp=lambda: self.control.stats.grid_ramp_w_per_s() if self.control else None,
            )
            await self.opcua.start()
            if self.opcua.certificate_path is not None:
                self._certificate_expiry["opcua"] = _not_after(self.opcua.certificate_path)
        mms = self.config.listeners.iec61850
        if mms.enabled:
            settings = self.config.iec61850
            self.mms = MmsServer(
                self.store,
                self._site,
                ied_name=settings.ied_name,
                host=mms.host,
                port=mms.port,
                max_connections=mms.max_connections,
                allowed_networks=mms.allowed_networks,
                users=settings.users,
                anonymous_read=settings.anonymous_read,
                interval_s=settings.update_interval_ms / 1000.0,
                goose_interface=settings.goose_interface,
                goose_times_ms=(settings.goose_min_time_ms, settings.goose_max_time_ms),
                goose_address=GooseAddress(app_id=settings.goose_appid, mac=settings.goose_dst_mac),
                hooks=MmsHooks(
                    operate=self._mms_operate,
                    refused=self._mms_refused,
                    load_step_imminent=self._load_step_imminent,
                ),
            )
            await self.mms.start()
        await self._wait_first_polls(timeout_s=5.0)
        await self._start_control()
        self._start_task("setpoint-journal", self._flush_setpoints)
        if self.heap is not None:
            self.heap.install()
        self._ready = True
        self.notifier.notify("READY=1")
        self.notifier.notify(f"STATUS=polling {len(self.pollers)} devices")
        if self.notifier.watchdog_interval_s:
            self._watchdog_task = asyncio.create_task(
                self._feed_watchdog(self.notifier.watchdog_interval_s), name="watchdog"
            )
        log.info(
            "gateway_ready",
            pollers=len(self.pollers),
            metrics_port=self.metrics_listener.port if self.metrics_listener else None,
            api_port=self.api_listener.port if self.api_listener else None,
        )

    async def _start_workloads(self) -> None:
        """Journal, forecast and the workload service (before any listener can reach them)."""
        cfg = self.config
        self.journal = AsyncJournal.open(cfg.storage.journal_path, cfg.storage.journal_synchronous)
        sched = cfg.scheduling
        slot_s = sched.slot_minutes * 60
        self.forecast = ForecastFeed(
            build_forecast_provider(sched.forecast, cfg.config_dir, slot_s),
            horizon=timedelta(hours=sched.horizon_h),
            slot_s=slot_s,
            refresh_s=sched.forecast.refresh_s,
        )
        try:
            async with asyncio.timeout(sched.forecast.timeout_s + 1.0):
                await self.forecast.refresh()
        except TimeoutError:
            log.warning("forecast_first_fetch_slow", timeout_s=sched.forecast.timeout_s)
        self.workloads = WorkloadService(
            cfg, self.journal, Scheduler(sched, cfg.site), self.forecast.current
        )
        self.forecast.on_update = self.workloads.mark_dirty
        await self.workloads.start()
        self._start_task("forecast", self.forecast.run)

    async def _start_control(self) -> None:
        """The control cycle (after the pollers: it needs their readings)."""
        cfg = self.config
        self.control = ControlCycle(
            cfg.control,
            self._site(),
            self.store,
            self._write_device,
            jobs=self._announced_jobs,
            record=self._record_setpoints,
            on_fallback=self._on_fallback,
            on_guard=self._on_guard,
        )
        await self.control.start()

    async def _write_device(self, device: str, point: str, value: float) -> None:
        driver = self.drivers.get(device)
        if driver is None:
            raise DeviceError(device, "no such device, or it is disabled")
        await driver.write(point, value)

    def _placed_runs(self) -> Iterator[tuple[float, float, PowerProfile]]:
        """(start, end, power profile) of each placed workload, POSIX seconds."""
        if self.workloads is None:
            return
        for placed in self.workloads.placed():
            profile = placed.announcement.power_profile
            start = placed.start.timestamp()
            yield start, start + profile.duration_estimate_sec, profile

    def _announced_jobs(self, now: float) -> list[Announced]:
        horizon = now + self.config.control.announce_lead_s
        jobs = []
        for start, end, profile in self._placed_runs():
            if start > horizon or end < now - 60.0:
                continue
            level = profile.peak_power_mw - (profile.oscillation_depth_mw or 0.0) / 2.0
            jobs.append(
                Announced(
                    start,
                    end,
                    level * 1e6,
                    profile.ramp_rate_mw_per_sec * 1e6,
                    peak_w=profile.peak_power_mw * 1e6,
                )
            )
        return jobs

    async def _record_setpoints(self, writes: list[SetpointWrite]) -> None:
        self._setpoint_buffer.extend(writes)
        excess = len(self._setpoint_buffer) - SETPOINT_BUFFER_MAX
        if excess > 0:
            del self._setpoint_buffer[:excess]
            log.warning("setpoint_history_dropped", writes=excess, reason="journal behind")

    async def _flush_setpoints(self) -> None:
        """Setpoint history goes to the journal once a second, in one transaction."""
        while True:
            await asyncio.sleep(SETPOINT_FLUSH_S)
            await self._flush_setpoints_once()

    async def _flush_setpoints_once(self) -> None:
        if not self._setpoint_buffer or self.journal is None:
            return
        rows = [
            (w.at, w.device, w.point, w.value, w.ok, w.error, w.latency_s)
            for w in self._setpoint_buffer
        ]
        self._setpoint_buffer.clear()
        await self.journal.call(self.journal.sync.record_setpoints, rows)

    def _on_fallback(self, fallback: Fallback) -> None:
        now = time.monotonic()
        if self.workloads is None or now - self._last_fallback_notice < FALLBACK_NOTICE_S:
            return
        self._last_fallback_notice = now
        log.warning("workload_fallback", reason=fallback.reason)
        asyncio.get_running_loop().create_task(
            self.workloads.site_notice(
                "power_request",
                {
                    "reason": fallback.reason,
                    "shortfall_mw": round(fallback.shortfall_w / 1e6, 3),
                    "ramp_mw_per_s": round(fallback.ramp_w_per_s / 1e6, 3),
                },
            )
        )

    def _on_guard(self, event: GuardEvent) -> None:
        """The control guard tripped or re-armed (called on the loop by the control cycle, which
        logs it): tell the OPC UA and MMS servers now; audit and notify workloads in the
        background."""
        if self.opcua is not None:
            self.opcua.control_guard(event)
        if self.mms is not None:
            self.mms.control_guard(event)
        task = asyncio.get_running_loop().create_task(
            self._record_guard(event), name="control-guard-record"
        )
        self._guard_records.add(task)
        task.add_done_callback(self._guard_records.discard)

    async def _record_guard(self, event: GuardEvent) -> None:
        """The audit record and the ``control_guard`` site notice of one guard event."""
        async with self._guard_order:
            await self._record_guard_now(event)

    async def _record_guard_now(self, event: GuardEvent) -> None:
        at = datetime.fromtimestamp(event.at, UTC)
        reason = event.reason.value if event.reason is not None else None
        action = "guard_trip" if event.tripped else "guard_rearm"
        if self.journal is not None:
            entry = AuditEntry(
                actor="control:guard",
                role=None,
                action=action,
                target=self.config.site.name,
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

    async def stop(self) -> None:
        """Stop everything started, in reverse order, within the configured timeout."""
        self.notifier.notify("STOPPING=1")
        self._ready = False
        log.info("gateway_stopping")
        if self.heap is not None:
            self.heap.uninstall()
        deadline = self.config.daemon.shutdown_timeout_s
        try:
            async with asyncio.timeout(deadline):
                if self._watchdog_task is not None:
                    self._watchdog_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._watchdog_task
                await self._stop_listeners()
                await self._stop_task("forecast")
                if self.control is not None:
                    await self.control.stop()
                if self._guard_records:  # the last guard event's audit record and notice
                    await asyncio.gather(*self._guard_records)
                await self._stop_task("setpoint-journal")
                await self._flush_setpoints_once()
                if self.workloads is not None:
                    await self.workloads.stop()
                await asyncio.gather(*(self._remove_poller(n) for n in list(self.pollers)))
                if self.journal is not None:
                    await self.journal.close()
        except TimeoutError:
            log.error("gateway_stop_timeout", timeout_s=deadline)
        log.info("gateway_stopped")

    async def _stop_listeners(self) -> None:
        if self.workloads is not None:
            self.workloads.hub.close()  # ends event streams so the listener can close
        if self.opcua is not None:
            await self.opcua.stop()
        if self.mms is not None:
            await self.mms.stop()
        for listener in (self.api_listener, self.metrics_listener):
            if listener is not None:
                await listener.stop()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, reload on SIGHUP, stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def reload(self) -> None:
        """SIGHUP: re-read the config file; apply what is safe, keep running on errors.

        Applied: logging level/format, the site's settings (audited, and in force at once in the
        control cycle, the scheduler and every surface), devices added, removed or changed
        (their pollers restart). Listener changes need a restart and are logged.
        """
        if self.config_path is None:
            log.warning("reload_skipped", reason="started without a config file")
            return
        self.notifier.notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload_rejected", problems=[f"{p}: {m}" for p, m in exc.problems])
            self.notifier.notify("READY=1")
            return
        if new.listeners != self.config.listeners:
            log.warning("reload_requires_restart", section="listeners")
        configure_logging(new.logging.level, new.logging.format)
        old_devices = {d.name: d for d in self.config.devices if d.enabled}
        new_devices = {d.name: d for d in new.devices if d.enabled}
        changed = [n for n in old_devices if new_devices.get(n) != old_devices[n]]
        added = [n for n in new_devices if n not in old_devices]
        self.config = new.model_copy(
            update={"listeners": self.config.listeners, "site": self.settings.current}
        )
        try:
            await self.settings.replace(new.site, Identity("config-file", "admin"))
        except PswdError as exc:  # the journal could not audit it: not in force
            log.error("reload_site_rejected", error=str(exc))
        for name in changed:
            await self._remove_poller(name)
        for name in changed + added:
            if name in new_devices:
                self._add_poller(name)
        log.info("reload_applied", restarted=changed, added=added)
        self.notifier.notify("READY=1")

    # ---- health ------------------------------------------------------------------------------

    def loops_healthy(self, now: float | None = None) -> tuple[bool, list[str]]:
        """Whether every supervised loop ticked recently; the names of those that did not."""
        now = time.monotonic() if now is None else now
        grace = self.config.daemon.watchdog_grace_s
        stale = [
            name
            for name, p in self.pollers.items()
            if now - max(p.stats.last_tick, self.started_at) > max(grace, 3 * p.stats.interval_s)
        ]
        dead = [name for name, s in self._supervised.items() if s.task is None or s.task.done()]
        if self.workloads is not None:
            dead += [t.get_name() for t in self.workloads.tasks if t.done()]
        bad = sorted(set(stale + dead))
        return not bad, bad

    def poll_stats(self) -> Sequence[PollStats]:
        return [p.stats for p in self.pollers.values()]

    def status(self) -> dict[str, Any]:
        healthy, bad = self.loops_healthy()
        return {
            "version": __version__,
            "site": self.config.site.name,
            "ready": self._ready,
            "healthy": healthy,
            "unhealthy_loops": bad,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "devices": {
                s.device: {
                    "up": s.up,
                    "polls": s.polls_total,
                    "errors": s.errors_total,
                    "overruns": s.overruns_total,
                    "last_error": s.last_error,
                }
                for s in self.poll_stats()
            },
        }

    async def _feed_watchdog(self, interval_s: float) -> None:
        while True:
            healthy, bad = self.loops_healthy()
            if healthy:
                self.notifier.notify("WATCHDOG=1")
            else:
                log.error("watchdog_withheld", unhealthy_loops=bad)
            await asyncio.sleep(interval_s)

    def _health_app(self) -> Starlette:
        collector = GatewayCollector(
            self.store,
            self._site,
            self.poll_stats,
            control_stats=lambda: self.control.stats if self.control is not None else None,
            ops=self._ops_view,
        )
        registry = make_registry(collector)
        ProcessCollector(registry=registry)

        async def metrics(_: Request) -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        async def healthz(_: Request) -> JSONResponse:
            status = self.status()
            return JSONResponse(status, status_code=200 if status["healthy"] else 503)

        async def readyz(_: Request) -> JSONResponse:
            status = self.status()
            ok = status["ready"] and status["healthy"]
            return JSONResponse(status, status_code=200 if ok else 503)

        return Starlette(
            routes=[
                Route("/metrics", metrics),
                Route("/healthz", healthz),
                Route("/readyz", readyz),
            ]
        )

    def _ops_view(self) -> OpsView:
        site, control = self._site(), self.config.control
        feed, journal = self.forecast, self.journal
        return OpsView(
            import_limit_w=site.import_limit_mw * 1e6,
            ramp_limit_w_per_s=site.grid_ramp_limit_mw_per_s * 1e6,
            soc_window=(control.soc_min, control.soc_max),
            journal_errors_total=journal.errors_total if journal is not None else 0,
            audit_total=dict(journal.sync.audit_counts) if journal is not None else {},
            forecast_updates_total=feed.updates_total if feed is not None else 0,
            forecast_failures_total=feed.failures_total if feed is not None else 0,
            forecast_last_update=(
                feed.last_update.timestamp()
                if feed is not None and feed.last_update is not None
                else None
            ),
            certificate_expiry=self._certificate_expiry,
            workloads_by_state=(
                Counter(w.state.value for w in self.workloads.active.values())
                if self.workloads is not None
                else {}
            ),
            http_latency=self._http_stats.by_route if self._http_stats is not None else {},
        )

    def _site(self) -> SiteConfig:
        return self.settings.current

    async def set_site_limit(self, what: str, value: float | bool, who: Identity) -> None:
        """An operator's new grid limit or demand-response state (OPC UA, IEC 61850): journalled
        and audited first, then in force everywhere at once (control, scheduler, surfaces).
        Kept until restart or reload."""
        await self.settings.set(what, value, who)

    async def _audit_setting(self, who: Identity, action: str, detail: dict[str, Any]) -> None:
        if self.journal is None:
            return
        entry = AuditEntry(
            actor=who.name,
            role=who.role,
            action=action,
            target=self.settings.current.name,
            outcome="accepted",
            detail=detail,
            at=datetime.now(UTC),
        )
        await self.journal.call(self.journal.sync.audit, entry)

    def _on_site(self, site: SiteConfig) -> None:
        """Every part that holds the site's settings sees a change at once."""
        self.config = self.config.model_copy(update={"site": site})
        if self.control is not None:
            self.control.site = site
        if self.workloads is not None:
            self.workloads.scheduler.site = site
            self.workloads.mark_dirty()  # placements are re-checked against the new limits

    async def _mms_operate(self, what: str, value: float | bool, caller: Identity) -> None:
        await self.set_site_limit(what, value, caller)

    async def _mms_refused(self, caller: Identity, action: str, why: str) -> None:
        if self.workloads is not None:
            await self.workloads.audit_refusal(caller, action, why)

    def _load_step_imminent(self) -> bool:
        """An announced job starts or stops within ``iec61850.load_step_lead_s`` (worked out at
        most once a second: the placed jobs may be thousands)."""
        now = time.time()
        cached_at, answer = self._load_step_cache
        if now - cached_at < 1.0:
            return answer
        lead = self.config.iec61850.load_step_lead_s
        answer = any(
            now <= start <= now + lead or now <= end <= now + lead
            for start, end, _ in self._placed_runs()
        )
        self._load_step_cache = (now, answer)
        return answer

    # ---- pollers -----------------------------------------------------------------------------

    def _start_task(self, name: str, factory: Callable[[], Any]) -> None:
        sup = _Supervised(name, factory)
        self._supervised[name] = sup
        sup.task = asyncio.create_task(self._supervise(sup), name=name)

    async def _stop_task(self, name: str) -> None:
        sup = self._supervised.pop(name, None)
        if sup is not None and sup.task is not None:
            sup.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sup.task

    def _add_poller(self, name: str) -> None:
        device = self.config.device(name)
        driver = build_driver(device, self.config)
        poller = Poller(driver, self.store, invalid_after_s=device.invalid_after_s)
        self.drivers[name] = driver
        self.pollers[name] = poller
        sup = _Supervised(f"poll:{name}", poller.run)
        self._supervised[name] = sup
        sup.task = asyncio.create_task(self._supervise(sup), name=sup.name)

    async def _remove_poller(self, name: str) -> None:
        sup = self._supervised.pop(name, None)
        self.pollers.pop(name, None)
        driver = self.drivers.pop(name, None)
        if sup is not None and sup.task is not None:
            sup.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sup.task
        if driver is not None:
            try:
                await asyncio.wait_for(driver.close(), 1.0)
            except (TimeoutError, PswdError, OSError) as exc:
                log.warning("driver_close_failed", device=name, error=str(exc))

    async def _supervise(self, sup: _Supervised) -> None:
        while True:
            try:
                await sup.factory()
                log.warning("task_returned", task=sup.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                sup.restarts += 1
                log.exception("task_crashed", task=sup.name, restarts=sup.restarts)
            await asyncio.sleep(RESTART_BACKOFF_S)

    async def _wait_first_polls(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.stats.polls_total > 0 for p in self.pollers.values()):
                return
            await asyncio.sleep(0.02)
        slow = [n for n, p in self.pollers.items() if p.stats.polls_total == 0]
        log.warning("ready_without_first_poll", devices=slow)


class HeapKeeper:
    """Keep the cyclic garbage collector off the request path.

    A full (generation 2) collection walks every tracked object; with thousands of workloads in
    memory that is a 50 to 200 ms stop of the event loop every few seconds under load. Survivors of
    a full collection are long-lived by definition, so they are frozen (``gc.freeze``) right
    after it and later full collections walk only what is new. Once an hour the frozen heap is
    released again, so cyclic garbage among once-long-lived objects is still reclaimed: one
    long pause per hour instead of one every few seconds.
    """

    def __init__(self, refreeze_after_s: float = GC_UNFREEZE_INTERVAL_S) -> None:
        self.refreeze_after_s = refreeze_after_s
        self.full_collections = 0
        self._thawed_at = time.monotonic()
        self._threshold = gc.get_threshold()

    def install(self) -> None:
        self._threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()
        gc.set_threshold(*self._threshold)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info["generation"] != 2:  # the oldest generation
            return
        self.full_collections += 1
        if time.monotonic() - self._thawed_at >= self.refreeze_after_s:
            gc.unfreeze()  # the next full collection sees everything once more
            self._thawed_at = time.monotonic()
        else:
            gc.freeze()  # young generations are empty now: this freezes only survivors


async def run_gateway(config_path: Path | None) -> int:
    """Entry point of ``pswd-gateway run``: returns the process exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        configure_logging()
        log.error(
            "config_invalid",
            source=exc.source,
            problems=[f"{p}: {m}" if p else m for p, m in exc.problems],
        )
        return 2
    configure_logging(config.logging.level, config.logging.format)
    gateway = Gateway(config, config_path=config_path, heap=HeapKeeper())
    try:
        await gateway.run()
    except (PswdError, OSError) as exc:
        log.error("gateway_failed", error=str(exc))
        return 1
    return 0
