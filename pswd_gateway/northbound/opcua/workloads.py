"""Workloads on ``PSWD``: one object per active workload under ``PSWD.Workloads``, and a
BaseEventType event for each of their state changes.

An object (``State``, ``PeakPower`` in W, ``ScheduledStart``) is added when its workload is
announced and removed when the workload ends; the objects follow the workload service at each
publish. These nodes are not part of the static model (nor of the NodeSet2 file).
"""

from __future__ import annotations

from typing import Any, Final

from asyncua import Node, Server, ua

from pswd_gateway.domain.units import from_mw
from pswd_gateway.scheduling.service import WorkloadService

__all__ = ["FOLDER", "WORKLOAD_EVENT_SEVERITY", "WorkloadObjects"]

FOLDER: Final = "PSWD.Workloads"
"""The node id of the folder that holds the workloads' objects."""
WORKLOAD_EVENT_SEVERITY: Final = 300
"""Medium low (OPC UA's band 201-400): a state change is worth seeing, not an alarm."""


class WorkloadObjects:
    """The workloads' objects and events, kept in step with the workload service."""

    def __init__(self, workloads: WorkloadService | None) -> None:
        self.workloads = workloads
        self.events_total = 0
        self.folder: Node | None = None
        self.nodes: dict[str, Node] = {}
        """The object of each workload shown, by workload id."""
        self._states: dict[str, str] = {}
        self._events: Any = None
        self._idx = 0

    async def add_folder(self, root: Node, idx: int) -> None:
        """Add the ``Workloads`` folder under ``root`` (``PSWD``)."""
        self._idx = idx
        self.folder = await root.add_folder(
            ua.NodeId(FOLDER, idx), ua.QualifiedName("Workloads", idx)
        )

    async def add_events(self, server: Server, root: Node) -> None:
        """Make ``root`` a source of BaseEventType events (the workloads' state changes)."""
        self._events = await server.get_event_generator(ua.ObjectIds.BaseEventType, root.nodeid)

    async def forward_events(self) -> None:
        """Each workload state change becomes a BaseEventType event on ``PSWD``, until the
        workload service's event hub closes."""
        assert self.workloads is not None
        async with self.workloads.hub.subscribe() as queue:
            while (event := await queue.get()) is not None:
                if event.type != "workload.state_changed" or self._events is None:
                    continue
                d = event.data
                message = f"{event.workload_id}: {d.get('from') or '·'} → {d.get('to')}"
                if d.get("reason"):
                    message += f" ({d['reason']})"
                self._events.event.Severity = WORKLOAD_EVENT_SEVERITY
                self._events.event.SourceName = event.workload_id or "PSWD"
                await self._events.trigger(message=message)
                self.events_total += 1

    async def sync(self, server: Server) -> int:
        """Add, update and remove workload objects to match the active workloads; returns how
        many nodes changed."""
        if self.workloads is None or self.folder is None:
            return 0
        idx = self._idx
        active = self.workloads.active
        changed = 0
        for wid in [w for w in self.nodes if w not in active]:
            await server.delete_nodes([self.nodes.pop(wid)], recursive=True)
            changed += 1
        for wid, workload in active.items():
            node = self.nodes.get(wid)
            if node is None:
                node = await self.folder.add_object(
                    ua.NodeId(f"{FOLDER}.{wid}", idx), ua.QualifiedName(wid, idx)
                )
                await node.add_variable(
                    ua.NodeId(f"{FOLDER}.{wid}.State", idx),
                    ua.QualifiedName("State", idx),
                    workload.state.value,
                )
                peak = from_mw(workload.announcement.power_profile.peak_power_mw)
                await node.add_variable(
                    ua.NodeId(f"{FOLDER}.{wid}.PeakPower", idx),
                    ua.QualifiedName("PeakPower", idx),
                    ua.Variant(peak, ua.VariantType.Double),
                )
                start = workload.allocation.scheduled_start if workload.allocation else None
                await node.add_variable(
                    ua.NodeId(f"{FOLDER}.{wid}.ScheduledStart", idx),
                    ua.QualifiedName("ScheduledStart", idx),
                    ua.Variant(start, ua.VariantType.DateTime),
                )
                self.nodes[wid] = node
                changed += 1
            elif self._states.get(wid) != workload.state.value:
                self._states[wid] = workload.state.value
                await server.write_attribute_value(
                    ua.NodeId(f"{FOLDER}.{wid}.State", idx),
                    ua.DataValue(ua.Variant(workload.state.value, ua.VariantType.String)),
                )
                changed += 1
        return changed
