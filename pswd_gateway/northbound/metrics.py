"""Prometheus: one collector that reads the store at scrape time (no per-update cost).

Names use base units (``_watts``, ``_seconds``, ``_ratio``, ``_total``). A point whose quality is
``invalid`` is not exported at all: an absent series means "unknown", never a stale value.

The site gauges are rows of the signal catalogue (:mod:`pswd_gateway.domain.signals`) with a
metric name; unit, help text and where the value comes from are the signal's. Every store point
is also exported as ``pswd_point{device, point, unit}``, so a newly configured device shows up
without code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pswd_gateway import __version__
from pswd_gateway.config import SiteConfig
from pswd_gateway.control.cycle import ControlStats
from pswd_gateway.control.guard import GuardReason
from pswd_gateway.domain import signals as sig
from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.domain.points import Quality, split_key
from pswd_gateway.domain.polling import PollStats
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.store import PointStore, Snapshot

__all__ = [
    "BASE_UNIT_SUFFIX",
    "POINT_ONLY",
    "SITE_POINTS",
    "GatewayCollector",
    "Gauge",
    "OpsView",
    "make_registry",
]

BASE_UNIT_SUFFIX: Final[Mapping[SiUnit, str]] = {
    SiUnit.WATT: "_watts",
    SiUnit.HERTZ: "_hertz",
    SiUnit.CELSIUS: "_celsius",
    SiUnit.RATIO: "_ratio",
    SiUnit.JOULE: "_joules",
    SiUnit.WATT_PER_SECOND: "_watts_per_second",
}
"""The Prometheus name suffix of a value in each SI unit a site gauge may have. Signals in other
units (var, V, A, plain numbers) have no Prometheus base unit and are left to ``pswd_point``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gauge:
    """A site gauge: a catalogue signal under a Prometheus metric name."""

    signal: sig.Signal
    name: str

    def __post_init__(self) -> None:
        unit = self.signal.unit
        suffix = BASE_UNIT_SUFFIX.get(unit)
        if suffix is None:
            msg = (
                f"metric {self.name}: signal {self.signal.key} is in {unit}, which has no base "
                "unit in Prometheus; leave it to pswd_point (POINT_ONLY)"
            )
            raise ValueError(msg)
        if not self.name.endswith(suffix):
            msg = f"metric {self.name}: signal {self.signal.key} is in {unit}, end it with {suffix}"
            raise ValueError(msg)

    @property
    def help(self) -> str:
        """The signal's description, with its sign convention where it has one."""
        s = self.signal
        return f"{s.description}; {s.sign}." if s.sign else f"{s.description}."

    def value(self, snap: Snapshot, site: SiteConfig) -> float | None:
        """The signal's value; ``None`` (the series is absent) when unknown or invalid."""
        return snap.usable(self.signal, site)


SITE_POINTS: Final[tuple[Gauge, ...]] = (
    Gauge(signal=sig.GRID_POWER, name="pswd_grid_active_power_watts"),
    Gauge(signal=sig.GRID_FREQUENCY, name="pswd_grid_frequency_hertz"),
    Gauge(signal=sig.IT_POWER, name="pswd_it_load_active_power_watts"),
    Gauge(signal=sig.BESS_POWER, name="pswd_bess_active_power_watts"),
    Gauge(signal=sig.BESS_SOC, name="pswd_bess_state_of_charge_ratio"),
    Gauge(signal=sig.CHW_SUPPLY_TEMP, name="pswd_chilled_water_supply_temperature_celsius"),
    Gauge(signal=sig.HEAT_EXPORT_POWER, name="pswd_heat_export_power_watts"),
    Gauge(signal=sig.HEAT_SUPPLY_TEMP, name="pswd_heat_supply_temperature_celsius"),
    Gauge(signal=sig.IMPORT_LIMIT_IN_FORCE, name="pswd_site_import_limit_watts"),
    Gauge(signal=sig.GRID_RAMP_LIMIT, name="pswd_site_ramp_limit_watts_per_second"),
)
"""The site's named gauges, what dashboards and alert rules are written against."""

POINT_ONLY: Final[tuple[sig.Signal, ...]] = (
    sig.GRID_REACTIVE_POWER,
    sig.GRID_POWER_FACTOR,
    sig.GRID_VOLTAGE,
    sig.GRID_ENERGY_IMPORTED,
    sig.GRID_ENERGY_EXPORTED,
    sig.BESS_POWER_SETPOINT,
    sig.BESS_REACTIVE_POWER,
    sig.BESS_SOC_MAX,
    sig.BESS_SOC_MIN,
    sig.BESS_VOLTAGE,
    sig.BESS_CURRENT,
    sig.BESS_MAX_CHARGE,
    sig.BESS_MAX_DISCHARGE,
    sig.BESS_STATE,
    sig.CHW_SUPPLY_SETPOINT,
    sig.CHW_RETURN_TEMP,
    sig.CHILLER_POWER,
)
"""Device signals of the catalogue without a named gauge: nothing alerts or plots on them by
name, and ``pswd_point{device, point, unit}`` exports each of them (in SI, like every point)."""


@dataclass(frozen=True, slots=True)
class OpsView:
    """What an operator alerts on beyond the site's points, read at scrape time."""

    soc_window: tuple[float, float]
    journal_errors_total: int = 0
    audit_total: Mapping[str, int] = field(default_factory=dict)
    """Audit entries by outcome (accepted, refused, failed)."""
    audit_head_entry: int | None = None
    journal_size_bytes: int | None = None
    """The journal on disk (database and write-ahead log)."""
    journal_free_bytes: int | None = None
    """Free space on the journal's file system (for the gateway's user)."""
    journal_pruned_total: Mapping[str, int] = field(default_factory=dict)
    """Rows the retention removed since start, by table."""
    """Id of the newest audit entry as last published to the anchor."""
    forecast_updates_total: int = 0
    forecast_failures_total: int = 0
    forecast_last_update: float | None = None
    """POSIX time the forecast was last replaced."""
    forecast_age_s: float | None = None
    """Seconds since the forecast was last replaced (``None``: never)."""
    forecast_stale: bool = False
    """The forecast is too old or no longer covers now: placement uses a flat one."""
    certificate_expiry: Mapping[str, float] = field(default_factory=dict)
    """Listener → POSIX time its certificate expires."""
    workloads_by_state: Mapping[str, int] = field(default_factory=dict)
    http_latency: Mapping[tuple[str, str], LatencyHistogram] = field(default_factory=dict)
    """(method, route template) → request latency."""
    conduit_refusals: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(listener, reason) → peers refused at the door since start (``security.zones``)."""
    conduit_admissions: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(listener, zone) → connections admitted since start."""
    iec61850_up: bool | None = None
    """The MMS server's process serves (``None``: the listener is off)."""
    iec61850_restarts_total: int = 0
    """Times the MMS server's process was started again after it crashed, hung or failed."""
    opcua_refusals: Mapping[str, int] = field(default_factory=dict)
    """Reason → what the OPC UA server refused since start (``OpcUaServer.refusals``)."""


class GatewayCollector(Collector):
    """Reads the store and the pollers' statistics when Prometheus scrapes."""

    def __init__(
        self,
        store: PointStore,
        site: Callable[[], SiteConfig],
        poll_stats: Callable[[], Sequence[PollStats]],
        *,
        control_stats: Callable[[], ControlStats | None] = lambda: None,
        ops: Callable[[], OpsView | None] = lambda: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._control_stats = control_stats
        self._ops = ops
        self._store = store
        self._site = site
        self._poll_stats = poll_stats
        self._wall_clock = wall_clock

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        snap = self._store.snapshot(self._wall_clock())
        site = self._site()
        info = InfoMetricFamily("pswd_build", "Version of the running gateway.")
        info.add_metric([], {"version": __version__, "site": site.name})
        yield info
        for gauge in SITE_POINTS:
            yield _gauge(gauge.name, gauge.help, gauge.value(snap, site))
        yield _points(snap)
        yield from self._device_metrics(snap, self._poll_stats())
        control = self._control_stats()
        if control is not None:
            yield from _control_metrics(control)
        ops = self._ops()
        if ops is not None:
            yield from _ops_metrics(ops)

    def _device_metrics(self, snap: Snapshot, stats: Sequence[PollStats]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "pswd_device_up", "1 when the device's last poll succeeded.", labels=["device"]
        )
        quality = GaugeMetricFamily(
            "pswd_device_quality",
            "1 for the device's current point quality (good, questionable, invalid).",
            labels=["device", "quality"],
        )
        lateness = HistogramMetricFamily(
            "pswd_poll_lateness_seconds",
            "How late each poll started after its scheduled deadline.",
            labels=["device"],
        )
        overruns = CounterMetricFamily(
            "pswd_poll_overruns",
            "Poll slots skipped because the previous one ran late.",
            labels=["device"],
        )
        polls = CounterMetricFamily("pswd_polls", "Polls attempted.", labels=["device"])
        errors = CounterMetricFamily("pswd_poll_errors", "Polls that failed.", labels=["device"])
        timeouts = CounterMetricFamily(
            "pswd_poll_timeouts", "Polls that ran past their timeout.", labels=["device"]
        )
        interval = GaugeMetricFamily(
            "pswd_poll_interval_seconds", "Configured poll interval.", labels=["device"]
        )
        writes = CounterMetricFamily(
            "pswd_device_writes", "Writes sent to the device (setpoints).", labels=["device"]
        )
        write_errors = CounterMetricFamily(
            "pswd_device_write_errors",
            "Writes refused (device gone), timed out or failed.",
            labels=["device"],
        )
        worst = snap.worst_quality_by_device()
        for s in stats:
            labels = [s.device]
            up.add_metric(labels, 1.0 if s.up else 0.0)
            q = worst.get(s.device)
            for candidate in Quality:
                quality.add_metric([s.device, candidate.value], 1.0 if q is candidate else 0.0)
            lateness.add_metric(labels, *_buckets(s.lateness))
            overruns.add_metric(labels, s.overruns_total)
            polls.add_metric(labels, s.polls_total)
            errors.add_metric(labels, s.errors_total)
            timeouts.add_metric(labels, s.timeouts_total)
            interval.add_metric(labels, s.interval_s)
            writes.add_metric(labels, s.writes_total)
            write_errors.add_metric(labels, s.write_errors_total)
        yield from (up, quality, lateness, overruns, polls, errors, timeouts, interval)
        yield from (writes, write_errors)


def _control_metrics(c: ControlStats) -> Iterator[Metric]:
    for name, help_text, value in (
        ("pswd_control_runs", "Control cycle runs.", c.runs_total),
        (
            "pswd_control_meter_runs",
            "Runs triggered by a fresh grid-meter reading.",
            c.meter_runs_total,
        ),
        ("pswd_control_writes", "Setpoint writes to devices.", c.writes_total),
        (
            "pswd_control_write_failures",
            "Setpoint writes that failed or timed out.",
            c.write_failures_total,
        ),
        (
            "pswd_control_fallbacks",
            "Runs that asked workloads to ramp (battery could not cover).",
            c.fallbacks_total,
        ),
        ("pswd_control_skipped", "Runs without a usable grid or battery reading.", c.skipped_total),
        (
            "pswd_control_guard_trips",
            "Times the control guard tripped into safe mode.",
            c.guard_trips_total,
        ),
        (
            "pswd_control_rhythm_edges_led",
            "Edges of a job's training rhythm put on the battery ahead of them.",
            c.rhythm_leads_total,
        ),
        (
            "pswd_control_rhythm_edges_dropped",
            "Predicted training-rhythm edges that did not come.",
            c.rhythm_drops_total,
        ),
        (
            "pswd_control_readings_held",
            "Meter readings not stepped: measured across an edge already on the battery.",
            c.readings_held_total,
        ),
        (
            "pswd_control_rhythm_edges_told",
            "Training-rhythm edges the running job told ahead of them.",
            c.rhythm_edges_told_total,
        ),
    ):
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], value)
        yield counter
    yield _guard_active(c)
    for name, help_text, histogram in (
        (
            "pswd_control_cycle_lateness_seconds",
            "How late each control run started: after its deadline or the reading that let it run.",
            c.lateness_s,
        ),
        (
            "pswd_control_reading_to_setpoint_seconds",
            "From a grid-meter reading arriving to the battery setpoint written.",
            c.reading_to_setpoint_s,
        ),
    ):
        family = HistogramMetricFamily(name, help_text)
        family.add_metric([], *_buckets(histogram))
        yield family
    last = c.last
    for name, help_text, reading in (
        (
            "pswd_control_bess_setpoint_watts",
            "Battery setpoint of the last run; > 0 discharges.",
            None if last is None else last.bess_setpoint_w,
        ),
        (
            "pswd_control_grid_plan_watts",
            "Grid draw the limiter planned in the last run.",
            None if last is None else last.grid_plan_w,
        ),
        (
            "pswd_control_announced_planned_watts",
            "Grid draw planned for announced jobs (feed-forward).",
            None if last is None else last.planned_announced_w,
        ),
        (
            "pswd_control_soc_target_ratio",
            "State of charge the battery is steered to.",
            None if last is None else last.soc_target,
        ),
        (
            "pswd_grid_ramp_watts_per_second",
            "Grid import rate of change: the last 1 s mean against the 1 s before.",
            c.grid_ramp_w_per_s(),
        ),
        (
            "pswd_control_ffr_response_watts",
            "Fast frequency response in force; > 0 lowers the grid import (under-frequency).",
            c.ffr_response_w,
        ),
        (
            "pswd_control_ffr_active",
            "1 while the grid frequency is outside the deadband or a response ramps back.",
            1.0 if c.ffr_active else 0.0,
        ),
    ):
        yield _gauge(name, help_text, reading)


def _guard_active(c: ControlStats) -> Metric:
    """One series per guard reason, 1 for the reason of the trip in force, all 0 while the loop
    controls normally: the series never come and go, and ``max(...) == 1`` is the alert."""
    gauge = GaugeMetricFamily(
        "pswd_control_guard_active",
        "1 while the control guard holds the battery in safe mode, labelled with why it tripped.",
        labels=["reason"],
    )
    reasons = [r.value for r in GuardReason]
    current = c.guard_reason or "unknown"
    if c.guard_active and current not in reasons:
        reasons.append(current)
    for reason in reasons:
        gauge.add_metric([reason], 1.0 if c.guard_active and reason == current else 0.0)
    return gauge


def _points(snap: Snapshot) -> Metric:
    """Every store point, in SI, labelled with its device, point name and unit; invalid points
    are absent."""
    family = GaugeMetricFamily(
        "pswd_point",
        "Every device point the gateway holds, in SI units (label unit); absent while invalid.",
        labels=["device", "point", "unit"],
    )
    for key, p in sorted(snap.points.items()):
        if p.quality is not Quality.INVALID:
            device, point = split_key(key)
            family.add_metric([device, point, p.unit.value], p.value)
    return family


def _gauge(name: str, help_text: str, value: float | None) -> GaugeMetricFamily:
    """An unlabelled gauge; without a value the family is exported empty (absent = unknown)."""
    family = GaugeMetricFamily(name, help_text)
    if value is not None:
        family.add_metric([], value)
    return family


def _ops_metrics(o: OpsView) -> Iterator[Metric]:
    window = GaugeMetricFamily(
        "pswd_bess_soc_window_ratio",
        "The battery's allowed state-of-charge window (control.soc_min, control.soc_max).",
        labels=["bound"],
    )
    window.add_metric(["min"], o.soc_window[0])
    window.add_metric(["max"], o.soc_window[1])
    yield window
    journal = CounterMetricFamily("pswd_journal_errors", "Journal calls that failed in SQLite.")
    journal.add_metric([], o.journal_errors_total)
    yield journal
    yield _gauge(
        "pswd_journal_size_bytes",
        "The journal on disk: the SQLite database and its write-ahead log.",
        o.journal_size_bytes,
    )
    yield _gauge(
        "pswd_journal_disk_free_bytes",
        "Free space on the journal's file system, for the gateway's user.",
        o.journal_free_bytes,
    )
    pruned = CounterMetricFamily(
        "pswd_journal_pruned_rows",
        "Rows the journal's retention removed, by table ([storage] retention settings).",
        labels=["table"],
    )
    for table in ("setpoints", "events", "transitions", "workloads"):
        pruned.add_metric([table], o.journal_pruned_total.get(table, 0))
    yield pruned
    refused = CounterMetricFamily(
        "pswd_conduit_refusals",
        "Connections refused at a listener's door: no conduit admits the peer "
        "(not_in_conduit), it connects too fast (rate), its client certificate is revoked "
        "(revoked), missing (no_certificate) or not the client CA's (bad_certificate), or its "
        "TLS handshake failed or stalled (tls_handshake).",
        labels=["listener", "reason"],
    )
    counts = {
        (listener, "not_in_conduit"): 0 for listener in ("api", "metrics", "opcua", "iec61850")
    }
    counts.update(o.conduit_refusals)
    for (listener, reason), count in sorted(counts.items()):
        refused.add_metric([listener, reason], count)
    yield refused
    admitted = CounterMetricFamily(
        "pswd_conduit_admissions",
        "Connections admitted through a conduit, by listener and zone.",
        labels=["listener", "zone"],
    )
    for (listener, zone), count in sorted(o.conduit_admissions.items()):
        admitted.add_metric([listener, zone], count)
    yield admitted
    audit = CounterMetricFamily(
        "pswd_audit_events", "Audit entries written, by outcome.", labels=["outcome"]
    )
    for outcome in ("accepted", "refused", "failed"):
        audit.add_metric([outcome], o.audit_total.get(outcome, 0))
    yield audit
    yield _gauge(
        "pswd_audit_head_entry",
        "Id of the newest audit entry, as published to audit.anchor and the audit_head log "
        "line (it never goes down: a drop means the chain was truncated).",
        o.audit_head_entry,
    )
    updates = CounterMetricFamily("pswd_forecast_updates", "Forecast refreshes that succeeded.")
    updates.add_metric([], o.forecast_updates_total)
    failures = CounterMetricFamily("pswd_forecast_failures", "Forecast refreshes that failed.")
    failures.add_metric([], o.forecast_failures_total)
    yield from (updates, failures)
    yield _gauge(
        "pswd_forecast_last_update_timestamp_seconds",
        "When the carbon/price forecast was last replaced (absent: never).",
        o.forecast_last_update,
    )
    yield _gauge(
        "pswd_forecast_age_seconds",
        "Seconds since the carbon/price forecast was last replaced (absent: never).",
        o.forecast_age_s,
    )
    yield _gauge(
        "pswd_forecast_stale",
        "1 while the forecast is too old ([scheduling.forecast] max_age_s) or no longer covers "
        "the present, and placement falls back to a flat forecast.",
        1.0 if o.forecast_stale else 0.0,
    )
    expiry = GaugeMetricFamily(
        "pswd_certificate_expiry_timestamp_seconds",
        "When a listener's certificate expires.",
        labels=["listener"],
    )
    for listener, at in sorted(o.certificate_expiry.items()):
        expiry.add_metric([listener], at)
    yield expiry
    workloads = GaugeMetricFamily("pswd_workloads", "Active workloads by state.", labels=["state"])
    for state, n in sorted(o.workloads_by_state.items()):
        workloads.add_metric([state], n)
    yield workloads
    http = HistogramMetricFamily(
        "pswd_http_request_duration_seconds",
        "Workload API requests: from arrival to response headers, by route template.",
        labels=["method", "route"],
    )
    for (method, route), histogram in sorted(o.http_latency.items()):
        http.add_metric([method, route], *_buckets(histogram))
    yield http
    yield _gauge(
        "pswd_iec61850_up",
        "1 while the IEC 61850 MMS server (a process of its own) serves, 0 while it is "
        "restarted; absent when the listener is off.",
        None if o.iec61850_up is None else float(o.iec61850_up),
    )
    restarts = CounterMetricFamily(
        "pswd_iec61850_restarts",
        "Times the IEC 61850 MMS server's process was started again after it crashed, hung or "
        "failed to start.",
    )
    restarts.add_metric([], o.iec61850_restarts_total)
    yield restarts
    opcua = CounterMetricFamily(
        "pswd_opcua_refusals",
        "What the OPC UA server refused after accepting the connection: request (a security "
        "policy or mode not offered, a service on a None channel, too many monitored items), "
        "malformed (an undecodable or oversized message; the connection is closed), login.",
        labels=["reason"],
    )
    for reason, n in sorted(o.opcua_refusals.items()):
        opcua.add_metric([reason], n)
    yield opcua


def _buckets(h: LatencyHistogram) -> tuple[list[tuple[str, float]], float]:
    """A histogram's cumulative buckets (``le`` labels as Prometheus writes them) and sum."""
    return [("+Inf" if b == math.inf else repr(b), n) for b, n in h.cumulative()], h.sum_s


def make_registry(collector: GatewayCollector) -> CollectorRegistry:
    """A registry holding only the gateway's collector (no process/platform defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
