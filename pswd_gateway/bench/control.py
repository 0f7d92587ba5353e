"""``pswd-gateway bench control-latency``: the live control cycle against the twin.

The twin runs as its own process (``pswd-gateway simulate``), the gateway in this one with the
demo site, control enabled, on free loopback ports. Two phases of ``duration_s`` each: quiet,
then with ``rate`` POST /v1/workloads per second from a third process. Each phase reports the
time from a grid-meter reading arriving in the gateway to the battery setpoint written on the
twin (p50/p99/max), and the lateness of the timer-driven cycle runs (p99/max).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pswd_gateway.bench.api import free_port, percentile
from pswd_gateway.config import DEFAULT_CONFIG, load_config
from pswd_gateway.daemon import Gateway
from pswd_gateway.logging import configure_logging
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.simulation.twin import spawn_twin, stop_process

__all__ = ["run_control_bench"]

TWIN_READY_S = 30.0


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50, p99 and max in ms of samples in seconds, and how many there were."""
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
    return {
        "p50_ms": round(percentile(samples, 0.5) * 1000, 2),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
        "n": len(samples),
    }


def demo_config_text(state_dir: Path, meter_poll_ms: int) -> tuple[str, dict[str, int]]:
    """The demo config on free ports, control on, quiet logs."""
    text = DEFAULT_CONFIG.read_text()
    ports = {
        name: free_port() for name in ("meter", "bess", "thermal", "rf_a", "rf_b", "api", "metrics")
    }
    for old, new in (
        ("15020", ports["meter"]),
        ("15021", ports["bess"]),
        ("15022", ports["thermal"]),
        ("8000", ports["rf_a"]),
        ("8001", ports["rf_b"]),
        ("8080", ports["api"]),
        ("9464", ports["metrics"]),
    ):
        text = re.sub(rf"\b{old}\b", str(new), text)
    text = text.replace('state_dir = "var"', f'state_dir = "{state_dir}"')
    text = text.replace('level = "info"', 'level = "warning"')
    text = re.sub(
        r'(name = "(?:grid_meter|bess)"\nkind = "modbus"\n(?:.*\n)*?poll_interval_ms = )\d+',
        rf"\g<1>{meter_poll_ms}",
        text,
    )
    return text, ports


async def wait_port(port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + TWIN_READY_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the twin exited with {proc.returncode}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        writer.close()
        return
    raise RuntimeError("the twin did not start listening")


async def _phase(gw: Gateway, duration_s: float) -> dict[str, Any]:
    assert gw.control is not None
    stats = gw.control.stats
    stats.lateness_s.clear()
    stats.reading_to_setpoint_s.clear()
    runs0, fails0 = stats.runs_total, stats.write_failures_total
    await asyncio.sleep(duration_s)
    return {
        "reading_to_setpoint": percentiles(list(stats.reading_to_setpoint_s)),
        "cycle_lateness": percentiles(list(stats.lateness_s)),
        "runs": stats.runs_total - runs0,
        "write_failures": stats.write_failures_total - fails0,
    }


async def measure_control(
    duration_s: float, rate: float, meter_poll_ms: int, mode: str = "read"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pswd-bench-control-") as tmp:
        text, ports = demo_config_text(Path(tmp) / "state", meter_poll_ms)
        config_path = Path(tmp) / "gateway.toml"
        config_path.write_text(text)
        cfg = load_config(config_path)
        log = (Path(tmp) / "bench.log").open("a", encoding="utf-8")
        configure_logging("warning", "json", stream=log)
        twin = await spawn_twin(config_path)
        gw: Gateway | None = None
        load: asyncio.subprocess.Process | None = None
        try:
            await wait_port(ports["rf_b"], twin)
            gw = Gateway(cfg, config_path=config_path, heap=HeapKeeper())
            await gw.start()
            await asyncio.sleep(2.0)  # first polls, limiter settled
            quiet = await _phase(gw, duration_s)
            load = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pswd_gateway.bench.load",
                f"http://127.0.0.1:{ports['api']}", str(rate), str(duration_s + 2.0), mode,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await asyncio.sleep(1.0)
            loaded = await _phase(gw, duration_s)
            out, _ = await load.communicate()
            api = json.loads(out.decode() or "{}")
        finally:
            if load is not None and load.returncode is None:
                load.kill()
            if gw is not None:
                await gw.stop()
            await stop_process(twin)
            log.close()
    return {
        "meter_poll_ms": meter_poll_ms,
        "duration_s": duration_s,
        "quiet": quiet,
        "under_api_load": loaded | {"api": api},
    }


async def run_control_bench(
    duration_s: float, rate: float, meter_poll_ms: int, as_json: bool, mode: str = "read"
) -> int:
    result = await measure_control(duration_s, rate, meter_poll_ms, mode)
    if as_json:
        print(json.dumps(result, indent=2))  # noqa: T201 - the command's output
        return 0
    for phase in ("quiet", "under_api_load"):
        r = result[phase]
        rs, cl = r["reading_to_setpoint"], r["cycle_lateness"]
        extra = ""
        if phase == "under_api_load":
            api = r["api"]
            extra = (
                f"; API ({api.get('mode')}) {api.get('requests')} requests "
                f"{api.get('statuses')}, p50 {api.get('p50_ms')} ms, p99 {api.get('p99_ms')} ms"
            )
        print(  # noqa: T201
            f"{phase}: reading→setpoint p50 {rs['p50_ms']} ms, p99 {rs['p99_ms']} ms, "
            f"max {rs['max_ms']} ms (n={rs['n']}); cycle lateness p99 {cl['p99_ms']} ms, "
            f"max {cl['max_ms']} ms; write failures {r['write_failures']}{extra}"
        )
    return 0
