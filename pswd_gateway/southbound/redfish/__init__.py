"""Redfish (DMTF): BMC telemetry and GPU power limits over HTTP(S)."""
