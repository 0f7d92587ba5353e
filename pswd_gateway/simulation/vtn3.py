"""A small OpenADR 3 VTN on loopback: what the tests, ``pswd-gateway bench dr`` and the demo
talk to.

It serves the part of the OpenADR 3 API a VEN uses (``/auth/server``, ``/auth/token`` with
client credentials, ``/programs``, ``/events``, ``/vens``, ``/subscriptions``, ``/reports``),
with bearer tokens, ``skip``/``limit`` paging and RFC 9457 problems, and sends webhook
notifications (``{objectType, operation, object}`` with the subscription's ``bearerToken``) to
loopback callbacks only. Its business logic is Python: :meth:`OpenAdr3Vtn.issue_limit`,
:meth:`~OpenAdr3Vtn.update_limit`, :meth:`~OpenAdr3Vtn.publish` and :meth:`~OpenAdr3Vtn.cancel`
change the events and return once every subscriber was notified (each answer is kept in
:attr:`~OpenAdr3Vtn.deliveries`). The reports VENs post are kept in
:attr:`~OpenAdr3Vtn.reports`. Bodies are checked with the ``openadr3`` package's models of the
JSON; the VTN listens on 127.0.0.1 at a free port and nowhere else.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from openadr3.entities.raw import RawEvent, RawReport, RawSubscription
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.asgi import AsgiListener
from pswd_gateway.security.tls import default_client_context

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PROGRAM",
    "Delivery",
    "OpenAdr3Vtn",
]

log = get_logger("vtn3")

HOST: Final = "127.0.0.1"
DEFAULT_PROGRAM: Final = "pswd-dr"
DEFAULT_CLIENT_ID: Final = "pswd-ven"
DEFAULT_CLIENT_SECRET: Final = "pswd-demo-ven-secret"  # noqa: S105 -- the demo's published secret
PROBLEM_JSON: Final = "application/problem+json"
PAGE_MAX: Final = 50


Auth = Annotated[str | None, Header()]
"""The ``Authorization`` header (FastAPI resolves these by name: module level)."""
Skip = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=0, le=PAGE_MAX)]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook notification sent: where, what, and the VEN's answer."""

    url: str
    operation: str
    event_id: str
    status: int | None
    """The HTTP status of the answer; None when none came (``error`` says why)."""
    error: str | None = None
    body: Any = None


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _iso_duration(duration: timedelta) -> str:
    seconds = duration.total_seconds()
    if seconds.is_integer():
        return f"PT{int(seconds)}S"
    return f"PT{seconds:.3f}".rstrip("0").rstrip(".") + "S"


class _Problem(Exception):  # noqa: N818 -- an answer
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def _problem(status: int, title: str, detail: str, instance: str) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body["instance"] = instance
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_JSON)


class OpenAdr3Vtn:
    """The simulated VTN: one program, the events its business logic issues."""

    def __init__(
        self,
        *,
        program_name: str = DEFAULT_PROGRAM,
        clients: Mapping[str, str] | None = None,
        token_ttl_s: int = 3600,
        timeout_s: float = 5.0,
        notify: bool = True,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.clients = dict(clients or {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET})
        """client_id → client_secret of the VENs it knows."""
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self.notify = notify
        """Send webhook notifications (off: VENs learn of events by polling only)."""
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        """Serve HTTPS with this certificate (for 127.0.0.1) and key."""
        self.ca_file = ca_file
        """Verify ``https://`` callbacks against this CA (absent: the system's CAs)."""
        created = _now()
        self.program: dict[str, Any] = {
            "id": "program-1",
            "createdDateTime": created,
            "modificationDateTime": created,
            "objectType": "PROGRAM",
            "programName": program_name,
            "payloadDescriptors": [
                {
                    "objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                    "payloadType": "IMPORT_CAPACITY_LIMIT",
                    "units": "KW",
                }
            ],
        }
        self.events: dict[str, dict[str, Any]] = {}
        self.vens: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.reports: list[dict[str, Any]] = []
        """Every report a VEN posted, as kept (with its id and clientID)."""
        self.deliveries: list[Delivery] = []
        self.tokens_issued = 0
        self.requests_refused_401 = 0
        self._tokens: dict[str, tuple[str, float]] = {}
        self._next = 0
        self._listener: AsgiListener | None = None
        self._http: httpx.AsyncClient | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The VTN's base URL (``http(s)://127.0.0.1:<port>``)."""
        if self._listener is None:
            raise RuntimeError("the VTN is not started")
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://{HOST}:{self._listener.port}"

    @property
    def program_id(self) -> str:
        return str(self.program["id"])

    async def start(self) -> None:
        verify = default_client_context()
        if self.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.ca_file))
        self._http = httpx.AsyncClient(timeout=self.timeout_s, trust_env=False, verify=verify)
        self._listener = AsgiListener(
            self._app(), HOST, 0, name="vtn3", tls_cert=self.tls_cert, tls_key=self.tls_key
        )
        await self._listener.start()
        log.info("vtn3_started", url=self.url, program=self.program["programName"])

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def expire_tokens(self) -> None:
        """Every token issued so far is refused from now on (401): VENs must fetch another."""
        self._tokens.clear()

    # ---- business logic ----------------------------------------------------------------------

    async def issue_limit(
        self,
        import_limit_mw: float,
        start: datetime | None,
        duration: timedelta | None,
        *,
        units: str = "KW",
    ) -> str:
        """An ``IMPORT_CAPACITY_LIMIT`` event of one interval (``start`` None: now; ``duration``
        None: no end), in ``units`` (``KW`` or ``MW``); its id once subscribers were told."""
        return await self.publish(self._limit_event(import_limit_mw, start, duration, units))

    async def update_limit(
        self,
        event_id: str,
        import_limit_mw: float,
        start: datetime | None = None,
        duration: timedelta | None = None,
        *,
        units: str = "KW",
    ) -> None:
        """The event's limit (and window) changed; subscribers told (``UPDATE``)."""
        event = self._limit_event(import_limit_mw, start, duration, units)
        await self.publish({**event, "id": event_id})

    async def publish(self, event: Mapping[str, Any]) -> str:
        """Create (no ``id``, or a new one) or update an event of any payload; checked with
        the ``openadr3`` model; subscribers told. Its id."""
        body = dict(event)
        body.setdefault("programID", self.program_id)
        RawEvent.model_validate(body, strict=True)
        event_id = body.get("id") or self._id("event")
        operation = "UPDATE" if event_id in self.events else "CREATE"
        now = _now()
        created = self.events[event_id]["createdDateTime"] if operation == "UPDATE" else now
        kept = {
            **body,
            "id": event_id,
            "createdDateTime": created,
            "modificationDateTime": now,
            "objectType": "EVENT",
        }
        self.events[event_id] = kept
        await self._notify(operation, kept)
        return str(event_id)

    async def cancel(self, event_id: str) -> None:
        """The event deleted; subscribers told (``DELETE``)."""
        event = self.events.pop(event_id)
        await self._notify("DELETE", event)

    def _limit_event(
        self, import_limit_mw: float, start: datetime | None, duration: timedelta | None, units: str
    ) -> dict[str, Any]:
        scale = {"KW": 1000.0, "MW": 1.0}[units]
        period: dict[str, str] = {
            "start": start.isoformat() if start is not None else "0001-01-01T00:00:00Z"
        }
        period["duration"] = _iso_duration(duration) if duration is not None else "P9999Y"
        return {
            "programID": self.program_id,
            "eventName": f"import limit {import_limit_mw:g} MW",
            "payloadDescriptors": [
                {
                    "objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                    "payloadType": "IMPORT_CAPACITY_LIMIT",
                    "units": units,
                }
            ],
            "intervalPeriod": period,
            "intervals": [
                {
                    "id": 0,
                    "payloads": [
                        {"type": "IMPORT_CAPACITY_LIMIT", "values": [import_limit_mw * scale]}
                    ],
                }
            ],
        }

    def _id(self, kind: str) -> str:
        self._next += 1
        return f"{kind}-{self._next}"

    async def _notify(self, operation: str, event: dict[str, Any]) -> None:
        """Tell every subscriber of the event's program, in turn (loopback callbacks only)."""
        if not self.notify or self._http is None:
            return
        for sub in list(self.subscriptions.values()):
            if sub.get("programID") not in {None, event.get("programID")}:
                continue
            for op in sub["objectOperations"]:
                if "EVENT" not in op["objects"] or operation not in op["operations"]:
                    continue
                await self._deliver(op, operation, event)

    async def _deliver(self, op: Mapping[str, Any], operation: str, event: dict[str, Any]) -> None:
        url = str(op["callbackUrl"])
        host = urlsplit(url).hostname or ""
        if host not in {"127.0.0.1", "::1", "localhost"}:
            self.deliveries.append(Delivery(url, operation, event["id"], None, "not loopback"))
            return
        headers = {}
        if op.get("bearerToken"):
            headers["Authorization"] = f"Bearer {op['bearerToken']}"
        notification = {"objectType": "EVENT", "operation": operation, "object": event}
        assert self._http is not None
        try:
            answer = await self._http.post(url, json=notification, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.deliveries.append(Delivery(url, operation, event["id"], None, error))
            log.warning("vtn3_notification_failed", url=url, error=error)
            return
        try:
            body = answer.json()
        except ValueError:
            body = answer.text
        self.deliveries.append(
            Delivery(url, operation, event["id"], answer.status_code, None, body)
        )

    # ---- the API -----------------------------------------------------------------------------

    def _caller(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        known = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if known is None or known[1] < time.monotonic():
            self.requests_refused_401 += 1
            raise _Problem(401, "Unauthorized", "a valid bearer token is required")
        return known[0]

    def _app(self) -> FastAPI:  # noqa: C901, PLR0915 -- one route table
        app = FastAPI(
            title="pswd simulated OpenADR 3 VTN", openapi_url=None, docs_url=None, redoc_url=None
        )

        async def problem(request: Request, exc: Exception) -> Response:
            if isinstance(exc, _Problem):
                return _problem(exc.status, exc.title, exc.detail, request.url.path)
            if isinstance(exc, RequestValidationError):
                return _problem(400, "Bad Request", str(exc.errors()[:1]), request.url.path)
            status = exc.status_code if isinstance(exc, HTTPException) else 500
            return _problem(status, "Error", str(exc), request.url.path)

        app.add_exception_handler(_Problem, problem)
        app.add_exception_handler(RequestValidationError, problem)
        app.add_exception_handler(HTTPException, problem)

        def page(items: list[dict[str, Any]], skip: int, limit: int) -> list[dict[str, Any]]:
            return items[skip : skip + limit]

        async def body_of(request: Request, model: type[BaseModel]) -> dict[str, Any]:
            try:
                body = await request.json()
            except ValueError:
                raise _Problem(400, "Bad Request", "the body is not JSON") from None
            if not isinstance(body, dict):
                raise _Problem(400, "Bad Request", "the body must be a JSON object")
            try:
                model.model_validate(body, strict=True)
            except ValidationError as exc:
                raise _Problem(400, "Bad Request", str(exc.errors()[:1])) from None
            return body

        def metadata(kind: str, client: str | None = None) -> dict[str, Any]:
            now = _now()
            meta: dict[str, Any] = {
                "id": self._id(kind.lower()),
                "createdDateTime": now,
                "modificationDateTime": now,
                "objectType": kind,
            }
            if client is not None:
                meta["clientID"] = client
            return meta

        @app.get("/auth/server")
        async def auth_server() -> dict[str, str]:
            return {"tokenURL": f"{self.url}/auth/token"}

        @app.post("/auth/token")
        async def auth_token(request: Request) -> JSONResponse:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            if form.get("grant_type") != "client_credentials":
                return JSONResponse({"error": "unsupported_grant_type"}, 400)
            client = form.get("client_id", "")
            expected = self.clients.get(client)
            if expected is None or not secrets.compare_digest(
                expected.encode(), form.get("client_secret", "").encode()
            ):
                return JSONResponse({"error": "invalid_client"}, 401)
            token = secrets.token_urlsafe(24)
            self._tokens[token] = (client, time.monotonic() + self.token_ttl_s)
            self.tokens_issued += 1
            return JSONResponse(
                {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl_s}
            )

        @app.get("/programs")
        async def programs(
            authorization: Auth = None, skip: Skip = 0, limit: Limit = PAGE_MAX
        ) -> list[dict[str, Any]]:
            self._caller(authorization)
            return page([self.program], skip, limit)

        @app.get("/programs/{program_id}")
        async def program(program_id: str, authorization: Auth = None) -> dict[str, Any]:
            self._caller(authorization)
            if program_id != self.program_id:
                raise _Problem(404, "Not Found", f"no program {program_id}")
            return self.program

        @app.get("/events")
        async def events(
            authorization: Auth = None,
            programID: str | None = None,  # noqa: N803 -- the specification's name
            skip: Skip = 0,
            limit: Limit = PAGE_MAX,
        ) -> list[dict[str, Any]]:
            self._caller(authorization)
            found = [e for e in self.events.values() if programID in {None, e["programID"]}]
            return page(found, skip, limit)

        @app.get("/events/{event_id}")
        async def event(event_id: str, authorization: Auth = None) -> dict[str, Any]:
            self._caller(authorization)
            if event_id not in self.events:
                raise _Problem(404, "Not Found", f"no event {event_id}")
            return self.events[event_id]

        @app.get("/vens")
        async def vens(
            authorization: Auth = None,
            venName: str | None = None,  # noqa: N803
            skip: Skip = 0,
            limit: Limit = PAGE_MAX,
        ) -> list[dict[str, Any]]:
            self._caller(authorization)
            found = [v for v in self.vens.values() if venName in {None, v["venName"]}]
            return page(found, skip, limit)

        @app.post("/vens", status_code=201)
        async def create_ven(request: Request, authorization: Auth = None) -> dict[str, Any]:
            client = self._caller(authorization)
            try:
                body = await request.json()
            except ValueError:
                raise _Problem(400, "Bad Request", "the body is not JSON") from None
            name = body.get("venName") if isinstance(body, dict) else None
            if not isinstance(name, str) or not 1 <= len(name) <= 128:
                raise _Problem(400, "Bad Request", "venName (1-128 characters) is required")
            if any(v["venName"] == name for v in self.vens.values()):
                raise _Problem(409, "Conflict", f"a VEN named {name} exists")
            ven = {**metadata("VEN", client), "venName": name}
            self.vens[ven["id"]] = ven
            return ven

        @app.get("/subscriptions")
        async def subscriptions(
            authorization: Auth = None,
            programID: str | None = None,  # noqa: N803
            clientName: str | None = None,  # noqa: N803
            skip: Skip = 0,
            limit: Limit = PAGE_MAX,
        ) -> list[dict[str, Any]]:
            self._caller(authorization)
            found = [
                s
                for s in self.subscriptions.values()
                if programID in {None, s.get("programID")} and clientName in {None, s["clientName"]}
            ]
            return page(found, skip, limit)

        @app.post("/subscriptions", status_code=201)
        async def create_subscription(
            request: Request, authorization: Auth = None
        ) -> dict[str, Any]:
            client = self._caller(authorization)
            body = await body_of(request, RawSubscription)
            sub = {**body, **metadata("SUBSCRIPTION", client)}
            self.subscriptions[sub["id"]] = sub
            return sub

        @app.delete("/subscriptions/{subscription_id}")
        async def delete_subscription(
            subscription_id: str, authorization: Auth = None
        ) -> dict[str, Any]:
            self._caller(authorization)
            sub = self.subscriptions.pop(subscription_id, None)
            if sub is None:
                raise _Problem(404, "Not Found", f"no subscription {subscription_id}")
            return sub

        @app.get("/reports")
        async def reports(
            authorization: Auth = None,
            eventID: str | None = None,  # noqa: N803
            clientName: str | None = None,  # noqa: N803
            skip: Skip = 0,
            limit: Limit = PAGE_MAX,
        ) -> list[dict[str, Any]]:
            self._caller(authorization)
            found = [
                r
                for r in self.reports
                if eventID in {None, r["eventID"]} and clientName in {None, r["clientName"]}
            ]
            return page(found, skip, limit)

        @app.post("/reports", status_code=201)
        async def create_report(request: Request, authorization: Auth = None) -> dict[str, Any]:
            client = self._caller(authorization)
            body = await body_of(request, RawReport)
            if body["eventID"] not in self.events:
                raise _Problem(400, "Bad Request", f"no event {body['eventID']}")
            report = {**body, **metadata("REPORT", client)}
            self.reports.append(report)
            return report

        return app
