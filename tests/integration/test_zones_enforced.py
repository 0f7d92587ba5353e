"""Zones and conduits enforced by the running gateway, on every listener at once.

Every conduit is on 127.0.0.1/32, so a client that connects from 127.0.0.2 (the same loopback
interface, another address) is outside every zone: each listener must close its connection at
accept, count it in ``pswd_conduit_refusals_total`` and audit it. From 127.0.0.1 the conduits'
access is a ceiling over the caller's role: a submitter token through a read-only conduit cannot
announce; an OPC UA operator through an ``announce`` conduit cannot set a grid limit; an MMS
operator through a ``read`` conduit cannot operate.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asyncua import ua
from test_opcua import USERS, Site, client_certificate, secure_client

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.security.certs import init_opcua_certs, trust_opcua_client
from pswd_gateway.security.passwords import hash_password

pytestmark = pytest.mark.integration

OUTSIDE = "127.0.0.2"
SUBMITTER_TOKEN = "pswd-demo-submitter"
MMS_CLIENT = Path(__file__).with_name("mms_client.py")


@dataclass
class Ports:
    api: int
    metrics: int
    opcua: int
    mms: int


def _config(tmp: Path, ports: Ports) -> GatewayConfig:
    import hashlib  # noqa: PLC0415

    zone = {"networks": ["127.0.0.1/32"]}
    return GatewayConfig.model_validate(
        {
            "listeners": {
                "metrics": {"host": "127.0.0.1", "port": ports.metrics},
                "api": {"host": "127.0.0.1", "port": ports.api},
                "opcua": {"host": "127.0.0.1", "port": ports.opcua},
                "iec61850": {"host": "127.0.0.1", "port": ports.mms},
            },
            "site": {"grid_meter": "meter", "bess": "bess", "thermal": None},
            "storage": {"state_dir": str(tmp / "state"), "journal_synchronous": "normal"},
            "api": {
                "tokens": [
                    {
                        "name": "ml",
                        "role": "submitter",
                        "sha256": hashlib.sha256(SUBMITTER_TOKEN.encode()).hexdigest(),
                    }
                ]
            },
            "opcua": {
                "certs_dir": str(tmp / "certs"),
                "users": [
                    {
                        "name": n,
                        "role": r,
                        "password_hash": hash_password(f"pw-{n}", iterations=1000),
                    }
                    for n, r in USERS.items()
                ],
            },
            "iec61850": {
                "users": [
                    {
                        "name": "tso",
                        "role": "operator",
                        "password_hash": hash_password("tso-secret", iterations=1000),
                    }
                ]
            },
            "zones": {
                "enterprise": {"kind": "enterprise", **zone},
                "scada": {"kind": "scada", **zone},
                "monitoring": {"kind": "monitoring", **zone},
            },
            "conduits": [
                {"name": "ml-read", "zone": "enterprise", "listener": "api", "access": "read"},
                {"name": "scada-opcua", "zone": "scada", "listener": "opcua", "access": "announce"},
                {"name": "tso-mms", "zone": "scada", "listener": "iec61850", "access": "read"},
                {"name": "prometheus", "zone": "monitoring", "listener": "metrics"},
            ],
        }
    )


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Ports, Site]]:
    certs = tmp_path / "certs"
    init_opcua_certs(certs, ["127.0.0.1", "localhost"])
    cert, key = client_certificate(tmp_path, "scada")
    trust_opcua_client(certs, cert)
    ports = Ports(free_port(), free_port(), free_port(), free_port())
    gw = Gateway(_config(tmp_path, ports))
    await gw.start()
    try:
        yield gw, ports, Site(gw, f"opc.tcp://127.0.0.1:{ports.opcua}/pswd", certs, cert, key)
    finally:
        await gw.stop()


def _probe(port: int, payload: bytes, source: str) -> bytes | None:
    """Connect from ``source``, send ``payload`` and read: what came back (b"" when the server
    closed the connection), or None when nothing came within 2 s (the connection is still open)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(payload)
            return sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return b""
        except TimeoutError:
            return None


HTTP_GET = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
_URL = b"opc.tcp://127.0.0.1/pswd"
_HEL_BODY = (
    (0).to_bytes(4, "little")  # protocol version
    + (65536).to_bytes(4, "little") * 2  # receive and send buffer sizes
    + (0).to_bytes(4, "little") * 2  # max message size, max chunk count: no limit
    + len(_URL).to_bytes(4, "little")
    + _URL
)
OPCUA_HEL = b"HELF" + (8 + len(_HEL_BODY)).to_bytes(4, "little") + _HEL_BODY


async def _mms(port: int, commands: list[list[Any]], password: str, source: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(MMS_CLIENT), str(port), password, json.dumps(commands),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PSWD_MMS_SOURCE": source},
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_every_listener_refuses_a_peer_outside_its_conduits(
    gateway: tuple[Gateway, Ports, Site],
) -> None:
    gw, ports, _ = gateway
    # inside: each listener answers
    inside_api = await asyncio.to_thread(_probe, ports.api, HTTP_GET, "127.0.0.1")
    assert inside_api is not None
    assert inside_api.startswith(b"HTTP/1.1 200")
    inside_metrics = await asyncio.to_thread(_probe, ports.metrics, HTTP_GET, "127.0.0.1")
    assert inside_metrics is not None
    assert inside_metrics.startswith(b"HTTP/1.1 200")
    inside_opcua = await asyncio.to_thread(_probe, ports.opcua, OPCUA_HEL, "127.0.0.1")
    assert inside_opcua is not None
    assert inside_opcua.startswith(b"ACKF")
    # outside: closed at accept, nothing served
    for port, payload in (
        (ports.api, HTTP_GET),
        (ports.metrics, HTTP_GET),
        (ports.opcua, OPCUA_HEL),
    ):
        assert await asyncio.to_thread(_probe, port, payload, OUTSIDE) == b""
    refused = await _mms(ports.mms, [], "tso-secret", OUTSIDE)
    assert refused["connect"] != 0
    inside = await _mms(ports.mms, [], "tso-secret", "127.0.0.1")
    assert inside["connect"] == 0
    for listener in ("api", "metrics", "opcua", "iec61850"):
        assert gw.gate.refusals.total[listener, "not_in_conduit"] >= 1, listener
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{ports.metrics}/metrics")).text
    assert 'pswd_conduit_refusals_total{listener="opcua",reason="not_in_conduit"} 1.0' in metrics
    assert 'pswd_conduit_admissions_total{listener="api",zone="enterprise"}' in metrics
    await asyncio.sleep(0.2)  # the audit records are written by a task of their own
    assert gw.journal is not None
    audit = await gw.journal.call(gw.journal.sync.audit_entries, 0, 100)
    refusals = {a["action"] for a in audit if a["outcome"] == "refused"}
    assert {
        "api connection",
        "metrics connection",
        "opcua connection",
        "iec61850 connection",
    } <= refusals
    assert all(
        a["actor"].endswith(":127.0.0.2") for a in audit if a["action"].endswith(" connection")
    )


async def test_a_conduit_caps_what_each_listener_lets_a_caller_do(
    gateway: tuple[Gateway, Ports, Site],
) -> None:
    gw, ports, site = gateway
    from test_http_api import body  # noqa: PLC0415

    headers = {"Authorization": f"Bearer {SUBMITTER_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.api}") as http:
        listed = await http.get("/v1/workloads", headers=headers)
        assert listed.status_code == 200
        refused = await http.post("/v1/workloads", json=body(), headers=headers)
    assert refused.status_code == 403
    problem = refused.json()
    assert "conduit 'ml-read' from zone 'enterprise' does not allow 'announce'" in problem["detail"]
    async with await secure_client(site, "operator") as operator:
        idx = await operator.get_namespace_index("urn:pswd:gateway")
        pswd = operator.get_node(ua.NodeId("PSWD", idx))
        with pytest.raises(ua.UaStatusCodeError) as denied:
            await pswd.call_method(f"{idx}:SetGridImportLimit", 250.0)
        assert denied.value.code == ua.StatusCodes.BadUserAccessDenied
    mms = await _mms(ports.mms, [["operate", "PSWDGRID/GAPC1.ImpLimW", 250.0]], "tso-secret",
                     "127.0.0.1")  # fmt: skip
    assert mms["connect"] == 0
    assert not mms["results"][0]["ok"]
    assert gw.config.site.grid_import_limit_mw != 250.0
    await asyncio.sleep(0.2)
    assert gw.journal is not None
    audit = await gw.journal.call(gw.journal.sync.audit_entries, 0, 100)
    refused_http = [a for a in audit if a["action"] == "http.POST /v1/workloads"]
    assert refused_http[0]["detail"]["zone"] == "enterprise"
    assert refused_http[0]["detail"]["conduit"] == "ml-read"
    opcua = [a for a in audit if a["action"] == "opcua SetGridImportLimit"]
    assert opcua[0]["outcome"] == "refused"
    assert opcua[0]["detail"]["conduit"] == "scada-opcua"
    mms_refused = [a for a in audit if a["action"].startswith("operate ")]
    assert (
        "conduit 'tso-mms' from zone 'scada' does not allow 'operate'"
        in mms_refused[0]["detail"]["reason"]
    )
