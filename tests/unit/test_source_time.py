"""Source times of readings from devices that do not time-stamp them (refresh detection)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.southbound.source_time import SourceClock


def test_a_device_that_measures_when_asked_is_stamped_with_the_request_time() -> None:
    clock = SourceClock(0.0)
    clock.begin(100.0)
    assert clock.stamp("w", 1.0) == 100.0
    clock.begin(100.02)
    assert clock.stamp("w", 1.0) == 100.02


def test_a_changed_value_is_centred_half_a_window_before_its_estimated_refresh() -> None:
    clock = SourceClock(0.1)  # a 100 ms meter polled every 20 ms
    clock.begin(10.00)
    clock.stamp("w", 5.0)
    clock.begin(10.02)
    # refreshed in (10.00, 10.02]: at about 10.01, showing the mean of [9.91, 10.01]
    assert clock.stamp("w", 6.0) == pytest.approx(10.01 - 0.05)


def test_a_repeated_value_is_the_same_measurement_until_a_whole_period_has_passed() -> None:
    clock = SourceClock(0.1)
    clock.begin(10.00)
    first = clock.stamp("w", 5.0)
    for k in range(1, 5):
        clock.begin(10.00 + 0.02 * k)
        assert clock.stamp("w", 5.0) == first
    # a refresh can repeat a value: once a whole period has passed it is a new measurement
    clock.begin(first + 0.25)
    assert clock.stamp("w", 5.0) > first


def test_a_steady_value_polled_at_its_refresh_rate_keeps_its_time_advancing() -> None:
    """A battery holding a setpoint shows the same power for seconds: each refresh is still a
    new measurement, so the control loop can meet it with the meter's readings."""
    clock = SourceClock(0.02)
    times = []
    for k in range(10):
        clock.begin(5.0 + 0.02 * k)
        times.append(clock.stamp("w", 42.0))
    assert times == sorted(times)
    assert times[-1] == pytest.approx(5.18 - 0.02)


def test_each_point_keeps_its_own_time() -> None:
    clock = SourceClock(0.1)
    clock.begin(1.0)
    clock.stamp("w", 1.0)
    energy = clock.stamp("energy", 7.0)
    clock.begin(1.02)
    assert clock.stamp("w", 2.0) > energy  # a new power measurement
    assert clock.stamp("energy", 7.0) == energy  # the same energy reading


def test_stamping_before_a_poll_began_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="begin"):
        SourceClock(0.1).stamp("w", 1.0)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.lists(
        st.tuples(st.floats(0.001, 0.5), st.floats(-1e9, 1e9, allow_nan=False)),
        min_size=1,
        max_size=60,
    ),
)
def test_a_source_time_is_never_after_the_request_nor_long_before_it(
    refresh_s: float, polls: list[tuple[float, float]]
) -> None:
    clock = SourceClock(refresh_s)
    t = 1000.0
    last = -1.0
    for gap, value in polls:
        t += gap
        clock.begin(t)
        source = clock.stamp("w", value)
        assert source <= t
        assert source >= last  # never goes back
        if source != last:
            assert source >= t - 1.5 * refresh_s - 1e-9
        last = source
