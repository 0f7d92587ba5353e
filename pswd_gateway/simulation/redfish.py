"""Redfish BMC twin: a DMTF Redfish HTTP server in front of simulated GPU racks.

The physics lives elsewhere; this server asks a :class:`RedfishTwinBackend` for readings at
request time and hands power-limit writes back to it. Each rack is a ``Chassis`` (type ``Rack``)
with ``EnvironmentMetrics``, ``PowerSubsystem``, ``Sensors`` and a ``Controls/PowerLimit``
Control. One ``MetricReport`` (``TelemetryService/MetricReports/PowerReport``) carries every
rack's power, inlet temperature and power limit, and the same report is streamed as server-sent
events (``EventService.ServerSentEventUri``) every ``sse_interval_s`` — a client need not GET
hundreds of resources. Sessions (``X-Auth-Token``) and HTTP Basic are accepted; everything but
``/redfish`` and ``/redfish/v1`` needs one. Every refusal is a Redfish error body from the Base
message registry. ``docs/redfish.md`` lists the resources.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pswd_gateway.logging import get_logger

__all__ = ["ChassisReading", "RedfishTwinBackend", "RedfishTwinServer"]

log = get_logger("simulation.redfish")

V1: Final = "/redfish/v1"
SESSIONS: Final = V1 + "/SessionService/Sessions"
REPORT_ID: Final = "PowerReport"
MAX_SESSIONS: Final = 64
SSE_HISTORY: Final = 64
"""Events kept for clients that reconnect with ``Last-Event-ID``."""
MAX_BODY_BYTES: Final = 64 * 1024
START_TIMEOUT_S: Final = 5.0
STOP_TIMEOUT_S: Final = 2.0
REGISTRY: Final = "Base.1.18"

# @odata.type of every resource served, in one place
TYPES: Final[Mapping[str, str]] = {
    "ServiceRoot": "#ServiceRoot.v1_16_0.ServiceRoot",
    "SessionService": "#SessionService.v1_1_9.SessionService",
    "SessionCollection": "#SessionCollection.SessionCollection",
    "Session": "#Session.v1_7_0.Session",
    "ChassisCollection": "#ChassisCollection.ChassisCollection",
    "Chassis": "#Chassis.v1_25_0.Chassis",
    "PowerSubsystem": "#PowerSubsystem.v1_1_0.PowerSubsystem",
    "EnvironmentMetrics": "#EnvironmentMetrics.v1_3_2.EnvironmentMetrics",
    "SensorCollection": "#SensorCollection.SensorCollection",
    "Sensor": "#Sensor.v1_8_1.Sensor",
    "ControlCollection": "#ControlCollection.ControlCollection",
    "Control": "#Control.v1_5_0.Control",
    "TelemetryService": "#TelemetryService.v1_3_0.TelemetryService",
    "MetricReportDefinitionCollection": (
        "#MetricReportDefinitionCollection.MetricReportDefinitionCollection"
    ),
    "MetricReportDefinition": "#MetricReportDefinition.v1_4_2.MetricReportDefinition",
    "MetricReportCollection": "#MetricReportCollection.MetricReportCollection",
    "MetricReport": "#MetricReport.v1_5_0.MetricReport",
    "EventService": "#EventService.v1_10_0.EventService",
    "Message": "#Message.v1_1_1.Message",
}

_OK: Final = {"State": "Enabled", "Health": "OK"}
SENSORS: Final[Mapping[str, tuple[str, str, str]]] = {
    # sensor id -> (ReadingType, ReadingUnits (UCUM), PhysicalContext)
    "TotalPower": ("Power", "W", "Chassis"),
    "InletTemp": ("Temperature", "Cel", "Intake"),
    "TotalEnergy": ("EnergykWh", "kW.h", "Chassis"),
}
_CONTROL_READ_ONLY: Final = frozenset(
    {"Id", "Name", "AllowableMin", "AllowableMax", "ControlType", "SetPointUnits", "Sensor"}
)


@dataclass(frozen=True, slots=True)
class ChassisReading:
    """What a chassis (a rack of GPU servers) reports at one instant."""

    power_w: float
    inlet_temp_c: float
    energy_j: float
    timestamp: float  # POSIX seconds


class RedfishTwinBackend(Protocol):
    """What the Redfish twin needs from the physics of one BMC's racks."""

    def chassis_ids(self) -> Sequence[str]: ...

    def chassis_reading(self, chassis_id: str) -> ChassisReading: ...

    def power_limit_range_w(self, chassis_id: str) -> tuple[float, float]: ...

    def power_limit_w(self, chassis_id: str) -> float | None: ...

    def set_power_limit_w(self, chassis_id: str, watts: float | None) -> None: ...


# ---- Redfish errors (DSP8011 Base message registry) ------------------------------------------

# message key -> (message with %1, %2 arguments, severity, resolution)
_MESSAGES: Final[Mapping[str, tuple[str, str, str]]] = {
    "NoValidSession": (
        "There is no valid session established with the implementation.",
        "Critical",
        "Establish a session before attempting any operations.",
    ),
    "ResourceAtUriUnauthorized": (
        "While accessing the resource at '%1', the service received an authorization error '%2'.",
        "Critical",
        (
            "Ensure that the appropriate access is provided for the service in order for it to "
            "access the URI."
        ),
    ),
    "ResourceNotFound": (
        "The requested resource of type %1 named '%2' was not found.",
        "Critical",
        "Provide a valid resource identifier and resubmit the request.",
    ),
    "OperationNotAllowed": (
        "The HTTP method is not allowed on this resource.",
        "Critical",
        "None.",
    ),
    "MalformedJSON": (
        (
            "The request body submitted was malformed JSON and could not be parsed by the "
            "receiving service."
        ),
        "Critical",
        "Ensure that the request body is valid JSON and resubmit the request.",
    ),
    "CreateFailedMissingReqProperties": (
        (
            "The create operation failed because the required property %1 was missing from the "
            "request."
        ),
        "Critical",
        (
            "Correct the body to include the required property with a valid value and resubmit "
            "the request if the operation failed."
        ),
    ),
    "NoOperation": (
        (
            "The request body submitted contain no data to act upon and no changes to the "
            "resource took place."
        ),
        "Warning",
        "Add properties in the JSON object and resubmit the request.",
    ),
    "PropertyUnknown": (
        "The property %1 is not in the list of valid properties for the resource.",
        "Warning",
        (
            "Remove the unknown property from the request body and resubmit the request if the "
            "operation failed."
        ),
    ),
    "PropertyNotWritable": (
        "The property %1 is a read-only property and cannot be assigned a value.",
        "Warning",
        (
            "Remove the property from the request body and resubmit the request if the operation "
            "failed."
        ),
    ),
    "PropertyMissing": (
        "The property %1 is a required property and must be included in the request.",
        "Warning",
        (
            "Ensure that the property is in the request body and has a valid value and resubmit "
            "the request if the operation failed."
        ),
    ),
    "PropertyValueTypeError": (
        "The value '%1' for the property %2 is not a type that the property can accept.",
        "Warning",
        (
            "Correct the value for the property in the request body and resubmit the request if "
            "the operation failed."
        ),
    ),
    "PropertyValueNotInList": (
        "The value '%1' for the property %2 is not in the list of acceptable values.",
        "Warning",
        (
            "Choose a value from the enumeration list that the implementation can support and "
            "resubmit the request if the operation failed."
        ),
    ),
    "PropertyValueOutOfRange": (
        "The value '%1' for the property %2 is not in the supported range of acceptable values.",
        "Warning",
        (
            "Correct the value for the property in the request body and resubmit the request if "
            "the operation failed."
        ),
    ),
    "PropertyValueConflict": (
        (
            "The property '%1' could not be written because its value would conflict with the "
            "value of the '%2' property."
        ),
        "Warning",
        "No resolution is required.",
    ),
    "GeneralError": (
        "%1",
        "Critical",
        "None.",
    ),
    "InternalError": (
        "The request failed due to an internal service error.  The service is still operational.",
        "Critical",
        "Resubmit the request.  If the problem persists, consider resetting the service.",
    ),
}


class RedfishError(Exception):
    """A refusal rendered as a Redfish error body, e.g. ``RedfishError(400, "NoOperation")``."""

    def __init__(
        self, status: int, key: str, *args: str, headers: Mapping[str, str] | None = None
    ) -> None:
        template, severity, resolution = _MESSAGES[key]
        message = template
        for i, arg in enumerate(args, start=1):
            message = message.replace(f"%{i}", arg)
        super().__init__(message)
        self.status = status
        self.message_id = f"{REGISTRY}.{key}"
        self.message = message
        self.args_list = [str(a) for a in args]
        self.severity = severity
        self.resolution = resolution
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        info = {
            "@odata.type": TYPES["Message"],
            "MessageId": self.message_id,
            "Message": self.message,
            "MessageArgs": self.args_list,
            "MessageSeverity": self.severity,
            "Resolution": self.resolution,
        }
        body = {
            "error": {
                "code": self.message_id,
                "message": self.message,
                "@Message.ExtendedInfo": [info],
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _unauthorised() -> RedfishError:
    return RedfishError(401, "NoValidSession", headers={"WWW-Authenticate": 'Basic realm="BMC"'})


# ---- helpers ---------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds; a time that is not one becomes now."""
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError):
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _num(value: float | None) -> float | None:
    """A JSON-safe reading: ``None`` (``null``) for NaN and infinities."""
    return value if value is not None and math.isfinite(value) else None


def _ref(path: str) -> dict[str, str]:
    return {"@odata.id": path}


def _chassis_uri(cid: str) -> str:
    return f"{V1}/Chassis/{quote(cid, safe='')}"


def _collection(path: str, kind: str, name: str, member_paths: Sequence[str]) -> dict[str, Any]:
    return {
        "@odata.id": path,
        "@odata.type": TYPES[kind],
        "Name": name,
        "Members@odata.count": len(member_paths),
        "Members": [_ref(m) for m in member_paths],
    }


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


async def _json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 MalformedJSON."""
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RedfishError(
                413, "GeneralError", f"The request body exceeds {MAX_BODY_BYTES} bytes."
            )
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise RedfishError(400, "MalformedJSON") from None
    if not isinstance(body, dict):
        raise RedfishError(400, "MalformedJSON")
    return body


def _finite_number(value: object) -> float | None:
    """A JSON number as a float (``None`` for booleans, strings, …); huge numbers are infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _control_patch(body: Mapping[str, Any]) -> dict[str, Any]:
    """The writable properties of a Control PATCH; a 400 for anything else."""
    props = {k: v for k, v in body.items() if not k.startswith("@")}
    for prop in props:
        if prop in _CONTROL_READ_ONLY:
            raise RedfishError(400, "PropertyNotWritable", prop)
        if prop not in ("SetPoint", "ControlMode"):
            raise RedfishError(400, "PropertyUnknown", prop)
    if not props:
        raise RedfishError(400, "NoOperation")
    mode = props.get("ControlMode", "Automatic")
    if mode not in ("Automatic", "Disabled"):
        raise RedfishError(400, "PropertyValueNotInList", _json_text(mode), "ControlMode")
    return props


def _json_text(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


# ---- the SSE feed ----------------------------------------------------------------------------


class _ReportFeed:
    """One producer for every SSE client.

    While anyone listens, a report is built every ``interval_s`` (on absolute deadlines) and kept
    in a short history, so a client that reconnects with ``Last-Event-ID`` gets what it missed.
    """

    def __init__(self, build: Callable[[], tuple[int, dict[str, Any]]], interval_s: float) -> None:
        self._build = build
        self.interval_s = interval_s
        self._events: deque[tuple[int, bytes]] = deque(maxlen=SSE_HISTORY)
        self._published = asyncio.Event()
        self._listeners = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._epoch = 0  # bumped to end every open stream

    @property
    def listeners(self) -> int:
        return self._listeners

    async def events(self, last_event_id: int | None) -> AsyncGenerator[bytes]:
        """Frames after ``last_event_id`` (or from the newest report), then live ones."""
        if self._closed:
            return
        self._listeners += 1
        try:
            self._ensure_producer()
            cursor = self._cursor(last_event_id)
            epoch = self._epoch
            while not self._closed and epoch == self._epoch:
                published = self._published
                pending = [(seq, frame) for seq, frame in self._events if seq > cursor]
                if not pending:
                    await published.wait()
                    continue
                for seq, frame in pending:
                    cursor = seq
                    yield frame
        finally:
            self._listeners -= 1

    def _cursor(self, last_event_id: int | None) -> int:
        newest = self._events[-1][0] if self._events else 0
        if last_event_id is None or last_event_id > newest:
            return newest - 1 if self._events else 0  # start with the newest report
        return last_event_id

    def _ensure_producer(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._produce(), name="redfish-twin-sse")

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while self._listeners > 0 and not self._closed:
            try:
                seq, doc = self._build()
            except Exception:  # the physics failed: log it, keep the feed alive
                log.exception("redfish_twin_report_failed")
            else:
                data = json.dumps(doc, separators=(",", ":"))
                self._events.append((seq, f"id: {seq}\ndata: {data}\n\n".encode()))
                self._publish()
            deadline += self.interval_s
            now = loop.time()
            deadline = max(deadline, now)  # a late slot is skipped, never queued
            await asyncio.sleep(deadline - now)

    def _publish(self) -> None:
        published, self._published = self._published, asyncio.Event()
        published.set()

    def end_streams(self) -> None:
        """End every open stream (clients reconnect); the feed stays usable."""
        self._epoch += 1
        self._publish()

    async def close(self) -> None:
        """End every stream and stop producing; idempotent."""
        self._closed = True
        self._publish()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# ---- the server ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Session:
    token: str
    user: str
    created: float


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside an application that owns its signals (the twin, the tests)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would take SIGINT/SIGTERM from the main thread for this one server
        yield


async def _started(server: uvicorn.Server, task: asyncio.Task[None], where: str) -> None:
    """Return once ``server`` accepts connections; raise if its task ends first."""
    while not server.started:
        if task.done():
            await task  # surfaces the start-up error
            raise RuntimeError(f"the Redfish twin on {where} stopped during start-up")
        await asyncio.sleep(0.005)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; ``IPPROTO_TCP`` so that asyncio sets TCP_NODELAY."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)  # noqa: FBT003 - the socket API takes a positional flag
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"Redfish twin cannot listen on {host}:{port}: {exc.strerror}"
        ) from exc
    return sock


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

        if not self.server.authorise(scope):
            await _unauthorised().response()(scope, receive, send_with_version)
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
        self.username = username
        self.password = password
        self.sse_interval_s = sse_interval_s
        self.telemetry = telemetry
        self.requests_total = 0
        self.last_event_ids: deque[str | None] = deque(maxlen=256)
        """``Last-Event-ID`` of each SSE request, newest last (``None``: a fresh subscription)."""
        self._sessions: dict[str, _Session] = {}
        self._seq = 0
        self._feed = _ReportFeed(self._next_report, sse_interval_s)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._app = _Gate(self._starlette(), self)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (``port=0``: a free port, then :attr:`port` is it); idempotent.

        uvicorn serves the app inside the running loop on a socket bound here, so the port is
        known before the first request and binding errors name the address.
        """
        if self._server is not None:
            return
        self._feed = _ReportFeed(self._next_report, self.sse_interval_s)
        sock = _listening_socket(self.host, self.port)
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        server = _EmbeddedUvicorn(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"redfish-twin:{self.port}")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await _started(server, task, f"{self.host}:{self.port}")
        except BaseException:
            server.should_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._server, self._task = server, task
        task.add_done_callback(self._served)
        log.info(
            "redfish_twin_started",
            host=self.host,
            port=self.port,
            chassis=len(self.backend.chassis_ids()),
            sse_interval_s=self.sse_interval_s,
        )

    def _served(self, task: asyncio.Task[None]) -> None:
        """Supervision: a server task that ends before stop() is logged, not lost."""
        if task is self._task and not task.cancelled():
            log.error("redfish_twin_server_ended", port=self.port, error=repr(task.exception()))
            self._server = self._task = None

    async def stop(self) -> None:
        """End open event streams, then stop listening within a bounded wait; idempotent."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        await self._feed.close()
        server.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if not done:
            server.force_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log.warning("redfish_twin_stop_forced", port=self.port)
        log.info("redfish_twin_stopped", port=self.port)

    # ---- what tests and the twin may poke ------------------------------------------------------

    def session_ids(self) -> list[str]:
        """Ids of the open sessions."""
        return list(self._sessions)

    def revoke_sessions(self) -> None:
        """Forget every session (as a BMC reboot or a session timeout would); streams end."""
        self._sessions.clear()
        self._feed.end_streams()

    def end_streams(self) -> None:
        """Drop every open event stream (a network blip); clients may resume."""
        self._feed.end_streams()

    @property
    def stream_listeners(self) -> int:
        """Open event-stream connections."""
        return self._feed.listeners

    # ---- authentication ------------------------------------------------------------------------

    def authorise(self, scope: Scope) -> bool:
        """Whether a request may proceed; notes the session it used in ``scope["state"]``."""
        path, method = scope["path"], scope["method"]
        if path in ("/redfish", V1) or (path == SESSIONS and method == "POST"):
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = headers.get("x-auth-token")
        if token is not None:
            for sid, session in self._sessions.items():
                if secrets.compare_digest(token.encode(), session.token.encode()):
                    scope.setdefault("state", {})["session"] = sid
                    return True
            return False
        auth = headers.get("authorization", "")
        if auth[:6].lower() != "basic ":
            return False
        try:
            user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return self._credentials_ok(user, password)

    def _credentials_ok(self, user: str, password: str) -> bool:
        user_ok = secrets.compare_digest(user.encode(), self.username.encode())
        password_ok = secrets.compare_digest(password.encode(), self.password.encode())
        return user_ok and password_ok

    # ---- the application -----------------------------------------------------------------------

    def _starlette(self) -> Starlette:
        c = V1 + "/Chassis/{cid}"
        routes = [
            Route("/redfish", self._version),
            Route(V1, self._root),
            Route(V1 + "/SessionService", self._session_service),
            Route(SESSIONS, self._sessions_get, methods=["GET"]),
            Route(SESSIONS, self._sessions_post, methods=["POST"]),
            Route(SESSIONS + "/{sid}", self._session, methods=["GET", "DELETE"]),
            Route(V1 + "/Chassis", self._chassis_collection),
            Route(c, self._chassis),
            Route(c + "/PowerSubsystem", self._power_subsystem),
            Route(c + "/EnvironmentMetrics", self._environment_metrics),
            Route(c + "/Sensors", self._sensors),
            Route(c + "/Sensors/{sid}", self._sensor),
            Route(c + "/Controls", self._controls),
            Route(c + "/Controls/PowerLimit", self._power_limit, methods=["GET", "PATCH"]),
        ]
        if self.telemetry:
            t = V1 + "/TelemetryService"
            routes += [
                Route(t, self._telemetry_service),
                Route(t + "/MetricReportDefinitions", self._report_definitions),
                Route(t + "/MetricReportDefinitions/{rid}", self._report_definition),
                Route(t + "/MetricReports", self._reports),
                Route(t + "/MetricReports/{rid}", self._report),
                Route(V1 + "/EventService", self._event_service),
                Route(V1 + "/EventService/SSE", self._sse),
            ]
        return Starlette(
            routes=routes,
            exception_handlers={
                RedfishError: _on_redfish_error,
                HTTPException: _on_http_error,
                Exception: _on_unexpected_error,
            },
        )

    # ---- service root and sessions -------------------------------------------------------------

    async def _version(self, _: Request) -> Response:
        return JSONResponse({"v1": V1 + "/"})

    async def _root(self, _: Request) -> Response:
        services = ["Chassis", "SessionService"]
        if self.telemetry:
            services += ["EventService", "TelemetryService"]
        return JSONResponse(
            {
                "@odata.id": V1,
                "@odata.type": TYPES["ServiceRoot"],
                "Id": "RootService",
                "Name": "Root Service",
                "RedfishVersion": "1.18.0",
                "UUID": "5a1e7c4e-0000-4000-8000-00000000b3c0",
                "Vendor": "pswd-gateway",
                "Product": "PSWD digital twin GPU hall BMC",
                **{service: _ref(f"{V1}/{service}") for service in sorted(services)},
                "Links": {"Sessions": _ref(SESSIONS)},
                "ProtocolFeaturesSupported": {
                    "ExcerptQuery": False,
                    "ExpandQuery": {"ExpandAll": False, "Levels": False, "Links": False},
                    "FilterQuery": False,
                    "OnlyMemberQuery": False,
                    "SelectQuery": False,
                },
            }
        )

    async def _session_service(self, _: Request) -> Response:
        return JSONResponse(
            {
                "@odata.id": V1 + "/SessionService",
                "@odata.type": TYPES["SessionService"],
                "Id": "SessionService",
                "Name": "Session Service",
                "ServiceEnabled": True,
                "SessionTimeout": 1800,
                "Sessions": _ref(SESSIONS),
                "Status": _OK,
            }
        )

    async def _sessions_get(self, _: Request) -> Response:
        paths = [f"{SESSIONS}/{sid}" for sid in self._sessions]
        return JSONResponse(_collection(SESSIONS, "SessionCollection", "Session Collection", paths))

    async def _sessions_post(self, request: Request) -> Response:
        body = await _json_object(request)
        for prop in ("UserName", "Password"):
            if prop not in body:
                raise RedfishError(400, "CreateFailedMissingReqProperties", prop)
            if not isinstance(body[prop], str):
                raise RedfishError(400, "PropertyValueTypeError", _json_text(body[prop]), prop)
        user, password = body["UserName"], body["Password"]
        if not self._credentials_ok(user, password):
            log.warning("redfish_twin_login_refused", user=user[:64])
            raise RedfishError(
                401, "ResourceAtUriUnauthorized", SESSIONS, "Invalid username or password"
            )
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda sid: self._sessions[sid].created)
            del self._sessions[oldest]
        sid = secrets.token_hex(8)
        self._sessions[sid] = _Session(secrets.token_urlsafe(24), user, time.time())
        location = f"{SESSIONS}/{sid}"
        return JSONResponse(
            self._session_doc(sid),
            status_code=201,
            headers={"X-Auth-Token": self._sessions[sid].token, "Location": location},
        )

    def _session_doc(self, sid: str) -> dict[str, Any]:
        session = self._sessions[sid]
        return {
            "@odata.id": f"{SESSIONS}/{sid}",
            "@odata.type": TYPES["Session"],
            "Id": sid,
            "Name": "User Session",
            "UserName": session.user,
            "SessionType": "Redfish",
            "CreatedTime": _iso(session.created),
        }

    async def _session(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        if sid not in self._sessions:
            raise RedfishError(404, "ResourceNotFound", "Session", sid)
        if request.method == "DELETE":
            del self._sessions[sid]
            return Response(status_code=204)
        return JSONResponse(self._session_doc(sid))

    # ---- chassis -------------------------------------------------------------------------------

    def _chassis_id(self, request: Request) -> str:
        cid: str = request.path_params["cid"]
        if cid not in self.backend.chassis_ids():
            raise RedfishError(404, "ResourceNotFound", "Chassis", cid)
        return cid

    async def _chassis_collection(self, _: Request) -> Response:
        paths = [_chassis_uri(cid) for cid in self.backend.chassis_ids()]
        return JSONResponse(
            _collection(V1 + "/Chassis", "ChassisCollection", "Chassis Collection", paths)
        )

    async def _chassis(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        uri = _chassis_uri(cid)
        return JSONResponse(
            {
                "@odata.id": uri,
                "@odata.type": TYPES["Chassis"],
                "Id": cid,
                "Name": f"GPU rack {cid}",
                "ChassisType": "Rack",
                "Manufacturer": "pswd-gateway",
                "Model": "digital twin GPU rack",
                "PowerState": "On",
                "Status": _OK,
                "EnvironmentMetrics": _ref(uri + "/EnvironmentMetrics"),
                "PowerSubsystem": _ref(uri + "/PowerSubsystem"),
                "Sensors": _ref(uri + "/Sensors"),
                "Controls": _ref(uri + "/Controls"),
            }
        )

    async def _power_subsystem(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        _, rated = self.backend.power_limit_range_w(cid)
        return JSONResponse(
            {
                "@odata.id": _chassis_uri(cid) + "/PowerSubsystem",
                "@odata.type": TYPES["PowerSubsystem"],
                "Id": "PowerSubsystem",
                "Name": f"Power Subsystem for {cid}",
                "CapacityWatts": _num(rated),
                "Status": _OK,
            }
        )

    def _limit_state(self, cid: str) -> dict[str, Any]:
        lo, hi = self.backend.power_limit_range_w(cid)
        limit = self.backend.power_limit_w(cid)
        return {
            "SetPoint": _num(limit),
            "AllowableMin": _num(lo),
            "AllowableMax": _num(hi),
            "ControlMode": "Disabled" if limit is None else "Automatic",
        }

    async def _environment_metrics(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        reading = self.backend.chassis_reading(cid)
        uri = _chassis_uri(cid)
        return JSONResponse(
            {
                "@odata.id": uri + "/EnvironmentMetrics",
                "@odata.type": TYPES["EnvironmentMetrics"],
                "Id": "EnvironmentMetrics",
                "Name": f"Environment Metrics for {cid}",
                "PowerWatts": {
                    "DataSourceUri": uri + "/Sensors/TotalPower",
                    "Reading": _num(reading.power_w),
                },
                "TemperatureCelsius": {
                    "DataSourceUri": uri + "/Sensors/InletTemp",
                    "Reading": _num(reading.inlet_temp_c),
                },
                "EnergykWh": {
                    "DataSourceUri": uri + "/Sensors/TotalEnergy",
                    "Reading": _num(reading.energy_j / 3.6e6),
                },
                "PowerLimitWatts": {
                    "DataSourceUri": uri + "/Controls/PowerLimit",
                    **self._limit_state(cid),
                },
            }
        )

    async def _sensors(self, request: Request) -> Response:
        uri = _chassis_uri(self._chassis_id(request)) + "/Sensors"
        paths = [f"{uri}/{sid}" for sid in SENSORS]
        return JSONResponse(_collection(uri, "SensorCollection", "Sensors", paths))

    async def _sensor(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        sid = request.path_params["sid"]
        if sid not in SENSORS:
            raise RedfishError(404, "ResourceNotFound", "Sensor", sid)
        kind, units, context = SENSORS[sid]
        reading = self.backend.chassis_reading(cid)
        value = {
            "TotalPower": reading.power_w,
            "InletTemp": reading.inlet_temp_c,
            "TotalEnergy": reading.energy_j / 3.6e6,
        }[sid]
        doc: dict[str, Any] = {
            "@odata.id": f"{_chassis_uri(cid)}/Sensors/{sid}",
            "@odata.type": TYPES["Sensor"],
            "Id": sid,
            "Name": f"{cid} {sid}",
            "ReadingType": kind,
            "ReadingUnits": units,
            "Reading": _num(value),
            "PhysicalContext": context,
            "Status": _OK,
        }
        if kind == "Power":
            doc["ElectricalContext"] = "Total"
        return JSONResponse(doc)

    async def _controls(self, request: Request) -> Response:
        uri = _chassis_uri(self._chassis_id(request)) + "/Controls"
        return JSONResponse(
            _collection(uri, "ControlCollection", "Controls", [uri + "/PowerLimit"])
        )

    async def _power_limit(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        if request.method == "PATCH":
            await self._patch_power_limit(cid, await _json_object(request))
        uri = _chassis_uri(cid)
        reading = self.backend.chassis_reading(cid)
        return JSONResponse(
            {
                "@odata.id": uri + "/Controls/PowerLimit",
                "@odata.type": TYPES["Control"],
                "Id": "PowerLimit",
                "Name": f"Power Limit for {cid}",
                "PhysicalContext": "Chassis",
                "ControlType": "Power",
                "SetPointUnits": "W",
                **self._limit_state(cid),
                "Sensor": {
                    "DataSourceUri": uri + "/Sensors/TotalPower",
                    "Reading": _num(reading.power_w),
                },
                "RelatedItem": [_ref(uri)],
                "Status": _OK,
            }
        )

    async def _patch_power_limit(self, cid: str, body: Mapping[str, Any]) -> None:
        """Validate a PATCH of the PowerLimit Control and hand the new limit to the backend.

        ``SetPoint`` within [AllowableMin, AllowableMax] sets the limit; ``SetPoint: null`` or
        ``ControlMode: Disabled`` clears it; ``ControlMode: Automatic`` alone keeps it.
        """
        props = _control_patch(body)
        mode = props.get("ControlMode", "Automatic")
        if props.get("SetPoint") is None:
            if mode == "Disabled" or "SetPoint" in props:
                self._set_limit(cid, None)
            elif self.backend.power_limit_w(cid) is None:
                raise RedfishError(400, "PropertyMissing", "SetPoint")
            return
        if mode == "Disabled":
            raise RedfishError(400, "PropertyValueConflict", "SetPoint", "ControlMode")
        raw = props["SetPoint"]
        watts = _finite_number(raw)
        if watts is None:
            raise RedfishError(400, "PropertyValueTypeError", _json_text(raw), "SetPoint")
        lo, hi = self.backend.power_limit_range_w(cid)
        if not lo <= watts <= hi:
            raise RedfishError(400, "PropertyValueOutOfRange", _json_text(raw), "SetPoint")
        self._set_limit(cid, watts)

    def _set_limit(self, cid: str, watts: float | None) -> None:
        try:
            self.backend.set_power_limit_w(cid, watts)
        except ValueError:  # the physics has a narrower idea of the range
            raise RedfishError(
                400, "PropertyValueOutOfRange", _json_text(watts), "SetPoint"
            ) from None
        log.info("redfish_twin_power_limit", chassis=cid, watts=watts)

    # ---- telemetry and events ------------------------------------------------------------------

    async def _telemetry_service(self, _: Request) -> Response:
        t = V1 + "/TelemetryService"
        return JSONResponse(
            {
                "@odata.id": t,
                "@odata.type": TYPES["TelemetryService"],
                "Id": "TelemetryService",
                "Name": "Telemetry Service",
                "ServiceEnabled": True,
                "MinCollectionInterval": self._duration(),
                "MetricReportDefinitions": _ref(t + "/MetricReportDefinitions"),
                "MetricReports": _ref(t + "/MetricReports"),
                "Status": _OK,
            }
        )

    def _duration(self) -> str:
        return f"PT{self.sse_interval_s:g}S"

    async def _report_definitions(self, _: Request) -> Response:
        uri = V1 + "/TelemetryService/MetricReportDefinitions"
        return JSONResponse(
            _collection(
                uri,
                "MetricReportDefinitionCollection",
                "Metric Report Definition Collection",
                [f"{uri}/{REPORT_ID}"],
            )
        )

    async def _report_definition(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        if rid != REPORT_ID:
            raise RedfishError(404, "ResourceNotFound", "MetricReportDefinition", rid)
        pattern = V1 + "/Chassis/{ChassisId}/EnvironmentMetrics#/"
        return JSONResponse(
            {
                "@odata.id": f"{V1}/TelemetryService/MetricReportDefinitions/{REPORT_ID}",
                "@odata.type": TYPES["MetricReportDefinition"],
                "Id": REPORT_ID,
                "Name": "Rack power, inlet temperature and power limit",
                "MetricReportDefinitionType": "Periodic",
                "MetricReportDefinitionEnabled": True,
                "Schedule": {"RecurrenceInterval": self._duration()},
                "ReportActions": ["RedfishEvent", "LogToMetricReportsCollection"],
                "ReportUpdates": "Overwrite",
                "Metrics": [
                    {
                        "MetricId": "PowerWatts",
                        "MetricProperties": [pattern + "PowerWatts/Reading"],
                    },
                    {
                        "MetricId": "TemperatureCelsius",
                        "MetricProperties": [pattern + "TemperatureCelsius/Reading"],
                    },
                    {
                        "MetricId": "PowerLimitWatts",
                        "MetricProperties": [pattern + "PowerLimitWatts/SetPoint"],
                    },
                ],
                "Wildcards": [{"Name": "ChassisId", "Values": list(self.backend.chassis_ids())}],
                "MetricReport": _ref(f"{V1}/TelemetryService/MetricReports/{REPORT_ID}"),
                "Status": _OK,
            }
        )

    async def _reports(self, _: Request) -> Response:
        uri = V1 + "/TelemetryService/MetricReports"
        return JSONResponse(
            _collection(
                uri, "MetricReportCollection", "Metric Report Collection", [f"{uri}/{REPORT_ID}"]
            )
        )

    async def _report(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        if rid != REPORT_ID:
            raise RedfishError(404, "ResourceNotFound", "MetricReport", rid)
        return JSONResponse(self._next_report()[1])

    def _next_report(self) -> tuple[int, dict[str, Any]]:
        """The power report, read from the backend now, with the next ``ReportSequence``."""
        values: list[dict[str, str]] = []
        newest = -math.inf
        for cid in self.backend.chassis_ids():
            reading = self.backend.chassis_reading(cid)
            if math.isfinite(reading.timestamp):
                newest = max(newest, reading.timestamp)
            stamp = _iso(reading.timestamp)
            prefix = _chassis_uri(cid) + "/EnvironmentMetrics#/"
            limit = self.backend.power_limit_w(cid)
            for metric, prop, value in (
                ("PowerWatts", "PowerWatts/Reading", reading.power_w),
                ("TemperatureCelsius", "TemperatureCelsius/Reading", reading.inlet_temp_c),
                ("PowerLimitWatts", "PowerLimitWatts/SetPoint", limit),
            ):
                if value is not None and math.isfinite(value):
                    values.append(
                        {
                            "MetricId": metric,
                            "MetricValue": repr(float(value)),
                            "Timestamp": stamp,
                            "MetricProperty": prefix + prop,
                        }
                    )
        self._seq += 1
        uri = f"{V1}/TelemetryService/MetricReports/{REPORT_ID}"
        return self._seq, {
            "@odata.id": uri,
            "@odata.type": TYPES["MetricReport"],
            "Id": REPORT_ID,
            "Name": "Rack power report",
            "ReportSequence": str(self._seq),
            "Timestamp": _iso(newest if math.isfinite(newest) else time.time()),
            "MetricReportDefinition": _ref(
                f"{V1}/TelemetryService/MetricReportDefinitions/{REPORT_ID}"
            ),
            "MetricValues": values,
        }

    async def _event_service(self, _: Request) -> Response:
        return JSONResponse(
            {
                "@odata.id": V1 + "/EventService",
                "@odata.type": TYPES["EventService"],
                "Id": "EventService",
                "Name": "Event Service",
                "ServiceEnabled": True,
                "EventFormatTypes": ["MetricReport"],
                "ServerSentEventUri": V1 + "/EventService/SSE",
                "SSEFilterPropertiesSupported": {"MetricReportDefinition": True},
                "Status": _OK,
            }
        )

    async def _sse(self, request: Request) -> Response:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":
            return Response(media_type="text/event-stream", headers=headers)
        raw = request.headers.get("last-event-id")
        self.last_event_ids.append(raw)
        last = (
            int(raw)
            if raw is not None and raw.isascii() and raw.isdigit() and len(raw) < 19
            else None
        )
        sid = request.scope.get("state", {}).get("session")
        feed = self._feed

        async def frames() -> AsyncIterator[bytes]:
            async with contextlib.aclosing(feed.events(last)) as events:
                async for frame in events:
                    if sid is not None and sid not in self._sessions:
                        return  # the session was deleted: its stream ends, as on a real BMC
                    yield frame

        return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


async def _on_redfish_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RedfishError)
    return exc.response()


async def _on_unexpected_error(_: Request, exc: Exception) -> Response:
    """A bug or a backend failure: a Redfish InternalError body (uvicorn logs the traceback)."""
    log.error("redfish_twin_internal_error", error=repr(exc))
    return RedfishError(500, "InternalError").response()


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as Redfish errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error = RedfishError(405, "OperationNotAllowed", headers=exc.headers)
    elif exc.status_code == 404:
        error = RedfishError(404, "ResourceNotFound", "Resource", request.url.path)
    else:
        error = RedfishError(exc.status_code, "GeneralError", str(exc.detail))
    return error.response()
