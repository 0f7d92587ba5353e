"""Units: one conversion point to SI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pswd_gateway
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


# ---- no scale literals in consumers --------------------------------------------------------

CONVERSION = re.compile(
    r"[*/]\s*(1e6|1e-6|1_000_000(\.0)?|3\.6e9|3_600_000_000(\.0)?)\b"
    r"|\b(1e6|3\.6e9)\s*[*/]"
)
"""Multiplying or dividing by 10^6 (W↔MW) or 3.6·10^9 (J↔MWh)."""
ALLOWED = ("domain/units.py", "simulation/", "bench/")
"""Units convert; the simulated site and the benchmarks speak the devices' own scales."""


def test_no_consumer_converts_mw_or_mwh_itself() -> None:
    root = Path(pswd_gateway.__file__).parent
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if not str(path.relative_to(root)).startswith(ALLOWED)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if CONVERSION.search(line)
    ]
    assert not found, "use to_mw/from_mw/to_mwh/from_mwh from domain/units.py:\n" + "\n".join(found)


def test_the_conversion_pattern_finds_what_it_is_for() -> None:
    assert CONVERSION.search("x = site.grid_import_limit_mw * 1e6")
    assert CONVERSION.search("f'{grid / 1e6:.1f} MW'")
    assert CONVERSION.search("energy = mwh * 3.6e9")
    assert not CONVERSION.search("high = 1e6  # a range bound")
