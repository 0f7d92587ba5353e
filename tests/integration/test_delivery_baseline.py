"""The delivery baseline on the real grid-signal service and journal: an import the control
cycle holds just under a limit (its hold margin) is bound by that limit, and never becomes part
of a later signal's "meter before" baseline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.grid_signals import ImportLimit, SignalSource
from pswd_gateway.domain.identity import Identity
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.journal import AsyncJournal
from pswd_gateway.site_settings import SiteSettings

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
OPERATOR = Identity("tso", "operator")


@pytest.mark.parametrize(("margin_mw", "baseline_mw"), [(1.0, 190.0), (0.0, None)])
async def test_an_import_held_under_a_limit_is_not_a_later_baseline(
    tmp_path: Path, margin_mw: float, baseline_mw: float | None
) -> None:
    now = T0
    import_mw = 190.0
    journal = AsyncJournal.open(tmp_path / "pswd.db")
    try:
        signals = GridSignalService(
            journal,
            SiteSettings(SiteConfig()),
            clock=lambda: now,
            measured=lambda: (import_mw, None),
            hold_margin_mw=margin_mw,
        )

        def run(seconds: float) -> None:
            nonlocal now
            for _ in range(int(seconds / 0.25)):
                now += timedelta(seconds=0.25)
                signals.sample(now)

        run(12.0)  # unconstrained at 190 MW
        first = await signals.submit(
            ImportLimit(import_limit_mw=160.0), SignalSource.HTTP, OPERATOR
        )
        import_mw = 159.0  # held the margin under the limit
        run(10.0)
        await signals.withdraw(first.id, OPERATOR)
        import_mw = 190.0
        run(2.0)  # a short rest: the baseline window reaches back into the first event
        second = await signals.submit(
            ImportLimit(import_limit_mw=170.0), SignalSource.HTTP, OPERATOR
        )
        import_mw = 169.0
        run(5.0)
        delivery = signals.delivery(second.id)
        assert delivery is not None
        if baseline_mw is not None:
            assert delivery.baseline_mw == pytest.approx(baseline_mw)
            assert delivery.report().requested_mw == pytest.approx(20.0)
        else:  # without the margin the held import (159 MW) counts as unconstrained
            assert delivery.baseline_mw is not None
            assert delivery.baseline_mw < 180.0
    finally:
        await journal.close()
