"""Power caps while a grid limit binds: flexible running workloads share the shortfall, fixed
ones are protected, and the battery counts only for what it sustains to the window's end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.scheduling.caps import CAP_STEP_MW, Running, battery_sustains_mw, power_caps


def flex(name: str, mw: float) -> Running:
    return Running(name, mw, flexible=True)


def fixed(name: str, mw: float) -> Running:
    return Running(name, mw, flexible=False)


def test_the_shortfall_is_shared_in_proportion_among_flexible_workloads() -> None:
    running = [flex("a", 100.0), flex("b", 50.0), fixed("c", 80.0)]
    caps = power_caps(running, base_mw=20.0, limit_mw=190.0, battery_mw=0.0)
    # 250 MW against 190: 60 MW off the flexible 150, so each keeps 60 %
    assert caps == {"a": 60.0, "b": 30.0}


def test_no_cap_while_the_limit_holds_or_the_battery_sustains_it() -> None:
    running = [flex("a", 100.0)]
    assert power_caps(running, 20.0, 130.0, 0.0) == {}
    assert power_caps(running, 20.0, 100.0, 20.0) == {}
    assert power_caps(running, 20.0, 100.0, 10.0) == {"a": 90.0}


def test_fixed_workloads_are_never_capped() -> None:
    assert power_caps([fixed("c", 300.0)], 20.0, 100.0, 0.0) == {}


def test_a_shortfall_larger_than_the_flexible_load_caps_it_to_nothing() -> None:
    running = [flex("a", 50.0), fixed("c", 300.0)]
    assert power_caps(running, 20.0, 100.0, 0.0) == {"a": 0.0}


def test_the_battery_sustains_its_power_or_its_energy_over_the_time_left() -> None:
    assert battery_sustains_mw(100.0, 200.0, 3600.0) == 100.0
    assert battery_sustains_mw(100.0, 50.0, 3600.0) == 50.0
    assert battery_sustains_mw(100.0, 200.0, None) == 0.0  # a window without an end
    assert battery_sustains_mw(0.0, 200.0, 60.0) == 0.0


@settings(max_examples=300, deadline=None)
@given(
    loads=st.lists(st.tuples(st.floats(0.0, 500.0), st.booleans()), min_size=0, max_size=8),
    base=st.floats(0.0, 100.0),
    limit=st.floats(0.0, 2000.0),
    battery=st.floats(0.0, 300.0),
)
def test_caps_meet_the_limit_when_they_can_and_never_raise_a_workload(
    loads: list[tuple[float, bool]], base: float, limit: float, battery: float
) -> None:
    running = [Running(f"w{i}", mw, flexible) for i, (mw, flexible) in enumerate(loads)]
    caps = power_caps(running, base, limit, battery)
    for r in running:
        if r.id in caps:
            assert r.flexible
            assert 0.0 <= caps[r.id] <= r.mean_mw + 1e-9
    held = base + sum(caps.get(r.id, r.mean_mw) for r in running) - battery
    fixed = base + sum(r.mean_mw for r in running if not r.flexible) - battery
    if caps and fixed <= limit:
        # met, short of the rounding down of each cap
        assert held <= limit + 1e-6
        assert held >= limit - CAP_STEP_MW * len(caps) - 1e-6 or min(caps.values()) == 0.0
    if not caps:
        assert held <= limit + 1e-6 or all(not r.flexible or r.mean_mw == 0 for r in running)


@pytest.mark.parametrize("mw", [0.05, 12.34, 99.99])
def test_caps_round_down_to_the_step(mw: float) -> None:
    caps = power_caps([flex("a", mw)], 0.0, mw * 0.5, 0.0)
    assert caps["a"] <= mw * 0.5 + 1e-9
    assert caps["a"] == pytest.approx(round(caps["a"] / CAP_STEP_MW) * CAP_STEP_MW)
