"""The site's settings that operators change while the gateway runs, and their one owner.

Every change goes through :class:`SiteSettings`: an operator's limit over OPC UA or IEC 61850, a
SIGHUP reload of the config file, the strictest import limit of the grid signals in force
(:mod:`pswd_gateway.grid_signals`). It validates the new settings, audits the change (before it is
in force), and tells every subscriber at once — the control cycle, the scheduler, the workload
service — so no part keeps a copy that a change does not reach. Northbound surfaces read
:attr:`SiteSettings.current`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.identity import Identity
from pswd_gateway.logging import get_logger

__all__ = ["KEPT_ON_RELOAD", "AuditSetting", "SiteSettings"]

log = get_logger("site_settings")

AuditSetting = Callable[[Identity, str, dict[str, Any]], Awaitable[None]]
"""Journal an accepted change: (who, action, detail). Raises when the journal cannot."""

KEPT_ON_RELOAD: Final = (
    "grid_signal_limit_mw",
    "ffr_active",
    "ffr_max_mw",
    "ffr_deadband_hz",
    "ffr_droop_pct",
    "ffr_ramp_mw_per_s",
)
"""Settings that follow the grid signals, not the file: a reload keeps them as they are (the
limit of the signals in force; the IEC 61850 door's fast frequency response, whose standing
signal stays in force)."""


@dataclass
class SiteSettings:
    current: SiteConfig
    audit: AuditSetting | None = None
    _subscribers: list[Callable[[SiteConfig], None]] = field(default_factory=list, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    """One change at a time: each is made from the settings the one before left (operates of
    two MMS controls arrive together; neither may undo the other)."""

    SETTABLE: ClassVar[frozenset[str]] = frozenset(
        {
            "grid_import_limit_mw",
            "grid_ramp_limit_mw_per_s",
            "demand_response_limit_mw",
            "demand_response_active",
            "ffr_active",
            "ffr_max_mw",
            "ffr_deadband_hz",
            "ffr_droop_pct",
            "ffr_ramp_mw_per_s",
        }
    )
    """What an operator may change over OPC UA or IEC 61850 (a reload may change anything)."""

    def subscribe(self, on_change: Callable[[SiteConfig], None]) -> Callable[[], None]:
        """Call ``on_change`` with the new settings after every change; returns the unsubscribe."""
        self._subscribers.append(on_change)
        return lambda: self._subscribers.remove(on_change)

    async def set(self, what: str, value: float | bool, who: Identity) -> None:
        """An operator's new limit: validated, audited, then in force everywhere at once.
        ``ValueError`` (pydantic's ``ValidationError`` is one) names what was wrong."""
        if what not in self.SETTABLE:
            raise ValueError(f"not a settable limit: {what}")
        async with self._lock:
            old = getattr(self.current, what)
            site = SiteConfig.model_validate({**self.current.model_dump(), what: value})
            if self.audit is not None:
                await self.audit(who, f"set {what}", {"from": old, "to": value})
            self._apply(site)
        log.warning("site_limit_changed", limit=what, old=old, new=value, by=who.name)

    async def apply_signal_limit(
        self, limit_mw: float | None, binding: str | None, who: Identity
    ) -> bool:
        """The strictest import limit of the grid signals in force (``None``: none limits the
        import), from the grid-signal service: audited (with the binding signal's id), then in
        force everywhere at once. Whether it changed."""
        async with self._lock:
            old = self.current.grid_signal_limit_mw
            if limit_mw == old:
                return False
            site = self.current.model_copy(update={"grid_signal_limit_mw": limit_mw})
            SiteConfig.model_validate(site.model_dump())
            if self.audit is not None:
                detail = {"from": old, "to": limit_mw, "signal": binding}
                await self.audit(who, "apply grid signal limit", detail)
            self._apply(site)
        log.warning("grid_signal_limit_changed", old=old, new=limit_mw, signal=binding)
        return True

    async def replace(self, site: SiteConfig, who: Identity) -> dict[str, tuple[Any, Any]]:
        """New settings from the config file (SIGHUP): what changed, ``(old, new)`` by field.
        What follows the grid signals (:data:`KEPT_ON_RELOAD`) is not the file's: it is kept."""
        async with self._lock:
            kept = {name: getattr(self.current, name) for name in KEPT_ON_RELOAD}
            site = site.model_copy(update=kept)
            changed = {
                name: (getattr(self.current, name), getattr(site, name))
                for name in SiteConfig.model_fields
                if getattr(self.current, name) != getattr(site, name)
            }
            if not changed:
                return changed
            if self.audit is not None:
                detail = {k: {"from": a, "to": b} for k, (a, b) in changed.items()}
                await self.audit(who, "reload site settings", detail)
            self._apply(site)
        log.warning("site_settings_reloaded", changed=sorted(changed), by=who.name)
        return changed

    def _apply(self, site: SiteConfig) -> None:
        self.current = site
        for on_change in list(self._subscribers):
            on_change(site)
