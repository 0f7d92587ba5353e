"""MMS over TLS (IEC 62351-3) with the client certificate as the association's identity.

libiec61850 does the TLS (mbedTLS 3.6 inside the wheel); this module sets it up and watches it:

- :func:`configure` builds its ``TLSConfiguration`` from :class:`MmsTls`: the server's
  certificate and key, the CA whose client certificates are accepted (chain validation on, any
  certificate of that CA, validity times checked), the CRL, the oldest TLS version, AEAD cipher
  suites only (libiec61850's default list also offers ``TLS_RSA_WITH_NULL_SHA256``, no
  encryption), and no session resumption: a resumed session skips the certificate, so every
  association does a full handshake and its authenticator sees the certificate.
- :class:`Handshakes` hears libiec61850's security events and tells the gateway about every
  handshake it refused (no certificate, another CA's, a revoked one, a broken handshake), as a
  refusal at the door. It also cuts handshakes that do not finish: libiec61850 runs the
  handshake on its only server thread, polling a non-blocking socket until the client speaks,
  so one client that connects and says nothing holds every MMS client up (and a CPU core busy);
  :meth:`Handshakes.sweep` shuts such a connection down after ``handshake_timeout_s``.

The zone policy's door runs when libiec61850 reports the connection, which under TLS is after
the handshake: a peer in no zone reaches mbedTLS before it is refused (the host firewall,
``pswd-gateway zones --format nft``, drops it earlier).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.iec61850 import native

__all__ = [
    "CIPHER_SUITES",
    "REFUSALS",
    "Handshakes",
    "MmsTls",
    "add_crl",
    "configure",
]

log = get_logger("iec61850")

TLS_VERSIONS: Final = {"1.2": 6, "1.3": 7}
"""``TLSConfigVersion``: ``TLS_VERSION_TLS_1_2``, ``TLS_VERSION_TLS_1_3``."""

CIPHER_SUITES: Final = (
    0x1302,  # TLS_AES_256_GCM_SHA384 (TLS 1.3)
    0x1301,  # TLS_AES_128_GCM_SHA256 (TLS 1.3)
    0x1303,  # TLS_CHACHA20_POLY1305_SHA256 (TLS 1.3)
    0xC02C,  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 (IEC 62351-4, the site CA's EC keys)
    0xC02B,  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    0xC030,  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 (a site PKI with RSA keys)
    0xC02F,  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (IEC 62351-4 mandatory)
)
"""What the MMS listener negotiates: forward secrecy and authenticated encryption only."""

ESTABLISHED: Final = 16
"""``TLS_EVENT_CODE_INF_SESSION_ESTABLISHED``."""
INCIDENT: Final = 2
"""``TLS_SEC_EVT_INCIDENT``: an alarm."""
VALIDATION_FAILED: Final = 6
"""``TLS_EVENT_CODE_ALM_CERT_VALIDATION_FAILED``: follows the event that says why."""
CERTIFICATE_EVENTS: Final = frozenset({4, 11, 12, 13, 14})
"""Events that say why a certificate failed (bad, expired, revoked, not configured, untrusted);
libiec61850 raises :data:`VALIDATION_FAILED` right after each."""

REFUSALS: Final[dict[int, str]] = {
    3: "no_certificate",  # TLS_EVENT_CODE_ALM_CERT_UNAVAILABLE
    7: "no_certificate",  # TLS_EVENT_CODE_ALM_CERT_REQUIRED
    12: "revoked",  # TLS_EVENT_CODE_ALM_CERT_REVOKED
    4: "bad_certificate",  # TLS_EVENT_CODE_ALM_BAD_CERT
    6: "bad_certificate",  # TLS_EVENT_CODE_ALM_CERT_VALIDATION_FAILED
    11: "bad_certificate",  # TLS_EVENT_CODE_ALM_CERT_EXPIRED
    13: "bad_certificate",  # TLS_EVENT_CODE_ALM_CERT_NOT_CONFIGURED
    14: "bad_certificate",  # TLS_EVENT_CODE_ALM_CERT_NOT_TRUSTED (another CA's)
}
"""libiec61850's alarm codes → the refusal's reason label; any other alarm during a handshake is
``tls_handshake`` (no common cipher or version, a client speaking plaintext, a broken
message)."""
HANDSHAKE: Final = "tls_handshake"
HANDSHAKE_TIMEOUT_S: Final = 5.0
FDS: Final = Path("/proc/self/fd")


@dataclass(frozen=True)
class MmsTls:
    """The MMS listener's TLS (``listeners.iec61850`` ``tls_*``)."""

    cert: Path
    key: Path
    client_ca: Path
    """Client certificates must be issued by this CA (the site CA's ``ca/ca.pem``)."""
    crl: Path | None = None
    """Its revocation list, read again when the file changes."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    """A TLS handshake not finished by then is cut (see :class:`Handshakes`)."""


def configure(tls: MmsTls, events: Any, crl: bytes | None) -> int:
    """A new ``TLSConfiguration`` as the module docstring says, with ``events`` (a
    :data:`~.native.TLS_EVENT_HANDLER`) as its event handler; ``OSError`` naming the file
    libiec61850 could not load. The caller destroys it after the server."""
    lib = native.library()
    config = lib.TLSConfiguration_create()
    if not config:
        raise OSError("libiec61850 could not create a TLS configuration")
    try:
        _load(config, tls, crl)
        lib.TLSConfiguration_setChainValidation(config, True)  # noqa: FBT003 - C API
        lib.TLSConfiguration_setAllowOnlyKnownCertificates(config, False)  # noqa: FBT003
        lib.TLSConfiguration_setTimeValidation(config, True)  # noqa: FBT003 - C API
        lib.TLSConfiguration_setMinTlsVersion(config, TLS_VERSIONS[tls.min_version])
        lib.TLSConfiguration_enableSessionResumption(config, False)  # noqa: FBT003 - C API
        lib.TLSConfiguration_clearCipherSuiteList(config)
        for suite in CIPHER_SUITES:
            lib.TLSConfiguration_addCipherSuite(config, suite)
        lib.TLSConfiguration_setEventHandler(config, events, None)
    except BaseException:
        lib.TLSConfiguration_destroy(config)
        raise
    return int(config)


def _load(config: int, tls: MmsTls, crl: bytes | None) -> None:
    """The certificate, key, client CA and CRL into ``config``; ``OSError`` naming what failed."""
    lib = native.library()
    for loaded, what, path in (
        (lib.TLSConfiguration_setOwnCertificateFromFile(config, _c(tls.cert)), "tls_cert",
         tls.cert),
        (lib.TLSConfiguration_setOwnKeyFromFile(config, _c(tls.key), None), "tls_key", tls.key),
        (lib.TLSConfiguration_addCACertificateFromFile(config, _c(tls.client_ca)),
         "tls_client_ca", tls.client_ca),
        (crl is None or add_crl(config, crl), "tls_crl", tls.crl),
    ):  # fmt: skip
        if not loaded:
            raise OSError(f"listeners.iec61850.{what}: libiec61850 cannot load {path}")


def add_crl(config: int, crl: bytes) -> bool:
    """Hand a CRL file's content (PEM or DER) to libiec61850; False when mbedTLS refuses it.
    mbedTLS reads PEM only up to a terminating NUL, which it counts in the length."""
    data = crl + b"\0" if b"-----BEGIN" in crl else crl
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    return bool(native.library().TLSConfiguration_addCRL(config, buffer, len(data)))


def _c(path: Path) -> bytes:
    return os.fsencode(path)


Peer = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
Refuse = Callable[[str, str, str], None]
"""Told of a refused peer: (its address, why, reason label)."""


def _peer(text: str) -> Peer | None:
    """libiec61850's ``host:port`` (``[v6]:port``) as an (address, port) pair."""
    host, _, port = text.rpartition(":")
    try:
        return _address(host.strip("[]")), int(port)
    except ValueError:
        return None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass
class Handshakes:
    """What libiec61850's TLS layer did with each connection to ``port``: refusals reported to
    ``refuse`` (once per handshake), sessions established, handshakes cut for taking longer
    than ``timeout_s``. :meth:`event` runs on libiec61850's thread, :meth:`sweep` on the loop."""

    port: int
    refuse: Refuse
    timeout_s: float = HANDSHAKE_TIMEOUT_S
    peer_of: Callable[[int | None], str] = native.tls_peer
    """A TLS connection's peer as libiec61850 writes it."""
    refused_total: int = 0
    cut_total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _established: set[Peer] = field(default_factory=set)
    _cut: set[Peer] = field(default_factory=set)
    _last: tuple[int, int] = (0, 0)
    """(connection, code) of the last event: a certificate's refusal comes as the event that
    says why, then the one that says verification failed."""
    _first_seen: dict[int, float] = field(default_factory=dict)
    """Socket inode → when :meth:`sweep` first saw it, for connections still in handshake."""
    _peers: dict[int, Peer] = field(default_factory=dict)
    """Socket inode → peer, for connections to ``port``."""
    _others: set[int] = field(default_factory=set)
    """Socket inodes that are no connection to ``port`` (the listener, the link, GOOSE)."""

    # ---- libiec61850's thread ----

    def event(self, level: int, code: int, message: bytes | None, connection: int | None) -> None:
        """``TLSConfiguration_EventHandler``: one security event of one TLS connection."""
        text = (message or b"").decode(errors="replace")
        peer_text = self.peer_of(connection)
        peer = _peer(peer_text)
        with self._lock:
            last, self._last = self._last, (connection or 0, code)
            if code == ESTABLISHED:
                if peer is not None:
                    self._established.add(peer)
                log.debug("mms_tls_established", peer=peer_text, detail=text)
                return
            if level != INCIDENT or peer is None:
                log.info("mms_tls_event", peer=peer_text, code=code, detail=text)
                return
            if peer in self._established:  # a session that was up: a read or write failed
                log.info("mms_tls_session_error", peer=peer_text, code=code, detail=text)
                return
            if peer in self._cut:  # the handshake this sweep cut, failing as it was told to
                self._cut.discard(peer)
                return
            if (
                code == VALIDATION_FAILED
                and last[0] == (connection or 0)
                and (last[1] in CERTIFICATE_EVENTS)
            ):
                return  # the same refusal, already told with its reason
            self.refused_total += 1
        reason = REFUSALS.get(code, HANDSHAKE)
        self.refuse(str(peer[0]), f"{peer[0]}: TLS handshake refused: {text}", reason)

    # ---- the loop ----

    def sweep(self, now: float) -> list[str]:
        """Shut down every connection to ``port`` whose handshake has not finished within
        ``timeout_s`` of this sweep first seeing it; the peers cut. Finds the connections among
        this process's file descriptors (libiec61850 owns them; a duplicate is shut down, which
        ends the handshake as a closed connection would)."""
        present: set[int] = set()
        cut: list[str] = []
        for fd, inode in _sockets():
            present.add(inode)
            if inode in self._others:
                continue
            peer = self._peers.get(inode)
            if peer is None:
                peer = self._classify(fd, inode)
                if peer is None:
                    continue
                self._first_seen[inode] = now
            with self._lock:
                if peer in self._established:
                    self._first_seen.pop(inode, None)
                    continue
            since = self._first_seen.get(inode)
            if since is None or now - since < self.timeout_s:
                continue
            with self._lock:  # before the shutdown: its failing handshake is this refusal
                self._cut.add(peer)
            if not self._shut(fd, inode):
                with self._lock:
                    self._cut.discard(peer)
                continue
            del self._first_seen[inode]
            self.cut_total += 1
            cut.append(str(peer[0]))
            self.refuse(
                str(peer[0]),
                f"{peer[0]}: no TLS handshake within {self.timeout_s:g} s: connection cut",
                HANDSHAKE,
            )
        self._forget(present)
        return cut

    def _classify(self, fd: int, inode: int) -> Peer | None:
        """The peer of a connection to ``port`` behind ``fd``; None (remembered) otherwise."""
        with _duplicate(fd, inode) as sock:
            if sock is None:
                return None
            if sock.family not in {socket.AF_INET, socket.AF_INET6} or sock.type != (
                socket.SOCK_STREAM
            ):
                self._others.add(inode)
                return None
            try:
                local, remote = sock.getsockname(), sock.getpeername()
            except OSError:  # the listening socket has no peer
                self._others.add(inode)
                return None
            if local[1] != self.port:
                self._others.add(inode)
                return None
            try:
                peer = (_address(str(remote[0])), int(remote[1]))
            except ValueError:
                self._others.add(inode)
                return None
            self._peers[inode] = peer
            return peer

    def _shut(self, fd: int, inode: int) -> bool:
        with _duplicate(fd, inode) as sock:
            if sock is None:
                return False
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                return True
            return False

    def _forget(self, present: set[int]) -> None:
        """Drop what is known of sockets that have closed."""
        for inode in [i for i in self._peers if i not in present]:
            peer = self._peers.pop(inode)
            with self._lock:
                self._established.discard(peer)
                self._cut.discard(peer)
        for inode in [i for i in self._first_seen if i not in present]:
            del self._first_seen[inode]
        self._others &= present


def _sockets() -> list[tuple[int, int]]:
    """(file descriptor, inode) of each socket this process has open."""
    out = []
    try:
        links = list(FDS.iterdir())
    except OSError:
        return []
    for link in links:
        try:
            target = str(link.readlink())
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            out.append((int(link.name), int(target[8:-1])))
    return out


@contextlib.contextmanager
def _duplicate(fd: int, inode: int) -> Any:
    """A socket object on a duplicate of ``fd``, if ``fd`` still is socket ``inode``."""
    try:
        dup = os.dup(fd)
    except OSError:
        yield None
        return
    try:
        if os.fstat(dup).st_ino != inode:  # closed and its number reused meanwhile
            yield None
            return
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        yield None
        return
    try:
        yield sock
    finally:
        sock.close()  # the duplicate only; libiec61850's descriptor stays open
