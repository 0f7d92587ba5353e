"""PointStore: latest values, frozen snapshots, device quality marks, subscriptions."""

from __future__ import annotations

from collections.abc import Sequence

from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.store import PointStore, Snapshot


def pt(name: str, value: float, quality: Quality = Quality.GOOD, ts: float = 1.0) -> Point:
    return Point(name, value, "W", quality, ts, ts)


def test_snapshot_is_frozen_while_the_store_moves_on() -> None:
    """A snapshot taken before an update keeps the old value: controllers see one picture."""
    store = PointStore()
    store.update([pt("meter.active_power", 1.0)])
    snap = store.snapshot(10.0)
    store.update([pt("meter.active_power", 2.0)])
    assert snap.value("meter.active_power") == 1.0
    assert store.snapshot(11.0).value("meter.active_power") == 2.0


def test_invalid_points_are_not_usable_values() -> None:
    """An invalid point reads as None unless the caller asks for it explicitly."""
    store = PointStore()
    store.update([pt("meter.active_power", 5.0, Quality.INVALID)])
    snap = store.snapshot(0.0)
    assert snap.value("meter.active_power") is None
    assert snap.value("meter.active_power", usable_only=False) == 5.0


def test_mark_device_changes_only_that_device_and_keeps_values() -> None:
    """Marking a device questionable keeps its last values and timestamps, flags them."""
    store = PointStore()
    store.update([pt("a.x", 1.0, ts=3.0), pt("a.y", 2.0), pt("b.x", 3.0)])
    changed = store.mark_device("a", Quality.QUESTIONABLE)
    assert {p.name for p in changed} == {"a.x", "a.y"}
    snap = store.snapshot(0.0)
    assert snap.get("a.x") == pt("a.x", 1.0, Quality.QUESTIONABLE, ts=3.0)
    assert snap.get("b.x") == pt("b.x", 3.0)
    assert store.mark_device("a", Quality.QUESTIONABLE) == []


def test_subscribers_get_batches_filtered_by_prefix_until_cancelled() -> None:
    """A subscription sees only its prefixes, once per batch, and nothing after cancel."""
    store = PointStore()
    seen: list[list[str]] = []

    def listener(points: Sequence[Point]) -> None:
        seen.append([p.name for p in points])

    sub = store.subscribe(listener, ["meter."])
    store.update([pt("meter.active_power", 1.0), pt("bess.soc", 0.5), pt("meter.frequency", 50)])
    store.update([pt("bess.soc", 0.6)])
    sub.cancel()
    store.update([pt("meter.active_power", 2.0)])
    assert seen == [["meter.active_power", "meter.frequency"]]


def test_snapshot_device_view_strips_the_prefix() -> None:
    """snapshot.device() gives a device's points keyed by point name."""
    store = PointStore()
    store.update([pt("bess.soc", 0.5), pt("bess.active_power", 1e6), pt("bessy.x", 0)])
    assert set(store.snapshot(0.0).device("bess")) == {"soc", "active_power"}
    assert store.devices() == ["bess", "bessy"]


def test_a_total_sums_points_with_the_worst_quality_and_oldest_time() -> None:
    points = {
        "a.total_power": Point("a.total_power", 10.0, "W", Quality.GOOD, 5.0, 5.1),
        "b.total_power": Point("b.total_power", 20.0, "W", Quality.QUESTIONABLE, 4.0, 4.1),
        "c.total_power": Point("c.total_power", 30.0, "W", Quality.INVALID, 6.0, 6.1),
    }
    snap = Snapshot(7.0, points)
    assert snap.total(["a.total_power", "b.total_power"]) == (30.0, Quality.QUESTIONABLE, 4.0)
    assert snap.usable_total(["a.total_power", "b.total_power"]) == 30.0
    assert snap.total(["a.total_power", "c.total_power"]) == (40.0, Quality.INVALID, 5.0)
    assert snap.usable_total(["a.total_power", "c.total_power"]) is None
    assert snap.total(["a.total_power", "missing.total_power"]) is None
    assert snap.total([]) is None
