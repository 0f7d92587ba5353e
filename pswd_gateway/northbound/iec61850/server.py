"""The MMS server (libiec61850 through pyiec61850-ng) in its own thread.

libiec61850 calls block, so the server and every update live on one worker thread. The asyncio
side computes a batch from the store once per cycle and hands it over; the worker applies the
whole batch under one model lock (``IedServer_lockDataModel``), so a client never reads half a
cycle. Values are served in the table's units with the point's quality (good / questionable /
invalid validity) and source timestamp; an invalid device is served as invalid, never as a
stale good value.

Everything after the model is built goes through :mod:`native` (ctypes, which lets go of the
interpreter lock during each call): libiec61850's thread calls back into Python for
associations (ACSE password → role), connections (allowed networks) and controls while it
holds its model lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
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
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.iec61850 import native
from pswd_gateway.northbound.iec61850.controls import ANONYMOUS, judge
from pswd_gateway.northbound.iec61850.model import (
    CONTROLS,
    TABLE,
    Context,
    GooseAddress,
    build_model,
)
from pswd_gateway.security.passwords import verify_password
from pswd_gateway.security.zones import Admission
from pswd_gateway.store import PointStore

__all__ = ["MmsHooks", "MmsServer"]

log = get_logger("iec61850")

VALIDITY: Final = {Quality.GOOD: 0, Quality.INVALID: 2, Quality.QUESTIONABLE: 3}
"""IEC 61850-7-3 quality validity bits as libiec61850 encodes them."""

Update = tuple[str, float, int, int]
"""(LD/LN.DO, value, quality bits, timestamp ms)."""


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
        self._queue: queue.Queue[list[Update] | None] = queue.Queue(maxsize=4)
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
        self.rounds = 0
        """Items the worker thread has taken from its queue: batches, and empty ones that only
        take the model lock (the MMS process's heartbeat probes, see ``worker.py``)."""

    # ---- lifecycle ----

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="iec61850-mms", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 10.0)
        if self._error is not None:
            raise self._error
        self._subscription = self.store.subscribe(self._on_points)
        self._task = asyncio.create_task(self._feed(), name="iec61850-feed")
        log.info(
            "mms_started",
            host=self.host,
            port=self.port,
            ied=self.ied_name,
            max_connections=self.max_connections,
            users=len(self.users.users),
            anonymous_read=self.anonymous_read,
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
        return bad

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        server = lib.IedServer_createWithConfig(native.address(built.model), None, config)
        lib.IedServerConfig_destroy(config)
        if not server:
            raise OSError("libiec61850 could not create the IEC 61850 server")
        self._callbacks = [
            native.AUTHENTICATOR(_never_raise(self._authenticate, False)),  # noqa: FBT003
            native.CONNECTION_HANDLER(_never_raise(self._connection, None)),
            native.CHECK_HANDLER(_never_raise(self._check, native.Check.HARDWARE_FAULT)),
            native.CONTROL_HANDLER(_never_raise(self._operate, native.Result.FAILED)),
        ]
        authenticate, connection, check, operate = self._callbacks
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
            self._error = OSError(f"IEC 61850 server did not start on {self.host}:{self.port}")
            self._ready.set()
            return
        self._ready.set()
        kinds = {row.reference: row.cdc for row in TABLE}
        try:
            while (batch := self._queue.get()) is not None:
                self._apply(lib, server, kinds, batch)
                self.rounds += 1
        finally:
            lib.IedServer_stop(server)
            lib.IedServer_destroy(server)
            m.IedModel_destroy(model)

    def _apply(self, lib: Any, server: int, kinds: dict[str, str], batch: list[Update]) -> None:
        t0 = time.perf_counter()
        lib.IedServer_lockDataModel(server)
        try:
            for ref, value, quality, ts_ms in batch:
                attr, q, t = self._refs[ref]
                kind = kinds[ref]
                if kind in {"SPS", "SPC"}:
                    lib.IedServer_updateBooleanAttributeValue(server, attr, value >= 0.5)
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
        password = native.password_of(auth)
        if password is None:
            if not self.anonymous_read:
                self.stats.associations_refused_total += 1
                self._refuse(ANONYMOUS, "mms association", "no password (anonymous_read off)")
            return self.anonymous_read
        index = self.users.find(password)
        if index is None:
            self.stats.associations_refused_total += 1
            self._refuse(Identity("unknown", "none"), "mms association", "wrong password")
            return False
        token[0] = index + 1
        return True

    def _connection(self, _server: Any, connection: Any, connected: bool, _param: Any) -> None:
        lib = native.library()
        if not connected:
            peer = (lib.ClientConnection_getPeerAddress(connection) or b"").decode(errors="replace")
            if self._admissions.pop(peer, None) is not None:
                self.stats.connections_open = max(0, self.stats.connections_open - 1)
            return
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
        who = ANONYMOUS
        if token:
            user = self.users.users[int(token) - 1]
            who = Identity(f"mms:{user.name}", user.role)
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
        if CONTROLS[ref].cdc == "SPC":
            return native.bool_of(ctl_val)
        return native.float_of(ctl_val)

    def _check(self, action: Any, _param: Any, ctl_val: Any, _test: bool, _interlock: bool) -> int:
        lib = native.library()
        ref = self._control(action)
        caller = self._caller(action)
        value = self._value(ref, ctl_val)
        verdict = judge(CONTROLS[ref], value, caller, self.site())
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
            bits = VALIDITY[quality]
            if self._last.get(row.reference) == (value, bits):
                continue
            self._last[row.reference] = (value, bits)
            out.append((row.reference, float(value), bits, int(ts * 1000)))
        return out

    def submit(self, batch: list[Update]) -> bool:
        """Hand a batch to the worker; False when it is behind (four batches queued)."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            return False
        return True

    async def _feed(self) -> None:
        while True:
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
