"""Reading Redfish documents (southbound.redfish.documents): pure, no I/O.

Real BMCs send partial, odd and sometimes hostile JSON; these tests prove that what can be read
is read in SI units, and that everything else is skipped or becomes a DeviceError — never a
KeyError, TypeError or OverflowError escaping into the poller.
"""

from __future__ import annotations

import contextlib
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.errors import DeviceError
from pswd_gateway.southbound.redfish.documents import (
    ChassisNames,
    ChassisSample,
    ControlLimits,
    chassis_id_of,
    error_summary,
    link,
    members,
    number,
    parse_control,
    parse_environment_metrics,
    parse_metric_report,
    power_limit_uri,
    safe_path,
    timestamp,
)

POINT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def entry(chassis: str, prop: str, value: object, ts: object = None) -> dict[str, object]:
    out: dict[str, object] = {
        "MetricId": prop.split("/", maxsplit=1)[0],
        "MetricValue": value,
        "MetricProperty": f"/redfish/v1/Chassis/{chassis}/EnvironmentMetrics#/{prop}",
    }
    if ts is not None:
        out["Timestamp"] = ts
    return out


def test_metric_report_entries_become_per_chassis_samples() -> None:
    """Power, inlet temperature and limit of each chassis are collected under its id."""
    doc = {
        "@odata.type": "#MetricReport.v1_5_0.MetricReport",
        "Timestamp": "2026-01-01T00:00:00Z",
        "MetricValues": [
            entry("Rack001", "PowerWatts/Reading", "1500.5", "2026-01-01T00:00:01Z"),
            entry("Rack001", "TemperatureCelsius/Reading", "24.25", "2026-01-01T00:00:01Z"),
            entry("Rack001", "PowerLimitWatts/SetPoint", "90000.0", "2026-01-01T00:00:01Z"),
            entry("Rack002", "PowerWatts/Reading", 2000),
        ],
    }
    samples = parse_metric_report("hall", doc, received=0.0)
    t1 = timestamp("2026-01-01T00:00:01Z")
    assert samples["Rack001"] == ChassisSample(1500.5, 24.25, 90000.0, t1)  # type: ignore[arg-type]
    assert samples["Rack002"] == ChassisSample(2000.0, None, None, timestamp(doc["Timestamp"]))  # type: ignore[arg-type]


def test_report_entries_without_a_time_take_the_reports_then_the_receive_time() -> None:
    """The entry's Timestamp wins, then the report's, then the time the answer arrived."""
    with_report_time = {
        "Timestamp": "1970-01-01T00:01:40Z",
        "MetricValues": [entry("A", "PowerWatts/Reading", "1")],
    }
    assert parse_metric_report("d", with_report_time, 5.0)["A"].source_ts == 100.0
    without = {"MetricValues": [entry("A", "PowerWatts/Reading", "1")]}
    assert parse_metric_report("d", without, 5.0)["A"].source_ts == 5.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1500", 1500.0),
        (" 2.5e3 ", 2500.0),
        (1500, 1500.0),
        (12.5, 12.5),
        (True, None),
        ("nan", None),
        ("inf", None),
        ("-Infinity", None),
        (10**400, None),
        ("12 W", None),
        (None, None),
        ([1], None),
    ],
)
def test_only_finite_numbers_and_numeric_strings_are_values(
    raw: object, expected: float | None
) -> None:
    """MetricValue is a string in the schema; numbers are accepted, booleans and NaN are not."""
    assert number(raw) == expected


def test_entries_for_other_metrics_or_malformed_properties_are_skipped() -> None:
    """Properties the driver does not read, of parts or of no chassis, give no sample."""
    doc = {
        "MetricValues": [
            {
                "MetricProperty": "/redfish/v1/Chassis/A/Power#/PowerControl/1/PowerConsumedWatts",
                "MetricValue": "1",
            },
            {
                "MetricProperty": "/redfish/v1/Chassis/A/Sensors/TotalPower#/Reading",
                "MetricValue": "1",
            },
            {
                "MetricProperty": "/redfish/v1/Chassis/A/EnvironmentMetrics#/EnergykWh/Reading",
                "MetricValue": "1",
            },
            {
                "MetricProperty": "/redfish/v1/Systems/A/EnvironmentMetrics#/PowerWatts/Reading",
                "MetricValue": "1",
            },
            {"MetricValue": "1"},
            "not an object",
            entry("B", "PowerWatts/Reading", "not a number"),
        ]
    }
    assert parse_metric_report("d", doc, 0.0) == {}


def test_percent_encoded_chassis_ids_are_decoded() -> None:
    """A chassis id with a space travels as %20 in URIs and is read back as itself."""
    doc = {"MetricValues": [entry("Rack%20A", "PowerWatts/Reading", "7")]}
    assert set(parse_metric_report("d", doc, 0.0)) == {"Rack A"}
    assert chassis_id_of("/redfish/v1/Chassis/Rack%20A/") == "Rack A"


@pytest.mark.parametrize("doc", [None, [], "x", {}, {"MetricValues": {}}, {"MetricValues": "x"}])
def test_a_document_that_is_not_a_metric_report_is_a_device_error(doc: object) -> None:
    """The error names the device."""
    with pytest.raises(DeviceError, match="device 'hall'"):
        parse_metric_report("hall", doc, 0.0)


def test_environment_metrics_give_a_sample_and_a_disabled_limit_is_no_limit() -> None:
    """Readings come from the excerpts; ControlMode Disabled hides the stale SetPoint."""
    doc = {
        "PowerWatts": {"Reading": 1200},
        "TemperatureCelsius": {"Reading": 23.5},
        "PowerLimitWatts": {"SetPoint": 9000, "ControlMode": "Automatic"},
    }
    assert parse_environment_metrics("d", doc, 3.0) == ChassisSample(1200.0, 23.5, 9000.0, 3.0)
    disabled = {**doc, "PowerLimitWatts": {"SetPoint": 9000, "ControlMode": "Disabled"}}
    assert parse_environment_metrics("d", disabled, 3.0).power_limit_w is None
    assert parse_environment_metrics("d", {"PowerWatts": {"Reading": None}}, 3.0).power_w is None
    with pytest.raises(DeviceError):
        parse_environment_metrics("d", [], 0.0)


def test_the_power_limit_control_is_found_through_environment_metrics() -> None:
    """PowerLimitWatts.DataSourceUri names the Control; a foreign host is never followed."""
    doc = {"PowerLimitWatts": {"DataSourceUri": "/redfish/v1/Chassis/A/Controls/Cap"}}
    assert power_limit_uri(doc) == "/redfish/v1/Chassis/A/Controls/Cap"
    assert power_limit_uri({"PowerLimitWatts": {"DataSourceUri": "https://evil/x"}}) is None
    assert power_limit_uri(None) is None


def test_control_limits_allow_only_finite_values_inside_the_allowed_range() -> None:
    """AllowableMin/Max bound a write; a missing bound does not."""
    limits = parse_control(
        "d", {"SetPoint": 5, "AllowableMin": 10, "AllowableMax": "100", "ControlMode": "Automatic"}
    )
    assert limits == ControlLimits(5.0, 10.0, 100.0, "Automatic")
    assert limits.allows(10.0)
    assert limits.allows(100.0)
    assert not limits.allows(9.99)
    assert not limits.allows(math.nan)
    assert not limits.allows(math.inf)
    assert ControlLimits(None, None, None, None).allows(1e9)
    with pytest.raises(DeviceError):
        parse_control("d", "x")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("/redfish/v1/Chassis", "/redfish/v1/Chassis"),
        (
            "/redfish/v1/Chassis/A/EnvironmentMetrics#/PowerWatts",
            "/redfish/v1/Chassis/A/EnvironmentMetrics",
        ),
        ("http://elsewhere/redfish/v1", None),
        ("//elsewhere/redfish/v1", None),
        ("redfish/v1", None),
        ("/redfish/v1/a b", None),
        ("/redfish/v1/\n", None),
        ("/" + "a" * 5000, None),
        (42, None),
    ],
)
def test_only_paths_on_the_same_service_are_followed(ref: object, expected: str | None) -> None:
    """A document pointing at another host would otherwise receive the session token."""
    assert safe_path(ref) == expected


def test_links_and_members_skip_what_is_not_a_reference() -> None:
    """Navigation properties and collection members tolerate junk entries."""
    doc = {
        "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
        "Bad": {"@odata.id": 3},
        "Members": [{"@odata.id": "/redfish/v1/Chassis/A"}, {"@odata.id": "http://x/y"}, 7, {}],
    }
    assert link(doc, "Chassis") == "/redfish/v1/Chassis"
    assert link(doc, "Bad") is None
    assert link(doc, "Missing") is None
    assert link([], "Chassis") is None
    assert members(doc) == ["/redfish/v1/Chassis/A"]
    assert members({"Members": "x"}) == []


def test_error_summary_reads_the_redfish_error_body() -> None:
    """The first ExtendedInfo message, else error.code/message, else nothing."""
    body = {
        "error": {
            "code": "Base.1.18.GeneralError",
            "message": "see ExtendedInfo",
            "@Message.ExtendedInfo": [
                {"MessageId": "Base.1.18.PropertyValueOutOfRange", "Message": "The value '5' ..."}
            ],
        }
    }
    assert error_summary(body) == "Base.1.18.PropertyValueOutOfRange: The value '5' ..."
    assert error_summary({"error": {"code": "X.1.0.Y", "message": "m"}}) == "X.1.0.Y: m"
    assert error_summary({"error": "x"}) == ""
    assert error_summary(None) == ""


def test_timestamps_without_a_zone_are_utc_and_junk_is_none() -> None:
    """RFC 3339 with Z or an offset, or a zone-less time taken as UTC."""
    assert timestamp("1970-01-01T00:00:10Z") == 10.0
    assert timestamp("1970-01-01T01:00:10+01:00") == 10.0
    assert timestamp("1970-01-01T00:00:10") == 10.0
    for junk in ("yesterday", "", 12, None, "9999-12-31T23:59:59-23:59" * 3):
        assert timestamp(junk) is None


def test_chassis_names_are_lower_case_point_prefixes() -> None:
    """Rack001 → rack001; odd characters become underscores; digits first get a c_ prefix."""
    names = ChassisNames(["Rack001", "GPU Rack.7", "42"])
    assert names.prefix("Rack001") == "rack001"
    assert names.prefix("GPU Rack.7") == "gpu_rack_7"
    assert names.prefix("42") == "c_42"
    assert names.chassis("rack001") == "Rack001"
    assert names.chassis("nope") is None


def test_colliding_reserved_and_long_chassis_names_stay_unique_and_valid() -> None:
    """Two ids with one prefix, an id that would shadow total_power, a huge id: all distinct."""
    ids = ["Rack-1", "rack_1", "Total", "x" * 500, "", "---"]
    names = ChassisNames(ids)
    prefixes = [names.prefix(i) for i in ids]
    assert len(set(prefixes)) == len(ids)
    assert "total" not in prefixes
    assert all(POINT_NAME.match(f"{p}_power") and len(p) <= 48 for p in prefixes)
    assert [names.chassis(p) for p in prefixes] == ids
    assert ChassisNames(reversed(ids)).prefix("Rack-1") == names.prefix("Rack-1"), "stable"


@given(st.lists(st.text(max_size=80), max_size=30))
@settings(max_examples=200, deadline=None)
def test_any_chassis_ids_give_unique_valid_point_names(ids: list[str]) -> None:
    """Whatever ids a BMC uses, every prefix is a valid, unique, reversible point-name stem."""
    names = ChassisNames(ids)
    unique = sorted(set(ids))
    prefixes = [names.prefix(i) for i in unique]
    assert len(set(prefixes)) == len(unique)
    for cid, prefix in zip(unique, prefixes, strict=True):
        assert POINT_NAME.match(prefix + "_inlet_temp"), prefix
        assert prefix != "total"
        assert names.chassis(prefix) == cid


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=24),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=24,
)
properties = st.sampled_from(
    [
        "/redfish/v1/Chassis/R1/EnvironmentMetrics#/PowerWatts/Reading",
        "/redfish/v1/Chassis/R%ZZ/EnvironmentMetrics#/TemperatureCelsius/Reading",
        "/redfish/v1/Chassis/R1/EnvironmentMetrics/#/PowerLimitWatts/SetPoint",
        "/redfish/v1/Chassis//EnvironmentMetrics#/PowerWatts/Reading",
        "/redfish/v1/Chassis/R1/PowerSubsystem/PowerSupplies/P1/Metrics#/InputPowerWatts/Reading",
        "/redfish/v1/Chassis/R1/PowerSubsystem/PowerSupplies/P%2/Metrics/#/InputPowerWatts/Reading",
        "/redfish/v1/Chassis/R1/Power#/PowerControl/0/PowerConsumedWatts",
        "/redfish/v1/Chassis/R1/Power/#/PowerControl/0/PowerLimit/LimitInWatts",
        "/redfish/v1/Chassis/R1/Sensors/S1#/Reading",
        "x",
        "",
    ]
)
report_entries = st.fixed_dictionaries(
    {
        "MetricProperty": properties | json_values,
        "MetricValue": json_values,
        "Timestamp": json_values | st.text(),
    }
)
reports = json_values | st.fixed_dictionaries(
    {"MetricValues": st.lists(report_entries | json_values, max_size=6), "Timestamp": json_values}
)


@given(doc=reports)
@settings(max_examples=300, deadline=None)
def test_hostile_metric_reports_give_samples_or_a_device_error(doc: object) -> None:
    """Whatever a BMC sends as a report, parsing gives finite samples or a DeviceError."""
    try:
        samples = parse_metric_report("hall", doc, 0.0)
    except DeviceError:
        return
    for sample in samples.values():
        for value in (sample.power_w, sample.inlet_temp_c, sample.power_limit_w):
            assert value is None or math.isfinite(value)
        assert math.isfinite(sample.source_ts)


@given(
    doc=json_values
    | st.fixed_dictionaries({"PowerWatts": json_values, "PowerLimitWatts": json_values})
)
@settings(max_examples=200, deadline=None)
def test_hostile_resources_give_values_or_a_device_error(doc: object) -> None:
    """EnvironmentMetrics, Control, links, members and error bodies never raise anything else."""
    for parse in (
        lambda: parse_environment_metrics("hall", doc, 0.0),
        lambda: parse_control("hall", doc),
    ):
        with contextlib.suppress(DeviceError):
            parse()
    link(doc, "Chassis")
    members(doc)
    error_summary(doc)
    power_limit_uri(doc)
