"""The ICD (SCL, IEC 61850-6) of the served model, generated from the same table.

``pswd-gateway iec61850 icd -o FILE`` writes it; ``docs/pswd-gateway.icd`` is checked in, and
a test browses the running server with libiec61850's client and compares what it finds with
this file (logical devices, logical nodes, data objects, datasets, report control blocks). The
forecast schedule (FSCH1, FSCC1) comes from :data:`.schedule.OBJECTS`, each data object with the
DOType it names.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final

from pswd_gateway.northbound.iec61850 import schedule
from pswd_gateway.northbound.iec61850.model import (
    BUFFER_TIME_MS,
    GOOSE_CB,
    GOOSE_DATASET,
    GOOSE_LD,
    INTEGRITY_PERIOD_MS,
    MULTIPLIERS,
    REPORT_DATASET,
    TABLE,
    GooseAddress,
    SIUnit,
    goose_rows,
    report_rows,
)

__all__ = [
    "LLN0_OBJECTS",
    "LPHD_OBJECTS",
    "icd_structure",
    "icd_xml",
    "served_structure",
    "write_icd",
]

SCL_NS: Final = "http://www.iec.ch/61850/2003/SCL"
LLN0_OBJECTS: Final = (("Mod", "ENS"), ("Beh", "ENS"), ("Health", "ENS"), ("NamPlt", "LPL"))
LPHD_OBJECTS: Final = (("PhyNam", "DPL"), ("PhyHealth", "ENS"), ("Proxy", "SPS"))
CTL_MODELS: Final = {
    0: "status-only",
    1: "direct-with-normal-security",
    2: "sbo-with-normal-security",
    3: "direct-with-enhanced-security",
    4: "sbo-with-enhanced-security",
}


def _split_ln(name: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Z]{4})(\d*)", name)
    if match is None:
        raise ValueError(f"not a logical node name: {name}")
    return match.group(1), match.group(2)


def _objects() -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``{(LD, LN): [(DO, DOType id), …]}`` of every LN but LLN0 and LPHD1, in the order the
    server builds them: the table's rows, then the forecast schedule's LNs."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for row in TABLE:
        out.setdefault((row.ld, row.ln), [("Beh", "ENS_T")]).append((row.name, f"{row.cdc}_T"))
    for obj in schedule.OBJECTS:
        out.setdefault((schedule.LD, obj.ln), [("Beh", "ENS_T")]).append((obj.name, obj.type_id))
    return out


def served_structure() -> dict[str, dict[str, list[str]]]:
    """``{LD: {LN: [DO, …]}}`` as the server builds it (LLN0 and LPHD1 in every LD)."""
    out: dict[str, dict[str, list[str]]] = {}
    for (ld, ln), objects in _objects().items():
        lns = out.setdefault(
            ld, {"LLN0": [n for n, _ in LLN0_OBJECTS], "LPHD1": [n for n, _ in LPHD_OBJECTS]}
        )
        lns[ln] = [name for name, _ in objects]
    return out


def _sub(parent: ET.Element, tag: str, **attrs: str) -> ET.Element:
    return ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})


def _templates(root: ET.Element) -> None:
    dtt = _sub(root, "DataTypeTemplates")
    _ln_types(dtt)
    _do_types(dtt)
    _da_types(dtt)


def _ln_types(dtt: ET.Element) -> None:
    ln_types: dict[str, list[tuple[str, str]]] = {
        "LLN0_T": [(name, f"{cdc}_T") for name, cdc in LLN0_OBJECTS],
        "LPHD_T": [(name, f"{cdc}_T") for name, cdc in LPHD_OBJECTS],
    }
    for (ld, ln), objects in _objects().items():
        ln_types[f"{ln}_{ld}_T"] = objects
    for type_id, objects in ln_types.items():
        ln_class = {"LLN0_T": "LLN0", "LPHD_T": "LPHD"}.get(type_id) or type_id[:4]
        node = _sub(dtt, "LNodeType", id=type_id, lnClass=ln_class)
        for name, do_type in objects:
            _sub(node, "DO", name=name, type=do_type)


def _do_types(dtt: ET.Element) -> None:
    mv = _sub(dtt, "DOType", id="MV_T", cdc="MV")
    _sub(mv, "DA", name="mag", bType="Struct", type="AnalogueValue_T", fc="MX", dchg="true")
    _sub(mv, "DA", name="q", bType="Quality", fc="MX", qchg="true")
    _sub(mv, "DA", name="t", bType="Timestamp", fc="MX")
    _sub(mv, "DA", name="units", bType="Struct", type="Unit_T", fc="CF")
    for cdc in ("ENS", "SPS", "SPC"):
        dot = _sub(dtt, "DOType", id=f"{cdc}_T", cdc=cdc)
        btype = "INT32" if cdc == "ENS" else "BOOLEAN"
        if cdc == "SPC":
            _sub(dot, "DA", name="Oper", bType="Struct", type="SPCOperate_T", fc="CO")
            _sub(dot, "DA", name="SBOw", bType="Struct", type="SPCOperate_T", fc="CO")
        _sub(dot, "DA", name="stVal", bType=btype, fc="ST", dchg="true")
        _sub(dot, "DA", name="q", bType="Quality", fc="ST", qchg="true")
        _sub(dot, "DA", name="t", bType="Timestamp", fc="ST")
        if cdc == "SPC":
            _sub(dot, "DA", name="ctlModel", bType="Enum", type="ctlModel", fc="CF")
    apc = _sub(dtt, "DOType", id="APC_T", cdc="APC")
    _sub(apc, "DA", name="Oper", bType="Struct", type="APCOperate_T", fc="CO")
    _sub(apc, "DA", name="mxVal", bType="Struct", type="AnalogueValue_T", fc="MX", dchg="true")
    _sub(apc, "DA", name="q", bType="Quality", fc="MX", qchg="true")
    _sub(apc, "DA", name="t", bType="Timestamp", fc="MX")
    _sub(apc, "DA", name="ctlModel", bType="Enum", type="ctlModel", fc="CF")
    _sub(apc, "DA", name="units", bType="Struct", type="Unit_T", fc="CF")
    bcr = _sub(dtt, "DOType", id="BCR_T", cdc="BCR")
    _sub(bcr, "DA", name="actVal", bType="INT64", fc="ST", dchg="true")
    _sub(bcr, "DA", name="q", bType="Quality", fc="ST", qchg="true")
    _sub(bcr, "DA", name="t", bType="Timestamp", fc="ST")
    for cdc in ("LPL", "DPL"):
        dot = _sub(dtt, "DOType", id=f"{cdc}_T", cdc=cdc)
        _sub(dot, "DA", name="vendor", bType="VisString255", fc="DC")
    _schedule_do_types(dtt)


def _status(dot: ET.Element, btype: str) -> None:
    """``stVal`` of ``btype``, ``q`` and ``t`` (FC ST)."""
    _sub(dot, "DA", name="stVal", bType=btype, fc="ST", dchg="true")
    _sub(dot, "DA", name="q", bType="Quality", fc="ST", qchg="true")
    _sub(dot, "DA", name="t", bType="Timestamp", fc="ST")


def _schedule_do_types(dtt: ET.Element) -> None:
    """The DOTypes of the forecast schedule (IEC 61850-90-10 FSCH, FSCC) not declared above."""
    plate = _sub(dtt, "DOType", id="LPLRev_T", cdc="LPL")
    _sub(plate, "DA", name="vendor", bType="VisString255", fc="DC")
    _sub(plate, "DA", name="swRev", bType="VisString255", fc="DC")
    _sub(plate, "DA", name="paramRev", bType="INT32", fc="ST", dchg="true")
    _status(_sub(dtt, "DOType", id="INS_T", cdc="INS"), "INT32")
    _status(_sub(dtt, "DOType", id="TSS_T", cdc="TSS"), "Timestamp")
    _status(_sub(dtt, "DOType", id="ORS_T", cdc="ORS"), "ObjRef")
    for type_id, units in (("ING_T", False), ("INGUnit_T", True)):
        ing = _sub(dtt, "DOType", id=type_id, cdc="ING")
        _sub(ing, "DA", name="setVal", bType="INT32", fc="SP", dchg="true")
        if units:
            _sub(ing, "DA", name="units", bType="Struct", type="Unit_T", fc="CF")
    asg = _sub(dtt, "DOType", id="ASG_T", cdc="ASG")
    _sub(asg, "DA", name="setMag", bType="Struct", type="AnalogueValue_T", fc="SP", dchg="true")
    _sub(asg, "DA", name="units", bType="Struct", type="Unit_T", fc="CF")
    tsg = _sub(dtt, "DOType", id="TSG_T", cdc="TSG")
    _sub(tsg, "DA", name="setTm", bType="Timestamp", fc="SP", dchg="true")
    spg = _sub(dtt, "DOType", id="SPG_T", cdc="SPG")
    _sub(spg, "DA", name="setVal", bType="BOOLEAN", fc="SP", dchg="true")
    org = _sub(dtt, "DOType", id="ORG_T", cdc="ORG")
    _sub(org, "DA", name="setSrcRef", bType="ObjRef", fc="SP", dchg="true")


def _da_types(dtt: ET.Element) -> None:
    av = _sub(dtt, "DAType", id="AnalogueValue_T")
    _sub(av, "BDA", name="f", bType="FLOAT32")
    for type_id, ctl_val in (
        ("SPCOperate_T", ("BOOLEAN", None)),
        ("APCOperate_T", ("Struct", "AnalogueValue_T")),
    ):
        oper = _sub(dtt, "DAType", id=type_id)
        btype, sub_type = ctl_val
        if sub_type is None:
            _sub(oper, "BDA", name="ctlVal", bType=btype)
        else:
            _sub(oper, "BDA", name="ctlVal", bType=btype, type=sub_type)
        _sub(oper, "BDA", name="origin", bType="Struct", type="Originator_T")
        _sub(oper, "BDA", name="ctlNum", bType="INT8U")
        _sub(oper, "BDA", name="T", bType="Timestamp")
        _sub(oper, "BDA", name="Test", bType="BOOLEAN")
        _sub(oper, "BDA", name="Check", bType="Check")
    origin = _sub(dtt, "DAType", id="Originator_T")
    _sub(origin, "BDA", name="orCat", bType="Enum", type="orCategory")
    _sub(origin, "BDA", name="orIdent", bType="Octet64")
    unit = _sub(dtt, "DAType", id="Unit_T")
    _sub(unit, "BDA", name="SIUnit", bType="Enum", type="SIUnit")
    _sub(unit, "BDA", name="multiplier", bType="Enum", type="multiplier")
    si = _sub(dtt, "EnumType", id="SIUnit")
    served = {(row.unit, row.iec_unit.symbol) for row in TABLE}
    served |= {(SIUnit.WATT, "W"), (SIUnit.SECOND, "s")}  # the schedule's entries and SchdIntv
    for code, text in sorted(served):
        _sub(si, "EnumVal", ord=str(code)).text = text
    mult = _sub(dtt, "EnumType", id="multiplier")
    for code in sorted({row.multiplier for row in TABLE}):
        _sub(mult, "EnumVal", ord=str(code)).text = MULTIPLIERS[code]
    models = _sub(dtt, "EnumType", id="ctlModel")
    for code, text in CTL_MODELS.items():
        _sub(models, "EnumVal", ord=str(code)).text = text
    categories = _sub(dtt, "EnumType", id="orCategory")
    for code, text in enumerate(("not-supported", "bay-control", "station-control",
                                 "remote-control", "automatic-bay", "automatic-station",
                                 "automatic-remote", "maintenance", "process")):  # fmt: skip
        _sub(categories, "EnumVal", ord=str(code)).text = text


def icd_xml(
    ied_name: str = "TEMPLATE",
    host: str = "127.0.0.1",
    goose: GooseAddress | None = None,
    goose_times_ms: tuple[int, int] = (4, 1000),
) -> str:
    goose = goose or GooseAddress()
    ET.register_namespace("", SCL_NS)
    root = ET.Element("SCL", {"xmlns": SCL_NS, "version": "2007", "revision": "B", "release": "4"})
    _sub(root, "Header", id="pswd-gateway", nameStructure="IEDName")
    comm = _sub(root, "Communication")
    net = _sub(comm, "SubNetwork", name="StationBus", type="8-MMS")
    cap = _sub(net, "ConnectedAP", iedName=ied_name, apName="AP1")
    _sub(_sub(cap, "Address"), "P", type="IP").text = host
    gse = _sub(cap, "GSE", ldInst=GOOSE_LD, cbName=GOOSE_CB)
    gse_address = _sub(gse, "Address")
    _sub(gse_address, "P", type="MAC-Address").text = goose.mac.upper().replace(":", "-")
    _sub(gse_address, "P", type="APPID").text = f"{goose.app_id:04X}"
    _sub(gse_address, "P", type="VLAN-ID").text = f"{goose.vlan_id:03X}"
    _sub(gse_address, "P", type="VLAN-PRIORITY").text = str(goose.vlan_priority)
    _sub(gse, "MinTime", unit="s", multiplier="m").text = str(goose_times_ms[0])
    _sub(gse, "MaxTime", unit="s", multiplier="m").text = str(goose_times_ms[1])
    ied = _sub(root, "IED", name=ied_name, manufacturer="pswd-gateway", type="PSWD gateway")
    services = _sub(ied, "Services")
    for tag in ("GetDirectory", "GetDataObjectDefinition", "GetDataSetValue", "ReadWrite"):
        _sub(services, tag)
    server = _sub(_sub(ied, "AccessPoint", name="AP1"), "Server")
    _sub(server, "Authentication", none="true", password="true")  # noqa: S106 - an SCL flag
    for ld, lns in served_structure().items():
        device = _sub(server, "LDevice", inst=ld)
        ln0 = _sub(device, "LN0", lnClass="LLN0", inst="", lnType="LLN0_T")
        dataset = _sub(ln0, "DataSet", name=REPORT_DATASET)
        for row in report_rows(ld):
            cls, inst = _split_ln(row.ln)
            _sub(dataset, "FCDA", ldInst=ld, prefix="", lnClass=cls, lnInst=inst,
                 doName=row.name, fc=row.fc)  # fmt: skip
        if ld == GOOSE_LD:
            events = _sub(ln0, "DataSet", name=GOOSE_DATASET)
            for row in goose_rows():
                cls, inst = _split_ln(row.ln)
                _sub(events, "FCDA", ldInst=ld, prefix="", lnClass=cls, lnInst=inst,
                     doName=row.name, fc="ST")  # fmt: skip
            _sub(ln0, "GSEControl", name=GOOSE_CB, appID=f"{ld}.{GOOSE_DATASET}",
                 datSet=GOOSE_DATASET, confRev="1", type="GOOSE")  # fmt: skip
        for name, buffered in (("urcbMeas01", "false"), ("brcbMeas01", "true")):
            rc = _sub(ln0, "ReportControl", name=name, rptID=f"{ld}.{name}", datSet=REPORT_DATASET,
                      confRev="1", buffered=buffered, bufTime=str(BUFFER_TIME_MS),
                      intgPd=str(INTEGRITY_PERIOD_MS))  # fmt: skip
            _sub(rc, "TrgOps", dchg="true", qchg="true", period="true", gi="true")
            _sub(rc, "OptFields", seqNum="true", timeStamp="true", dataSet="true",
                 reasonCode="true", dataRef="true", configRef="true")  # fmt: skip
            _sub(rc, "RptEnabled", max="1")
        _sub(device, "LN", prefix="", lnClass="LPHD", inst="1", lnType="LPHD_T")
        for ln in lns:
            if ln in {"LLN0", "LPHD1"}:
                continue
            cls, inst = _split_ln(ln)
            _sub(device, "LN", prefix="", lnClass=cls, inst=inst, lnType=f"{ln}_{ld}_T")
    _templates(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_icd(path: Path) -> None:
    path.write_text(icd_xml(), encoding="utf-8")


def icd_structure(text: str) -> dict[str, dict[str, list[str]]]:
    """``{LD: {LN: [DO, …]}}`` read back from an ICD (for the comparison test)."""
    root = ET.fromstring(text)  # noqa: S314 - our own checked-in file
    ns = {"scl": SCL_NS}
    types = {
        t.get("id"): [d.get("name", "") for d in t.findall("scl:DO", ns)]
        for t in root.iterfind(".//scl:LNodeType", ns)
    }
    out: dict[str, dict[str, list[str]]] = {}
    for device in root.iterfind(".//scl:LDevice", ns):
        lns: dict[str, list[str]] = {}
        for ln in [*device.findall("scl:LN0", ns), *device.findall("scl:LN", ns)]:
            name = f"{ln.get('prefix', '')}{ln.get('lnClass')}{ln.get('inst', '')}"
            lns[name] = types[ln.get("lnType")]
        out[device.get("inst", "")] = lns
    return out
