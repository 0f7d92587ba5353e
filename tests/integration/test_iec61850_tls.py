"""MMS over TLS with certificate-based association: the whole gateway, its MMS server in its own
process, libiec61850's client in another, the site CA of ``pswd-gateway certs``.

A client certificate the site CA issued and did not revoke is the association's identity
(``cert:<name>`` with the certificate's role) and its operates are judged by that role; a client
without a certificate, with another CA's or with a revoked one is refused at the handshake,
counted in ``pswd_conduit_refusals_total`` and audited. Each refused client connects from an
address of its own (127.0.0.x), because the door audits a peer at most once a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.security.passwords import hash_password
from pswd_gateway.security.pki import SiteCa

pytestmark = pytest.mark.integration

CLIENT = Path(__file__).with_name("mms_client.py")
TOTW = ["float", "PSWDGRID/MMXU1.TotW.mag.f", "MX"]
RMPLIM = "PSWDGRID/GAPC1.RmpLimW"
NO_ACCESS_AUTHORITY = 20


@dataclass
class Site:
    gw: Gateway
    ca: SiteCa
    other: SiteCa
    mms_port: int
    metrics_port: int

    def meter(self, watts: float) -> None:
        now = time.time()
        self.gw.store.update(
            [Point("meter.active_power", watts, SiUnit.WATT, Quality.GOOD, now, now)]
        )

    async def client(
        self,
        holder: str | None,
        commands: list[list[Any]],
        *,
        source: str = "127.0.0.1",
        password: str = "",
        ca: SiteCa | None = None,
    ) -> dict[str, Any]:
        """libiec61850's client over TLS, showing ``holder``'s certificate of ``ca`` (the site
        CA unless told; none for ``None``)."""
        issuer = ca or self.ca
        env = {**os.environ, "PSWD_MMS_TLS_CA": str(self.ca.cert_path), "PSWD_MMS_SOURCE": source}
        if holder is not None:
            cert = issuer.root / "clients" / f"{holder}.pem"
            env |= {
                "PSWD_MMS_TLS_CERT": str(cert),
                "PSWD_MMS_TLS_KEY": str(cert.with_suffix(".key")),
            }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CLIENT), str(self.mms_port), password, json.dumps(commands),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60.0)
        assert proc.returncode == 0, err.decode()[-2000:]
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    async def audit(self) -> list[dict[str, Any]]:
        assert self.gw.journal is not None
        return await self.gw.journal.call(self.gw.journal.sync.audit_entries, 0, 1000)

    async def audited(self, action: str, actor: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The first audit record of ``action`` by ``actor`` (audits are written by tasks)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [a for a in await self.audit() if (a["action"], a["actor"]) == (action, actor)]
            if found or time.monotonic() > deadline:
                assert found, f"no audit record of {action!r} by {actor!r}"
                return found[0]
            await asyncio.sleep(0.1)

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text

    async def refusals(self, reason: str) -> float:
        text = await self.metrics()
        key = f'pswd_conduit_refusals_total{{listener="iec61850",reason="{reason}"}} '
        return sum(
            float(line.removeprefix(key)) for line in text.splitlines() if line.startswith(key)
        )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    ca, other = SiteCa(tmp_path / "certs"), SiteCa(tmp_path / "other")
    ca.init("test-site", ["127.0.0.1", "localhost"])
    other.init("elsewhere", ["127.0.0.1"])
    ca.issue_client("alice", "operator")
    ca.issue_client("vic", "viewer")
    ca.issue_client("mallory", "operator")
    ca.revoke("mallory")
    other.issue_client("eve", "admin")
    mms_port, metrics_port = free_port(), free_port()
    gw = Gateway(GatewayConfig.model_validate({
        "listeners": {
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "api": {"enabled": False, "port": 0},
            "iec61850": {
                "host": "127.0.0.1",
                "port": mms_port,
                "tls_cert": str(ca.server_cert),
                "tls_key": str(ca.server_key),
                "tls_client_ca": str(ca.cert_path),
                "tls_crl": str(ca.crl_path),
            },
        },
        "site": {"grid_meter": "meter", "bess": "bess", "thermal": None},
        "storage": {"state_dir": str(tmp_path / "state"), "journal_synchronous": "normal"},
        "iec61850": {
            "update_interval_ms": 50,
            "users": [{"name": "tso", "role": "operator",
                       "password_hash": hash_password("tso-secret", iterations=1000)}],
        },
    }))  # fmt: skip
    await gw.start()
    try:
        yield Site(gw, ca, other, mms_port, metrics_port)
    finally:
        await gw.stop()


async def test_a_site_ca_certificate_reads_and_its_role_judges_its_operates(site: Site) -> None:
    """alice (operator) reads and sets the ramp limit; vic (viewer) reads and is refused
    operating with No-access-authority. The gateway re-checks alice's certificate before it
    carries the operate out, and audits both under the certificate's name."""
    site.meter(42.0e6)
    await asyncio.sleep(0.3)
    alice = await site.client("alice", [TOTW, ["operate", RMPLIM, 15.0]])
    assert alice["connect"] == 0
    assert alice["results"][0] == [pytest.approx(42.0), 0]
    assert alice["results"][1]["ok"], alice
    vic = await site.client("vic", [TOTW, ["operate", RMPLIM, 10.0]])
    assert vic["connect"] == 0
    assert vic["results"][0] == [pytest.approx(42.0), 0]
    assert not vic["results"][1]["ok"]
    assert vic["results"][1]["add_cause"] == NO_ACCESS_AUTHORITY
    accepted = await site.audited("set grid_ramp_limit_mw_per_s", "cert:alice")
    assert (accepted["role"], accepted["outcome"]) == ("operator", "accepted")
    refused = await site.audited(f"operate {RMPLIM.removeprefix('PSWD')}", "cert:vic")
    assert refused["outcome"] == "refused"
    assert "may not operate" in refused["detail"]["reason"]
    metrics = await site.metrics()
    for listener in ("iec61850", "iec61850-client-ca"):
        assert f'pswd_certificate_expiry_timestamp_seconds{{listener="{listener}"}}' in metrics


async def test_a_password_over_tls_names_its_user(site: Site) -> None:
    """An association that sends an ACSE password over TLS is that user's (the certificate
    still had to pass the handshake): alice's certificate with tso's password operates as
    mms:tso."""
    got = await site.client("alice", [["operate", RMPLIM, 12.0]], password="tso-secret")
    assert got["connect"] == 0
    assert got["results"][0]["ok"], got
    await site.audited("set grid_ramp_limit_mw_per_s", "mms:tso")


@pytest.mark.parametrize(
    ("holder", "issuer", "source", "reason"),
    [
        (None, "site", "127.0.0.2", "no_certificate"),
        ("eve", "other", "127.0.0.3", "bad_certificate"),
        ("mallory", "site", "127.0.0.4", "revoked"),
    ],
    ids=["no certificate", "another CA", "revoked"],
)
async def test_a_client_without_a_valid_certificate_is_refused_counted_and_audited(
    site: Site, holder: str | None, issuer: str, source: str, reason: str
) -> None:
    ca = site.other if issuer == "other" else site.ca
    got = await site.client(holder, [TOTW], source=source, ca=ca)
    assert got["connect"] != 0
    assert got["results"] == []
    record = await site.audited("iec61850 connection", f"iec61850:{source}")
    assert record["outcome"] == "refused"
    assert "TLS handshake refused" in record["detail"]["reason"]
    assert await site.refusals(reason) == 1.0
    assert site.gw.mms is not None
    assert site.gw.mms.restarts_total == 0  # refused, not crashed


async def test_a_revocation_is_honoured_without_a_restart(site: Site, tmp_path: Path) -> None:
    """alice's open association operates, alice is revoked, and the same association's next
    operate is refused; vic, idle when revoked, is refused at his next association (the MMS
    process reads the changed CRL then) and at the handshake after that."""
    go_on = tmp_path / "revoked"
    holding = asyncio.create_task(
        site.client(
            "alice",
            [["operate", RMPLIM, 15.0], ["wait_file", str(go_on)], ["operate", RMPLIM, 16.0]],
        )
    )
    await site.audited("set grid_ramp_limit_mw_per_s", "cert:alice", timeout_s=30.0)
    await asyncio.to_thread(site.ca.revoke, "alice")
    await asyncio.to_thread(site.ca.revoke, "vic")
    go_on.touch()
    alice = await holding
    assert alice["results"][0]["ok"], alice
    assert alice["results"][1] is True
    assert not alice["results"][2]["ok"]
    assert alice["results"][2]["add_cause"] == NO_ACCESS_AUTHORITY
    refused = await site.audited(f"operate {RMPLIM.removeprefix('PSWD')}", "cert:alice")
    assert "revoked" in refused["detail"]["reason"]
    # vic: alice's operate already had the MMS process read the new CRL, so the handshake
    # refuses him at once
    vic = await site.client("vic", [TOTW], source="127.0.0.5")
    assert vic["connect"] != 0
    assert await site.refusals("revoked") == 1.0
    record = await site.audited("iec61850 connection", "iec61850:127.0.0.5")
    assert "revoked" in record["detail"]["reason"]


async def test_a_revocation_is_refused_at_the_next_association_then_at_the_handshake(
    site: Site,
) -> None:
    """Nothing happens between the revocation and vic's next connection: its handshake still
    passes on the CRL libiec61850 had, the association is refused by the CRL read again, and the
    next connection is refused at the handshake."""
    await asyncio.to_thread(site.ca.revoke, "vic")
    first = await site.client("vic", [TOTW], source="127.0.0.6")
    assert first["connect"] != 0
    record = await site.audited("mms association", "cert:vic")
    assert record["outcome"] == "refused"
    assert "revoked" in record["detail"]["reason"]
    second = await site.client("vic", [TOTW], source="127.0.0.7")
    assert second["connect"] != 0
    assert await site.refusals("revoked") == 1.0


async def test_a_client_that_never_finishes_its_handshake_is_cut_and_the_rest_are_served(
    site: Site,
) -> None:
    """libiec61850 runs the handshake on its one server thread: a client that connects and says
    nothing would hold every other client up. The MMS process cuts it after 5 s, counts and
    audits it, and serves the next client."""
    silent = socket.create_connection(
        ("127.0.0.1", site.mms_port), timeout=30.0, source_address=("127.0.0.8", 0)
    )
    try:
        started = time.monotonic()
        closed = await asyncio.to_thread(silent.recv, 1)
        waited_s = time.monotonic() - started
    finally:
        silent.close()
    assert closed == b""  # the server shut it down
    print(f"silent client cut after {waited_s:.2f} s")
    assert waited_s < 15.0
    record = await site.audited("iec61850 connection", "iec61850:127.0.0.8")
    assert "no TLS handshake within 5 s" in record["detail"]["reason"]
    assert await site.refusals("tls_handshake") == 1.0
    site.meter(7.0e6)
    await asyncio.sleep(0.3)
    alice = await site.client("alice", [TOTW])
    assert alice["results"] == [[pytest.approx(7.0), 0]]


def _handshake(site: Site, ciphers: str) -> tuple[str, str] | None:
    """A TLS 1.2 handshake with alice's certificate offering only ``ciphers`` (OpenSSL names):
    the version and suite agreed, or None when the server refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(site.ca.cert_path)
    alice = site.ca.root / "clients" / "alice.pem"
    context.load_cert_chain(alice, alice.with_suffix(".key"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    try:
        with (
            socket.create_connection(("127.0.0.1", site.mms_port), timeout=10.0) as raw,
            context.wrap_socket(raw) as tls,
        ):
            cipher = tls.cipher()
            return (str(tls.version()), cipher[0]) if cipher else None
    except ssl.SSLError:
        return None


async def test_only_forward_secret_aead_cipher_suites_are_agreed(site: Site) -> None:
    """libiec61850's default list also has CBC suites and one without encryption; the listener
    agrees on ECDHE with AES-GCM (TLS 1.2) or TLS 1.3's suites only."""
    agreed = await asyncio.to_thread(_handshake, site, "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert agreed == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
    for weak in ("ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"):
        assert await asyncio.to_thread(_handshake, site, weak) is None, weak
    assert await site.refusals("tls_handshake") == 2.0
