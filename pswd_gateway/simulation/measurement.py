"""What the site's meters show: values refreshed at fixed instants, power averaged over a window.

A real meter does not answer with the power at the instant of a request. It computes its power
registers once per refresh period ``T``, at ``r = k·T`` on its own clock, as the mean over the
window ``[r - T, r]`` just ended, and serves them unchanged until the next refresh; its energy
registers refresh on their own, slower period. This module computes those views from
:class:`~pswd_gateway.simulation.physics.SitePhysics` exactly: a window's mean power is the
difference of the physics' energy counters over it, divided by ``T`` — not a sampled average.

Pure: no sockets, no clock. Every method takes the time ``t`` (seconds on the physics' clock) at
which the meter is read: the Modbus devices pass the twin's clock, an offline simulator its
simulated time. A refresh's values are computed once and cached when the physics has been
integrated past its instant (no command given later can change them); ask for ``t`` no later
than the physics' present and the answers are exact and repeatable.

    meter = MeterView.from_config(physics)      # [simulation.grid] meter_* settings
    meter.active_power_w(t)                     # W > 0 = import, as the meter shows it at t
    bess = BessView.from_config(physics)        # [simulation.bess] measurement_refresh_ms
    bess.power_w(t), bess.soc(t)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from pswd_gateway.simulation.noise import gaussian
from pswd_gateway.simulation.physics import SitePhysics, SiteState, Truth

__all__ = [
    "METER_NOISE_STREAM",
    "BessReading",
    "BessView",
    "EnergyReading",
    "MeterReading",
    "MeterView",
    "meter_readings",
    "net_discharge_j",
    "net_import_j",
    "refresh_index",
    "refresh_instant",
    "shown_range",
    "window_mean",
]

METER_NOISE_STREAM: Final = 0x3E7E
"""Noise stream of the grid meter (see :mod:`pswd_gateway.simulation.noise`)."""
_EPS: Final = 1e-9
"""Fraction of a period (plus a few units in the last place) by which a time may miss a refresh
instant and still count as on it: ``0.06 / 0.02`` is 2.9999999999999996 in binary floating
point, and is refresh 3."""
_CACHE_SIZE: Final = 64
_INSTANT_NOISE_PER_S: Final = 1_000_000
"""Without a refresh period, the noise is drawn afresh per microsecond."""
RANGE_STEP_S: Final = 0.001
MAX_RANGE_SAMPLES: Final = 10_000

R = TypeVar("R")


def refresh_index(t: float, period_s: float) -> int:
    """``k`` of the last refresh ``r = k·period_s`` at or before ``t``."""
    x = t / period_s
    nearest = round(x)
    if abs(x - nearest) <= _EPS + 8 * math.ulp(x):  # on a refresh instant, to rounding
        return nearest
    return math.floor(x)


def refresh_instant(t: float, period_s: float) -> float:
    """The last refresh instant at or before ``t`` (``t`` itself when ``period_s`` is 0)."""
    if period_s <= 0.0:
        return t
    return refresh_index(t, period_s) * period_s


def window_mean(
    physics: SitePhysics, counter: Callable[[SiteState], float], end: float, period_s: float
) -> float:
    """Mean over ``[end - period_s, end]`` of the power whose integral ``counter`` returns (J,
    from the state :meth:`SitePhysics.truth_at` answers from): the counter's difference over
    the window divided by its length. The window is cut at the twin's start (t = 0), so ``end``
    must lie after it.
    """
    start = max(end - period_s, 0.0)
    if end <= start:
        raise ValueError(f"the window [{start}, {end}] s has no length")
    return (counter(physics.state_at(end)) - counter(physics.state_at(start))) / (end - start)


def net_import_j(state: SiteState) -> float:
    """Energy imported from the grid less energy exported, since the start."""
    return state.grid_import_j - state.grid_export_j


def net_discharge_j(state: SiteState) -> float:
    """Energy the BESS delivered less energy it took, since the start (AC side)."""
    return state.bess.discharged_j - state.bess.charged_j


class _PerRefresh(Generic[R]):
    """The value of each refresh, computed once: ``at(t)`` is the value of the last refresh at
    or before ``t``; without a period (0) it is computed at ``t`` itself, every time."""

    def __init__(
        self, physics: SitePhysics, period_s: float, compute: Callable[[int, float], R]
    ) -> None:
        self._physics = physics
        self.period_s = period_s
        self._compute = compute
        self._cache: dict[int, R] = {}

    def at(self, t: float) -> R:
        if self.period_s <= 0.0:
            return self._compute(round(t * _INSTANT_NOISE_PER_S), t)
        k = refresh_index(t, self.period_s)
        cached = self._cache.get(k)
        if cached is not None:
            return cached
        r = k * self.period_s
        value = self._compute(k, r)
        if r <= self._physics.latest.t:  # integrated past r: later commands cannot change it
            if len(self._cache) >= _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[k] = value
        return value


# --------------------------------------------------------------------------------- grid meter


@dataclass(frozen=True, slots=True)
class MeterReading:
    """What the grid meter's power registers show between two refreshes (SI units; W > 0 =
    import, the physics' sign — the Modbus device applies the 701 sign)."""

    t: float
    """The refresh instant the values belong to."""
    w: float
    """Mean active power over the window ending at ``t``, plus the meter's noise."""
    var: float
    """Reactive power of ``w`` at the site's power factor."""
    voltage_v: float
    """Line-to-line voltage sampled at ``t``."""
    frequency_hz: float
    """Frequency sampled at ``t``."""

    @property
    def va(self) -> float:
        return math.hypot(self.w, self.var)


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """What an energy register pair shows between two refreshes."""

    t: float
    """The refresh instant the values belong to."""
    imported_j: float
    """Energy into the site (the meter's ``TotWhAbs``; the BESS: charged)."""
    exported_j: float
    """Energy out of the site (``TotWhInj``; the BESS: discharged)."""


class MeterView:
    """The grid meter at the point of common coupling, as it shows the physics.

    Power registers refresh every ``refresh_s`` (0 = the instantaneous value at the request);
    ``W`` is the mean over the window just ended plus seeded Gaussian noise of standard
    deviation ``noise_w`` — a pure function of ``(seed, stream, refresh index)``. Energy
    registers refresh every ``energy_refresh_s``.
    """

    def __init__(
        self,
        physics: SitePhysics,
        refresh_s: float,
        noise_w: float,
        seed: int,
        stream: int = METER_NOISE_STREAM,
        *,
        energy_refresh_s: float = 1.0,
    ) -> None:
        self.physics = physics
        self.refresh_s = refresh_s
        self.noise_w = noise_w
        self.seed = seed
        self.stream = stream
        self.energy_refresh_s = energy_refresh_s
        self._power = _PerRefresh(physics, refresh_s, self._compute)
        self._energy = _PerRefresh(physics, energy_refresh_s, self._compute_energy)

    @classmethod
    def from_config(cls, physics: SitePhysics) -> MeterView:
        """The meter of ``[simulation.grid]``: ``meter_refresh_ms``, ``meter_noise_mw``,
        ``meter_energy_refresh_ms``, seeded with ``[simulation] seed``."""
        grid = physics.config.grid
        return cls(
            physics,
            grid.meter_refresh_ms / 1000.0,
            grid.meter_noise_mw * 1e6,
            physics.seed,
            energy_refresh_s=grid.meter_energy_refresh_ms / 1000.0,
        )

    def reading(self, t: float) -> MeterReading:
        """What the power registers show at ``t``."""
        return self._power.at(t)

    def active_power_w(self, t: float) -> float:
        """Active power the meter shows at ``t`` (W > 0 = import)."""
        return self._power.at(t).w

    def energy_j(self, t: float) -> EnergyReading:
        """What the energy registers show at ``t``."""
        return self._energy.at(t)

    def refresh_instant(self, t: float) -> float:
        """The power registers' last refresh at or before ``t``."""
        return refresh_instant(t, self.refresh_s)

    def _compute(self, index: int, r: float) -> MeterReading:
        truth = self.physics.truth_at(r)
        if self.refresh_s > 0.0 and r > 0.0:
            w = window_mean(self.physics, net_import_j, r, self.refresh_s)
        else:
            w = truth.grid_w
        if self.noise_w:
            w += self.noise_w * gaussian(self.seed, self.stream, index)
        return MeterReading(
            t=r,
            w=w,
            var=abs(w) * self.physics.tan_phi,
            voltage_v=truth.grid_voltage_v,
            frequency_hz=truth.frequency_hz,
        )

    def _compute_energy(self, _index: int, r: float) -> EnergyReading:
        truth = self.physics.truth_at(r)
        return EnergyReading(t=r, imported_j=truth.grid_import_j, exported_j=truth.grid_export_j)


# --------------------------------------------------------------------------------------- BESS


@dataclass(frozen=True, slots=True)
class BessReading:
    """What the PCS's measurement registers (701 W/var/A/energy, 802 SoC/W) show between two
    refreshes (W > 0 = discharge)."""

    t: float
    """The refresh instant the values belong to."""
    power_w: float
    """Mean AC power over the window ending at ``t``."""
    soc: float
    """State of charge at ``t``."""
    charged_j: float
    discharged_j: float
    frequency_hz: float


class BessView:
    """The battery inverter's own measurements, refreshed every ``refresh_s`` (0 = the
    instantaneous values); the power is the mean over the window just ended, from the
    battery's charged and discharged energy counters."""

    def __init__(self, physics: SitePhysics, refresh_s: float) -> None:
        self.physics = physics
        self.refresh_s = refresh_s
        self._values = _PerRefresh(physics, refresh_s, self._compute)

    @classmethod
    def from_config(cls, physics: SitePhysics) -> BessView:
        """The PCS of ``[simulation.bess]``: ``measurement_refresh_ms``."""
        return cls(physics, physics.config.bess.measurement_refresh_ms / 1000.0)

    def reading(self, t: float) -> BessReading:
        """What the measurement registers show at ``t``."""
        return self._values.at(t)

    def power_w(self, t: float) -> float:
        """AC power the PCS shows at ``t`` (W > 0 = discharge)."""
        return self._values.at(t).power_w

    def soc(self, t: float) -> float:
        """State of charge the PCS shows at ``t`` (0…1)."""
        return self._values.at(t).soc

    def refresh_instant(self, t: float) -> float:
        """The last refresh at or before ``t``."""
        return refresh_instant(t, self.refresh_s)

    def _compute(self, _index: int, r: float) -> BessReading:
        truth = self.physics.truth_at(r)
        if self.refresh_s > 0.0 and r > 0.0:
            power = window_mean(self.physics, net_discharge_j, r, self.refresh_s)
        else:
            power = truth.bess_w
        return BessReading(
            t=r,
            power_w=power,
            soc=truth.soc,
            charged_j=truth.bess_charged_j,
            discharged_j=truth.bess_discharged_j,
            frequency_hz=truth.frequency_hz,
        )


# ----------------------------------------------------------------------------------- ranges


def shown_range(
    value: Callable[[float], float], t0: float, t1: float, refresh_s: float
) -> tuple[float, float]:
    """(lowest, highest) of what a refreshed ``value(t)`` showed between ``t0`` and ``t1``: its
    value at ``t0`` and at every refresh instant up to ``t1``, or — without a refresh period —
    sampled every millisecond (at most :data:`MAX_RANGE_SAMPLES` samples either way). A reading
    taken by a request in flight from ``t0`` to ``t1`` lies in it.
    """
    t0, t1 = sorted((t0, t1))
    if refresh_s > 0.0:
        first, last = refresh_index(t0, refresh_s) + 1, refresh_index(t1, refresh_s)
        if last - first >= MAX_RANGE_SAMPLES:
            raise ValueError(f"more than {MAX_RANGE_SAMPLES} refreshes in [{t0}, {t1}] s")
        times = [t0, *(k * refresh_s for k in range(first, last + 1))]
    else:
        n = min(max(math.ceil((t1 - t0) / RANGE_STEP_S), 1), MAX_RANGE_SAMPLES)
        times = [t0 + (t1 - t0) * i / n for i in range(n + 1)]
    samples = [value(t) for t in times]
    return min(samples), max(samples)


def meter_readings(view: MeterView | None, truth: Truth) -> tuple[MeterReading, EnergyReading]:
    """What a grid meter shows at ``truth.t``: ``view``'s refreshed, averaged, noisy reading and
    energy registers, or without a view the truth itself (every meter model of the twin)."""
    if view is None:
        shown = MeterReading(
            truth.t, truth.grid_w, truth.grid_var, truth.grid_voltage_v, truth.frequency_hz
        )
        return shown, EnergyReading(truth.t, truth.grid_import_j, truth.grid_export_j)
    return view.reading(truth.t), view.energy_j(truth.t)
