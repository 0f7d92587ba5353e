"""What the gateway and its MMS process say to each other over their socket pair.

A frame is a 4-byte big-endian length and a body.

- **Down** (gateway → MMS process): the body is a pickle of one of the dataclasses below. The
  process trusts the gateway that started it.
- **Up** (MMS process → gateway): the body is one JSON object. The process parses what any MMS
  peer sends and may be subverted, so the gateway never unpickles what comes up:
  :func:`parse_up` accepts a closed set of shapes, each field typed and bounded, and raises
  :class:`ProtocolError` on anything else (the gateway then kills the process and starts
  another).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from pswd_gateway.config import Iec61850UserConfig, SiteConfig
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.domain.identity import Identity
from pswd_gateway.domain.points import Point
from pswd_gateway.errors import PswdError
from pswd_gateway.logging import LogFormat
from pswd_gateway.northbound.iec61850.model import GooseAddress
from pswd_gateway.northbound.iec61850.schedule import ForecastSchedule
from pswd_gateway.northbound.iec61850.server import MmsStats
from pswd_gateway.northbound.iec61850.tls import HANDSHAKE, REFUSALS, MmsTls
from pswd_gateway.security.pki import CertificateHolder
from pswd_gateway.security.zones import Policy

__all__ = [
    "DOOR_REASONS",
    "MAX_DOWN_BYTES",
    "MAX_UP_BYTES",
    "Answer",
    "Beat",
    "Caller",
    "Door",
    "Failed",
    "GuardChanged",
    "LoadStep",
    "MmsSettings",
    "Operate",
    "Points",
    "PolicyChanged",
    "ProtocolError",
    "Ready",
    "Refused",
    "ScheduleChanged",
    "SiteChanged",
    "Start",
    "Stop",
    "UsersChanged",
    "down_frame",
    "parse_down",
    "parse_up",
    "read_frame",
    "up_frame",
]

HEADER: Final = struct.Struct(">I")
MAX_UP_BYTES: Final = 64 * 1024
"""The largest frame the gateway reads from the MMS process (a heartbeat is ~300 bytes)."""
MAX_DOWN_BYTES: Final = 256 * 1024 * 1024
"""The largest frame the MMS process reads (the first carries every point of the store)."""
MAX_TEXT: Final = 1024
"""The longest string field the gateway accepts from the MMS process."""
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
"""The largest client certificate (DER) a caller may carry up (an RSA-4096 one is ~1.5 KiB)."""


class ProtocolError(PswdError):
    """A frame that is not one of the messages of this module."""


@dataclass(frozen=True)
class MmsSettings:
    """:class:`~pswd_gateway.northbound.iec61850.server.MmsServer`'s keyword arguments that are
    plain data, given to the MMS process as they are. A new argument of ``MmsServer`` that is
    plain data is a new field here (``tests/unit/test_iec61850_link.py`` keeps the two equal);
    the rest (``door``, ``hooks``) are answered over the link."""

    ied_name: str = "PSWD"
    host: str = "127.0.0.1"
    port: int = 10102
    max_connections: int = 10
    users: tuple[Iec61850UserConfig, ...] = ()
    anonymous_read: bool = False
    interval_s: float = 0.1
    goose_interface: str | None = None
    goose_times_ms: tuple[int, int] = (4, 1000)
    goose_address: GooseAddress = field(default_factory=GooseAddress)
    tls: MmsTls | None = None

    def server_kwargs(self) -> dict[str, Any]:
        """The arguments as ``MmsServer(store, site, **kwargs, door=..., hooks=...)`` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---- down: gateway → MMS process (pickled) ----


@dataclass(frozen=True)
class Start:
    """The first frame: everything the process needs to serve at once."""

    settings: MmsSettings
    policy: Policy
    rate_per_s: float | None
    """``listeners.iec61850.max_new_connections_per_s`` for the process's door."""
    site: SiteConfig
    points: tuple[Point, ...]
    guard: GuardEvent | None
    load_step: bool
    log_level: str = "info"
    log_format: LogFormat = "auto"
    schedule: ScheduleChanged | None = None
    """The import forecast as it is now (None: no plan to serve)."""


@dataclass(frozen=True)
class Points:
    """The latest value of every point that changed since the last frame."""

    points: tuple[Point, ...]


@dataclass(frozen=True)
class SiteChanged:
    site: SiteConfig


@dataclass(frozen=True)
class PolicyChanged:
    """The zones and conduits were reloaded: the door admits by the new ones."""

    policy: Policy


@dataclass(frozen=True)
class UsersChanged:
    """The MMS users were reloaded (SIGHUP): the next associations are judged by these."""

    users: tuple[Iec61850UserConfig, ...]


@dataclass(frozen=True)
class ScheduleChanged:
    """The import forecast changed (the plan did, or its window moved on by an interval): the
    process writes FSCH1's entries and start time and serves ``revision`` in
    ``FSCH1.NamPlt.paramRev``."""

    schedule: ForecastSchedule
    revision: int
    """Counts the schedules the gateway has sent since it started (1, 2, …)."""


@dataclass(frozen=True)
class GuardChanged:
    event: GuardEvent


@dataclass(frozen=True)
class LoadStep:
    imminent: bool


@dataclass(frozen=True)
class Answer:
    """How an :class:`Operate` ended: ``error`` is ``None`` when it is journalled and in force."""

    id: int
    error: str | None


@dataclass(frozen=True)
class Stop:
    """Stop serving and exit."""


Down = (
    Start
    | Points
    | SiteChanged
    | PolicyChanged
    | UsersChanged
    | GuardChanged
    | LoadStep
    | ScheduleChanged
    | Answer
    | Stop
)


def down_frame(message: Down) -> bytes:
    return frame(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def parse_down(body: bytes) -> Down:
    message: object = pickle.loads(body)  # noqa: S301 - from the gateway, which started us
    if not isinstance(message, Down):  # the union itself, so a new message is in both
        raise ProtocolError(f"not a message to the MMS process: {type(message).__name__}")
    return message


# ---- up: MMS process → gateway (JSON, checked) ----


@dataclass(frozen=True)
class Caller:
    """Who asked, as the MMS process saw them; the gateway does not take its word for it.
    A certificate holder's ``certificate`` (DER, base64) goes with it, for the gateway to
    verify again."""

    name: str
    role: str
    zone: str | None = None
    conduit: str | None = None
    certificate: str | None = None

    @classmethod
    def of(cls, who: Identity) -> Caller:
        der = who.certificate if isinstance(who, CertificateHolder) else None
        certificate = base64.b64encode(der).decode() if der else None
        return cls(who.name, who.role, who.zone, who.conduit, certificate)

    def der(self) -> bytes | None:
        """The certificate as DER (its base64 was checked when the message was read)."""
        return None if self.certificate is None else base64.b64decode(self.certificate)

    def identity(self) -> Identity:
        """As an :class:`Identity` for an audit record (no permissions are inferred from it)."""
        return Identity(self.name, self.role, zone=self.zone, conduit=self.conduit)


@dataclass(frozen=True)
class Ready:
    """The server listens: the first answer to :class:`Start`."""


@dataclass(frozen=True)
class Failed:
    """The server could not start (the process exits after saying so)."""

    error: str


@dataclass(frozen=True)
class Beat:
    """Alive, sent only while libiec61850's worker can take the model lock; with the server's
    statistics and how many messages the process dropped because the gateway was behind."""

    stats: MmsStats
    dropped: int = 0


@dataclass(frozen=True)
class Operate:
    """Carry out an operate the process judged acceptable (``action``: the site setting)."""

    id: int
    action: str
    value: float | bool
    caller: Caller


@dataclass(frozen=True)
class Refused:
    """Audit a refusal: an association, a select or an operate."""

    caller: Caller
    action: str
    why: str


@dataclass(frozen=True)
class Door:
    """A peer connected and the process's door admitted it through ``zone``, or refused it
    for ``reason`` (``why``): the gateway's :class:`~pswd_gateway.security.zones.Gatekeeper`
    counts it, and audits a refusal."""

    peer: ipaddress.IPv4Address | ipaddress.IPv6Address
    zone: str | None = None
    reason: str | None = None
    why: str | None = None


DOOR_REASONS: Final = frozenset({"not_in_conduit", "rate", HANDSHAKE, *REFUSALS.values()})
"""Why a door refuses a peer (``Gatekeeper.admit``; a TLS handshake refused or cut,
:data:`.tls.REFUSALS`): the label values the process may report."""


Up = Ready | Failed | Beat | Operate | Refused | Door
UP_NAMES: Final[dict[type[Any], str]] = {
    Ready: "ready",
    Failed: "failed",
    Beat: "beat",
    Operate: "operate",
    Refused: "refused",
    Door: "door",
}


def up_frame(message: Up) -> bytes:
    body: dict[str, Any] = {"t": UP_NAMES[type(message)], **asdict(message)}
    if isinstance(message, Door):
        body["peer"] = str(message.peer)
    return frame(json.dumps(body, separators=(",", ":")).encode())


class _Fields:
    """One received JSON object, read field by field; a key left unread is refused."""

    def __init__(self, raw: dict[str, Any], kind: str) -> None:
        self.raw = raw
        self.kind = kind
        self.unread = set(raw) - {"t"}

    def _get(self, name: str) -> Any:
        if name not in self.raw:
            raise ProtocolError(f"{self.kind}: no {name!r}")
        self.unread.discard(name)
        return self.raw[name]

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ProtocolError(f"{self.kind}.{name}: not a string of at most {MAX_TEXT}")
        return value

    def text_or_none(self, name: str) -> str | None:
        if name in self.raw and self.raw[name] is None:
            self.unread.discard(name)
            return None
        return self.text(name)

    def count(self, name: str) -> int:
        value = self._get(name)
        if type(value) is not int or not 0 <= value < 2**63:
            raise ProtocolError(f"{self.kind}.{name}: not a count")
        return value

    def seconds(self, name: str) -> float:
        value = self._get(name)
        if type(value) not in {int, float} or not (math.isfinite(value) and value >= 0):
            raise ProtocolError(f"{self.kind}.{name}: not a duration")
        return float(value)

    def number_or_flag(self, name: str) -> float | bool:
        value = self._get(name)
        if isinstance(value, bool):
            return value
        if type(value) in {int, float} and math.isfinite(value):
            return float(value)
        raise ProtocolError(f"{self.kind}.{name}: not a finite number or a boolean")

    def address(self, name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            return ipaddress.ip_address(self.text(name))
        except ValueError:
            raise ProtocolError(f"{self.kind}.{name}: not an IP address") from None

    def certificate(self, name: str) -> str | None:
        """An optional DER certificate in base64 (absent or null: none), bounded."""
        if name not in self.raw:
            return None
        self.unread.discard(name)
        value = self.raw[name]
        if value is None:
            return None
        limit = 4 * (MAX_CERTIFICATE_BYTES // 3 + 1)
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise ProtocolError(f"{self.kind}.{name}: not a base64 certificate of at most {limit}")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{self.kind}.{name}: not base64") from None
        return value

    def inner(self, name: str) -> _Fields:
        value = self._get(name)
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.kind}.{name}: not an object")
        return _Fields(value, f"{self.kind}.{name}")

    def done(self) -> None:
        if self.unread:
            raise ProtocolError(f"{self.kind}: unexpected {sorted(self.unread)[:5]}")


def _caller(f: _Fields) -> Caller:
    inner = f.inner("caller")
    zone, conduit = inner.text_or_none("zone"), inner.text_or_none("conduit")
    certificate = inner.certificate("certificate")
    caller = Caller(inner.text("name"), inner.text("role"), zone, conduit, certificate)
    inner.done()
    return caller


def _stats(f: _Fields) -> MmsStats:
    inner = f.inner("stats")
    stats = MmsStats()
    for s in fields(MmsStats):
        setattr(stats, s.name, inner.seconds(s.name) if s.type == "float" else inner.count(s.name))
    inner.done()
    return stats


def _door(f: _Fields) -> Door:
    door = Door(f.address("peer"), f.text_or_none("zone"), f.text_or_none("reason"),
                f.text_or_none("why"))  # fmt: skip
    if (door.zone is None) == (door.reason is None) or (door.reason is None) != (door.why is None):
        raise ProtocolError("door: a zone (admitted) or a reason and why (refused)")
    if door.reason is not None and door.reason not in DOOR_REASONS:
        raise ProtocolError(f"door.reason: not one of {sorted(DOOR_REASONS)}")
    return door


PARSERS: Final[dict[str, Callable[[_Fields], Up]]] = {
    "ready": lambda _f: Ready(),
    "failed": lambda f: Failed(f.text("error")),
    "beat": lambda f: Beat(_stats(f), f.count("dropped")),
    "operate": lambda f: Operate(
        f.count("id"), f.text("action"), f.number_or_flag("value"), _caller(f)
    ),
    "refused": lambda f: Refused(_caller(f), f.text("action"), f.text("why")),
    "door": _door,
}


def parse_up(body: bytes) -> Up:
    """The message in a frame from the MMS process; :class:`ProtocolError` for anything else."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("a frame that is not JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError("a frame that is not a JSON object")
    kind = raw.get("t")
    parse = PARSERS.get(kind) if isinstance(kind, str) else None
    if parse is None:
        raise ProtocolError(f"unknown message {str(kind)[:40]!r}")
    f = _Fields(raw, str(kind))
    message = parse(f)
    f.done()
    return message


# ---- frames ----


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The next frame's body; ``asyncio.IncompleteReadError`` at the end of the stream."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > limit:
        raise ProtocolError(f"a frame of {size} bytes (at most {limit})")
    return await reader.readexactly(size)
