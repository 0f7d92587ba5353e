"""Redfish BMC twin: a DMTF Redfish HTTP server in front of simulated GPU racks.

The physics lives elsewhere; this server asks a :class:`RedfishTwinBackend` for readings and
hands power-limit writes back to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ChassisReading", "RedfishTwinBackend", "RedfishTwinServer"]


@dataclass(frozen=True, slots=True)
class ChassisReading:
    """What a chassis (a rack of GPU servers) reports at one instant."""

    power_w: float
    inlet_temp_c: float
    energy_j: float
    timestamp: float  # POSIX seconds


class RedfishTwinBackend(Protocol):
    """What the Redfish twin needs from the physics of one BMC's racks."""

    def chassis_ids(self) -> Sequence[str]: ...

    def chassis_reading(self, chassis_id: str) -> ChassisReading: ...

    def power_limit_range_w(self, chassis_id: str) -> tuple[float, float]: ...

    def power_limit_w(self, chassis_id: str) -> float | None: ...

    def set_power_limit_w(self, chassis_id: str, watts: float | None) -> None: ...


class RedfishTwinServer:
    """One BMC endpoint. ``port=0`` binds a free port; :attr:`port` tells which after start."""

    def __init__(
        self,
        backend: RedfishTwinBackend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "pswd-demo",
        password: str = "pswd-demo-bmc",
    ) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.username = username
        self.password = password

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError
