"""The daemon: assembles the gateway's components and runs them; readiness, systemd, signals.

:class:`Gateway` builds each component and hands it to one :class:`~pswd_gateway.runtime.
Supervisor`, which starts them in this order and stops them in the reverse one:

journal → forecast feed (a supervised task) → workload service → pollers → metrics listener →
API listener → OPC UA server → MMS server → OpenADR 3 VEN → OpenADR 2.0b VEN → (first polls) →
control notices → setpoint recorder → control cycle → READY=1.

Long-running loops are supervised tasks: a crash is logged, counted and the task restarted after
a back-off; the systemd watchdog is fed only while the supervisor finds every loop healthy.
The site's settings have one owner (:class:`~pswd_gateway.site_settings.SiteSettings`); SIGHUP
re-reads the config file and applies what is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sdnotify
from starlette.types import ASGIApp

from pswd_gateway import __version__
from pswd_gateway.config import (
    GatewayConfig,
    MmsListenerConfig,
    ModbusDeviceConfig,
    SiteConfig,
    TlsListenerConfig,
    load_config,
)
from pswd_gateway.control.battery import ffr_from_signal
from pswd_gateway.control.cycle import ControlCycle
from pswd_gateway.control.grid import Announced, announced_jobs
from pswd_gateway.control_notices import ControlNotices, GuardListener
from pswd_gateway.domain.grid_signals import Effective, SignalSource
from pswd_gateway.domain.identity import SYSTEM, Identity
from pswd_gateway.domain.polling import PollStats
from pswd_gateway.domain.signals import GRID_POWER, HEAT_EXPORT_POWER
from pswd_gateway.domain.units import to_mw, to_si
from pswd_gateway.errors import ConfigError, PswdError
from pswd_gateway.forecasts.feed import ForecastFeed
from pswd_gateway.forecasts.providers import build_forecast_provider
from pswd_gateway.grid_signals import GridSignalService, OperatorLimit
from pswd_gateway.journal import (
    AsyncJournal,
    AuditAnchorWriter,
    AuditEntry,
    JournalRetention,
    RetentionPolicy,
    SetpointRecorder,
    anchor_path,
)
from pswd_gateway.logging import configure_logging, get_logger
from pswd_gateway.northbound.asgi import AsgiListener, ClientTls
from pswd_gateway.northbound.health import health_app
from pswd_gateway.northbound.http_api import ApiContext, create_app
from pswd_gateway.northbound.http_api.deps import Gate
from pswd_gateway.northbound.http_api.security import HttpStats, TokenBook
from pswd_gateway.northbound.http_api.site import site_view
from pswd_gateway.northbound.iec61850.link import MmsSettings
from pswd_gateway.northbound.iec61850.model import GooseAddress
from pswd_gateway.northbound.iec61850.process import MmsProcess
from pswd_gateway.northbound.iec61850.server import MmsHooks
from pswd_gateway.northbound.iec61850.tls import MmsTls
from pswd_gateway.northbound.metrics import GatewayCollector, OpsView
from pswd_gateway.northbound.opcua.server import OpcUaServer
from pswd_gateway.openadr.site import VenSite
from pswd_gateway.openadr.ven2b import OpenAdr2bVen
from pswd_gateway.openadr.ven3 import OpenAdr3Ven
from pswd_gateway.runtime import HeapKeeper, Supervisor
from pswd_gateway.scheduling.heat import requested_of
from pswd_gateway.scheduling.model import SiteForecast
from pswd_gateway.scheduling.scheduler import Scheduler
from pswd_gateway.scheduling.service import GridLimit, WorkloadService
from pswd_gateway.security.pki import days_left
from pswd_gateway.security.zones import Gatekeeper, Listener, Refusals, peer_ip
from pswd_gateway.site_settings import SiteSettings
from pswd_gateway.southbound.poller import Poller
from pswd_gateway.southbound.pollers import PollerSet
from pswd_gateway.store import PointStore

__all__ = ["Gateway", "SystemdNotifier", "run_gateway"]

log = get_logger("daemon")


CERTIFICATE_WARN_DAYS = 30.0
"""A listener's certificate this close to expiry is warned about in the log at start."""


def _note_certificate(expiry: dict[str, float], name: str, cert: Path | None) -> None:
    """Record when ``cert`` expires (metrics) and warn when it is within 30 days."""
    if cert is None:
        return
    try:
        left = days_left(cert)
    except (OSError, ValueError) as exc:
        log.error("certificate_unreadable", listener=name, certificate=str(cert), error=str(exc))
        return
    expiry[name] = time.time() + left * 86400
    if left < CERTIFICATE_WARN_DAYS:
        log.warning(
            "certificate_expires_soon",
            listener=name,
            certificate=str(cert),
            days_left=round(left, 1),
            fix="`pswd-gateway certs init --force` or your PKI's renewal, then restart",
        )


FIRST_POLLS_TIMEOUT_S = 5.0


class SystemdNotifier:
    """sd_notify READY/WATCHDOG/STOPPING/RELOADING; silent when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = (
            to_si(int(usec), "us")[0] / 2 if usec.isdigit() and int(usec) else None
        )
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)


@dataclass
class Gateway:
    """One running gateway. ``start()``, then ``stop()``; or ``run()`` until a signal."""

    config: GatewayConfig
    config_path: Path | None = None
    store: PointStore = field(default_factory=PointStore)
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)
    heap: HeapKeeper | None = None
    """Garbage-collector tuning; set by ``pswd-gateway run`` (it is process-wide)."""
    supervisor: Supervisor = field(default_factory=Supervisor, init=False)
    settings: SiteSettings = field(init=False)
    """The one owner of the site's settings (limits operators change, reloads)."""
    journal: AsyncJournal | None = field(default=None, init=False)
    forecast: ForecastFeed | None = field(default=None, init=False)
    workloads: WorkloadService | None = field(default=None, init=False)
    grid_signals: GridSignalService | None = field(default=None, init=False)
    """Grid signals from every door; their import limit is in force through ``settings``."""
    openadr3: OpenAdr3Ven | None = field(default=None, init=False)
    """The OpenADR 3 VEN (``[openadr3] enabled``): the VTN's events as grid signals."""
    openadr2b: OpenAdr2bVen | None = field(default=None, init=False)
    """The OpenADR 2.0b VEN (``[openadr2b] enabled``): the utility's events as grid signals."""
    southbound: PollerSet = field(init=False)
    metrics_listener: AsgiListener | None = field(default=None, init=False)
    api_listener: AsgiListener | None = field(default=None, init=False)
    opcua: OpcUaServer | None = field(default=None, init=False)
    mms: MmsProcess | None = field(default=None, init=False)
    recorder: SetpointRecorder | None = field(default=None, init=False)
    anchor: AuditAnchorWriter | None = field(default=None, init=False)
    retention: JournalRetention | None = field(default=None, init=False)
    control: ControlCycle | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    _http_stats: HttpStats | None = field(default=None, init=False)
    _certificate_expiry: dict[str, float] = field(default_factory=dict, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _watchdog_task: asyncio.Task[None] | None = field(default=None, init=False)
    _ready: bool = field(default=False, init=False)
    gate: Gatekeeper = field(init=False)
    """Zones and conduits at every listener's door (``[zones]``, ``[[conduits]]``)."""
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.gate = Gatekeeper(
            self.config.policy(),
            Refusals(audit=self._door_refused),
            rates=self.config.connection_rates(),
        )
        self.settings = SiteSettings(self.config.site, audit=self._audit_setting)
        self.settings.subscribe(self._on_site)
        self.southbound = PollerSet(self.config, self.store, self.supervisor)

    @property
    def pollers(self) -> dict[str, Poller]:
        return self.southbound.pollers

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Build and start every component in order; READY=1 once every device was polled."""
        self.started_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        log.info(
            "gateway_starting",
            version=__version__,
            site=self.config.site.name,
            devices=len(self.config.devices),
        )
        start = self.supervisor.start
        await self._start_workloads()
        await start(self.southbound)
        if self.config.listeners.metrics.enabled:
            self.metrics_listener = self._metrics_listener()
            await start(self.metrics_listener)
            _note_certificate(
                self._certificate_expiry, "metrics", self.config.listeners.metrics.tls_cert
            )
        if self.config.listeners.api.enabled and self.workloads is not None:
            self.api_listener = self._api_listener(self.workloads)
            await start(self.api_listener)
            api = self.config.listeners.api
            _note_certificate(self._certificate_expiry, "api", api.tls_cert)
            _note_certificate(self._certificate_expiry, "api-client-ca", api.tls_client_ca)
        if self.config.listeners.opcua.enabled:
            self.opcua = self._opcua_server()
            await start(self.opcua, "opcua")
            _note_certificate(self._certificate_expiry, "opcua", self.opcua.certificate_path)
        if self.config.listeners.iec61850.enabled:
            self.mms = self._mms_server()
            await start(self.mms, "iec61850")
            mms = self.config.listeners.iec61850
            _note_certificate(self._certificate_expiry, "iec61850", mms.tls_cert)
            _note_certificate(self._certificate_expiry, "iec61850-client-ca", mms.tls_client_ca)
        if self.config.openadr3.enabled and self.grid_signals is not None:
            self.openadr3 = OpenAdr3Ven(self.config.openadr3, self._ven_site(self.grid_signals))
            await start(self.openadr3)
        if self.config.openadr2b.enabled and self.grid_signals is not None:
            self.openadr2b = self._openadr2b(self.grid_signals)
            await start(self.openadr2b)
        await self.southbound.first_polls(FIRST_POLLS_TIMEOUT_S)
        await self._start_control()
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
            components=self.supervisor.names(),
            metrics_port=self.metrics_listener.port if self.metrics_listener else None,
            api_port=self.api_listener.port if self.api_listener else None,
        )

    async def _start_workloads(self) -> None:
        """Journal, forecast and the workload service (before any listener can reach them)."""
        cfg = self.config
        self.journal = AsyncJournal.open(cfg.storage.journal_path, cfg.storage.journal_synchronous)
        await self.supervisor.start(_Closing(self.journal), "journal")
        self.anchor = AuditAnchorWriter(self.journal, anchor_path(cfg.storage.journal_path))
        await self.supervisor.start(self.anchor)
        storage = cfg.storage
        self.retention = JournalRetention(
            self.journal,
            RetentionPolicy(
                setpoint_full_days=storage.setpoint_full_days,
                setpoint_days=storage.setpoint_days,
                workload_days=storage.workload_days,
            ),
            every_s=storage.prune_every_s,
        )
        await self.supervisor.start(self.retention)
        sched = cfg.scheduling
        slot_s = sched.slot_minutes * 60
        self.forecast = ForecastFeed(
            build_forecast_provider(sched.forecast, cfg.config_dir, slot_s),
            horizon=timedelta(hours=sched.horizon_h),
            slot_s=slot_s,
            refresh_s=sched.forecast.refresh_s,
            max_age_s=sched.forecast.stale_after_s,
        )
        try:
            async with asyncio.timeout(sched.forecast.timeout_s + 1.0):
                await self.forecast.refresh()
        except TimeoutError:
            log.warning("forecast_first_fetch_slow", timeout_s=sched.forecast.timeout_s)
        self.workloads = WorkloadService(
            cfg, self.journal, Scheduler(sched, cfg.site, heat=cfg.heat), self.forecast.current
        )
        self.forecast.on_update = self.workloads.mark_dirty
        self.workloads.on_rhythm = self._tell_rhythm
        await self.supervisor.start(self.workloads)
        self.grid_signals = GridSignalService(
            self.journal,
            self.settings,
            publish=self.workloads.hub.publish,
            planned_import_mw=self._planned_import_mw,
            measured=self._measured_mw,
            on_effective=self._on_grid_effective,
            hold_margin_mw=self.config.control.import_hold_margin_mw,
        )
        await self.supervisor.start(self.grid_signals)
        self.supervisor.spawn("forecast", self.forecast.run)

    async def _start_control(self) -> None:
        """Notices, the setpoint recorder and the control cycle (after the pollers: it needs
        their readings; it writes through them)."""
        listeners: list[GuardListener] = [s for s in (self.opcua, self.mms) if s is not None]
        notices = ControlNotices(self.config.site.name, self.journal, self.workloads, listeners)
        await self.supervisor.start(notices)
        if self.journal is not None:
            self.recorder = SetpointRecorder(self.journal)
            await self.supervisor.start(self.recorder)
        self.control = ControlCycle(
            self.config.control,
            self._site(),
            self.store,
            self.southbound.write,
            jobs=self._announced_jobs,
            record=self.recorder.record if self.recorder is not None else None,
            on_fallback=notices.on_fallback,
            on_guard=notices.on_guard,
            measure_window_s=self._measure_window_s(),
        )
        await self.supervisor.start(self.control)
        if self.grid_signals is not None:  # what the signals in force already ask
            self._on_grid_effective(self.grid_signals.effective())

    def _metrics_listener(self) -> AsgiListener:
        collector = GatewayCollector(
            self.store,
            self._site,
            self.poll_stats,
            control_stats=lambda: self.control.stats if self.control is not None else None,
            ops=self._ops_view,
        )
        return self._http_listener(health_app(collector, self.status), "metrics")

    def _http_listener(self, app: ASGIApp, name: Literal["api", "metrics"]) -> AsgiListener:
        """An HTTP listener as configured: TLS and mutual TLS, the zone policy at its door."""
        listener: TlsListenerConfig = getattr(self.config.listeners, name)
        return AsgiListener(
            app,
            listener.host,
            listener.port,
            name=name,
            tls_cert=listener.tls_cert,
            tls_key=listener.tls_key,
            client_tls=_client_tls(listener),
            admit=self.gate.door(name),
            refused=self._tls_refused(name),
        )

    def _api_listener(self, workloads: WorkloadService) -> AsgiListener:
        context = ApiContext(
            workloads, site_view(self.store, self._site, workloads), lambda: self._ready
        )
        app = create_app(self.config.api, context, policy=self.gate.policy)
        self._http_stats = app.state.http_stats
        app.state.grid_signals = self.grid_signals
        listener = self._http_listener(app, "api")
        app.state.peers = listener.peers
        return listener

    def _tls_refused(self, listener: Listener) -> Callable[[object, str, str], None]:
        def refused(peer: object, why: str, reason: str) -> None:
            ip = peer_ip(peer)
            self.gate.refusals.refuse(listener, str(ip or peer), why, reason)

        return refused

    def _opcua_server(self) -> OpcUaServer:
        return OpcUaServer(
            self.config,
            self.store,
            self._site,
            self.workloads,
            self._door(SignalSource.OPCUA),
            ramp=lambda: self.control.stats.grid_ramp_w_per_s() if self.control else None,
            door=self.gate.door("opcua"),
            signals=self.grid_signals,
        )

    def _mms_server(self) -> MmsProcess:
        """The MMS server in a process of its own (docs/iec61850.md#fault-isolation)."""
        mms = self.config.listeners.iec61850
        settings = self.config.iec61850
        server = MmsSettings(
            ied_name=settings.ied_name,
            host=mms.host,
            port=mms.port,
            max_connections=mms.max_connections,
            users=settings.users,
            anonymous_read=settings.anonymous_read,
            interval_s=settings.update_interval_ms / 1000.0,
            goose_interface=settings.goose_interface,
            goose_times_ms=(settings.goose_min_time_ms, settings.goose_max_time_ms),
            goose_address=GooseAddress(app_id=settings.goose_appid, mac=settings.goose_dst_mac),
            tls=_mms_tls(mms),
        )
        return MmsProcess(
            self.store,
            self._site,
            server,
            gate=self.gate,
            hooks=MmsHooks(
                operate=self._door(SignalSource.IEC61850),
                refused=self._refused,
                load_step_imminent=self._load_step_imminent,
            ),
            on_restart=self._audit_stack_restart,
            log_level=self.config.logging.level,
            log_format=self.config.logging.format,
            forecast=self._site_forecast,
        )

    async def _audit_stack_restart(self, detail: dict[str, Any]) -> None:
        """The MMS process crashed, hung or did not start, and is started again."""
        if self.journal is None:
            return
        entry = AuditEntry(
            actor=SYSTEM.name,
            role=None,
            action="iec61850 stack restarted",
            target=self.config.site.name,
            outcome="failed",
            detail=detail,
            at=datetime.now(UTC),
        )
        await self.journal.call(self.journal.sync.audit, entry)

    def _door(self, source: SignalSource) -> OperatorLimit:
        """An operator-limit callable: through the grid-signal service (its import limit and
        demand response are grid signals), or straight to the site settings without one."""
        if self.grid_signals is None:
            return self.settings.set
        return self.grid_signals.door(source)

    def _measured_mw(self) -> tuple[float | None, float | None]:
        """The grid import and the heat delivered to the heat network now, MW (``None``: no
        usable reading)."""
        snap = self.store.snapshot(time.time())
        site = self._site()
        grid = snap.usable(GRID_POWER, site)
        heat = snap.usable(HEAT_EXPORT_POWER, site)
        return (
            None if grid is None else to_mw(grid),
            None if heat is None else to_mw(heat),
        )

    def _on_grid_effective(self, effective: Effective) -> None:
        """The grid signals in force changed: the frequency response and the heat-recovery
        setpoint follow them (the import limit went through the site settings), and the
        plan's placement follows the heat requests open now or ahead."""
        self._follow_heat_requests()
        self._follow_grid_limit(effective)
        if self.control is None:
            return
        ffr = effective.ffr
        nominal = float(self._site().nominal_frequency_hz)
        self.control.shape_ffr(
            None if ffr is None else ffr_from_signal(ffr, self.config.control.ffr, nominal)
        )
        heat = effective.heat_request
        self.control.request_heat_supply(None if heat is None else heat.supply_temp_c)

    def _follow_heat_requests(self) -> None:
        """The scheduler places flexible workloads towards open heat requests' windows: a
        changed set of requests re-plans the movable ones at the next chance."""
        if self.workloads is None or self.grid_signals is None:
            return
        requests = requested_of(self.grid_signals.open_signals())
        scheduler = self.workloads.scheduler
        if requests != scheduler.heat_requests:
            scheduler.heat_requests = requests
            self.workloads.mark_dirty()

    def _follow_grid_limit(self, effective: Effective) -> None:
        """Running flexible workloads are asked to cap their power while a grid signal's
        limit binds (in the background: the events are journalled first)."""
        workloads, signals = self.workloads, self.grid_signals
        if workloads is None or signals is None:
            return
        limit = None
        if effective.import_limit_mw is not None:
            binding = {s.id: s for s in signals.open_signals()}.get(effective.import_limit_by or "")
            until = None if binding is None else binding.end
            limit = GridLimit(effective.import_limit_mw, effective.import_limit_by, until)
        task = asyncio.create_task(workloads.follow_grid_limit(limit), name="power-caps")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _site_forecast(self) -> SiteForecast | None:
        """The plan's site forecast now, for the MMS process's FSCH1 (None without a plan)."""
        return None if self.workloads is None else self.workloads.site_forecast()

    def _ven_site(self, signals: GridSignalService) -> VenSite:
        """What a VEN sees of the site: the grid-signal service, the grid meter's import now,
        the site's plan and the municipal heat offer (``[heat]`` as reloaded)."""
        workloads = self.workloads
        if workloads is None:
            raise RuntimeError("a VEN needs the workload service (its plan) started first")
        plan = workloads.site_forecast
        heat = (  # no heat plant (capacity 0): no heat report offered
            VenSite.heat_offer_from(signals, plan, lambda: self.config.heat)
            if self.config.heat.capacity_mw > 0
            else None
        )
        return VenSite(signals, lambda: self._measured_mw()[0], plan, heat_offer=heat)

    def _openadr2b(self, signals: GridSignalService) -> OpenAdr2bVen:
        """The OpenADR 2.0b VEN; its opt-in policy counts the battery's power the plan uses."""
        battery_mw = self.config.scheduling.bess_power_mw if self.config.site.bess else 0.0
        site = replace(self._ven_site(signals), battery_power_mw=battery_mw)
        return OpenAdr2bVen(self.config.openadr2b, site)

    def _planned_import_mw(self, start: datetime, end: datetime | None) -> float | None:
        """The highest planned grid import over ``[start, end)`` (a shed's baseline)."""
        if self.workloads is None:
            return None
        plan = self.workloads.site_forecast()
        slot = timedelta(seconds=plan.slot_s)
        rows = [
            r.grid_import_mw
            for r in plan.slots
            if r.start + slot > start and (end is None or r.start < end)
        ]
        return max(rows) if rows else None

    def _tell_rhythm(self, edges: Sequence[tuple[float, bool]]) -> None:
        """A running job's told rhythm edges, to the grid loop (none without control)."""
        if self.control is not None:
            self.control.tell_rhythm(edges)

    def _announced_jobs(self, now: float) -> list[Announced]:
        if self.workloads is None:
            return []
        return announced_jobs(self.workloads.runs(), now, self.config.control.announce_lead_s)

    def _load_step_imminent(self) -> bool:
        """An announced job starts or stops within ``iec61850.load_step_lead_s``."""
        if self.workloads is None:
            return False
        return self.workloads.load_step_within(time.time(), self.config.iec61850.load_step_lead_s)

    async def stop(self) -> None:
        """Stop every component, last started first, within the configured timeout."""
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
                if self.workloads is not None:
                    self.workloads.hub.close()  # ends event streams so the API closes at once
                await self.supervisor.stop_all()
        except TimeoutError:
            log.error("gateway_stop_timeout", timeout_s=deadline)
        log.info("gateway_stopped")

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
        rotated = self._rotate(new)
        if rotated:
            log.info("reload_rotated", **rotated)
            await self._audit_setting(Identity("config-file", "admin"), "config reload", rotated)
        self.config = new.model_copy(
            update={"listeners": self.config.listeners, "site": self.settings.current}
        )
        try:
            await self.settings.replace(new.site, Identity("config-file", "admin"))
        except PswdError as exc:  # the journal could not audit it: not in force
            log.error("reload_site_rejected", error=str(exc))
        restarted, added = await self.southbound.reconfigure(self.config)
        log.info("reload_applied", restarted=restarted, added=added)
        self.notifier.notify("READY=1")

    # ---- health ------------------------------------------------------------------------------

    def loops_healthy(self, now: float | None = None) -> tuple[bool, list[str]]:
        """Whether every supervised loop ticked recently; the names of those that did not."""
        bad = self.supervisor.unhealthy(time.monotonic() if now is None else now)
        return not bad, bad

    def poll_stats(self) -> Sequence[PollStats]:
        return self.southbound.stats()

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

    def _journal_disk(self) -> dict[str, int | None]:
        """The journal's size and the free space beside it (``None`` where unreadable)."""
        if self.journal is None:
            return {"journal_size_bytes": None, "journal_free_bytes": None}
        path = self.journal.sync.path
        try:
            size: int | None = self.journal.sync.size_bytes()
        except OSError:
            size = None
        try:
            stat = os.statvfs(path.parent)
            free: int | None = stat.f_bavail * stat.f_frsize
        except OSError:
            free = None
        return {"journal_size_bytes": size, "journal_free_bytes": free}

    def _ops_view(self) -> OpsView:
        control = self.config.control
        feed, journal = self.forecast, self.journal
        return OpsView(
            soc_window=(control.soc_min, control.soc_max),
            journal_errors_total=journal.errors_total if journal is not None else 0,
            **self._journal_disk(),
            journal_pruned_total=(
                dict(self.retention.pruned_total) if self.retention is not None else {}
            ),
            audit_total=dict(journal.sync.audit_counts) if journal is not None else {},
            audit_head_entry=(
                self.anchor.head.entry
                if self.anchor is not None and self.anchor.head is not None
                else None
            ),
            forecast_updates_total=feed.updates_total if feed is not None else 0,
            forecast_failures_total=feed.failures_total if feed is not None else 0,
            forecast_last_update=(
                feed.last_update.timestamp()
                if feed is not None and feed.last_update is not None
                else None
            ),
            forecast_age_s=feed.age_s() if feed is not None else None,
            forecast_stale=feed is not None and feed.stale(),
            certificate_expiry=self._certificate_expiry,
            conduit_refusals={(str(a), b): n for (a, b), n in self.gate.refusals.total.items()},
            conduit_admissions={(str(a), b): n for (a, b), n in self.gate.admitted.items()},
            workloads_by_state=(
                Counter(w.state.value for w in self.workloads.active.values())
                if self.workloads is not None
                else {}
            ),
            http_latency=self._http_stats.by_route if self._http_stats is not None else {},
            iec61850_up=self.mms.up if self.mms is not None else None,
            iec61850_restarts_total=self.mms.restarts_total if self.mms is not None else 0,
            opcua_refusals=self.opcua.refusals() if self.opcua is not None else {},
        )

    # ---- site settings -----------------------------------------------------------------------

    def _measure_window_s(self) -> float:
        """The grid meter's and the battery's measurement window, the longer (s)."""
        site = self._site()
        windows = [0.0]
        for name in (site.grid_meter, site.bess):
            device = next((d for d in self.config.devices if d.name == name), None)
            if isinstance(device, ModbusDeviceConfig):
                windows.append(device.measurement_refresh_s)
        return max(windows)

    def _site(self) -> SiteConfig:
        return self.settings.current

    async def set_site_limit(self, what: str, value: float | bool, who: Identity) -> None:
        """An operator's new grid limit or demand-response state: see :meth:`SiteSettings.set`."""
        await self.settings.set(what, value, who)

    def _rotate(self, new: GatewayConfig) -> dict[str, Any]:
        """Credentials and the zone policy from a reloaded config, in force for the next
        request or connection: API tokens, OPC UA users, MMS users, zones and conduits. What
        changed, by name (never a secret or hash), for the log and the audit."""
        old = self.config
        changed: dict[str, Any] = {}
        app = self.api_listener.app if self.api_listener is not None else None
        gate = getattr(getattr(app, "state", None), "gate", None)
        if new.api.tokens != old.api.tokens:
            changed["api.tokens"] = _names_diff(old.api.tokens, new.api.tokens)
            if isinstance(gate, Gate):
                gate = replace(gate, tokens=TokenBook(new.api))
        if (new.zones, new.conduits) != (old.zones, old.conduits):
            changed["conduits"] = _names_diff(old.conduits, new.conduits)
            self.gate.policy = new.policy()
            if isinstance(gate, Gate):
                gate = replace(gate, policy=self.gate.policy)
        if app is not None and gate is not None:
            app.state.gate = gate  # type: ignore[attr-defined]
        before = (old.opcua.users, old.opcua.certificate_users)
        after = (new.opcua.users, new.opcua.certificate_users)
        if after != before:
            changed["opcua.users"] = _names_diff((*before[0], *before[1]), (*after[0], *after[1]))
            if self.opcua is not None:
                self.opcua.users.replace(*after)
        if new.iec61850.users != old.iec61850.users:
            changed["iec61850.users"] = _names_diff(old.iec61850.users, new.iec61850.users)
            if self.mms is not None:
                self.mms.replace_users(new.iec61850.users)
        return changed

    async def _audit_setting(self, who: Identity, action: str, detail: dict[str, Any]) -> None:
        if self.journal is None:
            return
        entry = AuditEntry(
            actor=who.name,
            role=who.role,
            action=action,
            target=self.settings.current.name,
            outcome="accepted",
            detail={**detail, **who.via},
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

    async def _refused(self, caller: Identity, action: str, why: str) -> None:
        if self.workloads is not None:
            await self.workloads.audit_refusal(caller, action, why)

    def _door_refused(self, listener: Listener, peer: str, why: str, count: int) -> None:
        """A peer refused at a listener's door (any thread): logged, and audited (throttled)."""
        log.warning("conduit_refused", listener=listener, peer=peer, why=why, refused=count)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        who = Identity(f"{listener}:{peer}", "none")
        reason = f"{why} ({count} refused since the last record of this peer)"
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and here
            loop.call_soon_threadsafe(self._spawn_refusal, who, f"{listener} connection", reason)

    def _spawn_refusal(self, who: Identity, action: str, why: str) -> None:
        task = asyncio.create_task(self._refused(who, action, why), name="audit-refusal")
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _names_diff(old: Sequence[Any], new: Sequence[Any]) -> dict[str, list[str]]:
    """Entries (with a ``name``) added, removed and changed between two lists."""
    before = {item.name: item for item in old}
    after = {item.name: item for item in new}
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(n for n in before.keys() & after.keys() if before[n] != after[n]),
    }


def _mms_tls(listener: MmsListenerConfig) -> MmsTls | None:
    """MMS over TLS as configured (the config requires the client CA with the certificate)."""
    if listener.tls_cert is None or listener.tls_key is None or listener.tls_client_ca is None:
        return None
    return MmsTls(
        listener.tls_cert,
        listener.tls_key,
        listener.tls_client_ca,
        listener.tls_crl,
        listener.tls_min_version,
    )


def _client_tls(listener: TlsListenerConfig) -> ClientTls | None:
    if listener.tls_client_ca is None:
        return None
    return ClientTls(
        listener.tls_client_ca, listener.tls_client_auth == "required", listener.tls_crl
    )


@dataclass
class _Closing:
    """A resource that is opened when built and only needs closing (the journal)."""

    resource: AsyncJournal

    async def start(self) -> None:
        """Opened already."""

    async def stop(self) -> None:
        await self.resource.close()


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
