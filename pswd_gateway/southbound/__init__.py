"""Southbound: device drivers (Modbus TCP / SunSpec, Redfish) and the poll scheduler."""
