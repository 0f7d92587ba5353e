"""``pswd-gateway bench iec61850``: MMS read latency with concurrent clients, GOOSE latency.

The MMS server runs in this process (its own thread, as in the gateway) over a store that a
task refreshes every 100 ms. ``clients`` processes each open one MMS association and read
``PSWDGRID/MMXU1.TotW.mag.f`` back to back for ``duration_s``; their latencies are merged.
With raw sockets (root), ``events`` GOOSE state changes are timed from the store update to the
first frame received on ``lo`` (this includes the wait for the next 100 ms batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

from pswd_gateway.bench.api import free_port
from pswd_gateway.bench.control import percentiles
from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.northbound.iec61850.model import TABLE
from pswd_gateway.northbound.iec61850.server import MmsServer
from pswd_gateway.store import PointStore

__all__ = ["reader_main", "run_iec61850_bench"]

SITE = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())


def _feed(store: PointStore, grid_w: float, meter_ok: bool = True) -> None:
    now = time.time()
    quality = Quality.GOOD if meter_ok else Quality.INVALID
    store.update(
        [
            Point("meter.active_power", grid_w, SiUnit.WATT, quality, now, now),
            Point("meter.frequency", 50.0, SiUnit.HERTZ, Quality.GOOD, now, now),
            Point("bess.soc", 0.5, SiUnit.RATIO, Quality.GOOD, now, now),
        ]
    )


async def _goose_latency(store: PointStore, events: int) -> dict[str, Any]:
    from pyiec61850.goose.subscriber import GooseSubscriber  # noqa: PLC0415

    arrivals: list[tuple[float, int]] = []
    sub = GooseSubscriber("lo", "PSWDGRID/LLN0$GO$gcbEvents")
    sub.set_listener(lambda msg: arrivals.append((time.perf_counter(), msg.st_num)))
    sub.start()
    latencies: list[float] = []
    try:
        await asyncio.sleep(1.0)
        for i in range(events):
            st_before = arrivals[-1][1] if arrivals else 0
            t0 = time.perf_counter()
            _feed(store, 100e6, meter_ok=i % 2 == 1)
            while time.perf_counter() - t0 < 1.0:
                new = [t for t, st in arrivals if st > st_before and t >= t0]
                if new:
                    latencies.append(new[0] - t0)
                    break
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0.3)
    finally:
        sub.stop()
    return percentiles(latencies)


async def _lateness(seconds: float, period_s: float = 0.02) -> list[float]:
    """How late a 20 ms timer on this loop fires (the control cycle's meter period)."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    due = loop.time() + period_s
    end = loop.time() + seconds
    while due < end:
        await asyncio.sleep(max(0.0, due - loop.time()))
        late.append(max(0.0, loop.time() - due))
        due += period_s
    return late


async def _push_effect(server: MmsServer, seconds: float, attributes: int) -> dict[str, Any]:
    """Lateness of a 20 ms timer without, then with, ``attributes`` data attributes pushed
    every 100 ms (value, q and t of ``attributes // 3`` data objects, cycling over the table)."""
    quiet = await _lateness(seconds)
    refs = [row.reference for row in TABLE if row.cdc in {"MV", "APC"}]
    per_batch = attributes // 3
    apply_s: list[float] = []

    async def push() -> None:
        value = 0.0
        while True:
            value += 1.0
            now_ms = int(time.time() * 1000)
            batch = [(refs[i % len(refs)], value + i, 0, now_ms) for i in range(per_batch)]
            before = server.stats.batches_total
            server.submit(batch)
            await asyncio.sleep(0.1)
            if server.stats.batches_total > before:
                apply_s.append(server.stats.last_batch_s)

    pusher = asyncio.create_task(push())
    try:
        loaded = await _lateness(seconds)
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
    q, loaded_p = percentiles(quiet), percentiles(loaded)
    return {
        "attributes_per_batch": per_batch * 3,
        "apply": percentiles(apply_s),
        "lateness_quiet": q,
        "lateness_pushing": loaded_p,
        "p99_added_ms": round((loaded_p["p99_ms"] or 0.0) - (q["p99_ms"] or 0.0), 3),
    }


async def measure(
    clients: int, duration_s: float, events: int, attributes: int = 2000
) -> dict[str, Any]:
    store = PointStore()
    _feed(store, 100e6)
    port = free_port()
    root = os.geteuid() == 0
    server = MmsServer(
        store,
        lambda: SITE,
        port=port,
        anonymous_read=True,  # the reader processes associate without a password
        goose_interface="lo" if root else None,
    )
    await server.start()

    async def churn() -> None:
        w = 100e6
        while True:
            w += 1e5
            _feed(store, w)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(churn())
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pswd_gateway.bench.iec61850",
                str(port),
                str(duration_s),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for _ in range(clients)
        ]
        outs = await asyncio.gather(*(p.communicate() for p in procs))
        samples: list[float] = []
        for out, _ in outs:
            samples.extend(json.loads(out.decode() or "[]"))
        task.cancel()  # only the pushed batches from here on
        push = await _push_effect(server, min(duration_s, 10.0), attributes) if attributes else None
        goose = await _goose_latency(store, events) if root and events else None
    finally:
        task.cancel()
        await server.stop()
    return {
        "clients": clients,
        "reads": len(samples),
        "read_latency": percentiles(samples),
        "batches": server.stats.batches_total,
        "last_batch_ms": round(server.stats.last_batch_s * 1000, 3),
        "push": push,
        "goose_event_to_frame": goose,
    }


def reader_main(argv: list[str]) -> int:
    import pyiec61850.pyiec61850 as m  # noqa: PLC0415

    port, duration = int(argv[0]), float(argv[1])
    con = m.IedConnection_create()
    _, err = m.IedConnection_connect(con, "127.0.0.1", port)
    if err != 0:
        print("[]")  # noqa: T201 - the output
        return 1
    latencies = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t0 = time.perf_counter()
        m.IedConnection_readFloatValue(con, "PSWDGRID/MMXU1.TotW.mag.f", m.IEC61850_FC_MX)
        latencies.append(time.perf_counter() - t0)
    m.IedConnection_close(con)
    print(json.dumps(latencies))  # noqa: T201 - the output
    os._exit(0)  # skip the C library's destructors in a throwaway process


async def run_iec61850_bench(
    clients: int, duration_s: float, events: int, as_json: bool, attributes: int = 2000
) -> int:
    result = await measure(clients, duration_s, events, attributes)
    if as_json:
        print(json.dumps(result, indent=2))  # noqa: T201 - the command's output
        return 0
    r, g = result["read_latency"], result["goose_event_to_frame"]
    goose = (
        (
            "GOOSE not measured (--events 0)"
            if events == 0
            else "GOOSE not measured (needs root for raw sockets)"
        )
        if g is None
        else f"GOOSE event→frame p50 {g['p50_ms']} ms, p99 {g['p99_ms']} ms (n={g['n']})"
    )
    p = result["push"]
    push = (
        ""
        if p is None
        else f"; {p['attributes_per_batch']} attributes per batch: apply p50 "
        f"{p['apply']['p50_ms']} ms, p99 {p['apply']['p99_ms']} ms; 20 ms timer lateness p99 "
        f"{p['lateness_quiet']['p99_ms']} ms quiet, {p['lateness_pushing']['p99_ms']} ms pushing "
        f"(+{p['p99_added_ms']} ms)"
    )
    print(  # noqa: T201
        f"MMS reads with {clients} clients: {result['reads']} reads, p50 {r['p50_ms']} ms, "
        f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms; batch apply {result['last_batch_ms']} ms"
        f"{push}; " + goose
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(reader_main(sys.argv[1:]))
