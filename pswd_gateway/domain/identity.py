"""Who is asking, and what their role lets them do (the same roles on every northbound surface)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ROLE_PERMISSIONS", "SYSTEM", "Identity", "Permission"]


class Permission(StrEnum):
    READ = "read"
    """See workloads, events, the site and its forecast."""
    ANNOUNCE = "announce"
    """Announce workloads (owned by the caller)."""
    ACT_OWN = "act_own"
    """Start, complete or cancel the caller's own workloads."""
    ACT_ANY = "act_any"
    """Act on anyone's workloads, and announce on behalf of another owner."""
    OPERATE = "operate"
    """Operator controls: grid limits, demand response."""
    CONFIGURE = "configure"
    """Engineering settings."""


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "submitter": frozenset({Permission.READ, Permission.ANNOUNCE, Permission.ACT_OWN}),
    "operator": frozenset(
        {
            Permission.READ,
            Permission.ANNOUNCE,
            Permission.ACT_OWN,
            Permission.ACT_ANY,
            Permission.OPERATE,
        }
    ),
    "engineer": frozenset({Permission.READ, Permission.CONFIGURE}),
    "admin": frozenset(Permission),
}


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: a token name, an OPC UA user, a certificate subject."""

    name: str
    role: str

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())


SYSTEM = Identity("pswd-gateway", "admin")
"""The gateway itself (lifecycle timers, re-planning)."""
