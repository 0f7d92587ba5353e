"""SunSpec register maps resolved from pysunspec2's model definitions.

A SunSpec map file names models and points, never addresses::

    [map]
    name = "sunspec_meter"
    [sunspec]
    base_address = "auto"      # or the one address the device's "SunS" marker is at
    models = [1, 701]
    [[points]]
    name = "active_power"
    model = 701
    point = "W"

At load time every point is resolved to a register type, an offset in its model and the offset
of its scale-factor register, from the model definitions that ship with pysunspec2, and placed
at a nominal address: the ``models`` one after the other behind the two-register ``SunS``
marker (at ``base_address``, 40000 when "auto"); each model starts with its ID and length.

A device's chain may start elsewhere, order its models differently or carry more of them. On
connect the driver finds the marker (at ``base_address``, or with "auto" at 40000, 50000 then 0,
:data:`BASE_ADDRESSES`), walks the model headers to the end model, and
:meth:`SunSpecRegisterMap.relocated` moves every point to where its model really is.
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
    "BASE_ADDRESSES",
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
BASE_ADDRESSES: Final = (40000, 50000, 0)
"""Where the SunSpec specification lets a device put its ``SunS`` marker, in the order a
client looks (``base_address = "auto"``)."""
NOMINAL_BASE: Final = BASE_ADDRESSES[0]

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
    valid_range: tuple[float, float] | None = None
    not_available: tuple[int, ...] | None = None
    description: str = ""


class _SunSpecSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_address: Annotated[int, Field(ge=0, le=65535)] | Literal["auto"] = "auto"
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

    def describe(self) -> str:
        """The chain as a log or error message shows it: ``1@40002 701@40070``."""
        return " ".join(f"{m}@{a}" for m, a in sorted(self.starts.items(), key=lambda i: i[1]))


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
        valid_range=ref.valid_range,
        not_available=ref.not_available,
        description=ref.description or f"SunSpec {ref.model}.{ref.point}",
    )


class SunSpecRegisterMap(RegisterMap):
    """A register map whose points come from SunSpec models, placed at the nominal layout
    until :meth:`relocated` places them where a device's chain has its models.

    A SunSpec chain is one block of readable registers (each model's header and body), so a
    read may span any gap that fits in it: the battery's 701/702/704/802 points are three reads,
    not ten."""

    layout: SunSpecLayout
    read_gap: int = MAX_READ_REGISTERS
    base_addresses: tuple[int, ...] = BASE_ADDRESSES
    """Where to look for the ``SunS`` marker, in order (one address when the map fixes it)."""
    point_models: dict[str, int]
    """The model of every point, by point name."""

    @property
    def models(self) -> tuple[int, ...]:
        """The models the points are in, in chain order."""
        used = set(self.point_models.values())
        return tuple(m for m in self.layout.starts if m in used)

    def relocated(self, found: SunSpecLayout) -> SunSpecRegisterMap:
        """This map with every point moved to where its model is in a device's chain.

        ``found`` is the chain the device has (the first instance of each model). Raises
        ValueError when a model the points use is missing or too short for them."""
        missing = [m for m in self.models if m not in found.starts]
        if missing:
            raise ValueError(
                f"register map {self.name!r} reads SunSpec model(s) "
                f"{', '.join(map(str, missing))}, which the device's chain "
                f"({found.describe()}) does not have"
            )
        points: list[RegisterPoint] = []
        for p in self.points:
            model = self.point_models[p.name]
            shift = found.starts[model] - self.layout.starts[model]
            if p.end + shift > found.starts[model] + 2 + found.lengths[model]:
                raise ValueError(
                    f"point {p.name!r} lies beyond the end of SunSpec model {model} "
                    f"(L={found.lengths[model]}) at {found.starts[model]}"
                )
            sf = None if p.sf_address is None else p.sf_address + shift
            points.append(p.model_copy(update={"address": p.address + shift, "sf_address": sf}))
        return self.model_copy(update={"points": tuple(points), "layout": found})


def resolve_sunspec_map(data: Mapping[str, Any]) -> SunSpecRegisterMap:
    """Validate a SunSpec map document and resolve every point to registers."""
    spec = _SunSpecMapFile.model_validate(data)
    base = spec.sunspec.base_address
    layout = model_layout(NOMINAL_BASE if base == "auto" else base, spec.sunspec.models)
    return SunSpecRegisterMap(
        name=spec.name,
        description=spec.description,
        points=tuple(_resolve(ref, layout) for ref in spec.points),
        layout=layout,
        base_addresses=BASE_ADDRESSES if base == "auto" else (base,),
        point_models={ref.name: ref.model for ref in spec.points},
    )


def load_device_map(path: Path) -> RegisterMap:
    """Load a register map file: a plain map, or a SunSpec map (with a ``[sunspec]`` table)."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    if "sunspec" not in data:
        return load_register_map(path)
    header = data.pop("map", {})
    return resolve_sunspec_map({**header, **data})
