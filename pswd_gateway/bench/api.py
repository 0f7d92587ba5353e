"""``pswd-gateway bench api``: POST latency against a real daemon, and scheduler solve times.

The gateway runs as its own process (``pswd-gateway run`` on a temporary config and journal,
no devices), so the load generator here does not share its interpreter. First ``preload``
workloads are journalled through the API; then POSTs are sent open-loop at ``rate`` per second
for ``duration_s`` and each answer's latency is recorded (send → full body received).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from pswd_gateway.bench.scheduler import run_scheduler_bench
from pswd_gateway.config import DEMO_TOKEN_SHA256
from pswd_gateway.simulation.twin import stop_process

__all__ = ["gateway_config_text", "run_api_bench", "start_gateway_process"]

TOKEN = "pswd-demo-submitter"  # noqa: S105 - the published demo token, loopback only
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config_text(state_dir: Path, api_port: int, **scheduling: Any) -> str:
    """A device-less gateway config on loopback with the demo tokens (bench and tests)."""
    tokens = "\n".join(
        f'[[api.tokens]]\nname = "demo-{role}"\nrole = "{role}"\nsha256 = "{digest}"\n'
        for digest, role in DEMO_TOKEN_SHA256.items()
    )
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in scheduling.items())
    return f"""
[site]
name = "bench"
grid_import_limit_mw = 10000.0

[listeners.metrics]
enabled = false
port = 0

[listeners.api]
host = "127.0.0.1"
port = {api_port}

[api]
rate_limit_per_s = 100000.0

{tokens}

[scheduling]
base_load_mw = 0.0
cooling_capacity_mw = 10000.0
replan_interval_s = 3600.0
{extra}

[storage]
state_dir = "{state_dir}"

[logging]
level = "warning"
format = "json"
"""


async def start_gateway_process(config: Path, api_port: int) -> asyncio.subprocess.Process:
    """``pswd-gateway run --config FILE``; returns once ``/readyz`` answers 200.

    The gateway's stderr goes to ``gateway.log`` next to the config file (a pipe nobody reads
    would eventually block it).
    """
    log_path = config.with_name("gateway.log")
    with log_path.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pswd_gateway",
            "run",
            "--config",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gateway exited {proc.returncode}: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz", timeout=1.0)).status_code == 200:
                    return proc
            await asyncio.sleep(0.1)
    proc.kill()
    await proc.wait()
    raise RuntimeError(f"gateway not ready within {READY_TIMEOUT_S} s")


def body_for(i: int, now: datetime) -> dict[str, Any]:
    start = now + timedelta(minutes=10 + (i % 600))
    return {
        "workload_type": "ai_training",
        "name": f"bench-{i}",
        "power_profile": {
            "peak_power_mw": 1.0 + (i % 20),
            "ramp_rate_mw_per_sec": 50.0,
            "duration_estimate_sec": 1800.0 + 60 * (i % 90),
        },
        "timing_constraints": {
            "earliest_start_time": start.isoformat(),
            "deadline": (start + timedelta(hours=8)).isoformat(),
        },
    }


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _preload(http: httpx.AsyncClient, n: int, concurrency: int = 16) -> int:
    now = datetime.now(UTC)
    queue = iter(range(n))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for i in queue:
            r = await http.post("/v1/workloads", json=body_for(i, now))
            if r.status_code != 201:
                failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


async def open_loop(
    http: httpx.AsyncClient, rate: float, duration_s: float, offset: int
) -> tuple[list[float], list[float], dict[int, int]]:
    """Requests at fixed times, whether or not earlier ones answered (open loop).

    Returns the client-side latencies, the gateway's own times (``Server-Timing``), statuses.
    """
    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: dict[int, int] = {}
    now = datetime.now(UTC)
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            r = await http.post("/v1/workloads", json=body_for(offset + i, now))
            status = r.status_code
            timing = r.headers.get("server-timing", "")
            if timing.startswith("app;dur="):
                server_ms.append(float(timing.removeprefix("app;dur=")))
        except httpx.HTTPError:
            status = 0
        latencies.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1

    t_start = time.perf_counter()
    n = int(rate * duration_s)
    for i in range(n):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, server_ms, statuses


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_api(rate: float, duration_s: float, preload: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pswd-bench-api-") as tmp:
        port = free_port()
        config = Path(tmp) / "gateway.toml"
        config.write_text(gateway_config_text(Path(tmp) / "state", port))
        proc = await start_gateway_process(config, port)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)

        def client() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {TOKEN}"},
                limits=limits,
                timeout=10.0,
            )

        try:
            async with client() as http:
                t0 = time.perf_counter()
                preload_failures = await _preload(http, preload)
                preload_s = time.perf_counter() - t0
            # "Already journalled": restart, so the preloaded workloads come back from the journal.
            await stop_process(proc, timeout_s=10.0)
            proc = await start_gateway_process(config, port)
            async with client() as http:
                await open_loop(http, rate, 2.0, preload)  # warm-up, not counted
                cpu0 = _cpu_s(proc.pid)
                latencies, server_ms, statuses = await open_loop(
                    http, rate, duration_s, preload + 10_000
                )
                cpu = (_cpu_s(proc.pid) - cpu0) / duration_s
        finally:
            await stop_process(proc, timeout_s=10.0)
    ms = [x * 1000 for x in latencies]
    return {
        "rate_per_s": rate,
        "duration_s": duration_s,
        "preloaded": preload,
        "preload_failures": preload_failures,
        "preload_s": round(preload_s, 2),
        "requests": len(ms),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
        "server_p50_ms": round(percentile(server_ms, 0.50), 2),
        "server_p99_ms": round(percentile(server_ms, 0.99), 2),
        "server_max_ms": round(max(server_ms), 2) if server_ms else None,
        "gateway_cpu_cores": round(cpu, 3),
    }


async def run_api_bench(
    rate: float, duration_s: float, preload: int, solver_sizes: list[int], as_json: bool
) -> int:
    api = await measure_api(rate, duration_s, preload)
    solver = [await asyncio.to_thread(run_scheduler_bench, n) for n in solver_sizes]
    result = {"api": api, "scheduler": solver}
    if as_json:
        print(json.dumps(result, indent=2))  # noqa: T201 - the command's output
        return 0
    print(  # noqa: T201
        f"POST /v1/workloads at {rate:g}/s for {duration_s:g} s with {preload} journalled: "
        f"p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms, max {api['max_ms']} ms "
        f"(in the gateway: p50 {api['server_p50_ms']} ms, p99 {api['server_p99_ms']} ms, "
        f"max {api['server_max_ms']} ms), statuses {api['statuses']}, "
        f"gateway CPU {api['gateway_cpu_cores']} cores"
    )
    for figures in solver:
        print(  # noqa: T201
            "scheduler: " + ", ".join(f"{k}={v}" for k, v in figures.items())
        )
    return 0
