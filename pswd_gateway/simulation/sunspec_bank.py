"""A SunSpec register image built from pysunspec2's model definitions.

The layout — where each model starts, each point's offset, length, type, scale factor and
access — comes from ``sunspec2`` (``sunspec2.device.Model`` over the JSON definitions in
``sunspec2/models/json``); nothing here types an offset by hand. The image is::

    base+0  "SunS" (0x5375 0x6E53)
    base+2  model 1 (ID, L, points…), then each further model in order
    …       0xFFFF 0x0000  (end model)

Each model's values live in its ``sunspec2.device.Model``; a read re-encodes the models it
touches (``Model.get_mb``) after the device's :meth:`SunSpecBehaviour.update` put fresh values
in them. Writes are checked against the definitions (access, whole points, enumerations and
bitfields) before :meth:`SunSpecBehaviour.apply` gets them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import sunspec2.device as ss_device
import sunspec2.mb as ss_mb
import sunspec2.mdef as ss_mdef
from pymodbus.constants import ExcCodes

from pswd_gateway.simulation.physics import Truth

__all__ = [
    "END_MARKER",
    "SUNS_MARKER",
    "SunSpecBank",
    "SunSpecBehaviour",
    "SunSpecPoint",
    "put",
    "scale_factor",
]

SUNS_MARKER: Final = (0x5375, 0x6E53)
END_MARKER: Final = (0xFFFF, 0x0000)
DEFAULT_BASE: Final = 40000

# SunSpec type -> (lowest, highest) implemented raw value; the sentinel is outside the range
_RAW_RANGE: Final[dict[str, tuple[int, int]]] = {
    ss_mdef.TYPE_INT16: (-0x7FFF, 0x7FFF),
    ss_mdef.TYPE_UINT16: (0, 0xFFFE),
    ss_mdef.TYPE_COUNT: (0, 0xFFFE),
    ss_mdef.TYPE_ACC16: (0, 0xFFFF),
    ss_mdef.TYPE_ENUM16: (0, 0xFFFE),
    ss_mdef.TYPE_BITFIELD16: (0, 0x7FFF),
    ss_mdef.TYPE_INT32: (-0x7FFFFFFF, 0x7FFFFFFF),
    ss_mdef.TYPE_UINT32: (0, 0xFFFFFFFE),
    ss_mdef.TYPE_ACC32: (0, 0xFFFFFFFF),
    ss_mdef.TYPE_ENUM32: (0, 0xFFFFFFFE),
    ss_mdef.TYPE_BITFIELD32: (0, 0x7FFFFFFF),
    ss_mdef.TYPE_INT64: (-0x7FFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF),
    ss_mdef.TYPE_UINT64: (0, 0xFFFFFFFFFFFFFFFE),
    ss_mdef.TYPE_ACC64: (0, 0x7FFFFFFFFFFFFFFF),
    ss_mdef.TYPE_SUNSSF: (-10, 10),
}
_FLOATS: Final = frozenset({ss_mdef.TYPE_FLOAT32, ss_mdef.TYPE_FLOAT64})
_ENUMS: Final = frozenset({ss_mdef.TYPE_ENUM16, ss_mdef.TYPE_ENUM32})
_BITFIELDS: Final = frozenset({ss_mdef.TYPE_BITFIELD16, ss_mdef.TYPE_BITFIELD32})


def scale_factor(model: Any, name: str) -> int:
    """The scale factor that applies to point ``name`` of ``model`` (0 when it has none)."""
    point = model.points[name]
    sf_name = point.pdef.get(ss_mdef.SF)
    if sf_name is None:
        return 0
    if isinstance(sf_name, int):
        return sf_name
    sf_value = model.points[sf_name].value
    return int(sf_value) if sf_value is not None else 0


def put(model: Any, name: str, value: float | None) -> None:
    """Store an engineering value (W, V, %, …) in a point, scaled by its scale factor and
    clamped to what the register type can carry; ``None`` marks it not implemented."""
    point = model.points[name]
    if value is None or not math.isfinite(value):
        point.value = None
        return
    if point.pdef[ss_mdef.TYPE] in _FLOATS:
        point.value = float(value)  # the float meter models (211-214) carry it as it is
        return
    raw = round(value * 10.0 ** -scale_factor(model, name))
    lo, hi = _RAW_RANGE.get(point.pdef[ss_mdef.TYPE], (-(1 << 63), (1 << 64) - 1))
    point.value = min(max(raw, lo), hi)


@dataclass(frozen=True, slots=True)
class SunSpecPoint:
    """Where one point of a served model sits in the image."""

    model_id: int
    path: str
    """``"WSet"``, or ``"PFWInj.PF"`` inside a group."""
    address: int
    length: int
    writable: bool
    point: Any
    """The ``sunspec2.device.Point``."""


class SunSpecBehaviour(Protocol):
    """What a simulated SunSpec device does with its models."""

    @property
    def model_ids(self) -> tuple[int, ...]: ...

    def initialise(self, models: Mapping[int, Any]) -> None:
        """Set nameplate values, settings and scale factors once."""
        ...

    def update(self, model_id: int, model: Any, truth: Truth) -> None:
        """Put the values at ``truth.t`` into ``model`` before it is read."""
        ...

    def apply(self, writes: Mapping[tuple[int, str], int | str]) -> ExcCodes | None:
        """Act on validated writes (``(model id, point path) → raw value``); may refuse."""
        ...


def _walk(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, point in group.points.items():
        yield prefix + name, point
    for gname, sub in group.groups.items():
        if isinstance(sub, list):
            for i, item in enumerate(sub):
                yield from _walk(item, f"{prefix}{gname}[{i}].")
        else:
            yield from _walk(sub, f"{prefix}{gname}.")


def _registers(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


class SunSpecBank:
    """The register image of one SunSpec device (a :class:`RegisterBank`)."""

    def __init__(
        self,
        behaviour: SunSpecBehaviour,
        sample: Callable[[], Truth],
        base: int = DEFAULT_BASE,
    ) -> None:
        self.behaviour = behaviour
        self._sample = sample
        self._base = base
        self.models: dict[int, Any] = {}
        self.model_addresses: dict[int, int] = {}
        self._spans: list[tuple[int, int, int]] = []  # (start, end, model id)
        self.points: list[SunSpecPoint] = []
        address = base + len(SUNS_MARKER)
        for model_id in behaviour.model_ids:
            model = ss_device.Model(model_id)
            if model.error_info:
                raise ValueError(f"SunSpec model {model_id}: {model.error_info.strip()}")
            self.models[model_id] = model
            self.model_addresses[model_id] = address
            self._spans.append((address, address + model.len, model_id))
            for path, point in _walk(model):
                self.points.append(
                    SunSpecPoint(
                        model_id=model_id,
                        path=path,
                        address=address + point.offset,
                        length=point.len,
                        writable=point.pdef.get(ss_mdef.ACCESS) == ss_mdef.ACCESS_RW,
                        point=point,
                    )
                )
            address += model.len
        self.end_address = address
        behaviour.initialise(self.models)
        size = address + len(END_MARKER) - base
        self._registers = [0] * size
        self._readonly = [True] * size
        self._registers[0:2] = SUNS_MARKER
        self._registers[-2:] = END_MARKER
        for p in self.points:
            if p.writable:
                first = p.address - base
                self._readonly[first : first + p.length] = [False] * p.length
        for model_id, model in self.models.items():
            self._store_model(model_id, model)

    @property
    def base(self) -> int:
        return self._base

    @property
    def registers(self) -> list[int]:
        return self._registers

    @property
    def readonly(self) -> list[bool]:
        return self._readonly

    def point(self, model_id: int, path: str) -> SunSpecPoint:
        for p in self.points:
            if p.model_id == model_id and p.path == path:
                return p
        raise KeyError(f"model {model_id} has no point {path!r}")

    def _store_model(self, model_id: int, model: Any) -> None:
        first = self.model_addresses[model_id] - self._base
        data = _registers(model.get_mb())
        self._registers[first : first + len(data)] = data

    def _models_in(self, address: int, count: int) -> list[int]:
        end = address + count
        return [mid for start, stop, mid in self._spans if start < end and address < stop]

    def refresh(self, address: int, count: int) -> None:
        models = self._models_in(address, count)
        if not models:
            return
        truth = self._sample()
        for model_id in models:
            model = self.models[model_id]
            self.behaviour.update(model_id, model, truth)
            self._store_model(model_id, model)

    def write(self, address: int, values: list[int]) -> ExcCodes | None:
        end = address + len(values)
        touched = [p for p in self.points if p.address < end and address < p.address + p.length]
        covered = sum(p.length for p in touched)
        if not touched or covered != len(values):
            return ExcCodes.ILLEGAL_ADDRESS
        writes: dict[tuple[int, str], int | str] = {}
        for p in touched:
            if not p.writable or p.address < address or p.address + p.length > end:
                return ExcCodes.ILLEGAL_ADDRESS  # read-only, or only part of a multi-register point
            first = p.address - address
            data = b"".join(v.to_bytes(2, "big") for v in values[first : first + p.length])
            raw = p.point.info.data_to(data)
            if not _acceptable(p.point.pdef, raw):
                return ExcCodes.ILLEGAL_VALUE
            writes[(p.model_id, p.path)] = raw
        code = self.behaviour.apply(writes)
        if code is not None:
            return code
        for p in touched:
            p.point.set_value(writes[(p.model_id, p.path)])
        self._registers[address - self._base : end - self._base] = values
        return None


def _acceptable(pdef: Mapping[str, Any], raw: object) -> bool:
    """Whether a written raw value is allowed by the point's definition."""
    ptype = pdef[ss_mdef.TYPE]
    symbols: Sequence[Mapping[str, Any]] = pdef.get(ss_mdef.SYMBOLS) or ()
    if not isinstance(raw, int):
        return bool(ptype == ss_mdef.TYPE_STRING)
    if ptype in _ENUMS:
        return bool(symbols) and raw in {int(s[ss_mdef.VALUE]) for s in symbols}
    if ptype in _BITFIELDS:
        allowed = 0
        for s in symbols:
            allowed |= 1 << int(s[ss_mdef.VALUE])
        return (raw & ~allowed) == 0
    if ptype in _RAW_RANGE:
        lo, hi = _RAW_RANGE[ptype]
        return lo <= raw <= hi or raw == _unimplemented(ptype)
    return True


def _unimplemented(ptype: str) -> int | None:
    value = ss_mb.unimpl_value.get(ptype)
    return value if isinstance(value, int) else None
