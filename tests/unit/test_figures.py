"""The operator's figures on readings: the import limit judged on whole-second means."""

from __future__ import annotations

import pytest

from pswd_gateway.bench.figures import import_crossings, share_over

MW = 1e6


def test_a_spike_is_not_a_crossing_but_a_second_over_the_limit_while_charging_is() -> None:
    grid = [(k * 0.02, 300 * MW) for k in range(150)]  # 3 s at 300 MW
    grid[10] = (0.2, 420 * MW)  # one 20 ms reading over the 320 MW limit
    grid += [(3.0 + k * 0.02, 330 * MW) for k in range(50)]  # then a whole second over it
    bess = [(k * 0.02, -50 * MW) for k in range(200)]
    ((second, g, b),) = import_crossings(grid, bess, 0.0, 4.0, 320 * MW)
    assert (second, g, b) == (3.0, pytest.approx(330 * MW), pytest.approx(-50 * MW))


def test_a_second_without_a_battery_reading_is_not_judged() -> None:
    grid = [(k * 0.1, 400 * MW) for k in range(30)]
    bess = [(2.5, -1 * MW)]  # no reading before 2.5 s
    assert [t for t, _, _ in import_crossings(grid, bess, 0.0, 3.0, 320 * MW)] == [2.0]


@pytest.mark.parametrize("phase_s", [0.0, 0.3, 0.7, 1.1, 1.9])
def test_the_share_over_does_not_depend_on_where_a_rhythm_falls_against_whole_seconds(
    phase_s: float,
) -> None:
    """A 2.5 s, 180 MW square rhythm: whole seconds over the limit change with its phase, the
    share of sliding windows over it barely does."""

    def rhythm(shift_s: float) -> list[tuple[float, float]]:
        return [
            (k * 0.01, 200e6 if ((k * 0.01 + shift_s) % 2.5) < 1.875 else 20e6) for k in range(6001)
        ]

    reference = share_over(rhythm(0.0), 10.0, 50.0, 20e6)
    share = share_over(rhythm(phase_s), 10.0, 50.0, 20e6)
    assert reference is not None
    assert share == pytest.approx(reference, abs=0.03)
    assert share_over([], 0.0, 1.0, 1.0) is None
