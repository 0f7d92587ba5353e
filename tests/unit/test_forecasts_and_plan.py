"""Forecast files and feeds, resampling, and the physical plan of an allocation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pswd_gateway.config import SchedulingConfig, SiteConfig
from pswd_gateway.domain.workloads import Announcement
from pswd_gateway.errors import ForecastError
from pswd_gateway.forecasts.feed import FLAT_G_PER_KWH, ForecastFeed
from pswd_gateway.forecasts.providers import (
    FileForecast,
    SimulatedForecast,
    parse_forecast_text,
    simulated_intensity,
)
from pswd_gateway.scheduling.model import CarbonForecast
from pswd_gateway.scheduling.plan import build_physical_plan

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
CSV = (
    "time,carbon_g_per_kwh,price_per_mwh\n"
    "2026-11-25T00:00:00Z,300,50\n"
    "2026-11-25T01:00:00Z,100,40\n"
)


def test_csv_forecasts_parse_with_prices() -> None:
    f = parse_forecast_text(CSV, "f.csv", kind="csv")
    assert f.start == T0
    assert f.slot_s == 3600
    assert f.carbon_g_per_kwh == (300.0, 100.0)
    assert f.price_per_mwh == (50.0, 40.0)


def test_renewable_supply_is_read_from_csv_and_json_and_resampled() -> None:
    f = parse_forecast_text(
        "time,carbon_g_per_kwh,renewable_mw\n"
        "2026-11-25T00:00:00Z,300,0\n"
        "2026-11-25T01:00:00Z,100,80\n",
        "f.csv",
        kind="csv",
    )
    assert f.renewable_mw == (0.0, 80.0)
    assert f.price_per_mwh is None
    j = parse_forecast_text(
        '[{"time": "2026-11-25T00:00:00Z", "carbon_g_per_kwh": 300, "renewable_mw": 10}]',
        "f.json",
        kind="json",
    )
    assert j.renewable_mw == (10.0,)
    r = f.resampled(T0 + timedelta(minutes=30), 3600, 2)
    assert r.renewable_mw == pytest.approx((40.0, 80.0))
    assert parse_forecast_text(CSV, "f.csv", kind="csv").renewable_mw is None


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        (
            "time,carbon_g_per_kwh,renewable_mw\n2026-11-25T00:00:00Z,300,5\n2026-11-25T01:00:00Z,300,\n",
            "csv",
            "line 3: renewable_mw is given for some points: give it for all",
        ),
        (
            "time,carbon_g_per_kwh,renewable_mw\n2026-11-25T00:00:00Z,300,-5\n",
            "csv",
            "line 2: renewable_mw",
        ),
        ("when,value\n", "csv", "line 1: header must have time,carbon_g_per_kwh"),
        ("time,carbon_g_per_kwh\n2026-11-25T00:00:00,300\n", "csv", "line 2: time"),
        ("time,carbon_g_per_kwh\n2026-11-25T00:00:00Z,lots\n", "csv", "line 2: carbon_g_per_kwh"),
        ("time,carbon_g_per_kwh\n2026-11-25T00:00:00Z,-1\n", "csv", "line 2: carbon_g_per_kwh"),
        (
            "time,carbon_g_per_kwh\n2026-11-25T01:00:00Z,1\n2026-11-25T00:00:00Z,2\n",
            "csv",
            "line 3: times must increase",
        ),
        ("time,carbon_g_per_kwh\n", "csv", "no forecast points"),
        ("{", "json", "line 1: not JSON"),
        ('{"a": 1}', "json", "JSON must be a list"),
        ('[{"time": "2026-11-25T00:00:00Z"}]', "json", "item 0: carbon_g_per_kwh"),
    ],
)
def test_every_forecast_file_problem_names_where(text: str, kind: str, message: str) -> None:
    with pytest.raises(ForecastError, match=message):
        parse_forecast_text(text, "f", kind=kind)


def test_the_carbon_aware_sdk_format_is_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "sdk.json"
    path.write_text(
        '[{"generatedAt": "2026-11-25T00:00:00Z", "location": "x", "forecastData": ['
        '{"location": "x", "timestamp": "2026-11-25T00:00:00Z", "duration": 5, "value": 200},'
        '{"location": "x", "timestamp": "2026-11-25T00:05:00Z", "duration": 5, "value": 150}]}]'
    )
    f = asyncio.run(FileForecast(path).fetch(T0, timedelta(hours=1)))
    assert f.slot_s == 300
    assert f.carbon_g_per_kwh == (200.0, 150.0)


def test_resampling_is_time_weighted_and_holds_the_edges() -> None:
    f = CarbonForecast(T0, 3600, (100.0, 300.0), None, "t", T0)
    r = f.resampled(T0 - timedelta(minutes=30), 1800, 6)
    assert r.carbon_g_per_kwh == pytest.approx((100, 100, 100, 300, 300, 300))
    r = f.resampled(T0 + timedelta(minutes=30), 3600, 1)
    assert r.carbon_g_per_kwh == pytest.approx((200,))


async def test_the_simulated_forecast_is_deterministic_and_diurnal() -> None:
    a = await SimulatedForecast().fetch(T0, timedelta(hours=24))
    b = await SimulatedForecast().fetch(T0, timedelta(hours=24))
    assert a.carbon_g_per_kwh == b.carbon_g_per_kwh
    noon, evening = (
        simulated_intensity(T0.replace(hour=13)),
        simulated_intensity(T0.replace(hour=19)),
    )
    assert noon < evening
    assert all(50 <= v <= 450 for v in a.carbon_g_per_kwh)


def announcement(**power: float) -> Announcement:
    return Announcement.model_validate(
        {
            "workload_type": "ai_training",
            "power_profile": {
                "peak_power_mw": 200,
                "ramp_rate_mw_per_sec": 50,
                "duration_estimate_sec": 3600,
                **power,
            },
            "timing_constraints": {
                "earliest_start_time": T0.isoformat(),
                "deadline": (T0 + timedelta(hours=4)).isoformat(),
            },
        }
    )


@pytest.mark.parametrize(
    ("power", "grid_rate", "battery_mw", "ramp_s"),
    [
        ({}, 20.0, 60.0, 10.0),  # 200 MW at 50 MW/s, grid 20 MW/s: centred 10 s ramp
        ({"ramp_rate_mw_per_sec": 1e6}, 20.0, 100.0, 10.0),  # a 40 ms step: half on the battery
        ({"ramp_rate_mw_per_sec": 10}, 20.0, 0.0, 20.0),  # slower than the grid: grid follows
        ({"oscillation_period_sec": 2.5, "oscillation_depth_mw": 160}, 20.0, 140.0, 6.0),  # 60 + 80
        (  # computing 3/4 of each period: mean 160 MW, the battery absorbs 120 MW meanwhile
            {"oscillation_period_sec": 2.5, "oscillation_depth_mw": 160, "oscillation_duty": 0.75},
            20.0,
            180.0,
            8.0,
        ),
    ],
)
def test_grid_ramp_and_battery_reservation(
    power: dict[str, float], grid_rate: float, battery_mw: float, ramp_s: float
) -> None:
    a = announcement(**power)
    ramp, battery, cooling = build_physical_plan(
        a, T0, SchedulingConfig(), SiteConfig(grid_ramp_limit_mw_per_s=grid_rate)
    )
    assert (ramp[1].at - ramp[0].at).total_seconds() == pytest.approx(ramp_s)
    assert ramp[1].grid_power_mw == pytest.approx(a.power_profile.mean_power_mw())
    assert battery.power_mw == pytest.approx(battery_mw, abs=0.01)
    assert cooling.start_at == T0 - timedelta(seconds=300)
    assert cooling.chw_supply_setpoint_c == pytest.approx(18.0 - 0.5)


class _Once:
    """A provider that answers once with a one-hour forecast, then fails."""

    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self, start: datetime, horizon: timedelta) -> CarbonForecast:
        self.calls += 1
        if self.calls > 1:
            raise ForecastError("once", "feed down")
        return CarbonForecast(start, 300, (100.0,) * 12, None, "once", start)


async def test_a_forecast_too_old_or_run_out_falls_back_to_flat_and_says_so() -> None:
    """After a good fetch the feed keeps it through failures until max_age_s, then a flat
    forecast (source ``stale``) stands in; a forecast that no longer covers now is stale too."""
    now = [T0]
    feed = ForecastFeed(
        _Once(), timedelta(hours=1), 300, refresh_s=60.0, max_age_s=1800.0, clock=lambda: now[0]
    )
    assert feed.current().source == "unavailable"
    assert feed.age_s() is None
    assert await feed.refresh()
    assert feed.current().source == "once"
    now[0] = T0 + timedelta(minutes=20)
    assert not await feed.refresh()  # the feed is down: the last good one is kept
    assert (feed.current().source, feed.age_s(), feed.stale()) == ("once", 1200.0, False)
    now[0] = T0 + timedelta(minutes=31)
    assert feed.stale()
    assert feed.current().source == "stale"
    assert set(feed.current().carbon_g_per_kwh) == {FLAT_G_PER_KWH}
    feed.max_age_s = 86_400.0
    now[0] = T0 + timedelta(minutes=61)  # young enough, but the hour it covered is over
    assert feed.stale()
