"""PointStore: the latest value of every point, frozen snapshots, change subscriptions.

The store is the message boundary of the gateway: plain :class:`Point` values in, plain
:class:`Snapshot` values out. Everything runs on the event loop thread; subscribers are called
synchronously after each update batch and must not block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from pswd_gateway.domain.points import Point, Quality, Sample, split_key
from pswd_gateway.domain.signals import Signal, SiteMap

__all__ = ["PointStore", "Snapshot", "Subscription"]

Listener = Callable[[Sequence[Point]], None]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable picture of every point at ``taken_at`` (POSIX seconds).

    Every controller in one cycle sees the same snapshot; nothing reads a device mid-decision.
    """

    taken_at: float
    points: Mapping[str, Point]

    def get(self, key: str) -> Point | None:
        return self.points.get(key)

    def value(self, key: str, *, usable_only: bool = True) -> float | None:
        """The value of ``key``; ``None`` when absent or, with ``usable_only``, invalid or
        implausible (out of range: :attr:`Point.plausible`)."""
        p = self.points.get(key)
        if p is None or (usable_only and not p.plausible):
            return None
        return p.value

    def read(self, signal: Signal, site: SiteMap) -> Sample | None:
        """The signal's value now: its device point(s) on this site, or the site setting it
        reads (good, at ``taken_at``); ``None`` when no device plays its role or a point is
        absent. Invalid samples are returned as such: callers decide (see :meth:`usable`)."""
        if signal.setting is not None:
            return Sample(site.setting(signal.setting), Quality.GOOD, self.taken_at)
        assert signal.role is not None
        devices = site.devices(signal.role)
        return self.total([f"{d}.{signal.point}" for d in devices])

    def usable(self, signal: Signal, site: SiteMap) -> float | None:
        """The signal's value when it may be used for control: present, not invalid, and no
        point of it out of its plausible range (a questionable point of a late device is)."""
        if signal.setting is not None:
            return site.setting(signal.setting)
        assert signal.role is not None
        return self.usable_total([f"{d}.{signal.point}" for d in site.devices(signal.role)])

    def total(self, keys: Sequence[str]) -> Sample | None:
        """Several points as one: their sum, the worst quality and the oldest source time;
        ``None`` when there are no keys or any is absent."""
        points = [self.points.get(k) for k in keys]
        present = [p for p in points if p is not None]
        if not present or len(present) != len(points):
            return None
        worst = max((p.quality for p in present), key=lambda q: q.rank)
        return Sample(sum(p.value for p in present), worst, min(p.source_ts for p in present))

    def usable_total(self, keys: Sequence[str]) -> float | None:
        """The sum of several points; ``None`` when any is absent, invalid or implausible (or
        none given)."""
        points = [self.points.get(k) for k in keys]
        plausible = [p for p in points if p is not None and p.plausible]
        if not plausible or len(plausible) != len(points):
            return None
        return sum(p.value for p in plausible)

    def device(self, device: str) -> dict[str, Point]:
        """Every point of ``device``, keyed by point name (without the device prefix)."""
        prefix = device + "."
        return {k[len(prefix) :]: p for k, p in self.points.items() if k.startswith(prefix)}

    def worst_quality_by_device(self) -> dict[str, Quality]:
        """Each device's worst point quality, by device name in order (no points: no entry)."""
        worst: dict[str, Quality] = {}
        for p in self.points.values():
            current = worst.get(p.device)
            if current is None or p.quality.rank > current.rank:
                worst[p.device] = p.quality
        return dict(sorted(worst.items()))

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points.values())

    def __len__(self) -> int:
        return len(self.points)


@dataclass(eq=False)
class Subscription:
    """A change subscription; call :meth:`cancel` to stop receiving updates."""

    store: PointStore
    listener: Listener
    prefixes: tuple[str, ...] | None = None
    active: bool = field(default=True)

    def wants(self, key: str) -> bool:
        return self.prefixes is None or key.startswith(self.prefixes)

    def cancel(self) -> None:
        self.active = False
        self.store._subscriptions.discard(self)  # noqa: SLF001 - the store owns the set


class PointStore:
    """Latest value per point; produces frozen snapshots; notifies subscribers of changes."""

    def __init__(self) -> None:
        self._points: dict[str, Point] = {}
        self._by_device: dict[str, set[str]] = {}
        self._subscriptions: set[Subscription] = set()
        self._frozen: Snapshot | None = None
        self.updates_total = 0

    def update(self, points: Iterable[Point]) -> None:
        """Store a batch of readings and notify subscribers once per batch."""
        batch = list(points)
        if not batch:
            return
        for p in batch:
            if p.name not in self._points:
                self._by_device.setdefault(split_key(p.name)[0], set()).add(p.name)
            self._points[p.name] = p
        self.updates_total += len(batch)
        self._frozen = None
        self._notify(batch)

    def mark_device(self, device: str, quality: Quality) -> list[Point]:
        """Set the quality of every point of ``device``; returns the points that changed."""
        changed = [
            p.with_quality(quality)
            for key in self._by_device.get(device, ())
            if (p := self._points[key]).quality is not quality
        ]
        if changed:
            for p in changed:
                self._points[p.name] = p
            self._frozen = None
            self._notify(changed)
        return changed

    def get(self, key: str) -> Point | None:
        return self._points.get(key)

    def devices(self) -> list[str]:
        return sorted(self._by_device)

    def snapshot(self, taken_at: float) -> Snapshot:
        """A frozen picture of the store; cheap when nothing changed since the last one."""
        frozen = self._frozen
        if frozen is None:
            frozen = Snapshot(taken_at, MappingProxyType(dict(self._points)))
            self._frozen = frozen
            return frozen
        return Snapshot(taken_at, frozen.points)

    def subscribe(self, listener: Listener, prefixes: Sequence[str] | None = None) -> Subscription:
        """Call ``listener`` with each batch of changed points whose key starts with a prefix."""
        sub = Subscription(self, listener, tuple(prefixes) if prefixes is not None else None)
        self._subscriptions.add(sub)
        return sub

    def _notify(self, batch: list[Point]) -> None:
        for sub in list(self._subscriptions):
            if not sub.active:
                continue
            wanted = batch if sub.prefixes is None else [p for p in batch if sub.wants(p.name)]
            if wanted:
                sub.listener(wanted)
