"""The demo's live view reads the site through the signal catalogue and shows power in MW."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from rich.console import Console

from pswd_gateway.config import GatewayConfig, SiteConfig
from pswd_gateway.demo import _plain_line, _view
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.southbound.poller import PollStats
from pswd_gateway.store import PointStore

if TYPE_CHECKING:
    from pswd_gateway.daemon import Gateway


def fake_gateway() -> Gateway:
    """What the view reads of a gateway: its configuration, store, pollers; no control."""
    store = PointStore()
    at = 1.0
    store.update(
        [
            Point("grid_meter.active_power", 251.5e6, SiUnit.WATT, Quality.GOOD, at, at),
            Point("grid_meter.frequency", 50.012, SiUnit.HERTZ, Quality.GOOD, at, at),
            Point("bess.active_power", -12.25e6, SiUnit.WATT, Quality.QUESTIONABLE, at, at),
            Point("bess.soc", 0.5, SiUnit.RATIO, Quality.INVALID, at, at),
            Point("rack_a.total_power", 150e6, SiUnit.WATT, Quality.GOOD, at, at),
        ]
    )
    site = SiteConfig(it_load=("rack_a",), grid_import_limit_mw=320, grid_ramp_limit_mw_per_s=2.5)
    gateway = SimpleNamespace(
        config=GatewayConfig(site=site),
        store=store,
        control=None,
        workloads=None,
        pollers={"bess": SimpleNamespace(stats=PollStats("bess", 0.1))},
    )
    return cast("Gateway", gateway)


def test_the_plain_line_shows_the_site_in_mw_and_unknown_as_a_dash() -> None:
    """Grid (and its limit), IT and battery in MW from their signals, the frequency; the
    invalid SoC and what nobody measured (FFR without a control cycle, heat) show as unknown."""
    line = _plain_line(fake_gateway())
    assert line == (
        "grid 251.5 / 320.0 MW  ramp — / 2.5 MW/s  IT 150.0 MW  BESS -12.2 MW  SoC — %  "
        "50.012 Hz  FFR — MW  heat — °C"
    )


def test_the_live_view_shows_every_column_from_the_catalogue() -> None:
    """The plant table: MW, the site's limit, °C and Hz; a device's worst quality."""
    console = Console(record=True, width=240)
    console.print(_view(fake_gateway(), started=0.0))
    text = console.export_text()
    for cell in ("251.5", "320", "150.0", "-12.2", "50.012", "invalid"):
        assert cell in text, cell
