"""Reading Redfish documents: pure functions from decoded JSON to rack samples, no I/O.

Everything here takes whatever a BMC sent (any JSON value, possibly hostile) and either returns
plain data or raises :class:`~pswd_gateway.errors.DeviceError` — never ``KeyError``,
``TypeError`` or ``OverflowError``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import unquote

from pswd_gateway.errors import DeviceError

__all__ = [
    "MAX_PATH_CHARS",
    "ChassisNames",
    "ChassisSample",
    "ControlLimits",
    "PowerSource",
    "chassis_parents",
    "counted_in_total",
    "error_summary",
    "link",
    "members",
    "parse_control",
    "parse_environment_metrics",
    "parse_metric_report",
    "parse_power_limit",
    "parse_power_resource",
    "power_limit_patch",
    "power_limit_uri",
    "power_sensor_total",
    "power_supply_input_w",
    "safe_path",
    "sensor_power",
]

MAX_PATH_CHARS: Final = 2048


class _Metric(StrEnum):
    """What a MetricReport entry read by this module carries."""

    ENV_POWER = "EnvironmentMetrics power"
    INLET = "EnvironmentMetrics inlet temperature"
    ENV_LIMIT = "EnvironmentMetrics power limit"
    SUPPLY_INPUT = "power supply input"
    CONSUMED = "PowerControl consumed power"
    POWER_LIMIT = "PowerControl power limit"


_CHASSIS_URI = r"/redfish/v1/Chassis/([^/#?]+)"
_ENV = _CHASSIS_URI + r"/EnvironmentMetrics/?#/"
_POWER_CONTROL = _CHASSIS_URI + r"/Power/?#/PowerControl/0/"
_METRIC_PROPERTIES: Final = (
    # MetricProperty (group 1: the chassis id; for a supply, group 2: its id) → what it carries
    (re.compile(_ENV + "PowerWatts/Reading"), _Metric.ENV_POWER),
    (re.compile(_ENV + "TemperatureCelsius/Reading"), _Metric.INLET),
    (re.compile(_ENV + "PowerLimitWatts/SetPoint"), _Metric.ENV_LIMIT),
    (
        re.compile(
            _CHASSIS_URI + r"/PowerSubsystem/PowerSupplies/([^/#?]+)/Metrics/?"
            r"#/InputPowerWatts/Reading"
        ),
        _Metric.SUPPLY_INPUT,
    ),
    (re.compile(_POWER_CONTROL + "PowerConsumedWatts"), _Metric.CONSUMED),
    (re.compile(_POWER_CONTROL + "PowerLimit/LimitInWatts"), _Metric.POWER_LIMIT),
)
"""The report properties read, as DMTF's schemas name them. Of ``PowerControl`` only the first
member is read, as from the ``Power`` resource itself: the others may cover parts of the chassis
(their ``PhysicalContext``, ``RelatedItem``), and added to it they would count power twice.
``Sensors/<id>#/Reading`` is not read: an entry does not say whether that sensor measures power,
nor whether of the whole chassis or of a part (``ReadingType`` and ``PhysicalContext`` are in
the Sensor resource only)."""
_UNSAFE = re.compile(r"[^a-z0-9_]+")
_PATH_OK = re.compile(r"/[\x21-\x7e]*")
_RESERVED: Final = frozenset({"total"})
"""Prefixes that would collide with the device's own points (``total_power``)."""
_MAX_PREFIX: Final = 48


@dataclass(frozen=True, slots=True)
class ChassisSample:
    """One chassis' readings in SI units; ``None`` where the BMC gave no usable value.

    ``source_ts`` is the BMC's timestamp of the reading (POSIX seconds), or when the request
    was sent when the BMC gave none.
    """

    power_w: float | None = None
    inlet_temp_c: float | None = None
    power_limit_w: float | None = None
    source_ts: float = 0.0


@dataclass(frozen=True, slots=True)
class ControlLimits:
    """What a ``Control`` resource says about a power limit."""

    set_point_w: float | None
    allowable_min_w: float | None
    allowable_max_w: float | None
    control_mode: str | None

    def allows(self, watts: float) -> bool:
        """Whether ``watts`` is finite and inside [AllowableMin, AllowableMax] (when given)."""
        if not math.isfinite(watts):
            return False
        lo, hi = self.allowable_min_w, self.allowable_max_w
        return (lo is None or watts >= lo) and (hi is None or watts <= hi)


def number(value: object) -> float | None:
    """A finite float from a JSON number or numeric string; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and len(value) <= 64:
        try:
            result = float(value)
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def timestamp(value: object) -> float | None:
    """POSIX seconds from an ISO 8601 / RFC 3339 string; ``None`` when it is not one.

    A time without a zone is taken as UTC (Redfish requires an offset; some BMCs omit it).
    """
    if not isinstance(value, str) or not 10 <= len(value) <= 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        result = parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return result if math.isfinite(result) else None


def safe_path(ref: object) -> str | None:
    """A service-relative path from an ``@odata.id`` / URI property, fragment removed.

    Only absolute paths on the same service are accepted: a document that points at another
    host (``http://elsewhere/…``, ``//elsewhere/…``) would otherwise receive our session token.
    """
    if not isinstance(ref, str) or len(ref) > MAX_PATH_CHARS:
        return None
    path = ref.partition("#")[0]
    if not _PATH_OK.fullmatch(path) or path.startswith("//"):
        return None
    return path


def link(doc: object, key: str) -> str | None:
    """The path of a navigation property ``{"key": {"@odata.id": "…"}}``."""
    if not isinstance(doc, Mapping):
        return None
    ref = doc.get(key)
    return safe_path(ref.get("@odata.id")) if isinstance(ref, Mapping) else None


def members(doc: object) -> list[str]:
    """The member paths of a resource collection (bad members are skipped)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("Members"), list):
        return []
    out: list[str] = []
    for member in doc["Members"]:
        path = safe_path(member.get("@odata.id")) if isinstance(member, Mapping) else None
        if path is not None:
            out.append(path)
    return out


def chassis_id_of(path: str) -> str:
    """The last segment of a chassis URI, percent-decoded (``…/Chassis/R%201`` → ``R 1``)."""
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def _metric_target(prop: object) -> tuple[_Metric, str, str] | None:
    """``(what, chassis id, supply id)`` of a ``MetricProperty`` this module reads, else
    ``None``; the supply id is ``""`` but for a power supply's input."""
    if not isinstance(prop, str) or len(prop) > MAX_PATH_CHARS:
        return None
    for pattern, metric in _METRIC_PROPERTIES:
        match = pattern.fullmatch(prop)
        if match is not None:
            supply = unquote(match.group(2)) if metric is _Metric.SUPPLY_INPUT else ""
            return metric, unquote(match.group(1)), supply
    return None


@dataclass(slots=True)
class _ReportChassis:
    """What one report says of one chassis: a value and its time per metric (and per supply)."""

    values: dict[_Metric, float]
    stamps: dict[_Metric, float]
    supplies: dict[str, tuple[float, float]]  # supply id → (W, time)

    def take(self, metric: _Metric, supply: str, value: float, ts: float) -> None:
        """Keep a value; a metric (or supply) named twice keeps its last value."""
        if metric is _Metric.SUPPLY_INPUT:
            self.supplies[supply] = (value, ts)
        else:
            self.values[metric], self.stamps[metric] = value, ts

    def sample(self) -> ChassisSample:
        """The chassis' sample: power from one source, each watt once."""
        stamps: list[float] = []
        power: float | None = None
        if _Metric.ENV_POWER in self.values:
            power = self.values[_Metric.ENV_POWER]
            stamps.append(self.stamps[_Metric.ENV_POWER])
        elif self.supplies:
            total = math.fsum(w for w, _ in self.supplies.values())
            power = total if math.isfinite(total) else None
            stamps.extend(ts for _, ts in self.supplies.values())
        elif _Metric.CONSUMED in self.values:
            power = self.values[_Metric.CONSUMED]
            stamps.append(self.stamps[_Metric.CONSUMED])
        limit = _Metric.ENV_LIMIT if _Metric.ENV_LIMIT in self.values else _Metric.POWER_LIMIT
        stamps.extend(self.stamps[m] for m in (_Metric.INLET, limit) if m in self.stamps)
        return ChassisSample(
            power_w=power,
            inlet_temp_c=self.values.get(_Metric.INLET),
            power_limit_w=self.values.get(limit),
            source_ts=min(stamps),
        )


def parse_metric_report(device: str, doc: object, received: float) -> dict[str, ChassisSample]:
    """Per-chassis samples from a ``MetricReport`` (keyed by chassis id).

    Read from a chassis' entries: ``EnvironmentMetrics#/PowerWatts/Reading``,
    ``…/TemperatureCelsius/Reading`` and ``…/PowerLimitWatts/SetPoint``;
    ``PowerSubsystem/PowerSupplies/<id>/Metrics#/InputPowerWatts/Reading`` (summed over the
    supplies); ``Power#/PowerControl/0/PowerConsumedWatts`` and ``…/PowerLimit/LimitInWatts``.
    A chassis' power comes from one of them, in the driver's order — EnvironmentMetrics, then
    the supplies' sum, then PowerControl — so a report carrying several counts no watt twice.
    Other entries, and entries whose value is not a finite number, are skipped. Timestamps come
    from the entry, else the report, else ``received``; a sample's is the oldest of the entries
    it was made from. Raises :class:`DeviceError` when ``doc`` is not a MetricReport at all.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("MetricValues"), list):
        raise DeviceError(device, "the metric report has no MetricValues list")
    report_ts = timestamp(doc.get("Timestamp"))
    default_ts = received if report_ts is None else report_ts
    found: dict[str, _ReportChassis] = {}
    for entry in doc["MetricValues"]:
        if not isinstance(entry, Mapping):
            continue
        target = _metric_target(entry.get("MetricProperty"))
        value = None if target is None else number(entry.get("MetricValue"))
        if target is None or value is None:
            continue
        metric, cid, supply = target
        ts = timestamp(entry.get("Timestamp"))
        chassis = found.setdefault(cid, _ReportChassis({}, {}, {}))
        chassis.take(metric, supply, value, default_ts if ts is None else ts)
    return {cid: chassis.sample() for cid, chassis in found.items()}


def _reading(doc: Mapping[str, Any], section: str, field: str) -> float | None:
    excerpt = doc.get(section)
    return number(excerpt.get(field)) if isinstance(excerpt, Mapping) else None


def parse_environment_metrics(device: str, doc: object, sent: float) -> ChassisSample:
    """A chassis sample from its ``EnvironmentMetrics`` resource (no timestamp: ``sent``).

    A limit whose ``ControlMode`` is ``Disabled`` is no limit.
    """
    if not isinstance(doc, Mapping):
        raise DeviceError(device, "EnvironmentMetrics is not a JSON object")
    limit = doc.get("PowerLimitWatts")
    disabled = isinstance(limit, Mapping) and limit.get("ControlMode") == "Disabled"
    return ChassisSample(
        power_w=_reading(doc, "PowerWatts", "Reading"),
        inlet_temp_c=_reading(doc, "TemperatureCelsius", "Reading"),
        power_limit_w=None if disabled else _reading(doc, "PowerLimitWatts", "SetPoint"),
        source_ts=sent,
    )


class PowerSource(StrEnum):
    """Where a chassis' power was read, in the order the driver tries them."""

    METRIC_REPORT = "MetricReport"
    ENVIRONMENT_METRICS = "EnvironmentMetrics"
    POWER_SUBSYSTEM = "PowerSubsystem"
    POWER = "Power"
    SENSORS = "Sensors"


def power_supply_input_w(doc: object) -> float | None:
    """``InputPowerWatts.Reading`` of a ``PowerSupplyMetrics`` resource."""
    return _reading(doc, "InputPowerWatts", "Reading") if isinstance(doc, Mapping) else None


def _first_power_control(doc: object) -> Mapping[str, Any] | None:
    """``PowerControl[0]`` of a ``Power`` resource: the chassis' own power control."""
    controls = doc.get("PowerControl") if isinstance(doc, Mapping) else None
    if not isinstance(controls, list) or not controls or not isinstance(controls[0], Mapping):
        return None
    return controls[0]


def parse_power_resource(doc: object, sent: float) -> ChassisSample | None:
    """A sample from the older ``Power`` resource: ``PowerControl[0].PowerConsumedWatts``, and
    its ``PowerLimit.LimitInWatts`` as the power limit (``null``: no limit).

    ``None`` when there is no power reading (no ``PowerControl`` list, or no number in it).
    """
    control = _first_power_control(doc)
    watts = None if control is None else number(control.get("PowerConsumedWatts"))
    if control is None or watts is None:
        return None
    return ChassisSample(
        power_w=watts,
        power_limit_w=_reading(control, "PowerLimit", "LimitInWatts"),
        source_ts=sent,
    )


def parse_power_limit(device: str, doc: object) -> ControlLimits:
    """The power limit of a ``Power`` resource as Control limits: ``PowerControl[0]``'s
    ``PowerLimit.LimitInWatts`` is the set point, allowed from 0 (the schema's minimum) to its
    ``PowerCapacityWatts`` (when given: a limit above what the chassis can be allocated limits
    nothing). Raises :class:`DeviceError` when there is no ``PowerControl[0]`` to carry one.
    """
    if not isinstance(doc, Mapping):
        raise DeviceError(device, "the Power resource is not a JSON object")
    control = _first_power_control(doc)
    if control is None:
        raise DeviceError(
            device, "the Power resource has no PowerControl[0] object to carry a power limit"
        )
    return ControlLimits(
        set_point_w=_reading(control, "PowerLimit", "LimitInWatts"),
        allowable_min_w=0.0,
        allowable_max_w=number(control.get("PowerCapacityWatts")),
        control_mode=None,
    )


def power_limit_patch(watts: float) -> dict[str, Any]:
    """The PATCH of a ``Power`` resource that sets ``PowerControl[0].PowerLimit.LimitInWatts``:
    a one-member ``PowerControl`` array naming only that property."""
    return {"PowerControl": [{"PowerLimit": {"LimitInWatts": watts}}]}


_TOTAL_CONTEXTS: Final = ("Chassis", "PowerSupply")


def sensor_power(doc: object) -> tuple[str, float] | None:
    """``(PhysicalContext, Reading)`` of a ``Sensor`` whose ``ReadingType`` is ``Power``."""
    if not isinstance(doc, Mapping) or doc.get("ReadingType") != "Power":
        return None
    watts = number(doc.get("Reading"))
    context = doc.get("PhysicalContext")
    return None if watts is None else (context if isinstance(context, str) else "", watts)


def power_sensor_total(readings: Iterable[tuple[str, float]]) -> float | None:
    """The chassis' power from its power sensors: the ``Chassis`` sensor, else the sum of the
    ``PowerSupply`` sensors (their inputs); ``None`` when there is neither.

    Sensors of other contexts (a GPU, a fan, a memory module) measure parts of the chassis and
    are not summed: adding them to the chassis total would count that power twice.
    """
    by_context: dict[str, list[float]] = {}
    for context, watts in readings:
        by_context.setdefault(context, []).append(watts)
    for context in _TOTAL_CONTEXTS:
        found = by_context.get(context)
        if found:
            return found[0] if context == "Chassis" else math.fsum(found)
    return None


def chassis_parents(docs: Mapping[str, object]) -> dict[str, frozenset[str]]:
    """Which chassis contain which, from ``Links.Contains`` and ``Links.ContainedBy``.

    ``docs`` maps chassis ids to their Chassis resources; the answer maps a chassis id to the
    ids of the chassis that contain it (an enclosure for its blades).
    """
    parents: dict[str, set[str]] = {}
    for cid, doc in docs.items():
        links = doc.get("Links") if isinstance(doc, Mapping) else None
        if not isinstance(links, Mapping):
            continue
        contains = links.get("Contains")
        children = contains if isinstance(contains, list) else []
        for child in children:
            path = safe_path(child.get("@odata.id")) if isinstance(child, Mapping) else None
            if path is not None and chassis_id_of(path) != cid:
                parents.setdefault(chassis_id_of(path), set()).add(cid)
        parent = link(links, "ContainedBy")
        if parent is not None and chassis_id_of(parent) != cid:
            parents.setdefault(cid, set()).add(chassis_id_of(parent))
    return {cid: frozenset(ids) for cid, ids in parents.items()}


def counted_in_total(reporting: Iterable[str], parents: Mapping[str, frozenset[str]]) -> set[str]:
    """The chassis whose power adds up to the device total without counting any watt twice.

    A chassis is counted unless a chassis that contains it (directly or further up) reports
    power itself: the enclosure's reading already includes its blades. A container without a
    power reading hides nothing, so its children are counted.
    """
    reporting = set(reporting)

    def inside_reporting(cid: str) -> bool:
        seen: set[str] = set()
        todo = list(parents.get(cid, ()))
        while todo:
            up = todo.pop()
            if up in seen:
                continue
            seen.add(up)
            if up in reporting and up != cid:
                return True
            todo.extend(parents.get(up, ()))
        return False

    return {cid for cid in reporting if not inside_reporting(cid)}


def power_limit_uri(doc: object) -> str | None:
    """Where ``EnvironmentMetrics.PowerLimitWatts`` says its Control lives."""
    if not isinstance(doc, Mapping):
        return None
    excerpt = doc.get("PowerLimitWatts")
    return safe_path(excerpt.get("DataSourceUri")) if isinstance(excerpt, Mapping) else None


def parse_control(device: str, doc: object) -> ControlLimits:
    """The set point and its allowed range from a ``Control`` resource."""
    if not isinstance(doc, Mapping):
        raise DeviceError(device, "the Control resource is not a JSON object")
    mode = doc.get("ControlMode")
    return ControlLimits(
        set_point_w=number(doc.get("SetPoint")),
        allowable_min_w=number(doc.get("AllowableMin")),
        allowable_max_w=number(doc.get("AllowableMax")),
        control_mode=mode if isinstance(mode, str) else None,
    )


def error_summary(body: object) -> str:
    """The first message of a Redfish error body (``error.@Message.ExtendedInfo``), or ``""``."""
    if not isinstance(body, Mapping) or not isinstance(body.get("error"), Mapping):
        return ""
    error = body["error"]
    info = error.get("@Message.ExtendedInfo")
    if isinstance(info, list) and info and isinstance(info[0], Mapping):
        message, message_id = info[0].get("Message"), info[0].get("MessageId")
    else:
        message, message_id = error.get("message"), error.get("code")
    parts = [str(p)[:300] for p in (message_id, message) if isinstance(p, str) and p]
    return ": ".join(parts)


class ChassisNames:
    """Point-name prefixes for chassis ids, stable and unique.

    ``Rack001`` → ``rack001``; characters outside ``[a-z0-9_]`` become ``_``; a prefix that would
    not start with a letter gets ``c_``. Two ids that would share a prefix (``Rack-1``,
    ``rack_1``), an id that would shadow ``total_power``, and over-long ids get a short hash of the
    id appended, so every point name matches ``^[a-z][a-z0-9_]*$`` and names never collide.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._prefix: dict[str, str] = {}
        self._chassis: dict[str, str] = {}
        for cid in sorted(set(ids)):
            self.prefix(cid)

    def prefix(self, chassis_id: str) -> str:
        """The prefix of ``chassis_id`` (assigned on first use)."""
        known = self._prefix.get(chassis_id)
        if known is not None:
            return known
        base = _UNSAFE.sub("_", chassis_id.lower()).strip("_")
        if not base[:1].isalpha():
            base = f"c_{base}".rstrip("_")
        salt = 0
        while base in self._chassis or base in _RESERVED or len(base) > _MAX_PREFIX:
            key = f"{salt}:{chassis_id}".encode("utf-8", "replace")
            digest = hashlib.blake2s(key, digest_size=4).hexdigest()
            base = f"{base[: _MAX_PREFIX - 9].rstrip('_')}_{digest}"
            salt += 1
        self._prefix[chassis_id] = base
        self._chassis[base] = chassis_id
        return base

    def chassis(self, prefix: str) -> str | None:
        """The chassis id behind a prefix, ``None`` when no chassis has it."""
        return self._chassis.get(prefix)

    def __len__(self) -> int:
        return len(self._prefix)
