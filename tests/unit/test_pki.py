"""The site CA: keys kept private, client certificates that carry a role, revocation."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives.serialization import Encoding

from pswd_gateway.daemon import _note_certificate
from pswd_gateway.security.pki import (
    ClientCertificates,
    RevocationList,
    SiteCa,
    certificate_holder,
    days_left,
    load_certificate,
    revoked_serials,
)


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
    der = load_certificate(Path(alice.path).read_bytes()).public_bytes(Encoding.DER)
    holder = certificate_holder(der)
    assert holder is not None
    assert (holder.name, holder.role, holder.serial) == (
        "cert:alice",
        "operator",
        int(alice.serial, 16),
    )
    assert certificate_holder(ca.server_cert.read_bytes()) is None  # no role: no one
    assert certificate_holder(b"\x30\x03\x02\x01\x00") is None  # not a certificate
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


def test_a_certificate_is_vouched_for_only_when_the_ca_issued_it_and_did_not_revoke_it(
    tmp_path: Path,
) -> None:
    """What the gateway checks again of a certificate its MMS process relays: the issuer's
    signature, the CRL (read again when it changes) and a holder with a role."""
    ca, other = SiteCa(tmp_path / "site"), SiteCa(tmp_path / "other")
    ca.init("north", ["127.0.0.1"])
    other.init("south", ["127.0.0.1"])
    alice = ca.issue_client("alice", "operator")
    eve = other.issue_client("eve", "admin")
    check = ClientCertificates(ca.cert_path, ca.crl_path)

    def der(path: str | Path) -> bytes:
        return load_certificate(Path(path).read_bytes()).public_bytes(Encoding.DER)

    assert check.holder(der(alice.path)).name == "cert:alice"
    with pytest.raises(ValueError, match="not issued by"):
        check.holder(der(eve.path))
    with pytest.raises(ValueError, match="names no holder"):
        check.holder(der(ca.server_cert))
    with pytest.raises(ValueError, match="not a DER certificate"):
        check.holder(b"garbage")
    ca.revoke("alice")
    os.utime(ca.crl_path, (1, 1))  # a new modification time even within the same tick
    with pytest.raises(ValueError, match="revoked"):
        check.holder(der(alice.path))


def test_a_revocation_list_is_read_again_only_when_it_changes_and_survives_a_bad_file(
    tmp_path: Path,
) -> None:
    ca = SiteCa(tmp_path)
    ca.init("north", ["127.0.0.1"])
    bob = ca.issue_client("bob", "viewer")
    crl = RevocationList(ca.crl_path)
    assert crl.refresh()
    assert not crl.refresh()  # unchanged
    ca.revoke("bob")
    os.utime(ca.crl_path, (2, 2))
    assert crl.refresh()
    assert crl.revokes(int(bob.serial, 16))
    ca.crl_path.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    with pytest.raises(ValueError):
        crl.refresh()
    assert crl.revokes(int(bob.serial, 16))  # the last list read stays in force
