"""OPC UA for SCADA: the site under ``Objects/PSWD`` in namespace ``urn:pswd:gateway``.

Secure by default: Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss with Sign and
SignAndEncrypt; None only when ``opcua.allow_none`` asks for it on a loopback listener; client
certificates from the trust list (``certs/opcua/trusted``); user names with hashed passwords
mapped to roles; no anonymous sessions. See :mod:`.guard` for what asyncua lets through and we
do not.

Values come from the store once per ``opcua.publish_interval_ms`` as one batch through asyncua's
``write_attribute_value`` fast path, with the point's source timestamp and a status from its
quality: ``good`` → Good, ``questionable`` → UncertainLastUsableValue, ``invalid`` →
BadNoCommunication (never a stale Good).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.internal_session import InternalSession
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from pswd_gateway.config import (
    GatewayConfig,
    OpcUaCertificateUserConfig,
    OpcUaUserConfig,
    SiteConfig,
    SiteRole,
)
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.domain.points import Quality
from pswd_gateway.domain.workloads import Action, Announcement, IllegalTransitionError
from pswd_gateway.errors import ConfigError, ForbiddenError, NotFoundError, PswdError
from pswd_gateway.journal import AuditEntry
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.opcua import guard
from pswd_gateway.scheduling.service import WorkloadService
from pswd_gateway.security.certs import APPLICATION_URI, OpcUaCertPaths, resolve_certs_dir
from pswd_gateway.security.passwords import verify_password
from pswd_gateway.store import PointStore, Snapshot

__all__ = ["NAMESPACE", "OpcUaServer", "Variable"]

log = get_logger("opcua")

NAMESPACE: Final = "urn:pswd:gateway"
UNECE: Final = "http://www.opcfoundation.org/UA/units/un/cefact"
METHOD_PERMISSIONS: Final[dict[str, Permission]] = {
    "AnnounceWorkload": Permission.ANNOUNCE,
    "CancelWorkload": Permission.ACT_OWN,
    "AcknowledgeDemandResponse": Permission.OPERATE,
    "SetGridImportLimit": Permission.OPERATE,
    "SetGridRampLimit": Permission.OPERATE,
}
"""What each method needs, from the one role model (``domain.identity``): the same roles as
the HTTP API and IEC 61850. Cancelling someone else's workload needs ``act_any`` as well
(the workload service decides)."""
"""May set the grid limits."""
GUARD_ALARM: Final = "ControlGuard"
GUARD_SEVERITY: Final = 900
"""High: OPC UA's top severity band is 801-1000."""


def _unece(code: str, name: str) -> ua.EUInformation:
    unit_id = 0
    for ch in code:
        unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=UNECE,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(name),
        Description=ua.LocalizedText(name),
    )


W = _unece("WTT", "W")
WPS = _unece("WTT", "W/s")  # no UNECE code for W/s; watts, with the description saying so
HZ = _unece("HTZ", "Hz")
CEL = _unece("CEL", "°C")
ONE = _unece("C62", "1")


@dataclass(frozen=True, slots=True)
class Variable:
    """One variable of the model: path under PSWD, unit, range, and where its value comes from."""

    obj: str
    name: str
    unit: ua.EUInformation
    low: float
    high: float
    value: Callable[[Snapshot, SiteConfig], tuple[float, Quality, float] | None]
    """(value, quality, source POSIX time) from a snapshot, or None when there is no point."""


def _point(
    role: SiteRole, point: str
) -> Callable[[Snapshot, SiteConfig], tuple[float, Quality, float] | None]:
    def get(snap: Snapshot, site: SiteConfig) -> tuple[float, Quality, float] | None:
        key = site.point_key(role, point)
        p = None if key is None else snap.get(key)
        return None if p is None else (p.value, p.quality, p.source_ts)

    return get


def _it(snap: Snapshot, site: SiteConfig) -> tuple[float, Quality, float] | None:
    return snap.total(site.it_load_points)


def _dr_limit(
    config: GatewayConfig,
) -> Callable[[Snapshot, SiteConfig], tuple[float, Quality, float]]:
    def get(snap: Snapshot, site: SiteConfig) -> tuple[float, Quality, float]:
        now = datetime.fromtimestamp(snap.taken_at, UTC)
        active = [
            w.import_limit_mw for w in config.scheduling.demand_response if w.start <= now < w.end
        ]
        return min([site.import_limit_mw, *active]) * 1e6, Quality.GOOD, snap.taken_at

    return get


def dr_event_id(start: datetime) -> str:
    """The id of a demand-response window: ``dr-`` and its start in UTC, to the minute."""
    return "dr-" + start.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


def _limit(
    attr: str, scale: float
) -> Callable[[Snapshot, SiteConfig], tuple[float, Quality, float]]:
    def get(snap: Snapshot, site: SiteConfig) -> tuple[float, Quality, float]:
        return float(getattr(site, attr)) * scale, Quality.GOOD, snap.taken_at

    return get


GRID: Final = "grid_meter"
BESS: Final = "bess"
PLANT: Final = "thermal"
MODEL: Final[tuple[Variable, ...]] = (
    Variable("GridConnection", "ActivePower", W, -1e9, 1e9, _point(GRID, "active_power")),
    Variable("GridConnection", "Frequency", HZ, 45.0, 65.0, _point(GRID, "frequency")),
    Variable("GridConnection", "ImportLimit", W, 0.0, 1e10, _limit("grid_import_limit_mw", 1e6)),
    Variable(
        "GridConnection", "RampLimit", WPS, 0.0, 1e10, _limit("grid_ramp_limit_mw_per_s", 1e6)
    ),
    Variable("ITLoad", "ActivePower", W, 0.0, 1e9, _it),
    Variable("Battery", "ActivePower", W, -1e9, 1e9, _point(BESS, "active_power")),
    Variable("Battery", "StateOfCharge", ONE, 0.0, 1.0, _point(BESS, "soc")),
    Variable(
        "ThermalPlant", "ChilledWaterSupplyTemperature", CEL, 0.0, 40.0,
        _point(PLANT, "chw_supply_temp"),
    ),
    Variable(
        "ThermalPlant", "ChilledWaterSupplySetpoint", CEL, 0.0, 40.0,
        _point(PLANT, "chw_supply_setpoint"),
    ),
    Variable("HeatRecovery", "HeatExport", W, 0.0, 1e9, _point(PLANT, "heat_export_power")),
    Variable(
        "HeatRecovery", "SupplyTemperature", CEL, 0.0, 120.0, _point(PLANT, "heat_supply_temp")
    ),
)  # fmt: skip
"""The site's variables; ``docs/opcua.md`` lists them with their node ids."""

STATUS: Final = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.QUESTIONABLE: ua.StatusCodes.UncertainLastUsableValue,
    Quality.INVALID: ua.StatusCodes.BadNoCommunication,
}


class RoleUserManager:
    """User name + password → an asyncua ``User`` named after the account; no anonymous."""

    def __init__(
        self,
        users: tuple[OpcUaUserConfig, ...],
        certificate_users: tuple[OpcUaCertificateUserConfig, ...] = (),
    ) -> None:
        self._users = {u.name: u for u in users}
        self._by_cert = {u.sha256: u for u in certificate_users}
        self._roles: dict[str, str] = {u.name: u.role for u in users}
        self._roles.update({u.name: u.role for u in certificate_users})
        self._verified: dict[tuple[str, str], bool] = {}
        self.refused_total = 0
        self.on_refusal: Callable[[str | None, str], None] = lambda _user, _why: None

    def role(self, name: str | None) -> str | None:
        return self._roles.get(name or "")

    def get_user(
        self,
        iserver: Any,  # noqa: ARG002 - asyncua's UserManager signature
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None and certificate is not None:  # an X.509 user token
            der = (
                bytes(certificate)
                if isinstance(certificate, bytes | bytearray)
                else certificate.public_bytes(serialization.Encoding.DER)
            )
            holder = self._by_cert.get(hashlib.sha256(der).hexdigest())
            if holder is None:
                self.refused_total += 1
                log.warning("opcua_login_refused", reason="unknown user certificate")
                self.on_refusal(None, "unknown user certificate")
                return None
            role = UserRole.Admin if holder.role == "admin" else UserRole.User
            return User(role=role, name=holder.name)
        account = self._users.get(username or "")
        if account is None or password is None:
            self.refused_total += 1
            log.warning("opcua_login_refused", user=username, reason="unknown user or no password")
            self.on_refusal(username, "unknown user or no password")
            return None
        key = (account.name, password)
        ok = self._verified.get(key)
        if ok is None:
            ok = verify_password(password, account.password_hash)
            if ok:
                self._verified[key] = True  # PBKDF2 once per password per process
        if not ok:
            self.refused_total += 1
            log.warning("opcua_login_refused", user=username, reason="wrong password")
            self.on_refusal(username, "wrong password")
            return None
        role = UserRole.Admin if account.role == "admin" else UserRole.User
        return User(role=role, name=account.name)


class RejectingValidator:
    """The trust-list validator; a refused client certificate is copied to ``rejected/``."""

    def __init__(self, inner: CertificateValidator, trust: TrustStore, rejected: Path) -> None:
        self._inner = inner
        self._trust = trust
        self._rejected = rejected

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        try:
            try:
                await self._inner(cert, app)
            except ua.UaError:
                # `certs trust` may have added it since the last look: read the folder again.
                if not any(self._trust.trust_locations[0].iterdir()):
                    raise
                await self._trust.load()
                await self._inner(cert, app)
        except Exception:
            from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415

            name = cert.fingerprint(hashes.SHA256()).hex()[:16]
            with contextlib.suppress(OSError):
                (self._rejected / f"{name}.der").write_bytes(
                    cert.public_bytes(serialization.Encoding.DER)
                )
            log.warning("opcua_certificate_refused", application=app.ApplicationUri, saved=name)
            raise


LimitSetter = Callable[[str, float, Identity], Awaitable[None]]
Method = Callable[..., Awaitable[list[ua.Variant]]]


Refusal = Callable[[str, str, str], Awaitable[None]]


def _answering_status(name: str, method: Method, refused: Refusal) -> Callable[..., Awaitable[Any]]:
    """asyncua turns any exception of a method into BadUnexpectedError; answer ours precisely,
    and audit every refusal."""

    async def call(parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        try:
            return await method(parent, *args)
        except ua.UaStatusCodeError as exc:
            status = ua.StatusCode(exc.code).name
            log.info("opcua_method_refused", method=name, status=status)
            user = guard.current_user.get()
            await refused(getattr(user, "name", None) or "unknown", f"opcua {name}", status)
            return ua.StatusCode(exc.code)

    return call


async def _no_limits(_what: str, _value: float, _who: Identity) -> None:
    raise ua.uaerrors.BadNotSupported


class OpcUaServer:
    """The asyncua server, its model and the task that keeps the model current."""

    def __init__(
        self,
        config: GatewayConfig,
        store: PointStore,
        site: Callable[[], SiteConfig],
        workloads: WorkloadService | None,
        set_limit: LimitSetter,
        ramp: Callable[[], float | None] | None = None,
    ) -> None:
        self.ramp = ramp
        self.certificate_path: Path | None = None
        """The server certificate, once started."""
        self.config = config
        self.store = store
        self.site = site
        self.workloads = workloads
        self.set_limit = set_limit
        self.users = RoleUserManager(config.opcua.users, config.opcua.certificate_users)
        self.server: Server | None = None
        self.idx = 0
        self.nodes: dict[tuple[str, str], Node] = {}
        self.workload_nodes: dict[str, Node] = {}
        self._last: dict[ua.NodeId, tuple[float, int]] = {}
        self._states: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self.endpoint = ""
        self.updates_total = 0
        self.events_total = 0
        self._events: Any = None
        self._alarm: Any = None
        self._event_task: asyncio.Task[None] | None = None
        self._alarms_active: dict[str, bool] = {}
        self._guard_events: deque[GuardEvent] = deque(maxlen=64)
        self.acknowledged: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.users.on_refusal = self._login_refused
        self._guard: GuardEvent | None = None
        self.model = (
            *MODEL,
            Variable("DemandResponse", "ImportLimit", W, 0.0, 1e10, _dr_limit(config)),
            Variable("Control", "GuardActive", ONE, 0.0, 1.0, self._guard_active),
        )

    # ---- lifecycle ----

    async def start(self) -> None:
        listener = self.config.listeners.opcua
        cfg = self.config.opcua
        certs_dir = resolve_certs_dir(cfg.certs_dir)
        paths = OpcUaCertPaths(certs_dir)
        self.certificate_path = paths.cert
        if not paths.exists():
            raise ConfigError(
                "opcua",
                [
                    (
                        "opcua.certs_dir",
                        f"no server certificate in {certs_dir}: run `pswd-gateway certs init`",
                    )
                ],
            )
        guard.install()
        guard.GuardedProcessor.max_monitored_items = (
            cfg.max_monitored_items_per_subscription * cfg.max_subscriptions_per_session
        )
        InternalSession.max_connections = cfg.max_sessions
        server = Server(user_manager=self.users)
        await server.init()
        server.iserver.max_subscriptions = cfg.max_sessions * cfg.max_subscriptions_per_session
        server.iserver.max_connections = cfg.max_sessions * 2
        self.endpoint = f"opc.tcp://{listener.host}:{listener.port}/pswd"
        server.set_endpoint(self.endpoint)
        server.set_server_name("pswd-gateway")
        await server.set_application_uri(APPLICATION_URI)
        policies = [
            getattr(ua.SecurityPolicyType, f"{policy.replace('_', '')}_{mode}")
            for policy in cfg.policies
            for mode in cfg.modes
        ]
        if cfg.allow_none:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies)
        tokens: list[type] = [ua.UserNameIdentityToken]
        if cfg.certificate_users:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        await server.load_certificate(str(paths.cert))
        await server.load_private_key(str(paths.key))
        trust = TrustStore([paths.trusted], [])
        if any(paths.trusted.iterdir()):  # an empty store is refused by cryptography
            await trust.load()
        validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION
            | CertificateValidatorOptions.PEER_CLIENT,
            trust,
        )
        server.set_certificate_validator(RejectingValidator(validator, trust, paths.rejected))
        self.idx = await server.register_namespace(NAMESPACE)
        await self._build(server)
        await server.start()
        self.server = server
        if self.workloads is not None:
            self._event_task = asyncio.create_task(self._forward_events(), name="opcua-events")
        self._task = asyncio.create_task(self._publish_loop(), name="opcua-publish")
        log.info("opcua_started", endpoint=self.endpoint, policies=[str(p) for p in policies])

    async def stop(self) -> None:
        if self._event_task is not None:
            self._event_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._event_task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.server is not None:
            await self.server.stop()
            self.server = None

    # ---- the model ----

    async def model_nodes(self) -> list[Node]:
        """Every node of the static model (PSWD and below, not the workloads' objects)."""
        assert self.server is not None
        root = self.server.get_node(ua.NodeId("PSWD", self.idx))
        out: list[Node] = []
        pending = [root]
        while pending:
            node = pending.pop()
            out.append(node)
            if node.nodeid.Identifier == "PSWD.Workloads":
                continue
            children = await node.get_children(refs=ua.ObjectIds.HierarchicalReferences)
            pending.extend(children)
        return sorted(out, key=lambda n: str(n.nodeid.Identifier))

    async def export_nodeset(self, path: Path) -> None:
        """Write the static model as a NodeSet2 file (the served model is the same)."""
        assert self.server is not None
        await self.server.export_xml(await self.model_nodes(), str(path))

    @classmethod
    async def write_nodeset(cls, config: GatewayConfig, path: Path) -> None:
        """Build the model in a server that never listens, and export it."""
        self = cls(config, PointStore(), lambda: config.site, None, _no_limits)
        server = Server()
        await server.init()
        await server.set_application_uri(APPLICATION_URI)  # as served: same namespace table
        self.idx = await server.register_namespace(NAMESPACE)
        await self._build(server)
        self.server = server
        try:
            await self.export_nodeset(path)
        finally:
            self.server = None

    async def _build(self, server: Server) -> None:
        idx = self.idx
        root = await server.nodes.objects.add_object(
            ua.NodeId("PSWD", idx), ua.QualifiedName("PSWD", idx)
        )
        objects: dict[str, Node] = {}
        for var in self.model:
            obj = objects.get(var.obj)
            if obj is None:
                obj = await root.add_object(
                    ua.NodeId(f"PSWD.{var.obj}", idx), ua.QualifiedName(var.obj, idx)
                )
                objects[var.obj] = obj
            node = await obj.add_variable(
                ua.NodeId(f"PSWD.{var.obj}.{var.name}", idx),
                ua.QualifiedName(var.name, idx),
                ua.Variant(0.0, ua.VariantType.Double),
                datatype=ua.NodeId(ua.ObjectIds.Double),
            )
            await node.add_property(
                ua.NodeId(f"PSWD.{var.obj}.{var.name}.EngineeringUnits", idx),
                ua.QualifiedName("EngineeringUnits", 0),
                ua.Variant(var.unit, ua.VariantType.ExtensionObject),
            )
            await node.add_property(
                ua.NodeId(f"PSWD.{var.obj}.{var.name}.EURange", idx),
                ua.QualifiedName("EURange", 0),
                ua.Variant(ua.Range(var.low, var.high), ua.VariantType.ExtensionObject),
            )
            await server.write_attribute_value(
                node.nodeid,
                ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)),
            )
            self.nodes[(var.obj, var.name)] = node
        self.workloads_folder = await root.add_folder(
            ua.NodeId("PSWD.Workloads", idx), ua.QualifiedName("Workloads", idx)
        )
        self.methods = root
        string, double = ua.VariantType.String, ua.VariantType.Double
        for name, handler, args, outs in (
            ("AnnounceWorkload", self._announce, [string], [string]),
            ("CancelWorkload", self._cancel, [string, string], []),
            ("SetGridImportLimit", self._set_import_limit, [double], []),
            ("SetGridRampLimit", self._set_ramp_limit, [double], []),
            ("AcknowledgeDemandResponse", self._acknowledge_dr, [string], []),
        ):
            await root.add_method(
                ua.NodeId(f"PSWD.{name}", idx),
                ua.QualifiedName(name, idx),
                _answering_status(name, handler, self._audit_refusal),
                args,
                outs,
            )
        # PSWD emits workload events and alarms (part of the model: EventNotifier, GeneratesEvent).
        self._events = await server.get_event_generator(ua.ObjectIds.BaseEventType, root.nodeid)
        self._alarm = await server.get_event_generator(ua.ObjectIds.AlarmConditionType, root.nodeid)

    # ---- live values ----

    async def _publish_loop(self) -> None:
        period = self.config.opcua.publish_interval_ms / 1000.0
        while True:
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("opcua_publish_failed")
            await asyncio.sleep(period)

    async def publish_once(self) -> int:
        """Push changed values to the address space; returns how many were written."""
        server = self.server
        if server is None:
            return 0
        snap = self.store.snapshot(datetime.now(UTC).timestamp())
        site = self.site()
        written = 0
        for var in self.model:
            node = self.nodes[(var.obj, var.name)]
            got = var.value(snap, site)
            if got is None:
                continue
            value, quality, ts = got
            status = STATUS[quality]
            if self._last.get(node.nodeid) == (value, status):
                continue
            self._last[node.nodeid] = (value, status)
            await server.write_attribute_value(
                node.nodeid,
                ua.DataValue(
                    ua.Variant(value, ua.VariantType.Double),
                    StatusCode=ua.StatusCode(status),
                    SourceTimestamp=datetime.fromtimestamp(ts, UTC),
                    ServerTimestamp=datetime.now(UTC),
                ),
            )
            written += 1
        written += await self._sync_workloads(server)
        await self._check_alarms(snap, site)
        self.updates_total += written
        return written

    # ---- events and alarms ----

    async def _forward_events(self) -> None:
        """Each workload state change becomes a BaseEventType event on Objects/PSWD."""
        assert self.workloads is not None
        async with self.workloads.hub.subscribe() as queue:
            while (event := await queue.get()) is not None:
                if event.type != "workload.state_changed" or self._events is None:
                    continue
                d = event.data
                message = f"{event.workload_id}: {d.get('from') or '·'} → {d.get('to')}"
                if d.get("reason"):
                    message += f" ({d['reason']})"
                self._events.event.Severity = 300
                self._events.event.SourceName = event.workload_id or "PSWD"
                await self._events.trigger(message=message)
                self.events_total += 1

    async def _check_alarms(self, snap: Snapshot, site: SiteConfig) -> None:
        """AlarmConditionType events when a condition becomes active or clears."""
        soc = snap.get(f"{site.bess}.soc") if site.bess else None
        low_soc = soc is not None and soc.value < self.config.control.soc_min + 0.05
        invalid = sorted({p.device for p in snap if p.quality is Quality.INVALID})
        ramp = self.ramp() if self.ramp is not None else None
        limit = site.grid_ramp_limit_mw_per_s * 1e6
        conditions = {
            "RampLimitRisk": (
                ramp is not None and abs(ramp) > 0.9 * limit,
                700,
                (
                    f"grid ramp {0 if ramp is None else ramp / 1e6:.1f} MW/s is near the "
                    f"{limit / 1e6:g} MW/s limit"
                ),
            ),
            "LowStateOfCharge": (
                low_soc,
                600,
                f"battery state of charge {0 if soc is None else soc.value * 100:.1f} % is low",
            ),
            "InvalidDevice": (
                bool(invalid),
                800,
                f"no valid data from {', '.join(invalid) or 'any device'}",
            ),
        }
        for name, (active, severity, message) in conditions.items():
            if self._alarms_active.get(name, False) == active or self._alarm is None:
                continue
            await self._trigger_alarm(name, active, severity, message if active else None)
        while self._guard_events and self._alarm is not None:
            guard = self._guard_events.popleft()
            await self._trigger_alarm(
                GUARD_ALARM,
                guard.tripped,
                GUARD_SEVERITY,
                guard.detail if guard.tripped else f"{GUARD_ALARM} cleared: {guard.detail}",
                at=datetime.fromtimestamp(guard.at, UTC),
            )

    async def _trigger_alarm(
        self,
        name: str,
        active: bool,
        severity: int,
        message: str | None,
        at: datetime | None = None,
    ) -> None:
        """One AlarmConditionType event: ``name`` became active (``severity``) or cleared."""
        assert self._alarm is not None
        self._alarms_active[name] = active
        ev = self._alarm.event
        ev.ConditionName = name
        ev.Severity = severity if active else 100
        ev.SourceName = "PSWD"
        ev.Retain = active
        with contextlib.suppress(AttributeError):
            ev.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
        if "ActiveState/Id" in ev.data_types:  # the Boolean a standard alarm client reads
            setattr(ev, "ActiveState/Id", active)
        text = message or (name if active else f"{name} cleared")
        await self._alarm.trigger(time_attr=at, message=text)
        self.events_total += 1
        log.info("opcua_alarm", condition=name, active=active, message=text)

    def control_guard(self, event: GuardEvent) -> None:
        """The control guard tripped or re-armed: ``Control.GuardActive`` and the
        ``ControlGuard`` alarm follow at the next publish (events are raised on the publish task
        only, one at a time)."""
        self._guard = event
        self._guard_events.append(event)

    def _guard_active(self, snap: Snapshot, _site: SiteConfig) -> tuple[float, Quality, float]:
        guard = self._guard
        if guard is None:
            return 0.0, Quality.GOOD, snap.taken_at
        return (1.0 if guard.tripped else 0.0), Quality.GOOD, guard.at

    async def _sync_workloads(self, server: Server) -> int:
        if self.workloads is None:
            return 0
        active = self.workloads.active
        changed = 0
        for wid in [w for w in self.workload_nodes if w not in active]:
            await server.delete_nodes([self.workload_nodes.pop(wid)], recursive=True)
            changed += 1
        for wid, workload in active.items():
            node = self.workload_nodes.get(wid)
            if node is None:
                node = await self.workloads_folder.add_object(
                    ua.NodeId(f"PSWD.Workloads.{wid}", self.idx), ua.QualifiedName(wid, self.idx)
                )
                await node.add_variable(
                    ua.NodeId(f"PSWD.Workloads.{wid}.State", self.idx),
                    ua.QualifiedName("State", self.idx),
                    workload.state.value,
                )
                peak = workload.announcement.power_profile.peak_power_mw * 1e6
                await node.add_variable(
                    ua.NodeId(f"PSWD.Workloads.{wid}.PeakPower", self.idx),
                    ua.QualifiedName("PeakPower", self.idx),
                    ua.Variant(peak, ua.VariantType.Double),
                )
                start = workload.allocation.scheduled_start if workload.allocation else None
                await node.add_variable(
                    ua.NodeId(f"PSWD.Workloads.{wid}.ScheduledStart", self.idx),
                    ua.QualifiedName("ScheduledStart", self.idx),
                    ua.Variant(start, ua.VariantType.DateTime),
                )
                self.workload_nodes[wid] = node
                changed += 1
            else:
                state = ua.NodeId(f"PSWD.Workloads.{wid}.State", self.idx)
                if self._states.get(wid) != workload.state.value:
                    self._states[wid] = workload.state.value
                    await server.write_attribute_value(
                        state, ua.DataValue(ua.Variant(workload.state.value, ua.VariantType.String))
                    )
                    changed += 1
        return changed

    # ---- methods ----

    async def _audit_refusal(self, user: str, action: str, why: str) -> None:
        if self.workloads is None:
            return
        who = Identity(f"opcua:{user}", self.users.role(user) or "none")
        await self.workloads.audit_refusal(who, action, why)

    def _login_refused(self, user: str | None, why: str) -> None:
        """From asyncua's synchronous user check: audit in the background."""
        with contextlib.suppress(RuntimeError):  # no loop: nothing to audit into
            task = asyncio.get_running_loop().create_task(
                self._audit_refusal(user or "unknown", "opcua login", why)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _caller(self, method: str) -> Identity:
        """The session's user, if its role has what ``method`` needs; else BadUserAccessDenied."""
        user = guard.current_user.get()
        name = getattr(user, "name", None)
        role = self.users.role(name)
        if role is None:
            raise ua.uaerrors.BadUserAccessDenied
        who = Identity(f"opcua:{name}", role)
        if not who.can(METHOD_PERMISSIONS[method]):
            log.warning("opcua_method_refused", user=name, role=role, method=method)
            raise ua.uaerrors.BadUserAccessDenied
        return who

    async def _announce(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        body: ua.Variant,
    ) -> list[ua.Variant]:
        who = self._caller("AnnounceWorkload")
        if self.workloads is None:
            raise ua.uaerrors.BadNotSupported
        if not isinstance(body.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        try:
            announcement = Announcement.model_validate_json(body.Value)
        except ValidationError as exc:
            first = exc.errors()[0]
            log.info("opcua_announce_invalid", field=first["loc"], rule=first["type"])
            raise ua.uaerrors.BadInvalidArgument from None
        try:
            workload, _ = await self.workloads.announce(announcement, who)
        except ForbiddenError:
            raise ua.uaerrors.BadUserAccessDenied from None
        except PswdError as exc:
            log.info("opcua_announce_refused", error=str(exc))
            raise ua.uaerrors.BadRequestNotAllowed from None
        return [ua.Variant(workload.id, ua.VariantType.String)]

    async def _cancel(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        wid: ua.Variant,
        reason: ua.Variant,
    ) -> list[ua.Variant]:
        who = self._caller("CancelWorkload")
        if self.workloads is None:
            raise ua.uaerrors.BadNotSupported
        if not isinstance(wid.Value, str) or not isinstance(reason.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        try:
            await self.workloads.act(
                wid.Value, Action.CANCEL, who, reason.Value or "cancelled over OPC UA"
            )
        except NotFoundError:
            raise ua.uaerrors.BadNotFound from None
        except ForbiddenError:
            raise ua.uaerrors.BadUserAccessDenied from None
        except (IllegalTransitionError, PswdError):
            raise ua.uaerrors.BadInvalidState from None
        return []

    async def _acknowledge_dr(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        event_id: ua.Variant,
    ) -> list[ua.Variant]:
        who = self._caller("AcknowledgeDemandResponse")
        if not isinstance(event_id.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        windows = {dr_event_id(w.start): w for w in self.config.scheduling.demand_response}
        window = windows.get(event_id.Value)
        if window is None:
            raise ua.uaerrors.BadNotFound
        if self.workloads is not None:
            journal = self.workloads.journal
            entry = AuditEntry(
                actor=who.name,
                role=who.role,
                action="acknowledge demand response",
                target=event_id.Value,
                outcome="accepted",
                detail={"import_limit_mw": window.import_limit_mw},
                at=datetime.now(UTC),
            )
            await journal.call(journal.sync.audit, entry)
        self.acknowledged.add(event_id.Value)
        log.info("demand_response_acknowledged", window=event_id.Value, by=who.name)
        return []

    async def _set_limit(
        self, method: str, what: str, value: ua.Variant, low: float, high: float
    ) -> list[ua.Variant]:
        who = self._caller(method)
        v = value.Value
        if not isinstance(v, float) or not low < v <= high:
            raise ua.uaerrors.BadOutOfRange
        await self.set_limit(what, v, who)
        return []

    async def _set_import_limit(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        mw: ua.Variant,
    ) -> list[ua.Variant]:
        return await self._set_limit(
            "SetGridImportLimit", "grid_import_limit_mw", mw, 0.0, 10_000.0
        )

    async def _set_ramp_limit(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        mw_per_s: ua.Variant,
    ) -> list[ua.Variant]:
        return await self._set_limit(
            "SetGridRampLimit", "grid_ramp_limit_mw_per_s", mw_per_s, 0.0, 10_000.0
        )
