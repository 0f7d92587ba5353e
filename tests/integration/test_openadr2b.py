"""The OpenADR 2.0b VEN against a real openleadr VTN, on free loopback ports.

A real VTN (``pswd_gateway.simulation.vtn2b``), the real VEN, and a real grid-signal service
over a SQLite journal in ``tmp_path``: an event becomes an import limit in force with the
event's window, journalled and audited as ``openadr2b`` from ``vtn:<name>`` before the VTN hears
the opt-in; a cancel withdraws it; a modification replaces it; hostile or infeasible events are
refused, audited, opted out and change nothing; the VEN reports its delivered load, its
forecast and the heat offer; TLS with signed messages works and a wrong VTN fingerprint is
refused; a signal in force survives a restart. Servers are always stopped. Latency is printed,
never asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pswd_gateway.config import GatewayConfig, HeatConfig, OpenAdr2bConfig, SiteConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.grid_signals import GridSignal, HeatRequest, ImportLimit, SignalSource
from pswd_gateway.domain.identity import Identity
from pswd_gateway.errors import ConfigError
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.journal import AsyncJournal
from pswd_gateway.openadr.site import VenSite
from pswd_gateway.openadr.ven2b import (
    FORECAST_REPORT,
    HEAT_REPORT,
    TELEMETRY_REPORT,
    OpenAdr2bVen,
)
from pswd_gateway.scheduling.heat import offer_from_plan, requested_of
from pswd_gateway.scheduling.model import SiteForecast, SiteForecastSlot
from pswd_gateway.security.pki import SiteCa
from pswd_gateway.simulation.vtn2b import Vtn2b, VtnTls, openadr_fingerprint
from pswd_gateway.site_settings import SiteSettings

pytestmark = [
    pytest.mark.integration,
    # openleadr's server keys its aiohttp application with a string
    pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey"),
]

SITE_LIMIT_MW = 400.0
PLANNED_MW = 300.0
BATTERY_MW = 100.0
"""The site can reach 200 MW: the planned 300 MW less the battery's 100 MW."""
MEASURED_MW = 123.4
SLOT_S = 300
WAIT_S = 20.0


def plan() -> SiteForecast:
    """48 h of 5-minute slots at 300 MW planned import, no battery discharge planned."""
    now = datetime.now(UTC)
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    slots = tuple(
        SiteForecastSlot(
            start=first + timedelta(seconds=SLOT_S * k),
            site_load_mw=PLANNED_MW,
            grid_import_mw=PLANNED_MW,
            bess_mw=0.0,
            heat_export_mw=0.0,
            carbon_g_per_kwh=300.0,
            import_limit_mw=SITE_LIMIT_MW,
        )
        for k in range(576)
    )
    return SiteForecast(first, SLOT_S, slots, "test")


@dataclass
class Site:
    """The grid-signal service over its journal, the VEN, and the VTN it talks to."""

    journal: AsyncJournal
    settings: SiteSettings
    service: GridSignalService
    ven: OpenAdr2bVen
    vtn: Vtn2b

    def audits(self, action: str) -> list[dict[str, Any]]:
        rows = self.journal.sync.audit_entries(0, 10_000)
        return [r for r in rows if r["action"] == action]

    def openadr_signals(self) -> list[GridSignal]:
        return [s for s in self.service.open_signals() if s.source is SignalSource.OPENADR2B]


async def until(check: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait until ``check()`` holds (a generous bound: this is not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.01)


def ven_config(vtn: Vtn2b, **overrides: Any) -> OpenAdr2bConfig:
    return OpenAdr2bConfig.model_validate({
        "enabled": True,
        "vtn_url": vtn.url,
        "vtn_name": "utility",
        "ven_name": vtn.ven_name,
        "poll_interval_s": 0.5,
        "telemetry_period_s": 1,
        "forecast_period_s": 1,
        "forecast_horizon_h": 1,
        **overrides,
    })  # fmt: skip


@asynccontextmanager
async def running_site(
    journal_path: Path,
    vtn: Vtn2b,
    *,
    register: bool = True,
    heat: HeatConfig | None = None,
    **overrides: Any,
) -> AsyncIterator[Site]:
    """Journal, site settings, grid-signal service and VEN, started; always stopped. With
    ``heat`` the site has a heat plant (and offers the heat-offer report)."""
    journal = AsyncJournal.open(journal_path, "normal")
    settings = SiteSettings(SiteConfig(grid_import_limit_mw=SITE_LIMIT_MW))
    service = GridSignalService(journal, settings)
    site_plan = plan()
    offer = None
    if heat is not None:
        offer = VenSite.heat_offer_from(service, lambda: site_plan, lambda: heat)
    ven_site = VenSite(service, lambda: MEASURED_MW, lambda: site_plan, BATTERY_MW, offer)
    ven = OpenAdr2bVen(ven_config(vtn, **overrides), ven_site)
    await service.start()
    try:
        await ven.start()
        try:
            site = Site(journal, settings, service, ven, vtn)
            if register:
                await until(lambda: ven.registered, "the VEN registered")
            yield site
        finally:
            await ven.stop()
    finally:
        await service.stop()
        await journal.close()


@asynccontextmanager
async def running_vtn(**kwargs: Any) -> AsyncIterator[Vtn2b]:
    vtn = Vtn2b(**kwargs)
    await vtn.start()
    try:
        yield vtn
    finally:
        await vtn.stop()


def window(minutes: float = 60.0) -> tuple[datetime, timedelta]:
    return datetime.now(UTC).replace(microsecond=0), timedelta(minutes=minutes)


async def test_an_event_becomes_an_import_limit_in_force_journalled_audited_and_opted_in(
    tmp_path: Path,
) -> None:
    """A LOAD_DISPATCH setpoint is an import limit with the event's window, of source openadr2b
    from vtn:utility, in the journal and its audit before the VTN hears optIn; the VEN polls at
    its own interval, not the VTN's 10 s."""
    async with running_vtn() as vtn, running_site(tmp_path / "journal.db", vtn) as site:
        client = site.ven._client  # the poll job openleadr scheduled
        assert client is not None
        assert client.vtn_poll_s == 10.0  # what the VTN asked for ...
        polls = [j for j in client.scheduler.get_jobs() if j.func == client._poll]
        assert [j.trigger.interval for j in polls] == [timedelta(seconds=0.5)]  # ... and ours

        in_force_at: list[float] = []
        site.settings.subscribe(
            lambda s: in_force_at.append(time.monotonic()) if s.grid_signal_limit_mw else None
        )
        seen_at_opt: list[list[GridSignal]] = []
        record = vtn._record_opts

        def on_opt(payload: dict[str, Any]) -> None:
            seen_at_opt.append(site.openadr_signals())
            record(payload)

        vtn._record_opts = on_opt  # type: ignore[method-assign]
        start, duration = window()
        issued = time.monotonic()
        event_id = await vtn.issue_limit(250.0, start, duration)

        await until(lambda: site.settings.current.grid_signal_limit_mw == 250.0, "in force")
        await until(lambda: vtn.opt_of(event_id) == "optIn", "the VTN heard the opt-in")
        (signal,) = site.openadr_signals()
        assert signal.source is SignalSource.OPENADR2B
        assert signal.issuer == "vtn:utility"
        assert signal.key == f"openadr2b:{event_id}:0.0"
        assert signal.signal == ImportLimit(
            import_limit_mw=250.0, start=start, end=start + duration
        )
        assert site.service.effective().import_limit_by == signal.id
        assert [s.id for s in site.journal.sync.open_grid_signals(datetime.now(UTC))] == [signal.id]
        (audit,) = site.audits("grid signal accepted")
        assert (audit["actor"], audit["role"], audit["target"]) == (
            "vtn:utility",
            "operator",
            signal.id,
        )
        assert audit["detail"]["source"] == "openadr2b"
        assert seen_at_opt[0] == [signal]  # kept and in force before the VTN heard optIn
        assert (site.ven.events_accepted_total, site.ven.events_refused_total) == (1, 0)
        assert site.ven.last_event_s is not None
        print(
            f"\nopenadr2b signal to action: VTN issue -> limit in force "
            f"{in_force_at[0] - issued:.3f} s; openleadr receipt -> accepted "
            f"{site.ven.last_event_s:.3f} s (poll interval 0.5 s)"
        )


async def test_a_cancelled_event_withdraws_its_signal_and_no_other(tmp_path: Path) -> None:
    """A cancel withdraws the event's signals (audited as vtn:utility), and only its own."""
    async with running_vtn() as vtn, running_site(tmp_path / "journal.db", vtn) as site:
        event_id = await vtn.issue_limit(240.0, *window(), event_id="ev-7")
        # an id that starts like the first one's key: its signal is not the first event's
        other = await vtn.issue_limit(300.0, *window(), event_id="ev-7:0.0")
        await until(lambda: vtn.opt_of(other) == "optIn", "the opt-ins")
        assert vtn.opt_of(event_id) == "optIn"
        assert site.settings.current.grid_signal_limit_mw == 240.0
        signal, kept = sorted(site.openadr_signals(), key=lambda s: s.key or "")
        assert (signal.key, kept.key) == ("openadr2b:ev-7:0.0", "openadr2b:ev-7:0.0:0.0")

        await vtn.cancel(event_id)

        await until(lambda: site.settings.current.grid_signal_limit_mw == 300.0, "withdrawn")
        assert site.openadr_signals() == [kept]
        (withdrawn,) = site.audits("grid signal withdrawn")
        assert (withdrawn["actor"], withdrawn["target"]) == ("vtn:utility", signal.id)
        await until(lambda: vtn.opt_of(event_id, 1) == "optIn", "the cancel acknowledged")


async def test_a_modified_event_replaces_its_signal(tmp_path: Path) -> None:
    """A higher modification number replaces the signal in the same transaction."""
    async with running_vtn() as vtn, running_site(tmp_path / "journal.db", vtn) as site:
        start, duration = window()
        event_id = await vtn.issue_limit(250.0, start, duration)
        await until(lambda: vtn.opt_of(event_id) == "optIn", "the opt-in")
        assert site.settings.current.grid_signal_limit_mw == 250.0
        (first,) = site.openadr_signals()

        later = start + timedelta(minutes=5)
        assert await vtn.modify_limit(event_id, 230.0, later, duration) == 1

        await until(lambda: vtn.opt_of(event_id, 1) == "optIn", "the modification opted in")
        (second,) = site.openadr_signals()
        assert second.id != first.id
        assert second.key == first.key
        assert second.signal == ImportLimit(
            import_limit_mw=230.0, start=later, end=later + duration
        )
        (accepted_again,) = [
            a for a in site.audits("grid signal accepted") if a["target"] == second.id
        ]
        assert accepted_again["detail"]["withdraws"] == [first.id]  # in the same transaction


async def test_hostile_and_malformed_events_are_refused_audited_opted_out_and_change_nothing(
    tmp_path: Path,
) -> None:
    """Negative or absurd MW, another VEN's event, unsupported signals, a load increase, a
    window that has ended: each opted out, audited as refused with its reason; nothing moves."""
    async with running_vtn() as vtn, running_site(tmp_path / "journal.db", vtn) as site:
        good = await vtn.issue_limit(250.0, *window())
        await until(lambda: site.settings.current.grid_signal_limit_mw == 250.0, "in force")
        before = site.openadr_signals()
        start, duration = window()
        past = start - timedelta(hours=2)
        hostile = {
            "negative MW": await vtn.issue_limit(-50.0, start, duration),
            "absurd MW": await vtn.issue_limit(1e9, start, duration),
            "another VEN": await vtn.issue(
                "LOAD_DISPATCH", "setpoint", [(start, duration, 100.0)],
                targets=[{"ven_id": "VEN-SOMEONE-ELSE"}],
            ),
            "unsupported signal": await vtn.issue(
                "DEMAND_CHARGE", "price", [(start, duration, 10.0)]
            ),
            "capacity above 1": await vtn.issue(
                "LOAD_CONTROL", "x-loadControlCapacity", [(start, duration, 1.5)]
            ),
            "more load": await vtn.issue("LOAD_DISPATCH", "delta", [(start, duration, 20.0)]),
            "window ended": await vtn.issue(
                "LOAD_DISPATCH", "setpoint", [(past, timedelta(minutes=10), 100.0)],
                active_period=(start, duration),  # claims to be on: sent, not 'completed'
            ),
        }  # fmt: skip

        for what, event_id in hostile.items():
            await until(lambda e=event_id: vtn.opt_of(e) is not None, f"an answer to {what}")
            assert vtn.opt_of(event_id) == "optOut", what
        assert vtn.opt_of(good) == "optIn"
        assert site.openadr_signals() == before
        assert site.settings.current.grid_signal_limit_mw == 250.0
        refused = {a["detail"]["event_id"]: a for a in site.audits("openadr2b event refused")}
        assert set(refused) == set(hostile.values())
        for what, event_id in hostile.items():
            audit = refused[event_id]
            assert (audit["actor"], audit["outcome"]) == ("vtn:utility", "refused"), what
            assert audit["detail"]["why"], what
        assert "not this VEN" in refused[hostile["another VEN"]]["detail"]["why"]
        assert "ended" in refused[hostile["window ended"]]["detail"]["why"]
        assert "DEMAND_CHARGE/price" in refused[hostile["unsupported signal"]]["detail"]["why"]
        assert site.ven.events_refused_total == len(hostile)
        assert len(site.audits("grid signal accepted")) == 1


async def test_an_event_below_what_the_site_can_reach_is_opted_out(tmp_path: Path) -> None:
    """``opt = "feasible"``: 300 MW planned, a 100 MW battery: 200 MW is reachable, 150 not."""
    async with running_vtn() as vtn, running_site(tmp_path / "journal.db", vtn) as site:
        too_low = await vtn.issue_limit(150.0, *window())
        reachable = await vtn.issue_limit(200.0, *window())

        await until(lambda: vtn.opt_of(too_low) is not None, "an answer")
        await until(lambda: vtn.opt_of(reachable) is not None, "an answer")
        assert (vtn.opt_of(too_low), vtn.opt_of(reachable)) == ("optOut", "optIn")
        assert site.settings.current.grid_signal_limit_mw == 200.0
        (refused,) = site.audits("openadr2b event refused")
        assert refused["detail"]["event_id"] == too_low
        assert "can reach 200.0 MW" in refused["detail"]["why"]


async def test_opt_out_by_configuration_puts_nothing_in_force(tmp_path: Path) -> None:
    """``opt = "out"``: opted out and audited as refused, whatever the event."""
    async with (
        running_vtn() as vtn,
        running_site(tmp_path / "journal.db", vtn, opt="out") as site,
    ):
        event_id = await vtn.issue_limit(250.0, *window())
        await until(lambda: vtn.opt_of(event_id) is not None, "an answer")
        assert vtn.opt_of(event_id) == "optOut"
        assert site.openadr_signals() == []
        (refused,) = site.audits("openadr2b event refused")
        assert 'opt = "out"' in refused["detail"]["why"]


async def test_the_ven_reports_its_delivered_load_and_its_forecast(tmp_path: Path) -> None:
    """The VTN receives the measured import (Direct Read) and the plan's import (Projected)."""
    async with running_vtn() as vtn, running_site(tmp_path / "journal.db", vtn) as site:

        def kinds() -> set[tuple[str, str, str]]:
            return {(r.report_specifier_id, r.r_id, r.reading_type) for r in vtn.reports}

        telemetry = (*TELEMETRY_REPORT, "Direct Read")
        forecast = (*FORECAST_REPORT, "Projected")
        await until(lambda: {telemetry, forecast} <= kinds(), "both reports received")
        delivered = next(r for r in vtn.reports if r.r_id == TELEMETRY_REPORT[1])
        assert [v for _, v in delivered.values] == [MEASURED_MW]
        planned = next(r for r in vtn.reports if r.r_id == FORECAST_REPORT[1])
        assert planned.values
        assert {v for _, v in planned.values} == {PLANNED_MW}
        starts = [at for at, _ in planned.values]
        assert starts == sorted(starts)
        slot = timedelta(seconds=SLOT_S)
        assert planned.at - 2 * slot < starts[0] <= planned.at  # from the slot it was sent in
        assert starts[-1] - starts[0] <= timedelta(hours=1)  # forecast_horizon_h = 1
        assert site.ven.registered


HEAT = HeatConfig(heat_pump_power_mw=200.0, capacity_mw=500.0)
"""A heat plant the 300 MW site load does not fill: the heat follows the supply temperature."""


async def test_the_ven_reports_the_heat_offer_at_the_supply_temperature_of_a_heat_request(
    tmp_path: Path,
) -> None:
    """The VEN offers a third report, registered cleanly with openleadr's VTN: per 5-minute
    slot the heat available (customUnit thermalPower, MW) and the supply temperature
    (temperature, celsius), both Projected. The VTN requests and receives it; its values are
    the site's own offer, and the slots of an open heat request are at that request's 85 °C."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=10)
    heat_request = HeatRequest(
        heat_mw=30.0, supply_temp_c=85.0, start=start, end=start + timedelta(minutes=20)
    )
    async with (
        running_vtn() as vtn,
        running_site(tmp_path / "journal.db", vtn, heat=HEAT) as site,
    ):
        specifier, heat_r_id, supply_r_id = HEAT_REPORT
        heat_rd = vtn.offered[specifier, heat_r_id]
        assert heat_rd["measurement"] == {
            "name": "customUnit",
            "description": "thermalPower",
            "unit": "W",
            "scale": "M",
        }
        assert (heat_rd["report_type"], heat_rd["reading_type"]) == ("x-heatOffer", "Projected")
        supply_rd = vtn.offered[specifier, supply_r_id]
        assert supply_rd["measurement"]["name"] == "temperature"
        assert supply_rd["measurement"]["unit"] == "celsius"
        assert (supply_rd["report_type"], supply_rd["reading_type"]) == ("setPoint", "Projected")

        await site.service.submit(heat_request, SignalSource.HTTP, Identity("heat-net", "operator"))
        sent_before = len(vtn.reports)

        def received(r_id: str) -> list[Any]:
            return [r for r in vtn.reports[sent_before:] if r.r_id == r_id]

        await until(lambda: received(heat_r_id) and received(supply_r_id), "the heat offer")
        heat_sent, supply_sent = received(heat_r_id)[0], received(supply_r_id)[0]
        assert heat_sent.report_specifier_id == supply_sent.report_specifier_id == specifier
        assert heat_sent.reading_type == "Projected"

        starts = [at for at, _ in heat_sent.values]
        offer = offer_from_plan(  # the site's offer, from the first slot the VEN sent
            starts[0], plan(), HEAT, requests=requested_of(site.service.open_signals())
        )
        by_start = {s.start: s for s in offer.slots}
        assert starts == [at for at, _ in supply_sent.values]
        assert 12 <= len(starts) <= 13  # the current 5-minute slot to forecast_horizon_h = 1
        assert starts == sorted(starts)
        assert all(b - a == timedelta(minutes=5) for a, b in itertools.pairwise(starts))
        for at, mw in heat_sent.values:
            assert mw == pytest.approx(by_start[at].heat_mw, abs=1e-3)
        supply = dict(supply_sent.values)
        for at, celsius in supply.items():
            assert celsius == pytest.approx(by_start[at].supply_c, abs=0.01)
            in_request = at < start + timedelta(minutes=20) and at + timedelta(minutes=5) > start
            assert celsius == (85.0 if in_request else HEAT.supply_temp_c)
        assert sorted(set(supply.values())) == [75.0, 85.0]
        heat_at = dict(heat_sent.values)
        at_85 = [heat_at[at] for at, celsius in supply.items() if celsius == 85.0]
        assert min(at_85) > heat_at[starts[0]]  # the source binds: more heat at 85 °C


@pytest.fixture
def pki(tmp_path: Path) -> SiteCa:
    """The site CA: the VTN's TLS certificate (it signs messages too), a VEN certificate."""
    ca = SiteCa(tmp_path / "certs")
    ca.init("openadr-test", ["127.0.0.1", "localhost"])
    ca.issue_client("pswd-ven", "operator")
    return ca


def vtn_tls(ca: SiteCa) -> VtnTls:
    ven_cert = ca.root / "clients" / "pswd-ven.pem"
    return VtnTls(ca.server_cert, ca.server_key, ca.cert_path, openadr_fingerprint(ven_cert))


def ven_tls(ca: SiteCa, fingerprint: str | None) -> dict[str, Any]:
    return {
        "cert": ca.root / "clients" / "pswd-ven.pem",
        "key": ca.root / "clients" / "pswd-ven.key",
        "ca_file": ca.cert_path,
        "vtn_fingerprint": fingerprint,
    }


async def test_tls_with_signed_messages_and_the_vtn_fingerprint_pinned(
    tmp_path: Path, pki: SiteCa
) -> None:
    """HTTPS with a client certificate, every message signed, the VTN's fingerprint pinned."""
    async with running_vtn(tls=vtn_tls(pki)) as vtn:
        assert vtn.url.startswith("https://127.0.0.1:")
        async with running_site(
            tmp_path / "journal.db", vtn, **ven_tls(pki, vtn.fingerprint)
        ) as site:
            event_id = await vtn.issue_limit(245.0, *window())
            await until(lambda: site.settings.current.grid_signal_limit_mw == 245.0, "in force")
            await until(lambda: vtn.opt_of(event_id) == "optIn", "the opt-in, signed")


async def test_a_vtn_signing_with_another_certificate_is_refused(
    tmp_path: Path, pki: SiteCa
) -> None:
    """With the wrong VTN fingerprint the VEN never registers, so no event is ever taken."""
    wrong = openadr_fingerprint(pki.root / "clients" / "pswd-ven.pem")  # not the VTN's
    async with (
        running_vtn(tls=vtn_tls(pki)) as vtn,
        running_site(tmp_path / "journal.db", vtn, register=False, **ven_tls(pki, wrong)) as site,
    ):
        await vtn.issue_limit(100.0, *window())
        await until(lambda: site.ven.registration_failures_total >= 2, "registration refused")
        assert not site.ven.registered
        assert site.ven.events_received_total == 0
        assert vtn.opts == []
        assert site.openadr_signals() == []
        assert site.settings.current.grid_signal_limit_mw is None


async def test_a_signal_in_force_survives_a_restart_of_the_ven_and_the_service(
    tmp_path: Path,
) -> None:
    """After a restart the signal is in force from the journal, and the event sent again is
    answered optIn without a second signal."""
    journal = tmp_path / "journal.db"
    async with running_vtn() as vtn:
        async with running_site(journal, vtn) as site:
            event_id = await vtn.issue_limit(235.0, *window())
            await until(lambda: site.settings.current.grid_signal_limit_mw == 235.0, "in force")
            (signal,) = site.openadr_signals()
        opts_before = len(vtn.opts)

        async with running_site(journal, vtn) as again:
            assert again.settings.current.grid_signal_limit_mw == 235.0  # from the journal
            assert again.openadr_signals() == [signal]
            # registered again: the VTN sends the event once more, and it is already in force
            await until(lambda: len(vtn.opts) > opts_before, "the event answered again")
            assert vtn.opt_of(event_id) == "optIn"
            assert again.openadr_signals() == [signal]
            assert len(again.audits("grid signal accepted")) == 1


async def test_the_gateway_runs_the_ven_when_enabled(tmp_path: Path) -> None:
    """``[openadr2b] enabled``: the daemon starts the VEN under its supervisor, on the gateway's
    own grid-signal service; with no grid meter, no delivered-load report is sent; the heat
    offer of ``[heat]`` is."""
    async with running_vtn() as vtn:
        config = GatewayConfig.model_validate({
            "site": {"grid_import_limit_mw": SITE_LIMIT_MW},
            "listeners": {
                "metrics": {"enabled": False, "port": 0},
                "api": {"enabled": False, "port": 0},
            },
            "storage": {"state_dir": str(tmp_path / "state"), "journal_synchronous": "normal"},
            "openadr2b": ven_config(vtn).model_dump(),
        })  # fmt: skip
        gateway = Gateway(config)
        await gateway.start()
        try:
            ven = gateway.openadr2b
            assert ven is not None
            assert "openadr2b" in gateway.supervisor.names()
            await until(lambda: ven.registered, "the VEN registered")
            event_id = await vtn.issue_limit(260.0, *window())
            await until(lambda: vtn.opt_of(event_id) == "optIn", "the opt-in")
            assert gateway.settings.current.grid_signal_limit_mw == 260.0
            await until(lambda: any(r.r_id == FORECAST_REPORT[1] for r in vtn.reports), "plan")
            await until(lambda: any(r.r_id == HEAT_REPORT[1] for r in vtn.reports), "heat offer")
            assert gateway.loops_healthy()[0]
        finally:
            await gateway.stop()
        assert not [r for r in vtn.reports if r.r_id == TELEMETRY_REPORT[1]]


async def test_a_vtn_that_asks_for_a_new_registration_gets_one(tmp_path: Path) -> None:
    """oadrRequestReregistration: the VEN registers again, takes events, and reports once."""
    async with running_vtn() as vtn, running_site(tmp_path / "journal.db", vtn) as site:
        assert vtn.registrations == 1
        vtn.forget_ven()
        await until(lambda: vtn.registrations == 2, "registered again")
        event_id = await vtn.issue_limit(255.0, *window())
        await until(lambda: vtn.opt_of(event_id) == "optIn", "the opt-in")
        assert site.settings.current.grid_signal_limit_mw == 255.0
        assert site.ven.registered
        client = site.ven._client  # the report jobs openleadr scheduled
        assert client is not None
        reports = [j for j in client.scheduler.get_jobs() if j.name.startswith("partial")]
        assert len(reports) == 2  # one per report, not one more per registration


def test_unreadable_tls_files_are_a_configuration_error(tmp_path: Path) -> None:
    """A certificate that cannot be read stops the gateway at start with the key named."""
    config = OpenAdr2bConfig(
        vtn_url="https://vtn.example/OpenADR2/Simple/2.0b",
        cert=tmp_path / "missing.pem",
        key=tmp_path / "missing.key",
    )
    with pytest.raises(ConfigError, match=r"openadr2b\.ca_file, cert or key"):
        OpenAdr2bVen(config, site=None)  # type: ignore[arg-type]  # refused before it is used


def test_the_test_vtn_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        Vtn2b(host="0.0.0.0")
