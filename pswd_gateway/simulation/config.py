"""``[simulation]``: the settings of the site's digital twin.

Every default is the demo site, so the ``[simulation]`` section of ``config/demo.toml`` stays
short. Units are in the field names (``_mw``, ``_s``, ``_c``); the physics converts to SI once,
when it is built.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pswd_gateway.config import is_loopback

__all__ = [
    "FAULTY_DEVICES",
    "HALLS",
    "IMPERFECTIONS",
    "MODBUS_DEVICE_NAMES",
    "BessSimConfig",
    "FaultsSimConfig",
    "FrequencyEvent",
    "FrequencyStep",
    "GridSimConfig",
    "JobConfig",
    "PortsConfig",
    "RedfishSimConfig",
    "SimulationConfig",
    "ThermalSimConfig",
    "TraceConfig",
]

HallName = Literal["gpu_hall_a", "gpu_hall_b"]
HALLS: tuple[HallName, HallName] = ("gpu_hall_a", "gpu_hall_b")
"""The two GPU halls of the site, each behind its own Redfish BMC endpoint."""
ModbusDeviceName = Literal["grid_meter", "bess", "thermal"]
MODBUS_DEVICE_NAMES: tuple[ModbusDeviceName, ...] = ("grid_meter", "bess", "thermal")

IMPERFECTIONS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "grid.meter_refresh_ms": 20.0,
        "grid.meter_noise_mw": 0.1,
        "grid.meter_energy_refresh_ms": 1000.0,
        "bess.response_delay_ms": 10.0,
        "bess.response_ms": 20.0,
        "bess.measurement_refresh_ms": 20.0,
        "faults.reply_jitter_ms": 3.0,
        "faults.lost_reply_ratio": 0.002,
        "faults.stall_every_s": 60.0,
        "faults.stall_ms": 100.0,
    }
)
FAULTY_DEVICES: Final[tuple[ModbusDeviceName, ...]] = ("grid_meter", "bess")
"""The plant's imperfections, in one place (these two). docs/simulation.md, "Imperfections",
gives each one's range and source."""

Port = Annotated[int, Field(ge=0, le=65535)]
"""A TCP port; 0 picks a free one (tests)."""
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Efficiency = Annotated[float, Field(gt=0.0, le=1.0)]
Seconds = Annotated[float, Field(gt=0.0, le=86_400.0)]


def _off_or_at_least_1ms(ms: float) -> float:
    if 0.0 < ms < 1.0:
        raise ValueError("a refresh period is 0 (off: the instantaneous value) or at least 1 ms")
    return ms


RefreshMs = Annotated[float, Field(ge=0.0, le=60_000.0), AfterValidator(_off_or_at_least_1ms)]
"""A measurement's refresh period; 0 = off (the instantaneous value at the request)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortsConfig(_Strict):
    """Where each simulated device listens (0 = a free port, reported by ``Twin.endpoints``)."""

    grid_meter: Port = 15020
    bess: Port = 15021
    thermal: Port = 15022
    redfish: tuple[Port, Port] = (8000, 8001)
    """The BMCs of ``gpu_hall_a`` and ``gpu_hall_b``, in that order."""

    def of(self, device: str) -> int:
        """The configured port of a device (``grid_meter`` … ``gpu_hall_b``)."""
        if device in HALLS:
            return self.redfish[HALLS.index(device)]
        ports = {"grid_meter": self.grid_meter, "bess": self.bess, "thermal": self.thermal}
        try:
            return ports[device]
        except KeyError:
            raise KeyError(f"no simulated device {device!r}") from None


class JobConfig(_Strict):
    """One synchronous training job: compute phases at ``peak_mw``, communication at less.

    Each iteration of ``period_s`` rises from the low level to ``peak_mw`` over ``edge_ms``,
    computes for ``duty`` of the period, falls back over ``edge_ms`` and communicates at
    ``peak_mw x (1 - depth)`` for the rest. Every ``checkpoint_every_s`` the job writes a
    checkpoint for ``checkpoint_s`` at the low level. The whole pattern is scaled by a linear
    ramp of ``ramp_up_s`` after ``start_s`` and ``ramp_down_s`` before the end.
    """

    name: Annotated[str, Field(min_length=1, max_length=64)]
    start_s: Annotated[float, Field(ge=0.0)]
    duration_s: Annotated[float, Field(gt=0.0)]
    peak_mw: Annotated[float, Field(gt=0.0, le=1000.0)]
    period_s: Annotated[float, Field(ge=0.1, le=600.0)] = 2.5
    depth: Fraction = 0.85
    duty: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.75
    edge_ms: Annotated[float, Field(ge=1.0, le=10_000.0)] = 40.0
    jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    """Seeded per-iteration variation of the compute phase, as a fraction of it."""
    ramp_up_s: Annotated[float, Field(ge=0.0)] = 10.0
    ramp_down_s: Annotated[float, Field(ge=0.0)] = 2.0
    checkpoint_every_s: Annotated[float, Field(gt=0.0)] | None = 300.0
    checkpoint_s: Annotated[float, Field(ge=0.0)] = 10.0
    halls: Annotated[tuple[HallName, ...], Field(min_length=1)] = HALLS
    """Halls the job runs in; its power is split evenly between them."""

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        if 4 * self.edge_ms / 1000.0 > self.period_s:
            raise ValueError("period_s must be at least four edges (4 x edge_ms) long")
        if self.ramp_up_s + self.ramp_down_s > self.duration_s:
            raise ValueError("ramp_up_s + ramp_down_s must not exceed duration_s")
        if len(set(self.halls)) != len(self.halls):
            raise ValueError("halls must not repeat")
        return self


DEFAULT_JOBS: tuple[JobConfig, ...] = (
    JobConfig(
        name="llm-pretrain-a",
        start_s=5.0,
        duration_s=1500.0,
        peak_mw=200.0,
        period_s=2.5,
        depth=0.9,
        ramp_up_s=10.0,
        ramp_down_s=5.0,
    ),
    JobConfig(
        name="finetune-b",
        start_s=1700.0,
        duration_s=900.0,
        peak_mw=80.0,
        period_s=1.2,
        depth=0.6,
        ramp_up_s=5.0,
        ramp_down_s=5.0,
        checkpoint_every_s=120.0,
        checkpoint_s=5.0,
        halls=("gpu_hall_b",),
    ),
    JobConfig(
        name="llm-pretrain-c",
        start_s=2700.0,
        duration_s=840.0,
        peak_mw=180.0,
        period_s=3.0,
        depth=0.85,
        ramp_up_s=3.0,
        ramp_down_s=0.0,
    ),
)
"""A one-hour demo: a 200 MW job from t=5 s, a fine-tune, and a job that stops abruptly."""


class TraceConfig(_Strict):
    """The IT load: an idle baseline plus the training jobs (or a recorded CSV trace)."""

    baseline_mw: Annotated[float, Field(ge=0.0, le=1000.0)] = 20.0
    """Idle servers, storage and network, split evenly between the halls."""
    jobs: tuple[JobConfig, ...] = DEFAULT_JOBS
    replay_csv: str | None = None
    """A ``t_s,it_power_mw`` CSV file to replay instead of the jobs (split evenly per hall)."""
    replay_loop: bool = True
    """Start the replayed file over at its end (otherwise hold its last value)."""


class BessSimConfig(_Strict):
    """The battery and its power conversion system."""

    power_mw: Annotated[float, Field(gt=0.0, le=2000.0)] = 250.0
    energy_mwh: Annotated[float, Field(gt=0.0, le=20_000.0)] = 120.0
    soc_min: Fraction = 0.1
    soc_max: Fraction = 0.9
    soc_initial: Fraction = 0.5
    charge_efficiency: Efficiency = 0.95
    discharge_efficiency: Efficiency = 0.95
    response_delay_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = IMPERFECTIONS[
        "bess.response_delay_ms"
    ]
    """Dead time of the PCS: a command written at t starts to act at t + response_delay_ms."""
    response_ms: Annotated[float, Field(gt=0.0, le=10_000.0)] = IMPERFECTIONS["bess.response_ms"]
    """Time for the AC power to settle (95 %) once a step acts (after the dead time):
    a first-order lag with τ = response_ms / 3."""
    measurement_refresh_ms: RefreshMs = IMPERFECTIONS["bess.measurement_refresh_ms"]
    """The PCS's 701 W/var/A and 802 SoC/W registers refresh every this; W is the mean power
    over the window just ended."""
    ac_voltage_kv: Annotated[float, Field(gt=0.0, le=1000.0)] = 33.0
    dc_voltage_v: Annotated[float, Field(gt=0.0, le=5000.0)] = 1200.0

    @model_validator(mode="after")
    def _soc_window(self) -> BessSimConfig:
        if not self.soc_min < self.soc_max:
            raise ValueError("soc_min must be below soc_max")
        if not self.soc_min <= self.soc_initial <= self.soc_max:
            raise ValueError("soc_initial must lie within [soc_min, soc_max]")
        return self


class FrequencyEvent(_Strict):
    """A grid frequency excursion: linear fall to ``delta_hz``, hold, linear recovery."""

    start_s: Annotated[float, Field(ge=0.0)]
    delta_hz: Annotated[float, Field(ge=-5.0, le=5.0)] = -0.2
    fall_s: Seconds = 2.0
    hold_s: Annotated[float, Field(ge=0.0)] = 10.0
    recover_s: Seconds = 20.0


class FrequencyStep(_Strict):
    """One step of the scripted frequency: from ``at_s`` the frequency moves linearly from where
    it was to ``hz`` over ``ramp_s`` (0: a step), then holds there."""

    at_s: Annotated[float, Field(ge=0.0)]
    hz: Annotated[float, Field(ge=45.0, le=65.0)]
    """The target frequency (the meter's valid range is 45-65 Hz)."""
    ramp_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 0.0


class GridSimConfig(_Strict):
    """The point of common coupling: noise, voltage, power factor and frequency."""

    nominal_frequency_hz: Literal[50, 60] = 50
    voltage_kv: Annotated[float, Field(gt=0.0, le=1000.0)] = 132.0
    power_factor: Annotated[float, Field(gt=0.5, le=1.0)] = 0.98
    noise_mw: Annotated[float, Field(ge=0.0, le=100.0)] = 0.3
    """Standard deviation of the seeded measurement/load noise on the grid active power."""
    noise_interval_ms: Annotated[float, Field(ge=1.0, le=10_000.0)] = 20.0
    frequency_wander_hz: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    """Standard deviation of the slow seeded wander of the frequency around nominal."""
    meter_refresh_ms: RefreshMs = IMPERFECTIONS["grid.meter_refresh_ms"]
    """The meter's power registers (W, VA, var, PF, A) refresh every this, W being the mean
    over the window just ended; V and Hz are sampled at the refresh."""
    meter_noise_mw: Annotated[float, Field(ge=0.0, le=100.0)] = IMPERFECTIONS["grid.meter_noise_mw"]
    """Standard deviation of the seeded measurement noise added to W at each refresh."""
    meter_energy_refresh_ms: RefreshMs = IMPERFECTIONS["grid.meter_energy_refresh_ms"]
    """The energy registers (TotWhAbs, TotWhInj) refresh every this."""
    meter_model: Literal[701, 201, 202, 203, 204, 211, 212, 213, 214] = 701
    """The SunSpec model the grid meter serves its measurements in: 701 (DER AC measurement),
    201-204 (meters, integer + scale factor) or 211-214 (meters, float)."""
    meter_base_address: Literal[40000, 50000, 0] = 40000
    """Where the grid meter's SunSpec chain (its "SunS" marker) starts."""
    events: tuple[FrequencyEvent, ...] = (
        FrequencyEvent(start_s=120.0),
        FrequencyEvent(start_s=1900.0, delta_hz=-0.5, fall_s=1.0, hold_s=5.0, recover_s=30.0),
    )
    frequency_script: tuple[FrequencyStep, ...] = ()
    """Steps and ramps of the frequency (IEEE 1547.1-style test sequences): the frequency is
    nominal until the first, then where the steps take it; wander and events add on top."""

    @model_validator(mode="after")
    def _script_in_order(self) -> GridSimConfig:
        script = self.frequency_script
        for i, (a, b) in enumerate(itertools.pairwise(script)):
            if b.at_s <= a.at_s:
                raise ValueError(
                    f"frequency_script[{i + 1}].at_s ({b.at_s}) must come after "
                    f"frequency_script[{i}].at_s ({a.at_s}): list the steps in time order"
                )
            if a.at_s + a.ramp_s > b.at_s:
                raise ValueError(
                    f"frequency_script[{i}] ramps until {a.at_s + a.ramp_s} s, past the next "
                    f"step at {b.at_s} s: shorten its ramp_s or move the next step"
                )
        return self


class FaultsSimConfig(_Strict):
    """Device and network faults of the Modbus devices in ``devices``; 0 switches each off.

    Seeded: which request is lost and how late each reply is follow from the seed and the
    request's number at its device; the stalls from the seed and the device's clock.
    """

    reply_jitter_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = IMPERFECTIONS[
        "faults.reply_jitter_ms"
    ]
    """Each reply leaves a uniform 0…reply_jitter_ms after the device computed it."""
    lost_reply_ratio: Fraction = IMPERFECTIONS["faults.lost_reply_ratio"]
    """Share of requests never answered (the client times out); 1 = none is answered."""
    stall_every_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = IMPERFECTIONS[
        "faults.stall_every_s"
    ]
    """Once in every such period (from the first one on, at a seeded offset) the device stalls."""
    stall_ms: Annotated[float, Field(ge=0.0, le=3_600_000.0)] = IMPERFECTIONS["faults.stall_ms"]
    """How long a stall lasts: requests arriving in it are answered when it ends."""
    devices: tuple[ModbusDeviceName, ...] = FAULTY_DEVICES
    """The Modbus devices these faults apply to."""

    @model_validator(mode="after")
    def _consistent(self) -> FaultsSimConfig:
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("devices must not repeat")
        if self.stall_every_s > 0.0 and self.stall_ms >= self.stall_every_s * 1000.0:
            raise ValueError("stall_ms must be shorter than stall_every_s")
        return self


class ThermalSimConfig(_Strict):
    """Chilled-water plant and the heat-recovery heat pump feeding a municipal network."""

    chw_setpoint_c: Annotated[float, Field(ge=5.0, le=30.0)] = 18.0
    chw_tau_s: Seconds = 60.0
    """How fast the supply temperature follows its setpoint."""
    load_tau_s: Seconds = 5.0
    """Lag between IT power and heat arriving in the chilled water."""
    chiller_tau_s: Seconds = 20.0
    """Lag of the chillers' cooling duty behind the heat load (compressor staging)."""
    chw_design_delta_t_k: Annotated[float, Field(gt=0.0, le=30.0)] = 6.0
    chw_min_flow_m3_s: Annotated[float, Field(gt=0.0, le=100.0)] = 4.0
    chw_max_flow_m3_s: Annotated[float, Field(gt=0.0, le=100.0)] = 15.0
    chiller_cop: Annotated[float, Field(gt=1.0, le=20.0)] = 5.5
    """Chiller COP at an 18 °C supply setpoint."""
    chiller_cop_per_k: Annotated[float, Field(ge=0.0, le=0.2)] = 0.03
    """Relative COP gain per kelvin of supply setpoint above 18 °C."""
    heat_supply_setpoint_c: Annotated[float, Field(ge=70.0, le=90.0)] = 80.0
    heat_return_c: Annotated[float, Field(ge=20.0, le=70.0)] = 45.0
    heat_tau_s: Seconds = 120.0
    heat_pump_tau_s: Seconds = 60.0
    heat_demand_mw: Annotated[float, Field(ge=0.0, le=1000.0)] = 40.0
    """What the municipal network takes when the heat pump can deliver it."""
    heat_recovery_max_fraction: Fraction = 0.6
    """At most this share of the IT heat is lifted by the heat pump."""
    heat_pump_carnot_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5

    @model_validator(mode="after")
    def _flows(self) -> ThermalSimConfig:
        if self.chw_min_flow_m3_s > self.chw_max_flow_m3_s:
            raise ValueError("chw_min_flow_m3_s must not exceed chw_max_flow_m3_s")
        return self


class RedfishSimConfig(_Strict):
    """The GPU halls' BMCs."""

    enabled: bool = True
    """Start the Redfish BMC servers (off: Modbus devices only)."""
    username: str = "pswd-demo"
    password: str = "pswd-demo-bmc"  # noqa: S105 - the demo BMC credential, loopback only
    racks_per_hall: Annotated[int, Field(ge=1, le=10_000)] = 100
    rack_rated_kw: Annotated[float, Field(gt=0.0, le=100_000.0)] = 1500.0
    """Upper end of a rack's power-limit range (and its rated power)."""
    rack_min_limit_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Lower end of the power-limit range, as a fraction of the rated power."""
    rack_spread: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    """Seeded spread of the racks' shares of their hall's load."""
    power_resource: Literal["EnvironmentMetrics", "Power"] = "EnvironmentMetrics"
    """Where each rack reports its power: ``EnvironmentMetrics`` (with ``PowerSubsystem``,
    ``Controls``, ``TelemetryService`` and ``EventService``), or the older ``Power`` resource
    (``PowerControl[0].PowerConsumedWatts``, limits through ``PowerLimit``) of a BMC that has
    none of those."""


class SimulationConfig(_Strict):
    """The whole ``[simulation]`` section."""

    host: str = "127.0.0.1"
    seed: int = 42
    tick_ms: Annotated[float, Field(ge=5.0, le=1000.0)] = 50.0
    """Background integration tick; reads are computed at their exact time in between."""
    truth_buffer_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 120.0
    """How far back ``truth_at`` can answer."""
    ports: PortsConfig = PortsConfig()
    trace: TraceConfig = TraceConfig()
    bess: BessSimConfig = BessSimConfig()
    grid: GridSimConfig = GridSimConfig()
    thermal: ThermalSimConfig = ThermalSimConfig()
    redfish: RedfishSimConfig = RedfishSimConfig()
    faults: FaultsSimConfig = FaultsSimConfig()

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        if not is_loopback(host):
            raise ValueError(
                "the twin simulates devices for tests and demos and listens on loopback only; "
                "use 127.0.0.1, ::1 or localhost"
            )
        return host
