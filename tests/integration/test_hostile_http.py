"""Hostile HTTP clients against the live workload API (uvicorn on a free loopback port).

schemathesis draws the cases from the app's own OpenAPI document (what ``/openapi.json``
serves and ``docs/api.yaml`` holds): valid and invalid parameters and bodies, each sent with a
valid token of some role, an unknown token, a malformed header or none. Whatever arrives:

- never a 5xx, and never an exception in the server's log;
- every answer conforms to the document (status, content type, headers, body schema);
- every 4xx is an RFC 9457 problem that says what was wrong (``title``, ``detail``) and where
  (``instance``, and a JSON pointer per field for a 422);
- a route behind a token answers 401 to a caller without a known one, never to a known one;
- an announcement that was refused is nowhere: the journal holds exactly the workloads that
  were answered 201.

Hypothesis adds what the document cannot describe: cursors that decode, times at the ends of
the calendar, event ids past the journal's integers, bodies that are not UTF-8.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import schemathesis
from hypothesis import example, given
from hypothesis import strategies as st
from schemathesis import Case
from test_http_api import body, config, start_api

from fuzzing import bounded, long_run_marks
from pswd_gateway.config import ApiConfig
from pswd_gateway.northbound.http_api import create_app
from pswd_gateway.scheduling.service import WorkloadService

pytestmark = [pytest.mark.integration, pytest.mark.fuzz, *long_run_marks()]

AUTHORIZATION = {
    "submitter": "Bearer pswd-demo-submitter",
    "viewer": "Bearer pswd-demo-viewer",
    "operator": "Bearer pswd-demo-operator",
    "admin": "Bearer pswd-demo-admin",
    "unknown": "Bearer not-a-token-of-this-site",
    "bare": "Bearer",
    "basic": "Basic cHN3ZDpwc3dk",
    "none": None,
}
"""Who calls (the ``Authorization`` header): each demo role, a token the site does not know,
the scheme without a token, another scheme, and no header at all."""
KNOWN = frozenset({"submitter", "viewer", "operator", "admin"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""The probes: no token needed."""


class _Errors(logging.Handler):
    """Collects what the server logs at ERROR or above (uvicorn's "Exception in ASGI
    application" among them)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class LiveApi:
    url: str
    service: WorkloadService
    loop: asyncio.AbstractEventLoop
    errors: _Errors
    accepted: set[str] = field(default_factory=set)
    """Ids answered 201 so far: the only workloads the journal may hold."""

    def journal_ids(self) -> set[str]:
        journal = self.service.journal

        async def every_id() -> set[str]:
            ids: set[str] = set()
            after = 0
            while True:
                page, after_seq = await journal.call(
                    journal.sync.list_workloads, after_seq=after, limit=500
                )
                ids |= {w.id for w in page}
                if after_seq is None:
                    return ids
                after = after_seq

        return asyncio.run_coroutine_threadsafe(every_id(), self.loop).result(30)

    def logged_errors(self) -> list[str]:
        """What the server logged at ERROR since the last call (then forgotten)."""
        out = [
            f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[1]!r})" if r.exc_info else "")
            for r in self.errors.records
        ]
        self.errors.records.clear()
        return out


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The API with its journal and scheduler on an event loop of its own (a thread), so that
    the synchronous fuzz requests reach a real uvicorn listener. No rate limit in the way; a
    heartbeat every 50 ms, so a stream shows within the test that it got past its backlog."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hostile-http", daemon=True)
    thread.start()
    tmp: Path = tmp_path_factory.mktemp("hostile-http")
    cfg = config(rate_limit_per_s=100_000.0, sse_heartbeat_s=0.05)
    running, stop = asyncio.run_coroutine_threadsafe(start_api(tmp, cfg), loop).result(30)
    errors = _Errors()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn", "asyncio", "")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        yield LiveApi(running.url, running.service, loop, errors)
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


schema = schemathesis.openapi.from_dict(create_app(ApiConfig()).openapi())
"""The app's own OpenAPI document (a test keeps it equal to ``docs/api.yaml``)."""


def with_caller(headers: dict[str, Any] | None, caller: str) -> dict[str, Any]:
    """The case's headers with the caller's ``Authorization`` instead of any it had."""
    out = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
    if AUTHORIZATION[caller] is not None:
        out["Authorization"] = AUTHORIZATION[caller]
    return out


def content_type(response: Any) -> str:
    """The Content-Type of an httpx or a schemathesis response (whose headers hold lists)."""
    value = response.headers.get("content-type", "")
    return str(value[0] if isinstance(value, list) else value)


def assert_problem(response: Any, path: str) -> None:
    """A 4xx answer is a problem: what was wrong, and where."""
    assert content_type(response) == "application/problem+json", response.text
    problem = response.json()
    assert problem["status"] == response.status_code, problem
    assert problem["type"].startswith("urn:pswd:problem:"), problem
    assert problem["title"], problem
    assert problem["detail"], problem
    assert unquote(problem.get("instance", "")) == unquote(path), problem
    if response.status_code == 422 and problem["type"].endswith(":validation"):
        assert problem["errors"], problem
        for error in problem["errors"]:
            assert error["pointer"].startswith(("#/", "query:", "header:", "path:")), error
            assert error["detail"], error
            assert error["rule"], error


def assert_caller_was_judged(response: Any, path: str, caller: str) -> None:
    """Without a known token, 401 on every route but the probes (or 413: the size limit
    comes first, before a byte of the body is read; or 429: too many such requests from one
    address); with one, never 401."""
    if path in OPEN_PATHS or caller in KNOWN:
        assert response.status_code != 401, response.text
    else:
        assert response.status_code in {401, 413, 429}, response.text


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]


@schema.exclude(path="/v1/events").parametrize()
@schema.given(caller=st.sampled_from(sorted(AUTHORIZATION)))
@bounded(25)
def test_every_answer_conforms_and_no_refused_announcement_is_kept(
    case: Case, caller: str, live_api: LiveApi
) -> None:
    case.headers = with_caller(case.headers, caller)
    response = case.call(base_url=live_api.url, timeout=15)
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        assert_problem(response, case.formatted_path)
    assert_caller_was_judged(response, case.path, caller)
    if case.method.upper() == "POST" and case.path == "/v1/workloads":
        if response.status_code == 201:
            live_api.accepted.add(response.json()["id"])
        assert live_api.journal_ids() == live_api.accepted
    assert live_api.logged_errors() == []


def open_stream(live_api: LiveApi, path: str, params: Any, headers: dict[str, Any]) -> None:
    """The stream never ends by itself: read it to its first heartbeat (past the backlog, so
    a failure reading the journal shows), or read the problem that refused it."""
    with (
        httpx.Client(base_url=live_api.url, timeout=15) as http,
        http.stream("GET", path, params=params, headers=headers) as response,
    ):
        assert response.status_code < 500
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            assert next(lines).startswith("retry:")
            assert ": keep-alive" in lines
            return
        response.read()
        assert 400 <= response.status_code < 500
        assert_problem(response, path)


@schema.include(path="/v1/events").parametrize()
@schema.given(caller=st.sampled_from(sorted(AUTHORIZATION)))
@bounded(25)
def test_the_event_stream_opens_or_answers_a_problem(
    case: Case, caller: str, live_api: LiveApi
) -> None:
    open_stream(live_api, case.formatted_path, case.query, with_caller(case.headers, caller))
    assert live_api.logged_errors() == []


# ---- what the document cannot describe ----------------------------------------------------


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


cursors = st.one_of(
    st.integers(min_value=0, max_value=10**40).map(lambda n: cursor_of(f"seq:{n}")),
    st.text(max_size=40).map(lambda t: cursor_of(f"seq:{t}")),
    st.text(max_size=64),
)
"""Cursors as the API gives them out (``seq:N`` in base64) with any number or text in them,
and arbitrary strings."""
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
)
times = st.builds(
    lambda d, offset: d.isoformat() + offset,
    st.datetimes(),
    offsets,
)
"""RFC 3339 times anywhere in the calendar with any offset (some fall outside it in UTC)."""


@given(cursor=st.none() | cursors, start_after=st.none() | times, start_before=st.none() | times)
@example(cursor=cursor_of("seq:" + "9" * 40), start_after=None, start_before=None)
@example(cursor=cursor_of("seq:²"), start_after=None, start_before=None)
@example(cursor=None, start_after="9999-12-31T23:59:59-23:59", start_before=None)
@example(cursor=None, start_after=None, start_before="0001-01-01T00:00:00+23:59")
@bounded(60)
def test_listing_with_any_cursor_and_window_is_a_page_or_a_problem(
    cursor: str | None, start_after: str | None, start_before: str | None, live_api: LiveApi
) -> None:
    params = {
        k: v
        for k, v in (
            ("cursor", cursor),
            ("start_after", start_after),
            ("start_before", start_before),
        )
        if v is not None
    }
    r = httpx.get(
        f"{live_api.url}/v1/workloads",
        params=params,
        headers={"Authorization": AUTHORIZATION["viewer"]},
        timeout=15,
    )
    assert r.status_code in {200, 422}, r.text
    if r.status_code == 422:
        assert_problem(r, "/v1/workloads")
        assert r.json()["errors"][0]["pointer"].startswith("query:")
    assert live_api.logged_errors() == []


event_ids = st.integers(min_value=-(2**70), max_value=2**70)


@given(query=st.none() | event_ids, header=st.none() | event_ids.map(str) | st.text(max_size=30))
@example(query=10**30, header=None)
@example(query=None, header=str(10**30))
@bounded(30)
def test_resuming_the_event_stream_after_any_id_opens_it_or_is_a_problem(
    query: int | None, header: str | None, live_api: LiveApi
) -> None:
    headers = {"Authorization": AUTHORIZATION["viewer"]}
    if header is not None:
        if header != header.strip() or not header.isprintable() or not header.isascii():
            header = header.encode("unicode_escape").decode("ascii").strip() or "x"
        headers["Last-Event-ID"] = header
    params = {} if query is None else {"last_event_id": query}
    open_stream(live_api, "/v1/events", params, headers)
    assert live_api.logged_errors() == []


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=2000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=900).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)


@given(raw=raw_bodies, path=st.sampled_from(["/v1/workloads", "/v1/workloads/wl_x/cancel"]))
@example(raw=b"\xff\xfe{}", path="/v1/workloads")
@example(raw=b"d\x97\x18\xfd\xd3\x04\n", path="/v1/workloads/wl_x/cancel")
@example(raw=b"[" * 2000 + b"]" * 2000, path="/v1/workloads")
@bounded(40)
def test_a_body_that_is_not_json_is_a_422_naming_the_body(
    raw: bytes, path: str, live_api: LiveApi
) -> None:
    """Not UTF-8, nested deeper than the parser goes, or any bytes at all: a 422 (or 413, or a
    404 for the unknown workload once the body is read) and never FastAPI's bare 400."""
    r = httpx.post(
        f"{live_api.url}{path}",
        content=raw,
        headers={"Authorization": AUTHORIZATION["admin"], "Content-Type": "application/json"},
        timeout=15,
    )
    assert r.status_code in {404, 413, 422}, r.text
    assert_problem(r, path)
    assert live_api.logged_errors() == []


def test_a_window_beyond_the_planning_horizon_is_told_so_not_that_it_passed(
    live_api: LiveApi,
) -> None:
    """A job for next year does not fit yet: the answer says it is beyond the horizon."""
    b = body(start_in_h=24 * 365)
    r = httpx.post(
        f"{live_api.url}/v1/workloads",
        json=b,
        headers={"Authorization": AUTHORIZATION["submitter"]},
        timeout=15,
    )
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["binding_constraint"] == "earliest_start", problem
    assert "after the planning horizon" in problem["detail"], problem
    assert "scheduling.horizon_h" in problem["detail"], problem
    start = datetime.fromisoformat(b["timing_constraints"]["earliest_start_time"])
    assert start - datetime.now(UTC) > timedelta(days=300)
