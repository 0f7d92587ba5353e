"""OPC UA alarm conditions from one snapshot: ramp near its limit, low charge, invalid devices."""

from __future__ import annotations

import pytest

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit, to_mw
from pswd_gateway.northbound.opcua.alarms import LOW_SOC_MARGIN, RAMP_RISK_SHARE, conditions
from pswd_gateway.store import Snapshot

SITE = SiteConfig(grid_meter="meter", bess="bess", grid_ramp_limit_mw_per_s=20.0)
SOC_MIN = 0.1


def snapshot(soc: float | None = None, meter: Quality = Quality.GOOD) -> Snapshot:
    points = [Point("meter.active_power", 50e6, SiUnit.WATT, meter, 1.0, 1.0)]
    if soc is not None:
        points.append(Point("bess.soc", soc, SiUnit.RATIO, Quality.GOOD, 1.0, 1.0))
    return Snapshot(2.0, {p.name: p for p in points})


@pytest.mark.parametrize(
    ("soc", "active"),
    [
        (None, False),
        (SOC_MIN + LOW_SOC_MARGIN + 0.01, False),
        (SOC_MIN + LOW_SOC_MARGIN, False),
        (SOC_MIN + LOW_SOC_MARGIN - 0.01, True),
        (SOC_MIN, True),
    ],
)
def test_low_state_of_charge_is_active_within_the_margin_above_soc_min(
    soc: float | None, active: bool
) -> None:
    """LowStateOfCharge warns from soc_min + LOW_SOC_MARGIN down, not only at soc_min."""
    got = conditions(snapshot(soc), SITE, soc_min=SOC_MIN, ramp_w_per_s=None)["LowStateOfCharge"]
    assert got.active is active
    if soc is not None:
        assert got.message == f"battery state of charge {soc * 100:.1f} % is low"


@pytest.mark.parametrize(
    ("ramp", "active"),
    [
        (None, False),
        (RAMP_RISK_SHARE * 20e6, False),
        (RAMP_RISK_SHARE * 20e6 + 1.0, True),
        (-19e6, True),
    ],
)
def test_ramp_risk_is_active_above_its_share_of_the_limit_either_way(
    ramp: float | None, active: bool
) -> None:
    """RampLimitRisk compares |ramp| with RAMP_RISK_SHARE of the ramp limit; MW/s in the text."""
    got = conditions(snapshot(), SITE, soc_min=SOC_MIN, ramp_w_per_s=ramp)["RampLimitRisk"]
    assert got.active is active
    shown = 0 if ramp is None else to_mw(ramp)
    assert got.message == f"grid ramp {shown:.1f} MW/s is near the 20 MW/s limit"


def test_invalid_devices_are_named() -> None:
    """InvalidDevice is active while any device's data are invalid, and names them."""
    got = conditions(snapshot(meter=Quality.INVALID), SITE, soc_min=SOC_MIN, ramp_w_per_s=None)
    assert got["InvalidDevice"].active
    assert got["InvalidDevice"].message == "no valid data from meter"
    clear = conditions(snapshot(), SITE, soc_min=SOC_MIN, ramp_w_per_s=None)
    assert not clear["InvalidDevice"].active
