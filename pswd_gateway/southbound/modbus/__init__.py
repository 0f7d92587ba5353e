"""Modbus TCP: declarative register maps, SunSpec models, the async client driver."""
