"""Bearer tokens → identities, per-token rate limits, and the request-body size limit."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pswd_gateway.config import ApiConfig
from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.domain.identity import Identity
from pswd_gateway.northbound.http_api.problems import ProblemError, problem_response
from pswd_gateway.security.ratelimit import RateLimiter

__all__ = ["BodyLimit", "RateLimiter", "ServerTiming", "TokenBook", "hash_token"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBook:
    """The configured tokens, looked up by the SHA-256 of what the caller presents."""

    def __init__(self, config: ApiConfig) -> None:
        self._by_hash = {t.sha256: Identity(t.name, t.role) for t in config.tokens}

    def identify(self, token: str) -> Identity | None:
        return self._by_hash.get(hash_token(token))


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 before the app sees them.

    The body is read here (bounded) and handed on whole, so an oversized upload costs at most
    ``max_bytes`` of memory and never reaches JSON parsing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            Request(scope),  # the answer names the resource (``instance``), as every problem does
            ProblemError(
                413,
                "body-too-large",
                "Request body too large",
                f"the body exceeds the limit of {self.max_bytes} bytes (api.max_body_bytes)",
                max_body_bytes=self.max_bytes,
            ),
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


@dataclass
class HttpStats:
    """Latency of each route's requests (metrics: ``pswd_http_request_duration_seconds``)."""

    by_route: dict[tuple[str, str], LatencyHistogram] = field(default_factory=dict)

    def observe(self, method: str, route: str, seconds: float) -> None:
        key = (method, route)
        histogram = self.by_route.get(key)
        if histogram is None:
            histogram = self.by_route[key] = LatencyHistogram(window=256)
        histogram.append(seconds)


class ServerTiming:
    """ASGI middleware: every response carries ``Server-Timing: app;dur=<ms>`` (W3C).

    The time from the request reaching the application to its response headers, so a client
    can tell the gateway's own share of a latency from the network's and its own; observed per
    route template (never the raw path: one series per route, whatever the client sends).
    """

    def __init__(self, app: ASGIApp, stats: HttpStats | None = None) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                seconds = time.perf_counter() - t0
                ms = seconds * 1000.0
                if self.stats is not None:
                    route = getattr(scope.get("route"), "path", None) or "unmatched"
                    self.stats.observe(scope.get("method", "?"), route, seconds)
                headers = [*message.get("headers", ()), (b"server-timing", b"app;dur=%.2f" % ms)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
