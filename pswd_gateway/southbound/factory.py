"""Build the driver for a configured device (a lookup table by ``kind``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pswd_gateway.config import GatewayConfig, ModbusDeviceConfig, RedfishDeviceConfig
from pswd_gateway.southbound.base import Driver

__all__ = ["build_driver"]


def _modbus(device: ModbusDeviceConfig | RedfishDeviceConfig, config: GatewayConfig) -> Driver:
    from pswd_gateway.southbound.modbus.driver import ModbusDriver  # noqa: PLC0415
    from pswd_gateway.southbound.modbus.sunspec import load_device_map  # noqa: PLC0415

    assert isinstance(device, ModbusDeviceConfig)
    return ModbusDriver(device, load_device_map(config.register_map_path(device.register_map)))


def _redfish(device: ModbusDeviceConfig | RedfishDeviceConfig, config: GatewayConfig) -> Driver:
    from pswd_gateway.southbound.redfish.driver import RedfishDriver  # noqa: PLC0415

    del config
    assert isinstance(device, RedfishDeviceConfig)
    return RedfishDriver(device)


_BUILDERS: Mapping[
    str, Callable[[ModbusDeviceConfig | RedfishDeviceConfig, GatewayConfig], Driver]
] = {"modbus": _modbus, "redfish": _redfish}


def build_driver(device: ModbusDeviceConfig | RedfishDeviceConfig, config: GatewayConfig) -> Driver:
    """The driver for ``device``."""
    return _BUILDERS[device.kind](device, config)
