"""The site's physics, without sockets: IT load, cooling, heat recovery, BESS, grid.

Time ``t`` is in seconds since the twin started (the trace's time). The state is integrated
lazily: :meth:`SitePhysics.advance` integrates from the last committed state up to the exact
time of a request (in sub-steps of at most 50 ms) and commits the result; a slow background tick
keeps the state fresh between requests. Every first-order lag is integrated with its exact
exponential solution, so the result does not depend on how the time was cut into steps.

Sign conventions (everywhere in the twin): grid active power > 0 = import from the grid;
BESS active power > 0 = discharging into the site.

    grid = IT + cooling - BESS + noise,   cooling = chiller electrical + heat-pump electrical

Committed states are kept for ``truth_buffer_s`` seconds so that tests can ask what the true
value was at any instant (:meth:`SitePhysics.truth_at`): the answer is computed from the last
committed state at or before that instant, exactly as a request at that instant would have.

The energy counters do not depend on how the time was cut either (the meters' window means are
their differences): the IT demand is integrated by Simpson's rule between the trace's
breakpoints, the noise between its knots and the BESS by its exact lag; only the slow cooling
uses the trapezoid rule.

The PCS has a dead time (``[simulation.bess] response_delay_ms``): a command given at ``t`` is
held in the state as pending and starts to act at ``t + delay``; the integration cuts its steps
at that instant, so the truth before it never includes the command and the truth after it does,
however the time is cut into requests.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from pswd_gateway.simulation.config import (
    BessSimConfig,
    FrequencyEvent,
    GridSimConfig,
    SimulationConfig,
    ThermalSimConfig,
)
from pswd_gateway.simulation.noise import uniform, value_noise
from pswd_gateway.simulation.trace import ItTrace, build_trace

__all__ = [
    "MAX_STEP_S",
    "BessCommand",
    "BessParams",
    "BessState",
    "Commands",
    "PendingBess",
    "SitePhysics",
    "SiteState",
    "ThermalOutputs",
    "ThermalParams",
    "ThermalState",
    "Truth",
    "bess_limits_w",
    "bess_step",
    "bess_target_w",
    "frequency_hz",
    "scripted_hz",
    "thermal_outputs",
    "thermal_step",
]

MAX_STEP_S: Final = 0.05
"""Longest integration sub-step (the thermal plant's input is held at the step's mean)."""
COMMIT_MIN_S: Final = 0.001
"""Requests closer than this to the last committed state are answered without committing."""
RHO_CP_WATER: Final = 4.18e6
"""Volumetric heat capacity of water, J/(m³·K)."""
KELVIN: Final = 273.15
REFERENCE_CHW_C: Final = 18.0
SITE_POWER_REF_W: Final = 300e6
"""Power at which the PCC voltage has sagged by ``VOLTAGE_DROOP``."""
VOLTAGE_DROOP: Final = 0.01
_GRID_NOISE_STREAM: Final = 0x6E01
_FREQ_STREAM: Final = 0xF4E0
_RACK_STREAM: Final = 0x4AC0
FREQ_WANDER_INTERVAL_S: Final = 2.0
_EMPTY_CURTAILMENT: Mapping[tuple[int, int], float] = MappingProxyType({})


# --------------------------------------------------------------------------------------------
# BESS
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BessParams:
    """Ratings of the battery and its inverter (SI)."""

    rated_w: float
    capacity_j: float
    soc_min: float
    soc_max: float
    charge_efficiency: float
    discharge_efficiency: float
    tau_s: float
    """Time constant of the first-order response, once a command acts."""
    dead_time_s: float = 0.0
    """From a command to the instant it starts to act (communication and PCS processing)."""

    @classmethod
    def from_config(cls, cfg: BessSimConfig) -> BessParams:
        return cls(
            rated_w=cfg.power_mw * 1e6,
            capacity_j=cfg.energy_mwh * 3.6e9,
            soc_min=cfg.soc_min,
            soc_max=cfg.soc_max,
            charge_efficiency=cfg.charge_efficiency,
            discharge_efficiency=cfg.discharge_efficiency,
            tau_s=cfg.response_ms / 1000.0 / 3.0,
            dead_time_s=cfg.response_delay_ms / 1000.0,
        )


@dataclass(frozen=True, slots=True)
class BessCommand:
    """What the PCS has been told (SunSpec 702/704/802 writes), stored as commanded."""

    enabled: bool = False
    """704 WSetEna: follow the active-power setpoint (otherwise idle at 0 W)."""
    watts_mode: bool = True
    """704 WSetMod: WATTS (``setpoint_w``) or W_MAX_PCT (``setpoint_pct`` of ``wmax_w``)."""
    setpoint_w: float = 0.0
    """704 WSet; > 0 = discharge. Not clamped here: the PCS clamps to what it can do."""
    setpoint_pct: float = 0.0
    """704 WSetPct, percent of WMax."""
    running: bool = True
    """802 SetInvState/SetOp: ``False`` when stopped, in standby or disconnected."""
    wmax_w: float | None = None
    """702 WMax setting (None = the rating)."""
    max_charge_w: float | None = None
    """702 WChaRteMax setting (None = the rating)."""
    max_discharge_w: float | None = None
    """702 WDisChaRteMax setting (None = the rating)."""


@dataclass(frozen=True, slots=True)
class BessState:
    power_w: float
    soc: float
    charged_j: float = 0.0
    """AC energy taken from the site while charging."""
    discharged_j: float = 0.0
    """AC energy delivered to the site while discharging."""


def bess_limits_w(params: BessParams, command: BessCommand) -> tuple[float, float]:
    """(charge, discharge) power the PCS allows now: the settings, never above the rating."""
    charge = params.rated_w if command.max_charge_w is None else command.max_charge_w
    discharge = params.rated_w if command.max_discharge_w is None else command.max_discharge_w
    return (
        min(max(charge, 0.0), params.rated_w),
        min(max(discharge, 0.0), params.rated_w),
    )


def bess_target_w(params: BessParams, command: BessCommand, soc: float) -> float:
    """The power the PCS heads for: the setpoint clamped to the limits and the SoC window."""
    if not (command.enabled and command.running):
        return 0.0
    if command.watts_mode:
        wanted = command.setpoint_w
    else:
        wmax = params.rated_w if command.wmax_w is None else min(command.wmax_w, params.rated_w)
        wanted = command.setpoint_pct / 100.0 * wmax
    if not math.isfinite(wanted):
        return 0.0
    charge, discharge = bess_limits_w(params, command)
    target = min(max(wanted, -charge), discharge)
    if (target > 0.0 and soc <= params.soc_min) or (target < 0.0 and soc >= params.soc_max):
        return 0.0
    return target


def _lag_integral(p0: float, target: float, tau: float, dt: float) -> float:
    """∫₀^dt of p(s) = target + (p0 - target)·e^(-s/τ) ds."""
    return target * dt + (p0 - target) * tau * -math.expm1(-dt / tau)


def bess_step(params: BessParams, state: BessState, target_w: float, dt: float) -> BessState:
    """Advance the battery by ``dt`` seconds heading for ``target_w`` (first-order response).

    The AC power follows ``target_w`` with time constant τ; the energy is split into the
    discharging and charging parts (the power may cross zero within the step), the stored energy
    changes by -discharged/η_dis + charged·η_cha, and the SoC is kept inside its window.
    """
    if dt <= 0.0:
        return state
    tau = params.tau_s
    p0 = state.power_w
    p1 = target_w + (p0 - target_w) * math.exp(-dt / tau)
    p1 = min(max(p1, -params.rated_w), params.rated_w)
    # split the step where the power crosses zero, if it does
    split = dt
    if p0 * target_w < 0.0:
        split = min(dt, tau * math.log((p0 - target_w) / -target_w))
    first = _lag_integral(p0, target_w, tau, split)
    second = 0.0
    if split < dt:
        second = _lag_integral(0.0, target_w, tau, dt - split)
    discharged = max(first, 0.0) + max(second, 0.0)
    charged = -min(first, 0.0) - min(second, 0.0)
    stored = discharged / params.discharge_efficiency - charged * params.charge_efficiency
    soc = state.soc - stored / params.capacity_j
    soc = min(max(soc, params.soc_min), params.soc_max)
    return BessState(
        power_w=p1,
        soc=soc,
        charged_j=state.charged_j + charged,
        discharged_j=state.discharged_j + discharged,
    )


# --------------------------------------------------------------------------------------------
# Thermal plant
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThermalParams:
    load_tau_s: float
    chiller_tau_s: float
    chw_tau_s: float
    heat_tau_s: float
    heat_pump_tau_s: float
    design_delta_t_k: float
    min_flow_m3_s: float
    max_flow_m3_s: float
    chiller_cop: float
    chiller_cop_per_k: float
    heat_return_c: float
    heat_demand_w: float
    recovery_max_fraction: float
    carnot_efficiency: float

    @classmethod
    def from_config(cls, cfg: ThermalSimConfig) -> ThermalParams:
        return cls(
            load_tau_s=cfg.load_tau_s,
            chiller_tau_s=cfg.chiller_tau_s,
            chw_tau_s=cfg.chw_tau_s,
            heat_tau_s=cfg.heat_tau_s,
            heat_pump_tau_s=cfg.heat_pump_tau_s,
            design_delta_t_k=cfg.chw_design_delta_t_k,
            min_flow_m3_s=cfg.chw_min_flow_m3_s,
            max_flow_m3_s=cfg.chw_max_flow_m3_s,
            chiller_cop=cfg.chiller_cop,
            chiller_cop_per_k=cfg.chiller_cop_per_k,
            heat_return_c=cfg.heat_return_c,
            heat_demand_w=cfg.heat_demand_mw * 1e6,
            recovery_max_fraction=cfg.heat_recovery_max_fraction,
            carnot_efficiency=cfg.heat_pump_carnot_efficiency,
        )


@dataclass(frozen=True, slots=True)
class ThermalState:
    heat_load_w: float
    """Heat arriving in the chilled water (IT power through a first-order lag)."""
    chiller_duty_w: float
    """Heat the plant removes (follows the heat load through a first-order lag)."""
    chw_base_c: float
    """Supply temperature the controls hold (follows the setpoint through a first-order lag)."""
    heat_supply_c: float
    heat_delivered_w: float


@dataclass(frozen=True, slots=True)
class ThermalOutputs:
    chw_supply_c: float
    chw_return_c: float
    chw_flow_m3_s: float
    chiller_w: float
    """Chillers' electrical power."""
    chiller_cop: float
    heat_pump_w: float
    """Heat pump's electrical power."""
    heat_pump_cop: float
    heat_source_w: float
    """Heat the heat pump takes from the chilled-water return."""
    heat_target_w: float
    """What the heat pump is heading for: the demand, or what the IT heat allows."""


def thermal_outputs(params: ThermalParams, state: ThermalState) -> ThermalOutputs:
    """Temperatures, flow and electrical power of the plant in ``state``."""
    flow = state.heat_load_w / (RHO_CP_WATER * params.design_delta_t_k)
    flow = min(max(flow, params.min_flow_m3_s), params.max_flow_m3_s)
    capacity = RHO_CP_WATER * flow
    supply = state.chw_base_c + (state.heat_load_w - state.chiller_duty_w) / capacity
    ret = supply + state.heat_load_w / capacity
    cop_ch = max(1.0, params.chiller_cop * (1.0 + params.chiller_cop_per_k * (supply - 18.0)))
    lift = max(state.heat_supply_c - ret, 5.0)
    cop_hp = params.carnot_efficiency * (state.heat_supply_c + KELVIN) / lift
    cop_hp = min(max(cop_hp, 1.5), 10.0)
    hp_w = state.heat_delivered_w / cop_hp
    source = state.heat_delivered_w - hp_w
    available = params.recovery_max_fraction * max(state.heat_load_w, 0.0)
    target = min(params.heat_demand_w, available * cop_hp / (cop_hp - 1.0))
    chiller_w = max(state.chiller_duty_w - source, 0.0) / cop_ch
    return ThermalOutputs(
        chw_supply_c=supply,
        chw_return_c=ret,
        chw_flow_m3_s=flow,
        chiller_w=chiller_w,
        chiller_cop=cop_ch,
        heat_pump_w=hp_w,
        heat_pump_cop=cop_hp,
        heat_source_w=source,
        heat_target_w=target,
    )


def thermal_steady_state(
    params: ThermalParams, it_w: float, chw_setpoint_c: float, heat_setpoint_c: float
) -> ThermalState:
    """The plant settled at a constant IT load and setpoints."""
    state = ThermalState(it_w, it_w, chw_setpoint_c, heat_setpoint_c, 0.0)
    target = thermal_outputs(params, state).heat_target_w
    return dataclasses.replace(state, heat_delivered_w=target)


def thermal_step(
    params: ThermalParams,
    state: ThermalState,
    *,
    it_w: float,
    chw_setpoint_c: float,
    heat_setpoint_c: float,
    dt: float,
) -> ThermalState:
    """Advance every first-order lag of the plant by ``dt`` with the inputs held constant."""
    if dt <= 0.0:
        return state

    def lag(value: float, target: float, tau: float) -> float:
        return target + (value - target) * math.exp(-dt / tau)

    load = lag(state.heat_load_w, it_w, params.load_tau_s)
    moved = ThermalState(
        heat_load_w=load,
        chiller_duty_w=lag(state.chiller_duty_w, load, params.chiller_tau_s),
        chw_base_c=lag(state.chw_base_c, chw_setpoint_c, params.chw_tau_s),
        heat_supply_c=lag(state.heat_supply_c, heat_setpoint_c, params.heat_tau_s),
        heat_delivered_w=state.heat_delivered_w,
    )
    target = thermal_outputs(params, moved).heat_target_w
    return dataclasses.replace(
        moved, heat_delivered_w=lag(state.heat_delivered_w, target, params.heat_pump_tau_s)
    )


# --------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------


def _event_offset_hz(event: FrequencyEvent, t: float) -> float:
    x = t - event.start_s
    if x <= 0.0:
        return 0.0
    if x < event.fall_s:
        return event.delta_hz * x / event.fall_s
    x -= event.fall_s
    if x < event.hold_s:
        return event.delta_hz
    x -= event.hold_s
    if x < event.recover_s:
        return event.delta_hz * (1.0 - x / event.recover_s)
    return 0.0


def scripted_hz(cfg: GridSimConfig, t: float) -> float:
    """The scripted frequency at ``t``: nominal until the first step, then each step's target,
    reached linearly over its ramp."""
    level = float(cfg.nominal_frequency_hz)
    for step in cfg.frequency_script:
        if t <= step.at_s:
            break
        if t < step.at_s + step.ramp_s:
            return level + (step.hz - level) * (t - step.at_s) / step.ramp_s
        level = step.hz
    return level


def frequency_hz(cfg: GridSimConfig, seed: int, t: float) -> float:
    """Grid frequency: the script (nominal without one) + seeded slow wander + the events."""
    wander = cfg.frequency_wander_hz * value_noise(
        seed, _FREQ_STREAM, t, FREQ_WANDER_INTERVAL_S, smooth=True
    )
    return scripted_hz(cfg, t) + wander + sum(_event_offset_hz(e, t) for e in cfg.events)


# --------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------

RackLimits = tuple[tuple[tuple[int, float], ...], ...]
"""Per hall: sorted ``(rack index, limit W)`` pairs of the racks that have a power limit."""


@dataclass(frozen=True, slots=True)
class Commands:
    """Everything the gateway (or a test) has set on the site's devices."""

    bess: BessCommand
    chw_setpoint_c: float
    heat_setpoint_c: float
    rack_limits: RackLimits


@dataclass(frozen=True, slots=True)
class PendingBess:
    """A PCS command given but not acting yet: it replaces the acting one at ``effective_t``."""

    effective_t: float
    command: BessCommand


@dataclass(frozen=True, slots=True)
class SiteState:
    """The committed state at ``t``; values that are pure functions of time are not stored."""

    t: float
    bess: BessState
    thermal: ThermalState
    commands: Commands
    hall_demand_w: tuple[float, ...]
    hall_w: tuple[float, ...]
    cooling_w: float
    """Chillers' and heat pump's electrical power."""
    grid_w: float
    grid_import_j: float
    grid_export_j: float
    hall_demand_j: tuple[float, ...]
    """∫ demand of each hall (before limits): with a rack's share it gives the rack's energy."""
    curtailed_j: Mapping[tuple[int, int], float]
    """∫ power a limited rack did not draw, keyed ``(hall, rack)``."""
    bess_pending: tuple[PendingBess, ...] = ()
    """PCS commands in their dead time, oldest first (``commands.bess`` is the acting one)."""

    @property
    def bess_requested(self) -> BessCommand:
        """The PCS command as last written (what its registers read back), acting or not."""
        return self.bess_pending[-1].command if self.bess_pending else self.commands.bess


@dataclass(frozen=True, slots=True)
class Truth:
    """Every simulated quantity at one instant (SI units; signs as in the module docstring)."""

    t: float
    it_w: float
    hall_w: tuple[float, ...]
    hall_demand_w: tuple[float, ...]
    cooling_w: float
    chiller_w: float
    heat_pump_w: float
    bess_w: float
    bess_target_w: float
    soc: float
    grid_w: float
    grid_var: float
    grid_voltage_v: float
    frequency_hz: float
    chw_supply_c: float
    chw_return_c: float
    chw_flow_m3_s: float
    chw_setpoint_c: float
    chiller_cop: float
    heat_supply_c: float
    heat_setpoint_c: float
    heat_return_c: float
    heat_delivered_w: float
    heat_demand_w: float
    heat_pump_cop: float
    grid_import_j: float
    grid_export_j: float
    bess_charged_j: float
    bess_discharged_j: float
    state: SiteState

    @property
    def grid_va(self) -> float:
        return math.hypot(self.grid_w, self.grid_var)


class SitePhysics:
    """The whole site: trace → IT (limited) → thermal plant; BESS; grid balance; truth buffer."""

    def __init__(self, cfg: SimulationConfig, trace: ItTrace | None = None) -> None:
        self.config = cfg
        self.trace = trace if trace is not None else build_trace(cfg)
        self.seed = cfg.seed
        self.bess_params = BessParams.from_config(cfg.bess)
        self.thermal_params = ThermalParams.from_config(cfg.thermal)
        self.halls = self.trace.halls
        racks = cfg.redfish.racks_per_hall
        self.rack_weights: tuple[tuple[float, ...], ...] = tuple(
            _rack_weights(cfg.seed, h, racks, cfg.redfish.rack_spread)
            for h in range(len(self.halls))
        )
        self._noise_w = cfg.grid.noise_mw * 1e6
        self._noise_interval_s = cfg.grid.noise_interval_ms / 1000.0
        self.tan_phi = math.tan(math.acos(cfg.grid.power_factor))
        """Reactive over active grid power (the site's power factor)."""
        commands = Commands(
            bess=BessCommand(),
            chw_setpoint_c=cfg.thermal.chw_setpoint_c,
            heat_setpoint_c=cfg.thermal.heat_supply_setpoint_c,
            rack_limits=tuple(() for _ in self.halls),
        )
        demand = self.trace.hall_demand_w(0.0)
        hall_w = self._limited(demand, commands.rack_limits)
        thermal = thermal_steady_state(
            self.thermal_params, sum(hall_w), commands.chw_setpoint_c, commands.heat_setpoint_c
        )
        bess = BessState(power_w=0.0, soc=cfg.bess.soc_initial)
        cooling = self._cooling_w(thermal)
        first = SiteState(
            t=0.0,
            bess=bess,
            thermal=thermal,
            commands=commands,
            hall_demand_w=demand,
            hall_w=hall_w,
            cooling_w=cooling,
            grid_w=self._grid_w(0.0, hall_w, cooling, bess),
            grid_import_j=0.0,
            grid_export_j=0.0,
            hall_demand_j=tuple(0.0 for _ in self.halls),
            curtailed_j=_EMPTY_CURTAILMENT,
        )
        self._keep_s = cfg.truth_buffer_s
        self._times: list[float] = [0.0]
        self._states: list[SiteState] = [first]
        # servers may call in from another thread (a BMC server in its own thread, say)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------------- queries

    @property
    def latest(self) -> SiteState:
        """The last committed state."""
        return self._states[-1]

    @property
    def oldest_t(self) -> float:
        """The earliest time :meth:`truth_at` can answer for."""
        return self._times[0]

    def advance(self, t: float) -> Truth:
        """Integrate up to ``t``, commit the state, and return the truth at ``t``.

        A ``t`` at or before the last committed state is answered from the buffer; one closer
        than 1 ms after it is computed without being committed.
        """
        with self._lock:
            latest = self._states[-1]
            if t <= latest.t:
                return self.truth_at(t)
            state = self._integrate(latest, t)
            if t - latest.t >= COMMIT_MIN_S:
                self._commit(state)
        return self._truth(state)

    def truth_at(self, t: float) -> Truth:
        """What the site was (or, past the last commit and without new commands, will be) at
        ``t``. Raises :class:`LookupError` for times older than the truth buffer."""
        return self._truth(self.state_at(t))

    def state_at(self, t: float) -> SiteState:
        """The state :meth:`truth_at` derives its answer from (cheaper when only the stored
        quantities, such as the energy counters, are needed)."""
        with self._lock:
            i = bisect.bisect_right(self._times, t) - 1
            if i < 0:
                raise LookupError(
                    f"t={t:.3f} s is older than the truth buffer (oldest {self._times[0]:.3f} s)"
                )
            state = self._states[i]
        return self._integrate(state, t) if state.t < t else state

    def rack_power_w(self, truth: Truth, hall: int, rack: int) -> float:
        """Power one rack draws in ``truth`` (its share of the hall, capped by its limit)."""
        demand = truth.hall_demand_w[hall] * self.rack_weights[hall][rack]
        limit = self.rack_limit_w(hall, rack, truth.state.commands)
        return demand if limit is None else min(demand, limit)

    def rack_energy_j(self, truth: Truth, hall: int, rack: int) -> float:
        """Energy one rack has drawn since the twin started."""
        state = truth.state
        share = state.hall_demand_j[hall] * self.rack_weights[hall][rack]
        return share - state.curtailed_j.get((hall, rack), 0.0)

    def rack_limit_w(self, hall: int, rack: int, commands: Commands | None = None) -> float | None:
        """A rack's power limit, or ``None`` when it has none."""
        limits = (commands or self.latest.commands).rack_limits[hall]
        for index, watts in limits:
            if index == rack:
                return watts
        return None

    # ---------------------------------------------------------------------------- commands

    def command_bess(self, t: float, **changes: Any) -> None:
        """Change the PCS command at ``t`` (fields of :class:`BessCommand`); it starts to act
        after the PCS's dead time, at ``t + response_delay_ms``."""
        delay = self.bess_params.dead_time_s

        def change(s: SiteState) -> SiteState:
            wanted = dataclasses.replace(s.bess_requested, **changes)
            pending = (*s.bess_pending, PendingBess(s.t + delay, wanted))
            return _apply_due(dataclasses.replace(s, bess_pending=pending))

        self._change(t, change)

    def set_chw_setpoint(self, t: float, celsius: float) -> None:
        self._command(t, lambda c: dataclasses.replace(c, chw_setpoint_c=celsius))

    def set_heat_setpoint(self, t: float, celsius: float) -> None:
        self._command(t, lambda c: dataclasses.replace(c, heat_setpoint_c=celsius))

    def set_rack_limit(self, t: float, hall: int, rack: int, watts: float | None) -> None:
        """Cap one rack at ``watts`` from ``t`` on (``None`` removes the cap)."""
        if not 0 <= rack < len(self.rack_weights[hall]):
            raise IndexError(f"hall {hall} has no rack {rack}")

        def change(c: Commands) -> Commands:
            limits = {i: w for i, w in c.rack_limits[hall] if i != rack}
            if watts is not None:
                limits[rack] = max(float(watts), 0.0)
            per_hall = list(c.rack_limits)
            per_hall[hall] = tuple(sorted(limits.items()))
            return dataclasses.replace(c, rack_limits=tuple(per_hall))

        self._command(t, change)

    def _command(self, t: float, change: Callable[[Commands], Commands]) -> None:
        """Change a command at ``t``, acting at once."""
        self._change(t, lambda s: dataclasses.replace(s, commands=change(s.commands)))

    def _change(self, t: float, change: Callable[[SiteState], SiteState]) -> None:
        """Change the state at ``t`` (or at the last commit, if that is later)."""
        with self._lock:
            latest = self._states[-1]
            state = self._integrate(latest, t) if t > latest.t else latest
            state = change(state)
            if state.t == latest.t:
                # the command takes effect from this instant on: it replaces the state here
                self._states[-1] = state
            else:
                self._commit(state)

    # ---------------------------------------------------------------------------- internals

    def _commit(self, state: SiteState) -> None:
        self._times.append(state.t)
        self._states.append(state)
        horizon = state.t - self._keep_s
        if self._times[0] < horizon - 1.0:  # trim in batches, not on every commit
            cut = bisect.bisect_left(self._times, horizon) - 1
            if cut > 0:
                del self._times[:cut]
                del self._states[:cut]

    def _limited(self, demand: Sequence[float], limits: RackLimits) -> tuple[float, ...]:
        out: list[float] = []
        for h, d in enumerate(demand):
            cut = 0.0
            for rack, watts in limits[h]:
                cut += max(d * self.rack_weights[h][rack] - watts, 0.0)
            out.append(d - cut)
        return tuple(out)

    def _noise(self, t: float) -> float:
        if not self._noise_w:
            return 0.0
        return self._noise_w * value_noise(
            self.seed, _GRID_NOISE_STREAM, t, self._noise_interval_s, smooth=False
        )

    def _grid_w(
        self, t: float, hall_w: Sequence[float], cooling_w: float, bess: BessState
    ) -> float:
        return sum(hall_w) + cooling_w - bess.power_w + self._noise(t)

    def _integrate(self, state: SiteState, t: float) -> SiteState:
        """Integrate to ``t`` in steps of at most MAX_STEP_S, cut where a PCS command acts."""
        state = _apply_due(state)
        while state.t < t:
            end = min(state.t + MAX_STEP_S, t)
            if state.bess_pending:
                end = min(end, state.bess_pending[0].effective_t)
            state = _apply_due(self._step(state, end - state.t, end))
        return state

    def _step(self, s: SiteState, dt: float, t1: float) -> SiteState:
        c = s.commands
        demand_mid = self.trace.hall_demand_w(s.t + 0.5 * dt)
        demand = self.trace.hall_demand_w(t1)
        demand_j, it_j = self._demand_energy_j(s, t1, demand_mid, demand)
        thermal = thermal_step(
            self.thermal_params,
            s.thermal,
            it_w=it_j / dt,  # the step's mean IT power
            chw_setpoint_c=c.chw_setpoint_c,
            heat_setpoint_c=c.heat_setpoint_c,
            dt=dt,
        )
        target = bess_target_w(self.bess_params, c.bess, s.bess.soc)
        bess = bess_step(self.bess_params, s.bess, target, dt)
        hall_w = self._limited(demand, c.rack_limits)
        cooling = self._cooling_w(thermal)
        grid = self._grid_w(t1, hall_w, cooling, bess)
        # the grid energy is exact but for the (slow, smooth) cooling, so that a meter's window
        # mean E(r) - E(r - T) does not depend on how the time was cut into steps
        cooling_j = 0.5 * (s.cooling_w + cooling) * dt
        bess_j = (bess.discharged_j - s.bess.discharged_j) - (bess.charged_j - s.bess.charged_j)
        energy = it_j + cooling_j + self._noise_j(s.t, t1) - bess_j
        curtailed = s.curtailed_j
        if any(c.rack_limits):
            updated = dict(curtailed)
            for h, limits in enumerate(c.rack_limits):
                w = self.rack_weights[h]
                for rack, watts in limits:
                    before = max(s.hall_demand_w[h] * w[rack] - watts, 0.0)
                    after = max(demand[h] * w[rack] - watts, 0.0)
                    updated[(h, rack)] = updated.get((h, rack), 0.0) + 0.5 * (before + after) * dt
            curtailed = MappingProxyType(updated)
        return SiteState(
            t=t1,
            bess=bess,
            thermal=thermal,
            commands=c,
            bess_pending=s.bess_pending,
            hall_demand_w=demand,
            hall_w=hall_w,
            cooling_w=cooling,
            grid_w=grid,
            grid_import_j=s.grid_import_j + max(energy, 0.0),
            grid_export_j=s.grid_export_j - min(energy, 0.0),
            hall_demand_j=tuple(e + de for e, de in zip(s.hall_demand_j, demand_j, strict=True)),
            curtailed_j=curtailed,
        )

    def _demand_energy_j(
        self,
        s: SiteState,
        t1: float,
        demand_mid: tuple[float, ...],
        demand_end: tuple[float, ...],
    ) -> tuple[tuple[float, ...], float]:
        """∫ of each hall's demand and ∫ of the IT power (after rack limits) from ``s.t`` to
        ``t1``: Simpson's rule on each piece between the trace's breakpoints, exact for the
        trace's piecewise-quadratic shape (a rack limit's own kink is not a breakpoint)."""
        limits = s.commands.rack_limits
        cuts = [s.t, *self.trace.breakpoints(s.t, t1), t1]
        halls = [0.0] * len(demand_end)
        it_j = 0.0
        d_a = s.hall_demand_w
        it_a = sum(self._limited(d_a, limits))
        for a, b in itertools.pairwise(cuts):
            if len(cuts) == 2:
                d_m, d_b = demand_mid, demand_end
            else:
                d_m = self.trace.hall_demand_w(0.5 * (a + b))
                d_b = demand_end if b == t1 else self.trace.hall_demand_w(b)
            sixth = (b - a) / 6.0
            for h, (x, y, z) in enumerate(zip(d_a, d_m, d_b, strict=True)):
                halls[h] += sixth * (x + 4.0 * y + z)
            it_b = sum(self._limited(d_b, limits))
            it_j += sixth * (it_a + 4.0 * sum(self._limited(d_m, limits)) + it_b)
            d_a, it_a = d_b, it_b
        return tuple(halls), it_j

    def _cooling_w(self, thermal: ThermalState) -> float:
        out = thermal_outputs(self.thermal_params, thermal)
        return out.chiller_w + out.heat_pump_w

    def _noise_j(self, a: float, b: float) -> float:
        """∫ of the grid noise from ``a`` to ``b``: exact, the noise being linear between its
        knots (every ``noise_interval_ms``)."""
        if not self._noise_w:
            return 0.0
        step = self._noise_interval_s
        knots = (k * step for k in range(math.floor(a / step) + 1, math.ceil(b / step)))
        cuts = [a, *(x for x in knots if a < x < b), b]
        values = [self._noise(x) for x in cuts]
        return sum(
            0.5 * (v0 + v1) * (x1 - x0)
            for (x0, v0), (x1, v1) in itertools.pairwise(zip(cuts, values, strict=True))
        )

    def _truth(self, s: SiteState) -> Truth:
        th = thermal_outputs(self.thermal_params, s.thermal)
        grid_cfg = self.config.grid
        c = s.commands
        voltage = grid_cfg.voltage_kv * 1e3 * (1.0 - VOLTAGE_DROOP * s.grid_w / SITE_POWER_REF_W)
        return Truth(
            t=s.t,
            it_w=sum(s.hall_w),
            hall_w=s.hall_w,
            hall_demand_w=s.hall_demand_w,
            cooling_w=th.chiller_w + th.heat_pump_w,
            chiller_w=th.chiller_w,
            heat_pump_w=th.heat_pump_w,
            bess_w=s.bess.power_w,
            bess_target_w=bess_target_w(self.bess_params, c.bess, s.bess.soc),
            soc=s.bess.soc,
            grid_w=s.grid_w,
            grid_var=abs(s.grid_w) * self.tan_phi,
            grid_voltage_v=voltage,
            frequency_hz=frequency_hz(grid_cfg, self.seed, s.t),
            chw_supply_c=th.chw_supply_c,
            chw_return_c=th.chw_return_c,
            chw_flow_m3_s=th.chw_flow_m3_s,
            chw_setpoint_c=c.chw_setpoint_c,
            chiller_cop=th.chiller_cop,
            heat_supply_c=s.thermal.heat_supply_c,
            heat_setpoint_c=c.heat_setpoint_c,
            heat_return_c=self.thermal_params.heat_return_c,
            heat_delivered_w=s.thermal.heat_delivered_w,
            heat_demand_w=self.thermal_params.heat_demand_w,
            heat_pump_cop=th.heat_pump_cop,
            grid_import_j=s.grid_import_j,
            grid_export_j=s.grid_export_j,
            bess_charged_j=s.bess.charged_j,
            bess_discharged_j=s.bess.discharged_j,
            state=s,
        )


def _apply_due(state: SiteState) -> SiteState:
    """Let the pending PCS commands whose dead time is over act (the last of them wins)."""
    pending = state.bess_pending
    due = 0
    while due < len(pending) and pending[due].effective_t <= state.t:
        due += 1
    if not due:
        return state
    commands = dataclasses.replace(state.commands, bess=pending[due - 1].command)
    return dataclasses.replace(state, commands=commands, bess_pending=pending[due:])


def _rack_weights(seed: int, hall: int, racks: int, spread: float) -> tuple[float, ...]:
    raw = [1.0 + spread * (2.0 * uniform(seed, _RACK_STREAM + hall, i) - 1.0) for i in range(racks)]
    total = sum(raw)
    return tuple(r / total for r in raw)
