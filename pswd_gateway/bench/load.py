"""A load generator in its own process: ``python -m pswd_gateway.bench.load URL RATE SECONDS
[post|read]``.

``post`` sends POST /v1/workloads with the demo submitter token; ``read`` alternates
GET /v1/site and GET /v1/workloads with the demo viewer token (what dashboards do). Open loop:
requests leave at fixed times whether or not earlier ones answered. Prints one JSON object
(requests, statuses, p50/p99 ms) on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from pswd_gateway.bench.api import TOKEN, open_loop, percentile

__all__ = ["main"]

VIEWER = "pswd-demo-viewer"


async def _read_loop(
    http: httpx.AsyncClient, rate: float, duration_s: float
) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        path = "/v1/site" if i % 2 == 0 else "/v1/workloads?limit=20"
        try:
            status = (await http.get(path)).status_code
        except httpx.HTTPError:
            status = 0
        latencies.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    t_start = time.perf_counter()
    for i in range(int(rate * duration_s)):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, statuses


async def _run(url: str, rate: float, duration_s: float, mode: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    token = TOKEN if mode == "post" else VIEWER
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30.0
    ) as http:
        if mode == "post":
            latencies, _, statuses = await open_loop(http, rate, duration_s, 0)
        else:
            latencies, statuses = await _read_loop(http, rate, duration_s)
    ms = [x * 1000 for x in latencies]
    return {
        "mode": mode,
        "requests": len(ms),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "at": datetime.now(UTC).isoformat(),
    }


def main(argv: list[str]) -> int:
    url, rate, duration = argv[0], float(argv[1]), float(argv[2])
    mode = argv[3] if len(argv) > 3 else "post"
    print(json.dumps(asyncio.run(_run(url, rate, duration, mode))))  # noqa: T201 - the output
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
