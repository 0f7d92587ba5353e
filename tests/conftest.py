"""Shared pytest fixtures. Each group says which part of the gateway it belongs to."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest

from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.twin import Twin

# --- tools a test needs from the machine ---------------------------------------------------

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_tool(command, package): the test runs COMMAND (from the Debian PACKAGE)",
    )
    config.addinivalue_line("markers", "needs_root: the test needs root (raw sockets)")


def _missing(message: str) -> None:
    """A check that skips where it runs cannot fail: under CI a missing tool fails the test."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing tool fails, it does not skip)")
    pytest.skip(message)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        command, package = mark.args
        if shutil.which(command) is None:
            _missing(
                f"{command} is not installed: `make test-tools` (as root) or "
                f"`sudo apt-get install {package}`"
            )
    if item.get_closest_marker("needs_root") is not None and os.geteuid() != 0:
        _missing("needs root (GOOSE frames on lo are raw sockets): run as root, as CI does")


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
