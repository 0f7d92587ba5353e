"""``/v1/events``: server-sent events of every state and allocation change, resumable by id."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from pswd_gateway.config import ApiConfig
from pswd_gateway.journal import EventRow
from pswd_gateway.northbound.http_api.deps import Context, Reader
from pswd_gateway.northbound.http_api.routes import param_problem
from pswd_gateway.scheduling.service import WorkloadService

__all__ = ["router"]

EVENT_PAGE = 500
"""Backlog rows read from the journal at a time before the stream turns live."""
MAX_EVENT_ID = 2**63 - 1
"""The largest event id the journal can hold (SQLite's INTEGER): a larger one is no id of it."""

router = APIRouter(tags=["events"])


@router.get(
    "/v1/events",
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
    last_event_id: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Same as the header")
    ] = None,
    workload: Annotated[str | None, Query(description="Only this workload's events")] = None,
) -> StreamingResponse:
    start = last_event_id if last_event_id is not None else 0
    if last_event_id_header is not None:
        try:
            start = int(last_event_id_header)
        except ValueError:
            raise param_problem(
                "Last-Event-ID", "must be an event id (integer)", "int_parsing", "header"
            ) from None
        if start < 0:
            raise param_problem("Last-Event-ID", "must be ≥ 0", "greater_than_equal", "header")
        if start > MAX_EVENT_ID:
            raise param_problem(
                "Last-Event-ID", f"must be ≤ {MAX_EVENT_ID}", "less_than_equal", "header"
            )
    stream = _event_stream(context.service, start, workload, context.service.config.api)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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
            try:  # asyncio.timeout, not wait_for: on 3.11 that can swallow a cancellation
                async with asyncio.timeout(config.sse_heartbeat_s):
                    event = await queue.get()
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
