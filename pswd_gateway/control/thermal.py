"""Thermal control: the chilled-water supply temperature, with feed-forward from announcements.

A supervisory loop over the plant's own controls: the plant holds its supply temperature near
the setpoint it is given, but a heat-load step reaches the water faster than the chillers pick
it up. The gateway therefore (1) trims the setpoint with a PI loop on the measured supply
temperature, (2) adds the imbalance a model of the plant predicts from the measured IT power
(heat arrives through a short lag, the chillers follow through a longer one), and (3) before an
announced start, pre-cools by the imbalance the announced step will cause, so the water is
already colder when the heat arrives. Pure functions; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pswd_gateway.control.grid import Announced, expected_announced_w

__all__ = ["ThermalSettings", "ThermalState", "thermal_step"]

RHO_CP_WATER = 4.18e6
"""J/(m³·K)."""


@dataclass(frozen=True, slots=True)
class ThermalSettings:
    setpoint_c: float = 18.0
    low_c: float = 8.0
    high_c: float = 26.0
    kp: float = 1.5
    """Setpoint correction per kelvin of error."""
    ki_per_s: float = 0.05
    load_tau_s: float = 5.0
    """Plant model (commissioning data): heat reaching the water."""
    chiller_tau_s: float = 20.0
    """Plant model: the chillers following the heat."""
    supply_tau_s: float = 60.0
    """Plant model: the supply temperature following its setpoint."""
    design_delta_t_k: float = 6.0
    min_flow_m3_s: float = 4.0
    max_flow_m3_s: float = 15.0
    precool_s: float = 120.0
    """How long before an announced start the pre-cooling begins."""


@dataclass(frozen=True, slots=True)
class ThermalState:
    t: float
    integral_k: float
    heat_w: float
    duty_w: float


def _capacity_w_per_k(heat_w: float, s: ThermalSettings) -> float:
    flow = heat_w / (RHO_CP_WATER * s.design_delta_t_k)
    return RHO_CP_WATER * min(max(flow, s.min_flow_m3_s), s.max_flow_m3_s)


def _lag(value: float, target: float, tau: float, dt: float) -> float:
    return target + (value - target) * math.exp(-dt / tau)


def thermal_step(
    state: ThermalState | None,
    t: float,
    supply_c: float | None,
    it_w: float,
    jobs: Sequence[Announced],
    s: ThermalSettings,
) -> tuple[float, ThermalState]:
    """The chilled-water supply setpoint to write now, and the state to keep."""
    if state is None or t <= state.t:
        state = ThermalState(t, 0.0, it_w, it_w)
        dt = 0.0
    else:
        dt = t - state.t
    heat = _lag(state.heat_w, it_w, s.load_tau_s, dt) if dt > 0 else state.heat_w
    duty = _lag(state.duty_w, heat, s.chiller_tau_s, dt) if dt > 0 else state.duty_w
    # Predicted imbalance (K) one supply time constant ahead: what is measured now, plus the
    # announced change that will have arrived by then.
    ahead = t + min(s.supply_tau_s, s.precool_s)
    step_w = expected_announced_w(ahead, jobs) - expected_announced_w(t, jobs)
    imbalance_k = (heat - duty + 0.5 * step_w) / _capacity_w_per_k(max(heat, 1.0), s)
    error = 0.0 if supply_c is None else s.setpoint_c - supply_c
    integral = state.integral_k + s.ki_per_s * error * dt
    integral = min(max(integral, s.low_c - s.setpoint_c), s.high_c - s.setpoint_c)
    command = s.setpoint_c - imbalance_k + s.kp * error + integral
    command = min(max(command, s.low_c), s.high_c)
    return command, ThermalState(t, integral, heat, duty)
