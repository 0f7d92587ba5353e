"""The Prometheus collector: latency as real histograms, the operations view, base units."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pswd_gateway.config import SiteConfig
from pswd_gateway.control.cycle import ControlStats
from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.northbound.metrics import GatewayCollector, OpsView, make_registry
from pswd_gateway.store import PointStore


def scrape(control: ControlStats | None = None, ops: OpsView | None = None) -> dict[str, object]:
    collector = GatewayCollector(
        PointStore(), SiteConfig, lambda: (), control_stats=lambda: control, ops=lambda: ops
    )
    text = generate_latest(make_registry(collector)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


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


def test_the_operations_view_is_exported_in_base_units() -> None:
    http = LatencyHistogram()
    http.append(0.004)
    ops = OpsView(
        import_limit_w=320e6,
        ramp_limit_w_per_s=20e6,
        soc_window=(0.1, 0.9),
        journal_errors_total=2,
        audit_total={"refused": 3},
        forecast_last_update=1.7e9,
        certificate_expiry={"opcua": 1.8e9},
        workloads_by_state={"scheduled": 1},
        http_latency={("GET", "/v1/site"): http},
    )
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in scrape(ops=ops).values()
        for s in f.samples  # type: ignore[attr-defined]
    }
    assert values[("pswd_site_import_limit_watts", ())] == 320e6
    assert values[("pswd_site_ramp_limit_watts_per_second", ())] == 20e6
    assert values[("pswd_bess_soc_window_ratio", (("bound", "min"),))] == 0.1
    assert values[("pswd_journal_errors_total", ())] == 2
    assert values[("pswd_audit_events_total", (("outcome", "refused"),))] == 3
    assert values[("pswd_audit_events_total", (("outcome", "accepted"),))] == 0
    assert values[("pswd_certificate_expiry_timestamp_seconds", (("listener", "opcua"),))] == 1.8e9
    assert values[("pswd_workloads", (("state", "scheduled"),))] == 1
    key = ("pswd_http_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/site")))
    assert values[key] == 1


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
