"""One BMC endpoint: the route table, the front gate, and the listener's lifecycle.

The resources live beside this module (``sessions``, ``resources``, ``events``); this one wires
them to URIs and serves them with the gateway's own :class:`AsgiListener` (uvicorn inside the
running loop, on a socket it binds, so the port is known before the first request).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.asgi import AsgiListener
from pswd_gateway.simulation.redfish.accounts import ACCOUNT_SERVICE, Accounts
from pswd_gateway.simulation.redfish.backend import RedfishTwinBackend
from pswd_gateway.simulation.redfish.documents import SESSIONS, V1, RedfishJSON
from pswd_gateway.simulation.redfish.events import (
    SSE_HEADERS,
    ReportFeed,
    Telemetry,
    last_event_id,
)
from pswd_gateway.simulation.redfish.odata import METADATA, OData
from pswd_gateway.simulation.redfish.registry import (
    EXCEPTION_HANDLERS,
    RedfishError,
    unauthorised,
)
from pswd_gateway.simulation.redfish.resources import (
    ChassisResources,
    PowerResource,
    service_root,
    versions,
)
from pswd_gateway.simulation.redfish.sessions import Sessions

__all__ = ["RedfishTwinServer"]

log = get_logger("simulation.redfish")

STOP_TIMEOUT_S: Final = 2.0
SSE: Final = V1 + "/EventService/SSE"


class _Gate:
    """Pure ASGI front: trailing slashes, authentication, the request checks every Redfish
    service makes (``OData-Version``, ``$`` query options), the headers every response carries
    (``OData-Version``, ``Cache-Control``, ``Allow``), and the request count."""

    def __init__(self, app: Starlette, server: RedfishTwinServer) -> None:
        self.app = app
        self.server = server
        self._methods = [
            (route.path_regex, frozenset(route.methods or ()))
            for route in app.routes
            if isinstance(route, Route)
        ]

    def _allow(self, path: str) -> bytes:
        """The ``Allow`` header of ``path``: every method some route serves there."""
        methods: set[str] = set()
        for regex, served in self._methods:
            if regex.match(path):
                methods |= served
        return ", ".join(sorted(methods)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        self.server.requests_total += 1
        allow = self._allow(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [(b"odata-version", b"4.0"), (b"cache-control", b"no-cache")]
                if allow:
                    extra.append((b"allow", allow))
                headers += [(name, value) for name, value in extra if name not in present]
                message["headers"] = headers
            await send(message)

        if not self.server.sessions.authorise(scope):
            await unauthorised().response()(scope, receive, send_with_headers)
            return
        refusal = _refusal(scope)
        if refusal is not None:
            await refusal.response()(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _refusal(scope: Scope) -> RedfishError | None:
    """What a Redfish service refuses before routing: an ``OData-Version`` other than 4.0
    (412) and any ``$`` query option, as the twin supports none (501) — but ``$filter`` on the
    event stream, which ``SSEFilterPropertiesSupported`` offers (one report: nothing to drop)."""
    for name, value in scope["headers"]:
        if name.lower() == b"odata-version" and value.strip() != b"4.0":
            text = value.decode("latin-1")[:32]
            return RedfishError(412, "GeneralError", f"OData-Version {text} is not supported.")
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    allowed = {"$filter"} if scope["path"] == SSE else set()
    if any(name.startswith("$") and name not in allowed for name, _ in query):
        return RedfishError(501, "QueryNotSupported")
    return None


class RedfishTwinServer:
    """One BMC endpoint. ``port=0`` binds a free port; :attr:`port` tells which after start.

    ``sse_interval_s`` is the period of the streamed MetricReport; ``telemetry=False`` serves a
    BMC without TelemetryService and EventService (clients must GET each chassis).
    ``power_resource="Power"`` serves the older ``Power`` resource instead of
    ``EnvironmentMetrics``, ``PowerSubsystem`` and ``Controls`` (and so needs
    ``telemetry=False``: the MetricReport names EnvironmentMetrics properties). ``tls_cert`` and
    ``tls_key`` (PEM files) make it an HTTPS endpoint, as BMCs are.
    """

    def __init__(
        self,
        backend: RedfishTwinBackend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "pswd-demo",
        password: str = "pswd-demo-bmc",  # noqa: S107 - the demo BMC credential, loopback only
        sse_interval_s: float = 0.25,
        telemetry: bool = True,
        power_resource: PowerResource = "EnvironmentMetrics",
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        if not (math.isfinite(sse_interval_s) and sse_interval_s > 0):
            raise ValueError(
                f"sse_interval_s must be a positive number of seconds, not {sse_interval_s}"
            )
        if telemetry and power_resource != "EnvironmentMetrics":
            raise ValueError(
                f"a BMC serving the {power_resource} resource has no telemetry: "
                "pass telemetry=False"
            )
        self.backend = backend
        self.host = host
        self.port = port
        self.sse_interval_s = sse_interval_s
        self.telemetry = telemetry
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.requests_total = 0
        self.last_event_ids: deque[str | None] = deque(maxlen=256)
        """``Last-Event-ID`` of each SSE request, newest last (``None``: a fresh subscription)."""
        self.sessions = Sessions(username, password)
        self._chassis = ChassisResources(backend, power_resource)
        self._accounts = Accounts(username)
        self._odata = OData(service_root(telemetry=telemetry))
        self._telemetry = Telemetry(backend, sse_interval_s)
        self._feed = ReportFeed(self._telemetry.next_report, sse_interval_s)
        self._listener: AsgiListener | None = None
        self._app = _Gate(self._starlette(), self)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (``port=0``: a free port, then :attr:`port` is it); idempotent."""
        if self._listener is not None:
            return
        self._feed = ReportFeed(self._telemetry.next_report, self.sse_interval_s)
        listener = AsgiListener(
            self._app,
            self.host,
            self.port,
            name="Redfish twin",
            stop_timeout_s=STOP_TIMEOUT_S,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
        )
        await listener.start()
        self.port = listener.port
        self._listener = listener
        log.info(
            "redfish_twin_started",
            host=self.host,
            port=self.port,
            chassis=len(self.backend.chassis_ids()),
            power_resource=self._chassis.power_resource,
            tls=self.tls_cert is not None,
            sse_interval_s=self.sse_interval_s,
        )

    async def stop(self) -> None:
        """End open event streams, then stop listening within a bounded wait; idempotent."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        await self._feed.close()
        await listener.stop()
        log.info("redfish_twin_stopped", port=self.port)

    # ---- what tests and the twin may poke ------------------------------------------------------

    def session_ids(self) -> list[str]:
        """Ids of the open sessions."""
        return self.sessions.ids()

    def revoke_sessions(self) -> None:
        """Forget every session (as a BMC reboot or a session timeout would); streams end."""
        self.sessions.clear()
        self._feed.end_streams()

    def end_streams(self) -> None:
        """Drop every open event stream (a network blip); clients may resume."""
        self._feed.end_streams()

    @property
    def stream_listeners(self) -> int:
        """Open event-stream connections."""
        return self._feed.listeners

    # ---- the application -----------------------------------------------------------------------

    def _starlette(self) -> Starlette:
        c = V1 + "/Chassis/{cid}"
        chassis, sessions = self._chassis, self.sessions
        accounts, a = self._accounts, ACCOUNT_SERVICE
        routes = [
            Route("/redfish", versions),
            Route(V1, self._root),
            Route(V1 + "/odata", self._odata.service),
            Route(METADATA, self._odata.metadata),
            Route(V1 + "/SessionService", sessions.service),
            Route(SESSIONS, sessions.members, methods=["GET"]),
            Route(SESSIONS, sessions.login, methods=["POST"]),
            Route(SESSIONS + "/Members", sessions.login, methods=["POST"]),
            Route(SESSIONS + "/{sid}", sessions.session, methods=["GET", "DELETE"]),
            Route(a, accounts.service),
            Route(a + "/Accounts", accounts.accounts),
            Route(a + "/Accounts/{aid}", accounts.account),
            Route(a + "/Roles", accounts.roles),
            Route(a + "/Roles/{rid}", accounts.role),
            Route(V1 + "/Chassis", chassis.members),
            Route(c, chassis.chassis),
            Route(c + "/Sensors", chassis.sensors),
            Route(c + "/Sensors/{sid}", chassis.sensor),
        ]
        if chassis.power_resource == "Power":
            routes.append(Route(c + "/Power", chassis.power, methods=["GET", "PATCH"]))
        else:
            routes += [
                Route(c + "/PowerSubsystem", chassis.power_subsystem),
                Route(c + "/EnvironmentMetrics", chassis.environment_metrics),
                Route(c + "/Controls", chassis.controls),
                Route(c + "/Controls/PowerLimit", chassis.power_limit, methods=["GET", "PATCH"]),
            ]
        if self.telemetry:
            t, telemetry = V1 + "/TelemetryService", self._telemetry
            routes += [
                Route(t, telemetry.service),
                Route(t + "/MetricReportDefinitions", telemetry.definitions),
                Route(t + "/MetricReportDefinitions/{rid}", telemetry.definition),
                Route(t + "/MetricReports", telemetry.reports),
                Route(t + "/MetricReports/{rid}", telemetry.report),
                Route(V1 + "/EventService", telemetry.event_service),
                Route(SSE, self._sse),
            ]
        return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)

    async def _root(self, _: Request) -> Response:
        return RedfishJSON(service_root(telemetry=self.telemetry))

    async def _sse(self, request: Request) -> Response:
        """The event stream: the feed's frames while the session that opened it lives."""
        if request.method == "HEAD":
            return Response(media_type="text/event-stream", headers=SSE_HEADERS)
        raw = request.headers.get("last-event-id")
        self.last_event_ids.append(raw)
        sid = request.scope.get("state", {}).get("session")
        feed = self._feed

        async def frames() -> AsyncIterator[bytes]:
            async with contextlib.aclosing(feed.events(last_event_id(raw))) as events:
                async for frame in events:
                    if sid is not None and sid not in self.sessions:
                        return  # the session was deleted: its stream ends, as on a real BMC
                    yield frame

        return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)
