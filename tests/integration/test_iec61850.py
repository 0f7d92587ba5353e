"""IEC 61850: libiec61850's own client against the gateway's MMS server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pyiec61850.pyiec61850 as m
import pytest

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import Iec61850UserConfig, SiteConfig
from pswd_gateway.domain.identity import Identity
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.northbound.iec61850.model import GooseAddress
from pswd_gateway.northbound.iec61850.server import MmsHooks, MmsServer
from pswd_gateway.security.passwords import hash_password
from pswd_gateway.security.zones import Access, Conduit, Gatekeeper, Policy, Refusals, Zone
from pswd_gateway.store import PointStore

pytestmark = pytest.mark.integration

SITE = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())
CLIENT = Path(__file__).with_name("mms_client.py")
USERS = (
    Iec61850UserConfig(name="tso", role="operator",
                       password_hash=hash_password("tso-secret", iterations=1000)),
    Iec61850UserConfig(name="analyst", role="viewer",
                       password_hash=hash_password("analyst-secret", iterations=1000)),
)  # fmt: skip


class Site:
    """The gateway's side of a control: the site settings and the audit trail."""

    def __init__(self) -> None:
        self.site = SITE
        self.audit: list[tuple[str, str, str, str]] = []

    async def operate(self, action: str, value: float | bool, caller: Identity) -> None:
        self.audit.append((caller.name, action, str(value), "accepted"))
        self.site = self.site.model_copy(update={action: value})

    async def refused(self, caller: Identity, action: str, why: str) -> None:
        self.audit.append((caller.name, action, why, "refused"))


@pytest.fixture
async def mms() -> AsyncIterator[tuple[MmsServer, PointStore, int]]:
    store = PointStore()
    port = free_port()
    server = MmsServer(store, lambda: SITE, port=port, interval_s=0.05, anonymous_read=True)
    await server.start()
    try:
        yield server, store, port
    finally:
        await server.stop()


READS: Final = frozenset({"float", "int", "int64", "bool", "quality", "utc_ms", "dataset"})
CONNECTION_LOST: Final = 3
"""IED_ERROR_CONNECTION_LOST."""


async def client(port: int, commands: list[list[Any]], password: str = "") -> dict[str, Any]:
    """Run libiec61850's client in its own process (see mms_client.py).

    A list of reads is run again (up to twice) when the association is lost right after it was
    made and every read fails with CONNECTION_LOST: on a loaded machine the client library
    closes its first association in a fresh process now and then before sending a request (the
    server answered the association and then read the client's end; see
    ``pswd_gateway.bench.soak._probe_mms``), and a read changes nothing. Controls are run
    again only when the client could not even create a control object (nothing was sent).
    """
    result = await _client_once(port, commands, password)
    for _ in range(2):
        if not (_reads_lost(commands, result) or _controls_never_sent(result)):
            break
        result = await _client_once(port, commands, password)
    return result


def _controls_never_sent(result: dict[str, Any]) -> bool:
    """The client could not read a control's model on an association the server dropped, so
    nothing reached any control: trying again cannot operate anything twice."""
    outcomes = [r for r in result["results"] if isinstance(r, dict)]
    return any(r.get("error") == "control object not created" for r in outcomes) and not any(
        r.get("ok") or r.get("selected") for r in outcomes
    )


def _reads_lost(commands: list[list[Any]], result: dict[str, Any]) -> bool:
    return (
        bool(commands)
        and result["connect"] == 0
        and all(c[0] in READS for c in commands)
        and all(r[1] == CONNECTION_LOST for r in result["results"])
    )


async def _client_once(port: int, commands: list[list[Any]], password: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), str(port), password, json.dumps(commands),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30.0)
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


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


async def test_measurements_match_the_store_in_their_units(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    server, store, port = mms
    feed(store, 123.5e6)
    await asyncio.sleep(0.3)
    got = await client(port, [
        ["float", "PSWDGRID/MMXU1.TotW.mag.f", "MX"],
        ["float", "PSWDBESS/ZBAT1.SoC.mag.f", "MX"],
        ["int", "PSWDGRID/MMXU1.TotW.units.SIUnit", "CF"],
        ["int", "PSWDGRID/MMXU1.TotW.units.multiplier", "CF"],
        ["float", "PSWDGRID/GAPC1.ImpLimW.mxVal.f", "MX"],
        ["int", "PSWDBESS/ZBAT1.SoC.units.SIUnit", "CF"],
        ["int", "PSWDBESS/ZBAT1.SoC.units.multiplier", "CF"],
        ["int", "PSWDGRID/GAPC1.RmpLimW.units.SIUnit", "CF"],
    ])  # fmt: skip
    assert got["connect"] == 0
    results = got["results"]
    assert [err for _, err in results] == [0] * len(results)
    mw, soc, unit, mult, limit, soc_unit, soc_mult, ramp_unit = (v for v, _ in results)
    assert mw == pytest.approx(123.5)  # MW: unit W (62), multiplier M (6)
    assert (unit, mult) == (62, 6)
    assert soc == pytest.approx(42.0)  # the ratio 0.42 in percent: dimensionless (1), c (-2)
    assert (soc_unit, soc_mult) == (1, -2)
    assert ramp_unit == 81  # W/s
    assert limit == pytest.approx(SITE.grid_import_limit_mw)
    assert server.stats.updates_total >= 3


async def test_an_invalid_device_is_served_with_invalid_quality(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    _, store, port = mms
    feed(store, 50e6)
    await asyncio.sleep(0.2)
    feed(store, 50e6, Quality.INVALID)
    await asyncio.sleep(0.3)
    got = await client(port, [["quality", "PSWDGRID/MMXU1.TotW.q", "MX"]])
    quality, err = got["results"][0]
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


async def test_the_served_model_equals_the_checked_in_icd(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    from pswd_gateway.northbound.iec61850.icd import icd_structure  # noqa: PLC0415

    _, _, port = mms
    got = await client(port, [["browse", "PSWD"]])
    served, extras = got["results"][0]["model"], set(got["results"][0]["extras"])
    icd = icd_structure((Path(__file__).parents[2] / "docs" / "pswd-gateway.icd").read_text())
    as_sets = {ld: {ln: sorted(dos) for ln, dos in lns.items()} for ld, lns in served.items()}
    expected = {ld: {ln: sorted(dos) for ln, dos in lns.items()} for ld, lns in icd.items()}
    assert as_sets == expected, "run `pswd-gateway iec61850 icd` and commit docs/pswd-gateway.icd"
    for ld in icd:
        assert {f"{ld}/LLN0.urcbMeas01", f"{ld}/LLN0.brcbMeas01", f"{ld}/LLN0.Meas"} <= extras


def goose_pair(store: PointStore, port: int) -> tuple[MmsServer, Any, list[Any]]:
    """A GOOSE-publishing server on ``lo`` and a subscriber to its ``gcbEvents``, with an APPID
    of this process's own: other gateways may publish the same control block on ``lo`` (a demo,
    a test run next to this one), and the subscriber hears only ours. The subscriber records
    each frame's (arrival, stNum, sqNum, dataset entries)."""
    from pyiec61850.goose.subscriber import GooseSubscriber  # noqa: PLC0415

    app_id = 0x2000 + os.getpid() % 0x1000
    server = MmsServer(
        store, lambda: SITE, port=port, interval_s=0.05, goose_interface="lo",
        goose_times_ms=(4, 1000), goose_address=GooseAddress(app_id=app_id), anonymous_read=True,
    )  # fmt: skip
    frames: list[tuple[float, int, int, int]] = []
    subscriber = GooseSubscriber("lo", "PSWDGRID/LLN0$GO$gcbEvents")
    subscriber.set_app_id(app_id)
    subscriber.set_listener(
        lambda msg: frames.append(
            (time.monotonic(), msg.st_num, msg.sq_num, msg.num_data_set_entries)
        )
    )
    return server, subscriber, frames


async def stop_goose(server: MmsServer, subscriber: Any) -> None:
    """The publisher first, then the subscriber: GooseReceiver_stop joins its receiver thread
    while holding the interpreter lock, so a frame arriving meanwhile deadlocks in the Python
    callback (seen under load)."""
    await server.stop()
    await asyncio.sleep(0.1)  # a frame already in flight reaches its callback
    subscriber.stop()


@pytest.mark.needs_root
async def test_goose_frames_on_lo_count_state_and_retransmit() -> None:
    store = PointStore()
    feed(store, 10e6)
    server, sub, frames = goose_pair(store, free_port())
    await server.start()
    try:
        sub.start()
        await asyncio.sleep(1.5)
        t_event = time.monotonic()
        feed(store, 10e6, Quality.INVALID)  # the meter goes: Ind2 falls
        await asyncio.sleep(1.5)
    finally:
        await stop_goose(server, sub)
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


@pytest.fixture
async def controlled() -> AsyncIterator[tuple[MmsServer, Site, int]]:
    """A server with users and controls wired to a :class:`Site`; no anonymous access."""
    holder = Site()
    store = PointStore()
    feed(store, 10e6)
    port = free_port()
    hooks = MmsHooks(operate=holder.operate, refused=holder.refused)
    server = MmsServer(
        store, lambda: holder.site, port=port, interval_s=0.05, users=USERS,
        anonymous_read=False, hooks=hooks, max_connections=2,
    )  # fmt: skip
    await server.start()
    try:
        yield server, holder, port
    finally:
        await server.stop()


async def test_an_operator_sets_the_import_limit_and_it_is_audited_and_read_back(
    controlled: tuple[MmsServer, Site, int],
) -> None:
    server, site, port = controlled
    got = await client(port, [["operate", "PSWDGRID/GAPC1.ImpLimW", 250.0]], "tso-secret")
    assert got["connect"] == 0
    result = got["results"][0]
    assert result["ctl_model"] == 3  # direct with enhanced security
    assert result["ok"], result
    assert site.site.grid_import_limit_mw == pytest.approx(250.0)
    assert ("mms:tso", "grid_import_limit_mw", "250.0", "accepted") in site.audit
    await asyncio.sleep(0.2)
    back = await client(port, [["float", "PSWDGRID/GAPC1.ImpLimW.mxVal.f", "MX"]], "tso-secret")
    assert back["results"][0] == [pytest.approx(250.0), 0]
    assert server.stats.controls_accepted_total == 1


@pytest.mark.parametrize(
    ("reference", "value"),
    [
        ("PSWDGRID/GAPC1.ImpLimW", -5.0),
        ("PSWDGRID/GAPC1.ImpLimW", 0.0),
        ("PSWDGRID/GAPC1.RmpLimW", 1e9),
        ("PSWDGRID/GAPC1.DRLimW", -1.0),
    ],
)
async def test_an_out_of_range_setpoint_is_refused_with_inconsistent_parameters(
    controlled: tuple[MmsServer, Site, int], reference: str, value: float
) -> None:
    _, site, port = controlled
    got = await client(port, [["operate", reference, value]], "tso-secret")
    result = got["results"][0]
    assert not result["ok"]
    assert result["add_cause"] == m.ADD_CAUSE_INCONSISTENT_PARAMETERS
    assert site.site == SITE  # nothing changed
    assert any(r[3] == "refused" and "out of range" in r[2] for r in site.audit), site.audit


async def test_a_viewer_may_read_but_not_operate(
    controlled: tuple[MmsServer, Site, int],
) -> None:
    _, site, port = controlled
    got = await client(port, [
        ["float", "PSWDGRID/MMXU1.TotW.mag.f", "MX"],
        ["operate", "PSWDGRID/GAPC1.RmpLimW", 5.0],
        ["operate", "PSWDGRID/GAPC1.DRAct", True, True],
    ], "analyst-secret")  # fmt: skip
    read, ramp, dr = got["results"]
    assert read == [pytest.approx(10.0), 0]
    assert not ramp["ok"]
    assert ramp["add_cause"] == m.ADD_CAUSE_NO_ACCESS_AUTHORITY
    assert not dr["selected"]  # refused at select already
    assert dr["add_cause"] == m.ADD_CAUSE_NO_ACCESS_AUTHORITY
    assert site.site == SITE
    refusals = [r for r in site.audit if r[3] == "refused"]
    assert [r[1] for r in refusals] == ["operate GRID/GAPC1.RmpLimW", "select GRID/GAPC1.DRAct"]
    assert all(r[0] == "mms:analyst" and "may not operate" in r[2] for r in refusals)


async def test_demand_response_is_selected_then_operated_and_lowers_the_import_limit(
    controlled: tuple[MmsServer, Site, int],
) -> None:
    _, site, port = controlled
    too_early = await client(port, [["operate", "PSWDGRID/GAPC1.DRAct", True, True]], "tso-secret")
    assert too_early["results"][0]["add_cause"] == m.ADD_CAUSE_BLOCKED_BY_PROCESS
    got = await client(port, [
        ["operate", "PSWDGRID/GAPC1.DRLimW", 120.0],
        ["operate", "PSWDGRID/GAPC1.DRAct", True, True],
    ], "tso-secret")  # fmt: skip
    limit, activate = got["results"]
    assert limit["ok"], limit
    assert activate["ctl_model"] == 4  # SBO with enhanced security
    assert activate["selected"], activate
    assert activate["ok"], activate
    assert site.site.demand_response_active
    assert site.site.import_limit_mw == pytest.approx(120.0)
    await asyncio.sleep(0.2)
    back = await client(port, [["bool", "PSWDGRID/GAPC1.DRAct.stVal", "ST"]], "tso-secret")
    assert back["results"][0] == [True, 0]
    release = await client(port, [["operate", "PSWDGRID/GAPC1.DRAct", False, True]], "tso-secret")
    assert release["results"][0]["ok"]
    assert site.site.import_limit_mw == pytest.approx(SITE.grid_import_limit_mw)


async def test_associations_without_the_right_password_are_refused_and_audited(
    controlled: tuple[MmsServer, Site, int],
) -> None:
    server, site, port = controlled
    wrong = await client(port, [], "guess")
    anonymous = await client(port, [])
    assert wrong["connect"] != 0
    assert anonymous["connect"] != 0
    await asyncio.sleep(0.1)
    assert ("unknown", "mms association", "wrong password", "refused") in site.audit
    assert any(r[0] == "anonymous" and r[3] == "refused" for r in site.audit)
    assert server.stats.associations_refused_total == 2


async def test_connections_beyond_the_limit_are_refused(
    controlled: tuple[MmsServer, Site, int],
) -> None:
    _, _, port = controlled  # max_connections=2
    got = await client(port, [["connect_again", port], ["connect_again", port]], "tso-secret")
    assert got["connect"] == 0
    second, third = got["results"]
    assert second == 0
    assert third != 0


def _policy(networks: str, access: Access = "operate") -> Policy:
    zone = Zone("scada", "scada", (ipaddress.ip_network(networks),))
    return Policy({"scada": zone}, (Conduit("grid-operator", "scada", "iec61850", access),))


async def test_a_peer_outside_every_conduit_is_disconnected_counted_and_audited() -> None:
    holder = Site()
    audited: list[tuple[str, str, str, int]] = []
    gate = Gatekeeper(_policy("192.0.2.0/24"), Refusals(audit=lambda *a: audited.append(a)))
    port = free_port()
    server = MmsServer(
        PointStore(), lambda: holder.site, port=port, anonymous_read=True,
        door=gate.door("iec61850"),
        hooks=MmsHooks(operate=holder.operate, refused=holder.refused),
    )  # fmt: skip
    await server.start()
    try:
        got = await client(port, [])
        await asyncio.sleep(0.1)
    finally:
        await server.stop()
    assert got["connect"] != 0
    assert server.stats.connections_refused_total >= 1
    assert gate.refusals.total["iec61850", "not_in_conduit"] >= 1
    assert audited[0][:2] == ("iec61850", "127.0.0.1")
    assert "no zone with a conduit to listeners.iec61850" in audited[0][2]


async def test_an_operator_through_a_read_conduit_may_read_but_not_operate() -> None:
    """The conduit's access is a ceiling over the user's role: the TSO's operator account
    coming through a read-only conduit is refused, and the refusal names the conduit."""
    holder = Site()
    store = PointStore()
    feed(store, 10e6)
    port = free_port()
    server = MmsServer(
        store, lambda: holder.site, port=port, interval_s=0.05, users=USERS,
        door=Gatekeeper(_policy("127.0.0.1/32", "read")).door("iec61850"),
        hooks=MmsHooks(operate=holder.operate, refused=holder.refused),
    )  # fmt: skip
    await server.start()
    try:
        got = await client(port, [
            ["float", "PSWDGRID/MMXU1.TotW.mag.f", "MX"],
            ["operate", "PSWDGRID/GAPC1.ImpLimW", 250.0],
        ], "tso-secret")  # fmt: skip
    finally:
        await server.stop()
    read, operate = got["results"]
    assert read == [pytest.approx(10.0), 0]
    assert not operate["ok"]
    assert operate["add_cause"] == m.ADD_CAUSE_NO_ACCESS_AUTHORITY
    assert holder.site == SITE
    refusals = [r for r in holder.audit if r[3] == "refused"]
    assert refusals
    assert "conduit 'grid-operator' from zone 'scada' does not allow 'operate'" in refusals[0][2]


async def test_a_guard_trip_sets_ind4_with_its_time_until_the_guard_rearms(tmp_path: Path) -> None:
    """The whole gateway: a control-guard trip turns `GGIO1.Ind4` on, stamped with the trip's
    time and reported in `Meas`; the re-arm turns it off with the re-arm's time."""
    from guard_events import rearm, trip  # noqa: PLC0415 - the same directory

    from pswd_gateway.config import GatewayConfig  # noqa: PLC0415
    from pswd_gateway.daemon import Gateway  # noqa: PLC0415

    port = free_port()
    gw = Gateway(GatewayConfig.model_validate({
        "listeners": {
            "metrics": {"enabled": False, "port": 0},
            "api": {"enabled": False, "port": 0},
            "iec61850": {"host": "127.0.0.1", "port": port},
        },
        "site": {"grid_meter": "meter", "bess": "bess", "thermal": None},
        "storage": {"state_dir": str(tmp_path), "journal_synchronous": "normal"},
        "iec61850": {"anonymous_read": True, "update_interval_ms": 50},
    }))  # fmt: skip
    ind4 = [["bool", "PSWDGRID/GGIO1.Ind4.stVal", "ST"], ["utc_ms", "PSWDGRID/GGIO1.Ind4.t", "ST"],
            ["quality", "PSWDGRID/GGIO1.Ind4.q", "ST"]]  # fmt: skip
    await gw.start()
    try:
        await asyncio.sleep(0.2)
        before = await client(port, [*ind4, ["dataset", "PSWDGRID/LLN0.Meas"]])
        tripped = trip(gw, at=time.time() - 2.0)
        await asyncio.sleep(0.2)
        during = await client(port, ind4)
        rearmed = rearm(gw)
        await asyncio.sleep(0.2)
        after = await client(port, ind4)
    finally:
        await gw.stop()
    (off, _, _, (members, err)) = before["results"]
    assert off == [False, 0], before
    assert err == 0
    assert "PSWDGRID/GGIO1.Ind4[ST]" in members  # reported with the other indications
    on, on_at, quality = during["results"]
    assert on == [True, 0]
    assert on_at[0] == pytest.approx(tripped.at * 1000, abs=1)
    assert quality[0] & 0x3 == m.QUALITY_VALIDITY_GOOD
    cleared, cleared_at, _ = after["results"]
    assert cleared == [False, 0]
    assert cleared_at[0] == pytest.approx(rearmed.at * 1000, abs=1)


@pytest.mark.needs_root
async def test_a_guard_trip_is_a_new_goose_state_of_the_events_dataset() -> None:
    """`GGIO1.Ind4` is a member of `Events`: a trip and its re-arm each publish a new stNum."""
    from pswd_gateway.control.guard import GuardEvent, GuardReason  # noqa: PLC0415
    from pswd_gateway.northbound.iec61850.model import goose_rows  # noqa: PLC0415

    store = PointStore()
    feed(store, 10e6)
    port = free_port()
    server, sub, frames = goose_pair(store, port)
    await server.start()
    try:
        sub.start()
        members = await client(port, [["dataset", "PSWDGRID/LLN0.Events"]])
        await asyncio.sleep(1.2)
        t_trip = time.monotonic()
        trip = GuardEvent(time.time(), tripped=True, reason=GuardReason.GRID_OFF_PLAN, detail="t")
        server.control_guard(trip)
        await asyncio.sleep(0.5)
        t_rearm = time.monotonic()
        server.control_guard(GuardEvent(time.time(), tripped=False, reason=None, detail="re-arm"))
        await asyncio.sleep(0.5)
    finally:
        await stop_goose(server, sub)
    assert "PSWDGRID/GGIO1.Ind4[ST]" in members["results"][0][0]
    states = [{f[1] for f in frames if lo <= f[0] < hi}
              for lo, hi in ((0, t_trip), (t_trip, t_rearm), (t_rearm, 1e12))]  # fmt: skip
    assert states[0]
    assert max(states[1]) == max(states[0]) + 1, frames  # the trip: a new state
    assert max(states[2]) == max(states[1]) + 1, frames  # the re-arm: another
    assert {f[3] for f in frames} == {len(goose_rows())}


async def test_services_the_gateway_does_not_offer_are_refused(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    """File transfer and client-defined data sets are switched off: libiec61850 does not parse
    them (its 1.6.1 has a use-after-free with client data sets and report control blocks)."""
    _, _, port = mms
    got = await client(port, [["services"]])
    assert got["connect"] == 0
    answer = got["results"][0]
    # offered, they answer 0 (created) and OBJECT_DOES_NOT_EXIST (no such file); not offered,
    # the server rejects the service itself
    assert answer["create_dataset"] != 0
    assert answer["file_directory"] not in {0, m.IED_ERROR_OBJECT_DOES_NOT_EXIST}


async def test_a_points_reason_reaches_the_mms_process_and_is_served_as_detail_qual() -> None:
    """The MMS server in its own process (as the gateway runs it): a reading out of its range is
    served questionable with detailQual outOfRange, one the device says it does not have invalid
    with detailQual failure, in the first frame and in the changes after it; libiec61850's client
    reads ``q``."""
    from pswd_gateway.domain.points import NOT_AVAILABLE, OUT_OF_RANGE  # noqa: PLC0415
    from pswd_gateway.northbound.iec61850.link import MmsSettings  # noqa: PLC0415
    from pswd_gateway.northbound.iec61850.process import MmsProcess  # noqa: PLC0415

    store = PointStore()
    now = time.time()
    store.update([
        Point("meter.active_power", 9.9e12, "W", Quality.QUESTIONABLE, now, now, OUT_OF_RANGE),
        Point("meter.frequency", 50.01, "Hz", Quality.GOOD, now, now),
        Point("bess.soc", 0.42, "1", Quality.GOOD, now, now),
    ])  # fmt: skip
    port = free_port()
    settings = MmsSettings(port=port, anonymous_read=True, interval_s=0.05)
    mms = MmsProcess(store, lambda: SITE, settings)
    reads = [["quality", "PSWDGRID/MMXU1.TotW.q", "MX"], ["quality", "PSWDBESS/ZBAT1.SoC.q", "MX"],
             ["quality", "PSWDGRID/MMXU1.Hz.q", "MX"]]  # fmt: skip
    await mms.start()
    try:
        await asyncio.sleep(0.3)
        first = await client(port, reads)
        later = time.time()
        store.update([Point("bess.soc", 0.0, "1", Quality.INVALID, later, later, NOT_AVAILABLE)])
        await asyncio.sleep(0.3)
        second = await client(port, reads)
    finally:
        await mms.stop()
    out_of_range = m.QUALITY_VALIDITY_QUESTIONABLE | m.QUALITY_DETAIL_OUT_OF_RANGE
    failure = m.QUALITY_VALIDITY_INVALID | m.QUALITY_DETAIL_FAILURE
    assert first["results"] == [[out_of_range, 0], [m.QUALITY_VALIDITY_GOOD, 0],
                                [m.QUALITY_VALIDITY_GOOD, 0]]  # fmt: skip
    assert second["results"] == [[out_of_range, 0], [failure, 0], [m.QUALITY_VALIDITY_GOOD, 0]]
