"""What the Redfish twin asks of the physics: one BMC's racks, read at request time.

:class:`~pswd_gateway.simulation.redfish_backend.HallBackend` answers it for a simulated hall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ChassisReading", "RedfishTwinBackend"]


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
