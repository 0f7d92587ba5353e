"""Mutual TLS on the workload API with the site CA: a client certificate is the caller's
identity (its role from the certificate), a client without one is refused at the handshake, and
a revoked certificate is refused from the next connection on, without a restart."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_http_api import body

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.security.pki import SiteCa

pytestmark = pytest.mark.integration


@dataclass
class Site:
    gw: Gateway
    ca: SiteCa
    url: str
    metrics: str

    def client(self, holder: str | None) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        if holder is not None:
            cert = self.ca.root / "clients" / f"{holder}.pem"
            context.load_cert_chain(cert, cert.with_suffix(".key"))
        return httpx.AsyncClient(base_url=self.url, verify=context, timeout=5)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    ca = SiteCa(tmp_path / "certs")
    ca.init("test-site", ["127.0.0.1", "localhost"])
    ca.issue_client("ml-scheduler", "submitter")
    ca.issue_client("viewer-bot", "viewer")
    ca.issue_client("mallory", "operator")
    ca.revoke("mallory")
    ca.issue_client("bob", "submitter")
    api, metrics = free_port(), free_port()
    gw = Gateway(
        GatewayConfig.model_validate(
            {
                "listeners": {
                    "metrics": {"host": "127.0.0.1", "port": metrics},
                    "api": {
                        "host": "127.0.0.1",
                        "port": api,
                        "tls_cert": str(ca.server_cert),
                        "tls_key": str(ca.server_key),
                        "tls_client_ca": str(ca.cert_path),
                        "tls_crl": str(ca.crl_path),
                    },
                },
                "site": {"grid_meter": "meter", "bess": "bess", "thermal": None},
                "storage": {"state_dir": str(tmp_path / "state"), "journal_synchronous": "normal"},
            }
        )
    )
    await gw.start()
    try:
        yield Site(gw, ca, f"https://127.0.0.1:{api}", f"http://127.0.0.1:{metrics}/metrics")
    finally:
        await gw.stop()


async def test_the_client_certificate_is_the_callers_identity_and_role(site: Site) -> None:
    async with site.client("ml-scheduler") as http:
        created = await http.post("/v1/workloads", json=body())
        assert created.status_code == 201, created.text
        assert created.json()["owner"] == "cert:ml-scheduler"
    async with site.client("viewer-bot") as http:
        assert (await http.get("/v1/workloads")).status_code == 200
        refused = await http.post("/v1/workloads", json=body())
    assert refused.status_code == 403
    assert "role 'viewer' lacks 'announce'" in refused.json()["detail"]
    assert site.gw.journal is not None
    audit = await site.gw.journal.call(site.gw.journal.sync.audit_entries, 0, 100)
    assert any(a["actor"] == "cert:ml-scheduler" and a["outcome"] == "accepted" for a in audit)
    assert any(a["actor"] == "cert:viewer-bot" and a["outcome"] == "refused" for a in audit)


async def test_a_client_without_a_certificate_is_refused_at_the_handshake(site: Site) -> None:
    async with site.client(None) as http:
        with pytest.raises(httpx.TransportError):
            await http.get("/v1/workloads", headers={"Authorization": "Bearer anything"})


async def test_a_revoked_certificate_is_refused_without_a_restart(site: Site) -> None:
    async with site.client("mallory") as http:  # revoked before the gateway started
        with pytest.raises(httpx.TransportError):
            await http.get("/v1/workloads")
    async with site.client("bob") as http:
        assert (await http.get("/v1/workloads")).status_code == 200
    await asyncio.sleep(0.05)  # a CRL written in the same clock tick keeps its mtime
    site.ca.revoke("bob")
    for _ in range(2):  # the first is refused after the handshake, the next at it
        async with site.client("bob") as http:
            with pytest.raises(httpx.TransportError):
                await http.get("/v1/workloads")
    assert site.gw.gate.refusals.total["api", "revoked"] >= 1
    async with httpx.AsyncClient() as http:
        text = (await http.get(site.metrics)).text
    assert 'pswd_conduit_refusals_total{listener="api",reason="revoked"}' in text
