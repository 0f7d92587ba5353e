"""A load generator in its own process: ``python -m pswd_gateway.bench.load URL RATE SECONDS``.

Sends POST /v1/workloads open-loop at RATE per second with the demo submitter token and prints
one JSON object (requests, statuses, p50/p99 ms) on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx

from pswd_gateway.bench.api import TOKEN, open_loop, percentile

__all__ = ["main"]


async def _run(url: str, rate: float, duration_s: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits, timeout=10.0
    ) as http:
        latencies, _, statuses = await open_loop(http, rate, duration_s, 0)
    ms = [x * 1000 for x in latencies]
    return {
        "requests": len(ms),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
    }


def main(argv: list[str]) -> int:
    url, rate, duration = argv[0], float(argv[1]), float(argv[2])
    print(json.dumps(asyncio.run(_run(url, rate, duration))))  # noqa: T201 - the output
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
