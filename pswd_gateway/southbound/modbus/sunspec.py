"""SunSpec register maps resolved from pysunspec2's model definitions.

A SunSpec map file names models and points, never addresses::

    [map]
    name = "sunspec_meter"
    [sunspec]
    base_address = 40000
    models = [1, 701]
    [[points]]
    name = "active_power"
    model = 701
    point = "W"

At load time every point is resolved to an absolute address, a register type and the address of
its scale-factor register, from the model definitions that ship with pysunspec2. Models sit one
after the other behind the two-register ``SunS`` marker; each starts with its ID and length.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import sunspec2.device as ss_device
from pydantic import BaseModel, ConfigDict, Field

from pswd_gateway.southbound.modbus.registermap import (
    MAX_READ_REGISTERS,
    DataType,
    RegisterMap,
    RegisterPoint,
    load_register_map,
)

__all__ = [
    "END_MODEL_ID",
    "SUNS_MARKER",
    "SunSpecLayout",
    "SunSpecRegisterMap",
    "load_device_map",
    "model_layout",
    "resolve_sunspec_map",
]

SUNS_MARKER: Final = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID: Final = 0xFFFF

_TYPES: Final[Mapping[str, DataType]] = {t.value: t for t in DataType}


class _SunSpecPointRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    model: int
    point: str
    unit: str | None = None
    scale: float = 1.0
    access: Literal["r", "rw"] | None = None
    poll_every: Annotated[int, Field(ge=1, le=10_000)] = 1
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""


class _SunSpecSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_address: Annotated[int, Field(ge=0, le=65535)] = 40000
    models: tuple[int, ...]


class _SunSpecMapFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    description: str = ""
    sunspec: _SunSpecSection
    points: tuple[_SunSpecPointRef, ...]


class SunSpecLayout(BaseModel):
    """Where each model starts (its ID register) and how long it is (L, without ID and L)."""

    model_config = ConfigDict(frozen=True)

    base_address: int
    starts: dict[int, int]
    lengths: dict[int, int]

    @property
    def end_address(self) -> int:
        """Address of the end marker (ID 0xFFFF, L 0)."""
        last = max(self.starts, key=lambda m: self.starts[m])
        return self.starts[last] + 2 + self.lengths[last]


@cache
def _model(model_id: int) -> Any:
    model = ss_device.Model(model_id)
    if model.error_info:
        raise ValueError(f"SunSpec model {model_id}: {str(model.error_info).strip()}")
    return model


def model_layout(base_address: int, models: tuple[int, ...]) -> SunSpecLayout:
    """The address of every model when they follow each other behind the SunS marker."""
    starts: dict[int, int] = {}
    lengths: dict[int, int] = {}
    address = base_address + len(SUNS_MARKER)
    for mid in models:
        length = int(_model(mid).len) - 2
        starts[mid] = address
        lengths[mid] = length
        address += 2 + length
    return SunSpecLayout(base_address=base_address, starts=starts, lengths=lengths)


def _resolve(ref: _SunSpecPointRef, layout: SunSpecLayout) -> RegisterPoint:
    if ref.model not in layout.starts:
        raise ValueError(f"point {ref.name!r}: model {ref.model} is not in [sunspec] models")
    model = _model(ref.model)
    point = model.points.get(ref.point)
    if point is None:
        raise ValueError(
            f"point {ref.name!r}: SunSpec model {ref.model} has no point {ref.point!r}"
        )
    pdef: dict[str, Any] = point.pdef
    ptype = _TYPES.get(str(pdef["type"]))
    if ptype is None:
        raise ValueError(
            f"point {ref.name!r}: SunSpec type {pdef['type']!r} of {ref.model}.{ref.point} "
            "is not numeric"
        )
    sf_address = None
    sf = pdef.get("sf")
    if isinstance(sf, str):
        sf_point = model.points.get(sf)
        if sf_point is None:
            raise ValueError(f"point {ref.name!r}: scale factor {sf!r} not found in the model")
        sf_address = layout.starts[ref.model] + int(sf_point.offset)
    scale = ref.scale * (10.0 ** int(sf) if isinstance(sf, int) else 1.0)
    access = ref.access or ("rw" if pdef.get("access") == "RW" else "r")
    return RegisterPoint(
        name=ref.name,
        address=layout.starts[ref.model] + int(point.offset),
        type=ptype,
        unit=ref.unit if ref.unit is not None else str(pdef.get("units", "")),
        scale=scale,
        sf_address=sf_address,
        access=access,
        poll_every=ref.poll_every,
        minimum=ref.minimum,
        maximum=ref.maximum,
        description=ref.description or f"SunSpec {ref.model}.{ref.point}",
    )


class SunSpecRegisterMap(RegisterMap):
    """A register map whose points come from SunSpec models; knows the expected layout.

    A SunSpec chain is one block of readable registers (each model's header and body), so a
    read may span any gap that fits in it: the battery's 701/702/704/802 points are three reads,
    not ten."""

    layout: SunSpecLayout
    read_gap: int = MAX_READ_REGISTERS


def resolve_sunspec_map(data: Mapping[str, Any]) -> SunSpecRegisterMap:
    """Validate a SunSpec map document and resolve every point to registers."""
    spec = _SunSpecMapFile.model_validate(data)
    layout = model_layout(spec.sunspec.base_address, spec.sunspec.models)
    return SunSpecRegisterMap(
        name=spec.name,
        description=spec.description,
        points=tuple(_resolve(ref, layout) for ref in spec.points),
        layout=layout,
    )


def load_device_map(path: Path) -> RegisterMap:
    """Load a register map file: a plain map, or a SunSpec map (with a ``[sunspec]`` table)."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    if "sunspec" not in data:
        return load_register_map(path)
    header = data.pop("map", {})
    return resolve_sunspec_map({**header, **data})
