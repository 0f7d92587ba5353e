"""The OpenADR 3 VEN against the simulated VTN, both on free loopback ports.

A real grid-signal service over a real SQLite journal: an event comes in by webhook (or by
polling alone) and is an import limit in force with its window, journalled and audited as the
VTN's; an update replaces it, a deletion withdraws it; hostile notifications are refused with
an RFC 9457 problem, audited, and change nothing; the VEN reports usage and forecast, and the
heat offer when it changes; an expired token is replaced. No test depends on how fast anything
is: each waits for what it checks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openadr3.entities.raw import RawReport

from pswd_gateway.config import GatewayConfig, HeatConfig, OpenAdr3Config, SiteConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.grid_signals import (
    GridSignal,
    HeatRequest,
    ImportLimit,
    PriceLevel,
    Shed,
    SignalSource,
)
from pswd_gateway.domain.identity import Identity
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.journal import AsyncJournal
from pswd_gateway.openadr.reports3 import HEAT_OFFER_PAYLOAD, MAX_HEAT_SLOTS, SUPPLY_TEMP_PAYLOAD
from pswd_gateway.openadr.site import VenSite
from pswd_gateway.openadr.ven3 import OpenAdr3Ven, VtnError
from pswd_gateway.scheduling.heat import offer_from_plan, requested_of
from pswd_gateway.scheduling.model import SiteForecast, SiteForecastSlot
from pswd_gateway.security.pki import SiteCa
from pswd_gateway.simulation.vtn3 import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, OpenAdr3Vtn
from pswd_gateway.site_settings import SiteSettings

pytestmark = pytest.mark.integration

VTN_NAME = "test-vtn"
ISSUER = f"vtn:{VTN_NAME}"
MEASURED_MW = 180.5
PLANNED_MW = 150.0
WAIT_S = 15.0

StartVen = Callable[..., Awaitable[OpenAdr3Ven]]


async def until(check: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait for ``check()`` to be true (a generous bound: the test is about the outcome)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.02)


def plan() -> SiteForecast:
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    slots = tuple(
        SiteForecastSlot(
            start=start + timedelta(minutes=5 * i),
            site_load_mw=PLANNED_MW,
            grid_import_mw=PLANNED_MW,
            bess_mw=0.0,
            heat_export_mw=0.0,
            carbon_g_per_kwh=200.0,
            import_limit_mw=400.0,
        )
        for i in range(48)
    )
    return SiteForecast(start=start, slot_s=300, slots=slots, source="test")


@pytest.fixture
async def signals(tmp_path: Path) -> AsyncIterator[GridSignalService]:
    journal = AsyncJournal.open(tmp_path / "pswd.db", "normal")
    service = GridSignalService(journal, SiteSettings(SiteConfig(grid_import_limit_mw=400.0)))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await journal.close()


@pytest.fixture
async def vtn() -> AsyncIterator[OpenAdr3Vtn]:
    server = OpenAdr3Vtn()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def start_ven(signals: GridSignalService, vtn: OpenAdr3Vtn) -> AsyncIterator[StartVen]:
    started: list[OpenAdr3Ven] = []
    forecast = plan()

    async def start(*, heat: HeatConfig | None = None, **overrides: Any) -> OpenAdr3Ven:
        settings: dict[str, Any] = {
            "enabled": True,
            "vtn_url": vtn.url,
            "vtn_name": VTN_NAME,
            "ven_name": "site-ven",
            "program_names": [vtn.program["programName"]],
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "poll_interval_s": 3600.0,
            "report_interval_s": 3600.0,
            "max_notification_bytes": 16_384,
        }
        config = OpenAdr3Config.model_validate({**settings, **overrides})
        offer = None
        if heat is not None:
            offer = VenSite.heat_offer_from(signals, lambda: forecast, lambda: heat)
        site = VenSite(signals, lambda: MEASURED_MW, lambda: forecast, heat_offer=offer)
        ven = OpenAdr3Ven(config, site)
        await ven.start()
        started.append(ven)
        await asyncio.wait_for(ven.connected.wait(), WAIT_S)
        await until(lambda: ven.polls_total >= 1, "the first poll")  # then events are new
        return ven

    try:
        yield start
    finally:
        for ven in started:
            await ven.stop()


def of_event(signals: GridSignalService, event_id: str) -> list[GridSignal]:
    return [s for s in signals.open_signals() if (s.key or "").startswith(f"openadr3:{event_id}:")]


async def audit(signals: GridSignalService) -> list[dict[str, Any]]:
    journal = signals.journal
    return await journal.call(journal.sync.audit_entries, 0, 10_000)


async def test_an_event_by_webhook_is_an_import_limit_in_force_journalled_and_audited(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """The VTN's notification is answered 200 only once the limit is kept and in force."""
    ven = await start_ven()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    event_id = await vtn.issue_limit(250.0, start, timedelta(hours=1), units="KW")

    delivery = vtn.deliveries[-1]
    assert (delivery.status, delivery.operation) == (200, "CREATE")
    (signal,) = of_event(signals, event_id)
    assert delivery.body["signals"] == [signal.id]
    assert signal.key == f"openadr3:{event_id}:0"
    assert (signal.source.value, signal.issuer) == ("openadr3", ISSUER)
    assert isinstance(signal.signal, ImportLimit)
    assert signal.signal.import_limit_mw == 250.0
    assert (signal.start, signal.end) == (start, start + timedelta(hours=1))
    assert signals.effective().import_limit_mw == 250.0
    assert signals.settings.current.grid_signal_limit_mw == 250.0

    kept = await signals.journal.call(signals.journal.sync.recent_grid_signals, 10)
    assert [s.id for s in kept] == [signal.id]
    accepted = [a for a in await audit(signals) if a["action"] == "grid signal accepted"]
    assert [(a["actor"], a["target"], a["detail"]["source"]) for a in accepted] == [
        (ISSUER, signal.id, "openadr3")
    ]
    assert ven.events_received_total == 1
    assert ven.events_refused_total == 0
    assert ven.last_event_s is not None


async def test_an_updated_event_replaces_its_signal_and_a_deleted_one_withdraws_it(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """UPDATE: the same key, the new limit, the old signal withdrawn; DELETE: nothing left."""
    await start_ven()
    start = datetime.now(UTC) - timedelta(minutes=1)
    event_id = await vtn.issue_limit(250.0, start, timedelta(hours=1))
    (first,) = of_event(signals, event_id)

    await vtn.update_limit(event_id, 0.2, start, timedelta(hours=2), units="MW")
    assert vtn.deliveries[-1].status == 200
    (second,) = of_event(signals, event_id)
    assert second.id != first.id
    assert second.key == first.key
    assert isinstance(second.signal, ImportLimit)
    assert second.signal.import_limit_mw == pytest.approx(0.2)
    assert second.end == start + timedelta(hours=2)
    assert signals.effective().import_limit_mw == pytest.approx(0.2)

    await vtn.cancel(event_id)
    assert (vtn.deliveries[-1].operation, vtn.deliveries[-1].status) == ("DELETE", 200)
    assert of_event(signals, event_id) == []
    assert signals.effective().import_limit_mw is None
    assert signals.settings.current.grid_signal_limit_mw is None
    entries = await audit(signals)
    replaced = [a for a in entries if a["target"] == second.id and "withdraws" in a["detail"]]
    assert [(a["actor"], a["detail"]["withdraws"]) for a in replaced] == [(ISSUER, [first.id])]
    withdrawn = [a for a in entries if a["action"] == "grid signal withdrawn"]
    assert [(a["actor"], a["target"]) for a in withdrawn] == [(ISSUER, second.id)]


async def test_polling_alone_delivers_an_event_and_notices_its_deletion(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """Without a webhook (none subscribed, the VTN notifies no one) polling does it all."""
    vtn.notify = False
    ven = await start_ven(webhook=False, poll_interval_s=0.1)
    assert ven.callback_url is None
    assert vtn.subscriptions == {}
    event_id = await vtn.issue_limit(300.0, None, timedelta(hours=1))
    await until(lambda: of_event(signals, event_id), "the polled event's signal")
    (signal,) = of_event(signals, event_id)
    assert signal.issuer == ISSUER
    assert signals.effective().import_limit_mw == 300.0
    await asyncio.sleep(0.3)  # more polls of the same event: nothing new is submitted
    assert of_event(signals, event_id) == [signal]

    await vtn.cancel(event_id)
    await until(lambda: not of_event(signals, event_id), "the withdrawal of the deleted event")
    assert signals.effective().import_limit_mw is None
    assert vtn.deliveries == []


async def test_simple_and_price_events_become_a_shed_and_a_price(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """SIMPLE level 2 sheds the configured MW; a PRICE in USD per kWh is kept per MWh."""
    await start_ven(simple_shed_mw=[10.0, 30.0, 60.0])
    start = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    event_id = await vtn.publish({
        "payloadDescriptors": [
            {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "PRICE",
             "units": "KWH", "currency": "USD"},
        ],
        "intervalPeriod": {"start": start, "duration": "PT1H"},
        "intervals": [{"id": 7, "payloads": [
            {"type": "SIMPLE", "values": [2]},
            {"type": "PRICE", "values": [0.25]},
        ]}],
    })  # fmt: skip
    assert vtn.deliveries[-1].status == 200
    by_key = {s.key: s.signal for s in of_event(signals, event_id)}
    shed = by_key[f"openadr3:{event_id}:7:SIMPLE"]
    price = by_key[f"openadr3:{event_id}:7:PRICE"]
    assert isinstance(shed, Shed)
    assert shed.shed_mw == 30.0
    assert isinstance(price, PriceLevel)
    assert (price.value, price.unit) == (pytest.approx(250.0), "USD/MWh")
    assert signals.effective().shed_mw == 30.0


def hostile_event(vtn: OpenAdr3Vtn, **changes: Any) -> dict[str, Any]:
    start = datetime.now(UTC) - timedelta(minutes=1)
    event = {
        "id": "hostile-1",
        "createdDateTime": start.isoformat(),
        "modificationDateTime": start.isoformat(),
        "objectType": "EVENT",
        "programID": vtn.program_id,
        "payloadDescriptors": [
            {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT",
             "units": "KW"},
        ],
        "intervalPeriod": {"start": start.isoformat(), "duration": "PT1H"},
        "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT",
                                              "values": [100_000]}]}],
    }  # fmt: skip
    return {**event, **changes}


def notify(event: dict[str, Any]) -> bytes:
    return json.dumps({"objectType": "EVENT", "operation": "CREATE", "object": event}).encode()


async def test_hostile_notifications_are_refused_audited_and_change_nothing(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """No or a wrong bearer token, bad JSON, not a notification, wrong types, absurd values,
    an unknown payload type, a window that has ended, an oversized body: each a 4xx problem,
    each audited, and the limit in force stays the one the VTN set."""
    ven = await start_ven()
    event_id = await vtn.issue_limit(250.0, None, timedelta(hours=1))
    before = [s.id for s in signals.open_signals()]
    (sub,) = vtn.subscriptions.values()
    token = sub["objectOperations"][0]["bearerToken"]
    url = ven.callback_url
    assert url is not None
    good = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ended = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    huge = notify(hostile_event(vtn, eventName="x" * 20_000))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 1024

    cases: list[tuple[str, dict[str, str], Any, int]] = [
        ("no bearer", {"Content-Type": "application/json"}, notify(hostile_event(vtn)), 401),
        ("wrong bearer", {**good, "Authorization": "Bearer nope"}, notify(hostile_event(vtn)), 401),
        ("not a bearer", {**good, "Authorization": f"Basic {token}"}, b"{}", 401),
        ("bad JSON", good, b'{"objectType": "EVENT", ', 400),
        ("deep JSON", good, b"[" * 5000 + b"]" * 5000, 400),
        ("not a notification", good, b'{"hello": "world"}', 400),
        ("wrong types", good, notify(hostile_event(vtn, intervals=[
            {"id": "0", "payloads": []}])), 422),
        ("absurd value", good, notify(hostile_event(vtn, intervals=[
            {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1e15]}]}])), 422),
        ("negative value", good, notify(hostile_event(vtn, intervals=[
            {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [-5]}]}])), 422),
        ("unknown payload", good, notify(hostile_event(vtn, intervals=[
            {"id": 0, "payloads": [{"type": "OPEN_THE_POD_BAY_DOORS", "values": [1]}]}])), 422),
        ("window ended", good, notify(hostile_event(vtn, intervalPeriod={
            "start": ended, "duration": "PT1H"})), 422),
        ("other program", good, notify(hostile_event(vtn, programID="someone-else")), 422),
        ("oversized", good, huge, 413),
        ("oversized, chunked", good, chunks(), 413),
    ]  # fmt: skip
    async with httpx.AsyncClient(timeout=10.0) as client:
        for what, headers, body, status in cases:
            answer = await client.post(url, headers=headers, content=body)
            assert answer.status_code == status, what
            assert answer.headers["content-type"] == "application/problem+json", what
            problem = answer.json()
            assert (problem["status"], problem["instance"]) == (status, "/openadr3/notify"), what
            assert problem["detail"], what

    assert [s.id for s in signals.open_signals()] == before
    assert signals.effective().import_limit_mw == 250.0
    assert ven.events_refused_total == len(cases)
    refused = [a for a in await audit(signals) if a["action"] == "openadr3 event refused"]
    assert len(refused) == len(cases)
    assert {a["outcome"] for a in refused} == {"refused"}
    assert {a["actor"] for a in refused[:3]} == {"unauthenticated"}
    assert {a["actor"] for a in refused[3:]} == {ISSUER}
    assert all(a["detail"]["why"] for a in refused)
    assert of_event(signals, "hostile-1") == []
    assert len(of_event(signals, event_id)) == 1


async def test_the_ven_reports_usage_and_forecast_while_an_event_is_in_force(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """DEMAND (direct read) and USAGE of the grid meter, and DEMAND (forecast) of the plan."""
    await start_ven(report_interval_s=0.2)
    event_id = await vtn.issue_limit(250.0, None, timedelta(minutes=30))

    def report(kind: str) -> dict[str, Any] | None:
        name = f"site-ven:{kind}:{event_id}"
        return next((r for r in vtn.reports if r["reportName"] == name), None)

    await until(lambda: report("usage") and report("forecast"), "a usage and a forecast report")
    usage, forecast = report("usage"), report("forecast")
    assert usage is not None
    assert forecast is not None
    for sent in (usage, forecast):
        RawReport.model_validate(sent, strict=True)
        assert (sent["eventID"], sent["clientName"], sent["clientID"]) == (
            event_id,
            "site-ven",
            DEFAULT_CLIENT_ID,
        )
    (resource,) = usage["resources"]
    (interval,) = resource["intervals"]
    assert interval["id"] == 0
    values = {p["type"]: p["values"] for p in interval["payloads"]}
    assert values["DEMAND"] == [MEASURED_MW * 1000]
    assert values["USAGE"][0] == pytest.approx(MEASURED_MW * 1000 * 0.2 / 3600)
    readings = {d["payloadType"]: d["readingType"] for d in usage["payloadDescriptors"]}
    assert readings == {"DEMAND": "DIRECT_READ", "USAGE": "ESTIMATED"}
    (planned,) = forecast["resources"]
    assert forecast["payloadDescriptors"][0]["readingType"] == "FORECAST"
    assert 6 <= len(planned["intervals"]) <= 8  # the 5-minute slots of the next 30 minutes
    assert {i["payloads"][0]["values"][0] for i in planned["intervals"]} == {PLANNED_MW * 1000}


HEAT = HeatConfig(heat_pump_power_mw=200.0, capacity_mw=500.0)
"""A heat plant the 150 MW site load does not fill: the heat follows the supply temperature."""


async def test_the_ven_reports_the_heat_offer_when_it_changes_at_a_heat_requests_supply_temperature(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """A third report per event in force: X_HEAT_OFFER (kW) and X_HEAT_SUPPLY_TEMPERATURE (°C)
    per 5-minute slot, 48 h, the site's own offer; the VTN keeps it. The slots of an open heat
    request are at its 85 °C; the same offer is not sent twice; withdrawing the request sends
    the changed offer."""
    ven = await start_ven(report_interval_s=0.2, heat=HEAT)
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=10)
    end = start + timedelta(minutes=20)
    who = Identity("heat-net", "operator")
    request = await signals.submit(
        HeatRequest(heat_mw=30.0, supply_temp_c=85.0, start=start, end=end), SignalSource.HTTP, who
    )
    event_id = await vtn.issue_limit(250.0, None, timedelta(minutes=30))
    name = f"site-ven:heat:{event_id}"

    def heat_reports() -> list[dict[str, Any]]:
        return [r for r in vtn.reports if r["reportName"] == name]

    def supplies(report: dict[str, Any]) -> set[float]:
        (resource,) = report["resources"]
        return {i["payloads"][1]["values"][0] for i in resource["intervals"]}

    await until(heat_reports, "a heat-offer report")
    sent = heat_reports()[0]
    RawReport.model_validate(sent, strict=True)
    assert (sent["eventID"], sent["clientName"]) == (event_id, "site-ven")
    descriptors = sent["payloadDescriptors"]
    described = [(d["payloadType"], d["readingType"], d["units"]) for d in descriptors]
    assert described == [
        (HEAT_OFFER_PAYLOAD, "FORECAST", "KW"),
        (SUPPLY_TEMP_PAYLOAD, "FORECAST", "CELSIUS"),
    ]
    (resource,) = sent["resources"]
    assert resource["resourceName"] == "heat-recovery"
    intervals = resource["intervals"]
    assert len(intervals) == MAX_HEAT_SLOTS == 576
    first = datetime.fromisoformat(intervals[0]["intervalPeriod"]["start"])
    offer = offer_from_plan(first, plan(), HEAT, requests=requested_of(signals.open_signals()))
    for interval, slot in zip(intervals, offer.slots, strict=True):
        assert datetime.fromisoformat(interval["intervalPeriod"]["start"]) == slot.start
        assert interval["intervalPeriod"]["duration"] == "PT300S"
        heat, supply = interval["payloads"]
        assert heat["type"] == HEAT_OFFER_PAYLOAD
        assert heat["values"][0] == pytest.approx(slot.heat_mw * 1000.0, abs=1e-3)
        assert supply["type"] == SUPPLY_TEMP_PAYLOAD
        in_request = slot.start < end and slot.end > start
        assert supply["values"] == [85.0 if in_request else HEAT.supply_temp_c]
    assert supplies(sent) == {75.0, 85.0}
    periods = ven.reports_sent_total
    await until(lambda: ven.reports_sent_total >= periods + 6, "three more report periods")

    await signals.withdraw(request.id, who)
    await until(lambda: supplies(heat_reports()[-1]) == {75.0}, "the offer without the request")
    kept = heat_reports()
    for earlier, later in itertools.pairwise(kept):
        assert earlier["resources"] != later["resources"]  # an unchanged offer is not sent again


async def test_an_expired_token_is_replaced_when_the_vtn_answers_401(
    signals: GridSignalService, vtn: OpenAdr3Vtn, start_ven: StartVen
) -> None:
    """The VTN forgets every token; the next request gets 401, a new token, and succeeds."""
    vtn.notify = False
    ven = await start_ven(webhook=False)
    assert (vtn.tokens_issued, ven.tokens_fetched_total) == (1, 1)
    event_id = await vtn.issue_limit(275.0, None, timedelta(hours=1))
    vtn.expire_tokens()

    await ven.poll()

    assert vtn.requests_refused_401 == 1
    assert (vtn.tokens_issued, ven.tokens_fetched_total) == (2, 2)
    assert ven.polls_failed_total == 0
    (signal,) = of_event(signals, event_id)
    assert isinstance(signal.signal, ImportLimit)
    assert signal.signal.import_limit_mw == 275.0


async def test_the_gateway_runs_the_ven_when_openadr3_is_enabled(
    tmp_path: Path, vtn: OpenAdr3Vtn
) -> None:
    """``[openadr3] enabled``: the daemon starts the VEN after the grid-signal service; the
    VTN's event is then the gateway's limit in force; the VEN stops with the gateway."""
    config = GatewayConfig.model_validate({
        "listeners": {"metrics": {"enabled": False, "port": 0},
                      "api": {"enabled": False, "port": 0}},
        "storage": {"state_dir": str(tmp_path / "state"), "journal_synchronous": "normal"},
        "openadr3": {
            "enabled": True, "vtn_url": vtn.url, "vtn_name": VTN_NAME,
            "program_names": [vtn.program["programName"]],
            "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET,
        },
    })  # fmt: skip
    gw = Gateway(config)
    await gw.start()
    try:
        assert gw.openadr3 is not None
        assert gw.grid_signals is not None
        assert "openadr3" in gw.supervisor.names()
        await asyncio.wait_for(gw.openadr3.connected.wait(), WAIT_S)
        event_id = await vtn.issue_limit(222.0, None, timedelta(hours=1))
        assert vtn.deliveries[-1].status == 200
        (signal,) = of_event(gw.grid_signals, event_id)
        assert signal.issuer == ISSUER
        assert gw.settings.current.import_limit_mw == 222.0
        assert gw.openadr3.site.measured_import_mw() is None  # no meter in this gateway
        heat_offer = gw.openadr3.site.heat_offer  # [heat]'s offer, as GET /v1/heat/offer's
        assert heat_offer is not None
        assert len(heat_offer().slots) == MAX_HEAT_SLOTS
    finally:
        await gw.stop()
    assert vtn.subscriptions == {}  # the VEN deleted its subscription on the way out


async def test_tls_both_ways_the_vtn_checked_against_ca_file_the_callback_over_https(
    tmp_path: Path, signals: GridSignalService
) -> None:
    """An https VTN verified with ``ca_file``; the callback served over TLS (the VTN verifies
    it with the same CA); a VEN without the CA does not trust the VTN."""
    ca = SiteCa(tmp_path / "pki")
    ca.init("test", ["127.0.0.1"])
    vtn = OpenAdr3Vtn(tls_cert=ca.server_cert, tls_key=ca.server_key, ca_file=ca.cert_path)
    await vtn.start()
    settings = {
        "enabled": True, "vtn_url": vtn.url, "vtn_name": VTN_NAME,
        "program_names": [vtn.program["programName"]],
        "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET,
        "poll_interval_s": 3600.0, "ca_file": str(ca.cert_path),
        "callback_tls_cert": str(ca.server_cert), "callback_tls_key": str(ca.server_key),
    }  # fmt: skip
    site = VenSite(signals, lambda: None, plan)
    ven = OpenAdr3Ven(OpenAdr3Config.model_validate(settings), site)
    untrusting = OpenAdr3Ven(
        OpenAdr3Config.model_validate({**settings, "ca_file": None, "webhook": False}), site
    )
    try:
        assert vtn.url.startswith("https://127.0.0.1:")
        await ven.start()
        await asyncio.wait_for(ven.connected.wait(), WAIT_S)
        assert (ven.callback_url or "").startswith("https://127.0.0.1:")
        event_id = await vtn.issue_limit(260.0, None, timedelta(hours=1))
        assert vtn.deliveries[-1].status == 200
        (signal,) = of_event(signals, event_id)
        assert signal.issuer == ISSUER

        await untrusting.start()
        with pytest.raises(VtnError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting._fetch_token()  # what its background task keeps meeting
        assert not untrusting.connected.is_set()
        assert untrusting.unhealthy(0.0) == []  # an untrusted VTN is logged, not a crash
    finally:
        await untrusting.stop()
        await ven.stop()
        await vtn.stop()
