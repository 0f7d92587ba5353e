"""A utility's OpenADR 2.0b VTN on loopback, for tests, benchmarks and the demo.

:class:`Vtn2b` is openleadr's ``OpenADRServer`` with one registered VEN: it issues events
(:meth:`Vtn2b.issue_limit`, :meth:`Vtn2b.issue`), modifies and cancels them, and records what
the VEN answers (:attr:`Vtn2b.opts`), the reports it offers (:attr:`Vtn2b.offered`, every one
requested) and the values it reports (:attr:`Vtn2b.reports`), so a test can assert the site
opted in and reported its delivered load, its forecast and its heat offer. It binds 127.0.0.1
(or another loopback address) only, at a given port or a free one; with :class:`VtnTls` it
speaks HTTPS with client certificates and signs every message, as a utility's VTN does.

openleadr keeps a server's signing key and its VEN lookup on the service *class*, so a second
server in the same process would sign with the first one's key; each service of this VTN gets
its own copy as an instance attribute instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from openleadr import OpenADRServer, enums, objects, utils
from openleadr.messaging import create_message

from pswd_gateway.config import is_loopback
from pswd_gateway.logging import get_logger

__all__ = ["OptAnswer", "ReportValues", "Vtn2b", "VtnTls", "openadr_fingerprint"]

log = get_logger("simulation.vtn2b")

PATH: Final = "/OpenADR2/Simple/2.0b"
REGISTRATION_ID: Final = "reg-pswd-site"


def openadr_fingerprint(cert_pem: Path) -> str:
    """A certificate's OpenADR fingerprint (the last ten bytes of its SHA-256, ``AB:CD:…``)."""
    return str(utils.certificate_fingerprint(cert_pem.read_text(encoding="ascii")))


@dataclass(frozen=True, slots=True)
class VtnTls:
    """HTTPS for the VTN: its certificate (which also signs every message it sends), the CA a
    VEN's client certificate must chain to, and the VEN certificate's OpenADR fingerprint."""

    cert: Path
    key: Path
    client_ca: Path
    ven_fingerprint: str


@dataclass(frozen=True, slots=True)
class OptAnswer:
    """The VEN's answer to one version of an event (``oadrCreatedEvent``)."""

    event_id: str
    modification_number: int
    opt_type: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ReportValues:
    """Values of one report the VEN sent (``oadrUpdateReport``), as (time, value) pairs."""

    report_specifier_id: str
    r_id: str
    reading_type: str
    values: tuple[tuple[datetime, float], ...]
    at: datetime


@dataclass
class Vtn2b:
    """A VTN with one VEN (``ven_name``, known as ``ven_id``), serving on loopback."""

    vtn_id: str = "PSWD-TEST-VTN"
    ven_name: str = "pswd-site"
    ven_id: str = "VEN-PSWD-SITE"
    host: str = "127.0.0.1"
    port: int = 0
    """0: a free port (``port`` holds the bound one after :meth:`start`)."""
    tls: VtnTls | None = None
    requested_poll_s: float = 10.0
    """The poll frequency asked of the VEN at registration (a VEN may poll faster)."""
    opts: list[OptAnswer] = field(default_factory=list, init=False)
    reports: list[ReportValues] = field(default_factory=list, init=False)
    offered: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, init=False)
    """(reportSpecifierID, rID) → the report description the VEN registered (openleadr's
    reading of its ``oadrReportDescription``: measurement, reportType, readingType, …)."""
    registrations: int = field(default=0, init=False)
    """``oadrCreatePartyRegistration`` requests accepted."""
    refused_registrations: int = field(default=0, init=False)
    _known: bool = field(default=True, init=False)
    server: Any = field(default=None, init=False)
    """openleadr's ``OpenADRServer``."""
    _runner: web.AppRunner | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not is_loopback(self.host):
            raise ValueError(f"the test VTN binds loopback only, not {self.host}")

    @property
    def url(self) -> str:
        """The base URL a VEN is configured with."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{PATH}"

    @property
    def fingerprint(self) -> str | None:
        """The OpenADR fingerprint of the certificate this VTN signs with (a VEN's
        ``vtn_fingerprint``); None without TLS."""
        return None if self.tls is None else openadr_fingerprint(self.tls.cert)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        tls = self.tls
        server = OpenADRServer(
            vtn_id=self.vtn_id,
            cert=str(tls.cert) if tls else None,
            key=str(tls.key) if tls else None,
            http_cert=str(tls.cert) if tls else None,
            http_key=str(tls.key) if tls else None,
            http_ca_file=str(tls.client_ca) if tls else None,
            http_host=self.host,
            http_port=self.port,
            http_path_prefix=PATH,
            requested_poll_freq=timedelta(seconds=self.requested_poll_s),
            show_fingerprint=False,
        )
        sign = partial(
            create_message,
            cert=tls.cert.read_bytes() if tls else None,
            key=tls.key.read_bytes() if tls else None,
        )
        for service in server.services.values():  # this server's own, not the class's
            service._create_message = sign  # noqa: SLF001 -- see the module docstring
            service.ven_lookup = self._ven_lookup
            service.verify_message_signatures = True
        server.add_handler("on_create_party_registration", self._register)
        server.add_handler("on_register_report", self._register_report)
        events = server.services["event_service"]
        answered = events.handlers["oadrCreatedEvent"]

        async def created_event(payload: dict[str, Any]) -> Any:
            self._record_opts(payload)
            return await answered(payload)

        events.handlers["oadrCreatedEvent"] = created_event
        self.server = server
        runner = web.AppRunner(server.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=server.ssl_context)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("vtn2b_started", url=self.url, ven=self.ven_name, tls=tls is not None)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- events ------------------------------------------------------------------------------

    async def issue_limit(
        self,
        import_limit_mw: float,
        start: datetime,
        duration: timedelta,
        *,
        event_id: str | None = None,
    ) -> str:
        """A ``LOAD_DISPATCH`` ``setpoint`` event: import at most ``import_limit_mw`` (MW) from
        ``start`` for ``duration``. Returns its event id."""
        return await self.issue(
            "LOAD_DISPATCH", "setpoint", [(start, duration, import_limit_mw)], event_id=event_id
        )

    async def issue(
        self,
        signal_name: str,
        signal_type: str,
        intervals: Sequence[tuple[datetime, timedelta, float]],
        *,
        event_id: str | None = None,
        targets: Sequence[dict[str, str]] | None = None,
        measurement: Any = None,
        test_event: bool = False,
        active_period: tuple[datetime, timedelta] | None = None,
    ) -> str:
        """An event of one signal with ``intervals`` (start, duration, value), for this VTN's
        VEN. ``targets`` (default: the VEN's venID) and ``active_period`` (default: spanning
        the intervals) may say otherwise, as a faulty or hostile VTN's would."""
        event_id = event_id or utils.generate_id()
        event = objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id,
                modification_number=0,
                market_context="oadr://pswd.test/capacity",
                event_status=enums.EVENT_STATUS.FAR,
                test_event=test_event,
            ),
            event_signals=[self._signal(signal_name, signal_type, intervals, measurement)],
            targets=list(targets) if targets is not None else [{"ven_id": self.ven_id}],
            response_required="always",
        )
        self.server.add_raw_event(ven_id=self.ven_id, event=event, callback=_answered)
        if active_period is not None:  # add_raw_event works it out from the intervals
            event.active_period = objects.ActivePeriod(*active_period)
        return event_id

    async def modify_limit(
        self, event_id: str, import_limit_mw: float, start: datetime, duration: timedelta
    ) -> int:
        """The event's signal replaced by one interval at ``import_limit_mw``; its
        modification number goes up by one (returned)."""
        event = self._event(event_id)
        signal = event.event_signals[0]
        event.event_signals = [
            self._signal(
                signal.signal_name, signal.signal_type, [(start, duration, import_limit_mw)], None
            )
        ]
        event.active_period = objects.ActivePeriod(dtstart=start, duration=duration)
        modification = int(utils.increment_event_modification_number(event))
        self.server.events_updated[self.ven_id] = True
        return modification

    async def cancel(self, event_id: str) -> None:
        """The event marked cancelled (the VEN learns it at its next poll)."""
        self._event(event_id)
        self.server.cancel_event(self.ven_id, event_id)

    def forget_ven(self) -> None:
        """As a VTN that lost its registrations: the VEN's next message is answered with
        ``oadrRequestReregistration``."""
        self._known = False

    def opt_of(self, event_id: str, modification_number: int | None = None) -> str | None:
        """The VEN's latest answer to the event (to that version of it); None: none yet."""
        for answer in reversed(self.opts):
            if answer.event_id == event_id and modification_number in (
                None,
                answer.modification_number,
            ):
                return answer.opt_type
        return None

    def _event(self, event_id: str) -> Any:
        for event in self.server.events.get(self.ven_id, []):
            if event.event_descriptor.event_id == event_id:
                return event
        raise KeyError(f"no event {event_id!r} at this VTN")

    @staticmethod
    def _signal(
        signal_name: str,
        signal_type: str,
        intervals: Sequence[tuple[datetime, timedelta, float]],
        measurement: Any,
    ) -> Any:
        return objects.EventSignal(
            intervals=[
                objects.Interval(dtstart=start, duration=duration, signal_payload=value, uid=i)
                for i, (start, duration, value) in enumerate(intervals)
            ],
            signal_name=signal_name,
            signal_type=signal_type,
            signal_id=utils.generate_id(),
            measurement=measurement,
        )

    # ---- what the VEN says -------------------------------------------------------------------

    def _record_opts(self, payload: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        for answer in payload.get("event_responses") or []:
            self.opts.append(
                OptAnswer(
                    str(answer.get("event_id")),
                    int(answer.get("modification_number") or 0),
                    str(answer.get("opt_type")),
                    now,
                )
            )

    def _register(self, payload: dict[str, Any]) -> tuple[str, str] | bool:
        """Only the configured VEN (with the configured certificate, over TLS) registers."""
        fingerprint = payload.get("fingerprint")
        expected = self.tls.ven_fingerprint if self.tls is not None else None
        if payload.get("ven_name") != self.ven_name or fingerprint != expected:
            self.refused_registrations += 1
            log.warning("vtn2b_registration_refused", ven_name=payload.get("ven_name"))
            return False
        self.registrations += 1
        self._known = True
        return self.ven_id, REGISTRATION_ID

    def _ven_lookup(self, ven_id: str) -> dict[str, Any] | None:
        if ven_id != self.ven_id or not self._known:
            return None
        return {
            "ven_id": self.ven_id,
            "ven_name": self.ven_name,
            "fingerprint": self.tls.ven_fingerprint if self.tls is not None else None,
            "registration_id": REGISTRATION_ID,
        }

    def _register_report(self, report: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Every report the VEN offers is requested, at its shortest sampling period."""
        specifier = str(report.get("report_specifier_id"))
        wanted: list[tuple[Any, ...]] = []
        for description in report.get("report_descriptions") or []:
            r_id = str(description["r_id"])
            self.offered[specifier, r_id] = dict(description)
            reading = str(description.get("reading_type"))
            period = description["sampling_rate"]["min_period"]
            wanted.append((r_id, partial(self._report, specifier, r_id, reading), period))
        return wanted

    def _report(
        self, specifier: str, r_id: str, reading: str, values: list[tuple[datetime, Any]]
    ) -> None:
        self.reports.append(
            ReportValues(
                specifier,
                r_id,
                reading,
                tuple((at, float(value)) for at, value in values),
                datetime.now(UTC),
            )
        )


def _answered(ven_id: str, event_id: str, opt_type: str) -> None:
    """openleadr's per-event callback: the answers are recorded for every version already
    (:attr:`Vtn2b.opts`); this one only hears the first."""
    del ven_id, event_id, opt_type
