"""Certificates: ``pswd-gateway certs init`` and ``certs trust --opcua CERT``.

Layout under the certificate directory, ``opcua.certs_dir`` (``var/certs`` in the demo config;
production ``/etc/pswd-gateway/certs``; see :func:`resolve_certs_dir` for a relative one)::

    opcua/server_cert.der   the OPC UA application instance certificate (self-signed)
    opcua/server_key.pem    its private key (mode 0600)
    opcua/trusted/          client certificates admitted (DER or PEM)
    opcua/rejected/         client certificates seen and refused, for an operator to review

The running OPC UA server reads ``trusted/`` again whenever a client certificate is not in the
list it holds (``RejectingValidator`` in :mod:`pswd_gateway.northbound.opcua.server`), so a
certificate trusted here admits its client at the next connection attempt, without a restart.
A certificate removed from ``trusted/`` is refused from its client's next secure channel (the
server reads the folder again whenever it changed).

Generated with asyncua's certificate helpers (``cryptography`` underneath): RSA 2048, SHA-256,
the application URI and the host names in the subject alternative names, as OPC 10000-6 6.2.2
asks.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from pswd_gateway.security.pki import host_names

__all__ = [
    "APPLICATION_URI",
    "OpcUaCertPaths",
    "init_opcua_certs",
    "make_client_certificate",
    "resolve_certs_dir",
    "trust_opcua_client",
]

APPLICATION_URI: Final = "urn:pswd:gateway"
VALID_DAYS: Final = 3 * 365


@dataclass(frozen=True, slots=True)
class OpcUaCertPaths:
    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "opcua" / "server_cert.der"

    @property
    def key(self) -> Path:
        return self.root / "opcua" / "server_key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "opcua" / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "opcua" / "rejected"

    def exists(self) -> bool:
        return self.cert.is_file() and self.key.is_file()


def resolve_certs_dir(certs_dir: Path) -> Path:
    """``opcua.certs_dir`` as the OPC UA server resolves it (``OpcUaServer.start``): a relative
    path is taken from the working directory, not from the configuration file's directory."""
    return certs_dir if certs_dir.is_absolute() else Path.cwd() / certs_dir


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(APPLICATION_URI), *host_names(hosts)]


def init_opcua_certs(
    root: Path, hosts: list[str] | None = None, *, force: bool = False
) -> OpcUaCertPaths:
    """Write the server certificate and key (unless present) and the trust folders."""
    paths = OpcUaCertPaths(root)
    paths.trusted.mkdir(parents=True, exist_ok=True)
    paths.rejected.mkdir(parents=True, exist_ok=True)
    if paths.exists() and not force:
        return paths
    hosts = hosts or ["localhost", "127.0.0.1", socket.gethostname()]
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "pswd-gateway",
        {"organizationName": "pswd-gateway"},
        _alt_names(hosts),
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=VALID_DAYS,
    )
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    return paths


def _load_any(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"PRIVATE KEY-----" in data:
        raise ValueError(
            "it holds a private key; give the certificate (`opcua client-cert` "
            "writes it as NAME.der)"
        )
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        return x509.load_pem_x509_certificate(data)


def trust_opcua_client(root: Path, cert_path: Path) -> Path:
    """Admit a client certificate: copied (as DER) into ``opcua/trusted``; returns its path.
    The server's copy of it in ``opcua/rejected`` (named by fingerprint), if any, is removed.

    Raises ``ValueError`` when the file is not a certificate."""
    cert = _load_any(cert_path)
    paths = OpcUaCertPaths(root)
    paths.trusted.mkdir(parents=True, exist_ok=True)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()[:16]
    target = paths.trusted / f"{cert_path.stem}-{fingerprint}.der"
    target.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (paths.rejected / f"{fingerprint}.der").unlink(missing_ok=True)
    return target


def make_client_certificate(directory: Path, name: str, application_uri: str) -> tuple[Path, Path]:
    """A self-signed OPC UA client certificate and key (for scripts and tests): ``NAME.der``,
    ``NAME.pem``. A SCADA tool makes its own; this is for clients without one."""
    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {},
        [x509.UniformResourceIdentifier(application_uri), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=VALID_DAYS,
    )
    cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path
