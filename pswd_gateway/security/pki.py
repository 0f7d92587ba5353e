"""The site's own certificate authority: server certificates for the TLS listeners, client
certificates that carry a role, and the revocation list every TLS listener honours.

Layout under the certificate directory (``opcua.certs_dir``; ``var/certs`` in the demo)::

    ca/ca.pem, ca/ca.key      the site CA (key mode 0600); clients trust ca.pem
    ca/crl.pem                its certificate revocation list (re-signed at every revocation)
    ca/issued.json            what the CA issued: name, role, serial, expiry, revocation
    tls/server.pem, .key      the gateway's TLS server certificate (API, metrics), CA-signed
    clients/NAME.pem, .key    client certificates issued by ``certs issue``

A client certificate names its holder in the subject's common name and its role in a
subject-alternative-name URI ``urn:pswd:role:<role>``; a listener with ``tls_client_ca``
verifies it against the CA and the CRL and maps it to that identity (:func:`certificate_holder`,
the one mapping of the HTTP listeners and MMS: ``cert:<name>`` with the certificate's role).
Keys are EC P-256, signatures SHA-256.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pswd_gateway.domain.identity import Identity

__all__ = [
    "ROLE_URI_PREFIX",
    "CertificateHolder",
    "ClientCertificates",
    "IssuedCertificate",
    "RevocationList",
    "SiteCa",
    "certificate_holder",
    "days_left",
    "host_names",
    "load_certificate",
    "revoked_serials",
]

ROLE_URI_PREFIX: Final = "urn:pswd:role:"
CA_DAYS: Final = 10 * 365
SERVER_DAYS: Final = 2 * 365
CLIENT_DAYS: Final = 365
CRL_DAYS: Final = 30
"""The CRL's nextUpdate; `certs revoke` and `certs crl` re-sign it (a timer should, monthly)."""


@dataclass(frozen=True)
class IssuedCertificate:
    name: str
    role: str
    serial: str
    """Hex, as ``openssl x509 -serial`` prints it."""
    not_after: str
    revoked_at: str | None = None
    path: str = ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def host_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names for host names and addresses (IP entries for addresses)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from its PEM or DER encoding (``ValueError`` when it is neither)."""
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def days_left(cert_path: Path, now: dt.datetime | None = None) -> float:
    """Days until the certificate at ``cert_path`` (PEM or DER) expires (negative: expired)."""
    cert = load_certificate(cert_path.read_bytes())
    return (cert.not_valid_after_utc - (now or _now())).total_seconds() / 86400


@dataclass(frozen=True)
class CertificateHolder(Identity):
    """A caller known by the client certificate it showed (mutual TLS): ``cert:<name>`` with
    the certificate's role. ``certificate`` is its DER encoding, so a check made elsewhere (the
    gateway vouching for what its MMS process relays) can verify it again."""

    certificate: bytes = field(default=b"", repr=False, compare=False)

    @property
    def serial(self) -> int:
        return load_certificate(self.certificate).serial_number


def certificate_holder(certificate: x509.Certificate | bytes) -> CertificateHolder | None:
    """Who a verified client certificate names: ``cert:<subject CN>`` with the role of its
    ``urn:pswd:role:<role>`` URI; None when it names no holder or no role. The one mapping of
    every listener that takes client certificates (HTTP API, MMS)."""
    if isinstance(certificate, x509.Certificate):
        cert = certificate
    else:
        try:
            cert = load_certificate(certificate)
        except ValueError:
            return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if names else None
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    role = next(
        (
            uri.removeprefix(ROLE_URI_PREFIX)
            for uri in alt.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith(ROLE_URI_PREFIX)
        ),
        None,
    )
    if not isinstance(name, str) or not name or not role:
        return None
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertificateHolder(f"cert:{name}", role, certificate=der)


@dataclass
class RevocationList:
    """A CRL file, read again whenever its modification time changes; when it cannot be read
    (being replaced, damaged) the last list read stays in force and :meth:`refresh` says why."""

    path: Path
    data: bytes = field(default=b"", init=False, repr=False)
    """The file as last read (to hand to a TLS library as it is)."""
    serials: frozenset[int] = field(default=frozenset(), init=False)
    _mtime: float = field(default=-1.0, init=False)

    def refresh(self) -> bool:
        """Read the file if it changed since the last read; True when a new list was read.
        ``OSError``/``ValueError`` when it changed and cannot be read (the old list stays)."""
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return False
        data = self.path.read_bytes()
        self.serials = _serials(data)
        self.data, self._mtime = data, mtime
        return True

    def revokes(self, serial: int) -> bool:
        return serial in self.serials


@dataclass
class ClientCertificates:
    """Checks a client certificate again, away from the TLS handshake that verified it: issued
    directly by a CA of ``ca`` (a PEM file, e.g. the site CA's ``ca/ca.pem``), valid now, not
    revoked by ``crl`` (read again when it changes), naming a holder with a role."""

    ca: Path
    crl: Path | None = None
    _cas: Sequence[x509.Certificate] = field(default=(), init=False)
    _revocations: RevocationList | None = field(default=None, init=False)

    def holder(self, der: bytes, now: dt.datetime | None = None) -> CertificateHolder:
        """The holder ``der`` names, or ``ValueError`` saying why it is not vouched for."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise ValueError("not a DER certificate") from None
        if not self._cas:
            self._cas = x509.load_pem_x509_certificates(self.ca.read_bytes())
        if not any(_issued_by(cert, ca) for ca in self._cas):
            raise ValueError(f"certificate {cert.serial_number:X} is not issued by {self.ca}")
        at = now or _now()
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ValueError(f"certificate {cert.serial_number:X} is not valid now")
        if self._revoked(cert.serial_number):
            raise ValueError(f"certificate {cert.serial_number:X} is revoked")
        holder = certificate_holder(cert)
        if holder is None:
            raise ValueError(f"certificate {cert.serial_number:X} names no holder with a role")
        return holder

    def _revoked(self, serial: int) -> bool:
        if self.crl is None:
            return False
        if self._revocations is None:
            self._revocations = RevocationList(self.crl)
        try:
            self._revocations.refresh()
        except (OSError, ValueError):
            if not self._revocations.data:  # never read: nothing vouches for it
                raise ValueError(f"the revocation list {self.crl} cannot be read") from None
        return self._revocations.revokes(serial)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


_CA_USAGE: Final = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


class SiteCa:
    """The CA under ``root/ca`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "ca"
        self.cert_path = self.dir / "ca.pem"
        self.key_path = self.dir / "ca.key"
        self.crl_path = self.dir / "crl.pem"
        self.index_path = self.dir / "issued.json"
        self.server_cert = root / "tls" / "server.pem"
        self.server_key = root / "tls" / "server.key"

    def exists(self) -> bool:
        return self.cert_path.is_file() and self.key_path.is_file()

    # ---- creation ----

    def init(self, site: str, hosts: list[str] | None = None) -> bool:
        """Create the CA, its empty CRL and the TLS server certificate, unless present.
        True when something was written."""
        wrote = False
        if not self.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pswd-gateway"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{site} site CA"),
                ]
            )
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_CA_USAGE, critical=True)
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            _write_key(self.key_path, key)
            _write_cert(self.cert_path, cert)
            self._write_index([])
            self.write_crl()
            wrote = True
        if not (self.server_cert.is_file() and self.server_key.is_file()):
            hosts = hosts or ["localhost", "127.0.0.1", "::1", socket.gethostname()]
            self._issue(
                "pswd-gateway", host_names(hosts), ExtendedKeyUsageOID.SERVER_AUTH,
                self.server_cert, self.server_key, SERVER_DAYS,
            )  # fmt: skip
            wrote = True
        return wrote

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.exists():
            raise FileNotFoundError(f"no site CA in {self.dir}: run `pswd-gateway certs init`")
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.key_path}: not an EC key")
        return cert, key

    def _issue(
        self,
        name: str,
        alt_names: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        cert_path: Path,
        key_path: Path,
        days: int,
    ) -> x509.Certificate:
        ca_cert, ca_key = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pswd-gateway"),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        return cert

    def issue_client(
        self, name: str, role: str, out: Path | None = None, days: int = CLIENT_DAYS
    ) -> IssuedCertificate:
        """A client certificate for ``name`` with ``role``: ``clients/NAME.pem`` and ``.key``."""
        directory = out or self.root / "clients"
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert = self._issue(
            name, [x509.UniformResourceIdentifier(f"{ROLE_URI_PREFIX}{role}")],
            ExtendedKeyUsageOID.CLIENT_AUTH, cert_path, key_path, days,
        )  # fmt: skip
        issued = IssuedCertificate(
            name=name,
            role=role,
            serial=f"{cert.serial_number:X}",
            not_after=cert.not_valid_after_utc.isoformat(),
            path=str(cert_path),
        )
        self._write_index([*self.issued(), issued])
        return issued

    # ---- the register and revocation ----

    def issued(self) -> list[IssuedCertificate]:
        if not self.index_path.is_file():
            return []
        return [IssuedCertificate(**row) for row in json.loads(self.index_path.read_text())]

    def _write_index(self, rows: list[IssuedCertificate]) -> None:
        self.index_path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")

    def revoke(self, which: str) -> list[IssuedCertificate]:
        """Revoke every unrevoked certificate whose name or serial is ``which``; re-sign the
        CRL. Returns what was revoked (empty: nothing matched)."""
        rows = self.issued()
        now = _now().isoformat()
        hit = [
            r
            for r in rows
            if r.revoked_at is None and which in (r.name, r.serial, r.serial.lstrip("0"))
        ]
        if not hit:
            return []
        serials = {r.serial for r in hit}
        rows = [
            IssuedCertificate(**{**asdict(r), "revoked_at": now}) if r.serial in serials else r
            for r in rows
        ]
        self._write_index(rows)
        self.write_crl()
        return [r for r in rows if r.serial in serials]

    def write_crl(self) -> Path:
        """Sign the CRL with every revoked serial (valid for ``CRL_DAYS``)."""
        ca_cert, ca_key = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        for row in self.issued():
            if row.revoked_at is None:
                continue
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(row.serial, 16))
                .revocation_date(dt.datetime.fromisoformat(row.revoked_at))
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        tmp = self.crl_path.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        tmp.replace(self.crl_path)  # a listener reading it never sees half a file
        return self.crl_path


def revoked_serials(crl_path: Path) -> frozenset[int]:
    """The serial numbers a CRL file (PEM or DER) revokes."""
    return _serials(crl_path.read_bytes())


def _serials(data: bytes) -> frozenset[int]:
    crl = (
        x509.load_pem_x509_crl(data)
        if data.lstrip().startswith(b"-----")
        else x509.load_der_x509_crl(data)
    )
    return frozenset(r.serial_number for r in crl)
