"""Register maps: the codec round-trips, maps validate, read plans cover every point."""

from __future__ import annotations

from pathlib import Path

import pytest
import sunspec2.device as ss_device
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.config import DEVICE_MAPS_DIR
from pswd_gateway.southbound.modbus.registermap import (
    MAX_READ_REGISTERS,
    DataType,
    RegisterMap,
    RegisterPoint,
    decode_point,
    decode_registers,
    encode_point,
    read_plan,
    scale_factor,
)
from pswd_gateway.southbound.modbus.sunspec import SunSpecRegisterMap, load_device_map

INT_RANGES = {
    DataType.INT16: (-(2**15) + 1, 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 2),
    DataType.INT32: (-(2**31) + 1, 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 2),
    # values travel as Python floats: 64-bit registers are exact up to 2**53 (energy counters
    # in Wh reach that after a billion years at 300 MW)
    DataType.INT64: (-(2**53), 2**53),
    DataType.UINT64: (0, 2**53),
}
orders = st.sampled_from(["big", "little"])


@given(
    data_type=st.sampled_from(sorted(INT_RANGES)),
    data=st.data(),
    byte_order=orders,
    word_order=orders,
    scale=st.sampled_from([1.0, 0.1, 0.01, 10.0, -1.0]),
    sf=st.integers(-4, 4),
    use_sf=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_integer_registers_round_trip(
    data_type: DataType,
    data: st.DataObject,
    byte_order: str,
    word_order: str,
    scale: float,
    sf: int,
    use_sf: bool,
) -> None:
    """decode(encode(raw * scale * 10**sf)) gives back the value for every integer type/order."""
    lo, hi = INT_RANGES[data_type]
    raw = data.draw(st.integers(lo, hi))
    point = RegisterPoint(
        name="p", address=0, type=data_type, scale=scale, sf_address=1 if use_sf else None
    )
    value = raw * scale * (10.0**sf if use_sf else 1.0)
    orders_ = (byte_order, word_order)
    regs = encode_point(point, value, orders_, sf if use_sf else None)  # type: ignore[arg-type]
    assert len(regs) == point.count
    assert all(0 <= r <= 0xFFFF for r in regs)
    decoded = decode_point(point, regs, orders_, sf if use_sf else None)  # type: ignore[arg-type]
    assert decoded == pytest.approx(value, rel=1e-9, abs=1e-9)


@given(
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    byte_order=orders,
    word_order=orders,
)
def test_float32_round_trips(value: float, byte_order: str, word_order: str) -> None:
    """IEEE-754 float32 survives encode/decode in every byte/word order."""
    point = RegisterPoint(name="p", address=0, type=DataType.FLOAT32)
    orders_ = (byte_order, word_order)
    regs = encode_point(point, value, orders_)  # type: ignore[arg-type]
    assert decode_point(point, regs, orders_) == value  # type: ignore[arg-type]


def test_word_order_little_swaps_words() -> None:
    """0x12345678 as int32 is [0x1234, 0x5678] big-endian words, reversed with little words."""
    p = RegisterPoint(name="p", address=0, type=DataType.UINT32)
    assert encode_point(p, 0x12345678, ("big", "big")) == [0x1234, 0x5678]
    assert encode_point(p, 0x12345678, ("big", "little")) == [0x5678, 0x1234]
    assert encode_point(p, 0x12345678, ("little", "big")) == [0x3412, 0x7856]


def test_value_that_does_not_fit_is_refused() -> None:
    """Encoding 40,000 into an int16 is an error that names the point and the type."""
    p = RegisterPoint(name="setpoint", address=0, type=DataType.INT16, unit="kW")
    with pytest.raises(ValueError, match=r"setpoint.*int16"):
        encode_point(p, 40_000)


def test_sunspec_not_implemented_decodes_to_none() -> None:
    """SunSpec marks an unimplemented int16 as 0x8000: that is no value, not -32768."""
    p = RegisterPoint(name="w", address=0, type=DataType.INT16, sf_address=1)
    assert decode_point(p, [0x8000], sunssf=0) is None


def test_a_scale_factor_register_is_a_signed_power_of_ten_and_0x8000_is_none() -> None:
    """sunssf is int16: 0xFFFE is -2, 0x0003 is 3, and 0x8000 (not implemented) is no factor."""
    assert scale_factor(0xFFFE) == -2
    assert scale_factor(3) == 3
    assert scale_factor(0x8000) is None


def test_a_point_whose_scale_factor_is_not_implemented_decodes_to_none() -> None:
    """A value without its scale factor is no value: decode_registers gives None, not a guess."""
    regmap = RegisterMap(
        name="m",
        points=(
            RegisterPoint(name="w", address=0, type=DataType.INT16, sf_address=1),
            RegisterPoint(name="hz", address=2, type=DataType.UINT16, sf_address=3),
        ),
    )
    image = {0: 1500, 1: 0x8000, 2: 5000, 3: 0xFFFE}
    assert decode_registers(regmap, image) == {"w": None, "hz": 50.0}


def test_overlapping_points_are_refused() -> None:
    """Two points that share a register are a map error naming both."""
    with pytest.raises(ValueError, match="'a' and 'b' overlap"):
        RegisterMap(
            name="m",
            points=(
                RegisterPoint(name="a", address=0, type=DataType.INT32),
                RegisterPoint(name="b", address=1, type=DataType.INT16),
            ),
        )


@given(
    st.lists(
        st.tuples(st.integers(0, 2000), st.sampled_from(list(DataType))),
        min_size=1,
        max_size=60,
        unique_by=lambda t: t[0],
    )
)
def test_read_plan_covers_every_point_without_splitting(specs: list[tuple[int, DataType]]) -> None:
    """Every point (and scale-factor register) lies wholly inside one block of ≤ 125 registers."""
    points = tuple(RegisterPoint(name=f"p{i}", address=a, type=t) for i, (a, t) in enumerate(specs))
    blocks = read_plan(points)
    assert all(0 < b.count <= MAX_READ_REGISTERS for b in blocks)
    for p in points:
        assert any(b.start <= p.address and p.end <= b.start + b.count for b in blocks), p


@pytest.mark.parametrize("name", ["sunspec-meter", "sunspec-bess"])
def test_shipped_sunspec_maps_match_pysunspec2_offsets(name: str) -> None:
    """Each resolved address equals the model's start plus pysunspec2's own point offset."""
    regmap = load_device_map(DEVICE_MAPS_DIR / f"{name}.toml")
    assert isinstance(regmap, SunSpecRegisterMap)
    address = regmap.layout.base_address + 2
    for mid, start in regmap.layout.starts.items():
        assert start == address
        address += ss_device.Model(mid).len
    for p in regmap.points:
        model_id, point_name = (
            p.description.removeprefix("SunSpec ").split(".")
            if p.description.startswith("SunSpec ")
            else (None, None)
        )
        if model_id is None:
            continue
        model = ss_device.Model(int(model_id))
        assert p.address == regmap.layout.starts[int(model_id)] + model.points[point_name].offset


def test_shipped_plain_map_loads() -> None:
    """The thermal-plant map is a valid plain map with its writable setpoints bounded."""
    regmap = load_device_map(Path(DEVICE_MAPS_DIR / "thermal-plant.toml"))
    writable = {p.name: p for p in regmap.points if p.access == "rw"}
    assert "chw_supply_setpoint" in writable
    assert writable["heat_supply_setpoint"].minimum == 70
    assert writable["heat_supply_setpoint"].maximum == 90


def test_sunspec_map_with_unknown_point_is_refused(tmp_path: Path) -> None:
    """A SunSpec map naming a point the model does not have says which model and point."""
    path = tmp_path / "m.toml"
    path.write_text(
        '[map]\nname = "m"\n[sunspec]\nmodels = [1, 701]\n'
        '[[points]]\nname = "x"\nmodel = 701\npoint = "Nope"\n',
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="701 has no point 'Nope'"):
        load_device_map(path)
