"""Units: one conversion point to SI."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pswd_gateway.domain.units import UnitError, from_si, to_si


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (200, "MW", (200e6, "W")),
        (1, "kWh", (3.6e6, "J")),
        (55, "%WHRtg", (0.55, "ratio")),
        (18.5, "degC", (18.5, "degC")),
        (250, "ms", (0.25, "s")),
    ],
)
def test_to_si_converts_known_units(value: float, unit: str, expected: tuple[float, str]) -> None:
    """Engineering units become SI base units with the right factor."""
    si, name = to_si(value, unit)
    assert name == expected[1]
    assert si == pytest.approx(expected[0])


def test_unknown_unit_names_the_known_ones() -> None:
    """An unknown unit is an error that says which units exist."""
    with pytest.raises(UnitError, match="known units"):
        to_si(1.0, "furlongs")


@given(st.floats(-1e12, 1e12, allow_nan=False), st.sampled_from(["MW", "kW", "%", "Wh", "ms"]))
def test_from_si_inverts_to_si(value: float, unit: str) -> None:
    """from_si(to_si(x)) == x for every known unit."""
    assert from_si(to_si(value, unit)[0], unit) == pytest.approx(value, rel=1e-12, abs=1e-9)
