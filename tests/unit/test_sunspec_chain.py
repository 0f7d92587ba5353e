"""SunSpec maps placed on the chain a device has: base address, model order, extra models."""

from __future__ import annotations

import pytest

from pswd_gateway.config import DEVICE_MAPS_DIR
from pswd_gateway.southbound.modbus.sunspec import (
    BASE_ADDRESSES,
    SunSpecLayout,
    SunSpecRegisterMap,
    load_device_map,
    model_layout,
)


def meter_map(model: int) -> SunSpecRegisterMap:
    regmap = load_device_map(DEVICE_MAPS_DIR / f"sunspec-meter-{model}.toml")
    assert isinstance(regmap, SunSpecRegisterMap)
    return regmap


@pytest.mark.parametrize("model", [201, 202, 203, 204, 211, 212, 213, 214])
def test_meter_maps_resolve_through_the_model_definitions(model: int) -> None:
    """Every meter map looks for the chain at 40000, 50000 and 0, reads only its meter model,
    and its scale-factor points (integer models) or none (float models) come from pysunspec2."""
    regmap = meter_map(model)
    assert regmap.base_addresses == BASE_ADDRESSES == (40000, 50000, 0)
    assert regmap.models == (model,)
    power = regmap.point("active_power")
    assert power.type.value == ("float32" if model > 210 else "int16")
    assert (power.sf_address is None) is (model > 210)
    assert regmap.point("energy_imported").unit == "Wh"


def test_points_move_with_their_model_wherever_the_chain_has_it() -> None:
    """A chain at 0 with 701 before the meter and model 1 last: each point keeps its offset in
    the model, scale factors included."""
    regmap = meter_map(203)
    found = SunSpecLayout(
        base_address=0, starts={203: 2, 701: 109, 1: 264}, lengths={203: 105, 701: 153, 1: 66}
    )
    moved = regmap.relocated(found)
    nominal = regmap.layout.starts[203]
    for before, after in zip(regmap.points, moved.points, strict=True):
        assert after.address - 2 == before.address - nominal
        assert before.sf_address is not None
        assert after.sf_address == before.sf_address - nominal + 2
    assert moved.layout == found
    assert regmap.relocated(regmap.layout).points == regmap.points


def test_a_missing_or_short_model_is_named() -> None:
    regmap = meter_map(213)
    with pytest.raises(ValueError, match=r"model\(s\) 213, which the device's chain \(1@40002"):
        regmap.relocated(model_layout(40000, (1, 203)))
    short = SunSpecLayout(base_address=0, starts={213: 2}, lengths={213: 20})
    with pytest.raises(ValueError, match=r"beyond the end of SunSpec model 213 \(L=20\) at 2"):
        regmap.relocated(short)


def test_a_fixed_base_address_is_the_only_one_looked_at() -> None:
    regmap = load_device_map(DEVICE_MAPS_DIR / "sunspec-bess.toml")
    assert isinstance(regmap, SunSpecRegisterMap)
    assert regmap.base_addresses == (40000,)
