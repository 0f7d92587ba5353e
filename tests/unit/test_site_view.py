"""``GET /v1/site``'s view: every field a catalogue signal, power in MW, invalid as null."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.northbound.http_api.site import site_view
from pswd_gateway.store import PointStore

if TYPE_CHECKING:
    from pswd_gateway.scheduling.service import WorkloadService


def test_the_site_view_reads_signals_in_mw_and_nulls_invalid_readings() -> None:
    """MW fields are the SI signals through ``to_mw``; an invalid reading, or one without a
    device, is null; each device shows its worst quality."""
    store = PointStore()
    at = 1.0
    store.update(
        [
            Point("grid_meter.active_power", 251.5e6, SiUnit.WATT, Quality.GOOD, at, at),
            Point("grid_meter.frequency", 50.01, SiUnit.HERTZ, Quality.GOOD, at, at),
            Point("bess.active_power", -12e6, SiUnit.WATT, Quality.QUESTIONABLE, at, at),
            Point("bess.soc", 0.5, SiUnit.RATIO, Quality.INVALID, at, at),
            Point("rack_a.total_power", 100e6, SiUnit.WATT, Quality.GOOD, at, at),
            Point("rack_b.total_power", 50e6, SiUnit.WATT, Quality.GOOD, at, at),
            Point("thermal.heat_export_power", 8e6, SiUnit.WATT, Quality.GOOD, at, at),
        ]
    )
    site = SiteConfig(
        name="test-site",
        it_load=("rack_a", "rack_b"),
        grid_import_limit_mw=320,
        grid_ramp_limit_mw_per_s=2.5,
    )
    service = cast("WorkloadService", SimpleNamespace(active={}))
    out = site_view(store, lambda: site, service, wall_clock=lambda: 10.0)()
    assert out.site == "test-site"
    assert out.grid_import_mw == 251.5
    assert out.grid_frequency_hz == 50.01
    assert out.it_load_mw == 150.0
    assert out.bess_power_mw == -12.0
    assert out.bess_soc is None
    assert out.chw_supply_temp_c is None
    assert out.heat_export_mw == 8.0
    assert out.grid_import_limit_mw == 320.0
    assert out.grid_ramp_limit_mw_per_s == 2.5
    assert out.devices == {
        "bess": "invalid",
        "grid_meter": "good",
        "rack_a": "good",
        "rack_b": "good",
        "thermal": "good",
    }
    assert list(out.devices) == sorted(out.devices)


def test_every_catalogue_signal_is_in_the_site_view_in_si_with_its_unit_and_quality() -> None:
    """``signals`` lists the whole catalogue, so a signal added there shows without code."""
    from pswd_gateway.domain.signals import SIGNALS  # noqa: PLC0415

    store = PointStore()
    store.update(
        [
            Point("grid_meter.active_power", 251.5e6, SiUnit.WATT, Quality.GOOD, 1.0, 1.0),
            Point("bess.soc", 0.5, SiUnit.RATIO, Quality.INVALID, 1.0, 1.0),
        ]
    )
    site = SiteConfig(grid_import_limit_mw=320)
    service = cast("WorkloadService", SimpleNamespace(active={}))
    out = site_view(store, lambda: site, service, wall_clock=lambda: 10.0)()
    assert list(out.signals) == [s.key for s in SIGNALS]
    assert all(out.signals[s.key].unit == s.unit.value for s in SIGNALS)
    grid = out.signals["grid.active_power"]
    assert (grid.value, grid.unit, grid.quality) == (251.5e6, "W", "good")
    soc = out.signals["bess.soc"]
    assert (soc.value, soc.quality) == (None, "invalid")
    assert out.signals["grid.frequency"].quality is None  # no reading at all
    assert out.signals["site.grid_import_limit"].value == 320e6
