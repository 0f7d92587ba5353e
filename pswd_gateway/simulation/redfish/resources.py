"""The service root and the racks: ``Chassis/{id}`` with its power, environment, sensors and
the ``Controls/PowerLimit`` Control, the one writable resource.

A BMC of the older kind (``power_resource="Power"``) has none of ``EnvironmentMetrics``,
``PowerSubsystem`` and ``Controls``: each chassis has the ``Power`` resource instead, whose
``PowerControl[0]`` carries ``PowerConsumedWatts`` and the writable ``PowerLimit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from starlette.requests import Request
from starlette.responses import Response

from pswd_gateway.logging import get_logger
from pswd_gateway.simulation.redfish.backend import RedfishTwinBackend
from pswd_gateway.simulation.redfish.documents import (
    OK,
    SESSIONS,
    TYPES,
    V1,
    RedfishJSON,
    chassis_uri,
    collection,
    finite_number,
    json_object,
    json_text,
    num,
    ref,
)
from pswd_gateway.simulation.redfish.registry import RedfishError

__all__ = ["SENSORS", "ChassisResources", "PowerResource", "service_root", "versions"]

log = get_logger("simulation.redfish")

J_PER_KWH: Final = 3.6e6

PowerResource = Literal["EnvironmentMetrics", "Power"]
"""Where a chassis reports its power: ``EnvironmentMetrics`` (with ``PowerSubsystem`` and
``Controls``), or the older ``Power`` resource that DSP0268 deprecated in 2020.4."""
_LIMIT_EXCEPTIONS: Final = frozenset({"NoAction", "HardPowerOff", "LogEventOnly", "Oem"})

SENSORS: Final[Mapping[str, tuple[str, str, str]]] = {
    # sensor id -> (ReadingType, ReadingUnits (UCUM), PhysicalContext)
    "TotalPower": ("Power", "W", "Chassis"),
    "InletTemp": ("Temperature", "Cel", "Intake"),
    "TotalEnergy": ("EnergykWh", "kW.h", "Chassis"),
}
_CONTROL_READ_ONLY: Final = frozenset(
    {"Id", "Name", "AllowableMin", "AllowableMax", "ControlType", "SetPointUnits", "Sensor"}
)


async def versions(_: Request) -> Response:
    """``GET /redfish``: the protocol versions served."""
    return RedfishJSON({"v1": V1 + "/"})


def service_root(*, telemetry: bool) -> dict[str, Any]:
    """The ServiceRoot document (``GET /redfish/v1``)."""
    services = ["AccountService", "Chassis", "SessionService"]
    if telemetry:
        services += ["EventService", "TelemetryService"]
    return {
        "@odata.id": V1,
        "@odata.type": TYPES["ServiceRoot"],
        "Id": "RootService",
        "Name": "Root Service",
        "RedfishVersion": "1.18.0",
        "UUID": "5a1e7c4e-0000-4000-8000-00000000b3c0",
        "Vendor": "pswd-gateway",
        "Product": "PSWD digital twin GPU hall BMC",
        **{service: ref(f"{V1}/{service}") for service in sorted(services)},
        "Links": {"Sessions": ref(SESSIONS)},
        "ProtocolFeaturesSupported": {
            "ExcerptQuery": False,
            "ExpandQuery": {"ExpandAll": False, "Levels": False, "Links": False},
            "FilterQuery": False,
            "OnlyMemberQuery": False,
            "SelectQuery": False,
        },
    }


_LIMIT_PATH: Final = "PowerControl/0/PowerLimit/LimitInWatts"


def _watts(raw: object, prop: str, allowed: tuple[float, float]) -> float:
    """A power limit written to ``prop``: a number within ``allowed``, or a 400."""
    watts = finite_number(raw)
    if watts is None:
        raise RedfishError(400, "PropertyValueTypeError", json_text(raw), prop)
    lo, hi = allowed
    if not lo <= watts <= hi:
        raise RedfishError(400, "PropertyValueOutOfRange", json_text(raw), prop)
    return watts


def _power_limit_object(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """``PowerControl[0].PowerLimit`` of a PATCH of ``Power``; a 400 for anything else."""
    props = {k: v for k, v in body.items() if not k.startswith("@")}
    for prop in props:
        if prop != "PowerControl":
            raise RedfishError(400, "PropertyNotWritable", prop)
    controls = props.get("PowerControl")
    if controls is None:
        raise RedfishError(400, "NoOperation")
    if not (isinstance(controls, list) and len(controls) == 1 and isinstance(controls[0], dict)):
        raise RedfishError(400, "PropertyValueTypeError", json_text(controls), "PowerControl")
    for prop in controls[0]:
        if prop != "PowerLimit" and not prop.startswith("@"):
            raise RedfishError(400, "PropertyNotWritable", f"PowerControl/0/{prop}")
    limit = controls[0].get("PowerLimit")
    if not isinstance(limit, dict) or "LimitInWatts" not in limit:
        raise RedfishError(400, "PropertyMissing", _LIMIT_PATH)
    return limit


def _legacy_limit_patch(body: Mapping[str, Any], allowed: tuple[float, float]) -> float | None:
    """The limit a PATCH of ``Power`` writes: ``{"PowerControl": [{"PowerLimit":
    {"LimitInWatts": W}}]}`` (``null`` lifts it); a 400 for anything else."""
    limit = _power_limit_object(body)
    for prop, value in limit.items():
        if prop == "LimitException" and value not in _LIMIT_EXCEPTIONS:
            raise RedfishError(400, "PropertyValueNotInList", json_text(value), prop)
        if prop not in ("LimitInWatts", "LimitException"):
            raise RedfishError(400, "PropertyUnknown", f"PowerControl/0/PowerLimit/{prop}")
    raw = limit["LimitInWatts"]
    return None if raw is None else _watts(raw, _LIMIT_PATH, allowed)


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
        raise RedfishError(400, "PropertyValueNotInList", json_text(mode), "ControlMode")
    return props


class ChassisResources:
    """``/redfish/v1/Chassis`` and everything under it, read from ``backend`` per request."""

    def __init__(
        self, backend: RedfishTwinBackend, power_resource: PowerResource = "EnvironmentMetrics"
    ) -> None:
        self.backend = backend
        self.power_resource = power_resource

    def _chassis_id(self, request: Request) -> str:
        cid: str = request.path_params["cid"]
        if cid not in self.backend.chassis_ids():
            raise RedfishError(404, "ResourceNotFound", "Chassis", cid)
        return cid

    async def members(self, _: Request) -> Response:
        paths = [chassis_uri(cid) for cid in self.backend.chassis_ids()]
        return RedfishJSON(
            collection(V1 + "/Chassis", "ChassisCollection", "Chassis Collection", paths)
        )

    async def chassis(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        uri = chassis_uri(cid)
        if self.power_resource == "Power":
            links = ["Power", "Sensors"]
        else:
            links = ["EnvironmentMetrics", "PowerSubsystem", "Sensors", "Controls"]
        return RedfishJSON(
            {
                "@odata.id": uri,
                "@odata.type": TYPES["Chassis"],
                "Id": cid,
                "Name": f"GPU rack {cid}",
                "ChassisType": "Rack",
                "Manufacturer": "pswd-gateway",
                "Model": "digital twin GPU rack",
                "PowerState": "On",
                "Status": OK,
                **{link: ref(f"{uri}/{link}") for link in links},
            }
        )

    async def power(self, request: Request) -> Response:
        """``GET`` or ``PATCH …/Power``: ``PowerControl[0]`` is the rack; a PATCH of its
        ``PowerLimit.LimitInWatts`` sets the limit (``null`` lifts it)."""
        cid = self._chassis_id(request)
        allowed = self.backend.power_limit_range_w(cid)
        if request.method == "PATCH":
            self._set_limit(cid, _legacy_limit_patch(await json_object(request), allowed))
        uri = chassis_uri(cid) + "/Power"
        _, rated = allowed
        reading = self.backend.chassis_reading(cid)
        return RedfishJSON(
            {
                "@odata.id": uri,
                "@odata.type": TYPES["Power"],
                "Id": "Power",
                "Name": f"Power for {cid}",
                "PowerControl@odata.count": 1,
                "PowerControl": [
                    {
                        "@odata.id": uri + "#/PowerControl/0",
                        "MemberId": "0",
                        "Name": f"{cid} power control",
                        "PhysicalContext": "Rack",
                        "PowerConsumedWatts": num(reading.power_w),
                        "PowerCapacityWatts": num(rated),
                        "PowerLimit": {
                            "LimitInWatts": num(self.backend.power_limit_w(cid)),
                            "LimitException": "NoAction",
                        },
                        "RelatedItem": [ref(chassis_uri(cid))],
                        "Status": OK,
                    }
                ],
            }
        )

    async def power_subsystem(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        _, rated = self.backend.power_limit_range_w(cid)
        return RedfishJSON(
            {
                "@odata.id": chassis_uri(cid) + "/PowerSubsystem",
                "@odata.type": TYPES["PowerSubsystem"],
                "Id": "PowerSubsystem",
                "Name": f"Power Subsystem for {cid}",
                "CapacityWatts": num(rated),
                "Status": OK,
            }
        )

    def _limit_state(self, cid: str) -> dict[str, Any]:
        lo, hi = self.backend.power_limit_range_w(cid)
        limit = self.backend.power_limit_w(cid)
        return {
            "SetPoint": num(limit),
            "AllowableMin": num(lo),
            "AllowableMax": num(hi),
            "ControlMode": "Disabled" if limit is None else "Automatic",
        }

    async def environment_metrics(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        reading = self.backend.chassis_reading(cid)
        uri = chassis_uri(cid)
        return RedfishJSON(
            {
                "@odata.id": uri + "/EnvironmentMetrics",
                "@odata.type": TYPES["EnvironmentMetrics"],
                "Id": "EnvironmentMetrics",
                "Name": f"Environment Metrics for {cid}",
                "PowerWatts": {
                    "DataSourceUri": uri + "/Sensors/TotalPower",
                    "Reading": num(reading.power_w),
                },
                "TemperatureCelsius": {
                    "DataSourceUri": uri + "/Sensors/InletTemp",
                    "Reading": num(reading.inlet_temp_c),
                },
                "EnergykWh": {
                    "DataSourceUri": uri + "/Sensors/TotalEnergy",
                    "Reading": num(reading.energy_j / J_PER_KWH),
                },
                "PowerLimitWatts": {
                    "DataSourceUri": uri + "/Controls/PowerLimit",
                    **self._limit_state(cid),
                },
            }
        )

    async def sensors(self, request: Request) -> Response:
        uri = chassis_uri(self._chassis_id(request)) + "/Sensors"
        paths = [f"{uri}/{sid}" for sid in SENSORS]
        return RedfishJSON(collection(uri, "SensorCollection", "Sensors", paths))

    async def sensor(self, request: Request) -> Response:
        cid = self._chassis_id(request)
        sid = request.path_params["sid"]
        if sid not in SENSORS:
            raise RedfishError(404, "ResourceNotFound", "Sensor", sid)
        kind, units, context = SENSORS[sid]
        reading = self.backend.chassis_reading(cid)
        value = {
            "TotalPower": reading.power_w,
            "InletTemp": reading.inlet_temp_c,
            "TotalEnergy": reading.energy_j / J_PER_KWH,
        }[sid]
        doc: dict[str, Any] = {
            "@odata.id": f"{chassis_uri(cid)}/Sensors/{sid}",
            "@odata.type": TYPES["Sensor"],
            "Id": sid,
            "Name": f"{cid} {sid}",
            "ReadingType": kind,
            "ReadingUnits": units,
            "Reading": num(value),
            "PhysicalContext": context,
            "Status": OK,
        }
        if kind == "Power":
            doc["ElectricalContext"] = "Total"
        return RedfishJSON(doc)

    async def controls(self, request: Request) -> Response:
        uri = chassis_uri(self._chassis_id(request)) + "/Controls"
        return RedfishJSON(collection(uri, "ControlCollection", "Controls", [uri + "/PowerLimit"]))

    async def power_limit(self, request: Request) -> Response:
        """``GET`` or ``PATCH …/Controls/PowerLimit``; a PATCH answers the Control as written."""
        cid = self._chassis_id(request)
        if request.method == "PATCH":
            await self._patch_power_limit(cid, await json_object(request))
        uri = chassis_uri(cid)
        reading = self.backend.chassis_reading(cid)
        return RedfishJSON(
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
                    "Reading": num(reading.power_w),
                },
                "RelatedItem": [ref(uri)],
                "Status": OK,
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
        allowed = self.backend.power_limit_range_w(cid)
        self._set_limit(cid, _watts(props["SetPoint"], "SetPoint", allowed))

    def _set_limit(self, cid: str, watts: float | None) -> None:
        try:
            self.backend.set_power_limit_w(cid, watts)
        except ValueError:  # the physics has a narrower idea of the range
            raise RedfishError(
                400, "PropertyValueOutOfRange", json_text(watts), "SetPoint"
            ) from None
        log.info("redfish_twin_power_limit", chassis=cid, watts=watts)
