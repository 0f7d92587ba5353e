"""Redfish (DMTF): BMC telemetry and GPU power limits over HTTP(S).

``driver`` talks to the BMC; ``documents`` and ``sse`` are the pure parsing it relies on.
"""

from pswd_gateway.southbound.redfish.driver import RedfishDriver, RedfishStats

__all__ = ["RedfishDriver", "RedfishStats"]
