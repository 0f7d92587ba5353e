"""Implausible readings never feed control as good: what the process image gives controllers."""

from __future__ import annotations

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.signals import BESS_POWER, CHW_SUPPLY_TEMP
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.store import PointStore

SITE = SiteConfig(grid_meter="meter", bess="bess", thermal="thermal")
NOW = 1_700_000_000.0


def reading(name: str, value: float, quality: Quality, reason: str | None = None) -> Point:
    return Point(name, value, SiUnit.CELSIUS, quality, NOW, NOW, reason)


def test_an_out_of_range_reading_is_not_usable_for_control() -> None:
    """95 °C chilled water, questionable "out of range", is shown as read (``read``) but is no
    value for a controller (``usable``, ``value``, ``usable_total``)."""
    store = PointStore()
    store.update([reading("thermal.chw_supply_temp", 95.0, Quality.QUESTIONABLE, "out of range")])
    snap = store.snapshot(NOW)
    sample = snap.read(CHW_SUPPLY_TEMP, SITE)
    assert sample is not None
    assert (sample.value, sample.quality) == (95.0, Quality.QUESTIONABLE)
    assert snap.usable(CHW_SUPPLY_TEMP, SITE) is None
    assert snap.value("thermal.chw_supply_temp") is None
    assert snap.usable_total(["thermal.chw_supply_temp"]) is None


def test_a_late_device_stays_usable_and_keeps_a_reading_reason() -> None:
    """A questionable point without a reason (its device is late: the last value seen) is still
    usable, as before; a device going late keeps an out-of-range point's reason."""
    store = PointStore()
    store.update([reading("thermal.chw_supply_temp", 18.0, Quality.GOOD)])
    store.update([Point("bess.active_power", 1e6, SiUnit.WATT, Quality.GOOD, NOW, NOW)])
    store.mark_device("thermal", Quality.QUESTIONABLE)
    snap = store.snapshot(NOW)
    assert snap.usable(CHW_SUPPLY_TEMP, SITE) == 18.0
    assert snap.usable(BESS_POWER, SITE) == 1e6
    store.update([reading("thermal.chw_supply_temp", 95.0, Quality.QUESTIONABLE, "out of range")])
    store.mark_device("thermal", Quality.INVALID)
    point = store.get("thermal.chw_supply_temp")
    assert point is not None
    assert (point.quality, point.reason, point.plausible) == (
        Quality.INVALID,
        "out of range",
        False,
    )
