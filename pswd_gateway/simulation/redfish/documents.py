"""What every resource of the twin is built from: its URIs, its ``@odata.type``, JSON values,
and the response that carries it (with the ``Link: rel=describedby`` header naming its schema).

Also reading a request body: a bounded JSON object, or a Redfish error saying why not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse

from pswd_gateway.simulation.redfish.registry import MESSAGE_TYPE, RedfishError

__all__ = [
    "OK",
    "OPEN_PATHS",
    "SCHEMAS",
    "SESSIONS",
    "SESSION_CREATE_PATHS",
    "TYPES",
    "V1",
    "RedfishJSON",
    "chassis_uri",
    "collection",
    "finite_number",
    "iso",
    "json_object",
    "json_text",
    "num",
    "ref",
]

V1: Final = "/redfish/v1"
SESSIONS: Final = V1 + "/SessionService/Sessions"
OPEN_PATHS: Final = frozenset({"/redfish", V1, V1 + "/odata", V1 + "/$metadata"})
"""What anyone may read: the version document, the service root and the OData documents."""
SESSION_CREATE_PATHS: Final = frozenset({SESSIONS, SESSIONS + "/Members"})
"""Where a login is POSTed: the Sessions collection, or its ``Members`` (the same thing)."""
SCHEMAS: Final = "http://redfish.dmtf.org/schemas/v1"
"""DMTF's published schemas, named by ``$metadata`` and the ``Link`` headers (never fetched)."""
MAX_BODY_BYTES: Final = 64 * 1024

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
    "Power": "#Power.v1_7_3.Power",
    "AccountService": "#AccountService.v1_15_0.AccountService",
    "ManagerAccountCollection": "#ManagerAccountCollection.ManagerAccountCollection",
    "ManagerAccount": "#ManagerAccount.v1_12_0.ManagerAccount",
    "RoleCollection": "#RoleCollection.RoleCollection",
    "Role": "#Role.v1_3_2.Role",
    "Message": MESSAGE_TYPE,
}

OK: Final = {"State": "Enabled", "Health": "OK"}


class RedfishJSON(JSONResponse):
    """A resource as JSON, with ``Link: <schema>; rel=describedby`` from its ``@odata.type``."""

    def __init__(
        self,
        content: Mapping[str, Any],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        odata_type = content.get("@odata.type")
        link = {}
        if isinstance(odata_type, str) and odata_type.startswith("#"):
            schema = odata_type[1:].rsplit(".", 1)[0]  # "Chassis.v1_25_0", "ChassisCollection"
            link["Link"] = f"<{SCHEMAS}/{schema}.json>; rel=describedby"
        super().__init__(content, status_code, {**link, **(headers or {})}, None, background)


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds; a time that is not one becomes now."""
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError):
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def num(value: float | None) -> float | None:
    """A JSON-safe reading: ``None`` (``null``) for NaN and infinities."""
    return value if value is not None and math.isfinite(value) else None


def ref(path: str) -> dict[str, str]:
    """A link: ``{"@odata.id": path}``."""
    return {"@odata.id": path}


def chassis_uri(cid: str) -> str:
    return f"{V1}/Chassis/{quote(cid, safe='')}"


def collection(path: str, kind: str, name: str, member_paths: Sequence[str]) -> dict[str, Any]:
    """A resource collection of ``kind`` (a key of :data:`TYPES`) linking ``member_paths``."""
    return {
        "@odata.id": path,
        "@odata.type": TYPES[kind],
        "Name": name,
        "Members@odata.count": len(member_paths),
        "Members": [ref(m) for m in member_paths],
    }


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 MalformedJSON (413 over 64 KiB)."""
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


def finite_number(value: object) -> float | None:
    """A JSON number as a float (``None`` for booleans, strings, …); huge numbers are infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def json_text(value: object) -> str:
    """A value as it appears in a message argument: strings as they are, the rest as JSON."""
    return json.dumps(value) if not isinstance(value, str) else value
