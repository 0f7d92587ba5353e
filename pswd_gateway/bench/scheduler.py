"""Scheduler figures: one placement among N, and the MILP re-plan of N flexible workloads."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime, timedelta

from pswd_gateway.config import SchedulingConfig, SiteConfig
from pswd_gateway.domain.workloads import Announcement
from pswd_gateway.errors import DoesNotFitError
from pswd_gateway.forecasts.providers import SimulatedForecast
from pswd_gateway.scheduling.model import PlacedJob
from pswd_gateway.scheduling.scheduler import Scheduler

__all__ = ["bench_workloads", "run_scheduler_bench"]

NOW = datetime(2026, 11, 25, 9, 2, tzinfo=UTC)


def bench_workloads(n: int, seed: int = 1, now: datetime = NOW) -> list[Announcement]:
    """N flexible jobs for a 600 MW site over 48 h.

    0.5 to 10 MW each, 15 min to 6 h long, in windows of 1 to 24 h.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible benchmark data
    out = []
    for _ in range(n):
        duration = rng.choice([900, 1800, 3600, 7200, 14400, 21600])
        earliest = now + timedelta(minutes=rng.randrange(5, 24 * 60, 5))
        window = max(duration, rng.randrange(3600, 24 * 3600, 300))
        out.append(
            Announcement.model_validate(
                {
                    "workload_type": "ai_training",
                    "power_profile": {
                        "peak_power_mw": rng.uniform(0.5, 10.0),
                        "ramp_rate_mw_per_sec": 50.0,
                        "duration_estimate_sec": duration,
                    },
                    "timing_constraints": {
                        "earliest_start_time": earliest,
                        "deadline": earliest + timedelta(seconds=window),
                    },
                }
            )
        )
    return out


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_scheduler_bench(n_workloads: int, seed: int = 1) -> dict[str, float | int | str]:
    site = SiteConfig(grid_import_limit_mw=600.0)
    cfg = SchedulingConfig(base_load_mw=30.0, cooling_capacity_mw=2000.0, solver_time_limit_s=2.0)
    scheduler = Scheduler(cfg, site)
    forecast = asyncio.run(SimulatedForecast().fetch(NOW, timedelta(hours=48)))
    jobs = bench_workloads(n_workloads, seed)
    placed: list[PlacedJob] = []
    greedy_kg = 0.0
    t0 = time.perf_counter()
    refused = 0
    for i, a in enumerate(jobs):
        try:
            alloc = scheduler.place(f"w{i}", a, None, forecast, NOW)
        except DoesNotFitError:
            refused += 1
            continue
        placed.append(PlacedJob(f"w{i}", a, alloc.scheduled_start))
        scheduler.hold(placed[-1])
        greedy_kg += alloc.expected_carbon_kg
    insert_all_s = time.perf_counter() - t0
    extra = bench_workloads(200, seed + 1)
    samples = []
    for i, a in enumerate(extra):
        t = time.perf_counter()
        with contextlib.suppress(DoesNotFitError):
            scheduler.place(f"x{i}", a, None, forecast, NOW)
        samples.append((time.perf_counter() - t) * 1000)
    current = {p.id: p.start for p in placed}
    result = scheduler.optimise(
        [(p.id, p.announcement) for p in placed], [], forecast, NOW, current=current
    )
    return {
        "workloads": n_workloads,
        "refused_at_insert": refused,
        "place_p50_ms": round(_pct(samples, 0.5), 2),
        "place_p99_ms": round(_pct(samples, 0.99), 2),
        "insert_all_s": round(insert_all_s, 2),
        "milp_status": result.status,
        "milp_solve_s": round(result.solve_s, 2),
        "milp_candidates": result.candidates,
        "milp_gap": round(result.mip_gap, 5),
        "greedy_kg": round(greedy_kg, 1),
        "milp_kg": round(result.objective_kg, 1),
        "unplaced": len(result.unplaced),
    }
