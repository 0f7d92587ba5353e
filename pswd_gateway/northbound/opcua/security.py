"""Who may connect: endpoints and policies, the server certificate, the client trust list, and
user accounts mapped to roles.

Secure by default: Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss with Sign and
SignAndEncrypt; None only when ``opcua.allow_none`` asks for it on a loopback listener; client
certificates from the trust list (``certs/opcua/trusted``); user names with hashed passwords, or
X.509 user certificates, mapped to roles; no anonymous sessions. See :mod:`.guard` for what
asyncua lets through and we do not.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pswd_gateway.config import OpcUaCertificateUserConfig, OpcUaConfig, OpcUaUserConfig
from pswd_gateway.errors import ConfigError
from pswd_gateway.logging import get_logger
from pswd_gateway.security.certs import OpcUaCertPaths, resolve_certs_dir
from pswd_gateway.security.passwords import verify_password

__all__ = [
    "RejectingValidator",
    "RoleUserManager",
    "secure",
    "security_policies",
    "server_certificate",
]

log = get_logger("opcua")


class RoleUserManager:
    """User name + password → an asyncua ``User`` named after the account; no anonymous."""

    def __init__(
        self,
        users: tuple[OpcUaUserConfig, ...],
        certificate_users: tuple[OpcUaCertificateUserConfig, ...] = (),
    ) -> None:
        self.replace(users, certificate_users)
        self.refused_total = 0
        self.on_refusal: Callable[[str | None, str], None] = lambda _user, _why: None

    def replace(
        self,
        users: tuple[OpcUaUserConfig, ...],
        certificate_users: tuple[OpcUaCertificateUserConfig, ...] = (),
    ) -> None:
        """New accounts (SIGHUP): a password or certificate changed or removed here stops
        working at the next sign-in, and an open session of a removed user loses its role."""
        self._users = {u.name: u for u in users}
        self._by_cert = {u.sha256: u for u in certificate_users}
        self._roles: dict[str, str] = {u.name: u.role for u in users}
        self._roles.update({u.name: u.role for u in certificate_users})
        self._verified: dict[tuple[str, str], bool] = {}

    def role(self, name: str | None) -> str | None:
        return self._roles.get(name or "")

    def get_user(
        self,
        iserver: Any,  # noqa: ARG002 - asyncua's UserManager signature
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None and certificate is not None:  # an X.509 user token
            der = (
                bytes(certificate)
                if isinstance(certificate, bytes | bytearray)
                else certificate.public_bytes(serialization.Encoding.DER)
            )
            holder = self._by_cert.get(hashlib.sha256(der).hexdigest())
            if holder is None:
                self._refuse(None, "unknown user certificate")
                return None
            role = UserRole.Admin if holder.role == "admin" else UserRole.User
            return User(role=role, name=holder.name)
        account = self._users.get(username or "")
        if account is None or password is None:
            self._refuse(username, "unknown user or no password")
            return None
        key = (account.name, password)
        ok = self._verified.get(key)
        if ok is None:
            ok = verify_password(password, account.password_hash)
            if ok:
                self._verified[key] = True  # PBKDF2 once per password per process
        if not ok:
            self._refuse(username, "wrong password")
            return None
        role = UserRole.Admin if account.role == "admin" else UserRole.User
        return User(role=role, name=account.name)

    def _refuse(self, user: str | None, why: str) -> None:
        self.refused_total += 1
        if user is None:
            log.warning("opcua_login_refused", reason=why)
        else:
            log.warning("opcua_login_refused", user=user, reason=why)
        self.on_refusal(user, why)


class RejectingValidator:
    """The trust-list validator; a refused client certificate is copied to ``rejected/``.

    ``trusted/`` is read again whenever it changed (a certificate added by ``certs trust`` or
    removed by hand): a removed certificate is refused from its client's next secure channel,
    without a restart (channels already open stay open until they close)."""

    def __init__(self, inner: CertificateValidator, trust: TrustStore, rejected: Path) -> None:
        self._inner = inner
        self._trust = trust
        self._rejected = rejected
        self._stamp = self._folder_stamp()

    def _folder_stamp(self) -> int | None:
        with contextlib.suppress(OSError):
            return self._trust.trust_locations[0].stat().st_mtime_ns
        return None

    async def _reload_if_changed(self) -> None:
        stamp = self._folder_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        folder = self._trust.trust_locations[0]
        if any(folder.iterdir()):
            await self._trust.load()
        else:  # cryptography refuses an empty store: nothing is trusted
            self._trust._trust_store = None  # noqa: SLF001
        log.info("opcua_trust_list_reloaded", folder=str(folder))

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        try:
            await self._reload_if_changed()
            try:
                await self._inner(cert, app)
            except ua.UaError:
                # `certs trust` may have added it since the last look: read the folder again.
                if not any(self._trust.trust_locations[0].iterdir()):
                    raise
                await self._trust.load()
                await self._inner(cert, app)
        except Exception:
            name = cert.fingerprint(hashes.SHA256()).hex()[:16]
            with contextlib.suppress(OSError):
                (self._rejected / f"{name}.der").write_bytes(
                    cert.public_bytes(serialization.Encoding.DER)
                )
            log.warning("opcua_certificate_refused", application=app.ApplicationUri, saved=name)
            raise


def server_certificate(cfg: OpcUaConfig) -> OpcUaCertPaths:
    """The server's certificate files in ``opcua.certs_dir``; a :class:`ConfigError` saying
    how to make them when they are not there."""
    certs_dir = resolve_certs_dir(cfg.certs_dir)
    paths = OpcUaCertPaths(certs_dir)
    if not paths.exists():
        raise ConfigError(
            "opcua",
            [
                (
                    "opcua.certs_dir",
                    f"no server certificate in {certs_dir}: run `pswd-gateway certs init`",
                )
            ],
        )
    return paths


def security_policies(cfg: OpcUaConfig) -> list[ua.SecurityPolicyType]:
    """Every configured policy in every configured mode, and None only when allowed."""
    policies = [
        getattr(ua.SecurityPolicyType, f"{policy.replace('_', '')}_{mode}")
        for policy in cfg.policies
        for mode in cfg.modes
    ]
    if cfg.allow_none:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    return policies


async def secure(
    server: Server, cfg: OpcUaConfig, paths: OpcUaCertPaths
) -> list[ua.SecurityPolicyType]:
    """Set the endpoints' policies, the user token types, the server's certificate and the
    client trust list on ``server``; returns the policies offered."""
    policies = security_policies(cfg)
    server.set_security_policy(policies)
    tokens: list[type] = [ua.UserNameIdentityToken]
    if cfg.certificate_users:
        tokens.append(ua.X509IdentityToken)
    server.set_identity_tokens(tokens)
    await server.load_certificate(str(paths.cert))
    await server.load_private_key(str(paths.key))
    trust = TrustStore([paths.trusted], [])
    if any(paths.trusted.iterdir()):  # an empty store is refused by cryptography
        await trust.load()
    validator = CertificateValidator(
        CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT,
        trust,
    )
    server.set_certificate_validator(RejectingValidator(validator, trust, paths.rejected))
    return policies
