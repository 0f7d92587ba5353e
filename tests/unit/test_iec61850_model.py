"""The IEC 61850 table refers to the signal catalogue: units, scales and served values (no
libiec61850)."""

from __future__ import annotations

import pytest

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import NOT_AVAILABLE, OUT_OF_RANGE, Point, Quality
from pswd_gateway.domain.signals import GRID_POWER
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.northbound.iec61850.icd import icd_xml
from pswd_gateway.northbound.iec61850.model import TABLE, Context, DataObject, SIUnit
from pswd_gateway.northbound.iec61850.server import DETAIL_QUAL, quality_bits
from pswd_gateway.store import PointStore, Snapshot

SITE = SiteConfig(grid_meter="meter", bess="bess", thermal="plant", it_load=("hall1", "hall2"))
BY_REFERENCE = {row.reference: row for row in TABLE}
SIGNAL_ROWS = [row for row in TABLE if row.signal is not None]

IEC_61850_7_3 = {
    SiUnit.WATT: (62, 1.0),
    SiUnit.VAR: (63, 1.0),
    SiUnit.HERTZ: (33, 1.0),
    SiUnit.VOLT: (29, 1.0),
    SiUnit.AMPERE: (5, 1.0),
    SiUnit.CELSIUS: (23, 1.0),
    SiUnit.JOULE: (72, 3600.0),
    SiUnit.WATT_PER_SECOND: (81, 1.0),
    SiUnit.RATIO: (1, 1.0),
    SiUnit.ONE: (1, 1.0),
}
"""Catalogue unit → (SIUnit code of IEC 61850-7-3 Annex A, SI units per served unit),
written out from the standard rather than from the model."""


def snapshot(*points: tuple[str, float], quality: Quality = Quality.GOOD) -> Snapshot:
    store = PointStore()
    store.update(Point(key, value, SiUnit.ONE, quality, 100.0, 101.0) for key, value in points)
    return store.snapshot(200.0)


@pytest.mark.parametrize("row", SIGNAL_ROWS, ids=[row.reference for row in SIGNAL_ROWS])
def test_a_signal_row_serves_the_iec_unit_of_its_signal_at_a_scale_derived_from_its_multiplier(
    row: DataObject,
) -> None:
    """The SIUnit comes from the catalogue unit; served = SI / (factor x 10^multiplier)."""
    assert row.signal is not None
    code, factor = IEC_61850_7_3[row.signal.unit]
    assert row.unit == code
    assert row.scale == pytest.approx(factor * 10.0**row.multiplier)


def test_every_row_but_the_indications_names_a_catalogue_signal() -> None:
    """Only the GGIO1 indications (no site signal behind them) bring their own source."""
    own = {row.reference for row in TABLE if row.signal is None}
    assert own == {f"GRID/GGIO1.Ind{i}" for i in range(1, 5)}
    assert all(BY_REFERENCE[ref].unit == SIUnit.DIMENSIONLESS for ref in own)


@pytest.mark.parametrize(
    ("reference", "points", "served"),
    [
        ("GRID/MMXU1.TotW", [("meter.active_power", 150e6)], 150.0),
        ("GRID/MMXU1.TotVAr", [("meter.reactive_power", -12e6)], -12.0),
        ("GRID/MMXU1.PPV", [("meter.voltage", 132_000.0)], 132.0),
        ("GRID/MMXU1.Hz", [("meter.frequency", 50.02)], 50.02),
        ("GRID/MMTR1.DmdWh", [("meter.energy_imported", 7.2e6)], 2000.0),
        ("ITLOAD/MMXU1.TotW", [("hall1.total_power", 40e6), ("hall2.total_power", 2e6)], 42.0),
        ("BESS/ZBAT1.SoC", [("bess.soc", 0.42)], 42.0),
        ("BESS/ZBAT1.SoCLoLim", [("bess.soc_min", 0.05)], 5.0),
        ("THERMAL/MMXU1.ChwTmp", [("plant.chw_supply_temp", 18.5)], 18.5),
    ],
)  # fmt: skip
def test_a_row_serves_the_si_value_divided_by_its_scale_with_the_samples_quality_and_time(
    reference: str, points: list[tuple[str, float]], served: float
) -> None:
    """150e6 W at TotW (multiplier 6) is served as 150.0; 0.42 SoC (multiplier -2) as 42."""
    row = BY_REFERENCE[reference]
    got = row.read(snapshot(*points, quality=Quality.QUESTIONABLE), Context(SITE))
    assert got is not None
    value, quality, source_ts = got
    assert value == pytest.approx(served)
    assert (quality, source_ts) == (Quality.QUESTIONABLE, 100.0)


def test_a_setpoint_row_serves_the_site_setting_in_mw() -> None:
    """The GAPC1 setpoints read the SI settings (W, W/s) and serve them at multiplier 6."""
    site = SITE.model_copy(update={"grid_import_limit_mw": 250.0, "grid_ramp_limit_mw_per_s": 7.5})
    ctx = Context(site)
    snap = snapshot()
    assert BY_REFERENCE["GRID/GAPC1.ImpLimW"].read(snap, ctx) == (250.0, Quality.GOOD, 200.0)
    assert BY_REFERENCE["GRID/GAPC1.RmpLimW"].read(snap, ctx) == (7.5, Quality.GOOD, 200.0)
    assert BY_REFERENCE["GRID/GAPC1.DRLimW"].read(snap, ctx) == (0.0, Quality.GOOD, 200.0)
    assert BY_REFERENCE["GRID/GAPC1.DRAct"].read(snap, ctx) == (0.0, Quality.GOOD, 200.0)


def test_a_row_whose_device_is_absent_or_unread_serves_nothing() -> None:
    """No thermal plant on the site, no IT halls, or one of two halls not read yet."""
    no_plant = Context(SITE.model_copy(update={"thermal": None, "it_load": ()}))
    chiller, it_load = BY_REFERENCE["THERMAL/MMXU1.ChlW"], BY_REFERENCE["ITLOAD/MMXU1.TotW"]
    assert chiller.read(snapshot(("plant.chiller_power", 1e6)), no_plant) is None
    assert it_load.read(snapshot(), no_plant) is None
    assert it_load.read(snapshot(("hall1.total_power", 40e6)), Context(SITE)) is None


@pytest.mark.parametrize(
    ("quality", "served"),
    [(Quality.GOOD, 1.0), (Quality.QUESTIONABLE, 0.0), (Quality.INVALID, 0.0)],
)
def test_the_meter_health_indication_is_on_only_while_grid_power_is_good(
    quality: Quality, served: float
) -> None:
    """``GGIO1.Ind2`` is itself always valid and stamped with when the reading arrived."""
    healthy = BY_REFERENCE["GRID/GGIO1.Ind2"]
    read = healthy.read(snapshot(("meter.active_power", 1e6), quality=quality), Context(SITE))
    assert read == (served, Quality.GOOD, 101.0)
    assert healthy.read(snapshot(), Context(SITE)) == (0.0, Quality.GOOD, 200.0)  # not yet read


def test_the_icd_enumerates_every_unit_and_multiplier_served() -> None:
    """A SCADA tool reads ``units`` through the ICD's SIUnit and multiplier enumerations."""
    text = icd_xml()
    for row in TABLE:
        assert f'<EnumVal ord="{row.unit}"' in text, row.reference
        assert f'<EnumVal ord="{row.multiplier}"' in text, row.reference


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reference": "GRID/MMXU1.TotW", "cdc": "MV"},
        {"reference": "GRID/MMXU1.TotW", "cdc": "MV", "source": lambda *_: None, "multiplier": 6},
        {"reference": "GRID.MMXU1.TotW", "cdc": "MV", "source": lambda *_: None},
        {"reference": "GRID/MMXU1.TotW", "cdc": "MV", "signal": GRID_POWER, "multiplier": 5},
    ],
)
def test_a_row_without_exactly_one_value_source_or_with_a_bad_reference_is_refused(
    kwargs: dict[str, object],
) -> None:
    with pytest.raises(ValueError, match="GRID"):
        DataObject(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("quality", "reasons", "bits"),
    [
        (Quality.GOOD, frozenset(), 0),
        (Quality.QUESTIONABLE, frozenset(), 3),  # a late device: no detail to give
        (Quality.INVALID, frozenset(), 2),
        (Quality.QUESTIONABLE, frozenset({OUT_OF_RANGE}), 3 | 0x0008),
        (Quality.GOOD, frozenset({OUT_OF_RANGE}), 3 | 0x0008),  # at least questionable
        (Quality.INVALID, frozenset({OUT_OF_RANGE}), 2 | 0x0008),  # a device gone stays invalid
        (Quality.INVALID, frozenset({NOT_AVAILABLE}), 2 | 0x0040),
        (Quality.QUESTIONABLE, frozenset({NOT_AVAILABLE}), 2 | 0x0040),  # at least invalid
        (Quality.QUESTIONABLE, frozenset({OUT_OF_RANGE, NOT_AVAILABLE}), 2 | 0x0048),
        (Quality.GOOD, frozenset({"a reason of tomorrow"}), 0),
    ],
)
def test_a_points_reason_is_served_as_its_detail_qual_and_the_validity_it_needs(
    quality: Quality, reasons: frozenset[str], bits: int
) -> None:
    """IEC 61850-7-3: outOfRange with a questionable value, failure with an invalid one; the
    bits as libiec61850 encodes them (QUALITY_DETAIL_OUT_OF_RANGE, QUALITY_DETAIL_FAILURE)."""
    import pyiec61850.pyiec61850 as m  # noqa: PLC0415 - only the constants

    assert (m.QUALITY_DETAIL_OUT_OF_RANGE, m.QUALITY_DETAIL_FAILURE) == (0x0008, 0x0040)
    assert quality_bits(quality, reasons) == bits


def test_a_row_knows_the_reasons_of_every_point_behind_it() -> None:
    """The IT load sums the halls: one hall out of range makes the sum's detailQual say so."""
    store = PointStore()
    store.update([
        Point("hall1.total_power", 5e6, SiUnit.WATT, Quality.GOOD, 1.0, 1.0),
        Point("hall2.total_power", 9e9, SiUnit.WATT, Quality.QUESTIONABLE, 1.0, 1.0, OUT_OF_RANGE),
        Point("meter.active_power", 0.0, SiUnit.WATT, Quality.INVALID, 1.0, 1.0, NOT_AVAILABLE),
    ])  # fmt: skip
    snap, ctx = store.snapshot(2.0), Context(SITE)
    assert BY_REFERENCE["ITLOAD/MMXU1.TotW"].reasons(snap, ctx) == {OUT_OF_RANGE}
    assert BY_REFERENCE["GRID/MMXU1.TotW"].reasons(snap, ctx) == {NOT_AVAILABLE}
    assert BY_REFERENCE["GRID/GAPC1.ImpLimW"].reasons(snap, ctx) == frozenset()  # a setting


def test_the_drivers_give_the_reasons_the_mms_server_knows() -> None:
    from pswd_gateway.southbound.modbus import driver as modbus  # noqa: PLC0415
    from pswd_gateway.southbound.redfish import driver as redfish  # noqa: PLC0415

    assert {modbus.OUT_OF_RANGE, modbus.NOT_AVAILABLE, redfish.OUT_OF_RANGE} <= DETAIL_QUAL.keys()
