"""What a grid signal asked and what the site delivered, sample by sample. Pure: no clock.

An import limit or a shed asks the site to import less than it would have: the **requested**
reduction is the baseline minus the limit, the **delivered** reduction is the baseline minus
the import measured over the window (its mean), and their ratio is what an aggregator pays for
(docs/grid.md, "Delivery"). The baseline is the import the site had before the signal bound
(its mean over the last :data:`BASELINE_S` before the window opened while nothing limited the
import: a "meter before" baseline), or a shed's own ``baseline_mw``. A limit above the
baseline asks no reduction: its ratio is the share of samples under the limit.

A heat request asks for heat: requested is its MW, delivered the mean heat measured at the
network's connection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "BASELINE_S",
    "LIMIT_TOLERANCE_MW",
    "DeliveryReport",
    "DeliverySample",
    "baseline_of",
    "report",
]

BASELINE_S = 10.0
"""The baseline is the mean import over this long before the window opens."""
LIMIT_TOLERANCE_MW = 0.5
"""A sample within this of its limit counts as within it (meter accuracy, one loop delay)."""


@dataclass(frozen=True, slots=True)
class DeliverySample:
    """One measurement while the signal was in force."""

    at: datetime
    asked_mw: float
    """What the signal asks: the import limit (or shed cap), or the heat requested."""
    measured_mw: float
    """The grid import (or the heat delivered) measured then."""


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Requested against delivered over a signal's window so far."""

    signal_id: str
    kind: str
    baseline_mw: float | None
    """Import before the window (limits and sheds); ``None`` for a heat request, or when no
    import was measured before it."""
    requested_mw: float
    """The reduction asked (limits, sheds) or the heat asked (heat requests), MW."""
    delivered_mw: float
    """The mean reduction (or heat) delivered over the samples, MW."""
    ratio: float | None
    """``delivered / requested`` (1 for a limit that asked no reduction and was kept); ``None``
    before any sample."""
    within_share: float | None
    """Share of samples at or under the limit (limits, sheds) or at or over the heat asked."""
    samples: int
    first: datetime | None
    last: datetime | None


def baseline_of(history: Sequence[tuple[datetime, float, bool]], before: datetime) -> float | None:
    """The import the site had, unconstrained, before ``before``: the mean of the measurements
    taken while no limit or shed bound the import, within :data:`BASELINE_S` of the newest such
    one before ``before`` (``None``: none). ``history`` is (time, MW, unconstrained)."""
    free = sorted((at, mw) for at, mw, unconstrained in history if unconstrained and at < before)
    if not free:
        return None
    newest = free[-1][0]
    window = [mw for at, mw in free if (newest - at).total_seconds() <= BASELINE_S]
    return sum(window) / len(window)


def report(
    signal_id: str,
    kind: str,
    baseline_mw: float | None,
    samples: Sequence[DeliverySample],
) -> DeliveryReport:
    """The report of ``samples`` (one signal's). ``kind`` is the signal's kind: ``heat_request``
    asks for heat; ``import_limit`` and ``shed`` ask for less import."""
    first = samples[0].at if samples else None
    last = samples[-1].at if samples else None
    if not samples:
        return DeliveryReport(signal_id, kind, baseline_mw, 0.0, 0.0, None, None, 0, first, last)
    n = len(samples)
    measured = sum(s.measured_mw for s in samples) / n
    asked = sum(s.asked_mw for s in samples) / n
    if kind == "heat_request":
        within = sum(s.measured_mw >= s.asked_mw - LIMIT_TOLERANCE_MW for s in samples) / n
        ratio = measured / asked if asked > 0 else 1.0
        return DeliveryReport(signal_id, kind, None, asked, measured, ratio, within, n, first, last)
    within = sum(s.measured_mw <= s.asked_mw + LIMIT_TOLERANCE_MW for s in samples) / n
    if baseline_mw is None or not math.isfinite(baseline_mw):
        return DeliveryReport(signal_id, kind, None, 0.0, 0.0, within, within, n, first, last)
    requested = max(0.0, baseline_mw - asked)
    delivered = baseline_mw - measured
    # a limit that asked (almost) no reduction is judged by whether it was kept
    ratio = within if requested <= LIMIT_TOLERANCE_MW else delivered / requested
    return DeliveryReport(
        signal_id, kind, baseline_mw, requested, delivered, ratio, within, n, first, last
    )
