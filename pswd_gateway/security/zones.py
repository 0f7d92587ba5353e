"""Zones and conduits (IEC 62443-3-2): who may reach which listener, and what they may do there.

A *zone* is a group of networks with one trust (``kind``: the plant's own ``control`` network,
``scada``, ``enterprise``, ``monitoring``, ``utility``). A *conduit* lets one zone reach one
listener with one level of access. Every listener asks the :class:`Policy` at accept:

- a peer in no zone with a conduit to the listener is refused before it is served, and the
  refusal is counted and audited (:class:`Refusals`);
- an admitted peer gets the :class:`Admission` of the most permissive conduit that reaches it
  there; its identity then carries the conduit's permissions as a ceiling over its role
  (``Identity.limited``), so a token of role ``operator`` coming through a conduit with access
  ``announce`` can announce workloads but not set a grid limit.

Pure: no I/O; the listeners, the daemon and ``config`` build and use it.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Literal

from pswd_gateway.domain.identity import Identity, Permission

__all__ = [
    "ACCESS_LEVELS",
    "ACCESS_PERMISSIONS",
    "LISTENERS",
    "Access",
    "Admission",
    "Conduit",
    "Gatekeeper",
    "Listener",
    "Policy",
    "Refusals",
    "Zone",
    "ZoneKind",
    "peer_ip",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ZoneKind = Literal["control", "scada", "enterprise", "monitoring", "utility"]
"""The zone's place in the site (IEC 62443 reference model, Purdue levels 1 and 2 first)."""
PLANT_ZONES: Final = frozenset({"control", "scada"})
"""Zones inside the plant: the only ones a conduit may operate or configure from."""

Access = Literal["read", "announce", "operate", "configure"]
ACCESS_LEVELS: Final[tuple[Access, ...]] = ("read", "announce", "operate", "configure")
ACCESS_PERMISSIONS: Final[dict[Access, frozenset[Permission]]] = {
    "read": frozenset({Permission.READ}),
    "announce": frozenset(
        {Permission.READ, Permission.ANNOUNCE, Permission.ACT_OWN, Permission.ACT_ANY}
    ),
    "operate": frozenset(
        {
            Permission.READ,
            Permission.ANNOUNCE,
            Permission.ACT_OWN,
            Permission.ACT_ANY,
            Permission.OPERATE,
        }
    ),
    "configure": frozenset(Permission),
}
"""What each access level lets through; a caller gets the intersection with its role."""

Listener = Literal["api", "metrics", "opcua", "iec61850"]
LISTENERS: Final[tuple[Listener, ...]] = ("api", "metrics", "opcua", "iec61850")
PROTOCOLS: Final[dict[Listener, str]] = {
    "api": "HTTP (workload API)",
    "metrics": "HTTP (Prometheus)",
    "opcua": "OPC UA",
    "iec61850": "IEC 61850 MMS",
}


@dataclass(frozen=True)
class Zone:
    name: str
    kind: ZoneKind
    networks: tuple[Network, ...]
    description: str = ""

    def holds(self, ip: IpAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    @property
    def loopback_only(self) -> bool:
        return all(net.is_loopback for net in self.networks)


@dataclass(frozen=True)
class Conduit:
    name: str
    zone: str
    listener: Listener
    access: Access


@dataclass(frozen=True)
class Admission:
    """Why a peer may use a listener: the conduit and zone it came through, and their access."""

    listener: Listener
    zone: str
    conduit: str
    access: Access

    @property
    def permissions(self) -> frozenset[Permission]:
        return ACCESS_PERMISSIONS[self.access]

    def limit(self, who: Identity) -> Identity:
        """``who`` with this conduit's permissions as a ceiling over its role."""
        return who.limited(self.permissions, zone=self.zone, conduit=self.conduit)


def peer_ip(peer: object) -> IpAddress | None:
    """The IP address of a peer as sockets, uvicorn and libiec61850 give it.

    Accepts ``("10.0.0.1", 5000)`` tuples, ``"10.0.0.1:5000"``, ``"[::1]:5000"`` and bare
    addresses; ``None`` for anything else (a Unix socket, an unparsable string).
    """
    if isinstance(peer, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return peer
    host: object = peer[0] if isinstance(peer, tuple) and peer else peer
    if not isinstance(host, str) or not host:
        return None
    text = host
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:
        text = text.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class Policy:
    """The site's zones and conduits, and the decisions every listener asks of them."""

    zones: Mapping[str, Zone]
    conduits: tuple[Conduit, ...]

    def conduits_to(self, listener: Listener) -> tuple[Conduit, ...]:
        return tuple(c for c in self.conduits if c.listener == listener)

    def networks_of(self, listener: Listener) -> tuple[Network, ...]:
        """Every network some conduit lets reach ``listener`` (firewall rules, docs)."""
        nets: dict[Network, None] = {}
        for conduit in self.conduits_to(listener):
            nets.update(dict.fromkeys(self.zones[conduit.zone].networks))
        return tuple(nets)

    def admit(self, listener: Listener, peer: object) -> Admission | None:
        """The most permissive conduit through which ``peer`` reaches ``listener``, or None."""
        ip = peer_ip(peer)
        if ip is None:
            return None
        best: Conduit | None = None
        for conduit in self.conduits_to(listener):
            if not self.zones[conduit.zone].holds(ip):
                continue
            if best is None or ACCESS_LEVELS.index(conduit.access) > ACCESS_LEVELS.index(
                best.access
            ):
                best = conduit
        if best is None:
            return None
        return Admission(listener, best.zone, best.name, best.access)

    def rows(self) -> list[dict[str, str]]:
        """One row per conduit, for ``pswd-gateway zones`` and the docs."""
        return [
            {
                "conduit": c.name,
                "zone": c.zone,
                "kind": self.zones[c.zone].kind,
                "networks": ", ".join(str(n) for n in self.zones[c.zone].networks),
                "listener": c.listener,
                "protocol": PROTOCOLS[c.listener],
                "access": c.access,
            }
            for c in self.conduits
        ]

    def dot(self, endpoints: Mapping[Listener, str] | None = None) -> str:
        """The policy as a Graphviz digraph: zones on the left, the gateway's listeners right."""
        endpoints = endpoints or {}
        lines = [
            "digraph conduits {",
            "  rankdir=LR;",
            '  node [fontname="Helvetica"];',
            '  subgraph cluster_gateway { label="pswd-gateway"; style=rounded;',
        ]
        for listener in dict.fromkeys(c.listener for c in self.conduits):
            where = endpoints.get(listener, "")
            label = f"{listener}\\n{PROTOCOLS[listener]}" + (f"\\n{where}" if where else "")
            lines.append(f'    "listener:{listener}" [shape=box, label="{label}"];')
        lines.append("  }")
        for zone in self.zones.values():
            nets = "\\n".join(str(n) for n in zone.networks)
            lines.append(
                f'  "zone:{zone.name}" [shape=ellipse, label="{zone.name} ({zone.kind})\\n{nets}"];'
            )
        for c in self.conduits:
            style = "bold" if c.access in {"operate", "configure"} else "solid"
            lines.append(
                f'  "zone:{c.zone}" -> "listener:{c.listener}" '
                f'[label="{c.name}\\n{c.access}", style={style}];'
            )
        lines.append("}")
        return "\n".join(lines) + "\n"


AUDIT_EVERY_S: Final = 60.0
"""A refused peer is audited at most once a minute per listener (the rest are counted)."""


@dataclass
class Refusals:
    """Peers refused at accept: counted for metrics, audited at most once a minute per peer.

    ``audit`` receives (listener, peer address, why, refusals since the last audit of this
    peer); the daemon turns it into an audit record. A flood from one address is one record a
    minute and a counter, not a journal write per connection.
    """

    audit: Callable[[Listener, str, str, int], None] = lambda *_: None
    clock: Callable[[], float] = time.monotonic
    every_s: float = AUDIT_EVERY_S
    total: Counter[tuple[Listener, str]] = field(default_factory=Counter)
    """Refusals by (listener, reason): ``not_in_conduit``, ``access``."""
    _last: dict[tuple[Listener, str], tuple[float, int]] = field(default_factory=dict)

    def refuse(
        self, listener: Listener, peer: str, why: str, reason: str = "not_in_conduit"
    ) -> None:
        self.total[listener, reason] += 1
        key = (listener, peer)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) > 10_000:  # a scan from many addresses: forget the old ones
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every_s}
        self._last[key] = (now, 0)
        self.audit(listener, peer, why, 1 + (last[1] if last is not None else 0))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Gatekeeper:
    """The policy at every listener's door: admits through a conduit or refuses and counts.

    A peer that opens new connections faster than its listener's ``rates`` (per second, per
    peer address; a burst of two seconds' worth) is refused too (``rate``): a connection flood
    from one address costs an accept and a close, not a protocol stack's set-up.
    """

    policy: Policy
    refusals: Refusals = field(default_factory=Refusals)
    rates: Mapping[Listener, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    admitted: Counter[tuple[Listener, str]] = field(default_factory=Counter)
    """Connections admitted, by (listener, zone)."""
    _buckets: dict[tuple[Listener, str], _Bucket] = field(default_factory=dict)

    def admit(self, listener: Listener, peer: object) -> Admission | None:
        ip = peer_ip(peer)  # once per connection: the policy takes the address as parsed
        admission = self.policy.admit(listener, ip) if ip is not None else None
        who = str(ip) if ip is not None else str(peer)
        if admission is None:
            self.refusals.refuse(
                listener, who, f"{who} is in no zone with a conduit to listeners.{listener}"
            )
            return None
        rate = self.rates.get(listener)
        if rate and not self._within(listener, who, rate):
            self.refusals.refuse(
                listener,
                who,
                f"{who} opens connections to listeners.{listener} faster than "
                f"{rate:g}/s (listeners.{listener}.max_new_connections_per_s)",
                "rate",
            )
            return None
        self.admitted[listener, admission.zone] += 1
        return admission

    def _within(self, listener: Listener, who: str, rate: float) -> bool:
        now = self.clock()
        key = (listener, who)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:  # many addresses: forget the full ones
                self._buckets = {
                    k: b
                    for k, b in self._buckets.items()
                    if b.tokens + (now - b.stamp) * rate < 2 * rate
                }
            bucket = self._buckets[key] = _Bucket(2 * rate, now)
        bucket.tokens = min(2 * rate, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def door(self, listener: Listener) -> Callable[[object], Admission | None]:
        """:meth:`admit` for one listener (what the listener's accept hook calls)."""
        return partial(self.admit, listener)
