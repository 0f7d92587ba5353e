"""The Prometheus collector: site gauges from the signal catalogue, every store point as
``pswd_point``, latency as real histograms, the operations view, base units."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pswd_gateway.config import SiteConfig
from pswd_gateway.control.cycle import ControlStats
from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.northbound.metrics import GatewayCollector, OpsView, make_registry
from pswd_gateway.southbound.poller import PollStats
from pswd_gateway.store import PointStore

Labels = tuple[tuple[str, str], ...]


def exposition(
    store: PointStore | None = None,
    site: SiteConfig | None = None,
    *,
    control: ControlStats | None = None,
    ops: OpsView | None = None,
    devices: tuple[str, ...] = (),
) -> str:
    collector = GatewayCollector(
        store or PointStore(),
        lambda: site or SiteConfig(),
        lambda: [PollStats(d, 0.1) for d in devices],
        control_stats=lambda: control,
        ops=lambda: ops,
        wall_clock=lambda: 100.0,
    )
    return generate_latest(make_registry(collector)).decode()


def scrape(control: ControlStats | None = None, ops: OpsView | None = None) -> dict[str, object]:
    text = exposition(control=control, ops=ops)
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of an exposition by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def pt(key: str, value: float, unit: SiUnit, quality: Quality = Quality.GOOD) -> Point:
    return Point(key, value, unit, quality, 99.0, 99.0)


def site_store() -> PointStore:
    store = PointStore()
    store.update(
        [
            pt("grid_meter.active_power", 250e6, SiUnit.WATT),
            pt("grid_meter.frequency", 50.01, SiUnit.HERTZ),
            pt("bess.active_power", -5e6, SiUnit.WATT, Quality.QUESTIONABLE),
            pt("bess.soc", 0.5, SiUnit.RATIO, Quality.INVALID),
            pt("thermal.chw_supply_temp", 14.5, SiUnit.CELSIUS),
            pt("rack_a.total_power", 100e6, SiUnit.WATT),
            pt("rack_b.total_power", 60e6, SiUnit.WATT),
            pt("pdu_7.energy", 3.6e9, SiUnit.JOULE),
        ]
    )
    return store


def test_site_gauges_read_their_catalogue_signal_and_hide_invalid_values() -> None:
    """Each site gauge shows its signal in SI; questionable is shown, invalid is absent, the
    IT load is the sum of its devices, and the limits are the site's settings."""
    site = SiteConfig(it_load=("rack_a", "rack_b"), grid_import_limit_mw=320)
    values = samples(exposition(site_store(), site))
    assert values[("pswd_grid_active_power_watts", ())] == 250e6
    assert values[("pswd_grid_frequency_hertz", ())] == 50.01
    assert values[("pswd_bess_active_power_watts", ())] == -5e6
    assert ("pswd_bess_state_of_charge_ratio", ()) not in values
    assert values[("pswd_chilled_water_supply_temperature_celsius", ())] == 14.5
    assert ("pswd_heat_export_power_watts", ()) not in values  # no such point yet
    assert values[("pswd_it_load_active_power_watts", ())] == 160e6
    assert values[("pswd_site_import_limit_watts", ())] == 320e6
    assert values[("pswd_site_ramp_limit_watts_per_second", ())] == 20e6


def test_the_help_text_is_the_signal_description_with_its_sign() -> None:
    """`# HELP` of a site gauge comes from the catalogue, sign convention included."""
    families = {f.name: f for f in text_string_to_metric_families(exposition())}
    grid = families["pswd_grid_active_power_watts"]
    assert grid.documentation == (
        "Active power at the grid connection; positive = import from the grid."
    )


def test_every_store_point_is_a_pswd_point_series_in_si_with_its_unit() -> None:
    """A device no surface names (``pdu_7``) is still visible; invalid points are absent."""
    values = samples(exposition(site_store()))
    point = {labels: v for (name, labels), v in values.items() if name == "pswd_point"}
    assert point[(("device", "pdu_7"), ("point", "energy"), ("unit", "J"))] == 3.6e9
    assert point[(("device", "grid_meter"), ("point", "active_power"), ("unit", "W"))] == 250e6
    assert point[(("device", "thermal"), ("point", "chw_supply_temp"), ("unit", "degC"))] == 14.5
    assert point[(("device", "bess"), ("point", "active_power"), ("unit", "W"))] == -5e6
    assert not any(dict(labels)["point"] == "soc" for labels in point), "invalid is absent"
    assert len(point) == 7


def test_device_quality_is_the_worst_of_its_points() -> None:
    """`pswd_device_quality` is 1 on the worst quality among the device's points."""
    store = PointStore()
    store.update(
        [
            pt("bess.active_power", 1.0, SiUnit.WATT),
            pt("bess.soc", 0.5, SiUnit.RATIO, Quality.QUESTIONABLE),
            pt("grid_meter.frequency", 50.0, SiUnit.HERTZ),
        ]
    )
    values = samples(exposition(store, devices=("bess", "grid_meter", "silent")))

    def quality(device: str) -> set[str]:
        return {
            q.value
            for q in Quality
            if values[("pswd_device_quality", (("device", device), ("quality", q.value)))] == 1
        }

    assert quality("bess") == {"questionable"}
    assert quality("grid_meter") == {"good"}
    assert quality("silent") == set()


@pytest.mark.needs_tool("promtool", "prometheus")
def test_the_exposition_with_points_passes_promtool() -> None:
    """`promtool check metrics` has nothing to say about the site gauges and `pswd_point`."""
    site = SiteConfig(it_load=("rack_a", "rack_b"))
    text = exposition(site_store(), site, devices=("bess",))
    promtool = shutil.which("promtool")
    assert promtool is not None
    out = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "", out.stdout


def test_control_latencies_are_histograms_with_cumulative_buckets() -> None:
    stats = ControlStats()
    for seconds in (0.002, 0.004, 0.03, 2.0):
        stats.reading_to_setpoint_s.append(seconds)
    stats.lateness_s.append(0.001)
    families = scrape(stats)
    for name in ("pswd_control_reading_to_setpoint_seconds", "pswd_control_cycle_lateness_seconds"):
        family = families[name]
        assert family.type == "histogram", name  # type: ignore[attr-defined]
        labels = [s.labels for s in family.samples]  # type: ignore[attr-defined]
        assert all("quantile" not in lab for lab in labels)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for s in families["pswd_control_reading_to_setpoint_seconds"].samples  # type: ignore[attr-defined]
    }
    assert samples[("pswd_control_reading_to_setpoint_seconds_bucket", "0.005")] == 2
    assert samples[("pswd_control_reading_to_setpoint_seconds_bucket", "0.05")] == 3
    assert samples[("pswd_control_reading_to_setpoint_seconds_bucket", "+Inf")] == 4
    assert samples[("pswd_control_reading_to_setpoint_seconds_count", None)] == 4
    assert samples[("pswd_control_reading_to_setpoint_seconds_sum", None)] == pytest.approx(2.036)


def test_the_frequency_response_in_force_and_its_activity_are_gauges() -> None:
    stats = ControlStats()
    idle = samples(exposition(control=stats))
    assert idle[("pswd_control_ffr_response_watts", ())] == 0.0
    assert idle[("pswd_control_ffr_active", ())] == 0.0
    stats.ffr_response_w, stats.ffr_active = 40e6, True
    responding = samples(exposition(control=stats))
    assert responding[("pswd_control_ffr_response_watts", ())] == 40e6
    assert responding[("pswd_control_ffr_active", ())] == 1.0


def test_the_operations_view_is_exported_in_base_units() -> None:
    http = LatencyHistogram()
    http.append(0.004)
    ops = OpsView(
        soc_window=(0.1, 0.9),
        journal_errors_total=2,
        journal_size_bytes=4096,
        journal_free_bytes=10_000_000,
        journal_pruned_total={"setpoints": 7},
        audit_total={"refused": 3},
        forecast_last_update=1.7e9,
        certificate_expiry={"opcua": 1.8e9},
        workloads_by_state={"scheduled": 1},
        http_latency={("GET", "/v1/site"): http},
    )
    values = samples(exposition(ops=ops))
    assert values[("pswd_bess_soc_window_ratio", (("bound", "min"),))] == 0.1
    assert values[("pswd_journal_errors_total", ())] == 2
    assert values[("pswd_journal_size_bytes", ())] == 4096
    assert values[("pswd_journal_disk_free_bytes", ())] == 10_000_000
    assert values[("pswd_journal_pruned_rows_total", (("table", "setpoints"),))] == 7
    assert values[("pswd_journal_pruned_rows_total", (("table", "workloads"),))] == 0
    assert values[("pswd_audit_events_total", (("outcome", "refused"),))] == 3
    assert values[("pswd_audit_events_total", (("outcome", "accepted"),))] == 0
    assert values[("pswd_certificate_expiry_timestamp_seconds", (("listener", "opcua"),))] == 1.8e9
    assert values[("pswd_workloads", (("state", "scheduled"),))] == 1
    key = ("pswd_http_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/site")))
    assert values[key] == 1


def test_the_mms_process_is_up_or_down_and_its_restarts_are_counted() -> None:
    """``pswd_iec61850_up`` is 1 or 0 while the listener is on and absent while it is off;
    ``pswd_iec61850_restarts_total`` is always there."""
    down = samples(
        exposition(ops=OpsView((0.1, 0.9), iec61850_up=False, iec61850_restarts_total=3))
    )
    assert down[("pswd_iec61850_up", ())] == 0
    assert down[("pswd_iec61850_restarts_total", ())] == 3
    up = samples(exposition(ops=OpsView((0.1, 0.9), iec61850_up=True)))
    assert up[("pswd_iec61850_up", ())] == 1
    off = samples(exposition(ops=OpsView((0.1, 0.9))))
    assert ("pswd_iec61850_up", ()) not in off
    assert off[("pswd_iec61850_restarts_total", ())] == 0


def test_opcua_refusals_are_counted_by_reason() -> None:
    refused = {"request": 2, "malformed": 5, "login": 1}
    got = samples(exposition(ops=OpsView((0.1, 0.9), opcua_refusals=refused)))
    for reason, n in refused.items():
        assert got[("pswd_opcua_refusals_total", (("reason", reason),))] == n


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=200))
def test_histogram_buckets_are_cumulative_and_end_at_the_count(samples: list[float]) -> None:
    h = LatencyHistogram(window=16)
    for s in samples:
        h.append(s)
    counts = [n for _, n in h.cumulative()]
    assert counts == sorted(counts)
    assert h.cumulative()[-1] == (math.inf, len(samples))
    assert len(h) == min(len(samples), 16)
    h.clear()  # the window only: a histogram never goes back
    assert h.count == len(samples)
    assert not h
