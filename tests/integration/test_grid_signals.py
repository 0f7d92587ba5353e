"""One grid signal, from every door: HTTP, OPC UA and IEC 61850 make the same object.

A whole gateway with its HTTP API, OPC UA server and MMS process on free loopback ports; a real
asyncua client and libiec61850's client (its own process, ``mms_client.py``). The same import
limit through each door gives the same settings in force and the same plan; a contradictory
pair resolves as docs/grid.md says; bad input through each door is refused and changes
nothing; and a gateway killed with SIGKILL still honours an open window after its restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyiec61850.pyiec61850 as m
import pytest
from asyncua import Client, ua
from test_iec61850 import client as mms_client
from test_opcua import USERS, client_certificate, secure_client

from pswd_gateway.bench.api import free_port, gateway_config_text, start_gateway_process
from pswd_gateway.config import DEMO_TOKEN_SHA256, GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.security.certs import init_opcua_certs, trust_opcua_client
from pswd_gateway.security.passwords import hash_password

pytestmark = pytest.mark.integration

SITE_LIMIT_MW = 400.0
OPERATOR = {"Authorization": "Bearer pswd-demo-operator"}
VIEWER = {"Authorization": "Bearer pswd-demo-viewer"}
SUBMITTER = {"Authorization": "Bearer pswd-demo-submitter"}


@dataclass
class Site:
    """The fields :func:`secure_client` reads, and the gateway's other doors."""

    gw: Gateway
    url: str
    certs: Path
    client_cert: Path
    client_key: Path
    api: str
    mms_port: int
    mms_pids: list[int]

    async def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api, timeout=10.0)


def _config(tmp: Path, api: int, opcua: int, mms: int) -> GatewayConfig:
    tokens = [
        {"name": f"demo-{role}", "role": role, "sha256": digest}
        for digest, role in DEMO_TOKEN_SHA256.items()
    ]
    users = [
        {"name": n, "role": r, "password_hash": hash_password(f"pw-{n}", iterations=1000)}
        for n, r in USERS.items()
    ]
    return GatewayConfig.model_validate({
        "listeners": {
            "metrics": {"enabled": False, "port": 0},
            "api": {"host": "127.0.0.1", "port": api},
            "opcua": {"host": "127.0.0.1", "port": opcua},
            "iec61850": {"host": "127.0.0.1", "port": mms},
        },
        "api": {"tokens": tokens},
        "site": {"grid_meter": "meter", "bess": "bess", "thermal": None,
                 "grid_import_limit_mw": SITE_LIMIT_MW},
        "storage": {"state_dir": str(tmp / "state"), "journal_synchronous": "normal"},
        "opcua": {"certs_dir": str(tmp / "certs"), "users": users, "publish_interval_ms": 50},
        "iec61850": {
            "update_interval_ms": 50,
            "users": [{"name": "tso", "role": "operator",
                       "password_hash": hash_password("tso-secret", iterations=1000)},
                      {"name": "analyst", "role": "viewer",
                       "password_hash": hash_password("analyst-secret", iterations=1000)}],
        },
    })  # fmt: skip


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    certs = tmp_path / "certs"
    init_opcua_certs(certs, ["127.0.0.1", "localhost"])
    cert, key = client_certificate(tmp_path, "scada")
    trust_opcua_client(certs, cert)
    api, opcua, mms = free_port(), free_port(), free_port()
    gw = Gateway(_config(tmp_path, api, opcua, mms))
    await gw.start()
    running = Site(
        gw,
        f"opc.tcp://127.0.0.1:{opcua}/pswd",
        certs,
        cert,
        key,
        f"http://127.0.0.1:{api}",
        mms,
        [],
    )
    try:
        assert gw.mms is not None
        assert gw.mms.pid is not None
        running.mms_pids.append(gw.mms.pid)
        yield running
    finally:
        await gw.stop()
        for pid in running.mms_pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"MMS process {pid} outlived the gateway")


async def _pswd(opc: Client) -> tuple[Any, int]:
    idx = await opc.get_namespace_index("urn:pswd:gateway")
    return opc.get_node(ua.NodeId("PSWD", idx)), idx


@dataclass(frozen=True)
class InForce:
    """What the site does with the signals: the same whichever door they came through."""

    site_limit_mw: float
    control_limit_mw: float
    scheduler_limit_mw: float
    plan_limits_mw: tuple[float, ...]
    effective_mw: float | None


async def in_force(site: Site) -> InForce:
    gw = site.gw
    assert gw.control is not None
    assert gw.workloads is not None
    async with await site.http() as http:
        plan = (await http.get("/v1/forecast", headers=VIEWER)).json()
        listed = (await http.get("/v1/grid/signals", headers=VIEWER)).json()
    return InForce(
        gw.settings.current.import_limit_mw,
        gw.control.site.import_limit_mw,
        gw.workloads.scheduler.site.import_limit_mw,
        tuple(sorted({s["import_limit_mw"] for s in plan["slots"]})),
        listed["effective"]["import_limit_mw"],
    )


async def mms_shows(site: Site, reference: str, value: float) -> None:
    """Wait until the MMS process serves ``value`` (it gets the site's settings every
    ``update_interval_ms``)."""
    async with asyncio.timeout(10):
        while True:
            got = await mms_client(site.mms_port, [["float", reference, "MX"]], "tso-secret")
            if got["results"][0][0] == pytest.approx(value):
                return
            await asyncio.sleep(0.05)


async def open_signals(site: Site) -> list[dict[str, Any]]:
    async with await site.http() as http:
        listed = await http.get("/v1/grid/signals", headers=VIEWER)
    assert listed.status_code == 200, listed.text
    signals: list[dict[str, Any]] = listed.json()["open"]
    return signals


async def test_the_same_import_limit_through_every_door_gives_the_same_plan(site: Site) -> None:
    baseline = await in_force(site)
    assert baseline.site_limit_mw == SITE_LIMIT_MW
    assert baseline.effective_mw is None
    seen: dict[str, InForce] = {}

    # HTTP
    async with await site.http() as http:
        sent = await http.post(
            "/v1/grid/signals",
            headers=OPERATOR,
            json={"kind": "import_limit", "import_limit_mw": 250},
        )
        assert sent.status_code == 201, sent.text
        http_signal = sent.json()
        assert sent.headers["Location"] == f"/v1/grid/signals/{http_signal['id']}"
        seen["http"] = await in_force(site)
        gone = await http.delete(f"/v1/grid/signals/{http_signal['id']}", headers=OPERATOR)
        assert gone.status_code == 200, gone.text
        assert gone.json()["withdrawn_by"] == "demo-operator"
    assert await in_force(site) == baseline

    # OPC UA
    async with await secure_client(site, "operator") as opc:  # type: ignore[arg-type]
        pswd, idx = await _pswd(opc)
        await pswd.call_method(f"{idx}:SetGridImportLimit", 250.0)
    seen["opcua"] = await in_force(site)
    (opc_signal,) = await open_signals(site)
    async with await site.http() as http:
        assert (
            await http.delete(f"/v1/grid/signals/{opc_signal['id']}", headers=OPERATOR)
        ).status_code == 200
    assert await in_force(site) == baseline

    # IEC 61850: GAPC1.DRLimW, then (once the MMS process shows it) GAPC1.DRAct on, SBO
    got = await mms_client(
        site.mms_port, [["operate", "PSWDGRID/GAPC1.DRLimW", 250.0]], "tso-secret"
    )
    assert got["results"][0]["ok"], got
    await mms_shows(site, "PSWDGRID/GAPC1.DRLimW.mxVal.f", 250.0)
    got = await mms_client(
        site.mms_port, [["operate", "PSWDGRID/GAPC1.DRAct", True, True]], "tso-secret"
    )
    assert got["results"][0]["ok"], got
    seen["iec61850"] = await in_force(site)
    (mms_signal,) = await open_signals(site)
    release = await mms_client(
        site.mms_port, [["operate", "PSWDGRID/GAPC1.DRAct", False, True]], "tso-secret"
    )
    assert release["results"][0]["ok"], release
    assert await open_signals(site) == []
    assert await in_force(site) == baseline

    assert seen["http"] == seen["opcua"] == seen["iec61850"]
    assert seen["http"].site_limit_mw == 250.0
    assert seen["http"].plan_limits_mw == (250.0,)
    for door, kept, issuer in (
        ("http", http_signal, "demo-operator"),
        ("opcua", opc_signal, "opcua:operator"),
        ("iec61850", mms_signal, "mms:tso"),
    ):
        assert kept["source"] == door
        assert kept["issuer"] == issuer
        assert kept["signal"]["kind"] == "import_limit"
        assert kept["signal"]["import_limit_mw"] == 250.0
        assert kept["signal"]["end"] is None

    # journalled and audited, with the SSE events
    journal = site.gw.journal
    assert journal is not None
    audit = await journal.call(journal.sync.audit_entries, 0, 1000)
    accepted = [a for a in audit if a["action"] == "grid signal accepted"]
    assert [a["detail"]["source"] for a in accepted] == ["http", "opcua", "iec61850"]
    withdrawn = [a for a in audit if a["action"] == "grid signal withdrawn"]
    assert [a["actor"] for a in withdrawn] == ["demo-operator", "demo-operator", "mms:tso"]
    events = await journal.call(journal.sync.events_after, 0, 1000)
    kinds = [
        e.type
        for e in events
        if e.type.startswith("grid_signal.") and e.type != "grid_signal.delivered"
    ]  # a delivery report follows each limit when the sampler next sees it ended
    assert kinds == ["grid_signal.accepted", "grid_signal.withdrawn"] * 3


async def test_a_contradictory_pair_resolves_to_the_strictest_limit(site: Site) -> None:
    now = datetime.now(UTC)
    window = {"start": (now - timedelta(minutes=1)).isoformat(),
              "end": (now + timedelta(hours=1)).isoformat()}  # fmt: skip
    async with await site.http() as http:
        loose = await http.post(
            "/v1/grid/signals",
            headers=OPERATOR,
            json={"kind": "import_limit", "import_limit_mw": 300, **window},
        )
        assert loose.status_code == 201, loose.text
        async with await secure_client(site, "operator") as opc:  # type: ignore[arg-type]
            pswd, idx = await _pswd(opc)
            await pswd.call_method(f"{idx}:SetGridImportLimit", 250.0)
            listed = (await http.get("/v1/grid/signals", headers=VIEWER)).json()
            strict = next(s for s in listed["open"] if s["source"] == "opcua")
            assert listed["effective"]["import_limit_mw"] == 250.0
            assert listed["effective"]["import_limit_by"] == strict["id"]
            assert site.gw.settings.current.import_limit_mw == 250.0
            # a new standing limit over OPC UA replaces the door's earlier one
            await pswd.call_method(f"{idx}:SetGridImportLimit", 350.0)
        listed = (await http.get("/v1/grid/signals", headers=VIEWER)).json()
        assert listed["effective"]["import_limit_mw"] == 300.0
        assert listed["effective"]["import_limit_by"] == loose.json()["id"]
        assert site.gw.settings.current.import_limit_mw == 300.0
        assert sorted(s["source"] for s in listed["open"]) == ["http", "opcua"]
        # a later FFR signal replaces an earlier one; the control cycle takes each curve
        assert site.gw.control is not None
        for enabled, extra in ((True, {"max_mw": 40, "droop_pct": 2.0}), (False, {})):
            r = await http.post(
                "/v1/grid/signals",
                headers=OPERATOR,
                json={"kind": "ffr", "enabled": enabled, **extra},
            )
            assert r.status_code == 201, r.text
            last = r.json()["id"]
            shape = site.gw.control.battery.ffr_shape
            assert shape is not None
            assert shape.enabled is enabled
            if enabled:
                assert (shape.max_w, shape.p_ref_w, shape.droop_pct) == (40e6, 40e6, 2.0)
        listed = (await http.get("/v1/grid/signals", headers=VIEWER)).json()
        assert listed["effective"]["ffr"]["enabled"] is False
        assert last in listed["effective"]["in_force"]


async def test_bad_input_through_each_door_is_refused_and_changes_nothing(site: Site) -> None:
    before = await in_force(site)
    now = datetime.now(UTC)
    async with await site.http() as http:
        for body, pointer in (
            ({"kind": "import_limit", "import_limit_mw": -5}, "#/import_limit_mw"),
            ({"kind": "heat_request", "heat_mw": 20, "supply_temp_c": 95}, "#/supply_temp_c"),
            ({"kind": "shed"}, "#/shed_mw"),
            ({"kind": "brownout"}, "#/kind"),
            ({"kind": "import_limit", "import_limit_mw": 100,
              "end": (now - timedelta(minutes=5)).isoformat()}, "#/end"),
        ):  # fmt: skip
            r = await http.post("/v1/grid/signals", headers=OPERATOR, json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            problem = r.json()
            assert pointer in [e["pointer"] for e in problem["errors"]], problem
        denied = await http.post(
            "/v1/grid/signals",
            headers=SUBMITTER,
            json={"kind": "import_limit", "import_limit_mw": 1},
        )
        assert denied.status_code == 403
        assert (
            await http.delete("/v1/grid/signals/gs_nothing", headers=OPERATOR)
        ).status_code == 404
    async with await secure_client(site, "operator") as opc:  # type: ignore[arg-type]
        pswd, idx = await _pswd(opc)
        with pytest.raises(ua.UaStatusCodeError) as out:
            await pswd.call_method(f"{idx}:SetGridImportLimit", -5.0)
        assert out.value.code == ua.StatusCodes.BadOutOfRange
    async with await secure_client(site, "viewer") as opc:  # type: ignore[arg-type]
        pswd, idx = await _pswd(opc)
        with pytest.raises(ua.UaStatusCodeError) as denied_ua:
            await pswd.call_method(f"{idx}:SetGridImportLimit", 100.0)
        assert denied_ua.value.code == ua.StatusCodes.BadUserAccessDenied
    got = await mms_client(site.mms_port, [
        ["operate", "PSWDGRID/GAPC1.DRLimW", -1.0],
        ["operate", "PSWDGRID/GAPC1.DRAct", True, True],
    ], "tso-secret")  # fmt: skip
    bad_limit, too_early = got["results"]
    assert bad_limit["add_cause"] == m.ADD_CAUSE_INCONSISTENT_PARAMETERS
    assert too_early["add_cause"] == m.ADD_CAUSE_BLOCKED_BY_PROCESS
    viewer = await mms_client(
        site.mms_port, [["operate", "PSWDGRID/GAPC1.DRLimW", 100.0]], "analyst-secret"
    )
    assert viewer["results"][0]["add_cause"] == m.ADD_CAUSE_NO_ACCESS_AUTHORITY
    assert await open_signals(site) == []
    assert await in_force(site) == before


async def test_an_open_window_is_still_honoured_after_sigkill(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_config_text(tmp_path / "state", port))
    url = f"http://127.0.0.1:{port}"
    end = datetime.now(UTC) + timedelta(hours=1)
    proc = await start_gateway_process(config, port)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
            window = {"kind": "import_limit", "import_limit_mw": 180, "end": end.isoformat()}
            kept = await http.post("/v1/grid/signals", headers=OPERATOR, json=window)
            assert kept.status_code == 201, kept.text
            dropped = await http.post("/v1/grid/signals", headers=OPERATOR, json={
                "kind": "import_limit", "import_limit_mw": 90})  # fmt: skip
            gone = await http.delete(f"/v1/grid/signals/{dropped.json()['id']}", headers=OPERATOR)
            assert gone.status_code == 200
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    proc = await start_gateway_process(config, port)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
            listed = (await http.get("/v1/grid/signals", headers=VIEWER)).json()
            assert [s["id"] for s in listed["open"]] == [kept.json()["id"]]
            assert listed["effective"]["import_limit_mw"] == 180.0
            assert listed["effective"]["site_import_limit_mw"] == 180.0
            plan = (await http.get("/v1/forecast", headers=VIEWER)).json()
            assert plan["slots"][0]["import_limit_mw"] == 180.0
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
