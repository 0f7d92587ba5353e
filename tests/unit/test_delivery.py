"""Requested against delivered (``domain/delivery.py``): the baseline, the ratio, the shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pswd_gateway.domain.delivery import (
    BASELINE_S,
    DeliverySample,
    baseline_of,
    report,
)

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def samples(asked: float, measured: list[float]) -> list[DeliverySample]:
    return [DeliverySample(at(k), asked, m) for k, m in enumerate(measured)]


def test_a_limit_held_exactly_delivers_what_was_requested() -> None:
    """150 MW before, a 110 MW limit held: 40 MW asked, 40 MW delivered, ratio 1."""
    r = report("gs_1", "import_limit", 150.0, samples(110.0, [110.0] * 8))
    assert (r.requested_mw, r.delivered_mw, r.ratio, r.within_share) == (40.0, 40.0, 1.0, 1.0)


def test_one_slow_sample_in_twenty_costs_its_share_of_the_ratio() -> None:
    measured = [150.0] + [110.0] * 19
    r = report("gs_1", "import_limit", 150.0, samples(110.0, measured))
    assert r.ratio == pytest.approx(0.95)
    assert r.within_share == pytest.approx(0.95)


def test_a_limit_above_the_baseline_is_judged_by_whether_it_was_kept() -> None:
    r = report("gs_1", "import_limit", 100.0, samples(120.0, [100.0, 101.0, 125.0, 99.0]))
    assert r.requested_mw == 0.0
    assert r.ratio == pytest.approx(0.75)


def test_a_heat_request_is_judged_by_the_heat_delivered() -> None:
    r = report("gs_2", "heat_request", None, samples(20.0, [10.0, 20.0, 21.0, 21.0]))
    assert r.requested_mw == 20.0
    assert r.delivered_mw == pytest.approx(18.0)
    assert r.ratio == pytest.approx(0.9)
    assert r.within_share == pytest.approx(0.75)


def test_no_sample_yet_has_no_ratio() -> None:
    r = report("gs_3", "shed", 150.0, [])
    assert (r.ratio, r.samples, r.first) == (None, 0, None)


def test_the_baseline_is_the_last_unconstrained_stretch_before_the_window() -> None:
    """Samples under a limit (False) and after the window's start play no part."""
    history = [(at(k), 150.0, True) for k in range(30)]
    history += [(at(30 + k), 100.0, False) for k in range(10)]  # an earlier event's limit
    history += [(at(40 + k), 140.0, True) for k in range(5)]
    history += [(at(46), 50.0, True)]  # after the start
    # the newest unconstrained sample is at 44 s: 34..44 s, of which 40..44 s are unconstrained
    assert baseline_of(history, at(45.5)) == pytest.approx(140.0)
    assert baseline_of(history, at(35.0)) == pytest.approx(150.0)  # 19..29 s
    assert BASELINE_S == 10.0
    assert baseline_of([(at(1), 100.0, False)], at(2)) is None


mw = st.floats(0.0, 1000.0)


@given(mw, mw, st.lists(mw, min_size=1, max_size=50))
def test_the_ratio_is_the_mean_reduction_over_the_reduction_asked(
    baseline: float, limit: float, measured: list[float]
) -> None:
    r = report("gs", "import_limit", baseline, samples(limit, measured))
    assert r.within_share is not None
    assert 0.0 <= r.within_share <= 1.0
    assert r.ratio is not None
    if baseline - limit > 0.5:
        mean = sum(measured) / len(measured)
        assert r.ratio == pytest.approx((baseline - mean) / (baseline - limit))
    else:
        assert r.ratio == r.within_share
