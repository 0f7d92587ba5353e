"""Power caps: what running flexible workloads are asked to hold while a grid limit binds.

Pure: the running workloads, the site's base load, the import limit in force and what the
battery can hold for the rest of the limit's window go in; a cap per workload comes out.

A limit the site cannot meet with the battery alone is shared among the *flexible* running
workloads in proportion to their mean power: each is asked to hold ``mean · (1 - r)`` where
``r`` is the shortfall over their total (at most all of it). Fixed workloads are never asked:
they are protected, and a shortfall the flexible ones cannot cover stays with the battery and
the control cycle's fallback (its ``power_request`` notice). Workloads not yet running are not
capped: the scheduler moves them out of the window (docs/grid.md, "What a signal does once in
force").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["CAP_STEP_MW", "Running", "battery_sustains_mw", "power_caps"]

CAP_STEP_MW: Final = 0.1
"""Caps are rounded down to this (a workload is never asked for less than it could hold)."""


@dataclass(frozen=True, slots=True)
class Running:
    """A running workload: its id, its announced mean power (MW) and whether it is flexible."""

    id: str
    mean_mw: float
    flexible: bool


def battery_sustains_mw(power_mw: float, energy_mwh: float, remaining_s: float | None) -> float:
    """The discharge the battery can hold until the window ends (MW): its power, or its energy
    spread over the time left; nothing for a window without an end."""
    if remaining_s is None or power_mw <= 0.0 or energy_mwh <= 0.0:
        return 0.0
    if remaining_s <= 0.0:
        return power_mw
    return min(power_mw, energy_mwh * 3600.0 / remaining_s)


def power_caps(
    running: Sequence[Running], base_mw: float, limit_mw: float, battery_mw: float
) -> dict[str, float]:
    """The cap (MW) each flexible running workload is asked to hold so that base load plus the
    workloads, less what the battery sustains, stays at ``limit_mw``; empty when it does
    already or no flexible workload runs."""
    total = base_mw + sum(r.mean_mw for r in running)
    shortfall = total - battery_mw - limit_mw
    flexible = [r for r in running if r.flexible and r.mean_mw > 0.0]
    share = sum(r.mean_mw for r in flexible)
    if shortfall <= 0.0 or share <= 0.0:
        return {}
    keep = max(0.0, 1.0 - shortfall / share)
    return {r.id: _down(r.mean_mw * keep) for r in flexible}


def _down(mw: float) -> float:
    steps = int(mw / CAP_STEP_MW + 1e-9)
    return round(steps * CAP_STEP_MW, 6)
