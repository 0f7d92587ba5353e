"""The MMS server (libiec61850 through pyiec61850-ng) in its own thread.

libiec61850 calls block, so the server and every update live on one worker thread. The asyncio
side computes a batch from the store once per cycle and hands it over; the worker applies the
whole batch under one model lock (``IedServer_lockDataModel``), so a client never reads half a
cycle. Values are served in the table's units with the point's quality (good / questionable /
invalid validity, and the detailQual of a doubtful reading: :data:`DETAIL_QUAL`) and source
timestamp; an invalid device is served as invalid, never as a stale good value.

The import forecast (FSCH1/FSCC1, :mod:`.schedule`) is handed over the same way: a new schedule
(:meth:`MmsServer.replace_schedule`) is written whole by :class:`ScheduleWriter` under one model
lock; the entry in force (``SchdEntr``, ``ValMV``) follows the clock in each batch.

Everything after the model is built goes through :mod:`native` (ctypes, which lets go of the
interpreter lock during each call): libiec61850's thread calls back into Python for
associations (ACSE password → user, or over TLS the client certificate → its holder),
connections (allowed networks) and controls while it holds its model lock.

With ``tls`` it serves MMS over TLS (:mod:`.tls`). libiec61850 hands the authenticator the
client certificate the handshake verified when the association carries no password; its
holder (``cert:<name>`` with the certificate's role, :func:`~pswd_gateway.security.pki.
certificate_holder`) is the caller. A changed CRL is read again at the next connection or
association and handed to libiec61850 then (this libiec61850 serves every connection on its one
server thread, the thread these callbacks run on, so no handshake reads the CRL meanwhile): the
first association after a revocation is refused here, the next ones at the handshake, and an
operate on an association opened before it is refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import itertools
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final

from pswd_gateway.config import Iec61850UserConfig, SiteConfig
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.domain.points import NOT_AVAILABLE, OUT_OF_RANGE, Point, Quality
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.iec61850 import native, schedule
from pswd_gateway.northbound.iec61850.controls import (
    ANONYMOUS,
    Verdict,
    float32_decimal,
    judge,
)
from pswd_gateway.northbound.iec61850.model import (
    CONTROLS,
    TABLE,
    Context,
    GooseAddress,
    ScheduleNodes,
    build_model,
)
from pswd_gateway.northbound.iec61850.schedule import (
    EnablingError,
    ForecastSchedule,
    ScheduleState,
)
from pswd_gateway.northbound.iec61850.tls import Handshakes, MmsTls, add_crl, configure
from pswd_gateway.security.passwords import verify_password
from pswd_gateway.security.pki import CertificateHolder, RevocationList, certificate_holder
from pswd_gateway.security.zones import Admission
from pswd_gateway.store import PointStore

__all__ = ["DETAIL_QUAL", "MmsHooks", "MmsServer", "quality_bits"]

log = get_logger("iec61850")

VALIDITY: Final = {Quality.GOOD: 0, Quality.INVALID: 2, Quality.QUESTIONABLE: 3}
"""IEC 61850-7-3 quality validity bits as libiec61850 encodes them."""

DETAIL_QUAL: Final[dict[str, tuple[Quality, int]]] = {
    OUT_OF_RANGE: (Quality.QUESTIONABLE, 0x0008),  # QUALITY_DETAIL_OUT_OF_RANGE
    NOT_AVAILABLE: (Quality.INVALID, 0x0040),  # QUALITY_DETAIL_FAILURE
}
"""A point's reason (``Point.reason``) → the least validity it allows and its IEC 61850-7-3
detailQual bit. outOfRange: the value is beyond its predefined range (questionable). A device
that says it has no value is a failure its supervision detected (invalid); oldData would say the
value was not updated in time, which is a late device's questionable quality, not this."""

Update = tuple[str, float, int, int]
"""(LD/LN.DO, value, quality bits, timestamp ms)."""

SCHEDULE_ENTRY: Final = f"{schedule.LD}/{schedule.SCHEDULE_LN}.SchdEntr"
SCHEDULE_VALUE: Final = f"{schedule.LD}/{schedule.SCHEDULE_LN}.ValMV"
CONTROLLER_VALUE: Final = f"{schedule.LD}/{schedule.CONTROLLER_LN}.ValMV"
SCHEDULE_KINDS: Final = {SCHEDULE_ENTRY: "INS", SCHEDULE_VALUE: "MV", CONTROLLER_VALUE: "MV"}
"""The schedule's data objects that change with time (the entry in force), served like rows."""


@dataclass(frozen=True)
class ScheduleWrite:
    """A new forecast schedule for the worker thread: every entry, the start time and the
    revision, under one model lock."""

    schedule: ForecastSchedule
    revision: int


Work = list[Update] | ScheduleWrite | None
"""What the worker thread takes from its queue (None: stop)."""


@dataclass
class ScheduleWriter:
    """Writes FSCH1 and FSCC1 on the worker thread: their state before the first schedule, and
    each new schedule under one model lock."""

    nodes: ScheduleNodes
    running: bool = False
    """FSCH1 serves a schedule (SchdSt running)."""

    def idle(self, lib: Any, server: int) -> None:
        """Before the first schedule: FSCH1 not ready (no valid values), its value and the
        controller's invalid."""
        nodes = self.nodes
        now_ms = int(time.time() * 1000)
        invalid = VALIDITY[Quality.INVALID]
        lib.IedServer_lockDataModel(server)
        try:
            for (value, q, t), code in (
                (nodes.state, ScheduleState.NOT_READY),
                (nodes.error, EnablingError.MISSING_VALID_VALUES),
            ):
                lib.IedServer_updateInt32AttributeValue(server, value, code)
                lib.IedServer_updateQuality(server, q, VALIDITY[Quality.GOOD])
                lib.IedServer_updateUTCTimeAttributeValue(server, t, now_ms)
            for _, q, t in (nodes.value, nodes.controller_value, nodes.active_start,
                            nodes.active_ref):  # fmt: skip
                lib.IedServer_updateQuality(server, q, invalid)
                lib.IedServer_updateUTCTimeAttributeValue(server, t, now_ms)
        finally:
            lib.IedServer_unlockDataModel(server)

    def write(self, lib: Any, server: int, work: ScheduleWrite) -> None:
        """Every entry (MW), StrTm01, the revision, and the state running, under one lock."""
        nodes = self.nodes
        t0 = time.perf_counter()
        forecast = work.schedule
        scale = 10.0**schedule.MULTIPLIER
        start_ms = round(forecast.start_ts * 1000)
        now_ms = int(time.time() * 1000)
        good = VALIDITY[Quality.GOOD]
        lib.IedServer_lockDataModel(server)
        try:
            for attr, value_w in zip(nodes.values, forecast.values_w, strict=True):
                lib.IedServer_updateFloatAttributeValue(server, attr, value_w / scale)
            lib.IedServer_updateUTCTimeAttributeValue(server, nodes.start, start_ms)
            lib.IedServer_updateInt32AttributeValue(server, nodes.revision, work.revision)
            stamp, q, t = nodes.active_start
            lib.IedServer_updateUTCTimeAttributeValue(server, stamp, start_ms)
            lib.IedServer_updateQuality(server, q, good)
            lib.IedServer_updateUTCTimeAttributeValue(server, t, now_ms)
            if not self.running:  # the state changes once: not ready → running
                for (value, q, t), code in (
                    (nodes.state, ScheduleState.RUNNING),
                    (nodes.error, EnablingError.NONE),
                ):
                    lib.IedServer_updateInt32AttributeValue(server, value, code)
                    lib.IedServer_updateQuality(server, q, good)
                    lib.IedServer_updateUTCTimeAttributeValue(server, t, now_ms)
                _, q, t = nodes.active_ref
                lib.IedServer_updateQuality(server, q, good)
                lib.IedServer_updateUTCTimeAttributeValue(server, t, now_ms)
                self.running = True
        finally:
            lib.IedServer_unlockDataModel(server)
        took_ms = round((time.perf_counter() - t0) * 1000, 2)
        log.debug("mms_schedule_written", revision=work.revision, start_ts=forecast.start_ts,
                 entries=len(forecast.values_w), took_ms=took_ms)  # fmt: skip


CERTIFICATE_TOKENS: Final = 1 << 32
"""Security tokens of certificate holders start here (a password user's is its index + 1)."""
SWEEP_S: Final = 0.5
"""How often unfinished TLS handshakes are looked for."""


@dataclass
class MmsStats:
    batches_total: int = 0
    updates_total: int = 0
    last_batch_s: float = 0.0
    connections_open: int = 0
    connections_refused_total: int = 0
    associations_refused_total: int = 0
    controls_accepted_total: int = 0
    controls_refused_total: int = 0
    handshakes_refused_total: int = 0
    """TLS handshakes refused or cut (no certificate, another CA's, revoked, too slow)."""


def quality_bits(quality: Quality, reasons: frozenset[str] = frozenset()) -> int:
    """The ``q`` served: validity from ``quality``, made worse where a reason asks for it, with
    the detailQual bit of each reason (:data:`DETAIL_QUAL`; an unknown reason adds nothing)."""
    worst, detail = quality, 0
    for reason in reasons:
        least, bit = DETAIL_QUAL.get(reason, (Quality.GOOD, 0))
        worst = max(worst, least, key=lambda q: q.rank)
        detail |= bit
    return VALIDITY[worst] | detail


async def _nothing(*_args: Any) -> None:
    return None


@dataclass
class MmsHooks:
    """What the server asks of the rest of the gateway."""

    operate: Callable[[str, float | bool, Identity], Coroutine[Any, Any, None]] = _nothing
    """Carry out an accepted control: (site setting, value, caller); journal and audit first."""
    refused: Callable[[Identity, str, str], Coroutine[Any, Any, None]] = _nothing
    """Audit a refusal: (caller, action, why)."""
    load_step_imminent: Callable[[], bool] = lambda: False
    peer_refused: Callable[[str, str, str], None] = lambda *_: None
    """Count and audit a peer refused before its association (a TLS handshake refused or
    cut): (its address, why, reason label). Called on libiec61850's thread or the loop."""


def _never_raise(fn: Callable[..., Any], default: Any) -> Callable[..., Any]:
    """A callback for C: an exception is logged and ``default`` answered (it must not escape
    into libiec61850)."""

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            log.exception("mms_callback_failed", callback=fn.__name__)
            return default

    return call


def _loopback_door(peer: object) -> Admission | None:
    """Without a policy: this machine only, with every access its users' roles have."""
    ip = peer if isinstance(peer, ipaddress.IPv4Address | ipaddress.IPv6Address) else None
    if ip is None or not ip.is_loopback:
        return None
    return Admission("iec61850", "local", "local-iec61850", "configure")


def peer_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in libiec61850's ``host:port`` (``[v6]:port``) peer string."""
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass
class _Users:
    """ACSE password → user. A password that verified is remembered (by digest), so PBKDF2
    runs once per password per process on libiec61850's thread; wrong ones are not remembered
    (the memory stays bounded, and guessing stays slow)."""

    users: tuple[Iec61850UserConfig, ...]
    _known: dict[bytes, int] = field(default_factory=dict)

    def find(self, password: bytes) -> int | None:
        key = hashlib.sha256(password).digest()
        if key in self._known:
            return self._known[key]
        text = password.decode("utf-8", "replace")
        for index, user in enumerate(self.users):
            if verify_password(text, user.password_hash):
                self._known[key] = index
                return index
        return None


class MmsServer:
    def __init__(
        self,
        store: PointStore,
        site: Callable[[], SiteConfig],
        *,
        ied_name: str = "PSWD",
        host: str = "127.0.0.1",
        port: int = 10102,
        max_connections: int = 10,
        door: Callable[[object], Admission | None] | None = None,
        users: tuple[Iec61850UserConfig, ...] = (),
        anonymous_read: bool = False,
        interval_s: float = 0.1,
        goose_interface: str | None = None,
        goose_times_ms: tuple[int, int] = (4, 1000),
        goose_address: GooseAddress | None = None,
        tls: MmsTls | None = None,
        hooks: MmsHooks | None = None,
    ) -> None:
        self.goose_interface = goose_interface
        self.goose_times_ms = goose_times_ms
        self.goose_address = goose_address or GooseAddress()
        self.store = store
        self.site = site
        self.ied_name = ied_name
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.door = door or _loopback_door
        """The zone policy at accept (``security.zones.Gatekeeper.door``): a connection that no
        conduit admits is aborted; an admitted one's users get the conduit's access as a
        ceiling over their role."""
        self._admissions: dict[str, Admission] = {}
        """The conduit of each open connection, by peer (``host:port``)."""
        self.users = _Users(users)
        self.anonymous_read = anonymous_read
        self.interval_s = interval_s
        self.hooks = hooks or MmsHooks()
        self.stats = MmsStats()
        self._queue: queue.Queue[Work] = queue.Queue(maxsize=4)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, tuple[float, int]] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qualities: dict[str, Quality] = {}
        self._subscription: Any = None
        self._callbacks: list[Any] = []
        self._refs: dict[str, tuple[int, int, int]] = {}
        """Per ``LD/LN.DO``: the C addresses of its value, q and t attributes."""
        self._pending: dict[str, Future[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._guard: GuardEvent | None = None
        self.tls = tls
        self._tls_config = 0
        self._crl = RevocationList(tls.crl) if tls is not None and tls.crl is not None else None
        self._holders: dict[int, CertificateHolder] = {}
        """The certificate holder of each association over TLS, by its security token."""
        self._tokens = itertools.count(CERTIFICATE_TOKENS)
        self._password_callers: dict[int, Identity] = {}
        """The user of each association that gave a password, by its security token: the user as
        it was when the association was made, whatever :meth:`replace_users` does later."""
        self._password_tokens = itertools.count(1)
        self._handshakes = (
            Handshakes(port, self._tls_refused, tls.handshake_timeout_s)
            if tls is not None
            else None
        )
        self._sweeping: asyncio.Task[None] | None = None
        self.rounds = 0
        """Items the worker thread has taken from its queue: batches, and empty ones that only
        take the model lock (the MMS process's heartbeat probes, see ``worker.py``)."""
        # the forecast schedule to serve (replace_schedule), the one handed to the worker last
        self._schedule: ScheduleWrite | None = None
        self._written: ScheduleWrite | None = None
        self._schedule_writer: ScheduleWriter | None = None

    # ---- lifecycle ----

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="iec61850-mms", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 10.0)
        if self._error is not None:
            raise self._error
        self._submit_schedule()  # before the first batch, which serves its entry in force
        self._subscription = self.store.subscribe(self._on_points)
        self._task = asyncio.create_task(self._feed(), name="iec61850-feed")
        if self._handshakes is not None:
            self._sweeping = asyncio.create_task(self._sweep(), name="iec61850-handshakes")
        log.info(
            "mms_started",
            host=self.host,
            port=self.port,
            ied=self.ied_name,
            max_connections=self.max_connections,
            users=len(self.users.users),
            anonymous_read=self.anonymous_read,
            tls=self.tls is not None,
        )

    def _on_points(self, points: Sequence[Point]) -> None:
        """A quality change (a device going or coming back) is an event: publish it now, not at
        the next cycle, so GOOSE carries it within milliseconds."""
        for p in points:
            if self._qualities.get(p.name) is not p.quality:
                self._qualities[p.name] = p.quality
                self.wake()

    def wake(self) -> None:
        """Publish now rather than at the next cycle (an event: a setting changed)."""
        if self._wake is not None:
            self._wake.set()

    def replace_schedule(self, forecast: ForecastSchedule, revision: int) -> None:
        """Serve ``forecast`` in FSCH1 (its entries, StrTm01, ``NamPlt.paramRev`` = ``revision``)
        from the next cycle. Call on the event loop (or before :meth:`start`)."""
        self._schedule = ScheduleWrite(forecast, revision)
        self.wake()

    def control_guard(self, event: GuardEvent) -> None:
        """The control guard tripped or re-armed: ``GGIO1.Ind4`` follows at once (by report and
        GOOSE), stamped with the event's time. Call on the event loop."""
        self._guard = event
        self.wake()

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        """The MMS worker thread or the feed task, when either ended without being stopped."""
        bad = []
        if self._thread is not None and not self._thread.is_alive():
            bad.append("iec61850-mms")
        if self._task is not None and self._task.done():
            bad.append("iec61850-feed")
        if self._sweeping is not None and self._sweeping.done():
            bad.append("iec61850-handshakes")
        return bad

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        for task in (self._task, self._sweeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1.0)
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    # ---- the worker thread: owns every libiec61850 object ----

    def _create(self, m: Any) -> tuple[int, Any]:
        lib = native.library()
        goose = self.goose_times_ms if self.goose_interface else None
        built = build_model(self.ied_name, m, goose, self.goose_address)
        config = lib.IedServerConfig_create()
        lib.IedServerConfig_setMaxMmsConnections(config, self.max_connections)
        # Services the gateway does not offer are not parsed either: file transfer (and its
        # vmd-filestore directory), client-defined data sets (libiec61850 1.6.1 has a
        # use-after-free with them and report control blocks) and logs.
        lib.IedServerConfig_enableFileService(config, False)  # noqa: FBT003 - C API
        lib.IedServerConfig_enableDynamicDataSetService(config, False)  # noqa: FBT003 - C API
        lib.IedServerConfig_enableLogService(config, False)  # noqa: FBT003 - C API
        self._callbacks = [
            native.AUTHENTICATOR(_never_raise(self._authenticate, False)),  # noqa: FBT003
            native.CONNECTION_HANDLER(_never_raise(self._connection, None)),
            native.CHECK_HANDLER(_never_raise(self._check, native.Check.HARDWARE_FAULT)),
            native.CONTROL_HANDLER(_never_raise(self._operate, native.Result.FAILED)),
            native.TLS_EVENT_HANDLER(_never_raise(self._tls_event, None)),
        ]
        authenticate, connection, check, operate, tls_event = self._callbacks
        try:
            self._tls_config = self._configure_tls(tls_event)
        except BaseException:
            lib.IedServerConfig_destroy(config)
            raise
        server = lib.IedServer_createWithConfig(
            native.address(built.model), self._tls_config or None, config
        )
        lib.IedServerConfig_destroy(config)
        if not server:
            self._destroy_tls()
            raise OSError("libiec61850 could not create the IEC 61850 server")
        lib.IedServer_setAuthenticator(server, authenticate, None)
        lib.IedServer_setConnectionIndicationHandler(server, connection, None)
        for data_object in built.controls.values():
            lib.IedServer_setPerformCheckHandler(server, native.address(data_object), check, None)
            lib.IedServer_setControlHandler(server, native.address(data_object), operate, None)
        lib.IedServer_setLocalIpAddress(server, self.host.encode())
        if self.goose_interface:
            lib.IedServer_setGooseInterfaceId(server, self.goose_interface.encode())
        self._refs = {
            ref: (native.address(value), native.address(q), native.address(t))
            for ref, (value, q, t) in built.attributes.items()
        }
        nodes = built.schedule
        self._schedule_writer = ScheduleWriter(nodes)
        self._refs |= {
            SCHEDULE_ENTRY: nodes.entry,
            SCHEDULE_VALUE: nodes.value,
            CONTROLLER_VALUE: nodes.controller_value,
        }
        # Nothing here is a client's to write: the schedule (SP, which libiec61850 1.6.1 lets
        # any association write by default), units (CF) and name plates (DC, denied already).
        for fc in (m.IEC61850_FC_SP, m.IEC61850_FC_CF, m.IEC61850_FC_DC):
            lib.IedServer_setWriteAccessPolicy(server, fc, m.ACCESS_POLICY_DENY)
        return server, built.model

    def _run(self) -> None:
        import pyiec61850.pyiec61850 as m  # noqa: PLC0415 - loads the C library in this thread

        lib = native.library()
        try:
            server, model = self._create(m)
            lib.IedServer_start(server, self.port)
            running = lib.IedServer_isRunning(server)
            if running and self.goose_interface:
                lib.IedServer_enableGoosePublishing(server)
        except Exception as exc:  # noqa: BLE001 - any failure is reported to start()
            self._error = exc
            self._ready.set()
            return
        if not running:
            lib.IedServer_destroy(server)
            self._destroy_tls()
            self._error = OSError(f"IEC 61850 server did not start on {self.host}:{self.port}")
            self._ready.set()
            return
        writer = self._schedule_writer
        assert writer is not None
        writer.idle(lib, server)
        self._ready.set()
        kinds = {row.reference: row.cdc for row in TABLE} | SCHEDULE_KINDS
        try:
            while (work := self._queue.get()) is not None:
                if isinstance(work, ScheduleWrite):
                    writer.write(lib, server, work)
                else:
                    self._apply(lib, server, kinds, work)
                self.rounds += 1
        finally:
            lib.IedServer_stop(server)
            lib.IedServer_destroy(server)
            self._destroy_tls()
            m.IedModel_destroy(model)

    def _configure_tls(self, events: Any) -> int:
        """libiec61850's TLS configuration (0 without TLS), with the CRL as read now."""
        if self.tls is None:
            return 0
        crl = None
        if self._crl is not None:
            try:
                self._crl.refresh()
            except (OSError, ValueError) as exc:
                where = f"listeners.iec61850.tls_crl: cannot read {self._crl.path}"
                raise OSError(f"{where}: {exc}") from None
            crl = self._crl.data
            log.info("crl_loaded", crl=str(self._crl.path), revoked=len(self._crl.serials))
        return configure(self.tls, events, crl)

    def _destroy_tls(self) -> None:
        if self._tls_config:
            native.library().TLSConfiguration_destroy(self._tls_config)
            self._tls_config = 0

    def _apply(self, lib: Any, server: int, kinds: dict[str, str], batch: list[Update]) -> None:
        t0 = time.perf_counter()
        lib.IedServer_lockDataModel(server)
        try:
            for ref, value, quality, ts_ms in batch:
                attr, q, t = self._refs[ref]
                kind = kinds[ref]
                if kind in {"SPS", "SPC"}:
                    lib.IedServer_updateBooleanAttributeValue(server, attr, value >= 0.5)
                elif kind == "INS":
                    lib.IedServer_updateInt32AttributeValue(server, attr, round(value))
                elif kind == "BCR":
                    lib.IedServer_updateInt64AttributeValue(server, attr, round(value))
                else:
                    lib.IedServer_updateFloatAttributeValue(server, attr, value)
                lib.IedServer_updateQuality(server, q, quality)
                lib.IedServer_updateUTCTimeAttributeValue(server, t, ts_ms)
        finally:
            lib.IedServer_unlockDataModel(server)
        if batch:  # an empty one is a probe: it only shows the model lock can be taken
            self.stats.batches_total += 1
            self.stats.updates_total += len(batch)
            self.stats.last_batch_s = time.perf_counter() - t0

    # ---- callbacks from libiec61850's thread (ctypes holds the interpreter lock for them) ----

    def _refuse(self, caller: Identity, action: str, why: str) -> None:
        log.warning("mms_refused", user=caller.name, role=caller.role, action=action, why=why)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self.hooks.refused(caller, action, why), loop)

    def _authenticate(self, _param: Any, auth: Any, token: Any, _app: Any) -> bool:
        certificate = native.certificate_of(auth)
        if certificate is not None:
            return self._associate(certificate, token)
        password = native.password_of(auth)
        if password is None:
            if not self.anonymous_read:
                self.stats.associations_refused_total += 1
                self._refuse(ANONYMOUS, "mms association", "no password (anonymous_read off)")
            return self.anonymous_read
        users = self.users  # one table for the whole check, even if it is replaced meanwhile
        index = users.find(password)
        if index is None:
            self.stats.associations_refused_total += 1
            self._refuse(Identity("unknown", "none"), "mms association", "wrong password")
            return False
        user = users.users[index]
        key = next(self._password_tokens)  # below CERTIFICATE_TOKENS: 2**32 associations
        self._password_callers[key] = Identity(f"mms:{user.name}", user.role)
        token[0] = key
        return True

    def replace_users(self, users: tuple[Iec61850UserConfig, ...]) -> None:
        """New ACSE users (a reloaded config): the next associations are judged by them; open
        ones keep the user they associated as (the gateway re-judges each of their operates
        against its own, new, users)."""
        self.users = _Users(users)
        log.info("mms_users_replaced", users=len(users))

    def _associate(self, certificate: bytes, token: Any) -> bool:
        """An association over TLS without a password: the certificate the handshake verified
        names the caller, unless the CRL revoked it since libiec61850 last read it."""
        holder = certificate_holder(certificate)
        if holder is None:
            self.stats.associations_refused_total += 1
            why = "the client certificate names no holder with a role (urn:pswd:role:<role>)"
            self._refuse(Identity("cert:unknown", "none"), "mms association", why)
            return False
        revoked = self._revoked(holder)
        if revoked is not None:
            self.stats.associations_refused_total += 1
            self._refuse(holder, "mms association", revoked)
            return False
        key = next(self._tokens)
        self._holders[key] = holder
        token[0] = key
        return True

    def _revoked(self, who: Identity) -> str | None:
        """Why ``who`` may not act any more: a certificate holder the CRL now revokes."""
        if not isinstance(who, CertificateHolder) or self._crl is None:
            return None
        self._crl_current()
        serial = who.serial
        if self._crl.revokes(serial):
            return f"client certificate {serial:X} of {who.name} is revoked"
        return None

    def _crl_current(self) -> None:
        """Read the CRL again if it changed, and hand it to libiec61850 for the next handshakes.
        Called on libiec61850's server thread only (see the module docstring)."""
        crl = self._crl
        if crl is None or not self._tls_config:
            return
        try:
            changed = crl.refresh()
        except (OSError, ValueError) as exc:  # the last list read stays in force
            log.error("crl_unreadable", crl=str(crl.path), error=str(exc))
            return
        if changed:
            native.library().TLSConfiguration_resetCRL(self._tls_config)
            loaded = add_crl(self._tls_config, crl.data)
            log.info("crl_loaded", crl=str(crl.path), revoked=len(crl.serials), tls=loaded)

    def _tls_event(
        self, _param: Any, level: int, code: int, message: bytes | None, connection: Any
    ) -> None:
        assert self._handshakes is not None
        self._handshakes.event(level, code, message, connection)

    def _tls_refused(self, peer: str, why: str, reason: str) -> None:
        self.stats.handshakes_refused_total += 1
        log.warning("mms_refused", peer=peer, action="mms tls handshake", why=why, reason=reason)
        self.hooks.peer_refused(peer, why, reason)

    async def _sweep(self) -> None:
        """Cut TLS handshakes that do not finish (:meth:`.tls.Handshakes.sweep`)."""
        assert self._handshakes is not None
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self._handshakes.sweep(time.monotonic())
            except Exception:
                log.exception("mms_handshake_sweep_failed")

    def _connection(self, _server: Any, connection: Any, connected: bool, _param: Any) -> None:
        lib = native.library()
        if not connected:
            peer = (lib.ClientConnection_getPeerAddress(connection) or b"").decode(errors="replace")
            token = lib.ClientConnection_getSecurityToken(connection)
            if token:
                self._holders.pop(int(token), None)
                self._password_callers.pop(int(token), None)
            if self._admissions.pop(peer, None) is not None:
                self.stats.connections_open = max(0, self.stats.connections_open - 1)
            return
        self._crl_current()
        peer = (lib.ClientConnection_getPeerAddress(connection) or b"").decode(errors="replace")
        ip = peer_ip(peer)
        admission = self.door(ip) if ip is not None else None
        if admission is None:  # the door counted it and audits it (once a minute per peer)
            self.stats.connections_refused_total += 1
            log.warning("mms_refused", peer=peer, action="mms connection", why="no conduit")
            lib.ClientConnection_abort(connection)
            return
        self._admissions[peer] = admission
        self.stats.connections_open += 1

    def _caller(self, action: Any) -> Identity:
        lib = native.library()
        connection = lib.ControlAction_getClientConnection(action)
        token = lib.ClientConnection_getSecurityToken(connection) if connection else None
        who: Identity = ANONYMOUS
        if token and int(token) >= CERTIFICATE_TOKENS:
            who = self._holders.get(int(token), Identity("cert:gone", "none"))
        elif token:
            who = self._password_callers.get(int(token), Identity("mms:gone", "none"))
        peer = lib.ClientConnection_getPeerAddress(connection) if connection else None
        admission = self._admissions.get((peer or b"").decode(errors="replace"))
        # no admission: a connection the door refused cannot operate (read only, at most)
        return (
            admission.limit(who)
            if admission is not None
            else who.limited(frozenset({Permission.READ}), zone="none", conduit="none")
        )

    def _control(self, action: Any) -> str:
        lib = native.library()
        raw = lib.ModelNode_getObjectReference(lib.ControlAction_getControlObject(action), None)
        return str(raw.decode()).removeprefix(self.ied_name)

    def _value(self, ref: str, ctl_val: Any) -> float | bool | None:
        """ctlVal as the gateway takes it: an SPC's BOOLEAN; an APC's FLOAT32 as the decimal
        the client meant (:func:`.controls.float32_decimal`)."""
        if CONTROLS[ref].cdc == "SPC":
            return native.bool_of(ctl_val)
        value = native.float_of(ctl_val)
        return None if value is None else float32_decimal(value)

    def _check(self, action: Any, _param: Any, ctl_val: Any, _test: bool, _interlock: bool) -> int:
        lib = native.library()
        ref = self._control(action)
        caller = self._caller(action)
        value = self._value(ref, ctl_val)
        revoked = self._revoked(caller)
        verdict = (
            judge(CONTROLS[ref], value, caller, self.site())
            if revoked is None
            else Verdict(native.Check.ACCESS_DENIED, native.AddCause.NO_ACCESS_AUTHORITY, revoked)
        )
        select = bool(lib.ControlAction_isSelect(action))
        # a new request: forget an operate whose client left before its CommandTermination
        self._pending.pop(ref, None)
        if verdict.accepted:
            log.info("mms_control_checked", control=ref, value=value, user=caller.name,
                     select=select, originator=native.originator(action))  # fmt: skip
        else:
            self.stats.controls_refused_total += 1
            lib.ControlAction_setAddCause(action, verdict.add_cause)
            self._refuse(caller, f"{'select' if select else 'operate'} {ref}", verdict.why)
        return verdict.check

    def _operate(self, action: Any, _param: Any, ctl_val: Any, test: bool) -> int:
        """Hand an accepted operate to the loop and answer WAITING until it is journalled and in
        force; libiec61850 calls again each cycle of its own and then sends CommandTermination."""
        ref = self._control(action)
        pending = self._pending.get(ref)
        if pending is None:
            return native.Result.OK if test else self._start_operate(action, ref, ctl_val)
        if not pending.done():
            return native.Result.WAITING
        del self._pending[ref]
        error = pending.exception()
        if error is None:
            return native.Result.OK
        native.library().ControlAction_setAddCause(action, native.AddCause.BLOCKED_BY_PROCESS)
        log.error("mms_control_failed", control=ref, error=str(error))
        return native.Result.FAILED

    def _start_operate(self, action: Any, ref: str, ctl_val: Any) -> int:
        value = self._value(ref, ctl_val)
        control = CONTROLS[ref].control
        if value is None or control is None or self._loop is None:
            return native.Result.FAILED
        self._pending[ref] = asyncio.run_coroutine_threadsafe(
            self._carry_out(control.action, value, self._caller(action)), self._loop
        )
        return native.Result.WAITING

    async def _carry_out(self, action: str, value: float | bool, caller: Identity) -> None:
        await self.hooks.operate(action, value, caller)
        self.stats.controls_accepted_total += 1
        self.wake()

    # ---- the asyncio side ----

    def batch(self) -> list[Update]:
        """What changed in the store since the last batch, in the table's units."""
        snap = self.store.snapshot(time.time())
        guard = self._guard
        ctx = Context(
            self.site(),
            self.hooks.load_step_imminent(),
            guard_tripped=guard is not None and guard.tripped,
            guard_changed_at=None if guard is None else guard.at,
        )
        out: list[Update] = []
        for row in TABLE:
            got = row.read(snap, ctx)
            if got is None:
                continue
            value, quality, ts = got
            bits = quality_bits(quality, row.reasons(snap, ctx))
            if self._last.get(row.reference) == (value, bits):
                continue
            self._last[row.reference] = (value, bits)
            out.append((row.reference, float(value), bits, int(ts * 1000)))
        for update in self._schedule_updates(snap.taken_at):
            ref, value, bits, _ = update
            if self._last.get(ref) != (value, bits):
                self._last[ref] = (value, bits)
                out.append(update)
        return out

    def _schedule_updates(self, now: float) -> list[Update]:
        """The entry in force at ``now`` of the schedule handed to the worker, and its value
        (MW; invalid outside the schedule), stamped with the entry's start."""
        written = self._written
        if written is None:
            return []
        forecast = written.schedule
        entry = forecast.entry(now)
        value_w = forecast.value_w(entry)
        since = forecast.start_ts + (entry - 1) * forecast.interval_s if entry else now
        ts_ms = int(since * 1000)
        good, invalid = VALIDITY[Quality.GOOD], VALIDITY[Quality.INVALID]
        value = 0.0 if value_w is None else value_w / 10.0**schedule.MULTIPLIER
        bits = invalid if value_w is None else good
        return [
            (SCHEDULE_ENTRY, float(entry), good, ts_ms),
            (SCHEDULE_VALUE, value, bits, ts_ms),
            (CONTROLLER_VALUE, value, bits, ts_ms),
        ]

    def _submit_schedule(self) -> None:
        """Hand a new schedule to the worker (again next cycle when it is behind)."""
        pending = self._schedule
        if pending is not None and pending is not self._written and self.submit(pending):
            self._written = pending

    def submit(self, batch: list[Update] | ScheduleWrite) -> bool:
        """Hand a batch to the worker; False when it is behind (four batches queued)."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            return False
        return True

    async def _feed(self) -> None:
        while True:
            self._submit_schedule()
            batch = self.batch()
            if batch and not self.submit(batch):
                # the worker is behind: this cycle's values wait for the next
                for ref, *_ in batch:
                    self._last.pop(ref, None)
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()
