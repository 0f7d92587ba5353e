"""Points: one measured or commanded value with IEC 61850-style quality and timestamps."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, NamedTuple

from pswd_gateway.domain.units import SiUnit

__all__ = ["NOT_AVAILABLE", "OUT_OF_RANGE", "Point", "Quality", "Sample", "point_key", "split_key"]

OUT_OF_RANGE: Final = "out of range"
"""``Point.reason`` of a reading outside its plausible range (published questionable)."""
NOT_AVAILABLE: Final = "not available"
"""``Point.reason`` of a reading the device says it does not have (published invalid)."""


class Quality(enum.StrEnum):
    """IEC 61850-7-3 validity, the part of quality every consumer must honour.

    ``good`` — fresh reading; ``questionable`` — the device is late (a poll slot was missed
    or timed out) and the value is the last one seen; ``invalid`` — the device is gone and
    the value must not be used for control.
    """

    GOOD = "good"
    QUESTIONABLE = "questionable"
    INVALID = "invalid"

    @property
    def rank(self) -> int:
        """Order used to combine qualities: the worst one wins."""
        return _RANK[self]


_RANK = {Quality.GOOD: 0, Quality.QUESTIONABLE: 1, Quality.INVALID: 2}


@dataclass(frozen=True, slots=True)
class Point:
    """The latest value of one point.

    ``name`` is ``"<device>.<point>"``; ``value`` is in SI units (W, var, V, A, Hz, °C, J,
    ratio 0..1, s) named by ``unit``. ``source_ts`` is when the device says the value was
    measured (or, when the device gives no time, when the request was sent); ``received_ts``
    is when the gateway got it. Both are POSIX seconds. ``reason`` says why the reading itself
    is not good (IEC 61850-7-3 detailQual: ``"out of range"``, ``"not available"``); ``None``
    for a plausible reading, whatever the device's lateness made of its quality.
    """

    name: str
    value: float
    unit: SiUnit
    quality: Quality
    source_ts: float
    received_ts: float
    reason: str | None = None

    @property
    def plausible(self) -> bool:
        """Fit for control: not invalid, and no reason to doubt the reading itself (a
        questionable point of a late device is plausible; an out-of-range one is not)."""
        return self.quality is not Quality.INVALID and self.reason is None

    @property
    def device(self) -> str:
        return split_key(self.name)[0]

    def with_quality(self, quality: Quality) -> Point:
        """The same reading with another quality (value, timestamps and reason kept)."""
        return Point(
            self.name,
            self.value,
            self.unit,
            quality,
            self.source_ts,
            self.received_ts,
            self.reason,
        )


class Sample(NamedTuple):
    """One value of a signal as a consumer sees it: value (SI), quality, source time (POSIX s).

    For a signal several points add up to (the IT load), the sum, the worst quality and the
    oldest source time."""

    value: float
    quality: Quality
    source_ts: float


def point_key(device: str, point: str) -> str:
    """The store key of a device's point."""
    return f"{device}.{point}"


def split_key(key: str) -> tuple[str, str]:
    """Split a store key into (device, point)."""
    device, _, point = key.partition(".")
    return device, point
