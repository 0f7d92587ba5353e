"""The cooling controller: the thermal loop as a controller of the control cycle.

Once a second it asks for the chilled-water supply setpoint from the pure thermal loop
(:func:`pswd_gateway.control.thermal.thermal_step`: PI on the measured supply temperature, the
plant model's feed-forward from the IT power, pre-cooling before announced starts), and for the
heat network's supply setpoint (``[control] heat_supply_setpoint_c``, or the supply
temperature of the heat request in force: :meth:`CoolingController.heat_supply_c`; written when
it changes). It needs no battery: a site with a thermal plant and no battery is cooled too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from pswd_gateway.config import ControlConfig
from pswd_gateway.control.controllers import ProcessImage, SetpointRequest
from pswd_gateway.control.grid import Announced
from pswd_gateway.control.thermal import ThermalSettings, ThermalState, thermal_step
from pswd_gateway.domain.signals import CHW_SUPPLY_SETPOINT, CHW_SUPPLY_TEMP, IT_POWER

__all__ = ["CHW_SETPOINT_POINT", "HEAT_SETPOINT_POINT", "THERMAL_EVERY_S", "CoolingController"]

THERMAL_EVERY_S: Final = 1.0
"""The thermal loop runs once a second (the plant moves in tens of seconds)."""
HEAT_SETPOINT_POINT: Final = "heat_supply_setpoint"
CHW_SETPOINT_POINT: Final = str(CHW_SUPPLY_SETPOINT.point)


@dataclass
class CoolingController:
    """The thermal loop over the process image; asks for the plant's setpoints."""

    config: ControlConfig
    jobs: Callable[[float], Sequence[Announced]] = lambda _now: ()
    name: str = "cooling"
    state: ThermalState | None = field(default=None, init=False)
    last_command_c: float | None = field(default=None, init=False)
    requested_supply_c: float | None = field(default=None, init=False)
    """The supply temperature the heat network's request in force asks (``None``: none)."""

    @property
    def heat_supply_c(self) -> float:
        """The heat network's supply setpoint: the request's, or the configured one."""
        if self.requested_supply_c is not None:
            return self.requested_supply_c
        return self.config.heat_supply_setpoint_c

    def step(self, image: ProcessImage) -> list[SetpointRequest]:
        plant = image.site.thermal
        if plant is None:
            return []
        snap, now = image.snap, image.now
        requests = [SetpointRequest(plant, HEAT_SETPOINT_POINT, self.heat_supply_c)]
        if self.state is not None and now - self.state.t < THERMAL_EVERY_S:
            return requests
        supply = snap.usable(CHW_SUPPLY_TEMP, image.site)
        it_w = snap.usable(IT_POWER, image.site)
        if it_w is None:  # no IT reading: the heat the chillers remove stands in for it
            it_w = snap.value(f"{plant}.chw_heat_load") or 0.0
        lo, hi = self.config.chw_setpoint_range_c
        settings = ThermalSettings(self.config.chw_supply_setpoint_c, lo, hi)
        jobs = self.jobs(now) if self.config.predictive else ()
        command, self.state = thermal_step(self.state, now, supply, it_w, jobs, settings)
        self.last_command_c = command
        return [*requests, SetpointRequest(plant, CHW_SETPOINT_POINT, command)]
