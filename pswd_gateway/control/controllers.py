"""Controllers as small objects over one process image, and the arbiter between them.

Each run of the control cycle takes one :class:`ProcessImage` (one store snapshot, the site's
settings, the time, the reading that triggered the run); every controller sees the same image
and answers a list of :class:`SetpointRequest`; the :class:`Arbiter` turns all requests into one
value per device point; the cycle writes those through the device layer (the pollers), in the
order the requests first named them.

Controllers run in a stated priority order (the cycle's list, first = highest). For one point:

1. the highest-priority ``SET`` is the base (lower-priority ``SET``\\ s are overridden);
2. every ``ADD`` is added to it (a droop term on top of the battery's setpoint); with no
   ``SET``, to 0;
3. the bounds (``AT_LEAST``/``AT_MOST``) clamp the result, lowest priority first, so where two
   bounds disagree the higher-priority one wins — hard limits (the battery's rating, an import
   limit) come from the highest-priority controllers.

A point with only bounds is not written. This is the shape of OpenEMS's cycle (process image →
controllers → write) with the ESS power constraints reduced to what the site needs.

Adding a controller is adding a module with a class that has ``name`` and ``step(image)``, and
putting it in the cycle's list at its priority.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pswd_gateway.config import SiteConfig
from pswd_gateway.store import Snapshot

__all__ = [
    "Arbiter",
    "Controller",
    "Kind",
    "ProcessImage",
    "Resolved",
    "SetpointRequest",
    "WritePolicy",
]


@dataclass(frozen=True, slots=True)
class ProcessImage:
    """What every controller of one run sees."""

    snap: Snapshot
    site: SiteConfig
    now: float
    """Wall-clock time of the run (POSIX seconds)."""
    received_ts: float | None = None
    """When the meter reading that triggered the run arrived; ``None`` for a timer run."""


class Kind(enum.StrEnum):
    SET = "set"
    ADD = "add"
    AT_LEAST = "at_least"
    AT_MOST = "at_most"


@dataclass(frozen=True, slots=True)
class SetpointRequest:
    """One controller's wish for one device point (SI value)."""

    device: str
    point: str
    value: float
    kind: Kind = Kind.SET


class Controller(Protocol):
    """A controller: a name and one step per run."""

    name: str

    def step(self, image: ProcessImage) -> Sequence[SetpointRequest]:
        """The requests of this run (empty: nothing to say this time)."""
        ...


@dataclass(frozen=True, slots=True)
class Resolved:
    """The value the arbiter settled on for one point, and who decided it."""

    device: str
    point: str
    value: float
    by: tuple[str, ...]
    """Names of the controllers whose requests shaped the value, in priority order."""
    limited_by: str | None = None
    """The controller whose bound clamped the value, if one did."""


@dataclass
class _Point:
    base: tuple[str, float] | None = None
    adds: list[tuple[str, float]] = field(default_factory=list)
    bounds: list[tuple[str, Kind, float]] = field(default_factory=list)

    def settle(self, device: str, point: str) -> Resolved | None:
        """Base, plus adds, clamped by the bounds lowest priority first; ``None``: bounds
        only, nothing to write."""
        if self.base is None and not self.adds:
            return None
        value = self.base[1] if self.base is not None else 0.0
        by = [self.base[0]] if self.base is not None else []
        for name, delta in self.adds:
            value += delta
            by.append(name)
        limited_by = None
        for name, kind, bound in reversed(self.bounds):  # lowest priority first
            clamped = max(value, bound) if kind is Kind.AT_LEAST else min(value, bound)
            if clamped != value:
                value, limited_by = clamped, name
        return Resolved(device, point, value, tuple(dict.fromkeys(by)), limited_by)


class Arbiter:
    """Settles the requests of controllers given in priority order (first = highest)."""

    def resolve(self, requests: Sequence[tuple[str, Sequence[SetpointRequest]]]) -> list[Resolved]:
        """``requests``: ``(controller name, its requests)`` in priority order."""
        points: dict[tuple[str, str], _Point] = {}
        for name, asked in requests:
            for r in asked:
                p = points.setdefault((r.device, r.point), _Point())
                if r.kind is Kind.SET:
                    if p.base is None:
                        p.base = (name, r.value)
                elif r.kind is Kind.ADD:
                    p.adds.append((name, r.value))
                else:
                    p.bounds.append((name, r.kind, r.value))
        settled = (p.settle(device, point) for (device, point), p in points.items())
        return [r for r in settled if r is not None]


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """When a resolved value is written to its device.

    Written when nothing was written yet, when it moved by ``deadband`` or more from the last
    value written, or when ``rewrite_after_s`` passed (the device may have been reset; a keep-
    alive: the last value is written again even when no controller asked this run).
    """

    deadband: float = 0.0
    rewrite_after_s: float = math.inf

    def due(self, value: float, last: tuple[float, float] | None, now: float) -> bool:
        """``last``: (value, when) of the last successful write."""
        if last is None:
            return True
        return abs(value - last[0]) >= max(self.deadband, 1e-12) or now - last[1] >= (
            self.rewrite_after_s
        )
