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
    in_valid_range,
    not_available_patterns,
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


@pytest.mark.parametrize(
    ("data_type", "registers"),
    [
        (DataType.INT16, [0x8000]),
        (DataType.UINT16, [0xFFFF]),
        (DataType.INT32, [0x8000, 0x0000]),
        (DataType.UINT32, [0xFFFF, 0xFFFF]),
        (DataType.FLOAT32, [0x7FC0, 0x0000]),
        (DataType.FLOAT32, [0x7F80, 0x0000]),
    ],
)
def test_not_available_patterns_decode_to_no_value_in_plain_maps(
    data_type: DataType, registers: list[int]
) -> None:
    """Each type's "not available" pattern (int16 0x8000, uint16 0xFFFF, int32 0x80000000,
    uint32 0xFFFFFFFF, a float NaN or infinity) is no value, with or without a scale factor."""
    p = RegisterPoint(name="p", address=0, type=data_type, scale=0.01)
    assert decode_point(p, registers) is None


def test_shipped_thermal_plant_chw_supply_0x8000_is_no_value() -> None:
    """The case of issue 15: chw_supply_temp (int16, scale 0.01) at 0x8000 is not -327.68 °C."""
    regmap = load_device_map(DEVICE_MAPS_DIR / "thermal-plant.toml")
    image = dict.fromkeys(range(32), 0) | {0: 0x8000, 1: 2400}
    values = decode_registers(regmap, image)
    assert values["chw_supply_temp"] is None
    assert values["chw_return_temp"] == pytest.approx(24.0)


def test_not_available_list_replaces_the_type_default() -> None:
    """``not_available`` names the device's own patterns (here 0x7FFF, a failed sensor); ``[]``
    makes every pattern a value."""
    own = RegisterPoint(name="t", address=0, type=DataType.INT16, not_available=(0x7FFF,))
    assert decode_point(own, [0x7FFF]) is None
    assert decode_point(own, [0x8000]) == -32768
    none = RegisterPoint(name="t", address=0, type=DataType.UINT16, not_available=())
    assert decode_point(none, [0xFFFF]) == 0xFFFF
    assert not_available_patterns(none) == frozenset()


def test_a_plain_accumulator_at_zero_is_a_count() -> None:
    """acc32 0 is SunSpec's "not implemented" only beside a scale factor; in a plain map it is
    zero."""
    plain = RegisterPoint(name="e", address=0, type=DataType.ACC32)
    sunspec = RegisterPoint(name="e", address=0, type=DataType.ACC32, sf_address=2)
    assert decode_point(plain, [0, 0]) == 0.0
    assert decode_point(sunspec, [0, 0], sunssf=0) is None


def test_valid_range_bounds_plausible_values() -> None:
    """A value inside ``valid_range`` (ends included) is plausible; outside is not; no range:
    everything is."""
    p = RegisterPoint(name="hz", address=0, type=DataType.UINT16, valid_range=(45.0, 65.0))
    assert in_valid_range(p, 45.0)
    assert in_valid_range(p, 65.0)
    assert not in_valid_range(p, 44.99)
    assert in_valid_range(RegisterPoint(name="x", address=0, type=DataType.INT16), -1e9)


def test_a_reversed_valid_range_is_refused() -> None:
    """``valid_range = [hi, lo]`` is a map error that says which order is expected."""
    with pytest.raises(ValueError, match="low <= high"):
        RegisterPoint(name="x", address=0, type=DataType.INT16, valid_range=(40.0, 0.0))


def test_an_input_register_map_has_no_writable_point() -> None:
    """Input registers cannot be written: a map reading them refuses ``access = "rw"``."""
    with pytest.raises(ValueError, match="input registers are read-only"):
        RegisterMap(
            name="m",
            table="input",
            points=(RegisterPoint(name="x", address=0, type=DataType.INT16, access="rw"),),
        )


@pytest.mark.parametrize(
    ("name", "table", "point"),
    [
        ("eastron-sdm630", "input", "frequency"),
        ("chiller-controller", "holding", "chw_supply_temp"),
        ("trane-pic-rthd", "input", "chw_supply_temp"),
    ],
)
def test_shipped_vendor_maps_load(name: str, table: str, point: str) -> None:
    """The vendor maps are valid plain maps, every point with a plausible range or a reason not
    to have one (signed powers, codes), read from the table their device keeps them in."""
    regmap = load_device_map(DEVICE_MAPS_DIR / f"{name}.toml")
    assert not isinstance(regmap, SunSpecRegisterMap)
    assert regmap.table == table
    assert regmap.point(point).valid_range


def test_shipped_maps_bound_temperatures_and_frequency() -> None:
    """The existing maps carry plausible ranges: chilled water 0..40 °C, frequency 45..65 Hz."""
    thermal = load_device_map(DEVICE_MAPS_DIR / "thermal-plant.toml")
    assert thermal.point("chw_supply_temp").valid_range == (0.0, 40.0)
    for name in ("sunspec-meter", "sunspec-bess"):
        regmap = load_device_map(DEVICE_MAPS_DIR / f"{name}.toml")
        assert regmap.point("frequency").valid_range == (45.0, 65.0)
