"""The fast frequency response of IEC 61850 ``GAPC2``, without libiec61850: the site settings
it is kept in and the grid signal they make, the ranges its controls accept (the grid signal's
own), the switch's precondition, the FLOAT32 a client sends taken as the decimal it meant, and a
reload that leaves the door's state alone."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.grid_signals import FastFrequencyResponse
from pswd_gateway.domain.identity import SYSTEM, Identity
from pswd_gateway.domain.points import Quality
from pswd_gateway.northbound.iec61850.controls import float32_decimal, judge
from pswd_gateway.northbound.iec61850.model import CONTROLS, Context
from pswd_gateway.northbound.iec61850.native import AddCause, Check
from pswd_gateway.site_settings import KEPT_ON_RELOAD, SiteSettings
from pswd_gateway.store import PointStore

OPERATOR = Identity("mms:tso", "operator")
CURVE = {
    "GRID/GAPC2.FFRMaxW": "max_mw",
    "GRID/GAPC2.FFRDbHz": "deadband_hz",
    "GRID/GAPC2.FFRDroop": "droop_pct",
    "GRID/GAPC2.FFRRmpW": "ramp_mw_per_s",
}
"""Each curve control → the field of the grid signal it sets."""


def test_the_site_settings_make_the_grid_signal_with_its_defaults_where_nothing_was_operated() -> (
    None
):
    """Only the maximum has no default: the switch needs it (in the settings as at the door)."""
    site = SiteConfig()
    assert site.ffr == FastFrequencyResponse(enabled=False)
    on = SiteConfig(ffr_active=True, ffr_max_mw=40.0, ffr_droop_pct=2.5)
    assert on.ffr == FastFrequencyResponse(enabled=True, max_mw=40.0, droop_pct=2.5)
    with pytest.raises(ValidationError, match=r"operate GAPC2\.FFRMaxW first"):
        SiteConfig(ffr_active=True)


def test_gapc2_serves_the_settings_in_the_units_of_its_rows() -> None:
    """MW for the maximum and the ramp (multiplier 6), Hz, % (a ratio at multiplier -2), and
    the switch; the maximum is 0 while none is set."""
    snap = PointStore().snapshot(200.0)
    ctx = Context(SiteConfig(ffr_max_mw=40.0, ffr_active=True, ffr_ramp_mw_per_s=5.0))
    served = {ref: CONTROLS[ref].read(snap, ctx) for ref in (*CURVE, "GRID/GAPC2.FFRAct")}
    assert {ref: got[0] for ref, got in served.items() if got is not None} == pytest.approx({
        "GRID/GAPC2.FFRMaxW": 40.0,
        "GRID/GAPC2.FFRDbHz": 0.015,
        "GRID/GAPC2.FFRDroop": 4.0,
        "GRID/GAPC2.FFRRmpW": 5.0,
        "GRID/GAPC2.FFRAct": 1.0,
    })  # fmt: skip
    assert all(got is not None and got[1] is Quality.GOOD for got in served.values())
    unset = CONTROLS["GRID/GAPC2.FFRMaxW"].read(snap, Context(SiteConfig()))
    assert unset == (0.0, Quality.GOOD, 200.0)


@pytest.mark.parametrize("reference", sorted(CURVE))
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_a_curve_value_is_accepted_exactly_where_the_grid_signal_accepts_it(
    reference: str, value: float
) -> None:
    """One range for every door: the control's is the grid signal's (an enabled one: its
    maximum above 0)."""
    field = CURVE[reference]
    verdict = judge(CONTROLS[reference], value, OPERATOR, SiteConfig())
    try:
        FastFrequencyResponse.model_validate({"enabled": True, "max_mw": 1.0, field: value})
    except ValidationError:
        valid = False
    else:
        valid = True
    assert verdict.accepted == valid
    if not valid:
        assert verdict.add_cause == AddCause.INCONSISTENT_PARAMETERS


@pytest.mark.parametrize(
    ("value", "site", "check", "cause"),
    [
        (True, SiteConfig(), Check.VALUE_INVALID, AddCause.BLOCKED_BY_PROCESS),
        (True, SiteConfig(ffr_max_mw=40.0), Check.ACCEPTED, AddCause.UNKNOWN),
        (True, SiteConfig(demand_response_limit_mw=40.0), Check.VALUE_INVALID,
         AddCause.BLOCKED_BY_PROCESS),
        (False, SiteConfig(), Check.ACCEPTED, AddCause.UNKNOWN),
        (1.0, SiteConfig(ffr_max_mw=40.0), Check.VALUE_INVALID,
         AddCause.INCONSISTENT_PARAMETERS),
    ],
)  # fmt: skip
def test_the_switch_goes_on_only_once_a_maximum_is_set(
    value: object, site: SiteConfig, check: int, cause: int
) -> None:
    """As ``DRAct`` needs a ``DRLimW``: Blocked-by-process, saying what to operate first."""
    verdict = judge(CONTROLS["GRID/GAPC2.FFRAct"], value, OPERATOR, site)  # type: ignore[arg-type]
    assert (verdict.check, verdict.add_cause) == (check, cause)
    if cause == AddCause.BLOCKED_BY_PROCESS:
        assert "GAPC2.FFRMaxW" in verdict.why


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


@pytest.mark.parametrize(
    ("sent", "taken"),
    [(0.02, 0.02), (2.5, 2.5), (250.0, 250.0), (0.015, 0.015), (1e-45, 1e-45), (0.1, 0.1)],
)
def test_a_float32_ctlval_is_taken_as_the_decimal_the_client_sent(
    sent: float, taken: float
) -> None:
    """0.02 Hz crosses MMS as the FLOAT32 0.019999999552965164; the gateway keeps 0.02, as the
    HTTP API would."""
    assert float32_decimal(_float32(sent)) == taken


@given(
    mantissa=st.integers(min_value=1, max_value=999_999),
    exponent=st.integers(min_value=-30, max_value=30),
    negative=st.booleans(),
)
def test_every_decimal_of_six_digits_survives_the_float32(
    mantissa: int, exponent: int, negative: bool
) -> None:
    """FLOAT32 tells apart every decimal of up to 6 significant digits (FLT_DIG)."""
    decimal = float(f"{'-' if negative else ''}{mantissa}e{exponent}")
    assert float32_decimal(_float32(decimal)) == decimal


@given(st.floats(width=32))
def test_the_decimal_taken_is_the_same_float32(value: float) -> None:
    """Whatever a client sends, the gateway takes nothing it did not send (non-finite values
    stay as they are, for the range check to refuse)."""
    taken = float32_decimal(value)
    if math.isnan(value):
        assert math.isnan(taken)
    else:
        assert _float32(taken) == value


async def test_a_reload_keeps_the_doors_fast_frequency_response() -> None:
    """The standing FFR signal outlives a SIGHUP, so ``FFRAct`` and its curve stay as served;
    what the file says of the rest is taken."""
    settings = SiteSettings(SiteConfig())
    for name, value in (("ffr_max_mw", 40.0), ("ffr_droop_pct", 2.5), ("ffr_active", True)):
        await settings.set(name, value, OPERATOR)
    changed = await settings.replace(SiteConfig(grid_import_limit_mw=300.0), SYSTEM)
    assert set(changed) == {"grid_import_limit_mw"}
    assert settings.current.ffr == FastFrequencyResponse(enabled=True, max_mw=40.0, droop_pct=2.5)
    assert {"ffr_active", "ffr_max_mw", "grid_signal_limit_mw"} <= set(KEPT_ON_RELOAD)
