"""Where a chassis' power comes from, and how chassis add up: pure document functions.

BMCs publish power in different places (EnvironmentMetrics, PowerSubsystem power-supply metrics,
the older Power resource, Sensors); enclosures contain blades that report power too. These tests
prove each shape is read in watts and that the device total counts every watt once. The
documents are written from the DMTF Redfish schema (PowerSupplyMetrics, Power, Sensor, Chassis).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.errors import DeviceError
from pswd_gateway.southbound.redfish.documents import (
    ChassisSample,
    ControlLimits,
    chassis_parents,
    counted_in_total,
    parse_metric_report,
    parse_power_limit,
    parse_power_resource,
    power_limit_patch,
    power_sensor_total,
    power_supply_input_w,
    sensor_power,
    timestamp,
)

SENT = 1.8e9


def chassis(cid: str, *, contains: tuple[str, ...] = (), contained_by: str | None = None) -> dict:
    links: dict[str, object] = {
        "Contains": [{"@odata.id": f"/redfish/v1/Chassis/{c}"} for c in contains]
    }
    if contained_by is not None:
        links["ContainedBy"] = {"@odata.id": f"/redfish/v1/Chassis/{contained_by}"}
    return {"@odata.id": f"/redfish/v1/Chassis/{cid}", "Id": cid, "Links": links}


def sensor(reading: object, context: str, reading_type: str = "Power") -> dict[str, object]:
    return {
        "ReadingType": reading_type,
        "Reading": reading,
        "ReadingUnits": "W",
        "PhysicalContext": context,
    }


def test_the_power_resource_gives_the_first_power_controls_consumed_watts() -> None:
    """Power.PowerControl[0].PowerConsumedWatts is the chassis power; no number is no sample."""
    doc = {"PowerControl": [{"PowerConsumedWatts": 5120.5}, {"PowerConsumedWatts": 1.0}]}
    assert parse_power_resource(doc, SENT) == ChassisSample(power_w=5120.5, source_ts=SENT)
    for bad in (None, {}, {"PowerControl": []}, {"PowerControl": [{"PowerConsumedWatts": None}]}):
        assert parse_power_resource(bad, SENT) is None
    assert parse_power_resource({"PowerControl": ["x"]}, SENT) is None


def test_the_power_resource_gives_its_limit_in_watts_and_null_is_no_limit() -> None:
    """PowerControl[0].PowerLimit.LimitInWatts is the chassis' power limit; null lifts it."""
    limited = {"PowerControl": [{"PowerConsumedWatts": 800, "PowerLimit": {"LimitInWatts": 900}}]}
    assert parse_power_resource(limited, SENT) == ChassisSample(
        power_w=800.0, power_limit_w=900.0, source_ts=SENT
    )
    lifted = {"PowerControl": [{"PowerConsumedWatts": 800, "PowerLimit": {"LimitInWatts": None}}]}
    sample = parse_power_resource(lifted, SENT)
    assert sample is not None
    assert sample.power_limit_w is None


def test_a_power_resource_limit_is_allowed_from_zero_to_the_power_capacity() -> None:
    """The Power schema has no AllowableMin/Max: LimitInWatts' minimum is 0 and a limit above
    PowerCapacityWatts limits nothing; without a capacity there is no upper bound."""
    doc = {
        "PowerControl": [
            {"PowerCapacityWatts": 5000, "PowerLimit": {"LimitInWatts": 1200}},
            {"PowerCapacityWatts": 1},
        ]
    }
    limits = parse_power_limit("bmc", doc)
    assert limits == ControlLimits(1200.0, 0.0, 5000.0, None)
    assert limits.allows(0.0)
    assert limits.allows(5000.0)
    assert not limits.allows(5000.5)
    assert not limits.allows(-1.0)
    unbounded = parse_power_limit("bmc", {"PowerControl": [{"PowerLimit": {}}]})
    assert unbounded.allows(1e9)
    assert unbounded.set_point_w is None


@pytest.mark.parametrize("doc", [None, [], {}, {"PowerControl": []}, {"PowerControl": [3]}])
def test_a_power_resource_without_power_control_carries_no_limit(doc: object) -> None:
    """Nothing to write to: a DeviceError naming the device and what is missing."""
    with pytest.raises(DeviceError, match=r"device 'bmc': the Power resource"):
        parse_power_limit("bmc", doc)


def test_a_power_limit_is_patched_as_the_first_power_controls_limit_in_watts() -> None:
    """The PATCH names PowerControl[0].PowerLimit.LimitInWatts and nothing else."""
    assert power_limit_patch(1200.0) == {"PowerControl": [{"PowerLimit": {"LimitInWatts": 1200.0}}]}


def test_power_supply_metrics_give_their_input_power() -> None:
    """PowerSupplyMetrics.InputPowerWatts.Reading in W; anything else is None."""
    assert power_supply_input_w({"InputPowerWatts": {"Reading": 812.0}}) == 812.0
    assert power_supply_input_w({"InputPowerWatts": {"Reading": "n/a"}}) is None
    assert power_supply_input_w({"OutputPowerWatts": {"Reading": 790.0}}) is None
    assert power_supply_input_w([1, 2]) is None


def test_only_power_sensors_with_a_number_are_power_readings() -> None:
    """A Sensor counts when ReadingType is Power and Reading a finite number."""
    assert sensor_power(sensor(900, "Chassis")) == ("Chassis", 900.0)
    assert sensor_power(sensor(21.5, "Intake", "Temperature")) is None
    assert sensor_power(sensor(None, "Chassis")) is None
    assert sensor_power({"ReadingType": "Power", "Reading": 3.0}) == ("", 3.0)
    assert sensor_power("Power") is None


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ([("Chassis", 900.0), ("PowerSupply", 500.0), ("PowerSupply", 450.0)], 900.0),
        ([("PowerSupply", 500.0), ("PowerSupply", 450.0), ("GPU", 300.0)], 950.0),
        ([("GPU", 300.0), ("CPU", 120.0)], None),
        ([], None),
    ],
)
def test_the_chassis_sensor_wins_else_power_supplies_are_summed(
    readings: list[tuple[str, float]], expected: float | None
) -> None:
    """Chassis sensor first, then the power-supply sum; parts (GPU, CPU) are never added."""
    assert power_sensor_total(readings) == expected


def test_contains_and_contained_by_both_make_a_parent() -> None:
    """Links.Contains (downwards) and Links.ContainedBy (upwards) give the same relation."""
    docs = {
        "Enclosure": chassis("Enclosure", contains=("Blade1",)),
        "Blade1": chassis("Blade1"),
        "Blade2": chassis("Blade2", contained_by="Enclosure"),
        "Odd": {"Links": {"Contains": "not a list", "ContainedBy": 3}},
        "Self": chassis("Self", contains=("Self",)),
    }
    assert chassis_parents(docs) == {
        "Blade1": frozenset({"Enclosure"}),
        "Blade2": frozenset({"Enclosure"}),
    }


def test_blades_inside_a_reporting_enclosure_are_not_counted_twice() -> None:
    """Enclosure reports: its blades are left out of the total; a lone rack counts."""
    parents = {"Blade1": frozenset({"Enclosure"}), "Blade2": frozenset({"Enclosure"})}
    assert counted_in_total({"Enclosure", "Blade1", "Blade2", "Rack"}, parents) == {
        "Enclosure",
        "Rack",
    }


def test_a_container_without_power_does_not_hide_its_children() -> None:
    """A shelf with no reading: its sleds count, including a sled two levels down."""
    parents = {
        "Sled1": frozenset({"Shelf"}),
        "Tray": frozenset({"Shelf"}),
        "Sled2": frozenset({"Tray"}),
        "Shelf": frozenset({"Row"}),
    }
    assert counted_in_total({"Sled1", "Sled2"}, parents) == {"Sled1", "Sled2"}
    assert counted_in_total({"Sled1", "Sled2", "Row"}, parents) == {"Row"}


def test_a_containment_cycle_ends() -> None:
    """A BMC that says A contains B and B contains A does not hang the total."""
    parents = {"A": frozenset({"B"}), "B": frozenset({"A"}), "C": frozenset({"A"})}
    assert counted_in_total({"C"}, parents) == {"C"}


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=24),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=24,
)
shaped = st.fixed_dictionaries(
    {
        "PowerControl": st.lists(
            st.fixed_dictionaries(
                {
                    "PowerConsumedWatts": json_values,
                    "PowerCapacityWatts": json_values,
                    "PowerLimit": st.fixed_dictionaries({"LimitInWatts": json_values})
                    | json_values,
                }
            )
            | json_values,
            max_size=3,
        ),
        "InputPowerWatts": st.fixed_dictionaries({"Reading": json_values}) | json_values,
        "ReadingType": st.sampled_from(["Power", "Temperature"]) | json_values,
        "Reading": json_values,
        "PhysicalContext": st.sampled_from(["Chassis", "PowerSupply", "GPU"]) | json_values,
        "Links": st.fixed_dictionaries(
            {
                "Contains": st.lists(st.fixed_dictionaries({"@odata.id": json_values}), max_size=3)
                | json_values,
                "ContainedBy": json_values,
            }
        )
        | json_values,
    }
)


@given(doc=json_values | shaped)
@settings(max_examples=300, deadline=None)
def test_hostile_power_documents_give_finite_watts_or_nothing(doc: object) -> None:
    """Whatever a BMC sends as Power, PowerSupplyMetrics, Sensor or Chassis never raises (but a
    DeviceError for a Power resource without a limit to write) and never gives a watt value
    that is not a finite number."""
    sample = parse_power_resource(doc, SENT)
    assert sample is None or (sample.power_w is not None and math.isfinite(sample.power_w))
    assert sample is None or sample.power_limit_w is None or math.isfinite(sample.power_limit_w)
    try:
        limits = parse_power_limit("bmc", doc)
    except DeviceError:
        limits = None
    for bound in (limits.set_point_w, limits.allowable_max_w) if limits else ():
        assert bound is None or math.isfinite(bound)
    watts = power_supply_input_w(doc)
    assert watts is None or math.isfinite(watts)
    reading = sensor_power(doc)
    assert reading is None or math.isfinite(reading[1])
    total = power_sensor_total([reading] if reading is not None else [])
    assert total is None or math.isfinite(total)
    parents = chassis_parents({"A": doc, "B": doc})
    counted_in_total({"A", "B"}, parents)


# ---- metric reports ------------------------------------------------------------------------------

CHASSIS = "/redfish/v1/Chassis"


def env_power(cid: str) -> str:
    return f"{CHASSIS}/{cid}/EnvironmentMetrics#/PowerWatts/Reading"


def supply_input(cid: str, psu: str) -> str:
    return f"{CHASSIS}/{cid}/PowerSubsystem/PowerSupplies/{psu}/Metrics#/InputPowerWatts/Reading"


def consumed(cid: str, member: int = 0) -> str:
    return f"{CHASSIS}/{cid}/Power#/PowerControl/{member}/PowerConsumedWatts"


def report(*entries: tuple[str, object] | tuple[str, object, str]) -> dict[str, object]:
    values = []
    for prop, value, *ts in entries:
        entry = {"MetricId": prop.rsplit("/", 2)[-2], "MetricProperty": prop, "MetricValue": value}
        if ts:
            entry["Timestamp"] = ts[0]
        values.append(entry)
    return {"Timestamp": "2026-01-01T00:00:00Z", "MetricValues": values}


def test_a_report_of_power_supply_inputs_sums_them_per_chassis() -> None:
    """InputPowerWatts of each supply adds up to the chassis; the oldest entry dates it."""
    doc = report(
        (supply_input("Rack1", "PSU1"), "700", "2026-01-01T00:00:02Z"),
        (supply_input("Rack1", "PSU2"), 800.0, "2026-01-01T00:00:01Z"),
        (supply_input("Rack%202", "PSU%201"), "300"),
    )
    samples = parse_metric_report("bmc", doc, 0.0)
    assert samples["Rack1"] == ChassisSample(1500.0, source_ts=timestamp("2026-01-01T00:00:01Z"))  # type: ignore[arg-type]
    assert samples["Rack 2"].power_w == 300.0


def test_a_report_of_power_control_reads_the_first_member_and_its_limit() -> None:
    """PowerControl/0 is the chassis (consumed watts and LimitInWatts); PowerControl/1 covers a
    part of it and is not added."""
    doc = report(
        (consumed("Rack1"), "5120.5"),
        (consumed("Rack1", 1), "4000"),
        (f"{CHASSIS}/Rack1/Power/#/PowerControl/0/PowerLimit/LimitInWatts", "6000"),
    )
    sample = parse_metric_report("bmc", doc, 0.0)["Rack1"]
    assert (sample.power_w, sample.power_limit_w) == (5120.5, 6000.0)


def test_a_report_with_several_sources_for_one_chassis_counts_each_watt_once() -> None:
    """EnvironmentMetrics wins over the supplies' sum, which wins over PowerControl — the
    driver's own order; a supply named twice counts once, with its last value."""
    doc = report(
        (consumed("A"), "990"),
        (supply_input("A", "PSU1"), "400"),
        (env_power("A"), "1000"),
        (consumed("B"), "990"),
        (supply_input("B", "PSU1"), "400"),
        (supply_input("B", "PSU2"), "550"),
        (supply_input("B", "PSU2"), "580"),
        (f"{CHASSIS}/B/Sensors/TotalPower#/Reading", "123"),
    )
    samples = parse_metric_report("bmc", doc, 0.0)
    assert samples["A"].power_w == 1000.0
    assert samples["B"].power_w == 980.0


def test_sensor_readings_in_a_report_are_not_taken_as_power() -> None:
    """An entry does not say whether a sensor measures power, nor of what: it is left out."""
    doc = report((f"{CHASSIS}/A/Sensors/TotalPower#/Reading", "900"))
    assert parse_metric_report("bmc", doc, 0.0) == {}


KINDS = ("env", "supply", "consumed", "sensor", "part")
report_entry = st.tuples(
    st.sampled_from(["A", "B"]),
    st.sampled_from(KINDS),
    st.sampled_from(["PSU1", "PSU2", "PSU3"]),
    st.floats(min_value=0.0, max_value=1e7),
)


def power_property(cid: str, kind: str, psu: str) -> str:
    return {
        "env": env_power(cid),
        "supply": supply_input(cid, psu),
        "consumed": consumed(cid),
        "sensor": f"{CHASSIS}/{cid}/Sensors/{psu}#/Reading",
        "part": consumed(cid, 2),
    }[kind]


@given(entries=st.lists(report_entry, max_size=12))
@settings(max_examples=300, deadline=None)
def test_a_chassis_power_comes_from_one_source_whatever_the_report_carries(
    entries: list[tuple[str, str, str, float]],
) -> None:
    """For any mix of entries: a chassis' power is its EnvironmentMetrics reading, else the sum
    of its supplies' last inputs, else PowerControl[0]'s — never two of them added."""
    doc = report(*((power_property(cid, kind, psu), value) for cid, kind, psu, value in entries))
    samples = parse_metric_report("bmc", doc, 0.0)
    for cid in ("A", "B"):
        mine = [(kind, psu, value) for c, kind, psu, value in entries if c == cid]
        last: dict[tuple[str, str], float] = {}
        for kind, psu, value in mine:
            last[kind, psu if kind == "supply" else ""] = value
        supplies = [v for (kind, _), v in last.items() if kind == "supply"]
        if ("env", "") in last:
            expected: float | None = last["env", ""]
        elif supplies:
            expected = math.fsum(supplies)
        else:
            expected = last.get(("consumed", ""))
        got = samples[cid].power_w if cid in samples else None
        assert got == expected


# ---- configuration -------------------------------------------------------------------------------


def redfish(**kw: object) -> RedfishDeviceConfig:
    return RedfishDeviceConfig.model_validate({"name": "bmc", **kw})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost", "http://[::1]:8443", "https://bmc.example"]
)
def test_https_anywhere_and_plain_http_on_loopback_are_accepted(url: str) -> None:
    """Plain HTTP is allowed only to this machine (the twin, a local aggregator)."""
    assert redfish(base_url=url).base_url == url


@pytest.mark.parametrize("url", ["http://198.51.100.11", "http://bmc.example:8000/", "http://"])
def test_plain_http_off_loopback_is_refused_with_what_to_do(url: str) -> None:
    """http:// to another host would carry the password in clear: a config error saying so."""
    with pytest.raises(ValidationError) as refused:
        redfish(base_url=url)
    message = str(refused.value)
    assert "plain HTTP" in message
    assert "https://" in message
    assert "tls_fingerprint_sha256" in message


def test_a_certificate_fingerprint_is_normalised_to_lower_case_hex() -> None:
    """openssl prints AA:BB:…; the config keeps 64 lower-case hex digits."""
    colons = ":".join(["AB"] * 32)
    cfg = redfish(base_url="https://198.51.100.11", tls_fingerprint_sha256=colons)
    assert cfg.tls_fingerprint_sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"tls_fingerprint_sha256": "abc"}, "64 hex digits"),
        ({"tls_fingerprint_sha256": "ab" * 32, "ca_bundle": "/etc/bmc-ca.pem"}, "exclude"),
        (
            {"base_url": "http://127.0.0.1:8000", "ca_bundle": "/etc/bmc-ca.pem"},
            "need an https:// base_url",
        ),
        ({"auth": "digest"}, "auth"),
    ],
)
def test_tls_and_auth_settings_that_cannot_work_are_config_errors(
    kw: dict[str, object], words: str
) -> None:
    """A bad fingerprint, a CA and a pin together, TLS settings on http://, an unknown auth."""
    with pytest.raises(ValidationError, match=words):
        redfish(**{"base_url": "https://198.51.100.11", **kw})


def test_auth_defaults_to_auto() -> None:
    """Without auth in the config: a session when the BMC gives one, else HTTP Basic."""
    assert redfish(base_url="https://198.51.100.11").auth == "auto"
