"""The ML platform's part on the demo site, played by ``make demo`` and ``bench soak``.

The platform announces the demo's 200 MW training job through the workload HTTP API (with the
demo submitter token) for the moment the twin will start it, reports its start once the site
says it is ready, tells the edges of its training rhythm a moment ahead while it runs (its
framework knows when each backward pass ends; here the twin's trace stands in for it, each
edge told within ±5 ms), and cancels it when it is stopped while the job is still open.
Everything goes over HTTP, as a real platform's would; nothing here reaches into the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pswd_gateway.client import ApiError, AsyncPswdClient
from pswd_gateway.domain.workloads import PowerProfile, WorkloadState
from pswd_gateway.simulation.config import JobConfig, SimulationConfig
from pswd_gateway.simulation.trace import TrainingTrace, build_trace

__all__ = [
    "DEMO_JOB",
    "DEMO_TOKEN",
    "PlatformRun",
    "demo_job_level_mw",
    "demo_job_start",
    "play_demo_job",
    "trace_job",
    "twin_rhythm",
]

DEMO_TOKEN: Final = "pswd-demo-submitter"  # noqa: S105 - the published demo token, loopback only
DEMO_JOB_LEAD_S: Final = 30.0
"""When the twin's start time is unknown (or too close): announce for now + this."""
MIN_NOTICE_S: Final = 10.0
"""The twin's job start is used only while it is at least this far ahead."""
POLL_S: Final = 0.2
START_GRACE_S: Final = 60.0
"""The start is reported at the latest this long after the announced start, or never."""
CLEANUP_TIMEOUT_S: Final = 5.0
START_REASON: Final = "demo: the training job starts"
ACTIVE: Final = (
    WorkloadState.ANNOUNCED,
    WorkloadState.SCHEDULED,
    WorkloadState.PREPARING,
    WorkloadState.READY,
    WorkloadState.RUNNING,
)
MAX_LIST_PAGES: Final = 10
RHYTHM_EVERY_S: Final = 0.1
RHYTHM_AHEAD_S: Final = 0.3
"""The rhythm's edges are told every RHYTHM_EVERY_S, those due within RHYTHM_AHEAD_S: each
some 0.2-0.3 s before its middle (a framework knows when its backward pass will end about
that far ahead)."""
RHYTHM_ERROR_S: Final = 0.005
"""How far off a told edge may be (uniform, seeded)."""

Rhythm = Callable[[float, float], Sequence[tuple[float, bool]]]
"""The job's edges with middles in [a, b): ``(middle, rise)``, POSIX seconds."""
DEMO_JOB: Final[Mapping[str, Any]] = {
    "workload_type": "ai_training",
    "name": "llm-pretrain-demo",
    "flexibility": "fixed",
    "power_profile": {
        "peak_power_mw": 200,
        "ramp_rate_mw_per_sec": 5000,  # 200 MW in the twin's 40 ms edge: no soft start
        "duration_estimate_sec": 1800,
        "oscillation_period_sec": 2.5,
        "oscillation_depth_mw": 180,
        "oscillation_duty": 0.75,
    },
}
"""What the platform announces (the twin's first ``[[simulation.trace.jobs]]`` entry)."""


def trace_job(simulation: Mapping[str, Any]) -> JobConfig | None:
    """The job the platform announces: the first ``[[simulation.trace.jobs]]`` of the twin
    (``None`` when it has none)."""
    jobs = SimulationConfig.model_validate(simulation).trace.jobs
    return jobs[0] if jobs else None


def twin_rhythm(simulation: Mapping[str, Any], twin_t0: float) -> Rhythm | None:
    """The edges of the twin's first job (the one the platform announces), on the POSIX clock
    (``None``: no job, or a replayed trace)."""
    cfg = SimulationConfig.model_validate(simulation)
    trace = build_trace(cfg)
    job = trace_job(simulation)
    if job is None or not isinstance(trace, TrainingTrace):
        return None
    name = job.name

    def edges(a: float, b: float) -> list[tuple[float, bool]]:
        return [(t + twin_t0, rise) for t, rise in trace.job_edges(name, a - twin_t0, b - twin_t0)]

    return edges


def demo_job_level_mw() -> float:
    """The mean power the announcement promises (``PowerProfile.level_mw``)."""
    return PowerProfile.model_validate(DEMO_JOB["power_profile"]).level_mw()


def demo_job_start(twin_t0: float | None, job_start_s: float, now: float) -> datetime:
    """When to announce the job for: the twin's start time plus ``job_start_s`` while that is
    at least :data:`MIN_NOTICE_S` ahead, otherwise now + :data:`DEMO_JOB_LEAD_S`."""
    if twin_t0 is not None and twin_t0 + job_start_s > now + MIN_NOTICE_S:
        return datetime.fromtimestamp(twin_t0 + job_start_s, UTC)
    return datetime.fromtimestamp(now + DEMO_JOB_LEAD_S, UTC)


@dataclass
class PlatformRun:
    """What the platform did, for its caller to show or measure (POSIX seconds)."""

    workload_id: str | None = None
    announced_start: float | None = None
    started_at: float | None = None
    """When the platform reported the job's start (``None``: not reported)."""
    refused: str | None = None
    """Why the announcement or the start was refused."""
    edges_told: int = 0
    """Rhythm edges the gateway took."""
    rhythm_refused: str | None = None
    """Why the gateway stopped taking them (the job ended, …)."""


async def play_demo_job(
    url: str,
    twin_t0: float | None,
    job_start_s: float,
    *,
    token: str = DEMO_TOKEN,
    run: PlatformRun | None = None,
    on_refused: Callable[[str], object] | None = None,
    rhythm: Rhythm | None = None,
) -> None:
    """Announce the demo job for ``twin_t0 + job_start_s``, report its start when the site is
    ready (or its start is due), then tell its ``rhythm`` ahead while it runs (if given) and
    hold until cancelled; on the way out, cancel the job if it is still open. Returns early
    when the API refuses the announcement.

    Leftovers of the same name from an earlier run (a kept journal) are cancelled first.
    """
    run = run if run is not None else PlatformRun()
    start = demo_job_start(twin_t0, job_start_s, time.time())
    body = dict(DEMO_JOB) | {
        "timing_constraints": {
            "earliest_start_time": start.isoformat(),
            "deadline": (start + timedelta(hours=1)).isoformat(),
        }
    }
    async with AsyncPswdClient(url, token) as pswd:
        await _cancel_leftovers(pswd)
        try:
            workload = await pswd.workload.announce(body)
        except ApiError as exc:
            run.refused = f"announcement refused: {exc}"
            if on_refused is not None:
                on_refused(run.refused)
            return
        run.workload_id = workload.id
        run.announced_start = start.timestamp()
        try:
            try:
                if await _start_when_ready(pswd, workload.id, start.timestamp() + START_GRACE_S):
                    run.started_at = time.time()
            except ApiError as exc:
                run.refused = f"start refused: {exc}"
                if on_refused is not None:
                    on_refused(run.refused)
            if rhythm is not None and run.started_at is not None:
                await _tell_rhythm(pswd, workload.id, rhythm, run)
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(ApiError, OSError, TimeoutError):
                async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                    current = await pswd.workload.get(workload.id)
                    if current.state in ACTIVE:
                        await pswd.workload.cancel(workload.id, "demo stopped")


async def _tell_rhythm(
    pswd: AsyncPswdClient, workload_id: str, rhythm: Rhythm, run: PlatformRun
) -> None:
    """Tell the job's edges ahead until the gateway refuses them (the job ended)."""
    jitter = random.Random(workload_id)  # noqa: S311 -- timing error of a simulated job
    told_to = time.time()
    while True:
        now = time.time()
        error = RHYTHM_ERROR_S
        edges = [
            (datetime.fromtimestamp(at + jitter.uniform(-error, error), UTC), rise)
            for at, rise in rhythm(told_to, now + RHYTHM_AHEAD_S)
        ]
        told_to = now + RHYTHM_AHEAD_S
        if edges:
            try:
                run.edges_told += await pswd.workload.tell_rhythm(workload_id, edges)
            except ApiError as exc:
                run.rhythm_refused = str(exc)
                return
        await asyncio.sleep(RHYTHM_EVERY_S)


async def _cancel_leftovers(pswd: AsyncPswdClient) -> None:
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await pswd.workload.list(list(ACTIVE), cursor=cursor)
        for leftover in page.items:
            if leftover.announcement.name == DEMO_JOB["name"]:
                await pswd.workload.cancel(leftover.id, "demo: left over from an earlier run")
        cursor = page.next_cursor
        if cursor is None:
            return


async def _start_when_ready(pswd: AsyncPswdClient, workload_id: str, give_up_at: float) -> bool:
    """Report the start once the site is ready or the start is due; False when the job left
    the open states first, or ``give_up_at`` (POSIX) passed."""
    while time.time() < give_up_at:
        current = await pswd.workload.get(workload_id)
        if current.state not in ACTIVE or current.state is WorkloadState.RUNNING:
            return False
        alloc = current.allocation
        due = alloc is not None and datetime.now(UTC) >= alloc.scheduled_start
        if current.state is WorkloadState.READY or (
            due and current.state in {WorkloadState.SCHEDULED, WorkloadState.PREPARING}
        ):
            await pswd.workload.start(workload_id, START_REASON)
            return True
        await asyncio.sleep(POLL_S)
    return False
