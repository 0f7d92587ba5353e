"""``pswd-gateway bench poll``: poll N real SunSpec Modbus servers from the twin at 100 ms.

The servers run in a child process (as real devices would, with their own interpreter); this
process runs only the gateway's side: N ``ModbusDriver``s and ``Poller``s writing into one
``PointStore``. Reported per N: poll lateness p50/p99/max (start of a poll minus its deadline),
overruns, errors, and the CPU the gateway process used (fraction of one core).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from pswd_gateway.config import GatewayConfig
from pswd_gateway.logging import configure_logging
from pswd_gateway.southbound.factory import build_driver
from pswd_gateway.southbound.poller import Poller
from pswd_gateway.store import PointStore

__all__ = ["PollBenchResult", "run_poll_bench"]

WARMUP_S = 2.0


@dataclass(frozen=True, slots=True)
class PollBenchResult:
    devices: int
    interval_ms: int
    duration_s: float
    polls: int
    overruns: int
    errors: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    gateway_cpu_ratio: float
    """CPU seconds of the gateway process per wall second (1.0 = one core)."""
    servers_cpu_ratio: float


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def _start_servers(count: int) -> tuple[asyncio.subprocess.Process, list[int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pswd_gateway.bench.servers",
        str(count),
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(120.0):
            while line := await proc.stdout.readline():
                if line.startswith(b'{"ports"'):
                    ports: list[int] = json.loads(line)["ports"]
                    return proc, ports
    except TimeoutError:
        pass
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    raise RuntimeError(f"benchmark servers did not start (exit status {proc.returncode})")


async def _stop_servers(proc: asyncio.subprocess.Process) -> float:
    """Stop the server process; returns the CPU seconds it used (from its own report)."""
    cpu = 0.0
    if proc.stdin is None and proc.returncode is None:
        proc.terminate()
    assert proc.stdout is not None
    with contextlib.suppress(TimeoutError, ValueError, json.JSONDecodeError):
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=10.0)
        cpu = float(json.loads(line)["cpu_s"])
    try:
        await asyncio.wait_for(proc.wait(), 10.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    return cpu


async def measure(devices: int, interval_ms: int, duration_s: float) -> PollBenchResult:
    """Poll ``devices`` servers for ``duration_s`` after a warm-up; return the figures."""
    proc, ports = await _start_servers(devices)
    config = GatewayConfig.model_validate(
        {
            "devices": [
                {
                    "name": f"meter_{i:04d}",
                    "kind": "modbus",
                    "host": "127.0.0.1",
                    "port": port,
                    "register_map": "sunspec-meter",
                    "poll_interval_ms": interval_ms,
                }
                for i, port in enumerate(ports)
            ],
        }
    )
    store = PointStore()
    pollers = [
        Poller(build_driver(d, config), store, invalid_after_s=d.invalid_after_s)
        for d in config.devices
    ]
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        await asyncio.sleep(WARMUP_S)
        for p in pollers:
            p.stats.reset()
        cpu0 = time.process_time()
        t0 = time.monotonic()
        await asyncio.sleep(duration_s)
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        stats = [p.stats for p in pollers]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in pollers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.driver.close(), 1.0)
        servers_cpu = await _stop_servers(proc)
    samples = sorted(s for st in stats for s in st.lateness_samples())
    return PollBenchResult(
        devices=devices,
        interval_ms=interval_ms,
        duration_s=round(wall, 3),
        polls=sum(s.polls_total for s in stats),
        overruns=sum(s.overruns_total for s in stats),
        errors=sum(s.errors_total for s in stats),
        lateness_p50_ms=round(_percentile(samples, 0.50) * 1e3, 3),
        lateness_p99_ms=round(_percentile(samples, 0.99) * 1e3, 3),
        lateness_max_ms=round((samples[-1] if samples else float("nan")) * 1e3, 3),
        gateway_cpu_ratio=round(cpu / wall, 3),
        servers_cpu_ratio=round(servers_cpu / (wall + WARMUP_S), 3),
    )


def machine() -> dict[str, str]:
    import os  # noqa: PLC0415

    return {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "max_rss_mb": str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:  # noqa: PTH123
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def run_poll_bench(
    counts: list[int], interval_ms: int, duration_s: float, as_json: bool
) -> int:
    """Run the benchmark for each N in ``counts``; print a table or JSON. Exit code 0."""
    configure_logging("warning", "json")
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 140)
    results: list[PollBenchResult] = []
    for n in counts:
        console.print(f"polling {n} devices every {interval_ms} ms for {duration_s:g} s …")
        results.append(await measure(n, interval_ms, duration_s))
    if as_json:
        document = {"machine": machine(), "results": [asdict(r) for r in results]}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    table = Table(title=f"poll benchmark ({interval_ms} ms interval)", title_justify="left")
    for col in (
        "devices",
        "polls",
        "overruns",
        "errors",
        "lateness p50 ms",
        "p99 ms",
        "max ms",
        "gateway CPU (cores)",
        "servers CPU (cores)",
    ):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r.devices),
            str(r.polls),
            str(r.overruns),
            str(r.errors),
            f"{r.lateness_p50_ms:.2f}",
            f"{r.lateness_p99_ms:.2f}",
            f"{r.lateness_max_ms:.2f}",
            f"{r.gateway_cpu_ratio:.2f}",
            f"{r.servers_cpu_ratio:.2f}",
        )
    console.print(table)
    m = machine()
    console.print(f"machine: {m['cpus']} x {m['cpu']}, Python {m['python']}, Linux {m['kernel']}")
    return 0
