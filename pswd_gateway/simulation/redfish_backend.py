"""The physics behind one GPU hall's Redfish BMC: racks as chassis, power limits as caps.

A hall's IT demand (from the trace) is split over ``racks_per_hall`` chassis (``Rack001`` …)
with seeded shares; a power limit written through Redfish caps that rack's draw in the physics,
so the site's IT load, cooling and grid power all follow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from pswd_gateway.logging import get_logger
from pswd_gateway.simulation.config import RedfishSimConfig
from pswd_gateway.simulation.devices import SiteContext
from pswd_gateway.simulation.noise import uniform
from pswd_gateway.simulation.redfish import ChassisReading

__all__ = ["HallBackend", "rack_id"]

log = get_logger("simulation.redfish")

INLET_APPROACH_K: Final = 6.0
"""Rack inlet air above the chilled-water supply at no load."""
INLET_RISE_AT_RATED_K: Final = 4.0
_INLET_STREAM: Final = 0x1E7


def rack_id(index: int) -> str:
    """Chassis id of rack ``index`` (0-based): ``Rack001`` …"""
    return f"Rack{index + 1:03d}"


class HallBackend:
    """A :class:`~pswd_gateway.simulation.redfish.RedfishTwinBackend` for one hall."""

    def __init__(self, site: SiteContext, hall: int, cfg: RedfishSimConfig) -> None:
        self.site = site
        self.hall = hall
        self.config = cfg
        self._ids = tuple(rack_id(i) for i in range(cfg.racks_per_hall))
        self._index = {cid: i for i, cid in enumerate(self._ids)}
        self._rated_w = cfg.rack_rated_kw * 1e3
        self._min_w = cfg.rack_min_limit_fraction * self._rated_w
        seed = site.physics.seed
        self._inlet_offset_k = tuple(
            uniform(seed, _INLET_STREAM + hall, i) - 0.5 for i in range(cfg.racks_per_hall)
        )

    def _rack(self, chassis_id: str) -> int:
        try:
            return self._index[chassis_id]
        except KeyError:
            raise KeyError(f"no chassis {chassis_id!r} in hall {self.hall}") from None

    def chassis_ids(self) -> Sequence[str]:
        return self._ids

    def chassis_reading(self, chassis_id: str) -> ChassisReading:
        rack = self._rack(chassis_id)
        truth = self.site.sample()
        physics = self.site.physics
        power = physics.rack_power_w(truth, self.hall, rack)
        inlet = (
            truth.chw_supply_c
            + INLET_APPROACH_K
            + self._inlet_offset_k[rack]
            + INLET_RISE_AT_RATED_K * power / self._rated_w
        )
        return ChassisReading(
            power_w=power,
            inlet_temp_c=inlet,
            energy_j=physics.rack_energy_j(truth, self.hall, rack),
            timestamp=self.site.clock.posix(truth.t),
        )

    def power_limit_range_w(self, chassis_id: str) -> tuple[float, float]:
        self._rack(chassis_id)
        return (self._min_w, self._rated_w)

    def power_limit_w(self, chassis_id: str) -> float | None:
        return self.site.physics.rack_limit_w(self.hall, self._rack(chassis_id))

    def set_power_limit_w(self, chassis_id: str, watts: float | None) -> None:
        """Cap a rack (``None`` lifts the cap). Raises ValueError outside the range."""
        rack = self._rack(chassis_id)
        if watts is not None and not (
            math.isfinite(watts) and self._min_w <= watts <= self._rated_w
        ):
            raise ValueError(
                f"power limit for {chassis_id} must be within "
                f"[{self._min_w:.0f}, {self._rated_w:.0f}] W, got {watts}"
            )
        self.site.physics.set_rack_limit(self.site.now(), self.hall, rack, watts)
        log.info("rack_power_limit", hall=self.hall, chassis=chassis_id, watts=watts)
