"""The IEC 61850 data model, from one table.

Each row is a data object: logical device, logical node, data object name, its CDC, SI unit
and multiplier (IEC 61850-7-3 Annex A codes), and where its value comes from in the store. The
model built for libiec61850 (:func:`build_model`) and, later, the ICD file are generated from
this table only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Quality
from pswd_gateway.store import Snapshot

__all__ = ["TABLE", "DataObject", "Reading", "SIUnit", "build_model"]

Reading = tuple[float, Quality, float]
"""(value in the row's unit x 10^multiplier, quality, source POSIX time)."""


class SIUnit:
    """IEC 61850-7-3 SIUnit codes used here."""

    DIMENSIONLESS: Final = 1
    CELSIUS: Final = 23
    HERTZ: Final = 33
    WATT: Final = 62
    PERCENT: Final = 1  # ratio, with the description saying per unit


@dataclass(frozen=True, slots=True)
class DataObject:
    ld: str
    ln: str
    name: str
    cdc: str
    unit: int
    multiplier: int
    """The value is served in unit x 10^multiplier (6: MW)."""
    source: Callable[[Snapshot, SiteConfig], Reading | None]
    description: str

    @property
    def reference(self) -> str:
        """``LD/LN.DO`` without the IED name."""
        return f"{self.ld}/{self.ln}.{self.name}"


def _point(
    role: Callable[[SiteConfig], str | None], point: str, scale: float
) -> Callable[[Snapshot, SiteConfig], Reading | None]:
    def get(snap: Snapshot, site: SiteConfig) -> Reading | None:
        device = role(site)
        p = None if device is None else snap.get(f"{device}.{point}")
        return None if p is None else (p.value / scale, p.quality, p.source_ts)

    return get


def _it_mw(snap: Snapshot, site: SiteConfig) -> Reading | None:
    total = snap.total(site.it_load_points)
    return None if total is None else (total[0] / 1e6, total[1], total[2])


def _available(
    role: Callable[[SiteConfig], str | None], point: str
) -> Callable[[Snapshot, SiteConfig], Reading | None]:
    """1.0 while the device's point is good, 0.0 otherwise (an SPS; itself always valid)."""

    def get(snap: Snapshot, site: SiteConfig) -> Reading | None:
        device = role(site)
        p = None if device is None else snap.get(f"{device}.{point}")
        up = p is not None and p.quality is Quality.GOOD
        return (1.0 if up else 0.0), Quality.GOOD, (p.received_ts if p else snap.taken_at)

    return get


TABLE: Final[tuple[DataObject, ...]] = (
    DataObject("GRID", "MMXU1", "TotW", "MV", SIUnit.WATT, 6,
               _point(lambda s: s.grid_meter, "active_power", 1e6),
               "Active power at the grid connection, > 0 import"),
    DataObject("GRID", "MMXU1", "Hz", "MV", SIUnit.HERTZ, 0,
               _point(lambda s: s.grid_meter, "frequency", 1.0), "Grid frequency"),
    DataObject("ITLOAD", "MMXU1", "TotW", "MV", SIUnit.WATT, 6, _it_mw,
               "Active power of the IT load"),
    DataObject("BESS", "MMXU1", "TotW", "MV", SIUnit.WATT, 6,
               _point(lambda s: s.bess, "active_power", 1e6),
               "Battery active power, > 0 discharging"),
    DataObject("BESS", "ZBAT1", "SoC", "MV", SIUnit.DIMENSIONLESS, 0,
               _point(lambda s: s.bess, "soc", 0.01), "Battery state of charge, percent"),
    DataObject("THERMAL", "MMXU1", "ChwTmp", "MV", SIUnit.CELSIUS, 0,
               _point(lambda s: s.thermal, "chw_supply_temp", 1.0),
               "Chilled-water supply temperature"),
    DataObject("THERMAL", "MMXU2", "HeatW", "MV", SIUnit.WATT, 6,
               _point(lambda s: s.thermal, "heat_export_power", 1e6),
               "Heat exported to the municipal network"),
    DataObject("GRID", "GGIO1", "Ind1", "SPS", SIUnit.DIMENSIONLESS, 0,
               _available(lambda s: s.bess, "soc"), "Battery available (GOOSE)"),
    DataObject("GRID", "GGIO1", "Ind2", "SPS", SIUnit.DIMENSIONLESS, 0,
               _available(lambda s: s.grid_meter, "active_power"), "Grid meter healthy (GOOSE)"),
)  # fmt: skip
"""The data objects served; docs/iec61850.md lists them with their object references."""


REPORT_TRIGGERS: Final = ("dchg", "qchg", "period", "gi")
INTEGRITY_PERIOD_MS: Final = 1000
BUFFER_TIME_MS: Final = 50


def _reports(model: Any, devices: dict[str, Any], m: Any) -> None:
    """Per logical device: dataset ``Meas`` of its measurements in LLN0, an unbuffered
    (``urcbMeas01``) and a buffered (``brcbMeas01``) report control block over it, triggered by
    data change, quality change, integrity period and general interrogation."""
    trg = m.TRG_OPT_DATA_CHANGED | m.TRG_OPT_QUALITY_CHANGED | m.TRG_OPT_INTEGRITY | m.TRG_OPT_GI
    opts = (
        m.RPT_OPT_SEQ_NUM
        | m.RPT_OPT_TIME_STAMP
        | m.RPT_OPT_REASON_FOR_INCLUSION
        | m.RPT_OPT_DATA_SET
        | m.RPT_OPT_DATA_REFERENCE
        | m.RPT_OPT_CONF_REV
    )
    for ld_name, ld in devices.items():
        lln0 = m.LogicalDevice_getLogicalNode(ld, "LLN0")
        dataset = m.DataSet_create("Meas", lln0)
        for row in TABLE:
            if row.ld == ld_name and row.cdc == "MV":
                m.DataSetEntry_create(dataset, f"{row.ln}$MX${row.name}", -1, None)
        for name, buffered in (("urcbMeas01", False), ("brcbMeas01", True)):
            m.ReportControlBlock_create(
                name, lln0, f"{ld_name}.{name}", buffered, "Meas", 1, trg, opts,
                BUFFER_TIME_MS, INTEGRITY_PERIOD_MS,
            )  # fmt: skip
    del model


GOOSE_LD: Final = "GRID"
GOOSE_DATASET: Final = "Events"
GOOSE_CB: Final = "gcbEvents"


def _goose(devices: dict[str, Any], m: Any, min_time_ms: int, max_time_ms: int) -> None:
    """The GoCB ``GRID/LLN0$GO$gcbEvents`` over dataset ``Events`` (the SPS indications)."""
    lln0 = m.LogicalDevice_getLogicalNode(devices[GOOSE_LD], "LLN0")
    dataset = m.DataSet_create(GOOSE_DATASET, lln0)
    for row in TABLE:
        if row.ld == GOOSE_LD and row.cdc == "SPS":
            m.DataSetEntry_create(dataset, f"{row.ln}$ST${row.name}", -1, None)
    m.GSEControlBlock_create(
        GOOSE_CB, lln0, f"{GOOSE_LD}.{GOOSE_DATASET}", GOOSE_DATASET, 1, False,  # noqa: FBT003
        min_time_ms, max_time_ms,
    )  # fmt: skip


def build_model(
    ied_name: str, m: Any, goose: tuple[int, int] | None = None
) -> tuple[Any, dict[str, tuple[Any, Any, Any]]]:
    """A libiec61850 dynamic model for :data:`TABLE` (``m`` is the pyiec61850 module).

    Returns the model and, per ``LD/LN.DO``, its (mag.f, q, t) attribute nodes.
    """
    model = m.IedModel_create(ied_name)
    devices: dict[str, Any] = {}
    nodes: dict[tuple[str, str], Any] = {}
    for row in TABLE:
        ld = devices.get(row.ld)
        if ld is None:
            ld = m.LogicalDevice_create(row.ld, model)
            devices[row.ld] = ld
            lln0 = m.toModelNode(m.LogicalNode_create("LLN0", ld))
            m.CDC_ENS_create("Mod", lln0, 0)
            m.CDC_ENS_create("Beh", lln0, 0)
            m.CDC_ENS_create("Health", lln0, 0)
            m.CDC_LPL_create("NamPlt", lln0, 0)
            lphd = m.toModelNode(m.LogicalNode_create("LPHD1", ld))
            m.CDC_DPL_create("PhyNam", lphd, 0)
            m.CDC_ENS_create("PhyHealth", lphd, 0)
            m.CDC_SPS_create("Proxy", lphd, 0)
        ln = nodes.get((row.ld, row.ln))
        if ln is None:
            ln = m.toModelNode(m.LogicalNode_create(row.ln, ld))
            m.CDC_ENS_create("Beh", ln, 0)
            nodes[(row.ld, row.ln)] = ln
        options = m.CDC_OPTION_UNIT | m.CDC_OPTION_UNIT_MULTIPLIER
        if row.cdc == "SPS":
            m.CDC_SPS_create(row.name, ln, 0)
        else:
            m.CDC_MV_create(row.name, ln, options, False)  # noqa: FBT003 - C API: float, not int
    _reports(model, devices, m)
    if goose is not None:
        _goose(devices, m, *goose)
    refs: dict[str, tuple[Any, Any, Any]] = {}
    for row in TABLE:
        base = f"{ied_name}{row.ld}/{row.ln}.{row.name}"
        value_leaf = "stVal" if row.cdc == "SPS" else "mag.f"
        mag, q, t = (
            m.IedModel_getModelNodeByObjectReference(model, f"{base}.{leaf}")
            for leaf in (value_leaf, "q", "t")
        )
        refs[row.reference] = (m.toDataAttribute(mag), m.toDataAttribute(q), m.toDataAttribute(t))
    return model, refs
