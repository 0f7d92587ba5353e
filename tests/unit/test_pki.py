"""The site CA: keys kept private, client certificates that carry a role, revocation."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import structlog

from pswd_gateway.daemon import _note_certificate
from pswd_gateway.security.pki import SiteCa, client_identity, days_left, revoked_serials


def test_init_writes_a_ca_a_crl_and_a_server_certificate_once(tmp_path: Path) -> None:
    ca = SiteCa(tmp_path)
    assert ca.init("north", ["127.0.0.1", "gw.example"])
    for key in (ca.key_path, ca.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert revoked_serials(ca.crl_path) == frozenset()
    before = ca.cert_path.read_bytes()
    assert not ca.init("north")  # kept
    assert ca.cert_path.read_bytes() == before
    # the server certificate verifies against the CA, for the host it names
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    assert context.cert_store_stats()["x509_ca"] == 1
    assert 700 < days_left(ca.server_cert) < 731


def test_a_client_certificate_carries_its_role_and_revocation_reaches_the_crl(
    tmp_path: Path,
) -> None:
    ca = SiteCa(tmp_path)
    ca.init("north", ["127.0.0.1"])
    alice = ca.issue_client("alice", "operator")
    bob = ca.issue_client("bob", "submitter", days=10)
    assert [r.name for r in ca.issued()] == ["alice", "bob"]
    decoded = ssl._ssl._test_decode_cert(alice.path)  # type: ignore[attr-defined]
    assert client_identity(decoded) == ("alice", "operator")
    assert client_identity({"subject": ((("commonName", "x"),),)}) is None  # no role: no one
    assert ca.revoke("nobody") == []
    revoked = ca.revoke(bob.serial)
    assert [r.name for r in revoked] == ["bob"]
    assert revoked_serials(ca.crl_path) == {int(bob.serial, 16)}
    assert ca.revoke("bob") == []  # already revoked
    assert 9 < days_left(Path(bob.path)) < 10.1


def test_a_certificate_near_expiry_is_warned_about_and_its_expiry_recorded(
    tmp_path: Path,
) -> None:
    ca = SiteCa(tmp_path)
    ca.init("north", ["127.0.0.1"])
    soon = ca.issue_client("soon", "viewer", days=10)
    expiry: dict[str, float] = {}
    with structlog.testing.capture_logs() as logs:
        _note_certificate(expiry, "api", Path(soon.path))
        _note_certificate(expiry, "metrics", ca.server_cert)
        _note_certificate(expiry, "opcua", None)
    assert set(expiry) == {"api", "metrics"}
    warned = [e for e in logs if e["event"] == "certificate_expires_soon"]
    assert [e["listener"] for e in warned] == ["api"]
    assert warned[0]["days_left"] < 10.1
