"""The Redfish BMC twin (simulation.redfish) spoken to over real HTTP on loopback.

What a Redfish client may rely on: the resource shapes and links, sessions and Basic auth,
Redfish error bodies for every refusal (never a 500), power-limit validation, one MetricReport
with every chassis, and the SSE stream with ids that a client can resume from.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest

from pswd_gateway.simulation.redfish import ChassisReading, RedfishTwinServer

pytestmark = pytest.mark.integration

USER, PASSWORD = "operator", "s3cret"
V1 = "/redfish/v1"


@dataclass
class Racks:
    """Three racks: Rack1 draws 1 kW, Rack2 2 kW, Rack 3 (a space in its id) 3 kW."""

    ids: Sequence[str] = ("Rack1", "Rack2", "Rack 3")
    limits: dict[str, float] = field(default_factory=dict)
    refuse_above_w: float = float("inf")
    broken: str = ""

    def chassis_ids(self) -> Sequence[str]:
        return self.ids

    def chassis_reading(self, chassis_id: str) -> ChassisReading:
        if chassis_id == self.broken:
            raise RuntimeError("sensor bus error")
        i = self.ids.index(chassis_id) + 1
        return ChassisReading(1000.0 * i, 20.0 + i, 3.6e6 * i, 1_800_000_000.0 + i)

    def power_limit_range_w(self, chassis_id: str) -> tuple[float, float]:
        return 500.0, 5000.0

    def power_limit_w(self, chassis_id: str) -> float | None:
        return self.limits.get(chassis_id)

    def set_power_limit_w(self, chassis_id: str, watts: float | None) -> None:
        if watts is not None and watts > self.refuse_above_w:
            raise ValueError("the physics refuses")
        if watts is None:
            self.limits.pop(chassis_id, None)
        else:
            self.limits[chassis_id] = watts


@pytest.fixture
async def bmc() -> AsyncIterator[RedfishTwinServer]:
    server = RedfishTwinServer(
        Racks(), host="127.0.0.1", port=0, username=USER, password=PASSWORD, sse_interval_s=0.05
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http(bmc: RedfishTwinServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bmc.port}", timeout=5.0) as client:
        yield client


@pytest.fixture
async def authed(http: httpx.AsyncClient) -> httpx.AsyncClient:
    reply = await http.post(
        f"{V1}/SessionService/Sessions", json={"UserName": USER, "Password": PASSWORD}
    )
    assert reply.status_code == 201
    http.headers["X-Auth-Token"] = reply.headers["X-Auth-Token"]
    return http


def message_id(reply: httpx.Response) -> str:
    """The MessageId of a Redfish error body (and a check that the body is one)."""
    error = reply.json()["error"]
    info = error["@Message.ExtendedInfo"][0]
    assert error["code"] == info["MessageId"]
    assert info["Message"] == error["message"]
    return str(info["MessageId"]).rsplit(".", 1)[-1]


async def test_version_document_and_service_root_need_no_session(http: httpx.AsyncClient) -> None:
    """/redfish and the ServiceRoot are open, typed, and link every service a client needs."""
    assert (await http.get("/redfish")).json() == {"v1": "/redfish/v1/"}
    root = (await http.get(f"{V1}/")).json()
    assert root["@odata.id"] == V1
    assert root["@odata.type"].startswith("#ServiceRoot.v1_")
    assert root["Id"] == "RootService"
    for service in ("Chassis", "SessionService", "EventService", "TelemetryService"):
        assert root[service] == {"@odata.id": f"{V1}/{service}"}
    assert root["Links"]["Sessions"] == {"@odata.id": f"{V1}/SessionService/Sessions"}
    assert root["ProtocolFeaturesSupported"]["ExpandQuery"]["ExpandAll"] is False


@pytest.mark.parametrize(
    "path",
    [
        f"{V1}/Chassis",
        f"{V1}/Chassis/Rack1/EnvironmentMetrics",
        f"{V1}/EventService/SSE",
        f"{V1}/NoSuchThing",
    ],
)
async def test_everything_else_needs_a_session(http: httpx.AsyncClient, path: str) -> None:
    """Without credentials: 401 with a Redfish NoValidSession body (unknown paths too)."""
    reply = await http.get(path)
    assert reply.status_code == 401
    assert message_id(reply) == "NoValidSession"
    assert reply.headers["OData-Version"] == "4.0"


async def test_a_session_gives_a_token_and_a_location_and_delete_ends_it(
    http: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """POST Sessions → 201 + X-Auth-Token + Location; DELETE there → the token stops working."""
    reply = await http.post(
        f"{V1}/SessionService/Sessions", json={"UserName": USER, "Password": PASSWORD}
    )
    assert reply.status_code == 201
    token, location = reply.headers["X-Auth-Token"], reply.headers["Location"]
    session = reply.json()
    assert session["@odata.id"] == location
    assert session["@odata.type"].startswith("#Session.v1_")
    assert session["UserName"] == USER
    assert "Password" not in session
    headers = {"X-Auth-Token": token}
    sessions = (await http.get(f"{V1}/SessionService/Sessions", headers=headers)).json()
    assert {"@odata.id": location} in sessions["Members"]
    assert (await http.delete(location, headers=headers)).status_code == 204
    assert (await http.get(f"{V1}/Chassis", headers=headers)).status_code == 401
    assert bmc.session_ids() == []


BAD_LOGINS: list[tuple[object, int, str]] = [
    ({"UserName": USER, "Password": "wrong"}, 401, "ResourceAtUriUnauthorized"),
    ({"UserName": "nobody", "Password": PASSWORD}, 401, "ResourceAtUriUnauthorized"),
    ({"UserName": USER}, 400, "CreateFailedMissingReqProperties"),
    ({"UserName": USER, "Password": 1}, 400, "PropertyValueTypeError"),
    ([USER, PASSWORD], 400, "MalformedJSON"),
]


async def test_bad_logins_are_refused_with_redfish_errors(
    http: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """Wrong credentials are 401; a malformed request is 400; neither opens a session."""
    for body, status, message in BAD_LOGINS:
        reply = await http.post(f"{V1}/SessionService/Sessions", json=body)
        assert (reply.status_code, message_id(reply)) == (status, message), body
        assert "X-Auth-Token" not in reply.headers
    assert bmc.session_ids() == []


async def test_http_basic_is_accepted_and_wrong_basic_is_not(http: httpx.AsyncClient) -> None:
    """Clients without session support use Basic; a wrong password is 401."""
    assert (await http.get(f"{V1}/Chassis", auth=(USER, PASSWORD))).status_code == 200
    assert (await http.get(f"{V1}/Chassis", auth=(USER, "nope"))).status_code == 401
    garbled = await http.get(f"{V1}/Chassis", headers={"Authorization": "Basic %%%"})
    assert garbled.status_code == 401


async def test_chassis_resources_follow_the_schemas_and_their_links_resolve(
    authed: httpx.AsyncClient,
) -> None:
    """Collection → Rack chassis → EnvironmentMetrics/PowerSubsystem/Sensors/Controls, all typed."""
    collection = (await authed.get(f"{V1}/Chassis")).json()
    assert collection["Members@odata.count"] == 3
    assert {"@odata.id": f"{V1}/Chassis/Rack%203"} in collection["Members"]
    chassis = (await authed.get(f"{V1}/Chassis/Rack%203")).json()
    assert chassis["Id"] == "Rack 3"
    assert chassis["ChassisType"] == "Rack"
    assert chassis["@odata.type"].startswith("#Chassis.v1_")
    for key, kind in [
        ("EnvironmentMetrics", "#EnvironmentMetrics.v1_"),
        ("PowerSubsystem", "#PowerSubsystem.v1_"),
        ("Sensors", "#SensorCollection."),
        ("Controls", "#ControlCollection."),
    ]:
        doc = (await authed.get(chassis[key]["@odata.id"])).json()
        assert doc["@odata.id"] == chassis[key]["@odata.id"]
        assert doc["@odata.type"].startswith(kind), doc["@odata.type"]
    sensors = (await authed.get(chassis["Sensors"]["@odata.id"])).json()
    for member in sensors["Members"]:
        sensor = (await authed.get(member["@odata.id"])).json()
        assert sensor["@odata.type"].startswith("#Sensor.v1_")
        assert sensor["Reading"] is not None
    power = (await authed.get(f"{V1}/Chassis/Rack%203/Sensors/TotalPower")).json()
    assert (power["ReadingType"], power["ReadingUnits"], power["Reading"]) == ("Power", "W", 3000.0)
    inlet = (await authed.get(f"{V1}/Chassis/Rack%203/Sensors/InletTemp")).json()
    assert (inlet["ReadingType"], inlet["ReadingUnits"], inlet["Reading"]) == (
        "Temperature",
        "Cel",
        23.0,
    )


async def test_environment_metrics_carry_readings_and_the_limit_from_the_backend(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """Power, inlet, energy (kWh) and the PowerLimitWatts excerpt are read at request time."""
    env = (await authed.get(f"{V1}/Chassis/Rack2/EnvironmentMetrics")).json()
    assert env["PowerWatts"]["Reading"] == 2000.0
    assert env["TemperatureCelsius"]["Reading"] == 22.0
    assert env["EnergykWh"]["Reading"] == 2.0
    limit = env["PowerLimitWatts"]
    assert limit == {
        "DataSourceUri": f"{V1}/Chassis/Rack2/Controls/PowerLimit",
        "SetPoint": None,
        "AllowableMin": 500.0,
        "AllowableMax": 5000.0,
        "ControlMode": "Disabled",
    }
    bmc.backend.set_power_limit_w("Rack2", 1500.0)
    env = (await authed.get(f"{V1}/Chassis/Rack2/EnvironmentMetrics/")).json()
    assert (env["PowerLimitWatts"]["SetPoint"], env["PowerLimitWatts"]["ControlMode"]) == (
        1500.0,
        "Automatic",
    )


async def test_power_limit_patch_sets_and_clears_the_backend_limit(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """SetPoint in range sets the limit; null or ControlMode Disabled clears it."""
    url = f"{V1}/Chassis/Rack1/Controls/PowerLimit"
    reply = await authed.patch(url, json={"SetPoint": 2500})
    assert reply.status_code == 200
    control = reply.json()
    assert control["@odata.type"].startswith("#Control.v1_")
    assert (control["SetPoint"], control["ControlMode"], control["ControlType"]) == (
        2500.0,
        "Automatic",
        "Power",
    )
    assert bmc.backend.power_limit_w("Rack1") == 2500.0
    assert (await authed.patch(url, json={"SetPoint": None})).json()["ControlMode"] == "Disabled"
    assert bmc.backend.power_limit_w("Rack1") is None
    await authed.patch(url, json={"SetPoint": 600, "ControlMode": "Automatic"})
    assert bmc.backend.power_limit_w("Rack1") == 600.0
    await authed.patch(url, json={"ControlMode": "Disabled"})
    assert bmc.backend.power_limit_w("Rack1") is None


BAD_PATCHES: list[tuple[bytes, str]] = [
    (b'{"SetPoint": 100}', "PropertyValueOutOfRange"),
    (b'{"SetPoint": 5000.5}', "PropertyValueOutOfRange"),
    (b'{"SetPoint": 1e400}', "PropertyValueOutOfRange"),
    (b'{"SetPoint": NaN}', "MalformedJSON"),
    (b'{"SetPoint": "2000"}', "PropertyValueTypeError"),
    (b'{"SetPoint": true}', "PropertyValueTypeError"),
    (b'{"SetPoint": 2000, "Colour": "red"}', "PropertyUnknown"),
    (b'{"AllowableMax": 9000}', "PropertyNotWritable"),
    (b'{"ControlMode": "Manual"}', "PropertyValueNotInList"),
    (b'{"ControlMode": "Automatic"}', "PropertyMissing"),
    (b'{"SetPoint": 2000, "ControlMode": "Disabled"}', "PropertyValueConflict"),
    (b"{}", "NoOperation"),
    (b"{not json", "MalformedJSON"),
    (b"[1, 2]", "MalformedJSON"),
    (b"\xff\xfe", "MalformedJSON"),
    (b"[" * 50_000, "MalformedJSON"),
]


async def test_bad_power_limit_patches_are_400_with_a_redfish_message(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """Every refused PATCH is a 400 naming the Base registry message; the limit is untouched."""
    for body, message in BAD_PATCHES:
        reply = await authed.patch(
            f"{V1}/Chassis/Rack1/Controls/PowerLimit",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert (reply.status_code, message_id(reply)) == (400, message), body[:40]
        assert bmc.backend.power_limit_w("Rack1") is None


async def test_an_oversized_request_body_is_refused_unread(authed: httpx.AsyncClient) -> None:
    """Request bodies are capped (64 KiB): 413 with a Redfish error."""
    reply = await authed.patch(
        f"{V1}/Chassis/Rack1/Controls/PowerLimit", content=b" " * 70_000 + b"{}"
    )
    assert reply.status_code == 413
    assert message_id(reply) == "GeneralError"


async def test_a_limit_the_physics_refuses_is_a_400_not_a_500(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """The backend's own ValueError becomes PropertyValueOutOfRange."""
    racks = bmc.backend
    assert isinstance(racks, Racks)
    racks.refuse_above_w = 3000.0
    reply = await authed.patch(f"{V1}/Chassis/Rack1/Controls/PowerLimit", json={"SetPoint": 4000})
    assert reply.status_code == 400
    assert message_id(reply) == "PropertyValueOutOfRange"


async def test_a_failing_backend_is_a_redfish_internal_error(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """An exception in the physics is a 500 with a Redfish InternalError body, not a bare 500."""
    racks = bmc.backend
    assert isinstance(racks, Racks)
    racks.broken = "Rack2"
    reply = await authed.get(f"{V1}/Chassis/Rack2/EnvironmentMetrics")
    assert (reply.status_code, message_id(reply)) == (500, "InternalError")
    assert (await authed.get(f"{V1}/Chassis/Rack1/EnvironmentMetrics")).status_code == 200


async def test_unknown_resources_and_methods_get_redfish_errors(authed: httpx.AsyncClient) -> None:
    """404 ResourceNotFound for unknown chassis and paths; 405 with Allow for wrong methods."""
    reply = await authed.get(f"{V1}/Chassis/NoSuchRack/EnvironmentMetrics")
    assert (reply.status_code, message_id(reply)) == (404, "ResourceNotFound")
    reply = await authed.get(f"{V1}/Chassis/Rack1/Sensors/Humidity")
    assert (reply.status_code, message_id(reply)) == (404, "ResourceNotFound")
    reply = await authed.delete(f"{V1}/Chassis/Rack1")
    assert (reply.status_code, message_id(reply)) == (405, "OperationNotAllowed")
    assert "GET" in reply.headers["Allow"]


def report_values(report: dict[str, Any]) -> dict[str, float]:
    return {v["MetricProperty"]: float(v["MetricValue"]) for v in report["MetricValues"]}


async def test_one_metric_report_carries_every_chassis_power(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """MetricValues point at each chassis' EnvironmentMetrics PowerWatts/Reading, exactly."""
    bmc.backend.set_power_limit_w("Rack2", 4000.0)
    telemetry = (await authed.get(f"{V1}/TelemetryService")).json()
    reports = (await authed.get(telemetry["MetricReports"]["@odata.id"])).json()
    report = (await authed.get(reports["Members"][0]["@odata.id"])).json()
    assert report["@odata.type"].startswith("#MetricReport.v1_")
    values = report_values(report)
    for cid, uri_id, watts in [("Rack1", "Rack1", 1000.0), ("Rack 3", "Rack%203", 3000.0)]:
        assert values[f"{V1}/Chassis/{uri_id}/EnvironmentMetrics#/PowerWatts/Reading"] == watts, cid
    assert values[f"{V1}/Chassis/Rack2/EnvironmentMetrics#/PowerLimitWatts/SetPoint"] == 4000.0
    assert f"{V1}/Chassis/Rack1/EnvironmentMetrics#/PowerLimitWatts/SetPoint" not in values
    definition = (await authed.get(report["MetricReportDefinition"]["@odata.id"])).json()
    assert definition["MetricReportDefinitionType"] == "Periodic"
    assert definition["Schedule"]["RecurrenceInterval"] == "PT0.05S"
    assert definition["Wildcards"][0]["Values"] == ["Rack1", "Rack2", "Rack 3"]


async def read_events(
    client: httpx.AsyncClient, count: int, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """The first ``count`` (id, report) events of a fresh SSE connection."""
    events: list[tuple[int, dict[str, Any]]] = []
    event_id = -1
    async with client.stream("GET", f"{V1}/EventService/SSE", headers=headers) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        async for line in reply.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                events.append((event_id, json.loads(line[6:])))
                if len(events) == count:
                    break
    return events


async def test_the_event_stream_carries_the_report_with_increasing_ids(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """ServerSentEventUri streams MetricReports; each event's id is its ReportSequence."""
    events_doc = (await authed.get(f"{V1}/EventService")).json()
    assert events_doc["ServerSentEventUri"] == f"{V1}/EventService/SSE"
    events = await asyncio.wait_for(read_events(authed, 3), 10)
    ids = [event_id for event_id, _ in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    for event_id, report in events:
        assert report["ReportSequence"] == str(event_id)
        assert (
            report_values(report)[f"{V1}/Chassis/Rack2/EnvironmentMetrics#/PowerWatts/Reading"]
            == 2000.0
        )


async def test_a_client_resuming_with_last_event_id_gets_what_it_missed(
    authed: httpx.AsyncClient, bmc: RedfishTwinServer
) -> None:
    """Reconnecting with Last-Event-ID replays the events after it, in order, without gaps."""
    first = await asyncio.wait_for(read_events(authed, 1), 10)
    resume_from = first[0][0]
    # while we are away, another listener keeps the reports (and the replay history) coming
    async with authed.stream("GET", f"{V1}/EventService/SSE") as keeper:
        async for line in keeper.aiter_lines():
            if line.startswith("id: ") and int(line[4:]) >= resume_from + 3:
                break
        resumed = await asyncio.wait_for(
            read_events(authed, 3, {"Last-Event-ID": str(resume_from)}), 10
        )
    assert [event_id for event_id, _ in resumed] == [resume_from + i for i in (1, 2, 3)]
    assert bmc.last_event_ids[-1] == str(resume_from)


async def test_stopping_the_server_ends_open_streams(
    bmc: RedfishTwinServer, authed: httpx.AsyncClient
) -> None:
    """stop() closes event streams itself instead of waiting for their clients to leave."""
    async with authed.stream("GET", f"{V1}/EventService/SSE") as reply:
        lines = reply.aiter_lines()
        await asyncio.wait_for(anext(lines), 10)
        assert bmc.stream_listeners == 1
        await asyncio.wait_for(bmc.stop(), 10)
        async for _ in lines:  # the stream ends (instead of hanging) once the server stops
            pass
    assert bmc.stream_listeners == 0


# ---- what DSP0266 asks of every service (checked by DMTF's Protocol Validator too) ----------


async def test_metadata_and_odata_documents_are_open_and_name_every_namespace_served(
    authed: httpx.AsyncClient,
) -> None:
    """$metadata (CSDL XML) and /odata (JSON) need no session; $metadata references a schema
    for the namespace of every @odata.type the service serves, and an EntityContainer."""
    async with httpx.AsyncClient(base_url=authed.base_url, timeout=5.0) as anonymous:
        metadata = await anonymous.get(f"{V1}/$metadata")
        odata = await anonymous.get(f"{V1}/odata")
    assert metadata.status_code == 200
    assert metadata.headers["Content-Type"] == "application/xml;charset=utf-8"
    assert metadata.headers["OData-Version"] == "4.0"
    edmx = "{http://docs.oasis-open.org/odata/ns/edmx}"
    root = ET.fromstring(metadata.content)
    included = {el.get("Namespace") for el in root.iter(f"{edmx}Include")}
    container = root.find(f"{edmx}DataServices/{{http://docs.oasis-open.org/odata/ns/edm}}Schema")
    assert container is not None
    assert container[0].get("Extends", "").startswith("ServiceRoot.v1_")
    for path in [
        V1,
        f"{V1}/Chassis",
        f"{V1}/Chassis/Rack1",
        f"{V1}/Chassis/Rack1/EnvironmentMetrics",
        f"{V1}/Chassis/Rack1/Controls/PowerLimit",
        f"{V1}/TelemetryService/MetricReports/PowerReport",
        f"{V1}/AccountService/Roles/ReadOnly",
    ]:
        odata_type = (await authed.get(path)).json()["@odata.type"]
        assert odata_type.lstrip("#").rsplit(".", 1)[0] in included, odata_type
    assert odata.status_code == 200
    assert odata.headers["Content-Type"] == "application/json"
    service = odata.json()
    assert service["@odata.context"] == f"{V1}/$metadata"
    urls = {entry["name"]: entry["url"] for entry in service["value"]}
    assert urls["Service"] == f"{V1}/"
    assert urls["Chassis"] == f"{V1}/Chassis"
    assert urls["Sessions"] == f"{V1}/SessionService/Sessions"


async def test_every_response_carries_the_headers_redfish_requires(
    authed: httpx.AsyncClient,
) -> None:
    """OData-Version, Cache-Control, Allow (the methods of that URI) and a Link to the schema
    of the resource's own @odata.type version."""
    reply = await authed.get(f"{V1}/Chassis/Rack1/Controls/PowerLimit")
    assert reply.headers["OData-Version"] == "4.0"
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["Allow"] == "GET, HEAD, PATCH"
    version = reply.json()["@odata.type"].split(".")[1]
    assert reply.links["describedby"]["url"] == (
        f"http://redfish.dmtf.org/schemas/v1/Control.{version}.json"
    )
    sessions = await authed.get(f"{V1}/SessionService/Sessions")
    assert sessions.headers["Allow"] == "GET, HEAD, POST"
    head = await authed.head(V1)
    assert (head.status_code, head.headers["Allow"]) == (200, "GET, HEAD")
    assert "describedby" in head.links


async def test_unsupported_odata_versions_and_query_options_are_refused(
    authed: httpx.AsyncClient,
) -> None:
    """OData-Version other than 4.0 → 412; any $ query option (none is supported) → 501, but
    $filter on the event stream (SSEFilterPropertiesSupported); other query parameters are
    ignored; a request without credentials is still a 401 first."""
    reply = await authed.get(f"{V1}/Chassis", headers={"OData-Version": "4.1"})
    assert (reply.status_code, message_id(reply)) == (412, "GeneralError")
    assert (await authed.get(f"{V1}/Chassis", headers={"OData-Version": "4.0"})).is_success
    reply = await authed.get(f"{V1}/Chassis", params={"$expand": "."})
    assert (reply.status_code, message_id(reply)) == (501, "QueryNotSupported")
    assert (await authed.get(f"{V1}/Chassis", params={"only": ""})).is_success
    report = (
        f"MetricReportDefinition eq '{V1}/TelemetryService/MetricReportDefinitions/PowerReport'"
    )
    assert (await authed.head(f"{V1}/EventService/SSE", params={"$filter": report})).is_success
    del authed.headers["X-Auth-Token"]
    assert (await authed.get(f"{V1}/Chassis", params={"$top": "1"})).status_code == 401


async def test_a_login_posted_to_the_members_of_sessions_is_a_login(
    http: httpx.AsyncClient,
) -> None:
    """POST …/Sessions/Members is the same request as POST …/Sessions: 201, token, Location."""
    reply = await http.post(
        f"{V1}/SessionService/Sessions/Members", json={"UserName": USER, "Password": PASSWORD}
    )
    assert reply.status_code == 201
    assert reply.headers["Location"].startswith(f"{V1}/SessionService/Sessions/")
    token = reply.headers["X-Auth-Token"]
    assert (await http.get(f"{V1}/Chassis", headers={"X-Auth-Token": token})).status_code == 200


async def test_the_account_service_shows_the_one_account_and_the_standard_roles(
    authed: httpx.AsyncClient,
) -> None:
    """Accounts/1 is the configured user (Administrator, with an ETag); the three standard roles
    carry their standard privileges; nothing there is writable over Redfish."""
    service = (await authed.get(f"{V1}/AccountService")).json()
    accounts = (await authed.get(service["Accounts"]["@odata.id"])).json()
    assert accounts["Members@odata.count"] == 1
    reply = await authed.get(accounts["Members"][0]["@odata.id"])
    account = reply.json()
    assert (account["UserName"], account["RoleId"]) == (USER, "Administrator")
    assert reply.headers["ETag"] == account["@odata.etag"]
    roles = (await authed.get(service["Roles"]["@odata.id"])).json()
    privileges = {}
    for member in roles["Members"]:
        role = (await authed.get(member["@odata.id"])).json()
        privileges[role["Id"]] = set(role["AssignedPrivileges"])
    assert privileges["ReadOnly"] == {"Login", "ConfigureSelf"}
    assert privileges["Operator"] == {"Login", "ConfigureComponents", "ConfigureSelf"}
    assert "ConfigureUsers" in privileges["Administrator"]
    reply = await authed.post(accounts["@odata.id"], json={"UserName": "x", "Password": "y"})
    assert (reply.status_code, message_id(reply)) == (405, "OperationNotAllowed")


# ---- the older Power resource (power_resource="Power") -------------------------------------


@pytest.fixture
async def legacy() -> AsyncIterator[tuple[RedfishTwinServer, httpx.AsyncClient]]:
    """A BMC of the older kind: Power instead of EnvironmentMetrics, no telemetry; Basic auth."""
    server = RedfishTwinServer(
        Racks(), username=USER, password=PASSWORD, telemetry=False, power_resource="Power"
    )
    await server.start()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", auth=(USER, PASSWORD), timeout=5.0
        ) as client:
            yield server, client
    finally:
        await server.stop()


async def test_a_legacy_bmc_reports_power_in_power_control_and_nothing_newer(
    legacy: tuple[RedfishTwinServer, httpx.AsyncClient],
) -> None:
    """The chassis links Power (and Sensors) only; PowerControl[0] carries PowerConsumedWatts
    and the PowerLimit; EnvironmentMetrics, Controls and TelemetryService are not there."""
    _, client = legacy
    chassis = (await client.get(f"{V1}/Chassis/Rack2")).json()
    assert "EnvironmentMetrics" not in chassis
    assert "Controls" not in chassis
    power = (await client.get(chassis["Power"]["@odata.id"])).json()
    assert power["@odata.type"].startswith("#Power.v1_")
    control = power["PowerControl"][0]
    assert control["PowerConsumedWatts"] == 2000.0
    assert control["PowerLimit"]["LimitInWatts"] is None
    assert control["PowerCapacityWatts"] == 5000.0
    for gone in ("Chassis/Rack2/EnvironmentMetrics", "Chassis/Rack2/Controls", "TelemetryService"):
        assert (await client.get(f"{V1}/{gone}")).status_code == 404, gone
    root = (await client.get(V1)).json()
    assert "TelemetryService" not in root


async def test_a_legacy_bmc_takes_its_power_limit_through_power_limit(
    legacy: tuple[RedfishTwinServer, httpx.AsyncClient],
) -> None:
    """PATCH PowerControl[0].PowerLimit.LimitInWatts sets the limit (null lifts it); a value
    out of range, of the wrong type, or any other property is a 400 and changes nothing."""
    server, client = legacy
    url = f"{V1}/Chassis/Rack1/Power"

    def patch(limit: object) -> dict[str, object]:
        return {"PowerControl": [{"PowerLimit": limit}]}

    reply = await client.patch(url, json=patch({"LimitInWatts": 1200}))
    assert reply.status_code == 200
    assert reply.json()["PowerControl"][0]["PowerLimit"]["LimitInWatts"] == 1200.0
    assert server.backend.power_limit_w("Rack1") == 1200.0
    for body, message in [
        (patch({"LimitInWatts": 100}), "PropertyValueOutOfRange"),
        (patch({"LimitInWatts": "lots"}), "PropertyValueTypeError"),
        (patch({"LimitException": "NoAction"}), "PropertyMissing"),
        (patch({"LimitInWatts": 900, "CorrectionInMs": 5}), "PropertyUnknown"),
        ({"PowerControl": [{"PowerConsumedWatts": 1}]}, "PropertyNotWritable"),
        ({"Id": "x"}, "PropertyNotWritable"),
        ({}, "NoOperation"),
    ]:
        reply = await client.patch(url, json=body)
        assert (reply.status_code, message_id(reply)) == (400, message), body
    assert server.backend.power_limit_w("Rack1") == 1200.0
    await client.patch(url, json=patch({"LimitInWatts": None, "LimitException": "NoAction"}))
    assert server.backend.power_limit_w("Rack1") is None


def test_a_legacy_bmc_has_no_telemetry_to_offer() -> None:
    """The MetricReport names EnvironmentMetrics properties: Power with telemetry is refused."""
    with pytest.raises(ValueError, match="telemetry=False"):
        RedfishTwinServer(Racks(), power_resource="Power")
