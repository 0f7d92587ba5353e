"""Who is asking, and what their role lets them do (the same roles on every northbound surface)."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    """An authenticated caller: a token name, an OPC UA user, a certificate subject.

    A caller that came through a conduit (``security.zones``) carries the conduit's
    permissions as ``ceiling``: it may do what both its role and the conduit allow.
    """

    name: str
    role: str
    ceiling: frozenset[Permission] | None = None
    zone: str | None = None
    conduit: str | None = None

    def can(self, permission: Permission) -> bool:
        if self.ceiling is not None and permission not in self.ceiling:
            return False
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())

    def why_not(self, permission: Permission) -> str:
        """Why :meth:`can` says no, for the refusal's message and audit."""
        if permission not in ROLE_PERMISSIONS.get(self.role, frozenset()):
            return f"role {self.role!r} lacks {permission.value!r}"
        allowed = ", ".join(sorted(p.value for p in self.ceiling or ()))
        return (
            f"conduit {self.conduit!r} from zone {self.zone!r} does not allow "
            f"{permission.value!r} (it allows {allowed or 'nothing'})"
        )

    def limited(self, ceiling: frozenset[Permission], *, zone: str, conduit: str) -> Identity:
        """This caller, as seen through a conduit of ``zone`` that allows ``ceiling``."""
        if self.ceiling is not None:
            ceiling &= self.ceiling
        return replace(self, ceiling=ceiling, zone=zone, conduit=conduit)

    @property
    def via(self) -> dict[str, str]:
        """Zone and conduit for an audit record's detail (empty when not through one)."""
        return {"zone": self.zone, "conduit": self.conduit} if self.conduit and self.zone else {}


SYSTEM = Identity("pswd-gateway", "admin")
"""The gateway itself (lifecycle timers, re-planning)."""
