"""Northbound: what the gateway tells the world (metrics, HTTP, OPC UA, IEC 61850).

Northbound adapters never talk to devices: they read the store and submit requests.
"""
