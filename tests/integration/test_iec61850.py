"""IEC 61850: libiec61850's own client against the gateway's MMS server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator

import pytest

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.northbound.iec61850.server import MmsServer
from pswd_gateway.store import PointStore

pytestmark = pytest.mark.integration

m = pytest.importorskip("pyiec61850.pyiec61850")
SITE = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())


@pytest.fixture
async def mms() -> AsyncIterator[tuple[MmsServer, PointStore, int]]:
    store = PointStore()
    port = free_port()
    server = MmsServer(store, lambda: SITE, port=port, interval_s=0.05)
    await server.start()
    try:
        yield server, store, port
    finally:
        await server.stop()


def feed(store: PointStore, grid_w: float, quality: Quality = Quality.GOOD) -> float:
    now = time.time()
    store.update(
        [
            Point("meter.active_power", grid_w, "W", quality, now, now),
            Point("meter.frequency", 50.01, "Hz", Quality.GOOD, now, now),
            Point("bess.soc", 0.42, "1", Quality.GOOD, now, now),
        ]
    )
    return now


def read(port: int, reference: str, fc: int) -> tuple[object, int]:
    con = m.IedConnection_create()
    try:
        _, err = m.IedConnection_connect(con, "127.0.0.1", port)
        assert err == 0, f"connect failed: {err}"
        if fc == m.IEC61850_FC_MX and reference.endswith(".f"):
            return m.IedConnection_readFloatValue(con, reference, fc)
        return m.IedConnection_readQualityValue(con, reference, fc)
    finally:
        m.IedConnection_close(con)
        m.IedConnection_destroy(con)


async def test_measurements_match_the_store_in_their_units(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    server, store, port = mms
    feed(store, 123.5e6)
    await asyncio.sleep(0.3)
    value, err = await asyncio.to_thread(read, port, "PSWDGRID/MMXU1.TotW.mag.f", m.IEC61850_FC_MX)
    assert err == 0
    assert value == pytest.approx(123.5)  # MW: unit W, multiplier M
    soc, err = await asyncio.to_thread(read, port, "PSWDBESS/ZBAT1.SoC.mag.f", m.IEC61850_FC_MX)
    assert err == 0
    assert soc == pytest.approx(42.0)
    assert server.stats.updates_total >= 3


async def test_an_invalid_device_is_served_with_invalid_quality(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    _, store, port = mms
    feed(store, 50e6)
    await asyncio.sleep(0.2)
    feed(store, 50e6, Quality.INVALID)
    await asyncio.sleep(0.3)
    quality, err = await asyncio.to_thread(read, port, "PSWDGRID/MMXU1.TotW.q", m.IEC61850_FC_MX)
    assert err == 0
    assert quality & 0x3 == m.QUALITY_VALIDITY_INVALID


REPORT_CLIENT = """
import json, os, sys, time
import pyiec61850.pyiec61850 as m
from pyiec61850.mms.reporting import _PyRCBHandler
port, ref, rpt_id, seconds = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
reports = []
con = m.IedConnection_create()
_, err = m.IedConnection_connect(con, "127.0.0.1", port)
assert err == 0, err
handler = _PyRCBHandler(reports.append, ref)
subscriber = m.RCBSubscriber()
subscriber.setIedConnection(con)
subscriber.setRcbReference(ref)
subscriber.setRcbRptId(rpt_id)
subscriber.setEventHandler(handler)
assert subscriber.subscribe()
rcb = m.ClientReportControlBlock_create(ref)
_, err = m.IedConnection_getRCBValues(con, ref, rcb)
assert err == 0, err
m.ClientReportControlBlock_setIntgPd(rcb, 500)
m.ClientReportControlBlock_setRptEna(rcb, True)
_, err = m.IedConnection_setRCBValues(con, rcb, m.RCB_ELEMENT_INTG_PD | m.RCB_ELEMENT_RPT_ENA, True)
assert err == 0, err
print("subscribed", flush=True)
time.sleep(seconds)
m.ClientReportControlBlock_setRptEna(rcb, False)
m.IedConnection_setRCBValues(con, rcb, m.RCB_ELEMENT_RPT_ENA, True)
m.IedConnection_close(con)
reasons = sorted({e.reason_code for r in reports for e in r.entries})
print(json.dumps({"reports": len(reports), "reasons": reasons}), flush=True)
os._exit(0)  # the C++ subscriber outlives its handler at interpreter exit: skip destructors
"""


async def test_reports_arrive_on_data_change_and_integrity_period(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    """libiec61850's client in its own process (its report subscriber is C++ with a Python
    handler; the process ends without running their destructors)."""
    _, store, port = mms
    feed(store, 10e6)
    await asyncio.sleep(0.2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REPORT_CLIENT, str(port), "PSWDGRID/LLN0.RP.urcbMeas01",
        "GRID.urcbMeas01", "1.8",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
    assert line.strip() == b"subscribed", line
    await asyncio.sleep(0.3)
    feed(store, 20e6)  # a data change; then at least two integrity periods
    out, err = await asyncio.wait_for(proc.communicate(), 10.0)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["reports"] >= 3, result
    assert m.IEC61850_REASON_DATA_CHANGE in result["reasons"], result
    assert m.IEC61850_REASON_INTEGRITY in result["reasons"], result


def _names(linked_list: object) -> list[str]:
    out = []
    element = m.LinkedList_getNext(linked_list) if linked_list else None
    while element:
        out.append(m.toCharP(m.LinkedList_getData(element)))
        element = m.LinkedList_getNext(element)
    return out


def browse(port: int, ied: str) -> tuple[dict[str, dict[str, list[str]]], set[str]]:
    """The served model through directory services: ``{LD: {LN: [DO]}}`` and RCB/dataset names."""
    con = m.IedConnection_create()
    try:
        _, err = m.IedConnection_connect(con, "127.0.0.1", port)
        assert err == 0
        devices, err = m.IedConnection_getLogicalDeviceList(con)
        assert err == 0
        model: dict[str, dict[str, list[str]]] = {}
        extras: set[str] = set()
        for ld in _names(devices):
            lns, _ = m.IedConnection_getLogicalDeviceDirectory(con, ld)
            inst = ld.removeprefix(ied)
            model[inst] = {}
            for ln in _names(lns):
                ref = f"{ld}/{ln}"
                dos, _ = m.IedConnection_getLogicalNodeDirectory(con, ref, m.ACSI_CLASS_DATA_OBJECT)
                model[inst][ln] = _names(dos)
                for cls in ("ACSI_CLASS_URCB", "ACSI_CLASS_BRCB", "ACSI_CLASS_DATA_SET"):
                    found, _ = m.IedConnection_getLogicalNodeDirectory(con, ref, getattr(m, cls))
                    extras.update(f"{inst}/{ln}.{n}" for n in _names(found))
        return model, extras
    finally:
        m.IedConnection_close(con)
        m.IedConnection_destroy(con)


async def test_the_served_model_equals_the_checked_in_icd(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    from pathlib import Path  # noqa: PLC0415

    from pswd_gateway.northbound.iec61850.icd import icd_structure  # noqa: PLC0415

    _, _, port = mms
    served, extras = await asyncio.to_thread(browse, port, "PSWD")
    icd = icd_structure((Path(__file__).parents[2] / "docs" / "pswd-gateway.icd").read_text())
    as_sets = {ld: {ln: sorted(dos) for ln, dos in lns.items()} for ld, lns in served.items()}
    expected = {ld: {ln: sorted(dos) for ln, dos in lns.items()} for ld, lns in icd.items()}
    assert as_sets == expected, "run `pswd-gateway iec61850 icd` and commit docs/pswd-gateway.icd"
    for ld in icd:
        assert {f"{ld}/LLN0.urcbMeas01", f"{ld}/LLN0.brcbMeas01", f"{ld}/LLN0.Meas"} <= extras


@pytest.mark.skipif(os.geteuid() != 0, reason="GOOSE on lo needs raw sockets (root)")
async def test_goose_frames_on_lo_count_state_and_retransmit() -> None:
    from pyiec61850.goose.subscriber import GooseSubscriber  # noqa: PLC0415

    store = PointStore()
    port = free_port()
    feed(store, 10e6)
    server = MmsServer(
        store, lambda: SITE, port=port, interval_s=0.05, goose_interface="lo",
        goose_times_ms=(4, 1000),
    )  # fmt: skip
    frames: list[tuple[float, int, int]] = []
    sub = GooseSubscriber("lo", "PSWDGRID/LLN0$GO$gcbEvents")
    sub.set_listener(lambda msg: frames.append((time.monotonic(), msg.st_num, msg.sq_num)))
    await server.start()
    try:
        sub.start()
        await asyncio.sleep(1.5)
        t_event = time.monotonic()
        feed(store, 10e6, Quality.INVALID)  # the meter goes: Ind2 falls
        await asyncio.sleep(1.5)
    finally:
        sub.stop()
        await server.stop()
    before = [f for f in frames if f[0] < t_event]
    after = [f for f in frames if f[0] >= t_event]
    assert before
    assert after
    st_before = before[-1][1]
    changed = [f for f in after if f[1] == st_before + 1]
    assert changed, frames
    assert [f[2] for f in changed[:4]] == [0, 1, 2, 3]  # sqNum restarts at the new state
    first_gap = changed[1][0] - changed[0][0]
    assert first_gap < 0.05  # retransmitted at MinTime, not after MaxTime
