"""The metrics listener's app: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pswd_gateway.northbound.metrics import GatewayCollector, make_registry

__all__ = ["health_app"]


def health_app(collector: GatewayCollector, status: Callable[[], dict[str, Any]]) -> Starlette:
    """``status()`` answers the gateway's status with ``healthy`` and ``ready`` keys:
    ``/healthz`` is 200 while healthy, ``/readyz`` while ready and healthy (503 otherwise)."""
    registry: CollectorRegistry = make_registry(collector)
    ProcessCollector(registry=registry)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

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
