"""The Prometheus site gauges agree with the signal catalogue: each name carries the base-unit
suffix of its signal's unit, and every device signal is exported by name or left to
``pswd_point`` on purpose."""

from __future__ import annotations

import pytest

from pswd_gateway.domain.signals import BESS_VOLTAGE, GRID_POWER, SIGNALS, Signal
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.northbound.metrics import BASE_UNIT_SUFFIX, POINT_ONLY, SITE_POINTS, Gauge


@pytest.mark.parametrize("gauge", SITE_POINTS, ids=lambda g: g.name)
def test_a_site_gauge_name_ends_with_the_base_unit_of_its_signal(gauge: Gauge) -> None:
    """W → ``_watts``, Hz → ``_hertz``, degC → ``_celsius``, ratio → ``_ratio`` …"""
    assert gauge.signal in SIGNALS, f"{gauge.name} names a signal outside the catalogue"
    assert gauge.name.startswith("pswd_")
    assert gauge.name.endswith(BASE_UNIT_SUFFIX[gauge.signal.unit])


def test_the_suffixes_are_prometheus_base_units() -> None:
    """The one mapping of SI unit to metric suffix says what Prometheus' conventions say."""
    assert dict(BASE_UNIT_SUFFIX) == {
        SiUnit.WATT: "_watts",
        SiUnit.HERTZ: "_hertz",
        SiUnit.CELSIUS: "_celsius",
        SiUnit.RATIO: "_ratio",
        SiUnit.JOULE: "_joules",
        SiUnit.WATT_PER_SECOND: "_watts_per_second",
    }


def test_a_gauge_whose_name_contradicts_its_unit_is_refused() -> None:
    """A watt signal named ``…_ratio``, or a volt signal (no base-unit suffix), cannot be a
    named gauge: it is refused when the table is built, not found on a dashboard."""
    with pytest.raises(ValueError, match="_watts"):
        Gauge(signal=GRID_POWER, name="pswd_grid_active_power_ratio")
    with pytest.raises(ValueError, match="no base unit"):
        Gauge(signal=BESS_VOLTAGE, name="pswd_bess_voltage_volts")


def test_metric_names_and_signals_are_each_used_once() -> None:
    """No two gauges share a name or a signal."""
    assert len({g.name for g in SITE_POINTS}) == len(SITE_POINTS)
    assert len({g.signal.key for g in SITE_POINTS}) == len(SITE_POINTS)


def test_every_device_signal_is_a_named_gauge_or_left_to_pswd_point() -> None:
    """A signal with a role is exported as a named gauge or listed in ``POINT_ONLY`` (its
    device point is a ``pswd_point`` series), never both and never neither."""
    named = {g.signal.key for g in SITE_POINTS}
    left = {s.key for s in POINT_ONLY}
    assert named.isdisjoint(left), named & left
    device_signals = {s.key for s in SIGNALS if s.role is not None}
    assert device_signals - named - left == set(), "say how each new signal is exported"
    assert all(s.role is not None for s in POINT_ONLY), "settings are not store points"


def test_help_text_is_the_description_and_the_sign_convention() -> None:
    """The catalogue's words, not a second description."""

    def says_all_of(gauge: Gauge, signal: Signal) -> bool:
        return signal.description in gauge.help and signal.sign in gauge.help

    assert all(says_all_of(g, g.signal) for g in SITE_POINTS)
