"""Declarative Modbus register maps and their codec.

A register map is a table — address, type, scale, unit, point name, byte/word order — loaded
from ``config/devices/*.toml``. The same table drives the gateway's decoder and the simulated
site's encoder, so the two cannot drift apart. Values are decoded to the map's engineering unit;
conversion to SI happens in :func:`pswd_gateway.domain.units.to_si`.

Plausibility: a register holding its type's "not available" pattern (``not_available``; by
default int16 0x8000, uint16 0xFFFF, int32 0x80000000, uint32 0xFFFFFFFF, a float NaN or
infinity) decodes to no value, and so does a scaled point whose SunSpec scale factor is not
implemented or outside the -10..10 SunSpec defines, or whose scaled value is too large for a
float; a value outside the point's ``valid_range`` is decoded but flagged
(:func:`in_valid_range`), for the driver to publish as questionable, "out of range".
"""

from __future__ import annotations

import enum
import itertools
import math
import struct
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pswd_gateway.domain.units import si_unit

__all__ = [
    "MAX_READ_REGISTERS",
    "SUNSSF_LIMIT",
    "DataType",
    "ReadBlock",
    "RegisterMap",
    "RegisterPoint",
    "decode_point",
    "decode_registers",
    "encode_point",
    "in_valid_range",
    "load_register_map",
    "not_available_patterns",
    "read_plan",
    "scale_factor",
    "signed_scale_factor",
]

MAX_READ_REGISTERS: Final = 125  # Modbus application protocol: read holding registers limit
SUNSSF_LIMIT: Final = 10
"""SunSpec scale factors are powers of ten from -10 to 10; a register outside says nothing a
device can mean (10**400 overflows a float) and scales no value."""


class DataType(enum.StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    SUNSSF = "sunssf"
    ENUM16 = "enum16"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"
    ACC32 = "acc32"
    ACC64 = "acc64"


# type -> (struct code, registers, SunSpec "not implemented" raw value)
_LAYOUT: Final[dict[DataType, tuple[str, int, int | None]]] = {
    DataType.INT16: ("h", 1, -0x8000),
    DataType.UINT16: ("H", 1, 0xFFFF),
    DataType.INT32: ("i", 2, -0x80000000),
    DataType.UINT32: ("I", 2, 0xFFFFFFFF),
    DataType.INT64: ("q", 4, -0x8000000000000000),
    DataType.UINT64: ("Q", 4, 0xFFFFFFFFFFFFFFFF),
    DataType.FLOAT32: ("f", 2, None),
    DataType.FLOAT64: ("d", 4, None),
    DataType.SUNSSF: ("h", 1, -0x8000),
    DataType.ENUM16: ("H", 1, 0xFFFF),
    DataType.BITFIELD16: ("H", 1, 0xFFFF),
    DataType.BITFIELD32: ("I", 2, 0xFFFFFFFF),
    DataType.ACC32: ("I", 2, 0),
    DataType.ACC64: ("Q", 4, 0),
}

_ACCUMULATORS: Final = frozenset({DataType.ACC32, DataType.ACC64})
"""SunSpec accumulators read 0 when not implemented; in a plain map 0 is a count like any."""

Order = Literal["big", "little"]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


def register_count(data_type: DataType) -> int:
    """How many 16-bit registers a value of ``data_type`` occupies."""
    return _LAYOUT[data_type][1]


class RegisterPoint(BaseModel):
    """One point of a register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    sf_address: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Address of a SunSpec ``sunssf`` register: value = raw * scale * 10**sf."""
    access: Literal["r", "rw"] = "r"
    poll_every: Annotated[int, Field(ge=1, le=10_000)] = 1
    """Read on every N-th poll (1: every poll). Ratings and read-backs of what the gateway wrote
    need not cost a request in every 20 ms poll of a device the control loop waits for."""
    minimum: float | None = None
    """Lowest value a write may carry (engineering unit); writes outside are refused."""
    maximum: float | None = None
    valid_range: tuple[float, float] | None = None
    """``[lo, hi]`` a plausible reading lies in (engineering unit); outside: questionable."""
    not_available: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    """Raw register patterns (as unsigned, e.g. ``0x8000``) that mean "no value"; by default
    the type's own (see :func:`not_available_patterns`); ``[]``: none."""
    byte_order: Order | None = None
    word_order: Order | None = None
    description: str = ""

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        si_unit(unit)
        return unit

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, scale: float) -> float:
        if scale == 0 or not math.isfinite(scale):
            raise ValueError("must be a finite, non-zero number")
        return scale

    @field_validator("valid_range")
    @classmethod
    def _ordered_range(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None and not bounds[0] <= bounds[1]:
            raise ValueError(f"valid_range {list(bounds)} must be [low, high] with low <= high")
        return bounds

    @property
    def count(self) -> int:
        return register_count(self.type)

    @property
    def end(self) -> int:
        """One past the last register this point occupies."""
        return self.address + self.count


class RegisterMap(BaseModel):
    """A device's register table (holding registers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    description: str = ""
    byte_order: Order = "big"
    word_order: Order = "big"
    points: tuple[RegisterPoint, ...]
    table: Literal["holding", "input"] = "holding"
    """Which register table the points are read from: holding (function 3) or input (4,
    read-only, as revenue meters keep their measurements)."""
    read_gap: Annotated[int, Field(ge=0, le=MAX_READ_REGISTERS)] = 8
    """Unused registers one read may span between two points (every register in such a gap
    must answer a read). Fewer requests per poll: less time, fewer chances to lose a reply."""

    @model_validator(mode="after")
    def _no_overlap(self) -> RegisterMap:
        names: set[str] = set()
        spans = sorted((p.address, p.end, p.name) for p in self.points)
        for p in self.points:
            if p.name in names:
                raise ValueError(f"point name {p.name!r} appears twice")
            names.add(p.name)
        for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
            if start_b < end_a:
                raise ValueError(f"points {name_a!r} and {name_b!r} overlap at register {start_b}")
        if self.table == "input" and any(p.access == "rw" for p in self.points):
            raise ValueError("input registers are read-only: no point may have access = 'rw'")
        return self

    def point(self, name: str) -> RegisterPoint:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"register map {self.name!r} has no point {name!r}")

    def orders(self, p: RegisterPoint) -> tuple[Order, Order]:
        return p.byte_order or self.byte_order, p.word_order or self.word_order


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """A contiguous range of registers read with one request."""

    start: int
    count: int


def read_plan(points: tuple[RegisterPoint, ...], max_gap: int = 8) -> list[ReadBlock]:
    """Cover every point (and its scale-factor register) with as few reads as possible.

    Neighbouring ranges closer than ``max_gap`` registers are merged; no block exceeds the
    protocol's 125-register limit and no point is split across blocks.
    """
    spans = {(p.address, p.end) for p in points}
    spans |= {(p.sf_address, p.sf_address + 1) for p in points if p.sf_address is not None}
    blocks: list[ReadBlock] = []
    start = end = -1
    for a, b in sorted(spans):
        if start >= 0 and a - end <= max_gap and max(end, b) - start <= MAX_READ_REGISTERS:
            end = max(end, b)
            continue
        if start >= 0:
            blocks.append(ReadBlock(start, end - start))
        start, end = a, b
    if start >= 0:
        blocks.append(ReadBlock(start, end - start))
    return blocks


def _to_bytes(registers: list[int], byte_order: Order, word_order: Order) -> bytes:
    words = registers if word_order == "big" else list(reversed(registers))
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if byte_order == "little":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    return raw


def _from_bytes(raw: bytes, byte_order: Order, word_order: Order) -> list[int]:
    if byte_order == "little":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


def decode_raw(p: RegisterPoint, registers: list[int], orders: tuple[Order, Order]) -> int | float:
    """The raw number stored in ``registers`` (exactly ``p.count`` of them)."""
    code, count, _ = _LAYOUT[p.type]
    if len(registers) != count:
        raise ValueError(f"{p.name}: expected {count} registers, got {len(registers)}")
    value: int | float = struct.unpack(">" + code, _to_bytes(registers, *orders))[0]
    return value


def not_available_patterns(p: RegisterPoint) -> frozenset[int]:
    """The raw register patterns (unsigned) that mean "no value" for ``p``: its own
    ``not_available``, or its type's (accumulators only with a SunSpec scale factor)."""
    if p.not_available is not None:
        return frozenset(p.not_available)
    _, count, sentinel = _LAYOUT[p.type]
    if sentinel is None or (p.type in _ACCUMULATORS and p.sf_address is None):
        return frozenset()
    return frozenset({sentinel % (1 << (16 * count))})


def _pattern(registers: list[int], orders: tuple[Order, Order]) -> int:
    return int.from_bytes(_to_bytes(registers, *orders), "big")


def in_valid_range(p: RegisterPoint, value: float) -> bool:
    """Whether a decoded value (engineering unit) is plausible for ``p``."""
    return p.valid_range is None or p.valid_range[0] <= value <= p.valid_range[1]


def decode_point(
    p: RegisterPoint,
    registers: list[int],
    orders: tuple[Order, Order] = ("big", "big"),
    sunssf: int | None = None,
) -> float | None:
    """Decode one point to its engineering unit; ``None`` when the device says it has no value
    (a "not available" pattern, a non-finite float, an unimplemented or out-of-range scale
    factor) or the scaled value is too large for a float."""
    raw = decode_raw(p, registers, orders)
    if _pattern(registers, orders) in not_available_patterns(p) or not math.isfinite(raw):
        return None
    if p.sf_address is not None:
        if sunssf is None or abs(sunssf) > SUNSSF_LIMIT:
            return None
        value = float(raw) * p.scale * 10.0**sunssf + p.offset
    else:
        value = float(raw) * p.scale + p.offset
    return value if math.isfinite(value) else None


def encode_point(
    p: RegisterPoint,
    value: float,
    orders: tuple[Order, Order] = ("big", "big"),
    sunssf: int | None = None,
) -> list[int]:
    """Encode an engineering value into ``p.count`` registers (the inverse of decode_point).

    Raises ValueError when the value does not fit the register type.
    """
    code, _, _ = _LAYOUT[p.type]
    scaled = (value - p.offset) / p.scale
    if p.sf_address is not None:
        scaled /= 10.0 ** (sunssf or 0)
    if code in "fd":
        raw_bytes = struct.pack(">" + code, scaled)
    else:
        if not math.isfinite(scaled):
            raise ValueError(f"{p.name}: {value!r} is not a finite number")
        raw = round(scaled)
        try:
            raw_bytes = struct.pack(">" + code, raw)
        except struct.error:
            raise ValueError(
                f"{p.name}: {value} {p.unit} does not fit a {p.type.value} register "
                f"with scale {p.scale}"
            ) from None
    return _from_bytes(raw_bytes, *orders)


def signed_scale_factor(register: int) -> int:
    """A ``sunssf`` register (int16) as the signed number it holds."""
    return register - 0x10000 if register >= 0x8000 else register


def scale_factor(register: int) -> int | None:
    """A SunSpec scale factor register (``sunssf``, int16) as a power of ten; ``None`` when the
    device marks it not implemented (0x8000) or it lies outside -10..10 (:data:`SUNSSF_LIMIT`)."""
    sf = signed_scale_factor(register)
    return None if abs(sf) > SUNSSF_LIMIT else sf


def decode_registers(
    regmap: RegisterMap, image: Mapping[int, int], points: Sequence[RegisterPoint] | None = None
) -> dict[str, float | None]:
    """Decode ``points`` (every point of the map by default) from a register image
    ``{address: register}`` holding their registers and their scale factors."""
    out: dict[str, float | None] = {}
    for p in points if points is not None else regmap.points:
        regs = [image[a] for a in range(p.address, p.end)]
        sf = scale_factor(image[p.sf_address]) if p.sf_address is not None else None
        out[p.name] = decode_point(p, regs, regmap.orders(p), sf)
    return out


def load_register_map(path: Path) -> RegisterMap:
    """Load a plain register map TOML file (``[map]`` table and ``[[points]]`` array)."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    header = data.pop("map", {})
    return RegisterMap.model_validate({**header, **data})
