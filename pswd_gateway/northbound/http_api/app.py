"""The workload HTTP API (``/v1``): announcements, lifecycle, events, site and forecast.

Served by uvicorn inside the daemon's event loop (:class:`AsgiListener`). Every route but the
health probes needs a bearer token; roles decide what it may do. Errors are RFC 9457 problems.

:func:`create_app` assembles the app: middleware, problem handlers, the gate (tokens and rate
limits) and one router per resource from :mod:`.routes`; the dependencies live in :mod:`.deps`.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pswd_gateway import __version__
from pswd_gateway.config import ApiConfig
from pswd_gateway.journal import JournalError
from pswd_gateway.northbound.http_api.deps import ApiContext, Gate, caller_first
from pswd_gateway.northbound.http_api.problems import (
    ProblemError,
    handle_http,
    handle_journal,
    handle_problem,
    handle_validation,
)
from pswd_gateway.northbound.http_api.routes import (
    events,
    grid_signals,
    health,
    heat,
    problem_answer,
    site,
    workloads,
)
from pswd_gateway.northbound.http_api.security import (
    BodyLimit,
    HttpStats,
    RateLimiter,
    ServerTiming,
    TokenBook,
)
from pswd_gateway.security.zones import Policy

__all__ = ["ApiContext", "create_app"]

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: problem_answer(text)
    for code, text in {
        401: "No or unknown bearer token",
        403: "The token's role does not allow this",
        413: "Body larger than api.max_body_bytes",
        422: "The request is not valid (each field problem is listed)",
        429: "Too many requests for this token",
        503: "The journal cannot be written: nothing of the request was kept",
        507: "The journal's disk is full: nothing of the request was kept",
    }.items()
}


def create_app(
    config: ApiConfig, context: ApiContext | None = None, *, policy: Policy | None = None
) -> FastAPI:
    """Build the app; ``context`` may be set later on ``app.state.context``; ``policy``: the
    zones and conduits whose access caps each caller's role (None: roles alone)."""
    app = FastAPI(
        title="pswd-gateway workload API",
        version=__version__,
        summary="AI workloads announce their power before they run; the site answers with an "
        "allocation and keeps the grid connection inside its limits.",
        license_info={"name": "GPL-3.0-or-later", "identifier": "GPL-3.0-or-later"},
        responses=PROBLEM_RESPONSES,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    app.state.gate = Gate(TokenBook(config), RateLimiter(config.rate_limit_per_s), policy)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.state.http_stats = HttpStats()
    app.add_middleware(ServerTiming, stats=app.state.http_stats)
    app.add_exception_handler(ProblemError, handle_problem)
    app.add_exception_handler(JournalError, handle_journal)
    app.add_exception_handler(RequestValidationError, caller_first(handle_validation))
    app.add_exception_handler(StarletteHTTPException, caller_first(handle_http))
    app.include_router(health.router)
    app.include_router(workloads.router)
    app.include_router(events.router)
    app.include_router(site.router)
    app.include_router(grid_signals.router)
    app.include_router(heat.router)
    return app
