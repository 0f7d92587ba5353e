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
from pswd_gateway.southbound.redfish.documents import (
    ChassisSample,
    chassis_parents,
    counted_in_total,
    parse_power_resource,
    power_sensor_total,
    power_supply_input_w,
    sensor_power,
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
            st.fixed_dictionaries({"PowerConsumedWatts": json_values}) | json_values, max_size=3
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
    """Whatever a BMC sends as Power, PowerSupplyMetrics, Sensor or Chassis never raises and
    never gives a watt value that is not a finite number."""
    sample = parse_power_resource(doc, SENT)
    assert sample is None or (sample.power_w is not None and math.isfinite(sample.power_w))
    watts = power_supply_input_w(doc)
    assert watts is None or math.isfinite(watts)
    reading = sensor_power(doc)
    assert reading is None or math.isfinite(reading[1])
    total = power_sensor_total([reading] if reading is not None else [])
    assert total is None or math.isfinite(total)
    parents = chassis_parents({"A": doc, "B": doc})
    counted_in_total({"A", "B"}, parents)


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
