"""Clients share one TLS context: building one reads the CA bundle (~30 ms of a 2-core box's
event loop), and a driver that reconnects or a probe that opens a client per question would
stall the control cycle that long each time."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pytest

from pswd_gateway.client import AsyncPswdClient, PswdClient
from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.security.tls import default_client_context
from pswd_gateway.southbound.redfish.driver import RedfishDriver


@pytest.fixture
def contexts_built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every TLS context httpx or the gateway builds from a CA bundle, after the shared one."""
    default_client_context()
    built: list[str] = []
    real: Callable[..., ssl.SSLContext] = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(repr((args, kwargs)))
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    return built


def test_the_shared_context_is_built_once() -> None:
    assert default_client_context() is default_client_context()
    assert default_client_context().verify_mode is ssl.CERT_REQUIRED
    assert default_client_context().check_hostname


async def test_api_clients_build_no_tls_context_of_their_own(contexts_built: list[str]) -> None:
    for _ in range(3):
        async with AsyncPswdClient("http://127.0.0.1:1", "t"):
            pass
        with PswdClient("http://127.0.0.1:1", "t"):
            pass
    assert contexts_built == []


def test_a_redfish_driver_verifies_with_the_shared_context(contexts_built: list[str]) -> None:
    cfg = RedfishDeviceConfig.model_validate(
        {"name": "bmc", "base_url": "https://bmc.example:443", "username": "u", "password": "p"}
    )
    driver = RedfishDriver(cfg)
    assert driver._tls_verification() is default_client_context()
    off = RedfishDeviceConfig.model_validate({**cfg.model_dump(), "verify_tls": False})
    assert RedfishDriver(off)._tls_verification() is False
    assert contexts_built == []
