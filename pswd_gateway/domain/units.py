"""Units: every number that crosses a boundary is converted to SI here, and only here."""

from __future__ import annotations

from typing import Final

__all__ = ["SI_UNITS", "UnitError", "si_unit", "to_si"]


class UnitError(ValueError):
    """A unit name that the gateway does not know."""


# unit as written in register maps / device data -> (SI unit, factor to SI)
_CONVERSIONS: Final[dict[str, tuple[str, float]]] = {
    "W": ("W", 1.0),
    "kW": ("W", 1e3),
    "MW": ("W", 1e6),
    "var": ("var", 1.0),
    "Var": ("var", 1.0),
    "kvar": ("var", 1e3),
    "Mvar": ("var", 1e6),
    "VA": ("VA", 1.0),
    "kVA": ("VA", 1e3),
    "MVA": ("VA", 1e6),
    "V": ("V", 1.0),
    "kV": ("V", 1e3),
    "A": ("A", 1.0),
    "Hz": ("Hz", 1.0),
    "Wh": ("J", 3600.0),
    "kWh": ("J", 3.6e6),
    "MWh": ("J", 3.6e9),
    "J": ("J", 1.0),
    "Varh": ("varh", 1.0),
    "degC": ("degC", 1.0),
    "C": ("degC", 1.0),
    "%": ("ratio", 0.01),
    "Pct": ("ratio", 0.01),
    "%WHRtg": ("ratio", 0.01),
    "ratio": ("ratio", 1.0),
    "s": ("s", 1.0),
    "Secs": ("s", 1.0),
    "ms": ("s", 1e-3),
    "m3/s": ("m3/s", 1.0),
    "L/s": ("m3/s", 1e-3),
    "m3/h": ("m3/s", 1.0 / 3600.0),
    "Ah": ("C", 3600.0),
    "1": ("1", 1.0),
    "": ("1", 1.0),
}

SI_UNITS: Final[frozenset[str]] = frozenset(si for si, _ in _CONVERSIONS.values())


def si_unit(unit: str) -> str:
    """The SI unit a value in ``unit`` is stored in."""
    try:
        return _CONVERSIONS[unit][0]
    except KeyError:
        raise UnitError(
            f"unknown unit {unit!r}; known units: {', '.join(sorted(_CONVERSIONS))}"
        ) from None


def to_si(value: float, unit: str) -> tuple[float, str]:
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
