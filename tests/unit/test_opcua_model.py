"""The OPC UA model: each variable serves a catalogue signal with that signal's unit and range."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pswd_gateway.config import DemandResponseWindow, SiteConfig
from pswd_gateway.domain.points import Point, Quality, Sample
from pswd_gateway.domain.signals import Signal
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.northbound.opcua.model import (
    UNECE,
    UNECE_CODES,
    GatewayValue,
    Variable,
    limit_in_force,
    model,
)
from pswd_gateway.store import Snapshot


def _no_guard(snap: Snapshot, _site: object) -> Sample:
    return Sample(0.0, Quality.GOOD, snap.taken_at)


VARIABLES = model((), _no_guard)

# The UNECE Recommendation 20 common code and display name each unit is served with, as the
# OPC Foundation's UNECE_to_OPCUA table gives them (W/s and varh have no code of their own).
EXPECTED_UNITS: dict[SiUnit, tuple[str, str]] = {
    SiUnit.WATT: ("WTT", "W"),
    SiUnit.VAR: ("D44", "var"),
    SiUnit.VOLT_AMPERE: ("D46", "V·A"),
    SiUnit.VOLT: ("VLT", "V"),
    SiUnit.AMPERE: ("AMP", "A"),
    SiUnit.HERTZ: ("HTZ", "Hz"),
    SiUnit.JOULE: ("JOU", "J"),
    SiUnit.VAR_HOUR: ("D44", "varh"),
    SiUnit.CELSIUS: ("CEL", "°C"),
    SiUnit.KELVIN: ("KEL", "K"),
    SiUnit.RATIO: ("C62", "1"),
    SiUnit.SECOND: ("SEC", "s"),
    SiUnit.WATT_PER_SECOND: ("WTT", "W/s"),
    SiUnit.CUBIC_METRE: ("MTQ", "m³"),
    SiUnit.CUBIC_METRE_PER_SECOND: ("MQS", "m³/s"),
    SiUnit.COULOMB: ("COU", "C"),
    SiUnit.ONE: ("C62", "1"),
}

# What each node serves: the node ids are on the wire (SCADA configurations name them).
SERVES: dict[str, str] = {
    "PSWD.GridConnection.ActivePower": "grid.active_power",
    "PSWD.GridConnection.Frequency": "grid.frequency",
    "PSWD.GridConnection.ImportLimit": "site.grid_import_limit",
    "PSWD.GridConnection.RampLimit": "site.grid_ramp_limit",
    "PSWD.ITLoad.ActivePower": "it.active_power",
    "PSWD.Battery.ActivePower": "bess.active_power",
    "PSWD.Battery.StateOfCharge": "bess.soc",
    "PSWD.ThermalPlant.ChilledWaterSupplyTemperature": "thermal.chw_supply_temp",
    "PSWD.ThermalPlant.ChilledWaterSupplySetpoint": "thermal.chw_supply_setpoint",
    "PSWD.HeatRecovery.HeatExport": "heat.export_power",
    "PSWD.HeatRecovery.SupplyTemperature": "heat.supply_temp",
    "PSWD.DemandResponse.ImportLimit": "site.import_limit_in_force",
    "PSWD.Control.GuardActive": "control.guard_active",
}


def unit_id(code: str) -> int:
    """OPC UA Part 8: the UNECE code's characters, one byte each, in an Int32."""
    return int.from_bytes(code.encode("ascii"), "big")


def test_every_node_serves_the_signal_it_always_did() -> None:
    """The node ids, their order and the signal behind each are the table above; then the
    rest of the catalogue under ``Signals``."""
    named = [v for v in VARIABLES if v.obj != "Signals"]
    assert {v.node_id: v.signal.key for v in named} == SERVES
    assert [v.node_id for v in named] == list(SERVES)


def test_every_catalogue_signal_is_served_once() -> None:
    """A signal added to the catalogue is browsable without code (``PSWD.Signals.<key>``)."""
    from pswd_gateway.domain.signals import SIGNALS  # noqa: PLC0415

    served = [v.signal.key for v in VARIABLES if v.signal.key != "control.guard_active"]
    assert sorted(served) == sorted(s.key for s in SIGNALS)
    rest = [v for v in VARIABLES if v.obj == "Signals"]
    assert all(v.node_id == f"PSWD.Signals.{v.signal.key}" for v in rest)


@pytest.mark.parametrize("var", VARIABLES, ids=lambda v: v.node_id)
def test_engineering_units_and_range_agree_with_the_signal(var: Variable) -> None:
    """EngineeringUnits is the UNECE unit of the signal's SI unit; EURange is its range."""
    code, name = EXPECTED_UNITS[var.signal.unit]
    eu = var.engineering_units
    assert (eu.NamespaceUri, eu.UnitId) == (UNECE, unit_id(code))
    assert eu.DisplayName.Text == name
    assert eu.Description.Text == name
    assert (var.eu_range.Low, var.eu_range.High) == (var.signal.low, var.signal.high)


def test_every_unit_has_a_unece_code() -> None:
    """A signal in any SI unit can be served: the mapping covers the whole enum."""
    assert UNECE_CODES == EXPECTED_UNITS
    assert set(UNECE_CODES) == set(SiUnit)


def test_a_gateway_value_needs_a_reader() -> None:
    """A value that is not a site signal cannot be read from the store: it must say how."""
    value = GatewayValue(key="x", unit=SiUnit.ONE, low=0.0, high=1.0, description="x")
    with pytest.raises(ValueError, match="give read"):
        Variable(signal=value, obj="Control", name="X")


def test_catalogue_variables_read_the_signal_on_the_site() -> None:
    """A point signal reads the device playing its role; a setting signal reads the site."""
    site = SiteConfig(grid_meter="meter", grid_import_limit_mw=250.0, it_load=("hall1", "hall2"))
    p = [
        Point("meter.active_power", 120e6, SiUnit.WATT, Quality.GOOD, 10.0, 10.5),
        Point("hall1.total_power", 30e6, SiUnit.WATT, Quality.GOOD, 9.0, 9.5),
        Point("hall2.total_power", 40e6, SiUnit.WATT, Quality.QUESTIONABLE, 8.0, 8.5),
    ]
    snap = Snapshot(11.0, {x.name: x for x in p})
    by_id = {v.node_id: v for v in VARIABLES}
    assert by_id["PSWD.GridConnection.ActivePower"].value(snap, site) == (
        120e6,
        Quality.GOOD,
        10.0,
    )
    assert by_id["PSWD.ITLoad.ActivePower"].value(snap, site) == (70e6, Quality.QUESTIONABLE, 8.0)
    assert by_id["PSWD.GridConnection.ImportLimit"].value(snap, site) == (
        250e6,
        Quality.GOOD,
        11.0,
    )
    assert by_id["PSWD.Battery.StateOfCharge"].value(snap, site) is None  # no point yet


def test_the_demand_response_limit_is_the_lowest_in_force() -> None:
    """Within a demand-response window its limit applies if lower than the site's; outside it
    the site's import limit in force."""
    window = DemandResponseWindow(
        start=datetime(2030, 1, 15, 17, tzinfo=UTC),
        end=datetime(2030, 1, 15, 19, tzinfo=UTC),
        import_limit_mw=150.0,
    )
    read = limit_in_force([window])
    site = SiteConfig(grid_import_limit_mw=400.0)
    inside = datetime(2030, 1, 15, 18, tzinfo=UTC).timestamp()
    outside = datetime(2030, 1, 15, 19, tzinfo=UTC).timestamp()
    assert read(Snapshot(inside, {}), site) == (150e6, Quality.GOOD, inside)
    assert read(Snapshot(outside, {}), site) == (400e6, Quality.GOOD, outside)
    lower = SiteConfig(grid_import_limit_mw=100.0)
    assert read(Snapshot(inside, {}), lower) == (100e6, Quality.GOOD, inside)


def test_model_rows_name_catalogue_signals() -> None:
    """Only the guard's state is not a site signal; every other row is a catalogue signal."""
    others = [v.node_id for v in VARIABLES if not isinstance(v.signal, Signal)]
    assert others == ["PSWD.Control.GuardActive"]
