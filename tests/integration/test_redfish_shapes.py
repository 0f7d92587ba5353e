"""The Redfish driver against BMC shapes the twin does not serve, on loopback (port 0).

A small Starlette service stands in for a BMC: its documents are written here from the DMTF
Redfish schema (ServiceRoot, Chassis, EnvironmentMetrics, PowerSubsystem, PowerSupply,
PowerSupplyMetrics, Power, Sensor, Control, TelemetryService, MetricReport), and its session
behaviour is a knob per test — sessions created with 201 or 204, with or without ``Location``,
refused with 405, absent; HTTP Basic; HTTPS with a certificate signed by a test CA. A PATCH of a
Control's ``SetPoint`` or of a Power resource's ``PowerControl[0].PowerLimit`` changes the
document, behind ``If-Match`` when it carries an ``@odata.etag``. Servers stop and drivers close
in finalisers.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.errors import DeviceError, WriteRefusedError
from pswd_gateway.northbound.asgi import AsgiListener
from pswd_gateway.southbound.redfish.driver import RedfishDriver

pytestmark = pytest.mark.integration

USER, PASSWORD = "operator", "bmc-secret"
V1 = "/redfish/v1"
Doc = dict[str, Any]


def ref(path: str) -> dict[str, str]:
    return {"@odata.id": path}


def chassis_uri(cid: str) -> str:
    return f"{V1}/Chassis/{cid}"


# ---- documents -----------------------------------------------------------------------------------


def service_root(*, sessions: bool = True, telemetry: bool = False) -> Doc:
    doc: Doc = {
        "@odata.id": V1,
        "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
        "Id": "RootService",
        "Name": "Root Service",
        "RedfishVersion": "1.17.0",
        "Chassis": ref(f"{V1}/Chassis"),
        "Links": {},
    }
    if telemetry:
        doc["TelemetryService"] = ref(f"{V1}/TelemetryService")
    if sessions:
        doc["SessionService"] = ref(f"{V1}/SessionService")
        doc["Links"] = {"Sessions": ref(f"{V1}/SessionService/Sessions")}
    return doc


def collection(path: str, paths: list[str]) -> Doc:
    return {
        "@odata.id": path,
        "Members": [ref(p) for p in paths],
        "Members@odata.count": len(paths),
    }


@dataclass
class Shape:
    """The documents of one BMC, built chassis by chassis."""

    docs: dict[str, Doc] = field(default_factory=dict)
    chassis: list[str] = field(default_factory=list)

    def add_chassis(self, cid: str, *, contains: tuple[str, ...] = (), **links: str) -> str:
        uri = chassis_uri(cid)
        self.chassis.append(uri)
        doc: Doc = {
            "@odata.id": uri,
            "@odata.type": "#Chassis.v1_25_0.Chassis",
            "Id": cid,
            "Name": cid,
            "ChassisType": "Enclosure" if contains else "Blade",
            "Links": {"Contains": [ref(chassis_uri(c)) for c in contains]},
        }
        for key, suffix in links.items():
            doc[key] = ref(f"{uri}/{suffix}")
        self.docs[uri] = doc
        return uri

    def environment_metrics(self, cid: str, watts: float, inlet_c: float) -> None:
        uri = self.add_chassis(cid, EnvironmentMetrics="EnvironmentMetrics")
        self.docs[f"{uri}/EnvironmentMetrics"] = {
            "@odata.id": f"{uri}/EnvironmentMetrics",
            "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
            "Id": "EnvironmentMetrics",
            "Name": "Chassis Environment Metrics",
            "PowerWatts": {"Reading": watts},
            "TemperatureCelsius": {"Reading": inlet_c},
        }

    def power_subsystem(self, cid: str, inputs_w: list[float | None]) -> None:
        uri = self.add_chassis(cid, PowerSubsystem="PowerSubsystem")
        base = f"{uri}/PowerSubsystem"
        self.docs[base] = {
            "@odata.id": base,
            "@odata.type": "#PowerSubsystem.v1_1_0.PowerSubsystem",
            "Id": "PowerSubsystem",
            "Name": "Power Subsystem",
            "PowerSupplies": ref(f"{base}/PowerSupplies"),
        }
        supplies = [f"{base}/PowerSupplies/PSU{i}" for i in range(1, len(inputs_w) + 1)]
        self.docs[f"{base}/PowerSupplies"] = collection(f"{base}/PowerSupplies", supplies)
        for path, watts in zip(supplies, inputs_w, strict=True):
            self.docs[path] = {
                "@odata.id": path,
                "@odata.type": "#PowerSupply.v1_5_0.PowerSupply",
                "Id": path.rsplit("/", 1)[-1],
                "Name": "Power Supply",
                "Metrics": ref(f"{path}/Metrics"),
            }
            reading: Doc = {} if watts is None else {"InputPowerWatts": {"Reading": watts}}
            self.docs[f"{path}/Metrics"] = {
                "@odata.id": f"{path}/Metrics",
                "@odata.type": "#PowerSupplyMetrics.v1_1_0.PowerSupplyMetrics",
                "Id": "Metrics",
                "Name": "Power Supply Metrics",
                **reading,
            }

    def power(
        self,
        cid: str,
        watts: float,
        *,
        contains: tuple[str, ...] = (),
        capacity_w: float | None = None,
        limit_w: float | None = None,
        **links: str,
    ) -> str:
        """A chassis with the ``Power`` resource; with ``capacity_w`` its PowerControl[0] has a
        ``PowerCapacityWatts`` and a ``PowerLimit`` (``limit_w``, ``None``: no limit)."""
        uri = self.add_chassis(cid, contains=contains, Power="Power", **links)
        control: Doc = {
            "@odata.id": f"{uri}/Power#/PowerControl/0",
            "MemberId": "0",
            "Name": "Chassis Power Control",
            "PowerConsumedWatts": watts,
        }
        if capacity_w is not None:
            control["PowerCapacityWatts"] = capacity_w
            control["PowerLimit"] = {"LimitInWatts": limit_w, "LimitException": "NoAction"}
        self.docs[f"{uri}/Power"] = {
            "@odata.id": f"{uri}/Power",
            "@odata.type": "#Power.v1_7_1.Power",
            "Id": "Power",
            "Name": "Power",
            "PowerControl": [control],
        }
        return uri

    def control(self, uri: str, *, low_w: float, high_w: float) -> str:
        """A power-limit ``Control`` at ``uri`` (no limit set)."""
        self.docs[uri] = {
            "@odata.id": uri,
            "@odata.type": "#Control.v1_5_0.Control",
            "Id": uri.rsplit("/", 1)[-1],
            "Name": "Power Limit",
            "ControlType": "Power",
            "SetPoint": None,
            "AllowableMin": low_w,
            "AllowableMax": high_w,
            "ControlMode": "Disabled",
        }
        return uri

    def report(self, entries: list[tuple[str, object]]) -> None:
        """The TelemetryService with one MetricReport of ``(MetricProperty, MetricValue)``."""
        telemetry = f"{V1}/TelemetryService"
        reports = f"{telemetry}/MetricReports"
        path = f"{reports}/PowerReport"
        self.docs[telemetry] = {
            "@odata.id": telemetry,
            "@odata.type": "#TelemetryService.v1_3_1.TelemetryService",
            "Id": "TelemetryService",
            "Name": "Telemetry Service",
            "MetricReports": ref(reports),
        }
        self.docs[reports] = collection(reports, [path])
        self.docs[path] = {
            "@odata.id": path,
            "@odata.type": "#MetricReport.v1_5_0.MetricReport",
            "Id": "PowerReport",
            "Name": "Power report",
            "Timestamp": "2026-01-01T00:00:00Z",
            "MetricValues": [
                {"MetricId": prop.rsplit("/", 2)[-2], "MetricProperty": prop, "MetricValue": value}
                for prop, value in entries
            ],
        }

    def sensors(self, cid: str, readings: list[tuple[str, str, float]]) -> None:
        """``readings``: (ReadingType, PhysicalContext, Reading) per sensor."""
        uri = self.add_chassis(cid, Sensors="Sensors")
        paths = [f"{uri}/Sensors/S{i}" for i in range(len(readings))]
        self.docs[f"{uri}/Sensors"] = collection(f"{uri}/Sensors", paths)
        for path, (kind, context, value) in zip(paths, readings, strict=True):
            self.docs[path] = {
                "@odata.id": path,
                "@odata.type": "#Sensor.v1_7_0.Sensor",
                "Id": path.rsplit("/", 1)[-1],
                "Name": f"{context} {kind}",
                "ReadingType": kind,
                "Reading": value,
                "ReadingUnits": "W" if kind == "Power" else "Cel",
                "PhysicalContext": context,
            }


def one_rack() -> Shape:
    shape = Shape()
    shape.environment_metrics("Rack1", 1500.0, 22.5)
    return shape


# ---- the service ---------------------------------------------------------------------------------


@dataclass
class FakeBmc:
    """A Redfish service with configurable authentication, serving ``shape``'s documents."""

    shape: Shape
    session_status: int = 201
    """Status of a successful ``POST …/Sessions``; 4xx/5xx refuses every session."""
    location: bool = True
    send_token: bool = True
    """Whether a created session's answer carries ``X-Auth-Token`` (a broken BMC's does not)."""
    session_service: bool = True
    basic: bool = True
    """Whether HTTP Basic credentials are accepted."""
    refuse_after_login: frozenset[str] = frozenset()
    """Paths answered 401 whatever the credentials (a user without the privilege)."""
    refuse_patch: bool = False
    """Whether every PATCH is refused (400 ``PropertyValueOutOfRange``, as a BMC with a narrower
    range than it publishes answers)."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    patches: list[tuple[str, Doc, str | None]] = field(default_factory=list)
    """Every PATCH: path, body, ``If-Match``."""
    tokens: dict[str, str] = field(default_factory=dict)
    session_posts: int = 0
    deleted: list[str] = field(default_factory=list)
    listener: AsgiListener | None = None

    def app(self) -> Starlette:
        methods = ["GET", "POST", "DELETE", "PATCH"]
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=methods)])

    @property
    def url(self) -> str:
        assert self.listener is not None
        scheme = "https" if self.listener.tls_cert is not None else "http"
        return f"{scheme}://127.0.0.1:{self.listener.port}"

    def _authorised(self, request: Request) -> bool:
        if request.headers.get("x-auth-token") in self.tokens:
            return True
        plain = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return self.basic and request.headers.get("authorization") == f"Basic {plain}"

    async def handle(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        self.requests.append((request.method, path))
        sessions = f"{V1}/SessionService/Sessions"
        if request.method == "GET" and path == V1:
            telemetry = f"{V1}/TelemetryService" in self.shape.docs
            return JSONResponse(service_root(sessions=self.session_service, telemetry=telemetry))
        if request.method == "POST" and path == sessions and self.session_service:
            return await self._create_session(request)
        if not self._authorised(request) or path in self.refuse_after_login:
            return error(401, "Base.1.8.NoValidSession", "There is no valid session.")
        if request.method == "DELETE" and path.startswith(sessions + "/"):
            sid = path.rsplit("/", 1)[-1]
            self.tokens = {t: s for t, s in self.tokens.items() if s != sid}
            self.deleted.append(sid)
            return Response(status_code=204)
        if path == f"{V1}/Chassis":
            return JSONResponse(collection(path, self.shape.chassis))
        doc = self.shape.docs.get(path)
        if request.method == "PATCH" and doc is not None:
            return await self._patch(request, path, doc)
        if request.method != "GET" or doc is None:
            return error(404, "Base.1.8.ResourceMissingAtURI", f"{path} is not here.")
        etag = doc.get("@odata.etag")
        return JSONResponse(doc, headers={"ETag": etag} if etag else None)

    async def _patch(self, request: Request, path: str, doc: Doc) -> Response:
        """Set a Control's ``SetPoint`` or a Power resource's ``PowerControl[0].PowerLimit``."""
        body = await request.json()
        if_match = request.headers.get("if-match")
        self.patches.append((path, body, if_match))
        if doc.get("@odata.etag") and if_match != doc["@odata.etag"]:
            return error(412, "Base.1.8.PreconditionFailed", "The ETag does not match.")
        if self.refuse_patch:
            return error(400, "Base.1.8.PropertyValueOutOfRange", "The value is out of range.")
        if "PowerControl" in doc:
            doc["PowerControl"][0]["PowerLimit"].update(body["PowerControl"][0]["PowerLimit"])
        else:
            doc.update(body)
        return JSONResponse(doc)

    async def _create_session(self, request: Request) -> Response:
        self.session_posts += 1
        if self.session_status >= 300:
            return error(self.session_status, "Base.1.8.OperationNotAllowed", "No sessions.")
        body = await request.json()
        if (body.get("UserName"), body.get("Password")) != (USER, PASSWORD):
            return error(401, "Base.1.8.InvalidCredentials", "Invalid credentials.")
        sid = str(len(self.tokens) + len(self.deleted) + 1)
        token = secrets.token_hex(16)
        self.tokens[token] = sid
        headers = {"X-Auth-Token": token} if self.send_token else {}
        if self.location:
            headers["Location"] = f"{V1}/SessionService/Sessions/{sid}"
        if self.session_status == 204:
            return Response(status_code=204, headers=headers)
        session = {"@odata.id": f"{V1}/SessionService/Sessions/{sid}", "Id": sid}
        return JSONResponse(session, status_code=self.session_status, headers=headers)


def error(status: int, message_id: str, message: str) -> JSONResponse:
    info = [{"MessageId": message_id, "Message": message}]
    body = {"error": {"code": message_id, "message": message, "@Message.ExtendedInfo": info}}
    return JSONResponse(body, status_code=status)


StartBmc = Callable[..., Awaitable[FakeBmc]]
Connect = Callable[..., Awaitable[RedfishDriver]]


@pytest.fixture
async def start_bmc() -> AsyncIterator[StartBmc]:
    """Start fake BMCs on free loopback ports; every one is stopped afterwards."""
    started: list[AsgiListener] = []

    async def start(
        shape: Shape | None = None, *, tls: tuple[Path, Path] | None = None, **kw: Any
    ) -> FakeBmc:
        bmc = FakeBmc(shape or one_rack(), **kw)
        cert, key = tls if tls is not None else (None, None)
        listener = AsgiListener(bmc.app(), "127.0.0.1", 0, "fake BMC", 1.0, cert, key)
        started.append(listener)
        await listener.start()
        bmc.listener = listener
        return bmc

    try:
        yield start
    finally:
        for listener in started:
            await listener.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connect drivers; every one is closed afterwards."""
    opened: list[RedfishDriver] = []

    async def open_driver(bmc: FakeBmc, **kw: object) -> RedfishDriver:
        driver = RedfishDriver(config(bmc, **kw))
        opened.append(driver)
        await driver.connect()
        return driver

    try:
        yield open_driver
    finally:
        for driver in opened:
            await driver.close()


def config(bmc: FakeBmc, **kw: object) -> RedfishDeviceConfig:
    return RedfishDeviceConfig.model_validate(
        {
            "name": "bmc",
            "base_url": bmc.url,
            "username": USER,
            "password": PASSWORD,
            "timeout_ms": 3000,
            "use_event_service": False,
            **kw,
        }
    )


def values(points: object) -> dict[str, float]:
    assert isinstance(points, list)
    return {p.name: p.value for p in points}


# ---- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "location"), [(201, True), (200, False), (204, True)])
async def test_any_2xx_with_a_token_opens_a_session_location_optional(
    start_bmc: StartBmc, connect: Connect, status: int, location: bool
) -> None:
    """201 with Location, 200 without, and 204 with no body (DMTF's mockup server) all work."""
    bmc = await start_bmc(session_status=status, location=location, basic=False)
    driver = await connect(bmc)
    assert driver.auth_mode == "session"
    assert values(await driver.read())["bmc.total_power"] == 1500.0
    await driver.close()
    assert bmc.tokens == {}, "the session was deleted at close"


async def test_a_204_session_without_location_is_used_and_left_to_expire(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """With no Location and no body the session cannot be named, so close() deletes nothing."""
    bmc = await start_bmc(session_status=204, location=False, basic=False)
    driver = await connect(bmc)
    assert values(await driver.read())["bmc.rack1_power"] == 1500.0
    await driver.close()
    assert bmc.deleted == []


@pytest.mark.parametrize("refusal", [405, 404, 400])
async def test_auto_falls_back_to_basic_when_session_creation_is_refused(
    start_bmc: StartBmc, connect: Connect, refusal: int
) -> None:
    """auth = auto: a 4xx to POST …/Sessions switches to HTTP Basic, and reads work."""
    bmc = await start_bmc(session_status=refusal)
    driver = await connect(bmc)
    assert driver.auth_mode == "basic"
    assert values(await driver.read())["bmc.total_power"] == 1500.0
    assert bmc.session_posts == 1


async def test_auto_falls_back_to_basic_when_the_session_answer_has_no_token(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """A 201 without X-Auth-Token cannot be used: auto switches to Basic, session refuses."""
    bmc = await start_bmc(send_token=False)
    driver = await connect(bmc)
    assert driver.auth_mode == "basic"
    assert values(await driver.read())["bmc.total_power"] == 1500.0
    strict = RedfishDriver(config(bmc, auth="session"))
    with pytest.raises(DeviceError, match="the answer has no usable X-Auth-Token"):
        await strict.connect()


async def test_auto_uses_basic_when_the_service_has_no_session_service(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """A service root without SessionService: no session is attempted at all."""
    bmc = await start_bmc(session_service=False)
    driver = await connect(bmc)
    assert driver.auth_mode == "basic"
    assert bmc.session_posts == 0
    assert values(await driver.read())["bmc.total_power"] == 1500.0


async def test_configured_basic_never_creates_a_session(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """auth = basic: every request carries Basic credentials; nothing is POSTed, nothing left."""
    bmc = await start_bmc()
    driver = await connect(bmc, auth="basic")
    await driver.read()
    await driver.close()
    assert bmc.session_posts == 0
    assert ("POST", f"{V1}/SessionService/Sessions") not in bmc.requests


async def test_configured_session_does_not_fall_back_and_says_why(start_bmc: StartBmc) -> None:
    """auth = session with a BMC refusing sessions: a DeviceError with the status, no Basic."""
    bmc = await start_bmc(session_status=405)
    driver = RedfishDriver(config(bmc, auth="session"))
    with pytest.raises(
        DeviceError, match=r"POST /redfish/v1/SessionService/Sessions: no session: 405"
    ):
        await driver.connect()
    assert [r for r in bmc.requests if r[0] == "GET" and r[1] != V1] == []


async def test_wrong_credentials_under_auto_name_both_refusals(start_bmc: StartBmc) -> None:
    """A bad password: the session login and the Basic attempt are both reported."""
    bmc = await start_bmc()
    driver = RedfishDriver(config(bmc, password="wrong"))
    with pytest.raises(DeviceError) as refused:
        await driver.connect()
    message = str(refused.value)
    assert "POST /redfish/v1/SessionService/Sessions: login refused for user 'operator'" in message
    assert "with HTTP Basic (401" in message
    assert "check username/password" in message


async def test_a_second_401_after_logging_in_again_fails_the_poll_clearly(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """One re-login on a 401; when the BMC still refuses, the poll fails naming the resource."""
    shape = one_rack()
    bmc = await start_bmc(shape, basic=False)
    driver = await connect(bmc)
    await driver.read()
    bmc.refuse_after_login = frozenset({f"{chassis_uri('Rack1')}/EnvironmentMetrics"})
    with pytest.raises(DeviceError) as refused:
        await driver.read()
    message = str(refused.value)
    assert "GET /redfish/v1/Chassis/Rack1/EnvironmentMetrics: 401" in message
    assert "after logging in anew as 'operator'" in message
    assert driver.stats.logins_total == 2


# ---- where power is read -------------------------------------------------------------------------


def mixed_site() -> Shape:
    """Every source once, an enclosure with blades, and a shelf without power over a sled."""
    shape = Shape()
    shape.power("Enclosure", 5000.0, contains=("Blade1", "Blade2"))
    shape.environment_metrics("Blade1", 2000.0, 24.0)
    shape.environment_metrics("Blade2", 2500.0, 25.0)
    shape.power_subsystem("Rack2", [700.0, 800.0, None])
    shape.sensors(
        "Rack3",
        [("Power", "PowerSupply", 300.0), ("Power", "PowerSupply", 400.0), ("Power", "GPU", 250.0)],
    )
    shape.sensors(
        "Rack4",
        [("Temperature", "Intake", 23.0), ("Power", "Chassis", 900.0), ("Power", "PowerSupply", 1)],
    )
    shape.add_chassis("Shelf", contains=("Sled1",))
    shape.power("Sled1", 600.0)
    return shape


async def test_each_chassis_is_read_from_the_source_it_offers_and_counted_once(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """EnvironmentMetrics, PowerSubsystem, Power and Sensors each serve; blades stay out of the
    total because their enclosure reports; the shelf without power does not hide its sled."""
    bmc = await start_bmc(mixed_site())
    driver = await connect(bmc)
    got = values(await driver.read())
    assert got == {
        "bmc.enclosure_power": 5000.0,
        "bmc.blade1_power": 2000.0,
        "bmc.blade1_inlet_temp": 24.0,
        "bmc.blade2_power": 2500.0,
        "bmc.blade2_inlet_temp": 25.0,
        "bmc.rack2_power": 1500.0,
        "bmc.rack3_power": 700.0,
        "bmc.rack4_power": 900.0,
        "bmc.sled1_power": 600.0,
        "bmc.total_power": 5000.0 + 1500.0 + 700.0 + 900.0 + 600.0,
    }
    assert driver.power_sources == {
        "Enclosure": "Power",
        "Blade1": "EnvironmentMetrics",
        "Blade2": "EnvironmentMetrics",
        "Rack2": "PowerSubsystem",
        "Rack3": "Sensors",
        "Rack4": "Sensors",
        "Sled1": "Power",
    }


async def test_later_polls_get_only_the_resources_of_the_source_found(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """After the first read, a poll GETs one resource per reading: no collections re-walked."""
    bmc = await start_bmc(mixed_site())
    driver = await connect(bmc)
    await driver.read()
    bmc.requests.clear()
    await driver.read()
    got = sorted(path for _, path in bmc.requests)
    assert got == sorted(
        [
            f"{chassis_uri('Enclosure')}/Power",
            f"{chassis_uri('Blade1')}/EnvironmentMetrics",
            f"{chassis_uri('Blade2')}/EnvironmentMetrics",
            *(
                f"{chassis_uri('Rack2')}/PowerSubsystem/PowerSupplies/PSU{i}/Metrics"
                for i in (1, 2, 3)
            ),
            f"{chassis_uri('Rack3')}/Sensors/S0",
            f"{chassis_uri('Rack3')}/Sensors/S1",
            f"{chassis_uri('Rack4')}/Sensors/S1",
            f"{chassis_uri('Sled1')}/Power",
        ]
    )


async def test_a_source_that_disappears_is_replaced_by_the_next_one_offered(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """EnvironmentMetrics gone (firmware update): the chassis is read from its Power resource."""
    shape = one_rack()
    bmc = await start_bmc(shape)
    driver = await connect(bmc)
    await driver.read()
    uri = chassis_uri("Rack1")
    del shape.docs[f"{uri}/EnvironmentMetrics"]
    shape.docs[uri]["Power"] = ref(f"{uri}/Power")
    shape.docs[f"{uri}/Power"] = {"PowerControl": [{"PowerConsumedWatts": 1400.0}]}
    assert values(await driver.read())["bmc.total_power"] == 1400.0
    assert driver.power_sources == {"Rack1": "Power"}


# ---- power-limit writes --------------------------------------------------------------------------


def legacy_rack(*, etag: bool = False) -> Shape:
    """One rack of an older BMC: Power (PowerCapacityWatts 5 kW, no limit) and nothing newer."""
    shape = Shape()
    uri = shape.power("Rack1", 3000.0, capacity_w=5000.0, limit_w=None)
    if etag:
        shape.docs[f"{uri}/Power"]["@odata.etag"] = 'W/"power-1"'
    return shape


async def test_a_bmc_with_only_the_power_resource_takes_its_limit_there(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """No Control offered: the limit is PATCHed as PowerControl[0].PowerLimit.LimitInWatts of
    the Power resource (with If-Match when it has an ETag) and the next read shows it."""
    bmc = await start_bmc(legacy_rack(etag=True))
    driver = await connect(bmc, power_limit_writes=True)
    assert "bmc.rack1_power_limit" not in values(await driver.read())
    await driver.write("rack1_power_limit", 4200.0)
    power = f"{chassis_uri('Rack1')}/Power"
    body = {"PowerControl": [{"PowerLimit": {"LimitInWatts": 4200.0}}]}
    assert bmc.patches == [(power, body, 'W/"power-1"')]
    assert not any("Controls" in path for _, path in bmc.requests)
    got = values(await driver.read())
    assert (got["bmc.rack1_power"], got["bmc.rack1_power_limit"]) == (3000.0, 4200.0)


async def test_a_limit_above_the_power_capacity_never_reaches_the_bmc(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """PowerCapacityWatts bounds a Power resource's limit; the refusal names the range and
    the resource; a negative limit is refused the same way."""
    bmc = await start_bmc(legacy_rack())
    driver = await connect(bmc, power_limit_writes=True)
    power = f"{chassis_uri('Rack1')}/Power"
    with pytest.raises(WriteRefusedError, match=rf"outside \[0, 5000\] W allowed by {power}"):
        await driver.write("rack1_power_limit", 6000.0)
    with pytest.raises(WriteRefusedError, match="outside"):
        await driver.write("rack1_power_limit", -1.0)
    assert bmc.patches == []


async def test_a_bmc_refusing_the_power_patch_is_a_device_error_with_its_message(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """The BMC's own 400 travels in the DeviceError, naming the PATCH and the resource."""
    bmc = await start_bmc(legacy_rack(), refuse_patch=True)
    driver = await connect(bmc, power_limit_writes=True)
    power = f"{chassis_uri('Rack1')}/Power"
    with pytest.raises(DeviceError, match=rf"PATCH {power}: 400 .*PropertyValueOutOfRange"):
        await driver.write("rack1_power_limit", 1000.0)


async def test_a_control_is_preferred_to_the_power_resource_when_both_are_offered(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """Rack1: EnvironmentMetrics names its Control; Rack2 links Controls. Both also link Power,
    yet the limit is written as the Control's SetPoint (ControlMode set Automatic)."""
    shape = Shape()
    rack1 = shape.power("Rack1", 3000.0, capacity_w=5000.0, EnvironmentMetrics="EnvironmentMetrics")
    named = shape.control(f"{rack1}/Controls/CappingA", low_w=500.0, high_w=5000.0)
    shape.docs[f"{rack1}/EnvironmentMetrics"] = {
        "@odata.id": f"{rack1}/EnvironmentMetrics",
        "PowerLimitWatts": {"DataSourceUri": named, "SetPoint": None, "ControlMode": "Disabled"},
    }
    rack2 = shape.power("Rack2", 2000.0, capacity_w=5000.0, Controls="Controls")
    conventional = shape.control(f"{rack2}/Controls/PowerLimit", low_w=500.0, high_w=5000.0)
    bmc = await start_bmc(shape)
    driver = await connect(bmc, power_limit_writes=True)
    await driver.write("rack1_power_limit", 2500.0)
    await driver.write("rack2_power_limit", 1500.0)
    assert [(path, body) for path, body, _ in bmc.patches] == [
        (named, {"SetPoint": 2500.0, "ControlMode": "Automatic"}),
        (conventional, {"SetPoint": 1500.0, "ControlMode": "Automatic"}),
    ]


async def test_a_control_with_one_bound_refuses_beyond_it_naming_the_open_end(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """A Control without AllowableMin: a value above AllowableMax is a WriteRefusedError whose
    range shows the open end (it was a TypeError out of the message's formatting)."""
    shape = Shape()
    rack = shape.power("Rack1", 3000.0, Controls="Controls")
    control = shape.control(f"{rack}/Controls/PowerLimit", low_w=500.0, high_w=5000.0)
    del shape.docs[control]["AllowableMin"]
    bmc = await start_bmc(shape)
    driver = await connect(bmc, power_limit_writes=True)
    with pytest.raises(WriteRefusedError, match=r"outside \[-inf, 5000\] W allowed by"):
        await driver.write("rack1_power_limit", 6000.0)
    await driver.write("rack1_power_limit", 100.0)
    assert shape.docs[control]["SetPoint"] == 100.0


# ---- metric reports ------------------------------------------------------------------------------


async def test_a_report_of_supply_inputs_and_power_control_is_read_in_one_get(
    start_bmc: StartBmc, connect: Connect
) -> None:
    """The report carries the enclosure's PowerControl/0, its blades' EnvironmentMetrics and a
    rack's power supplies (and, for the rack, a PowerControl and a sensor that are not added):
    every chassis is read from the report, each watt counted once."""
    shape = Shape()
    shape.power("Enclosure", 5000.0, contains=("Blade1", "Blade2"))
    shape.environment_metrics("Blade1", 2000.0, 24.0)
    shape.environment_metrics("Blade2", 2500.0, 25.0)
    shape.power_subsystem("Rack2", [700.0, 800.0])
    base = f"{V1}/Chassis"
    supplies = f"{base}/Rack2/PowerSubsystem/PowerSupplies"
    shape.report(
        [
            (f"{base}/Enclosure/Power#/PowerControl/0/PowerConsumedWatts", "5000"),
            (f"{base}/Enclosure/Power#/PowerControl/1/PowerConsumedWatts", "1200"),
            (f"{base}/Blade1/EnvironmentMetrics#/PowerWatts/Reading", "2000"),
            (f"{base}/Blade2/EnvironmentMetrics#/PowerWatts/Reading", "2500"),
            (f"{supplies}/PSU1/Metrics#/InputPowerWatts/Reading", "700"),
            (f"{supplies}/PSU2/Metrics#/InputPowerWatts/Reading", "800"),
            (f"{base}/Rack2/Power#/PowerControl/0/PowerConsumedWatts", "1490"),
            (f"{base}/Rack2/Sensors/TotalPower#/Reading", "1495"),
        ]
    )
    bmc = await start_bmc(shape)
    driver = await connect(bmc)
    assert driver.report_path == f"{V1}/TelemetryService/MetricReports/PowerReport"
    bmc.requests.clear()
    got = values(await driver.read())
    assert bmc.requests == [("GET", f"{V1}/TelemetryService/MetricReports/PowerReport")]
    assert got == {
        "bmc.enclosure_power": 5000.0,
        "bmc.blade1_power": 2000.0,
        "bmc.blade2_power": 2500.0,
        "bmc.rack2_power": 1500.0,
        "bmc.total_power": 5000.0 + 1500.0,
    }
    assert set(driver.power_sources.values()) == {"MetricReport"}


# ---- HTTPS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    fingerprint: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA and a BMC certificate for 127.0.0.1 signed by it."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test BMC CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Pki(folder / "ca.pem", folder / "bmc.pem", folder / "bmc.key", "")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return Pki(paths.ca, paths.cert, paths.key, digest)


async def test_https_with_the_configured_ca_bundle_is_read(
    start_bmc: StartBmc, connect: Connect, pki: Pki
) -> None:
    """ca_bundle: the BMC's certificate is verified against the site's CA, host name included."""
    bmc = await start_bmc(tls=(pki.cert, pki.key))
    driver = await connect(bmc, ca_bundle=str(pki.ca))
    assert values(await driver.read())["bmc.total_power"] == 1500.0


async def test_https_with_a_pinned_fingerprint_accepts_that_certificate_only(
    start_bmc: StartBmc, connect: Connect, pki: Pki
) -> None:
    """tls_fingerprint_sha256 (colons and upper case as openssl prints it) is accepted."""
    bmc = await start_bmc(tls=(pki.cert, pki.key))
    pin = ":".join(pki.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    driver = await connect(bmc, tls_fingerprint_sha256=pin)
    assert values(await driver.read())["bmc.total_power"] == 1500.0


async def test_a_wrong_pin_fails_before_any_request_reaches_the_bmc(
    start_bmc: StartBmc, pki: Pki
) -> None:
    """Another certificate than the pinned one: a DeviceError, and no credentials were sent."""
    bmc = await start_bmc(tls=(pki.cert, pki.key))
    driver = RedfishDriver(config(bmc, tls_fingerprint_sha256="00" * 32))
    with pytest.raises(DeviceError, match="not the pinned"):
        await driver.connect()
    assert bmc.requests == []


async def test_an_unknown_ca_is_refused_by_default(start_bmc: StartBmc, pki: Pki) -> None:
    """Without ca_bundle or pin the system CAs decide, and they do not know the test CA."""
    bmc = await start_bmc(tls=(pki.cert, pki.key))
    driver = RedfishDriver(config(bmc))
    with pytest.raises(DeviceError, match="CERTIFICATE_VERIFY_FAILED"):
        await driver.connect()
    assert bmc.requests == []


async def test_an_unreadable_ca_bundle_is_a_clear_device_error(
    start_bmc: StartBmc, pki: Pki, tmp_path: Path
) -> None:
    """A ca_bundle path that is missing: the error names the setting and the file."""
    bmc = await start_bmc(tls=(pki.cert, pki.key))
    missing = tmp_path / "nowhere.pem"
    driver = RedfishDriver(config(bmc, ca_bundle=str(missing)))
    with pytest.raises(DeviceError, match=f"ca_bundle {missing}: not a readable PEM file"):
        await driver.connect()
