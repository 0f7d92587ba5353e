"""The OpenADR 3 VEN: a VTN's events in as grid signals, the site's load out as reports.

At start the VEN binds its callback listener (loopback, or TLS) and starts one supervised task
that connects to the VTN, then polls and reports:

1. **Connect** (retried with a back-off while the VTN is unreachable): an OAuth2 client
   credentials token (``POST <token URL>``; a 401 later fetches a new one and repeats the
   request once); its VEN object looked up by ``venName`` (``GET /vens?venName=``) or created
   (``POST /vens``, ``VEN_VEN_REQUEST``); the configured programs found by ``programName``;
   per program a subscription to its events (``CREATE``, ``UPDATE``, ``DELETE``) whose
   ``callbackUrl`` is the listener and whose ``bearerToken`` is a secret drawn at start (the
   VTN presents it with every notification; earlier subscriptions of this VEN are deleted).
2. **Events**: a notification (``POST /openadr3/notify``, the bearer token checked before the
   body is read, at most ``max_notification_bytes``) or a poll of ``GET /events?programID=``
   every ``poll_interval_s`` hands the event to :func:`~pswd_gateway.openadr.mapping3.map_event`;
   each request it answers is submitted through :class:`~pswd_gateway.openadr.site.VenSite`
   (journalled and audited as ``vtn:<vtn_name>``, source ``openadr3``) before the notification
   is answered 200. An updated event replaces its signals (same key; keys it no longer has are
   withdrawn); a deleted event (``DELETE`` notification, or gone from a complete poll) withdraws
   them. An event seen before, unchanged, is not submitted again.
3. **Refusals**: what cannot be read or acted on is answered 4xx with an RFC 9457 problem
   (webhook), logged (``openadr3_event_refused``), audited (``openadr3 event refused``) and
   counted; no signal changes.
4. **Reports** every ``report_interval_s`` for each event with a signal in force
   (:mod:`pswd_gateway.openadr.reports3`): usage and forecast each time; the heat offer (with
   a heat plant) when it differs from the one that event last received.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from openadr3.entities.raw import RawProgram, RawReport, RawSubscription, RawVen
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pswd_gateway.config import OpenAdr3Config, is_loopback
from pswd_gateway.domain.grid_signals import GridSignal, SignalInvalidError, SignalSource
from pswd_gateway.domain.identity import Identity
from pswd_gateway.errors import ConfigError, NotFoundError, PswdError
from pswd_gateway.journal import AuditEntry
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.asgi import AsgiListener
from pswd_gateway.openadr.mapping3 import (
    EventRefusedError,
    EventRequest,
    EventSignals,
    MappedSignal,
    event_id_of,
    event_key_prefix,
    event_of_key,
    interval_of_key,
    map_event,
)
from pswd_gateway.openadr.reports3 import forecast_report, heat_offer_report, usage_report
from pswd_gateway.openadr.site import VenSite, vtn_identity
from pswd_gateway.security.tls import default_client_context
from pswd_gateway.tasks import cancel_and_wait

__all__ = ["NOTIFY_PATH", "OpenAdr3Ven", "Outcome", "VtnError"]

log = get_logger("openadr3")

NOTIFY_PATH: Final = "/openadr3/notify"
"""The callback path of the subscription (``callbackUrl``)."""
PROBLEM_JSON: Final = "application/problem+json"
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
"""A VTN answer larger than this is not read to its end."""
PAGE: Final = 50
"""The specification's largest ``limit``."""
MAX_PAGES: Final = 20
"""A listing longer than this many pages is read as incomplete (nothing is withdrawn on it)."""
TOKEN_MARGIN_S: Final = 30.0
"""A token is renewed this long before the VTN said it expires."""
RETRY_MAX_S: Final = 60.0
START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 1.0
ANONYMOUS: Final = Identity(name="unauthenticated", role="none")

_M = TypeVar("_M", bound=BaseModel)


class VtnError(PswdError):
    """The VTN could not be reached, or answered what the VEN cannot use: where and what."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"OpenADR 3 VTN {where}: {message}")
        self.where = where


class _Token(BaseModel):
    """The token endpoint's answer (RFC 6749 §5.1)."""

    model_config = ConfigDict(extra="ignore")

    access_token: str = Field(min_length=1, max_length=4096)
    token_type: str = Field(pattern=r"^(?i:bearer)$")
    expires_in: int | None = Field(default=None, ge=1)


class _Notification(BaseModel):
    """A webhook notification's envelope (the specification's ``notification``)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    objectType: Literal["PROGRAM", "EVENT", "REPORT", "SUBSCRIPTION", "VEN", "RESOURCE"]  # noqa: N815 -- the JSON name
    operation: Literal["CREATE", "READ", "UPDATE", "DELETE"]
    object: dict[str, Any]


class _Refusal(Exception):  # noqa: N818 -- an answer, not an error of the VEN
    """A notification refused: the problem's status, type, title and detail."""

    def __init__(
        self, status: int, slug: str, title: str, detail: str, *, field: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.field = field

    def response(self) -> Response:
        body: dict[str, Any] = {
            "type": f"urn:pswd:problem:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": NOTIFY_PATH,
        }
        if self.field is not None:
            body["pointer"] = self.field
        headers = {"WWW-Authenticate": 'Bearer realm="openadr3"'} if self.status == 401 else None
        return JSONResponse(body, self.status, headers=headers, media_type=PROBLEM_JSON)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event message."""

    status: Literal["accepted", "unchanged", "withdrawn", "refused", "failed"]
    event_id: str | None
    signals: tuple[str, ...] = ()
    """Accepted (or withdrawn) signal ids."""
    why: str | None = None
    field: str | None = None


class OpenAdr3Ven:
    """The OpenADR 3 VEN of one site (a supervised component)."""

    name = "openadr3"

    def __init__(self, config: OpenAdr3Config, site: VenSite) -> None:
        self.config = config
        self.site = site
        self.vtn = vtn_identity(config.vtn_name)
        self.events_received_total = 0
        """Event messages handled: notifications, and new or changed events seen by a poll."""
        self.events_refused_total = 0
        self.last_event_s: float | None = None
        """Signal to action of the last event: from its arrival to its signals in force, s."""
        self.polls_total = 0
        """Complete passes over every program's events."""
        self.polls_failed_total = 0
        self.reports_sent_total = 0
        self.reports_failed_total = 0
        self.tokens_fetched_total = 0
        self.connected = asyncio.Event()
        """Set once the VEN is registered, its programs found and its subscriptions made."""
        self.ven_id: str | None = None
        self.programs: dict[str, str] = {}
        """programID → programName of the programs followed."""
        self._program_descriptors: dict[str, list[object]] = {}
        self._subscriptions: list[str] = []
        self._bearer = secrets.token_urlsafe(32)
        self._secret = ""
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_url: str | None = config.token_url
        self._http: httpx.AsyncClient | None = None
        self._listener: AsgiListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._seen: dict[str, str] = {}
        """Event id → fingerprint of the version last handled (accepted or refused)."""
        self._touched: dict[str, float] = {}
        """Event id → when (monotonic) a version of it was last accepted."""
        self._heat_sent: dict[str, object] = {}
        """Event id → the heat offer (its report's resources) the VTN last accepted for it."""

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def callback_url(self) -> str | None:
        """The ``callbackUrl`` the subscriptions carry (None: no webhook)."""
        if self._listener is None:
            return None
        if self.config.callback_url is not None:
            return self.config.callback_url
        scheme = "https" if self.config.callback_tls_cert is not None else "http"
        host = self.config.callback_host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self._listener.port}{NOTIFY_PATH}"

    async def start(self) -> None:
        """Read the secret, bind the callback listener, start connecting (in the background:
        an unreachable VTN does not stop the gateway)."""
        self._secret = self._read_secret()
        self._http = httpx.AsyncClient(
            base_url=self.config.vtn_url,
            timeout=self.config.timeout_s,
            verify=self._client_tls(),
            follow_redirects=False,
            trust_env=False,
        )
        if self.config.webhook:
            self._listener = AsgiListener(
                self._app(),
                self.config.callback_host,
                self.config.callback_port,
                name="openadr3-callback",
                tls_cert=self.config.callback_tls_cert,
                tls_key=self.config.callback_tls_key,
            )
            try:
                await self._listener.start()
            except BaseException:
                self._listener = None
                await self._http.aclose()
                self._http = None
                raise
        self._task = asyncio.create_task(self._run(), name="openadr3")
        log.info(
            "openadr3_started",
            vtn=self.config.vtn_url,
            programs=list(self.config.program_names),
            callback=self.callback_url,
        )

    async def stop(self) -> None:
        """End the task, delete the subscriptions (briefly: best effort), close the listener."""
        await cancel_and_wait(self._task)
        self._task = None
        if self._subscriptions and self._http is not None:
            try:
                async with asyncio.timeout(min(STOP_TIMEOUT_S, self.config.timeout_s)):
                    for sub in self._subscriptions:
                        await self._call("DELETE", f"/subscriptions/{sub}", expect=(200, 204, 404))
            except (VtnError, TimeoutError) as exc:
                log.warning("openadr3_unsubscribe_failed", error=str(exc))
            self._subscriptions = []
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self.connected.clear()
        log.info("openadr3_stopped")

    def unhealthy(self, now: float) -> list[str]:
        """The VEN's task or its listener, when either ended without being stopped (an
        unreachable VTN is not unhealthy: the VEN keeps trying, and says so in the log)."""
        bad = []
        if self._task is not None and self._task.done():
            bad.append("openadr3")
        if self._listener is not None and self._listener.unhealthy(now):
            bad.append("listener:openadr3")
        return bad

    def _read_secret(self) -> str:
        path = self.config.client_secret_file
        if path is None:
            return self.config.client_secret.get_secret_value()
        try:
            return path.read_text(encoding="utf-8").removesuffix("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                str(path), [("openadr3.client_secret_file", f"cannot read {path}: {exc}")]
            ) from None

    def _client_tls(self) -> ssl.SSLContext:
        if self.config.ca_file is None:
            return default_client_context()
        context = ssl.create_default_context(cafile=str(self.config.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._connect()
                break
            except VtnError as exc:
                log.warning("openadr3_connect_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        await asyncio.gather(self._poll_loop(), self._report_loop())

    async def _connect(self) -> None:
        await self._fetch_token()
        self.ven_id = await self._register()
        await self._find_programs()
        if self._listener is not None:
            await self._subscribe()
        self.connected.set()
        log.info(
            "openadr3_connected",
            ven_id=self.ven_id,
            programs=self.programs,
            subscriptions=self._subscriptions,
        )

    # ---- the VTN's API ---------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        token: str | None,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        form: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request within ``timeout_s``; the answer's status and body (at most
        :data:`MAX_RESPONSE_BYTES`)."""
        assert self._http is not None
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self._http.stream(
                    method,
                    url,
                    params=dict(params) if params else None,
                    json=body,
                    data=dict(form) if form else None,
                    headers=headers,
                ) as response:
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > MAX_RESPONSE_BYTES:
                            raise VtnError(url, f"answer larger than {MAX_RESPONSE_BYTES} bytes")
                    return response.status_code, bytes(data)
        except TimeoutError:
            raise VtnError(url, f"no answer within {self.config.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise VtnError(url, f"{type(exc).__name__}: {exc}") from None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        """An authorised request; a 401 fetches a new token and repeats it once. The decoded
        JSON answer (None when empty)."""
        status, data = 0, b""
        for attempt in range(2):
            if self._token is None or time.monotonic() >= self._token_expires:
                await self._fetch_token()
            status, data = await self._send(
                method, path, token=self._token, params=params, body=body
            )
            if status != 401 or attempt:
                break
            log.info("openadr3_token_refused", path=path)
            self._token = None
        if status not in expect:
            raise VtnError(path, f"HTTP {status}: {_excerpt(data)}")
        if not data:
            return None
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise VtnError(path, f"the answer is not JSON: {_excerpt(data)}") from None

    async def _list(self, path: str, params: Mapping[str, str]) -> tuple[list[Any], bool]:
        """Every item of a listing, page by page; whether it was read to its end."""
        items: list[Any] = []
        for page in range(MAX_PAGES):
            got = await self._call(
                "GET", path, params={**params, "skip": page * PAGE, "limit": PAGE}
            )
            if not isinstance(got, list):
                raise VtnError(path, "a listing must be a JSON array")
            items.extend(got)
            if len(got) != PAGE:
                return items, True
        return items, False

    async def _fetch_token(self) -> None:
        """OAuth2 client credentials (RFC 6749 §4.4) at the token URL."""
        url = self._token_url or await self._discover_token_url()
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            "client_secret": self._secret,
        }
        status, data = await self._send("POST", url, token=None, form=form)
        if status != 200:
            raise VtnError(url, f"the token was refused: HTTP {status}: {_excerpt(data)}")
        try:
            token = _Token.model_validate_json(data)
        except ValidationError as exc:
            raise VtnError(url, f"not a token: {_first_error(exc)}") from None
        self._token = token.access_token
        life = float(token.expires_in) if token.expires_in is not None else math.inf
        self._token_expires = time.monotonic() + max(life - TOKEN_MARGIN_S, life / 2)
        self._token_url = url
        self.tokens_fetched_total += 1
        log.info("openadr3_token_fetched", expires_in_s=token.expires_in)

    async def _discover_token_url(self) -> str:
        """``GET /auth/server``'s ``tokenURL``; ``<vtn_url>/auth/token`` when it names none."""
        fallback = f"{self.config.vtn_url}/auth/token"
        status, data = await self._send("GET", "/auth/server", token=None)
        if status != 200:
            return fallback
        try:
            url = json.loads(data).get("tokenURL")
        except (ValueError, RecursionError, AttributeError):
            return fallback
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return fallback
        host = urlsplit(url).hostname or ""
        if url.startswith("http://") and not is_loopback(host):
            raise VtnError("/auth/server", f"tokenURL {url} is plain HTTP off this machine")
        return url

    async def _register(self) -> str:
        """This VEN's object at the VTN: found by ``venName``, else created."""
        name = self.config.ven_name
        found, _ = await self._list("/vens", {"venName": name})
        for raw in found:
            ven = _model(RawVen, raw, "/vens")
            if ven.ven_name == name and ven.id:
                return ven.id
        created = await self._call(
            "POST",
            "/vens",
            body={"objectType": "VEN_VEN_REQUEST", "venName": name},
            expect=(200, 201),
        )
        ven = _model(RawVen, created, "/vens")
        if not ven.id:
            raise VtnError("/vens", "the created VEN has no id")
        log.info("openadr3_ven_registered", ven_id=ven.id, ven_name=name)
        return ven.id

    async def _find_programs(self) -> None:
        listed, _ = await self._list("/programs", {})
        wanted = set(self.config.program_names)
        programs: dict[str, str] = {}
        for raw in listed:
            program = _model(RawProgram, raw, "/programs")
            if program.program_name in wanted and program.id:
                programs[program.id] = program.program_name
                descriptors = raw.get("payloadDescriptors") if isinstance(raw, dict) else None
                self._program_descriptors[program.id] = (
                    list(descriptors) if isinstance(descriptors, list) else []
                )
        missing = wanted - set(programs.values())
        if missing:
            raise VtnError("/programs", f"no program named {', '.join(sorted(missing))}")
        self.programs = programs

    async def _subscribe(self) -> None:
        """One subscription per program to its events; this VEN's earlier ones deleted."""
        name = self.config.ven_name
        earlier, _ = await self._list("/subscriptions", {"clientName": name})
        for raw in earlier:
            sub = _model(RawSubscription, raw, "/subscriptions")
            ours = any(op.callback_url.endswith(NOTIFY_PATH) for op in sub.object_operations)
            if sub.client_name == name and ours and sub.id:
                await self._call("DELETE", f"/subscriptions/{sub.id}", expect=(200, 204, 404))
        self._subscriptions = []
        for program_id in self.programs:
            body = {
                "clientName": name,
                "programID": program_id,
                "objectOperations": [
                    {
                        "objects": ["EVENT"],
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                        "callbackUrl": self.callback_url,
                        "bearerToken": self._bearer,
                    }
                ],
            }
            created = await self._call("POST", "/subscriptions", body=body, expect=(200, 201))
            sub = _model(RawSubscription, created, "/subscriptions")
            if sub.id:
                self._subscriptions.append(sub.id)

    # ---- events ------------------------------------------------------------------------------

    async def handle_event(self, raw: object, origin: str, started: float) -> Outcome:
        """An event as the VTN sent it: mapped, and its signals submitted (or refused, logged
        and audited). ``started``: ``time.perf_counter()`` at its arrival."""
        event_id = event_id_of(raw)
        fingerprint = _fingerprint(raw)
        async with self._lock:
            if event_id is not None and self._seen.get(event_id) == fingerprint:
                return Outcome("unchanged", event_id)
            self.events_received_total += 1
            program = raw.get("programID") if isinstance(raw, dict) else None
            try:
                plan = map_event(
                    raw,
                    now=self.site.signals.clock(),
                    simple_shed_mw=self.config.simple_shed_mw,
                    program_descriptors=self._program_descriptors.get(str(program), []),
                )
                self._check_followed(plan)
                first = plan.event_id not in self._seen
                accepted, withdrawn = await self._apply(plan, first=first)
            except (EventRefusedError, SignalInvalidError) as exc:
                if event_id is not None:
                    self._seen[event_id] = fingerprint
                why = exc.why if isinstance(exc, EventRefusedError) else exc.message
                await self._refused(event_id, why, origin, field=exc.field, who=self.vtn)
                return Outcome("refused", event_id, why=why, field=exc.field)
            except PswdError as exc:  # not journalled: not in force; the next poll tries again
                log.error("openadr3_event_failed", event_id=event_id, origin=origin, error=str(exc))
                return Outcome("failed", event_id, why=str(exc))
            self._seen[plan.event_id] = fingerprint
            self._touched[plan.event_id] = time.monotonic()
            self.last_event_s = time.perf_counter() - started
            log.warning(
                "openadr3_event_applied",
                event_id=plan.event_id,
                origin=origin,
                accepted=accepted,
                withdrawn=withdrawn,
                skipped=list(plan.skipped),
                took_s=round(self.last_event_s, 4),
            )
            return Outcome("accepted", plan.event_id, signals=tuple(accepted))

    def _check_followed(self, plan: EventSignals) -> None:
        if plan.program_id not in self.programs:
            followed = ", ".join(sorted(self.programs)) or "none yet"
            raise EventRefusedError(
                "/programID", f"program {plan.program_id} is not followed ({followed})"
            )

    async def handle_deletion(self, event_id: str, origin: str, started: float) -> Outcome:
        """A deleted event: its open signals withdrawn."""
        async with self._lock:
            self.events_received_total += 1
            try:
                gone = await self._withdraw_event(event_id)
            except PswdError as exc:  # not journalled: still in force; the next poll tries again
                log.error("openadr3_withdraw_failed", event_id=event_id, error=str(exc))
                return Outcome("failed", event_id, why=str(exc))
            self._seen.pop(event_id, None)
            self._touched.pop(event_id, None)
            self.last_event_s = time.perf_counter() - started
        log.warning("openadr3_event_deleted", event_id=event_id, origin=origin, withdrawn=gone)
        return Outcome("withdrawn", event_id, signals=tuple(gone))

    async def _apply(self, plan: EventSignals, *, first: bool) -> tuple[list[str], list[str]]:
        """Submit the event's requests; withdraw its keys it no longer has. A request equal
        to the signal open under its key is not submitted again (for a window worked out from
        "now", only on the event's first sight: a restart must not move its window)."""
        prefix = event_key_prefix(plan.event_id)
        standing = {
            s.key: s for s in self.site.signals.open_signals() if s.key and s.key.startswith(prefix)
        }
        accepted: list[str] = []
        for mapped in plan.signals:
            old = standing.get(mapped.key)
            if old is not None and _same(old, mapped) and (first or not mapped.starts_now):
                continue
            signal = await self.site.submit(
                mapped.request, SignalSource.OPENADR3, self.vtn, key=mapped.key
            )
            accepted.append(signal.id)
        withdrawn: list[str] = []
        for key in sorted(standing.keys() - {m.key for m in plan.signals}):
            withdrawn += await self.site.withdraw(key, self.vtn)
        return accepted, withdrawn

    async def _withdraw_event(self, event_id: str) -> list[str]:
        prefix = event_key_prefix(event_id)
        keys = {
            s.key for s in self.site.signals.open_signals() if s.key and s.key.startswith(prefix)
        }
        gone: list[str] = []
        for key in sorted(keys):
            try:
                gone += await self.site.withdraw(key, self.vtn)
            except NotFoundError:  # withdrawn meanwhile through another door
                continue
        return gone

    async def _refused(
        self,
        event_id: str | None,
        why: str,
        origin: str,
        *,
        who: Identity,
        field: str | None = None,
        peer: str | None = None,
    ) -> None:
        """Count, log and audit a refusal (an audit the journal cannot take is logged)."""
        self.events_refused_total += 1
        log.warning("openadr3_event_refused", event_id=event_id, why=why, origin=origin, peer=peer)
        detail: dict[str, Any] = {"why": why, "origin": origin, "vtn": self.config.vtn_name}
        if field is not None:
            detail["field"] = field
        if peer is not None:
            detail["peer"] = peer
        entry = AuditEntry(
            actor=who.name,
            role=who.role if who is not ANONYMOUS else None,
            action="openadr3 event refused",
            target=event_id,
            outcome="refused",
            detail=detail,
            at=self.site.signals.clock(),
        )
        journal = self.site.signals.journal
        try:
            await journal.call(journal.sync.audit, entry)
        except PswdError as exc:
            log.error("openadr3_audit_failed", event_id=event_id, error=str(exc))

    # ---- polling -----------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.poll()
            except PswdError as exc:  # the VTN (VtnError), or the journal: the next poll retries
                self.polls_failed_total += 1
                log.warning("openadr3_poll_failed", error=str(exc))
            await asyncio.sleep(self.config.poll_interval_s)

    async def poll(self) -> None:
        """``GET /events`` of each program: new and changed events handled; after a complete
        listing, the signals of events no longer listed are withdrawn."""
        began = time.monotonic()
        listed: set[str] = set()
        complete = True
        for program_id in list(self.programs):
            items, whole = await self._list("/events", {"programID": program_id})
            complete = complete and whole
            for raw in items:
                event_id = event_id_of(raw)
                if event_id is not None:
                    listed.add(event_id)
                if isinstance(raw, dict) and raw.get("programID") != program_id:
                    continue  # a VTN that ignores the filter: not this program's event
                await self.handle_event(raw, "poll", time.perf_counter())
        if complete:
            await self._withdraw_missing(listed, began)
        self.polls_total += 1

    async def _withdraw_missing(self, listed: set[str], began: float) -> None:
        """Events whose signals are open but which the VTN no longer lists were deleted
        (unless a notification brought them in since the listing began)."""
        open_events = {event_of_key(s.key) for s in self.site.signals.open_signals()}
        for event_id in sorted(e for e in open_events if e is not None and e not in listed):
            if self._touched.get(event_id, 0.0) >= began:
                continue
            await self.handle_deletion(event_id, "poll", time.perf_counter())
        for event_id in [e for e in self._seen if e not in listed]:
            if self._touched.get(event_id, 0.0) < began:
                self._seen.pop(event_id, None)
                self._touched.pop(event_id, None)

    # ---- reports -----------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.report_interval_s)
            try:
                await self.report()
            except (PswdError, ValidationError) as exc:
                self.reports_failed_total += 1
                log.warning("openadr3_report_failed", error=str(exc))

    async def report(self) -> int:
        """Usage and forecast reports of every event with a signal in force now, and its heat
        offer when that changed; how many reports were sent."""
        now = self.site.signals.clock()
        active: dict[str, list[GridSignal]] = {}
        for signal in self.site.signals.open_signals():
            event_id = event_of_key(signal.key)
            if event_id is not None and signal.in_force(now):
                active.setdefault(event_id, []).append(signal)
        self._heat_sent = {e: sent for e, sent in self._heat_sent.items() if e in active}
        if not active:
            return 0
        measured = self.site.measured_import_mw()
        plan = self.site.forecast()
        planned = [(slot.start, slot.grid_import_mw) for slot in plan.slots]
        sent = 0
        for event_id, signals in sorted(active.items()):
            ends = [s.end for s in signals]
            until = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
            reports = [
                forecast_report(
                    event_id=event_id,
                    ven_name=self.config.ven_name,
                    planned=planned,
                    slot_s=plan.slot_s,
                    now=now,
                    until=until,
                )
            ]
            if measured is not None:
                ids = [i for s in signals if s.key and (i := interval_of_key(s.key)) is not None]
                usage = usage_report(
                    event_id=event_id,
                    ven_name=self.config.ven_name,
                    interval_ids=ids,
                    measured_mw=measured,
                    at=now,
                    period_s=self.config.report_interval_s,
                )
                reports.insert(0, usage)
            for body in reports:
                RawReport.model_validate(body, strict=True)  # the shape the specification has
                await self._call("POST", "/reports", body=body, expect=(200, 201))
                self.reports_sent_total += 1
                sent += 1
        heat = await self._report_heat(sorted(active))
        log.info(
            "openadr3_reported",
            events=sorted(active),
            reports=sent + heat,
            heat_offers=heat,
            measured_mw=measured,
        )
        return sent + heat

    async def _report_heat(self, event_ids: list[str]) -> int:
        """The heat offer to each event whose last one differs (the first, a new 5-minute
        slot, a new plan or heat request): a report period sends it at most once per event,
        and an offer that did not change is not sent again. How many were sent."""
        if self.site.heat_offer is None:
            return 0
        try:
            offer = self.site.heat_offer()
        except ValueError as exc:  # [heat] and a request's supply are validated: not expected
            log.error("openadr3_heat_offer_failed", error=str(exc))
            return 0
        sent = 0
        for event_id in event_ids:
            body = heat_offer_report(event_id=event_id, ven_name=self.config.ven_name, offer=offer)
            if self._heat_sent.get(event_id) == body["resources"]:
                continue
            RawReport.model_validate(body, strict=True)
            await self._call("POST", "/reports", body=body, expect=(200, 201))
            self._heat_sent[event_id] = body["resources"]
            self.reports_sent_total += 1
            sent += 1
        return sent

    # ---- the webhook -------------------------------------------------------------------------

    def _app(self) -> Starlette:
        async def not_here(_request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, HTTPException) else 500
            detail = f"only POST {NOTIFY_PATH} is served here"
            return _Refusal(status, "not-found", "Not served", detail).response()

        return Starlette(
            routes=[Route(NOTIFY_PATH, self._notified, methods=["POST"])],
            exception_handlers={HTTPException: not_here},
        )

    async def _notified(self, request: Request) -> Response:
        """A notification from the VTN: checked, then handled before it is answered."""
        started = time.perf_counter()
        peer = request.client.host if request.client is not None else None
        event_id: str | None = None
        who = ANONYMOUS
        try:
            self._authorise(request.headers.get("authorization"))
            who = self.vtn
            notification = _notification(await self._body(request))
            event_id = event_id_of(notification.object)
            if notification.objectType != "EVENT" or notification.operation == "READ":
                return JSONResponse({"status": "ignored"})
            if notification.operation == "DELETE":
                outcome = await self.handle_deletion(_named(event_id), "webhook", started)
            else:
                outcome = await self.handle_event(notification.object, "webhook", started)
        except _Refusal as refusal:
            self.events_received_total += 1
            await self._refused(event_id, refusal.detail, "webhook", who=who, peer=peer)
            return refusal.response()
        return _answer(outcome)

    def _authorise(self, header: str | None) -> None:
        """The subscription's bearer token, compared in constant time."""
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._bearer.encode()):
            raise _Refusal(
                401,
                "unauthorized",
                "Not authorised",
                "the notification does not carry the subscription's bearer token",
            )

    async def _body(self, request: Request) -> bytes:
        """The body, at most ``max_notification_bytes`` (refused before it is read when its
        declared length is larger), within ``timeout_s``."""
        limit = self.config.max_notification_bytes
        declared = request.headers.get("content-length")
        too_large = _Refusal(413, "too-large", "Body too large", f"more than {limit} bytes")
        if declared is not None:
            if not declared.isdigit():
                raise _Refusal(400, "bad-request", "Bad request", "Content-Length is not a number")
            if int(declared) > limit:
                raise too_large
        data = bytearray()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async for chunk in request.stream():
                    data += chunk
                    if len(data) > limit:
                        raise too_large
        except TimeoutError:
            detail = f"the body did not arrive within {self.config.timeout_s:g} s"
            raise _Refusal(408, "timeout", "Request timeout", detail) from None
        return bytes(data)


# ---- helpers ---------------------------------------------------------------------------------


def _notification(body: bytes) -> _Notification:
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError) as exc:
        detail = f"the body is not JSON: {str(exc)[:200]}"
        raise _Refusal(400, "bad-json", "Not JSON", detail) from None
    try:
        return _Notification.model_validate(decoded)
    except ValidationError as exc:
        detail = f"not an OpenADR 3 notification: {_first_error(exc)}"
        raise _Refusal(400, "bad-notification", "Not a notification", detail) from None


def _named(event_id: str | None) -> str:
    if event_id is None:
        raise _Refusal(400, "bad-notification", "Not a notification", "the event has no valid id")
    return event_id


def _answer(outcome: Outcome) -> Response:
    if outcome.status == "refused":
        why = outcome.why or "refused"
        detail = f"{outcome.field}: {why}" if outcome.field else why
        return _Refusal(
            422, "event-refused", "Event refused", detail, field=outcome.field
        ).response()
    if outcome.status == "failed":
        detail = f"the event could not be kept; it is not in force: {outcome.why}"
        return _Refusal(503, "not-kept", "Not kept", detail).response()
    return JSONResponse(
        {"status": outcome.status, "event": outcome.event_id, "signals": list(outcome.signals)}
    )


def _same(old: GridSignal, new: MappedSignal) -> bool:
    """The open signal asks what ``new`` asks (for a window from "now": whatever its start)."""
    skip = {"start", "end", "baseline_mw"}
    request: EventRequest = new.request
    if old.signal.model_dump(exclude=skip) != request.model_dump(exclude=skip):
        return False
    if new.starts_now:
        return (old.end is None) == (request.end is None)
    return old.signal.start == request.start and old.signal.end == request.end


def _fingerprint(raw: object) -> str:
    try:
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):
        text = repr(raw)
    return hashlib.sha256(text.encode()).hexdigest()


def _model(model: type[_M], raw: object, where: str) -> _M:
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise VtnError(
            where, f"not a valid {model.__name__[3:].lower()}: {_first_error(exc)}"
        ) from None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    loc = "/".join(str(p) for p in first.get("loc", ()))
    return f"/{loc}: {first.get('msg', 'invalid')}"


def _excerpt(data: bytes) -> str:
    return data[:200].decode("utf-8", "replace") or "(empty)"
