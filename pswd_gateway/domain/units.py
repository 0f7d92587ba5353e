"""Units: every number that crosses a boundary is converted to SI here, and only here."""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "SI_UNITS",
    "SiUnit",
    "UnitError",
    "from_mw",
    "from_mwh",
    "from_si",
    "si_unit",
    "to_mw",
    "to_mwh",
    "to_si",
]


class SiUnit(enum.StrEnum):
    """The units values are stored, computed and exported in (a value of this enum is also the
    string it was written as, so ``SiUnit.WATT == "W"``)."""

    WATT = "W"
    VAR = "var"
    VOLT_AMPERE = "VA"
    VOLT = "V"
    AMPERE = "A"
    HERTZ = "Hz"
    JOULE = "J"
    VAR_HOUR = "varh"
    CELSIUS = "degC"
    KELVIN = "K"
    RATIO = "ratio"
    SECOND = "s"
    WATT_PER_SECOND = "W/s"
    CUBIC_METRE = "m3"
    CUBIC_METRE_PER_SECOND = "m3/s"
    COULOMB = "C"
    ONE = "1"


W_PER_MW: Final = 1e6
J_PER_MWH: Final = 3.6e9


def to_mw(watts: float) -> float:
    """Watts (or W/s) as megawatts (MW/s): the API's, the operators' and the logs' scale."""
    return watts / W_PER_MW


def from_mw(megawatts: float) -> float:
    """Megawatts (or MW/s) as watts (W/s)."""
    return megawatts * W_PER_MW


def to_mwh(joules: float) -> float:
    """Joules as megawatt-hours."""
    return joules / J_PER_MWH


def from_mwh(megawatt_hours: float) -> float:
    """Megawatt-hours as joules."""
    return megawatt_hours * J_PER_MWH


class UnitError(ValueError):
    """A unit name that the gateway does not know."""


# unit as written in register maps / device data -> (SI unit, factor to SI)
_CONVERSIONS: Final[dict[str, tuple[SiUnit, float]]] = {
    "W": (SiUnit.WATT, 1.0),
    "kW": (SiUnit.WATT, 1e3),
    "MW": (SiUnit.WATT, 1e6),
    "var": (SiUnit.VAR, 1.0),
    "Var": (SiUnit.VAR, 1.0),
    "kvar": (SiUnit.VAR, 1e3),
    "Mvar": (SiUnit.VAR, 1e6),
    "VA": (SiUnit.VOLT_AMPERE, 1.0),
    "kVA": (SiUnit.VOLT_AMPERE, 1e3),
    "MVA": (SiUnit.VOLT_AMPERE, 1e6),
    "V": (SiUnit.VOLT, 1.0),
    "kV": (SiUnit.VOLT, 1e3),
    "A": (SiUnit.AMPERE, 1.0),
    "Hz": (SiUnit.HERTZ, 1.0),
    "Wh": (SiUnit.JOULE, 3600.0),
    "kWh": (SiUnit.JOULE, 3.6e6),
    "MWh": (SiUnit.JOULE, 3.6e9),
    "J": (SiUnit.JOULE, 1.0),
    "Varh": (SiUnit.VAR_HOUR, 1.0),
    "degC": (SiUnit.CELSIUS, 1.0),
    "C": (SiUnit.CELSIUS, 1.0),
    "%": (SiUnit.RATIO, 0.01),
    "Pct": (SiUnit.RATIO, 0.01),
    "%WHRtg": (SiUnit.RATIO, 0.01),
    "ratio": (SiUnit.RATIO, 1.0),
    "s": (SiUnit.SECOND, 1.0),
    "Secs": (SiUnit.SECOND, 1.0),
    "ms": (SiUnit.SECOND, 1e-3),
    "us": (SiUnit.SECOND, 1e-6),
    "m3/s": (SiUnit.CUBIC_METRE_PER_SECOND, 1.0),
    "L/s": (SiUnit.CUBIC_METRE_PER_SECOND, 1e-3),
    "m3/h": (SiUnit.CUBIC_METRE_PER_SECOND, 1.0 / 3600.0),
    "Ah": (SiUnit.COULOMB, 3600.0),
    "1": (SiUnit.ONE, 1.0),
    "K": (SiUnit.KELVIN, 1.0),
    "m3": (SiUnit.CUBIC_METRE, 1.0),
    "L": (SiUnit.CUBIC_METRE, 1e-3),
    "GJ": (SiUnit.JOULE, 1e9),
    "W/s": (SiUnit.WATT_PER_SECOND, 1.0),
    "MW/s": (SiUnit.WATT_PER_SECOND, 1e6),
    "": (SiUnit.ONE, 1.0),
}

SI_UNITS: Final[frozenset[SiUnit]] = frozenset(si for si, _ in _CONVERSIONS.values())


def si_unit(unit: str) -> SiUnit:
    """The SI unit a value in ``unit`` is stored in."""
    try:
        return _CONVERSIONS[unit][0]
    except KeyError:
        raise UnitError(
            f"unknown unit {unit!r}; known units: {', '.join(sorted(_CONVERSIONS))}"
        ) from None


def to_si(value: float, unit: str) -> tuple[float, SiUnit]:
    """Convert ``value`` expressed in ``unit`` to (SI value, SI unit)."""
    try:
        si, factor = _CONVERSIONS[unit]
    except KeyError:
        raise UnitError(
            f"unknown unit {unit!r}; known units: {', '.join(sorted(_CONVERSIONS))}"
        ) from None
    return value * factor, si


def from_si(value: float, unit: str) -> float:
    """Convert an SI value to ``unit`` (the inverse of :func:`to_si`)."""
    return value / _CONVERSIONS[unit][1] if unit in _CONVERSIONS else value
