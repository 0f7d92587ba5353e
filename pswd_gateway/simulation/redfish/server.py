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
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.asgi import AsgiListener
from pswd_gateway.simulation.redfish.backend import RedfishTwinBackend
from pswd_gateway.simulation.redfish.documents import SESSIONS, V1
from pswd_gateway.simulation.redfish.events import (
    SSE_HEADERS,
    ReportFeed,
    Telemetry,
    last_event_id,
)
from pswd_gateway.simulation.redfish.registry import EXCEPTION_HANDLERS, unauthorised
from pswd_gateway.simulation.redfish.resources import ChassisResources, service_root, versions
from pswd_gateway.simulation.redfish.sessions import Sessions

__all__ = ["RedfishTwinServer"]

log = get_logger("simulation.redfish")

STOP_TIMEOUT_S: Final = 2.0


class _Gate:
    """Pure ASGI front: trailing slashes, authentication, ``OData-Version``, request count."""

    def __init__(self, app: ASGIApp, server: RedfishTwinServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        self.server.requests_total += 1

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"odata-version", b"4.0")]
            await send(message)

        if not self.server.sessions.authorise(scope):
            await unauthorised().response()(scope, receive, send_with_version)
            return
        await self.app(scope, receive, send_with_version)


class RedfishTwinServer:
    """One BMC endpoint. ``port=0`` binds a free port; :attr:`port` tells which after start.

    ``sse_interval_s`` is the period of the streamed MetricReport; ``telemetry=False`` serves a
    BMC without TelemetryService and EventService (clients must GET each chassis).
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
    ) -> None:
        if not (math.isfinite(sse_interval_s) and sse_interval_s > 0):
            raise ValueError(
                f"sse_interval_s must be a positive number of seconds, not {sse_interval_s}"
            )
        self.backend = backend
        self.host = host
        self.port = port
        self.sse_interval_s = sse_interval_s
        self.telemetry = telemetry
        self.requests_total = 0
        self.last_event_ids: deque[str | None] = deque(maxlen=256)
        """``Last-Event-ID`` of each SSE request, newest last (``None``: a fresh subscription)."""
        self.sessions = Sessions(username, password)
        self._chassis = ChassisResources(backend)
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
            self._app, self.host, self.port, name="Redfish twin", stop_timeout_s=STOP_TIMEOUT_S
        )
        await listener.start()
        self.port = listener.port
        self._listener = listener
        log.info(
            "redfish_twin_started",
            host=self.host,
            port=self.port,
            chassis=len(self.backend.chassis_ids()),
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
        routes = [
            Route("/redfish", versions),
            Route(V1, self._root),
            Route(V1 + "/SessionService", sessions.service),
            Route(SESSIONS, sessions.members, methods=["GET"]),
            Route(SESSIONS, sessions.login, methods=["POST"]),
            Route(SESSIONS + "/{sid}", sessions.session, methods=["GET", "DELETE"]),
            Route(V1 + "/Chassis", chassis.members),
            Route(c, chassis.chassis),
            Route(c + "/PowerSubsystem", chassis.power_subsystem),
            Route(c + "/EnvironmentMetrics", chassis.environment_metrics),
            Route(c + "/Sensors", chassis.sensors),
            Route(c + "/Sensors/{sid}", chassis.sensor),
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
                Route(V1 + "/EventService/SSE", self._sse),
            ]
        return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)

    async def _root(self, _: Request) -> Response:
        return JSONResponse(service_root(telemetry=self.telemetry))

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
