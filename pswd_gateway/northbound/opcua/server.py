"""OPC UA for SCADA: the site under ``Objects/PSWD`` in namespace ``urn:pswd:gateway``.

:class:`OpcUaServer` is a composition; each part has one job and its own module:

- :mod:`.security` — endpoints and policies, the server certificate, the client trust list,
  users and their roles (:class:`RoleUserManager`); :mod:`.guard` closes what asyncua lets
  through on a None channel;
- :mod:`.model` — the variables, each a row naming a signal of the catalogue, with their
  engineering units and ranges;
- :mod:`.methods` — the methods on ``PSWD`` with their role checks and audit (grid signals go
  to the grid-signal service, :mod:`pswd_gateway.grid_signals`);
- :mod:`.alarms` — alarm conditions and the control guard's alarm;
- :mod:`.workloads` — one object per active workload and their state-change events;
- :mod:`.heat` — the municipal heat offer (``PSWD.HeatOffer``), with the open heat requests.

This module starts and stops the asyncua server, builds the address space from those parts and
publishes: values come from the store once per ``opcua.publish_interval_ms`` as one batch
through asyncua's ``write_attribute_value`` fast path, with the point's source timestamp and a
status from its quality: ``good`` → Good, ``questionable`` → UncertainLastUsableValue,
``invalid`` → BadNoCommunication (never a stale Good).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from asyncua import Node, Server, ua
from asyncua.server.internal_session import InternalSession

from pswd_gateway.config import GatewayConfig, SiteConfig
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.opcua import guard
from pswd_gateway.northbound.opcua.alarms import GUARD_ALARM, GUARD_SEVERITY, Alarms
from pswd_gateway.northbound.opcua.heat import HeatOfferObject
from pswd_gateway.northbound.opcua.methods import (
    METHOD_PERMISSIONS,
    LimitSetter,
    Methods,
    dr_event_id,
    no_limits,
)
from pswd_gateway.northbound.opcua.model import (
    MODEL,
    STATUS,
    UNECE,
    Variable,
    add_variables,
    model,
)
from pswd_gateway.northbound.opcua.security import (
    RejectingValidator,
    RoleUserManager,
    secure,
    server_certificate,
)
from pswd_gateway.northbound.opcua.workloads import FOLDER, WorkloadObjects
from pswd_gateway.scheduling.service import WorkloadService
from pswd_gateway.security.certs import APPLICATION_URI
from pswd_gateway.security.zones import Admission, Gatekeeper
from pswd_gateway.store import PointStore

__all__ = [
    "GUARD_ALARM",
    "GUARD_SEVERITY",
    "METHOD_PERMISSIONS",
    "MODEL",
    "NAMESPACE",
    "STATUS",
    "UNECE",
    "LimitSetter",
    "OpcUaServer",
    "RejectingValidator",
    "RoleUserManager",
    "Variable",
    "dr_event_id",
]

log = get_logger("opcua")

NAMESPACE: Final = "urn:pswd:gateway"


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
        door: Callable[[object], Admission | None] | None = None,
        signals: GridSignalService | None = None,
    ) -> None:
        self.door = door or Gatekeeper(config.policy()).door("opcua")
        """The zone policy at accept: a connection from outside every conduit is closed."""
        self.ramp = ramp
        """The control cycle's grid ramp in W/s (None without one), for ``RampLimitRisk``."""
        self.certificate_path: Path | None = None
        """The server certificate, once started."""
        self.config = config
        self.store = store
        self.site = site
        self.workloads = workloads
        self.set_limit = set_limit
        self.users = RoleUserManager(config.opcua.users, config.opcua.certificate_users)
        self.users.on_refusal = self._login_refused
        self.signals = signals
        """The grid-signal service (``SubmitGridSignal``, ``WithdrawGridSignal``, the heat
        requests on ``HeatOffer``); None: those methods are BadNotSupported."""
        self.methods = Methods(
            self.users, workloads, set_limit, config.scheduling.demand_response, signals
        )
        self.alarms = Alarms(config.control.soc_min)
        self.workload_objects = WorkloadObjects(workloads)
        self.heat_offer = HeatOfferObject(workloads, config.heat, signals)
        self.model = model(config.scheduling.demand_response, self.alarms.guard_active)
        self.server: Server | None = None
        self.idx = 0
        self.nodes: dict[str, Node] = {}
        """Each variable's node, by node id (``PSWD.GridConnection.ActivePower`` …)."""
        self.endpoint = ""
        self.updates_total = 0
        self._last: dict[ua.NodeId, tuple[float, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._event_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def acknowledged(self) -> set[str]:
        """The demand-response windows acknowledged since start, by id."""
        return self.methods.acknowledged

    @property
    def events_total(self) -> int:
        """Workload events and alarm events raised since start."""
        return self.workload_objects.events_total + self.alarms.events_total

    def control_guard(self, event: GuardEvent) -> None:
        """The control guard tripped or re-armed: ``Control.GuardActive`` and the
        ``ControlGuard`` alarm follow at the next publish (events are raised on the publish task
        only, one at a time)."""
        self.alarms.control_guard(event)

    # ---- lifecycle ----

    async def start(self) -> None:
        listener = self.config.listeners.opcua
        cfg = self.config.opcua
        paths = server_certificate(cfg)
        self.certificate_path = paths.cert
        guard.install()
        guard.GuardedProtocol.admit = self.door
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
        policies = await secure(server, cfg, paths)
        self.idx = await server.register_namespace(NAMESPACE)
        await self._build(server)
        await server.start()
        self.server = server
        if self.workloads is not None:
            self._event_task = asyncio.create_task(
                self.workload_objects.forward_events(), name="opcua-events"
            )
        self._task = asyncio.create_task(self._publish_loop(), name="opcua-publish")
        log.info("opcua_started", endpoint=self.endpoint, policies=[str(p) for p in policies])

    def refusals(self) -> dict[str, int]:
        """What the server refused since start, by reason: ``request`` (a security policy or
        mode it does not offer, a service on a None channel, too many monitored items),
        ``malformed`` (a message it could not decode, or larger than declared limits; the
        connection is closed), ``login`` (a wrong password or an unknown certificate user)."""
        return {
            "request": guard.GuardedProcessor.refused_total,
            "malformed": guard.GuardedProcessor.malformed_total,
            "login": self.users.refused_total,
        }

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        """The publish and event loops that ended without being stopped."""
        return [
            task.get_name()
            for task in (self._task, self._event_task)
            if task is not None and task.done()
        ]

    async def stop(self) -> None:
        for task in (self._event_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.server is not None:
            await self.server.stop()
            self.server = None

    # ---- the address space ----

    async def _build(self, server: Server) -> None:
        """``PSWD`` and below: the variables, the workloads' folder, the methods, and ``PSWD``
        as the source of workload events and alarms (part of the model: EventNotifier,
        GeneratesEvent). The order is the NodeSet2 file's."""
        idx = self.idx
        root = await server.nodes.objects.add_object(
            ua.NodeId("PSWD", idx), ua.QualifiedName("PSWD", idx)
        )
        self.nodes = await add_variables(server, root, idx, self.model)
        await self.workload_objects.add_folder(root, idx)
        await self.methods.add_to(root, idx)
        await self.workload_objects.add_events(server, root)
        await self.alarms.add_to(server, root)
        await self.heat_offer.add_to(server, root, idx)

    async def model_nodes(self) -> list[Node]:
        """Every node of the static model (PSWD and below, not the workloads' objects)."""
        assert self.server is not None
        root = self.server.get_node(ua.NodeId("PSWD", self.idx))
        out: list[Node] = []
        pending = [root]
        while pending:
            node = pending.pop()
            out.append(node)
            if node.nodeid.Identifier == FOLDER:
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
        self = cls(config, PointStore(), lambda: config.site, None, no_limits)
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
            sample = var.value(snap, site)
            if sample is None:
                continue
            node = self.nodes[var.node_id]
            status = STATUS[sample.quality]
            if self._last.get(node.nodeid) == (sample.value, status):
                continue
            self._last[node.nodeid] = (sample.value, status)
            await server.write_attribute_value(
                node.nodeid,
                ua.DataValue(
                    ua.Variant(sample.value, ua.VariantType.Double),
                    StatusCode=ua.StatusCode(status),
                    SourceTimestamp=datetime.fromtimestamp(sample.source_ts, UTC),
                    ServerTimestamp=datetime.now(UTC),
                ),
            )
            written += 1
        written += await self.workload_objects.sync(server)
        written += await self.heat_offer.sync(server, datetime.now(UTC))
        ramp = self.ramp() if self.ramp is not None else None
        await self.alarms.check(snap, site, ramp)
        self.updates_total += written
        return written

    # ---- audit of refused logins ----

    def _login_refused(self, user: str | None, why: str) -> None:
        """From asyncua's synchronous user check: audit in the background."""
        with contextlib.suppress(RuntimeError):  # no loop: nothing to audit into
            task = asyncio.get_running_loop().create_task(
                self.methods.audit_refusal(user or "unknown", "opcua login", why)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
