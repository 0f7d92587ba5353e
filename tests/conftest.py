"""Shared pytest fixtures. Each group says which part of the gateway it belongs to."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.twin import Twin

# --- the site's digital twin (pswd_gateway.simulation) -------------------------------------


@pytest.fixture
def twin_config() -> SimulationConfig:
    """The demo twin on free loopback ports, Modbus devices only (no Redfish BMCs)."""
    return SimulationConfig.model_validate(
        {
            "seed": 42,
            "ports": {"grid_meter": 0, "bess": 0, "thermal": 0, "redfish": [0, 0]},
            "redfish": {"enabled": False},
        }
    )


@pytest.fixture
async def twin_site(twin_config: SimulationConfig) -> AsyncIterator[Twin]:
    """A running twin built from ``twin_config``; always stopped afterwards."""
    twin = Twin(twin_config)
    try:
        await twin.start()
        yield twin
    finally:
        await twin.stop()
