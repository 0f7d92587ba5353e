"""Fast frequency response switched on and shaped over IEC 61850 (``GAPC2``), against a whole
gateway (the ``site`` of test_grid_signals: HTTP API, OPC UA, the MMS process) and libiec61850's
own client in its own process.

The same curve through HTTP and through MMS operates puts the same response in force and gives
the control cycle the same curve; a changed curve value replaces the door's signal; ``FFRAct``
off withdraws it; the switch without a maximum, a droop out of range and a viewer are refused,
audited, and change nothing; and after a restart the standing signal switches ``FFRAct`` on
again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyiec61850.pyiec61850 as m
import pytest
import test_grid_signals
from test_grid_signals import OPERATOR, Site, mms_shows, open_signals
from test_iec61850 import client as mms_client

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.grid_signals import FastFrequencyResponse, SignalSource
from pswd_gateway.domain.identity import Identity
from pswd_gateway.grid_signals import FFR_KEY, GridSignalService
from pswd_gateway.journal import AsyncJournal
from pswd_gateway.site_settings import SiteSettings

pytestmark = pytest.mark.integration

site = test_grid_signals.site
"""The whole gateway, as test_grid_signals runs it (a fixture: pytest finds it by this name)."""

TSO = "tso-secret"
CURVE = {"max_mw": 40.0, "deadband_hz": 0.02, "droop_pct": 2.5, "ramp_mw_per_s": 5.0}
"""One curve, in the grid signal's fields; 0.02 Hz is no FLOAT32 (it crosses MMS as the nearest
one) and must arrive as 0.02 all the same."""
OPERATE_CURVE = [
    ["operate", "PSWDGRID/GAPC2.FFRMaxW", 40.0],
    ["operate", "PSWDGRID/GAPC2.FFRDbHz", 0.02],
    ["operate", "PSWDGRID/GAPC2.FFRDroop", 2.5],
    ["operate", "PSWDGRID/GAPC2.FFRRmpW", 5.0],
]
SWITCH = "PSWDGRID/GAPC2.FFRAct"


async def until(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``check``: an operate is answered before it is carried out (enhanced security
    sends CommandTermination once it is)."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


async def switch_shows(site: Site, on: bool) -> None:
    """Wait until the MMS process serves ``FFRAct.stVal`` = ``on``."""
    async with asyncio.timeout(10):
        while True:
            got = await mms_client(site.mms_port, [["bool", f"{SWITCH}.stVal", "ST"]], TSO)
            if got["results"][0] == [on, 0]:
                return
            await asyncio.sleep(0.05)


async def operate_curve(site: Site) -> None:
    """The four curve values, then (the switch is judged on the maximum the MMS process has)
    until the MMS process serves them."""
    got = await mms_client(site.mms_port, OPERATE_CURVE, TSO)
    assert all(r["ok"] for r in got["results"]), got
    await mms_shows(site, "PSWDGRID/GAPC2.FFRMaxW.mxVal.f", 40.0)
    await mms_shows(site, "PSWDGRID/GAPC2.FFRRmpW.mxVal.f", 5.0)


async def switch(site: Site, on: bool) -> dict[str, Any]:
    got = await mms_client(site.mms_port, [["operate", SWITCH, on, True]], TSO)
    result: dict[str, Any] = got["results"][0]
    return result


def signals(site: Site) -> GridSignalService:
    assert site.gw.grid_signals is not None
    return site.gw.grid_signals


def in_force(site: Site) -> FastFrequencyResponse | None:
    return signals(site).effective().ffr


def curve(ffr: FastFrequencyResponse | None) -> dict[str, Any] | None:
    """The response without its window (its start is its reception)."""
    return None if ffr is None else ffr.model_dump(exclude={"start", "end"})


async def audit(site: Site) -> list[dict[str, Any]]:
    journal = site.gw.journal
    assert journal is not None
    entries: list[dict[str, Any]] = await journal.call(journal.sync.audit_entries, 0, 1000)
    return entries


async def test_the_same_ffr_curve_over_http_and_over_mms_puts_the_same_response_in_force(
    site: Site,
) -> None:
    gw = site.gw
    assert gw.control is not None
    assert in_force(site) is None

    async with await site.http() as http:
        sent = await http.post(
            "/v1/grid/signals", headers=OPERATOR, json={"kind": "ffr", "enabled": True, **CURVE}
        )
        assert sent.status_code == 201, sent.text
        by_http, shape_by_http = in_force(site), gw.control.battery.ffr_shape
        gone = await http.delete(f"/v1/grid/signals/{sent.json()['id']}", headers=OPERATOR)
        assert gone.status_code == 200, gone.text
    assert in_force(site) is None
    assert gw.control.battery.ffr_shape is None  # back to [control.ffr]

    await operate_curve(site)
    assert await open_signals(site) == []  # a curve alone asks nothing of the site
    assert in_force(site) is None
    on = await switch(site, on=True)
    assert (on["ctl_model"], on["selected"], on["ok"]) == (4, True, True), on
    await until("the response in force", lambda: in_force(site) is not None)

    assert curve(in_force(site)) == curve(by_http) == {"kind": "ffr", "enabled": True, **CURVE}
    assert gw.control.battery.ffr_shape == shape_by_http
    assert shape_by_http is not None
    assert (shape_by_http.max_w, shape_by_http.deadband_hz) == (40e6, 0.02)
    (kept,) = await open_signals(site)
    assert (kept["source"], kept["issuer"], kept["key"]) == ("iec61850", "mms:tso", FFR_KEY)
    assert kept["signal"]["end"] is None
    await switch_shows(site, on=True)

    # a curve value operated while it is on replaces the door's signal
    got = await mms_client(site.mms_port, [["operate", "PSWDGRID/GAPC2.FFRDroop", 3.0]], TSO)
    assert got["results"][0]["ok"], got
    await until("the new droop", lambda: getattr(in_force(site), "droop_pct", None) == 3.0)
    (replaced,) = await open_signals(site)
    assert replaced["id"] != kept["id"]
    assert replaced["signal"] == {**kept["signal"], "droop_pct": 3.0,
                                  "start": replaced["signal"]["start"]}  # fmt: skip
    assert gw.control.battery.ffr_shape is not None
    assert gw.control.battery.ffr_shape.droop_pct == 3.0
    accepted = [a for a in await audit(site) if a["action"] == "grid signal accepted"]
    assert [a["detail"]["source"] for a in accepted] == ["http", "iec61850", "iec61850"]
    assert accepted[-1]["detail"]["withdraws"] == [kept["id"]]


async def test_ffract_off_withdraws_the_doors_signal_and_what_other_doors_asked_is_in_force_again(
    site: Site,
) -> None:
    """Off withdraws the signal ``FFRAct`` made, as ``DRAct`` off does, not every response:
    an FFR signal another door sent earlier is the latest in force again."""
    gw = site.gw
    assert gw.control is not None
    async with await site.http() as http:
        earlier = await http.post(
            "/v1/grid/signals", headers=OPERATOR,
            json={"kind": "ffr", "enabled": True, "max_mw": 10.0},
        )  # fmt: skip
        assert earlier.status_code == 201, earlier.text
    await operate_curve(site)
    assert (await switch(site, on=True))["ok"]
    await until("the door's response", lambda: getattr(in_force(site), "max_mw", None) == 40.0)

    off = await switch(site, on=False)
    assert off["ok"], off
    await until("the earlier response", lambda: getattr(in_force(site), "max_mw", None) == 10.0)
    assert [s["id"] for s in await open_signals(site)] == [earlier.json()["id"]]
    assert gw.control.battery.ffr_shape is not None
    assert gw.control.battery.ffr_shape.max_w == 10e6
    await switch_shows(site, on=False)
    withdrawn = [a for a in await audit(site) if a["action"] == "grid signal withdrawn"]
    assert [a["actor"] for a in withdrawn] == ["mms:tso"]

    async with await site.http() as http:  # and with no other door's, none is in force
        gone = await http.delete(f"/v1/grid/signals/{earlier.json()['id']}", headers=OPERATOR)
        assert gone.status_code == 200, gone.text
    assert in_force(site) is None
    assert gw.control.battery.ffr_shape is None


async def test_a_switch_without_maximum_a_droop_out_of_range_and_a_viewer_are_refused(
    site: Site,
) -> None:
    """Each refusal answers its AddCause, is audited, and changes nothing: no signal, no
    setting, nothing served."""
    before = site.gw.settings.current
    too_early = await switch(site, on=True)
    assert not too_early["selected"]
    assert too_early["add_cause"] == m.ADD_CAUSE_BLOCKED_BY_PROCESS
    got = await mms_client(site.mms_port, [
        ["operate", "PSWDGRID/GAPC2.FFRDroop", 25.0],
        ["operate", "PSWDGRID/GAPC2.FFRDbHz", -0.01],
    ], TSO)  # fmt: skip
    droop, deadband = got["results"]
    assert (droop["ok"], droop["add_cause"]) == (False, m.ADD_CAUSE_INCONSISTENT_PARAMETERS)
    assert (deadband["ok"], deadband["add_cause"]) == (False, m.ADD_CAUSE_INCONSISTENT_PARAMETERS)
    viewer = await mms_client(site.mms_port, [
        ["operate", "PSWDGRID/GAPC2.FFRMaxW", 40.0],
        ["operate", SWITCH, True, True],
    ], "analyst-secret")  # fmt: skip
    max_w, on = viewer["results"]
    assert (max_w["ok"], max_w["add_cause"]) == (False, m.ADD_CAUSE_NO_ACCESS_AUTHORITY)
    assert (on["selected"], on["add_cause"]) == (False, m.ADD_CAUSE_NO_ACCESS_AUTHORITY)

    async def refusals() -> list[tuple[str, str, str]]:
        return [
            (a["actor"], a["action"], a["detail"]["reason"])
            for a in await audit(site)
            if a["outcome"] == "refused" and "GAPC2" in a["action"]
        ]

    async with asyncio.timeout(10):  # the MMS process sends its refusals up as it decides them
        while len(await refusals()) < 5:
            await asyncio.sleep(0.05)
    refused = await refusals()
    assert [(actor, action) for actor, action, _ in refused] == [
        ("mms:tso", "select GRID/GAPC2.FFRAct"),
        ("mms:tso", "operate GRID/GAPC2.FFRDroop"),
        ("mms:tso", "operate GRID/GAPC2.FFRDbHz"),
        ("mms:analyst", "operate GRID/GAPC2.FFRMaxW"),
        ("mms:analyst", "select GRID/GAPC2.FFRAct"),
    ]
    assert "operate GAPC2.FFRMaxW first" in refused[0][2]
    assert "25 is out of range (0, 20]" in refused[1][2]
    assert "may not operate" in refused[3][2]

    assert site.gw.settings.current == before
    assert await open_signals(site) == []
    assert in_force(site) is None
    served = await mms_client(site.mms_port, [
        ["float", "PSWDGRID/GAPC2.FFRDroop.mxVal.f", "MX"],
        ["float", "PSWDGRID/GAPC2.FFRMaxW.mxVal.f", "MX"],
        ["bool", f"{SWITCH}.stVal", "ST"],
    ], TSO)  # fmt: skip
    assert served["results"] == [[4.0, 0], [0.0, 0], [False, 0]]  # the defaults, nothing set


async def test_after_a_restart_the_standing_signal_switches_ffract_on_again(
    tmp_path: Path,
) -> None:
    """The door's state is the signal's: a new gateway on the same journal serves ``FFRAct``
    on with the curve in force (the MMS model reads these settings), and off without one."""
    tso = Identity("mms:tso", "operator")
    journal = AsyncJournal.open(tmp_path / "pswd.db", "normal")
    try:
        first = GridSignalService(journal, SiteSettings(SiteConfig()))
        await first.start()
        door = first.door(SignalSource.IEC61850)
        for what, value in (("ffr_max_mw", 40.0), ("ffr_droop_pct", 2.5), ("ffr_active", True)):
            await door(what, value, tso)
        standing = first.effective().ffr
        await first.stop()

        again = GridSignalService(journal, SiteSettings(SiteConfig()))
        await again.start()
        try:
            assert again.settings.current.ffr == FastFrequencyResponse(
                enabled=True, max_mw=40.0, droop_pct=2.5
            )
            assert curve(again.effective().ffr) == curve(standing)
            await again.door(SignalSource.IEC61850)("ffr_active", False, tso)  # noqa: FBT003
            assert again.effective().ffr is None
        finally:
            await again.stop()

        # a file that says on, without a standing signal, is not what is in force: off
        file_says_on = SiteConfig(ffr_active=True, ffr_max_mw=40.0)
        third = GridSignalService(journal, SiteSettings(file_says_on))
        await third.start()
        try:
            assert not third.settings.current.ffr_active
        finally:
            await third.stop()
    finally:
        await journal.close()
