"""``pswd-gateway bench smoothing``: the grid controllers replayed on an IT-load trace.

Simulated time, no sockets. The trace is a ``t_s,it_power_mw`` CSV at any rate down to 1 ms, or
the twin's generator. By default (*realistic*) each run is the whole loop against the twin's
physics with the twin's imperfections (:mod:`pswd_gateway.bench.sitesim`: meter refresh and
averaging, PCS dead time and response, reply jitter, lost replies, stalls, the pollers and the
gateway's own grid loop and guard), so offline and live figures agree. ``ideal=True`` (``--ideal``)
keeps the old replay: the trace held on a 10 ms grid, every ``sample_s`` the controller gets
what a perfect meter and battery would report at that instant, its setpoint reaches the battery
after ``write_latency_s`` and the battery follows with a first-order response. Three runs:

- ``predictive``: :func:`pswd_gateway.control.grid.grid_step` with each job's announcement
  visible from its ``announced_at_s``;
- ``reactive``: the same controller with no announcements;
- ``optimum``: perfect foresight, an LP solved with HiGHS: the grid draw is piecewise linear
  between knots every ``1 / band_low_hz`` seconds (so it carries no oscillation in the bands),
  within the ramp and import limits, the battery within its rating and SoC window and back to
  at least its starting energy at the end; least battery throughput, then least capacity.

Ramps are judged on 1 s means of the grid power (a grid code judges averaged power, and a
100 ms meter cannot see a 40 ms edge before it has happened).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import highspy
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pswd_gateway.bench.sitesim import SAMPLE_S, SiteSim
from pswd_gateway.config import ControlConfig, SiteConfig
from pswd_gateway.control.grid import Announced, GridReading, GridSettings, grid_step
from pswd_gateway.control.thermal import ThermalSettings, ThermalState, thermal_step
from pswd_gateway.errors import ConfigError
from pswd_gateway.simulation.config import (
    JobConfig,
    SimulationConfig,
    ThermalSimConfig,
    TraceConfig,
)
from pswd_gateway.simulation.physics import ThermalParams, thermal_outputs, thermal_steady_state
from pswd_gateway.simulation.physics import thermal_step as plant_thermal_step
from pswd_gateway.simulation.trace import TrainingTrace

__all__ = [
    "AnnouncementIn",
    "BatteryModel",
    "SmoothingSetup",
    "generated_trace",
    "load_announcements",
    "load_trace_csv",
    "run_smoothing",
    "simulate",
    "solve_optimum",
    "summarise",
]

Array = npt.NDArray[np.float64]
AnyArray = npt.NDArray[Any]
SIM_DT_S: Final = 0.01
METRIC_DT_S: Final = 0.1
RAMP_WINDOW_S: Final = 1.0
MAX_TRACE_S: Final = 4 * 3600.0
CAPACITY_WEIGHT: Final = 1.0
"""Optimum objective: throughput + this x capacity (both J). At 1 the optimum cannot buy
throughput by drifting the SoC through a long job (that saves at most half a joule of
throughput per joule of capacity), so it is the best plan, not a battery-filling trick."""

BENCH_JOBS: Final = (
    JobConfig(
        name="llm-pretrain-a",
        start_s=120.0,
        duration_s=1500.0,
        peak_mw=200.0,
        period_s=2.5,
        depth=0.9,
        ramp_up_s=0.0,
        ramp_down_s=0.0,
    ),
    JobConfig(
        name="finetune-b",
        start_s=1800.0,
        duration_s=900.0,
        peak_mw=80.0,
        period_s=1.2,
        depth=0.6,
        ramp_up_s=0.0,
        ramp_down_s=0.0,
        checkpoint_every_s=120.0,
        checkpoint_s=5.0,
        halls=("gpu_hall_b",),
    ),
    JobConfig(
        name="llm-pretrain-c",
        start_s=2760.0,
        duration_s=780.0,
        peak_mw=180.0,
        period_s=3.0,
        depth=0.85,
        ramp_up_s=0.0,
        ramp_down_s=0.0,
    ),
)
"""One hour: three jobs that start and stop with 40 ms edges (no soft ramps), 200 MW class."""


class AnnouncementIn(BaseModel):
    """One entry of ``--announcements`` (trace seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    announced_at_s: Annotated[float, Field(ge=0.0)]
    start_s: Annotated[float, Field(ge=0.0)]
    peak_power_mw: Annotated[float, Field(gt=0.0, le=10_000.0)]
    ramp_rate_mw_per_sec: Annotated[float, Field(gt=0.0)]
    duration_estimate_sec: Annotated[float, Field(gt=0.0)]
    oscillation_period_sec: Annotated[float, Field(gt=0.0, le=3600.0)] | None = None
    oscillation_depth_mw: Annotated[float, Field(ge=0.0, le=10_000.0)] | None = None
    oscillation_duty: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None

    def to_control(self) -> Announced:
        """As the gateway takes an announcement (:meth:`Announced.from_profile`)."""
        depth_mw = self.oscillation_depth_mw or 0.0
        duty = 0.5 if self.oscillation_duty is None else self.oscillation_duty
        return Announced(
            start_s=self.start_s,
            end_s=self.start_s + self.duration_estimate_sec,
            level_w=(self.peak_power_mw - depth_mw * (1.0 - duty)) * 1e6,
            ramp_w_per_s=self.ramp_rate_mw_per_sec * 1e6,
            peak_w=self.peak_power_mw * 1e6,
            period_s=self.oscillation_period_sec,
            depth_w=depth_mw * 1e6,
        )


_ANNOUNCEMENTS = TypeAdapter(list[AnnouncementIn])


@dataclass(frozen=True, slots=True)
class BatteryModel:
    response_s: float = 0.02
    """Time to 95 % of a setpoint step (τ = response / 3), as the twin's PCS."""
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    soc_initial: float = 0.5


@dataclass(frozen=True, slots=True)
class SmoothingSetup:
    settings: GridSettings
    battery: BatteryModel
    sample_s: float = 0.02
    """How often the controller gets a fresh reading of the grid meter (its own fast loop at the
    connection point, 50 Hz; the monitoring poll is 100 ms)."""
    write_latency_s: float = 0.01
    band_hz: tuple[float, float] = (0.1, 2.0)


@dataclass(frozen=True, slots=True)
class Series:
    dt: float
    grid_w: Array
    bess_w: Array
    energy_j: Array
    """Battery energy above empty, one more sample than the power series."""


def load_trace_csv(path: Path) -> tuple[Array, Array]:
    """``t_s,it_power_mw`` → (seconds, watts); errors name the file and line."""
    times: list[float] = []
    values: list[float] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["t_s", "it_power_mw"]:
            raise ConfigError(str(path), [("line 1", "the header must be t_s,it_power_mw")])
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                t, p = float(row[0]), float(row[1])
            except (ValueError, IndexError):
                raise ConfigError(str(path), [(f"line {n}", f"not two numbers: {row!r}")]) from None
            if not (math.isfinite(t) and math.isfinite(p)) or p < 0:
                raise ConfigError(str(path), [(f"line {n}", "t_s and it_power_mw >= 0 finite")])
            if times and t <= times[-1]:
                raise ConfigError(str(path), [(f"line {n}", "t_s must increase")])
            times.append(t)
            values.append(p * 1e6)
    if len(times) < 2:
        raise ConfigError(str(path), [("", "a trace needs at least two samples")])
    if times[-1] - times[0] > MAX_TRACE_S:
        raise ConfigError(str(path), [("", f"longer than {MAX_TRACE_S:g} s")])
    t_arr = np.asarray(times)
    grid = np.arange(t_arr[0], t_arr[-1], SIM_DT_S)
    idx = np.searchsorted(t_arr, grid, side="right") - 1
    return grid - t_arr[0], np.asarray(values)[idx]


def generated_trace(duration_s: float = 3600.0, seed: int = 42) -> tuple[Array, Array]:
    """The twin's generator: 20 MW baseline and :data:`BENCH_JOBS`."""
    trace = TrainingTrace(TraceConfig(jobs=BENCH_JOBS), seed)
    t = np.arange(0.0, duration_s, SIM_DT_S)
    return t, np.fromiter((trace.it_power_w(x) for x in t), float, len(t))


def generated_announcements(lead_s: float = 600.0) -> list[AnnouncementIn]:
    """Each generated job announced ``lead_s`` ahead with its peak, its real edge and its
    rhythm's period and depth (as the ML platform announces it)."""
    return [
        AnnouncementIn(
            announced_at_s=max(0.0, j.start_s - lead_s),
            start_s=j.start_s,
            peak_power_mw=j.peak_mw,
            ramp_rate_mw_per_sec=j.peak_mw / (j.edge_ms / 1000.0),
            duration_estimate_sec=j.duration_s,
            oscillation_period_sec=j.period_s,
            oscillation_depth_mw=j.peak_mw * j.depth,
            oscillation_duty=j.duty,
        )
        for j in BENCH_JOBS
    ]


def load_announcements(path: Path) -> list[AnnouncementIn]:
    try:
        return _ANNOUNCEMENTS.validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ConfigError(
            str(path),
            [("/" + "/".join(str(x) for x in e["loc"]), e["msg"]) for e in exc.errors()],
        ) from None


def simulate(
    it_w: Array, setup: SmoothingSetup, announcements: Sequence[AnnouncementIn]
) -> tuple[Series, int]:
    """Replay ``it_w`` (10 ms samples) through the controller; returns the series and the
    number of steps that asked a workload to ramp instead (fallbacks)."""
    s, bat = setup.settings, setup.battery
    n = len(it_w)
    grid = np.empty(n)
    bess = np.empty(n)
    energy = np.empty(n + 1)
    e = bat.soc_initial * s.bess_capacity_j
    energy[0] = e
    b = 0.0
    setpoint = 0.0
    pending: tuple[float, float] | None = None
    keep = math.exp(-SIM_DT_S / (bat.response_s / 3.0))
    every = max(1, round(setup.sample_s / SIM_DT_S))
    state = None
    fallbacks = 0
    order = sorted(announcements, key=lambda a: a.announced_at_s)
    visible: list[Announced] = []
    nxt = 0
    for i in range(n):
        t = i * SIM_DT_S
        if i % every == 0:
            while nxt < len(order) and order[nxt].announced_at_s <= t:
                visible.append(order[nxt].to_control())
                nxt += 1
            reading = GridReading(t, it_w[i] - b, b, e / s.bess_capacity_j)
            decision = grid_step(state, reading, visible, s)
            state = decision.state
            fallbacks += decision.fallback is not None
            pending = (t + setup.write_latency_s, decision.bess_setpoint_w)
        if pending is not None and t >= pending[0] - 1e-9:
            setpoint, pending = pending[1], None
        b = setpoint + (b - setpoint) * keep
        grid[i] = it_w[i] - b
        bess[i] = b
        e -= (b / bat.discharge_efficiency if b > 0 else b * bat.charge_efficiency) * SIM_DT_S
        energy[i + 1] = e
    return Series(SIM_DT_S, grid, bess, energy), fallbacks


def simulate_realistic(
    trace: TraceConfig,
    setup: SmoothingSetup,
    announcements: Sequence[AnnouncementIn],
    duration_s: float,
    simulation: SimulationConfig | None = None,
) -> tuple[Series, int, int]:
    """The whole loop against the twin (:mod:`~pswd_gateway.bench.sitesim`); returns the truth
    series (20 ms), the fallbacks and the guard trips."""
    s = setup.settings
    base = simulation or SimulationConfig()
    sim = base.model_copy(
        update={
            "trace": trace,
            "bess": base.bess.model_copy(
                update={
                    "power_mw": s.bess_rated_w / 1e6,
                    "energy_mwh": s.bess_capacity_j / 3.6e9,
                    "soc_min": s.soc_min,
                    "soc_max": s.soc_max,
                    "soc_initial": setup.battery.soc_initial,
                }
            ),
        }
    )
    site = SiteConfig(
        grid_import_limit_mw=s.import_limit_w / 1e6,
        grid_ramp_limit_mw_per_s=s.ramp_limit_w_per_s / 1e6,
    )
    control = ControlConfig(
        enabled=True,
        ramp_margin=s.ramp_margin,
        band_low_hz=s.band_low_hz,
        soc_min=s.soc_min,
        soc_max=s.soc_max,
        soc_target=s.soc_target,
        soc_restore_s=s.soc_restore_s,
        payback_s=s.payback_s,
    )
    order = sorted(announcements, key=lambda a: a.announced_at_s)
    run = SiteSim(
        sim,
        control=control,
        site=site,
        announced=[a.to_control() for a in order],
        visible_from=[a.announced_at_s for a in order],
    ).run(duration_s)
    grid = np.asarray([w for _, w in run.truth_grid])
    bess = np.asarray([w for _, w in run.bess])
    soc = [x for _, x in run.soc]
    energy = np.asarray([soc[0], *soc]) * s.bess_capacity_j
    return Series(SAMPLE_S, grid, bess, energy), run.fallbacks, len(run.guard_trips)


def _means(x: Array, dt: float, width: float) -> Array:
    k = max(1, round(width / dt))
    m = len(x) // k
    return np.asarray(x[: m * k].reshape(m, k).mean(axis=1))


def solve_optimum(  # noqa: PLR0915 - one LP, built column block by column block
    it_w: Array, setup: SmoothingSetup
) -> tuple[Series, dict[str, Any]]:
    """Perfect foresight at 100 ms (see the module docstring); an LP for HiGHS."""
    s, bat = setup.settings, setup.battery
    load = _means(it_w, SIM_DT_S, METRIC_DT_S)
    n = len(load)
    dt = METRIC_DT_S
    knot_s = 1.0 / s.band_low_hz
    per = round(knot_s / dt)
    k = n // per + 1  # knots at 0, per, 2·per, … covering every sample
    # Columns, in order: grid knots, discharge, charge, stored energy (n + 1), its max and min.
    g0, bd0, bc0, e0 = 0, k, k + n, k + 2 * n
    emax, emin = e0 + n + 1, e0 + n + 2
    ncol = e0 + n + 3
    cost = np.zeros(ncol)
    cost[bd0 : bd0 + n] = dt
    cost[bc0 : bc0 + n] = dt
    cost[emax], cost[emin] = CAPACITY_WEIGHT, -CAPACITY_WEIGHT
    col_lo = np.zeros(ncol)
    col_hi = np.full(ncol, highspy.kHighsInf)
    col_lo[g0 : g0 + k] = -highspy.kHighsInf
    col_hi[g0 : g0 + k] = s.import_limit_w
    col_hi[bd0 : bd0 + 2 * n] = s.bess_rated_w
    cap = s.bess_capacity_j
    col_lo[e0 : e0 + n + 1] = s.soc_min * cap
    col_hi[e0 : e0 + n + 1] = s.soc_max * cap
    start_e = bat.soc_initial * cap
    col_lo[e0] = col_hi[e0] = start_e
    col_lo[e0 + n] = col_hi[e0 + n] = start_e  # energy-neutral over the trace
    col_lo[emax], col_hi[emax] = 0.0, cap
    col_lo[emin], col_hi[emin] = 0.0, cap

    i = np.arange(n)
    pos = i / per
    left = np.floor(pos).astype(np.int64)
    frac = pos - left
    right = np.minimum(left + 1, k - 1)
    rows: list[tuple[AnyArray, AnyArray, AnyArray, AnyArray, AnyArray]] = []

    def block(
        r_idx: AnyArray, cols: list[AnyArray], vals: list[AnyArray], lo: AnyArray, hi: AnyArray
    ) -> None:
        rr = np.concatenate([r_idx] * len(cols))
        rows.append((rr, np.concatenate(cols), np.concatenate(vals), lo, hi))

    one = np.ones(n)
    # Balance: discharge less charge plus the interpolated grid is the load.
    block(i, [bd0 + i, bc0 + i, g0 + left, g0 + right], [one, -one, 1 - frac, frac], load, load)
    # Energy: each step's stored energy follows from the last, with the efficiencies.
    block(
        i,
        [e0 + i + 1, e0 + i, bd0 + i, bc0 + i],
        [one, -one, one * dt / bat.discharge_efficiency, -one * dt * bat.charge_efficiency],
        np.zeros(n),
        np.zeros(n),
    )
    # The stored energy stays between the max and min columns (capacity = their gap).
    m = n + 1
    j = np.arange(m)
    ones_m = np.ones(m)
    block(j, [np.full(m, emax), e0 + j], [ones_m, -ones_m], np.zeros(m), np.full(m, np.inf))
    block(j, [e0 + j, np.full(m, emin)], [ones_m, -ones_m], np.zeros(m), np.full(m, np.inf))
    # ramp between knots
    q = np.arange(k - 1)
    lim = np.full(k - 1, s.ramp_limit_w_per_s * knot_s)
    block(q, [g0 + q + 1, g0 + q], [np.ones(k - 1), -np.ones(k - 1)], -lim, lim)

    offset = 0
    r_all, c_all, v_all, lo_all, hi_all = [], [], [], [], []
    for rr, cc, vv, lo, hi in rows:
        r_all.append(rr + offset)
        c_all.append(cc)
        v_all.append(vv)
        lo_all.append(lo)
        hi_all.append(hi)
        offset += len(lo)
    r = np.concatenate(r_all)
    c = np.concatenate(c_all)
    v = np.concatenate(v_all)
    order = np.lexsort((r, c))
    r, c, v = r[order], c[order], v[order]
    starts = np.searchsorted(c, np.arange(ncol + 1))
    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = offset
    lp.col_cost_ = cost
    lp.col_lower_ = col_lo
    lp.col_upper_ = col_hi
    inf = highspy.kHighsInf
    lp.row_lower_ = np.where(np.isinf(np.concatenate(lo_all)), -inf, np.concatenate(lo_all))
    lp.row_upper_ = np.where(np.isinf(np.concatenate(hi_all)), inf, np.concatenate(hi_all))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = starts.astype(np.int32)
    lp.a_matrix_.index_ = r.astype(np.int32)
    lp.a_matrix_.value_ = v
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)  # noqa: FBT003 - highspy option API
    h.setOptionValue("solver", "ipm")
    h.setOptionValue("threads", 1)
    t0 = time.perf_counter()
    h.passModel(lp)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    x = np.asarray(h.getSolution().col_value)
    info = {"status": status, "solve_s": round(time.perf_counter() - t0, 2), "knot_s": knot_s}
    if len(x) != ncol:
        raise RuntimeError(f"optimum: HiGHS found no solution ({status})")
    g = x[g0 + left] * (1 - frac) + x[g0 + right] * frac
    b = x[bd0 : bd0 + n] - x[bc0 : bc0 + n]
    return Series(dt, g, b, x[e0 : e0 + n + 1]), info


def summarise(
    series: Series, it_w: Array, setup: SmoothingSetup, fallbacks: int | None = None
) -> dict[str, Any]:
    """The figures of one run (keys as documented for ``--json``)."""
    s = setup.settings
    grid = _means(series.grid_w, series.dt, METRIC_DT_S)
    it = _means(it_w, SIM_DT_S, METRIC_DT_S)[: len(grid)]
    w = round(RAMP_WINDOW_S / METRIC_DT_S)
    kernel = np.ones(w) / w
    smooth = np.convolve(grid, kernel, mode="valid")
    ramp = np.abs(smooth[w:] - smooth[:-w]) / RAMP_WINDOW_S if len(smooth) > w else np.zeros(1)
    lo, hi = setup.band_hz

    def band_energy(x: Array) -> float:
        spec = np.abs(np.fft.rfft(x - x.mean())) ** 2
        f = np.fft.rfftfreq(len(x), METRIC_DT_S)
        return float(spec[(f >= lo) & (f <= hi)].sum())

    it_band = band_energy(it)
    e = series.energy_j
    out: dict[str, Any] = {
        "max_grid_ramp_mw_per_s": round(float(ramp.max()) / 1e6, 3),
        "ramp_limit_violations": int((ramp > s.ramp_limit_w_per_s * (1 + 1e-6)).sum()),
        "band_energy_ratio": round(band_energy(grid) / it_band, 6) if it_band > 0 else 0.0,
        "bess_throughput_mwh": round(float(np.abs(series.bess_w).sum() * series.dt) / 3.6e9, 3),
        "bess_capacity_needed_mwh": round(float(e.max() - e.min()) / 3.6e9, 3),
        "soc_min": round(float(e.min()) / s.bess_capacity_j, 4),
        "soc_max": round(float(e.max()) / s.bess_capacity_j, 4),
        "max_grid_mw": round(float(grid.max()) / 1e6, 2),
    }
    if fallbacks is not None:
        out["workload_fallbacks"] = fallbacks
    return out


def evaluate_thermal(
    it_w: Array, announcements: Sequence[AnnouncementIn], setpoint_c: float = 18.0
) -> dict[str, Any]:
    """Chilled-water supply error on the twin's plant model (100 ms steps, control each 1 s):
    the setpoint held fixed, the PI loop alone, and the loop with announcements."""
    params = ThermalParams.from_config(ThermalSimConfig())
    jobs = [a.to_control() for a in announcements]
    settings = ThermalSettings(setpoint_c)
    stride = round(0.1 / SIM_DT_S)
    out: dict[str, Any] = {}
    for mode in ("fixed", "feedback", "predictive"):
        plant = thermal_steady_state(params, float(it_w[0]), setpoint_c, 80.0)
        state: ThermalState | None = None
        command = setpoint_c
        errors = []
        for i in range(0, len(it_w), stride):
            t = i * SIM_DT_S
            supply = thermal_outputs(params, plant).chw_supply_c
            if mode != "fixed" and i % (10 * stride) == 0:
                visible = jobs if mode == "predictive" else []
                command, state = thermal_step(state, t, supply, float(it_w[i]), visible, settings)
            plant = plant_thermal_step(
                params, plant, it_w=float(it_w[i]), chw_setpoint_c=command,
                heat_setpoint_c=80.0, dt=0.1,
            )  # fmt: skip
            errors.append(abs(thermal_outputs(params, plant).chw_supply_c - setpoint_c))
        e = np.asarray(errors)
        out[mode] = {
            "max_error_k": round(float(e.max()), 3),
            "p99_error_k": round(float(np.percentile(e, 99)), 3),
            "within_0_1_k": round(float((e <= 0.1).mean()), 4),
        }
    return out


def default_setup(ramp_limit_mw_per_s: float = 20.0, sample_s: float = 0.02) -> SmoothingSetup:
    """The demo site: 320 MW import limit, 250 MW / 120 MWh battery used 10 to 90 %."""
    return SmoothingSetup(
        GridSettings(
            ramp_limit_w_per_s=ramp_limit_mw_per_s * 1e6,
            import_limit_w=320e6,
            bess_rated_w=250e6,
            bess_capacity_j=120 * 3.6e9,
        ),
        BatteryModel(),
        sample_s=sample_s,
    )


def run_smoothing(
    trace: Path | None,
    announcements: Path | None,
    *,
    setup: SmoothingSetup | None = None,
    duration_s: float = 3600.0,
    with_optimum: bool = True,
    ideal: bool = False,
    simulation: SimulationConfig | None = None,
) -> dict[str, Any]:
    """Predictive, reactive and optimum runs; ``ideal`` replays with perfect measurement
    instead of the twin's imperfections (``simulation``: the twin's settings, default ones)."""
    setup = setup or default_setup()
    if trace is None:
        _, it = generated_trace(duration_s)
        announced = generated_announcements() if announcements is None else []
        twin_trace = TraceConfig(jobs=BENCH_JOBS)
    else:
        _, it = load_trace_csv(trace)
        announced = []
        twin_trace = TraceConfig(replay_csv=str(trace), replay_loop=False, jobs=())
    if announcements is not None:
        announced = load_announcements(announcements)
    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, visible in (("predictive", announced), ("reactive", [])):
        if ideal:
            series, fallbacks = simulate(it, setup, visible)
            result[name] = summarise(series, it, setup, fallbacks)
        else:
            length = len(it) * SIM_DT_S
            series, fallbacks, trips = simulate_realistic(
                twin_trace, setup, visible, length, simulation
            )
            result[name] = summarise(series, it, setup, fallbacks) | {"guard_trips": trips}
    sim_s = time.perf_counter() - t0
    result["thermal"] = evaluate_thermal(it, announced)
    if with_optimum:
        opt, info = solve_optimum(it, setup)
        result["optimum"] = summarise(opt, it, setup) | {"solver": info}
    result["setup"] = {
        "trace": str(trace) if trace else "generated (3 jobs, 40 ms edges)",
        "duration_s": round(len(it) * SIM_DT_S, 2),
        "announcements": len(announced),
        "measurements": "ideal" if ideal else "realistic (the twin's imperfections)",
        "sample_s": setup.sample_s,
        "ramp_limit_mw_per_s": setup.settings.ramp_limit_w_per_s / 1e6,
        "planning_ramp_mw_per_s": setup.settings.planning_ramp_w_per_s / 1e6,
        "band_hz": list(setup.band_hz),
        "simulate_s": round(sim_s, 2),
    }
    return result


def render(result: dict[str, Any]) -> str:
    keys = [
        "max_grid_ramp_mw_per_s",
        "ramp_limit_violations",
        "band_energy_ratio",
        "bess_throughput_mwh",
        "bess_capacity_needed_mwh",
        "soc_min",
        "soc_max",
    ]
    runs = [r for r in ("predictive", "reactive", "optimum") if r in result]
    width = max(len(k) for k in keys)
    lines = [f"{'':{width}}  " + "  ".join(f"{r:>12}" for r in runs)]
    lines += [f"{k:{width}}  " + "  ".join(f"{result[r][k]!s:>12}" for r in runs) for k in keys]
    if "thermal" in result:
        lines.append(
            "chilled-water supply error (K), max / p99 / share within 0.1 K: "
            + ", ".join(
                f"{mode} {v['max_error_k']} / {v['p99_error_k']} / {v['within_0_1_k']}"
                for mode, v in result["thermal"].items()
            )
        )
    lines.append(json.dumps(result["setup"]))
    return "\n".join(lines)
