"""Typed clients of the workload API, async and sync, shaped like the seed's example::

    pswd = PswdClient("http://127.0.0.1:8080", token="pswd-demo-submitter")
    workload = pswd.workload.announce({
        "workload_type": "ai_training",
        "power_profile": {"peak_power_mw": 200, "ramp_rate_mw_per_sec": 50,
                          "duration_estimate_sec": 3600},
        "timing_constraints": {"earliest_start_time": "2026-11-25T14:00:00Z",
                               "deadline": "2026-11-25T20:00:00Z"},
    })
    print(workload.state, workload.allocation.scheduled_start)

Errors from the API raise :class:`ApiError` carrying the problem body (``problem["errors"]``
lists each field problem).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

import httpx

from pswd_gateway.domain.workloads import Announcement, Workload, WorkloadState
from pswd_gateway.errors import PswdError
from pswd_gateway.security.tls import default_client_context

__all__ = ["ApiError", "AsyncPswdClient", "Event", "PswdClient", "WorkloadList"]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 10.0


class ApiError(PswdError):
    """The API answered with an error; ``problem`` is its RFC 9457 body."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        detail = problem.get("detail") or problem.get("title") or "error"
        super().__init__(f"HTTP {status}: {detail}")


@dataclass(frozen=True)
class WorkloadList:
    items: list[Workload]
    next_cursor: str | None


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    id: int
    type: str
    workload_id: str | None
    at: datetime
    data: dict[str, Any]


AnnouncementLike = Announcement | Mapping[str, Any]


def _announcement_body(announcement: AnnouncementLike) -> dict[str, Any]:
    if isinstance(announcement, Announcement):
        return announcement.model_dump(mode="json", exclude_none=True)
    return dict(announcement)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:500]}
        if not isinstance(problem, dict):
            problem = {"detail": str(problem)}
        raise ApiError(response.status_code, problem)
    return response


def _list_params(
    states: list[WorkloadState] | None, limit: int, cursor: str | None
) -> list[tuple[str, str | int | float | bool | None]]:
    params: list[tuple[str, str | int | float | bool | None]] = [("limit", limit)]
    params += [("state", s.value) for s in states or ()]
    if cursor:
        params.append(("cursor", cursor))
    return params


def _parse_sse(lines: list[str]) -> Event | None:
    data = [line[5:].lstrip() for line in lines if line.startswith("data:")]
    if not data:
        return None
    body = json.loads("\n".join(data))
    return Event(
        id=int(body["id"]),
        type=str(body["type"]),
        workload_id=body.get("workload_id"),
        at=datetime.fromisoformat(body["at"]),
        data=body.get("data", {}),
    )


class _AsyncWorkloads:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def announce(
        self, announcement: AnnouncementLike, *, idempotency_key: str | None = None
    ) -> Workload:
        """Announce; retried safely under one ``Idempotency-Key`` (a new one by default)."""
        key = idempotency_key or str(uuid.uuid4())
        response = await self._http.post(
            "/v1/workloads",
            json=_announcement_body(announcement),
            headers={"Idempotency-Key": key},
        )
        return Workload.model_validate_json(_check(response).content)

    async def get(self, workload_id: str) -> Workload:
        response = await self._http.get(f"/v1/workloads/{workload_id}")
        return Workload.model_validate_json(_check(response).content)

    async def list(
        self,
        states: list[WorkloadState] | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> WorkloadList:
        response = await self._http.get("/v1/workloads", params=_list_params(states, limit, cursor))
        body = _check(response).json()
        return WorkloadList(
            [Workload.model_validate(w) for w in body["items"]], body.get("next_cursor")
        )

    async def _act(self, workload_id: str, action: str, reason: str | None) -> Workload:
        response = await self._http.post(
            f"/v1/workloads/{workload_id}/{action}",
            json={"reason": reason} if reason else None,
        )
        return Workload.model_validate_json(_check(response).content)

    async def start(self, workload_id: str, reason: str | None = None) -> Workload:
        return await self._act(workload_id, "start", reason)

    async def complete(self, workload_id: str, reason: str | None = None) -> Workload:
        return await self._act(workload_id, "complete", reason)

    async def cancel(self, workload_id: str, reason: str | None = None) -> Workload:
        return await self._act(workload_id, "cancel", reason)

    async def tell_rhythm(self, workload_id: str, edges: Sequence[tuple[datetime, bool]]) -> int:
        """Tell the running job's next rhythm edges ``(middle, rise)``; the edges taken."""
        body = {
            "edges": [
                {"at": at.isoformat(), "direction": "rise" if rise else "fall"}
                for at, rise in edges
            ]
        }
        response = await self._http.post(f"/v1/workloads/{workload_id}/rhythm", json=body)
        return int(_check(response).json()["edges"])


class AsyncPswdClient:
    """Async client; ``async with AsyncPswdClient(url, token) as pswd: ...``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str = "",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
            verify=default_client_context(),
        )
        self.workload = _AsyncWorkloads(self._http)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def site(self) -> dict[str, Any]:
        body: dict[str, Any] = _check(await self._http.get("/v1/site")).json()
        return body

    async def forecast(self) -> dict[str, Any]:
        body: dict[str, Any] = _check(await self._http.get("/v1/forecast")).json()
        return body

    async def events(
        self, last_event_id: int | None = None, *, workload: str | None = None
    ) -> AsyncIterator[Event]:
        """Follow the event stream, resuming after ``last_event_id``; runs until cancelled."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        params = {"workload": workload} if workload else {}
        async with self._http.stream(
            "GET", "/v1/events", headers=headers, params=params, timeout=httpx.Timeout(None)
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                _check(response)
            block: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    block.append(line)
                    continue
                event = _parse_sse(block)
                block = []
                if event is not None:
                    yield event


class _SyncWorkloads:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def announce(
        self, announcement: AnnouncementLike, *, idempotency_key: str | None = None
    ) -> Workload:
        key = idempotency_key or str(uuid.uuid4())
        response = self._http.post(
            "/v1/workloads",
            json=_announcement_body(announcement),
            headers={"Idempotency-Key": key},
        )
        return Workload.model_validate_json(_check(response).content)

    def get(self, workload_id: str) -> Workload:
        return Workload.model_validate_json(
            _check(self._http.get(f"/v1/workloads/{workload_id}")).content
        )

    def list(
        self,
        states: list[WorkloadState] | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> WorkloadList:
        body = _check(
            self._http.get("/v1/workloads", params=_list_params(states, limit, cursor))
        ).json()
        return WorkloadList(
            [Workload.model_validate(w) for w in body["items"]], body.get("next_cursor")
        )

    def _act(self, workload_id: str, action: str, reason: str | None) -> Workload:
        response = self._http.post(
            f"/v1/workloads/{workload_id}/{action}",
            json={"reason": reason} if reason else None,
        )
        return Workload.model_validate_json(_check(response).content)

    def start(self, workload_id: str, reason: str | None = None) -> Workload:
        return self._act(workload_id, "start", reason)

    def complete(self, workload_id: str, reason: str | None = None) -> Workload:
        return self._act(workload_id, "complete", reason)

    def cancel(self, workload_id: str, reason: str | None = None) -> Workload:
        return self._act(workload_id, "cancel", reason)


class PswdClient:
    """Blocking client with the same methods; ``with PswdClient(url, token) as pswd: ...``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str = "",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
            verify=default_client_context(),
        )
        self.workload = _SyncWorkloads(self._http)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def site(self) -> dict[str, Any]:
        body: dict[str, Any] = _check(self._http.get("/v1/site")).json()
        return body

    def forecast(self) -> dict[str, Any]:
        body: dict[str, Any] = _check(self._http.get("/v1/forecast")).json()
        return body

    def events(
        self, last_event_id: int | None = None, *, workload: str | None = None
    ) -> Iterator[Event]:
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        params = {"workload": workload} if workload else {}
        with self._http.stream(
            "GET", "/v1/events", headers=headers, params=params, timeout=httpx.Timeout(None)
        ) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            block: list[str] = []
            for line in response.iter_lines():
                if line:
                    block.append(line)
                    continue
                event = _parse_sse(block)
                block = []
                if event is not None:
                    yield event
