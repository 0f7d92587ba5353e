"""``/v1/workloads``: announce, list, read, the lifecycle actions start/complete/cancel, and a
running job's told rhythm."""

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from pswd_gateway.domain.workloads import (
    Action,
    Announcement,
    IllegalTransitionError,
    RhythmHint,
    Workload,
    WorkloadState,
)
from pswd_gateway.errors import (
    DoesNotFitError,
    ForbiddenError,
    IdempotencyConflictError,
    NotFoundError,
    RhythmRefusedError,
)
from pswd_gateway.northbound.http_api.deps import Announcer, Caller, Context, Reader
from pswd_gateway.northbound.http_api.problems import FieldProblem, ProblemError
from pswd_gateway.northbound.http_api.routes import param_problem, problem_answer
from pswd_gateway.northbound.http_api.schemas import ActionRequest, RhythmAccepted, WorkloadPage

__all__ = ["router"]

IDEMPOTENCY_KEY_MAX = 255
CURSOR_DIGITS = 18
"""A cursor's sequence number has at most this many digits (below SQLite's 2**63)."""

router = APIRouter(tags=["workloads"])


@router.post(
    "/v1/workloads",
    status_code=201,
    summary="Announce a workload; the answer holds its allocation",
    responses={
        409: problem_answer(
            "Does not fit (see binding_constraint and "
            "earliest_feasible_start), or the Idempotency-Key is in use"
        ),
    },
)
async def announce(
    announcement: Announcement,
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
    return workload


@router.get("/v1/workloads", summary="List workloads, oldest first")
async def list_workloads(
    _: Reader,
    context: Context,
    state: Annotated[list[WorkloadState] | None, Query(description="Repeat for several")] = None,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    start_after: Annotated[
        datetime | None, Query(description="Scheduled start at or after (with timezone)")
    ] = None,
    start_before: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> WorkloadPage:
    for name, value in (("start_after", start_after), ("start_before", start_before)):
        if value is None:
            continue
        if value.tzinfo is None:
            raise param_problem(name, "must carry a timezone", "timezone_aware")
        try:
            value.astimezone(UTC)
        except OverflowError:  # 9999-12-31T23:00-05:00 is in the year 10000 in UTC
            raise param_problem(
                name, "must lie between the years 1 and 9999 in UTC", "datetime_range"
            ) from None
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


@router.get(
    "/v1/workloads/{workload_id}",
    summary="One workload with its allocation and state history",
    responses={404: problem_answer()},
)
async def get_workload(workload_id: str, _: Reader, context: Context) -> Workload:
    try:
        return await context.service.get(workload_id)
    except NotFoundError as exc:
        raise ProblemError(404, "not-found", "Not found", str(exc)) from None


def _action_route(action: Action, summary: str) -> None:
    """``POST /v1/workloads/{id}/<action>``; who may act is the service's decision (owner rule)."""

    async def act(
        workload_id: str,
        who: Caller,
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

    router.post(
        f"/v1/workloads/{{workload_id}}/{action.value}",
        summary=summary,
        name=f"{action.value}_workload",
        responses={
            404: problem_answer(),
            409: problem_answer("Not allowed in the workload's current state"),
        },
    )(act)


_action_route(Action.START, "The workload has started")
_action_route(Action.COMPLETE, "The workload has finished")
_action_route(Action.CANCEL, "Cancel the workload (before or while it runs)")


@router.post(
    "/v1/workloads/{workload_id}/rhythm",
    status_code=202,
    summary="A running job tells the next edges of its training rhythm",
    responses={
        403: problem_answer("Neither the workload's owner nor an operator"),
        404: problem_answer(),
        409: problem_answer("The workload does not run, or announced no training rhythm"),
    },
)
async def tell_rhythm(
    workload_id: str, hint: RhythmHint, who: Caller, context: Context
) -> RhythmAccepted:
    """The battery leads each told edge as it leads the rises it learnt (docs/control.md);
    a job whose compute phases vary is led on its falls too."""
    try:
        edges = await context.service.tell_rhythm(workload_id, hint, who)
    except NotFoundError as exc:
        raise ProblemError(404, "not-found", "Not found", str(exc)) from None
    except ForbiddenError as exc:
        raise ProblemError(403, "forbidden", "Forbidden", str(exc)) from None
    except RhythmRefusedError as exc:
        if exc.field is None:
            raise ProblemError(409, exc.kind, "The rhythm cannot be followed", str(exc)) from None
        raise ProblemError(
            422,
            "validation",
            "The request is not valid",
            str(exc),
            errors=[FieldProblem(pointer=exc.field, detail=str(exc), rule=exc.kind)],
        ) from None
    return RhythmAccepted(edges=edges)


def _encode_cursor(seq: int | None) -> str | None:
    if seq is None:
        return None
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    bad = param_problem(
        "cursor", "not a cursor this API gave out; start without one", "cursor_invalid"
    )
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise bad from None
    kind, _, value = text.partition(":")
    # ASCII digits only (int() refuses "²"), and small enough for the journal's 64-bit integers
    if kind != "seq" or not (value.isascii() and value.isdigit()) or len(value) > CURSOR_DIGITS:
        raise bad
    return int(value)
