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
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pswd_gateway.northbound.metrics import GatewayCollector, make_registry
from pswd_gateway.security.ratelimit import RateLimiter, retry_after

__all__ = ["health_app"]


SCRAPE_REUSE_S: Final = 0.25
"""Under a flood of scrapes (more than :data:`SCRAPES_PER_S` in the last second) a scrape this
close to the last rendering gets that rendering: the flood costs the event loop (and so the
control cycle) four renderings a second, not one per request. Prometheus scrapes every few
seconds and always gets a fresh one."""
SCRAPES_PER_S: Final = 4
REQUESTS_PER_ADDRESS_PER_S: Final = 30.0
"""Requests one client address may make of this listener per second (a burst of as many); beyond,
429 with ``Retry-After`` and the connection closed, so a flood of scrapes on kept-alive
connections turns into new connections, which the listener's door limits and refuses at accept.
Prometheus scrapes every few seconds; a pair of them, dashboards and health checks stay far
below."""


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
    limiter = RateLimiter(REQUESTS_PER_ADDRESS_PER_S, clock)

    def too_many(request: Request) -> Response | None:
        client = request.client.host if request.client else "?"
        wait = limiter.allow(client)
        if wait <= 0:
            return None
        text = f"{client} asked more than {REQUESTS_PER_ADDRESS_PER_S:g} times a second\n"
        headers = {"Retry-After": retry_after(wait), "Connection": "close"}
        return PlainTextResponse(text, status_code=429, headers=headers)

    async def metrics(request: Request) -> Response:
        if (refused := too_many(request)) is not None:
            return refused
        now = clock()
        flooded = len(recent) == SCRAPES_PER_S and now - recent[0] < 1.0
        if not (flooded and rendered and now - rendered[0][0] < SCRAPE_REUSE_S):
            rendered[:] = [(now, generate_latest(registry))]
        recent.append(now)
        return Response(rendered[0][1], media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        if (refused := too_many(request)) is not None:
            return refused
        answer = status()
        return JSONResponse(answer, status_code=200 if answer["healthy"] else 503)

    async def readyz(request: Request) -> Response:
        if (refused := too_many(request)) is not None:
            return refused
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
