"""Fast frequency response on the twin, IEEE 1547.1-style: frequency steps and a ramp, over and
under frequency, inside and outside the deadband, scripted on the twin's grid and judged from
its truth (``pswd_gateway/bench/ffr.py``: the same cases the benchmark runs).

Each case is generated from a seed (curve and sequence). Timing is not asserted tightly (a busy
machine delays the loop): the response must come during each hold, settle within a generous
bound of the configured curve, and a step inside the deadband must move nothing. The measured
figures are printed; ``run_ffr_bench`` reports them.
"""

from __future__ import annotations

import pytest

from pswd_gateway.bench.ffr import FfrCase, generate_cases, run_case

pytestmark = pytest.mark.integration

CASES = generate_cases(seed=2018, count=1)
"""One generated case here (each runs ~30 s of twin time: under, over, inside the deadband, a
ramp); ``pswd-gateway``'s ``run_ffr_bench`` runs three, the pure curve's properties many."""
MAX_ERROR_RATIO = 0.25
"""Settled 0.5 s means within 25 % of the curve (measured: a few %)."""
DEADBAND_MAX_MW = 2.0
"""A step inside the deadband leaves the import where it was, but for the load's noise."""


@pytest.mark.timeout(150)
@pytest.mark.parametrize("case", CASES, ids=[f"seed{c.seed}" for c in CASES])
async def test_the_site_answers_frequency_steps_and_ramps_along_the_configured_curve(
    case: FfrCase,
) -> None:
    result = await run_case(case)
    for e in result.events:
        print(
            f"{e.event.kind:13s} {e.event.hz:.3f} Hz ramp {e.event.ramp_s:.1f} s: expected "
            f"{e.expected_w / 1e6:7.2f} MW, settled {e.response_w / 1e6:7.2f} MW, "
            f"time {e.response_time_s}, error {e.error_ratio}"
        )
    assert result.guard_trips == 0
    assert result.writes > 0
    assert result.write_failures <= 0.05 * result.writes
    for e in result.events:
        what = f"{e.event.kind} to {e.event.hz} Hz"
        if not e.event.outside_deadband:
            assert e.expected_w == 0.0
            assert abs(e.response_w) <= DEADBAND_MAX_MW * 1e6, what
            continue
        assert abs(e.expected_w) > 5e6, what  # the case asks for a response worth judging
        if e.event.ramp_s == 0.0:
            assert e.response_time_s is not None, f"{what}: never reached 90 %"
            assert e.response_time_s < e.event.hold_s, what
        assert e.error_ratio is not None
        assert e.error_ratio <= MAX_ERROR_RATIO, what
