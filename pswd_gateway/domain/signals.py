"""The site signal catalogue: every signal of the site declared once.

A signal is what the site means by a value ("active power at the grid connection, positive =
import"), not where a device keeps it. Each one is declared here with its SI unit, its range, its
sign convention and its description; where its value comes from is said by the device *role* that
carries it (the device playing the role is site configuration) or by the site setting it reads.

Every northbound surface refers to these rows and adds only its own names: a Prometheus metric
name, an OPC UA browse path, an IEC 61850 object reference with its multiplier. The control
cycle, the HTTP site view and the demo read the same rows. Nobody multiplies by 10^6: values are
SI here, and scaling to MW for people happens in :mod:`pswd_gateway.domain.units`.

Adding a second grid meter is a new role in the site configuration and a row here; every surface
that lists the catalogue shows it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

from pswd_gateway.domain.units import SiUnit

__all__ = [
    "BESS_CURRENT",
    "BESS_MAX_CHARGE",
    "BESS_MAX_DISCHARGE",
    "BESS_POWER",
    "BESS_POWER_SETPOINT",
    "BESS_REACTIVE_POWER",
    "BESS_SOC",
    "BESS_SOC_MAX",
    "BESS_SOC_MIN",
    "BESS_STATE",
    "BESS_VOLTAGE",
    "CHILLER_POWER",
    "CHW_RETURN_TEMP",
    "CHW_SUPPLY_SETPOINT",
    "CHW_SUPPLY_TEMP",
    "DEMAND_RESPONSE_ACTIVE",
    "DEMAND_RESPONSE_LIMIT",
    "FFR_ACTIVE",
    "FFR_DEADBAND",
    "FFR_DROOP",
    "FFR_MAX_POWER",
    "FFR_RAMP",
    "FFR_SWITCH",
    "GRID_ENERGY_EXPORTED",
    "GRID_ENERGY_IMPORTED",
    "GRID_FREQUENCY",
    "GRID_IMPORT_LIMIT",
    "GRID_POWER",
    "GRID_POWER_FACTOR",
    "GRID_RAMP_LIMIT",
    "GRID_REACTIVE_POWER",
    "GRID_VOLTAGE",
    "HEAT_EXPORT_POWER",
    "HEAT_SUPPLY_TEMP",
    "IMPORT_LIMIT_IN_FORCE",
    "IT_POWER",
    "SIGNALS",
    "Role",
    "Signal",
    "SiteMap",
    "by_key",
]


class Role(enum.StrEnum):
    """The part a device plays on the site. The site configuration says which device (or, for
    the IT load, which devices: their values add up) plays each role."""

    GRID_METER = "grid_meter"
    BESS = "bess"
    THERMAL = "thermal"
    IT_LOAD = "it_load"


class SiteMap(Protocol):
    """What reading a signal needs from the site configuration."""

    def devices(self, role: Role) -> tuple[str, ...]:
        """The devices playing ``role`` (none, one, or for the IT load several)."""
        ...

    def setting(self, name: str) -> float:
        """A site setting in SI units (``grid_import_limit_w`` …)."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Signal:
    """One site signal.

    Exactly one of ``point`` (with ``role``) and ``setting`` says where the value comes from: a
    point of the device(s) playing ``role`` (several devices: the sum, worst quality, oldest
    time), or a site setting read through :meth:`SiteMap.setting`.
    """

    key: str
    """Stable dotted name, e.g. ``grid.active_power``."""
    unit: SiUnit
    description: str
    low: float
    high: float
    """The physical range a value may take; surfaces publish it (OPC UA EURange)."""
    sign: str = ""
    """The sign convention where the sign means something (``positive = import``)."""
    role: Role | None = None
    point: str | None = None
    setting: str | None = None
    writable: bool = False
    """Operators (or the control cycle, for device setpoints) may change it."""

    def __post_init__(self) -> None:
        if (self.point is None) == (self.setting is None) or (self.point is None) != (
            self.role is None
        ):
            msg = f"signal {self.key}: give either role and point, or setting"
            raise ValueError(msg)
        if self.low > self.high:
            msg = f"signal {self.key}: low {self.low} is above high {self.high}"
            raise ValueError(msg)


_GW: Final = 1e9
"""A bound on power far beyond any single site (1 GW), in W."""

GRID_POWER: Final = Signal(
    key="grid.active_power", unit=SiUnit.WATT, low=-_GW, high=_GW,
    sign="positive = import from the grid",
    description="Active power at the grid connection",
    role=Role.GRID_METER, point="active_power",
)  # fmt: skip
GRID_REACTIVE_POWER: Final = Signal(
    key="grid.reactive_power", unit=SiUnit.VAR, low=-_GW, high=_GW,
    sign="positive = import (lagging)",
    description="Reactive power at the grid connection",
    role=Role.GRID_METER, point="reactive_power",
)  # fmt: skip
GRID_POWER_FACTOR: Final = Signal(
    key="grid.power_factor", unit=SiUnit.ONE, low=-1.0, high=1.0,
    description="Power factor at the grid connection",
    role=Role.GRID_METER, point="power_factor",
)  # fmt: skip
GRID_FREQUENCY: Final = Signal(
    key="grid.frequency", unit=SiUnit.HERTZ, low=45.0, high=65.0,
    description="Grid frequency at the grid connection",
    role=Role.GRID_METER, point="frequency",
)  # fmt: skip
GRID_VOLTAGE: Final = Signal(
    key="grid.voltage", unit=SiUnit.VOLT, low=0.0, high=1e6,
    description="Line-to-line voltage at the grid connection",
    role=Role.GRID_METER, point="voltage",
)  # fmt: skip
GRID_ENERGY_IMPORTED: Final = Signal(
    key="grid.energy_imported", unit=SiUnit.JOULE, low=0.0, high=1e20,
    description="Energy imported from the grid (meter register)",
    role=Role.GRID_METER, point="energy_imported",
)  # fmt: skip
GRID_ENERGY_EXPORTED: Final = Signal(
    key="grid.energy_exported", unit=SiUnit.JOULE, low=0.0, high=1e20,
    description="Energy exported to the grid (meter register)",
    role=Role.GRID_METER, point="energy_exported",
)  # fmt: skip
IT_POWER: Final = Signal(
    key="it.active_power", unit=SiUnit.WATT, low=0.0, high=_GW,
    description="Active power drawn by the IT load (the sum of its BMCs)",
    role=Role.IT_LOAD, point="total_power",
)  # fmt: skip
BESS_POWER: Final = Signal(
    key="bess.active_power", unit=SiUnit.WATT, low=-_GW, high=_GW,
    sign="positive = discharging into the site",
    description="Battery active power",
    role=Role.BESS, point="active_power",
)  # fmt: skip
BESS_POWER_SETPOINT: Final = Signal(
    key="bess.power_setpoint", unit=SiUnit.WATT, low=-_GW, high=_GW,
    sign="positive = discharge",
    description="Battery active-power setpoint as the inverter holds it",
    role=Role.BESS, point="power_setpoint", writable=True,
)  # fmt: skip
BESS_REACTIVE_POWER: Final = Signal(
    key="bess.reactive_power", unit=SiUnit.VAR, low=-_GW, high=_GW,
    description="Battery reactive power",
    role=Role.BESS, point="reactive_power",
)  # fmt: skip
BESS_SOC: Final = Signal(
    key="bess.soc", unit=SiUnit.RATIO, low=0.0, high=1.0,
    description="Battery state of charge",
    role=Role.BESS, point="soc",
)  # fmt: skip
BESS_SOC_MAX: Final = Signal(
    key="bess.soc_max", unit=SiUnit.RATIO, low=0.0, high=1.0,
    description="Highest allowed state of charge",
    role=Role.BESS, point="soc_max",
)  # fmt: skip
BESS_SOC_MIN: Final = Signal(
    key="bess.soc_min", unit=SiUnit.RATIO, low=0.0, high=1.0,
    description="Lowest allowed state of charge",
    role=Role.BESS, point="soc_min",
)  # fmt: skip
BESS_VOLTAGE: Final = Signal(
    key="bess.battery_voltage", unit=SiUnit.VOLT, low=0.0, high=1e5,
    description="Battery DC voltage",
    role=Role.BESS, point="battery_voltage",
)  # fmt: skip
BESS_CURRENT: Final = Signal(
    key="bess.battery_current", unit=SiUnit.AMPERE, low=-1e6, high=1e6,
    sign="positive = discharging",
    description="Battery DC current",
    role=Role.BESS, point="battery_current",
)  # fmt: skip
BESS_MAX_CHARGE: Final = Signal(
    key="bess.max_charge_rate", unit=SiUnit.WATT, low=0.0, high=_GW,
    description="Highest charging power the battery accepts now",
    role=Role.BESS, point="max_charge_rate",
)  # fmt: skip
BESS_MAX_DISCHARGE: Final = Signal(
    key="bess.max_discharge_rate", unit=SiUnit.WATT, low=0.0, high=_GW,
    description="Highest discharging power the battery gives now",
    role=Role.BESS, point="max_discharge_rate",
)  # fmt: skip
BESS_STATE: Final = Signal(
    key="bess.battery_state", unit=SiUnit.ONE, low=0.0, high=65535.0,
    description="Battery state (SunSpec 802 BatSt code)",
    role=Role.BESS, point="battery_state",
)  # fmt: skip
CHW_SUPPLY_TEMP: Final = Signal(
    key="thermal.chw_supply_temp", unit=SiUnit.CELSIUS, low=0.0, high=40.0,
    description="Chilled-water supply temperature",
    role=Role.THERMAL, point="chw_supply_temp",
)  # fmt: skip
CHW_SUPPLY_SETPOINT: Final = Signal(
    key="thermal.chw_supply_setpoint", unit=SiUnit.CELSIUS, low=0.0, high=40.0,
    description="Chilled-water supply setpoint as the plant holds it",
    role=Role.THERMAL, point="chw_supply_setpoint", writable=True,
)  # fmt: skip
CHW_RETURN_TEMP: Final = Signal(
    key="thermal.chw_return_temp", unit=SiUnit.CELSIUS, low=0.0, high=60.0,
    description="Chilled-water return temperature",
    role=Role.THERMAL, point="chw_return_temp",
)  # fmt: skip
CHILLER_POWER: Final = Signal(
    key="thermal.chiller_power", unit=SiUnit.WATT, low=0.0, high=_GW,
    description="Chiller electrical power",
    role=Role.THERMAL, point="chiller_power",
)  # fmt: skip
HEAT_EXPORT_POWER: Final = Signal(
    key="heat.export_power", unit=SiUnit.WATT, low=0.0, high=_GW,
    description="Heat delivered to the municipal heating network",
    role=Role.THERMAL, point="heat_export_power",
)  # fmt: skip
HEAT_SUPPLY_TEMP: Final = Signal(
    key="heat.supply_temp", unit=SiUnit.CELSIUS, low=0.0, high=120.0,
    description="Supply temperature of the municipal heating network",
    role=Role.THERMAL, point="heat_supply_temp",
)  # fmt: skip
GRID_IMPORT_LIMIT: Final = Signal(
    key="site.grid_import_limit", unit=SiUnit.WATT, low=0.0, high=1e10,
    description="The grid operator's import limit at the connection",
    setting="grid_import_limit_w", writable=True,
)  # fmt: skip
GRID_RAMP_LIMIT: Final = Signal(
    key="site.grid_ramp_limit", unit=SiUnit.WATT_PER_SECOND, low=0.0, high=1e10,
    description="The grid operator's ramp limit (1 s mean step at the connection)",
    setting="grid_ramp_limit_w_per_s", writable=True,
)  # fmt: skip
DEMAND_RESPONSE_LIMIT: Final = Signal(
    key="site.demand_response_limit", unit=SiUnit.WATT, low=0.0, high=1e10,
    description="The demand-response import limit (0 when none is set); in force while "
    "demand response is active",
    setting="demand_response_limit_w", writable=True,
)  # fmt: skip
DEMAND_RESPONSE_ACTIVE: Final = Signal(
    key="site.demand_response_active", unit=SiUnit.ONE, low=0.0, high=1.0,
    description="1 while the demand-response limit is in force",
    setting="demand_response_active", writable=True,
)  # fmt: skip
IMPORT_LIMIT_IN_FORCE: Final = Signal(
    key="site.import_limit_in_force", unit=SiUnit.WATT, low=0.0, high=1e10,
    description="The import limit in force: the site's, or a lower demand-response limit",
    setting="import_limit_w",
)  # fmt: skip
FFR_ACTIVE: Final = Signal(
    key="site.ffr_active", unit=SiUnit.ONE, low=0.0, high=1.0,
    description="1 while the fast frequency response switched on over IEC 61850 is asked for "
    "(a grid signal of the iec61850 door)",
    setting="ffr_active", writable=True,
)  # fmt: skip
FFR_MAX_POWER: Final = Signal(
    key="site.ffr_max_power", unit=SiUnit.WATT, low=0.0, high=1e10,
    description="The most power of that fast frequency response, and the power its droop is a "
    "share of (0 when none is set)",
    setting="ffr_max_w", writable=True,
)  # fmt: skip
FFR_DEADBAND: Final = Signal(
    key="site.ffr_deadband", unit=SiUnit.HERTZ, low=0.0, high=0.5,
    description="Its deadband around the nominal frequency",
    setting="ffr_deadband_hz", writable=True,
)  # fmt: skip
FFR_DROOP: Final = Signal(
    key="site.ffr_droop", unit=SiUnit.RATIO, low=0.0, high=0.2,
    description="Its droop: the frequency deviation, as a share of nominal, that gives the most "
    "power",
    setting="ffr_droop", writable=True,
)  # fmt: skip
FFR_RAMP: Final = Signal(
    key="site.ffr_ramp", unit=SiUnit.WATT_PER_SECOND, low=0.0, high=1e10,
    description="How fast its power may change",
    setting="ffr_ramp_w_per_s", writable=True,
)  # fmt: skip
FFR_SWITCH: Final[tuple[Signal, ...]] = (
    FFR_MAX_POWER,
    FFR_DEADBAND,
    FFR_DROOP,
    FFR_RAMP,
    FFR_ACTIVE,
)
"""The fast frequency response an IEC 61850 operator switches and shapes (``GAPC2``): the
door's own settings, served by IEC 61850 only. What is in force is the grid signal's
(``GET /v1/grid/signals``), whichever door sent it. Not in :data:`SIGNALS` (yet): listing them
there would publish them on OPC UA (``PSWD.Signals``, the checked-in NodeSet2) and in the
HTTP site view as well."""

SIGNALS: Final[tuple[Signal, ...]] = (
    GRID_POWER,
    GRID_REACTIVE_POWER,
    GRID_POWER_FACTOR,
    GRID_FREQUENCY,
    GRID_VOLTAGE,
    GRID_ENERGY_IMPORTED,
    GRID_ENERGY_EXPORTED,
    IT_POWER,
    BESS_POWER,
    BESS_POWER_SETPOINT,
    BESS_REACTIVE_POWER,
    BESS_SOC,
    BESS_SOC_MAX,
    BESS_SOC_MIN,
    BESS_VOLTAGE,
    BESS_CURRENT,
    BESS_MAX_CHARGE,
    BESS_MAX_DISCHARGE,
    BESS_STATE,
    CHW_SUPPLY_TEMP,
    CHW_SUPPLY_SETPOINT,
    CHW_RETURN_TEMP,
    CHILLER_POWER,
    HEAT_EXPORT_POWER,
    HEAT_SUPPLY_TEMP,
    GRID_IMPORT_LIMIT,
    GRID_RAMP_LIMIT,
    DEMAND_RESPONSE_LIMIT,
    DEMAND_RESPONSE_ACTIVE,
    IMPORT_LIMIT_IN_FORCE,
)
"""Every site signal, in the order surfaces list them."""

_BY_KEY: Final = {s.key: s for s in SIGNALS}


def by_key(key: str) -> Signal:
    """The signal named ``key``; ``KeyError`` names the known keys."""
    try:
        return _BY_KEY[key]
    except KeyError:
        msg = f"unknown signal {key!r}; known: {', '.join(_BY_KEY)}"
        raise KeyError(msg) from None
