"""Redfish BMC twin: a DMTF Redfish HTTP server in front of simulated GPU racks.

The physics lives elsewhere; this server asks a :class:`RedfishTwinBackend` for readings and
hands power-limit writes back to it. Resources follow the DMTF schemas (ServiceRoot v1.16,
Chassis v1.25, EnvironmentMetrics v1.3, PowerSubsystem v1.1, Sensor v1.9, Control v1.5,
SessionService/Session v1.7, TelemetryService v1.3, MetricReport v1.5, EventService v1.10).
One MetricReport (``TelemetryService/MetricReports/PowerReport``) carries every rack's power,
inlet temperature and power limit, and is also streamed over SSE
(``EventService.ServerSentEventUri``), so a client need not GET hundreds of resources.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.asgi import AsgiListener

__all__ = ["ChassisReading", "RedfishTwinBackend", "RedfishTwinServer"]

log = get_logger("simulation.redfish")

V1 = "/redfish/v1"
REPORT_ID = "PowerReport"
MAX_SESSIONS = 64


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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, message_id: str, message: str, **extra: Any) -> JSONResponse:
    """A Redfish error body (Base message registry)."""
    info = {
        "MessageId": f"Base.1.18.{message_id}",
        "Message": message,
        "Severity": "Warning",
        **extra,
    }
    return JSONResponse(
        {
            "error": {
                "code": f"Base.1.18.{message_id}",
                "message": message,
                "@Message.ExtendedInfo": [info],
            }
        },
        status_code=status,
    )


class RedfishTwinServer:
    """One BMC endpoint. ``port=0`` binds a free port; :attr:`port` tells which after start."""

    def __init__(
        self,
        backend: RedfishTwinBackend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "pswd-demo",
        password: str = "pswd-demo-bmc",  # noqa: S107 - the demo BMC credential, loopback only
        sse_interval_s: float = 0.25,
    ) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.sse_interval_s = sse_interval_s
        self.sessions: dict[str, str] = {}  # session id -> token
        self.requests_total = 0
        self._listener: AsgiListener | None = None
        self._report_seq = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._listener is not None:
            return
        listener = AsgiListener(self._app(), self.host, self.port, name="redfish-twin")
        await listener.start()
        self._listener = listener
        self.port = listener.port

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()

    # ---- the application ----------------------------------------------------------------------

    def _app(self) -> Starlette:
        routes = [
            Route("/redfish", self._version),
            Route("/redfish/", self._version),
            Route(V1, self._root),
            Route(V1 + "/", self._root),
            Route(V1 + "/SessionService", self._session_service),
            Route(V1 + "/SessionService/Sessions", self._sessions, methods=["GET", "POST"]),
            Route(V1 + "/SessionService/Sessions/{sid}", self._session, methods=["GET", "DELETE"]),
            Route(V1 + "/Chassis", self._chassis_collection),
            Route(V1 + "/Chassis/{cid}", self._chassis),
            Route(V1 + "/Chassis/{cid}/EnvironmentMetrics", self._environment),
            Route(V1 + "/Chassis/{cid}/PowerSubsystem", self._power_subsystem),
            Route(V1 + "/Chassis/{cid}/Sensors", self._sensors),
            Route(V1 + "/Chassis/{cid}/Sensors/{sid}", self._sensor),
            Route(V1 + "/Chassis/{cid}/Controls", self._controls),
            Route(
                V1 + "/Chassis/{cid}/Controls/PowerLimit",
                self._power_limit,
                methods=["GET", "PATCH"],
            ),
            Route(V1 + "/TelemetryService", self._telemetry),
            Route(V1 + "/TelemetryService/MetricReports", self._reports),
            Route(V1 + "/TelemetryService/MetricReports/{rid}", self._report),
            Route(V1 + "/EventService", self._event_service),
            Route(V1 + "/EventService/SSE", self._sse),
        ]
        return Starlette(routes=routes)

    def _authorised(self, request: Request) -> bool:
        self.requests_total += 1
        token = request.headers.get("x-auth-token")
        if token is not None:
            return any(secrets.compare_digest(token, t) for t in self.sessions.values())
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return secrets.compare_digest(user, self.username) and secrets.compare_digest(
                password, self.password
            )
        return False

    @staticmethod
    def _unauthorised() -> JSONResponse:
        resp = _error(401, "NoValidSession", "There is no valid session established.")
        resp.headers["WWW-Authenticate"] = 'Basic realm="pswd-twin"'
        return resp

    def _known(self, cid: str) -> bool:
        return cid in self.backend.chassis_ids()

    # ---- service root and sessions ---------------------------------------------------------------

    async def _version(self, _: Request) -> JSONResponse:
        return JSONResponse({"v1": "/redfish/v1/"})

    async def _root(self, _: Request) -> JSONResponse:
        return JSONResponse(
            {
                "@odata.id": V1,
                "@odata.type": "#ServiceRoot.v1_16_0.ServiceRoot",
                "Id": "RootService",
                "Name": "PSWD twin BMC",
                "RedfishVersion": "1.18.0",
                "UUID": "5a1e0000-0000-4000-8000-000000000001",
                "Chassis": {"@odata.id": V1 + "/Chassis"},
                "SessionService": {"@odata.id": V1 + "/SessionService"},
                "EventService": {"@odata.id": V1 + "/EventService"},
                "TelemetryService": {"@odata.id": V1 + "/TelemetryService"},
                "Links": {"Sessions": {"@odata.id": V1 + "/SessionService/Sessions"}},
                "ProtocolFeaturesSupported": {
                    "ExpandQuery": {"ExpandAll": False},
                    "SelectQuery": False,
                    "FilterQuery": False,
                },
            }
        )

    async def _session_service(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        return JSONResponse(
            {
                "@odata.id": V1 + "/SessionService",
                "@odata.type": "#SessionService.v1_1_9.SessionService",
                "Id": "SessionService",
                "Name": "Session Service",
                "ServiceEnabled": True,
                "SessionTimeout": 1800,
                "Sessions": {"@odata.id": V1 + "/SessionService/Sessions"},
            }
        )

    async def _sessions(self, request: Request) -> Response:
        if request.method == "GET":
            if not self._authorised(request):
                return self._unauthorised()
            return JSONResponse(
                self._collection(
                    "/SessionService/Sessions",
                    "#SessionCollection.SessionCollection",
                    "Sessions",
                    [f"/SessionService/Sessions/{sid}" for sid in self.sessions],
                )
            )
        try:
            body = await request.json()
            user, password = str(body["UserName"]), str(body["Password"])
        except (ValueError, KeyError, TypeError):
            return _error(
                400, "MalformedJSON", "The request body must be JSON with UserName and Password."
            )
        if not (
            secrets.compare_digest(user, self.username)
            and secrets.compare_digest(password, self.password)
        ):
            log.warning("redfish_login_refused", user=user)
            return _error(401, "ResourceAtUriUnauthorized", "Invalid user name or password.")
        if len(self.sessions) >= MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        sid, token = secrets.token_hex(8), secrets.token_urlsafe(24)
        self.sessions[sid] = token
        location = f"{V1}/SessionService/Sessions/{sid}"
        resp = JSONResponse(self._session_doc(sid, user), status_code=201)
        resp.headers["X-Auth-Token"] = token
        resp.headers["Location"] = location
        return resp

    @staticmethod
    def _session_doc(sid: str, user: str) -> dict[str, Any]:
        return {
            "@odata.id": f"{V1}/SessionService/Sessions/{sid}",
            "@odata.type": "#Session.v1_7_0.Session",
            "Id": sid,
            "Name": "User Session",
            "UserName": user,
        }

    async def _session(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._unauthorised()
        sid = request.path_params["sid"]
        if sid not in self.sessions:
            return _error(404, "ResourceNotFound", f"Session {sid} does not exist.")
        if request.method == "DELETE":
            del self.sessions[sid]
            return Response(status_code=204)
        return JSONResponse(self._session_doc(sid, self.username))

    # ---- chassis ---------------------------------------------------------------------------

    @staticmethod
    def _collection(path: str, odata_type: str, name: str, members: list[str]) -> dict[str, Any]:
        return {
            "@odata.id": V1 + path,
            "@odata.type": odata_type,
            "Name": name,
            "Members@odata.count": len(members),
            "Members": [{"@odata.id": V1 + m} for m in members],
        }

    async def _chassis_collection(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        ids = self.backend.chassis_ids()
        return JSONResponse(
            self._collection(
                "/Chassis",
                "#ChassisCollection.ChassisCollection",
                "Chassis Collection",
                [f"/Chassis/{c}" for c in ids],
            )
        )

    async def _chassis(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        cid = request.path_params["cid"]
        if not self._known(cid):
            return _error(404, "ResourceNotFound", f"Chassis {cid} does not exist.")
        base = f"{V1}/Chassis/{cid}"
        return JSONResponse(
            {
                "@odata.id": base,
                "@odata.type": "#Chassis.v1_25_0.Chassis",
                "Id": cid,
                "Name": f"GPU rack {cid}",
                "ChassisType": "Rack",
                "PowerState": "On",
                "Status": {"State": "Enabled", "Health": "OK"},
                "EnvironmentMetrics": {"@odata.id": base + "/EnvironmentMetrics"},
                "PowerSubsystem": {"@odata.id": base + "/PowerSubsystem"},
                "Sensors": {"@odata.id": base + "/Sensors"},
                "Controls": {"@odata.id": base + "/Controls"},
            }
        )

    def _limit_excerpt(self, cid: str) -> dict[str, Any]:
        lo, hi = self.backend.power_limit_range_w(cid)
        limit = self.backend.power_limit_w(cid)
        return {
            "DataSourceUri": f"{V1}/Chassis/{cid}/Controls/PowerLimit",
            "SetPoint": limit,
            "AllowableMin": lo,
            "AllowableMax": hi,
            "ControlMode": "Disabled" if limit is None else "Automatic",
        }

    async def _environment(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        cid = request.path_params["cid"]
        if not self._known(cid):
            return _error(404, "ResourceNotFound", f"Chassis {cid} does not exist.")
        r = self.backend.chassis_reading(cid)
        base = f"{V1}/Chassis/{cid}"
        return JSONResponse(
            {
                "@odata.id": base + "/EnvironmentMetrics",
                "@odata.type": "#EnvironmentMetrics.v1_3_2.EnvironmentMetrics",
                "Id": "EnvironmentMetrics",
                "Name": f"Environment metrics of {cid}",
                "PowerWatts": {"DataSourceUri": base + "/Sensors/Power", "Reading": r.power_w},
                "TemperatureCelsius": {
                    "DataSourceUri": base + "/Sensors/InletTemp",
                    "Reading": r.inlet_temp_c,
                },
                "EnergykWh": {
                    "DataSourceUri": base + "/Sensors/Energy",
                    "Reading": r.energy_j / 3.6e6,
                },
                "PowerLimitWatts": self._limit_excerpt(cid),
            }
        )

    async def _power_subsystem(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        cid = request.path_params["cid"]
        if not self._known(cid):
            return _error(404, "ResourceNotFound", f"Chassis {cid} does not exist.")
        _, hi = self.backend.power_limit_range_w(cid)
        return JSONResponse(
            {
                "@odata.id": f"{V1}/Chassis/{cid}/PowerSubsystem",
                "@odata.type": "#PowerSubsystem.v1_1_3.PowerSubsystem",
                "Id": "PowerSubsystem",
                "Name": f"Power subsystem of {cid}",
                "CapacityWatts": hi,
                "Status": {"State": "Enabled", "Health": "OK"},
            }
        )

    async def _sensors(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        cid = request.path_params["cid"]
        if not self._known(cid):
            return _error(404, "ResourceNotFound", f"Chassis {cid} does not exist.")
        return JSONResponse(
            self._collection(
                f"/Chassis/{cid}/Sensors",
                "#SensorCollection.SensorCollection",
                "Sensors",
                [f"/Chassis/{cid}/Sensors/{s}" for s in ("Power", "InletTemp", "Energy")],
            )
        )

    async def _sensor(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        cid, sid = request.path_params["cid"], request.path_params["sid"]
        if not self._known(cid):
            return _error(404, "ResourceNotFound", f"Chassis {cid} does not exist.")
        r = self.backend.chassis_reading(cid)
        kinds = {
            "Power": ("Power", "W", r.power_w),
            "InletTemp": ("Temperature", "Cel", r.inlet_temp_c),
            "Energy": ("EnergykWh", "kW.h", r.energy_j / 3.6e6),
        }
        if sid not in kinds:
            return _error(404, "ResourceNotFound", f"Sensor {sid} does not exist.")
        kind, units, value = kinds[sid]
        return JSONResponse(
            {
                "@odata.id": f"{V1}/Chassis/{cid}/Sensors/{sid}",
                "@odata.type": "#Sensor.v1_9_0.Sensor",
                "Id": sid,
                "Name": f"{cid} {sid}",
                "ReadingType": kind,
                "ReadingUnits": units,
                "Reading": value,
                "Status": {"State": "Enabled", "Health": "OK"},
            }
        )

    async def _controls(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        cid = request.path_params["cid"]
        if not self._known(cid):
            return _error(404, "ResourceNotFound", f"Chassis {cid} does not exist.")
        return JSONResponse(
            self._collection(
                f"/Chassis/{cid}/Controls",
                "#ControlCollection.ControlCollection",
                "Controls",
                [f"/Chassis/{cid}/Controls/PowerLimit"],
            )
        )

    async def _power_limit(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        cid = request.path_params["cid"]
        if not self._known(cid):
            return _error(404, "ResourceNotFound", f"Chassis {cid} does not exist.")
        if request.method == "PATCH":
            refusal = await self._apply_limit(cid, request)
            if refusal is not None:
                return refusal
        excerpt = self._limit_excerpt(cid)
        return JSONResponse(
            {
                "@odata.id": f"{V1}/Chassis/{cid}/Controls/PowerLimit",
                "@odata.type": "#Control.v1_5_0.Control",
                "Id": "PowerLimit",
                "Name": f"Power limit of {cid}",
                "ControlType": "Power",
                "SetPointUnits": "W",
                "SetPoint": excerpt["SetPoint"],
                "AllowableMin": excerpt["AllowableMin"],
                "AllowableMax": excerpt["AllowableMax"],
                "ControlMode": excerpt["ControlMode"],
                "Status": {"State": "Enabled", "Health": "OK"},
            }
        )

    async def _apply_limit(  # noqa: PLR0911 - one early answer per validation rule
        self, cid: str, request: Request
    ) -> JSONResponse | None:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "MalformedJSON", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "MalformedJSON", "The request body must be a JSON object.")
        unknown = sorted(set(body) - {"SetPoint", "ControlMode"})
        if unknown:
            return _error(
                400,
                "PropertyUnknown",
                f"The property {unknown[0]} is not in the list of valid properties.",
                MessageArgs=[unknown[0]],
            )
        mode = body.get("ControlMode")
        if mode is not None and mode not in ("Automatic", "Disabled"):
            return _error(
                400,
                "PropertyValueNotInList",
                f"The value {mode} for ControlMode is not in the list of acceptable values.",
                MessageArgs=[str(mode), "ControlMode"],
            )
        setpoint = body.get("SetPoint")
        if mode == "Disabled" or ("SetPoint" in body and setpoint is None):
            self.backend.set_power_limit_w(cid, None)
            log.info("redfish_power_limit_cleared", chassis=cid)
            return None
        if not isinstance(setpoint, int | float) or isinstance(setpoint, bool):
            return _error(
                400,
                "PropertyValueTypeError",
                "The value for SetPoint must be a number.",
                MessageArgs=["SetPoint"],
            )
        lo, hi = self.backend.power_limit_range_w(cid)
        if not lo <= setpoint <= hi:
            return _error(
                400,
                "PropertyValueOutOfRange",
                f"The value {setpoint} for SetPoint is outside [{lo}, {hi}].",
                MessageArgs=[str(setpoint), "SetPoint"],
            )
        self.backend.set_power_limit_w(cid, float(setpoint))
        log.info("redfish_power_limit_set", chassis=cid, watts=setpoint)
        return None

    # ---- telemetry ---------------------------------------------------------------------------

    async def _telemetry(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        return JSONResponse(
            {
                "@odata.id": V1 + "/TelemetryService",
                "@odata.type": "#TelemetryService.v1_3_3.TelemetryService",
                "Id": "TelemetryService",
                "Name": "Telemetry Service",
                "ServiceEnabled": True,
                "MetricReports": {"@odata.id": V1 + "/TelemetryService/MetricReports"},
            }
        )

    async def _reports(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        return JSONResponse(
            self._collection(
                "/TelemetryService/MetricReports",
                "#MetricReportCollection.MetricReportCollection",
                "Metric Reports",
                [f"/TelemetryService/MetricReports/{REPORT_ID}"],
            )
        )

    def power_report(self) -> dict[str, Any]:
        """Every rack's power, inlet temperature and power limit in one MetricReport."""
        values: list[dict[str, Any]] = []
        newest = 0.0
        for cid in self.backend.chassis_ids():
            r = self.backend.chassis_reading(cid)
            newest = max(newest, r.timestamp)
            stamp = _iso(r.timestamp)
            env = f"{V1}/Chassis/{cid}/EnvironmentMetrics#"
            values.append(
                {
                    "MetricId": "PowerWatts",
                    "MetricValue": f"{r.power_w:.1f}",
                    "Timestamp": stamp,
                    "MetricProperty": env + "/PowerWatts/Reading",
                }
            )
            values.append(
                {
                    "MetricId": "TemperatureCelsius",
                    "MetricValue": f"{r.inlet_temp_c:.2f}",
                    "Timestamp": stamp,
                    "MetricProperty": env + "/TemperatureCelsius/Reading",
                }
            )
            limit = self.backend.power_limit_w(cid)
            if limit is not None:
                values.append(
                    {
                        "MetricId": "PowerLimitWatts",
                        "MetricValue": f"{limit:.1f}",
                        "Timestamp": stamp,
                        "MetricProperty": env + "/PowerLimitWatts/SetPoint",
                    }
                )
        self._report_seq += 1
        return {
            "@odata.id": f"{V1}/TelemetryService/MetricReports/{REPORT_ID}",
            "@odata.type": "#MetricReport.v1_5_0.MetricReport",
            "Id": REPORT_ID,
            "Name": "Rack power report",
            "ReportSequence": str(self._report_seq),
            "Timestamp": _iso(newest or time.time()),
            "MetricValues": values,
        }

    async def _report(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        if request.path_params["rid"] != REPORT_ID:
            return _error(
                404,
                "ResourceNotFound",
                f"MetricReport {request.path_params['rid']} does not exist.",
            )
        return JSONResponse(self.power_report())

    async def _event_service(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return self._unauthorised()
        return JSONResponse(
            {
                "@odata.id": V1 + "/EventService",
                "@odata.type": "#EventService.v1_10_2.EventService",
                "Id": "EventService",
                "Name": "Event Service",
                "ServiceEnabled": True,
                "ServerSentEventUri": V1 + "/EventService/SSE",
                "SSEFilterPropertiesSupported": {"MetricReportDefinition": True},
            }
        )

    async def _sse(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._unauthorised()
        interval = self.sse_interval_s

        async def stream() -> AsyncIterator[bytes]:
            while True:
                report = self.power_report()
                event = json.dumps(report, separators=(",", ":"))
                yield f"id: {report['ReportSequence']}\ndata: {event}\n\n".encode()
                await asyncio.sleep(interval)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
