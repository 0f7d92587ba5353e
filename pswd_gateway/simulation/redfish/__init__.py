"""Redfish BMC twin: a DMTF Redfish HTTP server in front of simulated GPU racks.

The physics lives elsewhere; the server asks a :class:`RedfishTwinBackend` for readings at
request time and hands power-limit writes back to it. Each rack is a ``Chassis`` (type ``Rack``)
with ``EnvironmentMetrics``, ``PowerSubsystem``, ``Sensors`` and a ``Controls/PowerLimit``
Control. One ``MetricReport`` carries every rack's power, inlet temperature and power limit, and
is also streamed as server-sent events; ``power_resource="Power"`` makes a BMC of the older kind,
with the ``Power`` resource instead. Sessions (``X-Auth-Token``) and HTTP Basic are accepted;
everything but ``/redfish``, ``/redfish/v1`` and the OData documents (``$metadata``, ``odata``)
needs one. Every refusal is a Redfish error body from the Base message registry. What DMTF's
Redfish Protocol Validator checks passes. ``docs/redfish.md`` lists the resources.

- ``server``: :class:`RedfishTwinServer`, the route table, the front gate, the listener;
- ``sessions``: sessions, HTTP Basic and the SessionService;
- ``resources``: the service root and the racks (``Chassis/{id}/…``), the power-limit PATCHes;
- ``events``: the MetricReport, TelemetryService, EventService and the SSE feed;
- ``accounts``: the AccountService (the one account, the standard roles);
- ``odata``: ``$metadata`` and the OData service document;
- ``documents``: URIs, ``@odata.type`` table, JSON values and responses, reading a request body;
- ``registry``: the Base message registry and :class:`RedfishError`;
- ``backend``: :class:`ChassisReading` and the :class:`RedfishTwinBackend` protocol.
"""

from pswd_gateway.simulation.redfish.backend import ChassisReading, RedfishTwinBackend
from pswd_gateway.simulation.redfish.registry import RedfishError
from pswd_gateway.simulation.redfish.server import RedfishTwinServer

__all__ = ["ChassisReading", "RedfishError", "RedfishTwinBackend", "RedfishTwinServer"]
