"""Every kind of grid signal through the OPC UA door: ``PSWD.SubmitGridSignal`` and
``PSWD.WithdrawGridSignal``, and the heat requests on ``PSWD.HeatOffer``.

One gateway for the module (HTTP API and OPC UA on free loopback ports, no MMS), a real asyncua
client over Basic256Sha256 and a real HTTP client. What a test opens it withdraws; the fixture
``nothing_left_open`` checks that each test leaves no signal open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asyncua import Client, Node, ua
from test_heat_offer import api_and_opcua
from test_opcua import Site, secure_client

from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.identity import SYSTEM
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.northbound.opcua.methods import MAX_SIGNAL_JSON_BYTES

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

FFR = {"kind": "ffr", "enabled": True, "max_mw": 40, "droop_pct": 2.0, "deadband_hz": 0.02}
OPERATOR = {"Authorization": "Bearer pswd-demo-operator"}
VIEWER = {"Authorization": "Bearer pswd-demo-viewer"}


@dataclass
class Running:
    gw: Gateway
    api_url: str
    opcua: Site

    @property
    def signals(self) -> GridSignalService:
        assert self.gw.grid_signals is not None
        return self.gw.grid_signals

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api_url, timeout=10.0)

    async def audit(self, action: str) -> list[dict[str, Any]]:
        journal = self.gw.journal
        assert journal is not None
        entries = await journal.call(journal.sync.audit_entries, 0, 10_000)
        return [a for a in entries if a["action"] == action]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    tmp: Path = tmp_path_factory.mktemp("opcua-grid-signals")
    async with api_and_opcua(tmp) as (gw, url, site):
        yield Running(gw, url, site)


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def nothing_left_open(running: Running) -> AsyncIterator[None]:
    assert running.signals.open_signals() == []
    yield
    left = running.signals.open_signals()
    for signal in left:  # the next test starts clean even when this one failed
        await running.signals.withdraw(signal.id, SYSTEM)
    assert left == [], "a test left grid signals open"


async def _pswd(client: Client) -> tuple[Node, int]:
    idx = await client.get_namespace_index("urn:pswd:gateway")
    return client.get_node(ua.NodeId("PSWD", idx)), idx


async def _refused(pswd: Node, method: str, *args: Any) -> int:
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await pswd.call_method(method, *args)
    code: int = refused.value.code
    return code


async def test_ffr_over_opcua_is_in_force_as_the_same_json_over_http(running: Running) -> None:
    """The same FFR body through ``SubmitGridSignal`` and ``POST /v1/grid/signals`` gives the
    same effective response, the same curve in the control cycle and the same listing; the
    OPC UA one is kept as source ``opcua`` from ``opcua:operator`` and withdrawn over OPC UA."""
    assert running.gw.control is not None
    seen: dict[str, tuple[Any, ...]] = {}
    async with await secure_client(running.opcua, "operator") as opc:
        pswd, idx = await _pswd(opc)
        sid = await pswd.call_method(f"{idx}:SubmitGridSignal", json.dumps(FFR))
        assert isinstance(sid, str)
        assert sid.startswith("gs_")
        (kept,) = running.signals.open_signals()
        assert (kept.id, kept.source.value, kept.issuer) == (sid, "opcua", "opcua:operator")
        async with running.http() as http:
            listed = (await http.get("/v1/grid/signals", headers=VIEWER)).json()
        effective = running.signals.effective()
        seen["opcua"] = (effective.ffr, running.gw.control.battery.ffr_shape, listed["effective"])
        assert effective.ffr_by == sid
        await pswd.call_method(f"{idx}:WithdrawGridSignal", sid)
        assert running.signals.open_signals() == []
        assert running.signals.effective().ffr is None
    async with running.http() as http:
        sent = await http.post("/v1/grid/signals", headers=OPERATOR, json=FFR)
        assert sent.status_code == 201, sent.text
        listed = (await http.get("/v1/grid/signals", headers=VIEWER)).json()
        effective = running.signals.effective()
        seen["http"] = (effective.ffr, running.gw.control.battery.ffr_shape, listed["effective"])
        gone = await http.delete(f"/v1/grid/signals/{sent.json()['id']}", headers=OPERATOR)
        assert gone.status_code == 200, gone.text

    ffr, shape, shown = seen["opcua"]
    http_ffr, http_shape, http_shown = seen["http"]
    assert ffr is not None
    assert http_ffr is not None
    assert ffr.enabled
    assert (ffr.max_mw, ffr.droop_pct, ffr.deadband_hz) == (40.0, 2.0, 0.02)
    # the same but for its start, each signal's reception
    assert ffr.model_copy(update={"start": None}) == http_ffr.model_copy(update={"start": None})
    assert shape is not None
    assert (shape.enabled, shape.max_w, shape.droop_pct) == (True, 40e6, 2.0)
    assert http_shape == shape

    def same(effective: dict[str, Any]) -> dict[str, Any]:
        """What must not depend on the door: not the time asked, the ids, the start."""
        out = {k: v for k, v in effective.items() if k not in {"at", "in_force"}}
        return out | {"ffr": {k: v for k, v in out["ffr"].items() if k != "start"}}

    assert same(shown) == same(http_shown)
    assert same(shown)["ffr"] == FFR | {"end": None, "ramp_mw_per_s": 10.0}
    accepted = await running.audit("grid signal accepted")
    assert [a["detail"]["source"] for a in accepted[-2:]] == ["opcua", "http"]
    assert accepted[-2]["actor"] == "opcua:operator"
    withdrawn = await running.audit("grid signal withdrawn")
    assert withdrawn[-2]["target"] == sid
    assert withdrawn[-2]["actor"] == "opcua:operator"


async def _read_until(node: Node, wanted: Callable[[Any], bool], timeout_s: float = 5.0) -> Any:
    """The node's value once ``wanted(value)`` holds (the publish loop writes it)."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = await node.read_value()
            if wanted(value):
                return value
            await asyncio.sleep(0.05)


async def test_a_heat_request_over_opcua_shows_on_the_heat_offer_until_withdrawn(
    running: Running,
) -> None:
    """A heat request sent with ``SubmitGridSignal``: inside its window ``RequestedHeatProfile``
    carries its MW (in W) and ``SupplyTemperatureProfile`` its °C, outside 0 and
    ``heat.supply_temp_c``; ``SupplyTemperature`` is the running slot's. The same figures as
    ``GET /v1/heat/offer``. Withdrawn, the offer is back to no request at once."""
    end = datetime.now(UTC) + timedelta(hours=1)
    request = {"kind": "heat_request", "heat_mw": 12.5, "supply_temp_c": 85, "end": end.isoformat()}
    async with await secure_client(running.opcua, "operator") as opc:
        pswd, idx = await _pswd(opc)
        offer = await pswd.get_child(f"{idx}:HeatOffer")
        requested = await offer.get_child(f"{idx}:RequestedHeatProfile")
        supply_profile = await offer.get_child(f"{idx}:SupplyTemperatureProfile")
        supply = await offer.get_child(f"{idx}:SupplyTemperature")
        starts = await offer.get_child(f"{idx}:SlotStarts")
        for node in (requested, supply_profile):
            assert await node.read_value_rank() == ua.ValueRank.OneDimension
            assert await node.read_array_dimensions() == [576]
        eu = await (await requested.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "W"
        eu = await (await supply_profile.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "°C"
        span = await (await supply_profile.get_child("0:EURange")).read_value()
        assert (span.Low, span.High) == (70.0, 90.0)
        await _read_until(requested, lambda v: len(v) == 576 and not any(v))

        sid = await pswd.call_method(f"{idx}:SubmitGridSignal", json.dumps(request))
        await _read_until(requested, any)
        while True:  # the four of one offer (not across a slot boundary)
            slot_starts = [s.replace(tzinfo=UTC) for s in await starts.read_value()]
            asked = await requested.read_value()
            temps = await supply_profile.read_value()
            first_supply = await supply.read_value()
            if slot_starts == [s.replace(tzinfo=UTC) for s in await starts.read_value()]:
                break
        async with running.http() as http:
            served = (await http.get("/v1/heat/offer", headers=VIEWER)).json()["slots"]

        await pswd.call_method(f"{idx}:WithdrawGridSignal", sid)
        await _read_until(requested, lambda v: not any(v))
        assert set(await supply_profile.read_value()) == {75.0}
        assert await supply.read_value() == 75.0

    inside = [i for i, s in enumerate(slot_starts) if s < end]
    assert inside == list(range(len(inside)))
    assert 12 <= len(inside) <= 13  # an hour from now, in 5-minute slots
    assert [asked[i] for i in inside] == [12.5e6] * len(inside)
    assert [temps[i] for i in inside] == [85.0] * len(inside)
    assert not any(asked[len(inside) :])
    assert set(temps[len(inside) :]) == {75.0}
    assert first_supply == 85.0
    by_start = {datetime.fromisoformat(s["start"]): s for s in served}
    common = [i for i, s in enumerate(slot_starts) if s in by_start]
    assert len(common) >= 570  # the same 5-minute grid (one slot apart at most)
    for i in common:
        slot = by_start[slot_starts[i]]
        assert (asked[i], temps[i]) == (slot["requested_mw"] * 1e6, slot["supply_c"])


async def test_a_viewer_is_refused_and_the_refusal_is_audited(running: Running) -> None:
    """``operate`` is needed to send or withdraw: a viewer gets BadUserAccessDenied for both,
    each refusal is audited under its method, and nothing is kept."""
    before = len(await running.audit("grid signal accepted"))
    async with await secure_client(running.opcua, "operator") as opc:
        pswd, idx = await _pswd(opc)
        sid = await pswd.call_method(f"{idx}:SubmitGridSignal", json.dumps(FFR))
    async with await secure_client(running.opcua, "viewer") as opc:
        pswd, idx = await _pswd(opc)
        submit = await _refused(pswd, f"{idx}:SubmitGridSignal", json.dumps(FFR))
        withdraw = await _refused(pswd, f"{idx}:WithdrawGridSignal", sid)
    assert submit == withdraw == ua.StatusCodes.BadUserAccessDenied
    assert [s.id for s in running.signals.open_signals()] == [sid]
    assert len(await running.audit("grid signal accepted")) == before + 1
    for method in ("SubmitGridSignal", "WithdrawGridSignal"):
        lines = await running.audit(f"opcua {method}")
        (line,) = [a for a in lines if a["actor"] == "opcua:viewer"]
        assert (line["role"], line["outcome"]) == ("viewer", "refused")
        assert line["detail"]["reason"] == "BadUserAccessDenied"
    await running.signals.withdraw(sid, SYSTEM)


async def test_bad_signals_are_refused_with_their_status_and_change_nothing(
    running: Running,
) -> None:
    """Not JSON, an unknown kind, a field out of range, a window already ended, a body above
    64 KiB, not a String, an unknown id to withdraw: each its status code (docs/opcua.md), no
    signal open, nothing accepted in the audit, the effective constraints unchanged."""
    ended = datetime.now(UTC) - timedelta(minutes=5)
    late = json.dumps({"kind": "import_limit", "import_limit_mw": 100, "end": ended.isoformat()})
    too_hot = json.dumps({"kind": "heat_request", "heat_mw": 20, "supply_temp_c": 95})
    oversize = json.dumps(FFR).ljust(MAX_SIGNAL_JSON_BYTES + 1)  # valid JSON, one byte too long
    number = ua.Variant(250.0, ua.VariantType.Double)
    cases = [
        ("SubmitGridSignal", ["{not json"], ua.StatusCodes.BadInvalidArgument),
        ("SubmitGridSignal", ['{"kind": "brownout"}'], ua.StatusCodes.BadInvalidArgument),
        ("SubmitGridSignal", ['{"kind": "shed"}'], ua.StatusCodes.BadInvalidArgument),
        ("SubmitGridSignal", [too_hot], ua.StatusCodes.BadInvalidArgument),
        ("SubmitGridSignal", [late], ua.StatusCodes.BadInvalidArgument),
        ("SubmitGridSignal", [oversize], ua.StatusCodes.BadOutOfRange),
        ("SubmitGridSignal", [number], ua.StatusCodes.BadTypeMismatch),
        ("SubmitGridSignal", [], ua.StatusCodes.BadArgumentsMissing),
        ("WithdrawGridSignal", ["gs_0000000000000000"], ua.StatusCodes.BadNotFound),
    ]  # fmt: skip
    before = (len(await running.audit("grid signal accepted")), running.signals.effective())
    async with await secure_client(running.opcua, "operator") as opc:
        pswd, idx = await _pswd(opc)
        got = [
            (method, ua.StatusCode(await _refused(pswd, f"{idx}:{method}", *args)).name)
            for method, args, _ in cases
        ]
        assert got == [(method, ua.StatusCode(code).name) for method, _, code in cases]
        assert running.signals.open_signals() == []
        assert (len(await running.audit("grid signal accepted")), running.signals.effective()) == (
            before
        )
        # the bound is on the text before it is parsed: at the bound the same signal is taken
        at_bound = json.dumps(FFR).ljust(MAX_SIGNAL_JSON_BYTES)
        sid = await pswd.call_method(f"{idx}:SubmitGridSignal", at_bound)
        await pswd.call_method(f"{idx}:WithdrawGridSignal", sid)
        withdrawn_again = await _refused(pswd, f"{idx}:WithdrawGridSignal", sid)
    assert withdrawn_again == ua.StatusCodes.BadNotFound
    refused = await running.audit("opcua SubmitGridSignal")
    assert len([a for a in refused if a["actor"] == "opcua:operator"]) == len(cases) - 1
