"""The workload HTTP API (``/v1``): announcements, lifecycle, events, site and forecast.

No ``from __future__ import annotations`` here: FastAPI resolves the routes' annotations,
some of which are aliases local to :func:`create_app`.

Served by uvicorn inside the daemon's event loop (:class:`AsgiListener`). Every route but the
health probes needs a bearer token; roles decide what it may do. Errors are RFC 9457 problems.
"""

import asyncio
import base64
import binascii
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from pswd_gateway import __version__
from pswd_gateway.config import ApiConfig
from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.domain.workloads import (
    Action,
    Announcement,
    IllegalTransitionError,
    Workload,
    WorkloadState,
)
from pswd_gateway.errors import (
    DoesNotFitError,
    ForbiddenError,
    IdempotencyConflictError,
    NotFoundError,
)
from pswd_gateway.journal import EventRow
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.http_api.problems import (
    PROBLEM_JSON,
    FieldProblem,
    Problem,
    ProblemError,
    handle_http,
    handle_problem,
    handle_validation,
)
from pswd_gateway.northbound.http_api.schemas import (
    ActionRequest,
    ForecastOut,
    SiteOut,
    WorkloadPage,
)
from pswd_gateway.northbound.http_api.security import (
    BodyLimit,
    HttpStats,
    RateLimiter,
    ServerTiming,
    TokenBook,
)
from pswd_gateway.scheduling.service import WorkloadService

__all__ = ["ApiContext", "create_app"]

log = get_logger("http_api")

EVENT_PAGE = 500
IDEMPOTENCY_KEY_MAX = 255

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in {
        401: "No or unknown bearer token",
        403: "The token's role does not allow this",
        413: "Body larger than api.max_body_bytes",
        422: "The request is not valid (each field problem is listed)",
        429: "Too many requests for this token",
    }.items()
}


@dataclass
class ApiContext:
    """What the routes need from the running gateway."""

    service: WorkloadService
    site: Callable[[], SiteOut]
    ready: Callable[[], bool]


def create_app(config: ApiConfig, context: ApiContext | None = None) -> FastAPI:
    """Build the app; ``context`` may be set later on ``app.state.context``."""
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
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.state.http_stats = HttpStats()
    app.add_middleware(ServerTiming, stats=app.state.http_stats)
    app.add_exception_handler(ProblemError, handle_problem)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    tokens = TokenBook(config)
    limiter = RateLimiter(config.rate_limit_per_s)
    bearer = HTTPBearer(auto_error=False, description="A token from api.tokens")

    def ctx(request: Request) -> ApiContext:
        context = request.app.state.context
        if context is None:
            raise ProblemError(503, "starting", "Starting", "the gateway is starting; retry")
        assert isinstance(context, ApiContext)
        return context

    async def identify(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Identity:
        who = tokens.identify(credentials.credentials) if credentials else None
        if who is None:
            why = "no bearer token" if credentials is None else "unknown bearer token"
            if request.method in {"POST", "PUT", "PATCH", "DELETE"}:
                await ctx(request).service.audit_refusal(None, f"http.{request.method}", why)
            raise ProblemError(
                401,
                "unauthenticated",
                "Authentication required",
                f"{why}: send `Authorization: Bearer <token>` with a token from api.tokens",
                headers={"WWW-Authenticate": 'Bearer realm="pswd-gateway"'},
            )
        wait = limiter.allow(who.name)
        if wait > 0:
            raise ProblemError(
                429,
                "rate-limited",
                "Too many requests",
                f"token {who.name!r} exceeds {config.rate_limit_per_s:g} requests/s "
                "(api.rate_limit_per_s)",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        return who

    def require(permission: Permission) -> Callable[..., Any]:
        async def check(request: Request, who: Annotated[Identity, Depends(identify)]) -> Identity:
            if not who.can(permission):
                why = f"role {who.role!r} lacks {permission.value!r}"
                if request.method != "GET":
                    await ctx(request).service.audit_refusal(
                        who, f"http.{request.method} {request.url.path}", why
                    )
                raise ProblemError(403, "forbidden", "Forbidden", why)
            return who

        return check

    Reader = Annotated[  # noqa: N806 - a type alias, named like one
        Identity, Depends(require(Permission.READ))
    ]
    Announcer = Annotated[  # noqa: N806 - a type alias, named like one
        Identity, Depends(require(Permission.ANNOUNCE))
    ]
    Context = Annotated[  # noqa: N806 - a type alias, named like one
        ApiContext, Depends(ctx)
    ]

    # ---- health ----

    @app.get("/healthz", tags=["health"], summary="Liveness: the API answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: journal open, pollers running",
        responses={503: {"model": Problem, "content": {PROBLEM_JSON: {}}}},
    )
    async def readyz(request: Request) -> dict[str, str]:
        context = request.app.state.context
        if context is None or not context.ready():
            raise ProblemError(503, "not-ready", "Not ready", "the gateway is not ready yet")
        return {"status": "ready"}

    # ---- workloads ----

    @app.post(
        "/v1/workloads",
        status_code=201,
        tags=["workloads"],
        summary="Announce a workload; the answer holds its allocation",
        responses={
            409: {
                "model": Problem,
                "content": {PROBLEM_JSON: {}},
                "description": "Does not fit (see binding_constraint and "
                "earliest_feasible_start), or the Idempotency-Key is in use",
            },
        },
    )
    async def announce(
        announcement: Announcement,
        request: Request,
        response: Response,
        who: Announcer,
        context: Context,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                max_length=IDEMPOTENCY_KEY_MAX,
                description="Retries with the same key and body return the first answer",
            ),
        ] = None,
    ) -> Workload:
        digest = hashlib.sha256(announcement.model_dump_json().encode()).hexdigest()
        try:
            workload, replayed = await context.service.announce(
                announcement, who, idempotency_key=idempotency_key, request_sha256=digest
            )
        except ForbiddenError as exc:
            raise ProblemError(403, "forbidden", "Forbidden", str(exc)) from None
        except IdempotencyConflictError as exc:
            status = 422 if exc.kind == "mismatch" else 409
            raise ProblemError(
                status,
                f"idempotency-{exc.kind.replace('_', '-')}",
                "Idempotency-Key conflict",
                str(exc),
            ) from None
        except DoesNotFitError as exc:
            raise ProblemError(
                409,
                "does-not-fit",
                "The workload does not fit in its window",
                exc.reason,
                binding_constraint=exc.binding_constraint,
                earliest_feasible_start=(
                    exc.earliest_feasible_start.isoformat() if exc.earliest_feasible_start else None
                ),
            ) from None
        response.headers["Location"] = f"/v1/workloads/{workload.id}"
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        del request
        return workload

    @app.get("/v1/workloads", tags=["workloads"], summary="List workloads, oldest first")
    async def list_workloads(
        _: Reader,
        context: Context,
        state: Annotated[
            list[WorkloadState] | None, Query(description="Repeat for several")
        ] = None,
        owner: Annotated[str | None, Query(max_length=64)] = None,
        start_after: Annotated[
            datetime | None, Query(description="Scheduled start at or after (with timezone)")
        ] = None,
        start_before: Annotated[datetime | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> WorkloadPage:
        for name, value in (("start_after", start_after), ("start_before", start_before)):
            if value is not None and value.tzinfo is None:
                raise _param_problem(name, "must carry a timezone", "timezone_aware")
        max_page = context.service.config.api.page_size_max
        journal = context.service.journal
        items, next_seq = await journal.call(
            journal.sync.list_workloads,
            states=state or (),
            owner=owner,
            start_after=start_after,
            start_before=start_before,
            after_seq=_decode_cursor(cursor),
            limit=min(limit, max_page),
        )
        return WorkloadPage(items=items, next_cursor=_encode_cursor(next_seq))

    @app.get(
        "/v1/workloads/{workload_id}",
        tags=["workloads"],
        summary="One workload with its allocation and state history",
        responses={404: {"model": Problem, "content": {PROBLEM_JSON: {}}}},
    )
    async def get_workload(workload_id: str, _: Reader, context: Context) -> Workload:
        try:
            return await context.service.get(workload_id)
        except NotFoundError as exc:
            raise ProblemError(404, "not-found", "Not found", str(exc)) from None

    def action_route(action: Action, summary: str) -> None:
        async def act(
            workload_id: str,
            who: Annotated[Identity, Depends(identify)],
            context: Context,
            body: ActionRequest | None = None,
        ) -> Workload:
            reason = body.reason if body else None
            try:
                return await context.service.act(workload_id, action, who, reason)
            except NotFoundError as exc:
                raise ProblemError(404, "not-found", "Not found", str(exc)) from None
            except ForbiddenError as exc:
                raise ProblemError(403, "forbidden", "Forbidden", str(exc)) from None
            except IllegalTransitionError as exc:
                raise ProblemError(
                    409,
                    "illegal-transition",
                    "Not allowed in this state",
                    str(exc),
                    state=exc.state.value,
                ) from None

        app.post(
            f"/v1/workloads/{{workload_id}}/{action.value}",
            tags=["workloads"],
            summary=summary,
            name=f"{action.value}_workload",
            responses={
                404: {"model": Problem, "content": {PROBLEM_JSON: {}}},
                409: {
                    "model": Problem,
                    "content": {PROBLEM_JSON: {}},
                    "description": "Not allowed in the workload's current state",
                },
            },
        )(act)

    action_route(Action.START, "The workload has started")
    action_route(Action.COMPLETE, "The workload has finished")
    action_route(Action.CANCEL, "Cancel the workload (before or while it runs)")

    # ---- events ----

    @app.get(
        "/v1/events",
        tags=["events"],
        summary="Server-sent events of every state and allocation change",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(
        _: Reader,
        context: Context,
        last_event_id_header: Annotated[
            str | None,
            Header(alias="Last-Event-ID", description="Resume after this event id"),
        ] = None,
        last_event_id: Annotated[int | None, Query(ge=0, description="Same as the header")] = None,
        workload: Annotated[str | None, Query(description="Only this workload's events")] = None,
    ) -> StreamingResponse:
        start = last_event_id if last_event_id is not None else 0
        if last_event_id_header is not None:
            try:
                start = int(last_event_id_header)
            except ValueError:
                raise _param_problem(
                    "Last-Event-ID", "must be an event id (integer)", "int_parsing", "header"
                ) from None
            if start < 0:
                raise _param_problem("Last-Event-ID", "must be ≥ 0", "greater_than_equal", "header")
        stream = _event_stream(context.service, start, workload, context.service.config.api)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # ---- site ----

    @app.get("/v1/site", tags=["site"], summary="The live site snapshot")
    async def site(_: Reader, context: Context) -> SiteOut:
        return context.site()

    @app.get(
        "/v1/forecast",
        tags=["site"],
        summary="Site load, grid import, battery and heat for the planning horizon",
    )
    async def forecast(_: Reader, context: Context) -> ForecastOut:
        return ForecastOut.of(context.service.site_forecast())

    return app


async def _event_stream(
    service: WorkloadService, after: int, workload: str | None, config: ApiConfig
) -> AsyncIterator[str]:
    """Backlog from the journal after ``after``, then live events; heartbeats keep it open."""
    yield "retry: 2000\n\n"
    sent = after
    async with service.hub.subscribe() as queue:
        while True:
            rows = await service.journal.call(service.journal.sync.events_after, sent, EVENT_PAGE)
            for row in rows:
                sent = row.id
                if workload is None or row.workload_id == workload:
                    yield _sse(row)
            if len(rows) < EVENT_PAGE:
                break
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), config.sse_heartbeat_s)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:
                return  # shutting down, or this reader fell behind: it resumes by id
            if event.id <= sent:
                continue
            sent = event.id
            if workload is None or event.workload_id == workload:
                yield _sse(event)


def _sse(event: EventRow) -> str:
    payload = json.dumps(event.as_json(), separators=(",", ":"), default=str)
    return f"id: {event.id}\nevent: {event.type}\ndata: {payload}\n\n"


def _encode_cursor(seq: int | None) -> str | None:
    if seq is None:
        return None
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    bad = _param_problem(
        "cursor", "not a cursor this API gave out; start without one", "cursor_invalid"
    )
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise bad from None
    kind, _, value = text.partition(":")
    if kind != "seq" or not value.isdigit():
        raise bad
    return int(value)


def _param_problem(name: str, detail: str, rule: str, where: str = "query") -> ProblemError:
    pointer = f"{where}:{name}"
    return ProblemError(
        422,
        "validation",
        "The request is not valid",
        f"{pointer}: {detail}",
        errors=[FieldProblem(pointer=pointer, detail=detail, rule=rule)],
    )
