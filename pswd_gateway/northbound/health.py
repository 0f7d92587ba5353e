"""The metrics listener's app: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pswd_gateway.northbound.metrics import GatewayCollector, make_registry

__all__ = ["health_app"]


SCRAPE_REUSE_S: Final = 0.25
"""Under a flood of scrapes (more than :data:`SCRAPES_PER_S` in the last second) a scrape this
close to the last rendering gets that rendering: the flood costs the event loop (and so the
control cycle) four renderings a second, not one per request. Prometheus scrapes every few
seconds and always gets a fresh one."""
SCRAPES_PER_S: Final = 4


def health_app(
    collector: GatewayCollector,
    status: Callable[[], dict[str, Any]],
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """``status()`` answers the gateway's status with ``healthy`` and ``ready`` keys:
    ``/healthz`` is 200 while healthy, ``/readyz`` while ready and healthy (503 otherwise)."""
    registry: CollectorRegistry = make_registry(collector)
    ProcessCollector(registry=registry)
    rendered: list[tuple[float, bytes]] = []
    recent: deque[float] = deque(maxlen=SCRAPES_PER_S)

    async def metrics(_: Request) -> Response:
        now = clock()
        flooded = len(recent) == SCRAPES_PER_S and now - recent[0] < 1.0
        if not (flooded and rendered and now - rendered[0][0] < SCRAPE_REUSE_S):
            rendered[:] = [(now, generate_latest(registry))]
        recent.append(now)
        return Response(rendered[0][1], media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> JSONResponse:
        answer = status()
        return JSONResponse(answer, status_code=200 if answer["healthy"] else 503)

    async def readyz(_: Request) -> JSONResponse:
        answer = status()
        ok = answer["ready"] and answer["healthy"]
        return JSONResponse(answer, status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )
