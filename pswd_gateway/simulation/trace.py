"""The IT load of the site: synchronous training jobs as a pure function of time.

A synchronous training job alternates between compute phases, where every GPU draws close to
its limit, and communication phases (all-reduce), where the GPUs wait and the power drops by
``depth``. The switch takes ``edge_ms`` (40 ms by default), which is what makes a 200 MW site
hard on the grid. Jobs ramp in and out, pause for checkpoints, and several of them follow each
other over the hour of the demo. Everything is a pure function of ``t`` (seconds since the
twin started) and the seed, so any sample can be computed at the exact time of a request, and
the same seed gives the same trace.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from pswd_gateway.simulation.config import HALLS, JobConfig, SimulationConfig, TraceConfig
from pswd_gateway.simulation.noise import uniform

__all__ = [
    "CSV_HEADER",
    "CsvTrace",
    "ItTrace",
    "TraceEvent",
    "TrainingTrace",
    "build_trace",
    "read_trace_csv",
    "write_trace_csv",
]

CSV_HEADER: Final = "t_s,it_power_mw"
MIN_STEP_S: Final = 0.001
_JITTER_STREAM: Final = 0x7A11


class ItTrace(Protocol):
    """IT power demand of the halls over time (before any GPU power limit)."""

    @property
    def halls(self) -> tuple[str, ...]: ...

    def hall_demand_w(self, t: float) -> tuple[float, ...]:
        """Demand of each hall (order of :attr:`halls`) at ``t`` seconds, in W."""
        ...

    def it_power_w(self, t: float) -> float:
        """Demand of the whole site at ``t`` seconds, in W."""
        ...

    def breakpoints(self, a: float, b: float) -> list[float]:
        """The instants in (a, b), in order, where the demand's shape changes: between two of
        them each hall's demand is a polynomial of degree 2 at most, so the physics integrates
        it exactly (Simpson's rule on each piece)."""
        ...


EventKind = Literal["job_start", "job_full_power", "job_stopping", "job_end"]


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """A moment where a job changes regime (useful for tests and for the demo narrative)."""

    t_s: float
    kind: EventKind
    job: str


@dataclass(frozen=True, slots=True)
class _Job:
    name: str
    start: float
    end: float
    ramp_up: float
    ramp_down: float
    period: float
    edge: float
    high: float
    low: float
    compute: float
    jitter: float
    cycle_iterations: int
    checkpoint_iterations: int
    halls: tuple[int, ...]
    stream: int

    @classmethod
    def from_config(cls, job: JobConfig, index: int, halls: Sequence[str]) -> _Job:
        edge = job.edge_ms / 1000.0
        peak = job.peak_mw * 1e6
        every = job.checkpoint_every_s
        checkpoint = 0 if every is None else math.ceil(job.checkpoint_s / job.period_s)
        cycle = 1 if every is None else max(1, round(every / job.period_s))
        return cls(
            name=job.name,
            start=job.start_s,
            end=job.start_s + job.duration_s,
            # a job never switches on or off faster than one edge
            ramp_up=max(job.ramp_up_s, edge),
            ramp_down=max(job.ramp_down_s, edge),
            period=job.period_s,
            edge=edge,
            high=peak,
            low=peak * (1.0 - job.depth),
            compute=job.duty * job.period_s,
            jitter=job.jitter,
            cycle_iterations=cycle,
            checkpoint_iterations=checkpoint,
            halls=tuple(halls.index(h) for h in job.halls),
            stream=_JITTER_STREAM + index,
        )

    def power_w(self, t: float, seed: int) -> float:
        if not self.start <= t < self.end:
            return 0.0
        tau = t - self.start
        envelope = min(1.0, tau / self.ramp_up, (self.end - t) / self.ramp_down)
        return envelope * self._level(tau, seed)

    def breakpoints(self, a: float, b: float, seed: int) -> list[float]:
        """Instants in (a, b) where the power changes slope (unsorted)."""
        if b <= self.start or a >= self.end:
            return []
        out = [
            t
            for t in (self.start, self.start + self.ramp_up, self.end - self.ramp_down, self.end)
            if a < t < b
        ]
        first = max(math.floor((a - self.start) / self.period), 0)
        last = math.floor((min(b, self.end) - self.start) / self.period)
        for k in range(first, last + 1):
            base = self.start + k * self.period
            compute = self._compute(k, seed)
            kinks = (0.0, self.edge, self.edge + compute, 2.0 * self.edge + compute)
            out.extend(base + x for x in kinks if a < base + x < b)
        return out

    def edges(self, a: float, b: float, seed: int) -> list[tuple[float, bool]]:
        """The middles of the rhythm's edges in [a, b) as ``(t, rise)`` (what the job's own
        framework knows of its iterations; a checkpoint's iterations have none)."""
        out: list[tuple[float, bool]] = []
        first = max(math.floor((a - self.start) / self.period), 0)
        last = math.floor((min(b, self.end) - self.start) / self.period)
        every = self.cycle_iterations + self.checkpoint_iterations
        for k in range(first, last + 1):
            if self.checkpoint_iterations and k % every >= self.cycle_iterations:
                continue
            base = self.start + k * self.period
            rise = base + self.edge / 2.0
            fall = base + 1.5 * self.edge + self._compute(k, seed)
            out.extend((t, up) for t, up in ((rise, True), (fall, False)) if a <= t < b)
        return out

    def _compute(self, k: int, seed: int) -> float:
        # the compute phase varies a little from one iteration to the next (seeded)
        compute = self.compute * (1.0 + self.jitter * (2.0 * uniform(seed, self.stream, k) - 1.0))
        return min(max(compute, self.edge), self.period - 3.0 * self.edge)

    def _level(self, tau: float, seed: int) -> float:
        k = math.floor(tau / self.period)
        if self.checkpoint_iterations and (
            k % (self.cycle_iterations + self.checkpoint_iterations) >= self.cycle_iterations
        ):
            return self.low  # writing a checkpoint: GPUs wait on storage
        x = tau - k * self.period
        edge = self.edge
        compute = self._compute(k, seed)
        swing = self.high - self.low
        if x < edge:
            return self.low + swing * x / edge
        if x < edge + compute:
            return self.high
        if x < 2.0 * edge + compute:
            return self.high - swing * (x - edge - compute) / edge
        return self.low


class TrainingTrace:
    """The configured jobs on top of an idle baseline, per hall."""

    def __init__(self, cfg: TraceConfig, seed: int, halls: Sequence[str] = HALLS) -> None:
        self.config = cfg
        self.seed = seed
        self._halls = tuple(halls)
        self._baseline_w = cfg.baseline_mw * 1e6 / len(self._halls)
        self._jobs = tuple(_Job.from_config(j, i, self._halls) for i, j in enumerate(cfg.jobs))

    @property
    def halls(self) -> tuple[str, ...]:
        return self._halls

    def job_power_w(self, name: str, t: float) -> float:
        """Power of one job at ``t`` (0 outside its run), in W."""
        for job in self._jobs:
            if job.name == name:
                return job.power_w(t, self.seed)
        raise KeyError(f"no job named {name!r}")

    def hall_demand_w(self, t: float) -> tuple[float, ...]:
        demand = [self._baseline_w] * len(self._halls)
        for job in self._jobs:
            if job.start <= t < job.end:
                share = job.power_w(t, self.seed) / len(job.halls)
                for h in job.halls:
                    demand[h] += share
        return tuple(demand)

    def it_power_w(self, t: float) -> float:
        return sum(self.hall_demand_w(t))

    def breakpoints(self, a: float, b: float) -> list[float]:
        out: set[float] = set()
        for job in self._jobs:
            out.update(job.breakpoints(a, b, self.seed))
        return sorted(out)

    def job_edges(self, name: str, a: float, b: float) -> list[tuple[float, bool]]:
        """The middles of one job's rhythm edges in [a, b): ``(t, rise)``, time order."""
        for job in self._jobs:
            if job.name == name:
                return sorted(job.edges(a, b, self.seed))
        raise KeyError(f"no job named {name!r}")

    def active_jobs(self, t: float) -> list[str]:
        """Names of the jobs running at ``t``."""
        return [j.name for j in self._jobs if j.start <= t < j.end]

    def events(self) -> list[TraceEvent]:
        """Every job's start, full-power, stopping and end times, in time order."""
        out: list[TraceEvent] = []
        for j in self._jobs:
            out.append(TraceEvent(j.start, "job_start", j.name))
            out.append(TraceEvent(j.start + j.ramp_up, "job_full_power", j.name))
            out.append(TraceEvent(j.end - j.ramp_down, "job_stopping", j.name))
            out.append(TraceEvent(j.end, "job_end", j.name))
        return sorted(out, key=lambda e: (e.t_s, e.job))


class CsvTrace:
    """A recorded ``t_s,it_power_mw`` trace, linearly interpolated, split evenly per hall."""

    def __init__(
        self,
        times_s: Sequence[float],
        power_w: Sequence[float],
        *,
        loop: bool = True,
        halls: Sequence[str] = HALLS,
    ) -> None:
        if len(times_s) != len(power_w) or not times_s:
            raise ValueError("a trace needs at least one (time, power) sample")
        if any(b <= a for a, b in itertools.pairwise(times_s)):
            raise ValueError("trace times must increase strictly")
        self._t = list(times_s)
        self._p = list(power_w)
        self._loop = loop and len(self._t) > 1
        self._halls = tuple(halls)

    @property
    def halls(self) -> tuple[str, ...]:
        return self._halls

    def it_power_w(self, t: float) -> float:
        times = self._t
        first, last = times[0], times[-1]
        if self._loop and t > last:
            t = first + (t - first) % (last - first)
        if t <= first:
            return self._p[0]
        if t >= last:
            return self._p[-1]
        i = bisect.bisect_right(times, t)
        t0, t1 = times[i - 1], times[i]
        p0, p1 = self._p[i - 1], self._p[i]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0)

    def hall_demand_w(self, t: float) -> tuple[float, ...]:
        share = self.it_power_w(t) / len(self._halls)
        return (share,) * len(self._halls)

    def breakpoints(self, a: float, b: float) -> list[float]:
        """The samples in (a, b), repeated every cycle when looping."""
        times = self._t
        first, last = times[0], times[-1]
        if not self._loop:
            return times[bisect.bisect_right(times, a) : bisect.bisect_left(times, b)]
        length = last - first
        out: list[float] = []
        for cycle in range(
            max(math.floor((a - first) / length), 0), math.floor((b - first) / length) + 1
        ):
            shift = cycle * length
            lo = bisect.bisect_right(times, a - shift)
            hi = bisect.bisect_left(times, b - shift)
            out.extend(t + shift for t in times[lo:hi])
        return sorted(set(out))


def read_trace_csv(path: Path, *, loop: bool = True) -> CsvTrace:
    """Load a trace written by :func:`write_trace_csv` (or any ``t_s,it_power_mw`` file)."""
    times: list[float] = []
    power: list[float] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or ",".join(h.strip() for h in header) != CSV_HEADER:
            raise ValueError(f"{path}: the first line must be exactly {CSV_HEADER!r}")
        for lineno, row in enumerate(reader, start=2):
            try:
                t_s, mw = (float(v) for v in row)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected two numbers, got {row!r}") from None
            times.append(t_s)
            power.append(mw * 1e6)
    return CsvTrace(times, power, loop=loop)


def build_trace(cfg: SimulationConfig) -> ItTrace:
    """The trace the twin runs: the replayed CSV file when configured, else the jobs."""
    if cfg.trace.replay_csv is not None:
        return read_trace_csv(Path(cfg.trace.replay_csv), loop=cfg.trace.replay_loop)
    return TrainingTrace(cfg.trace, cfg.seed)


def _fmt_time(t: float) -> str:
    text = f"{t:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def write_trace_csv(cfg: SimulationConfig, path: Path, duration_s: float, step_s: float) -> int:
    """Write the site IT demand from t=0 to ``duration_s`` every ``step_s`` as CSV.

    The header is exactly ``t_s,it_power_mw``; times are exact multiples of the step (≥ 1 ms).
    Returns the number of data rows written.
    """
    if not step_s >= MIN_STEP_S:
        raise ValueError(f"step_s must be at least {MIN_STEP_S} s (1 ms), got {step_s}")
    if not duration_s > 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be a positive number, got {duration_s}")
    trace = build_trace(cfg)
    rows = math.floor(duration_s / step_s + 1e-9) + 1
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write(CSV_HEADER + "\n")
        for k in range(rows):
            t = k * step_s
            fh.write(f"{_fmt_time(t)},{trace.it_power_w(t) / 1e6:.6f}\n")
    return rows
