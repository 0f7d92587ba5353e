"""What the routes depend on: the running gateway, the caller's identity and its permission.

The token book and the rate limiter are the app's (:class:`Gate` on ``app.state.gate``), the
running gateway is ``app.state.context``; routes ask for them through the aliases at the end.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.northbound.http_api.problems import (
    ProblemError,
    body_not_read,
    problem_response,
)
from pswd_gateway.northbound.http_api.schemas import SiteOut
from pswd_gateway.northbound.http_api.security import RateLimiter, TokenBook
from pswd_gateway.scheduling.service import WorkloadService
from pswd_gateway.security.ratelimit import retry_after
from pswd_gateway.security.zones import Policy

__all__ = [
    "Announcer",
    "ApiContext",
    "Caller",
    "Context",
    "Gate",
    "Reader",
    "api_context",
    "caller_first",
    "identify",
    "require",
]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHENTICATED_PER_S = 20.0
"""Requests per second one client address may make without a known token (then 429)."""

Handler = Callable[[Request, Exception], Awaitable[Response]]

bearer = HTTPBearer(auto_error=False, description="A token from api.tokens")


@dataclass
class ApiContext:
    """What the routes need from the running gateway."""

    service: WorkloadService
    site: Callable[[], SiteOut]
    ready: Callable[[], bool]


@dataclass(frozen=True)
class Gate:
    """Who may come in, and how often: the configured tokens and a rate limit per token; and
    through which conduit (its access is a ceiling over the token's role)."""

    tokens: TokenBook
    limiter: RateLimiter
    policy: Policy | None = None
    strangers: RateLimiter = field(default_factory=lambda: RateLimiter(UNAUTHENTICATED_PER_S))
    """Requests without a known token, per client address: beyond the rate, 429 and the
    connection closed (a flood of bad tokens costs a reconnect, which the door limits too)."""


def api_context(request: Request) -> ApiContext:
    """The running gateway; 503 while it is still starting (no context set yet)."""
    context = request.app.state.context
    if context is None:
        raise ProblemError(503, "starting", "Starting", "the gateway is starting; retry")
    assert isinstance(context, ApiContext)
    return context


async def identify(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Identity:
    """The caller behind the bearer token: 401 without a known token, 429 over its rate."""
    gate = request.app.state.gate
    assert isinstance(gate, Gate)
    who = gate.tokens.identify(credentials.credentials) if credentials else None
    if who is None and credentials is None:
        who = _certificate_holder(request)
    if who is None:
        why = "no bearer token" if credentials is None else "unknown bearer token"
        client = request.client.host if request.client else "?"
        wait = gate.strangers.allow(client)
        if wait > 0:
            raise ProblemError(
                429,
                "rate-limited",
                "Too many requests",
                f"{client} sent more than {gate.strangers.rate_per_s:g} requests/s without a "
                "known bearer token",
                headers={"Retry-After": retry_after(wait), "Connection": "close"},
            )
        if request.method in WRITE_METHODS:
            await api_context(request).service.audit_refusal(None, f"http.{request.method}", why)
        raise ProblemError(
            401,
            "unauthenticated",
            "Authentication required",
            f"{why}: send `Authorization: Bearer <token>` with a token from api.tokens",
            headers={"WWW-Authenticate": 'Bearer realm="pswd-gateway"'},
        )
    wait = gate.limiter.allow(who.name)
    if wait > 0:
        raise ProblemError(
            429,
            "rate-limited",
            "Too many requests",
            f"token {who.name!r} exceeds {gate.limiter.rate_per_s:g} requests/s "
            "(api.rate_limit_per_s)",
            headers={"Retry-After": retry_after(wait)},
        )
    if gate.policy is not None:
        admission = gate.policy.admit("api", request.client.host if request.client else None)
        if admission is None:  # the listener's door refuses these before any request
            raise ProblemError(403, "forbidden", "Forbidden", "no conduit admits this address")
        who = admission.limit(who)
    return who


def caller_first(handler: Handler) -> Handler:
    """An exception handler that, for a body FastAPI could not decode (it does so before any
    dependency runs), first asks who calls: a caller without a known token gets its 401
    (audited, like every refused write) rather than a word about the body."""

    async def handle(request: Request, exc: Exception) -> Response:
        if body_not_read(exc):
            try:
                await identify(request, await bearer(request))
            except ProblemError as refused:
                return problem_response(request, refused)
        return await handler(request, exc)

    return handle


def _certificate_holder(request: Request) -> Identity | None:
    """The holder of the client certificate this connection showed (mutual TLS), if any."""
    peers = getattr(request.app.state, "peers", None)
    client = request.client
    if not peers or client is None:
        return None
    held: Identity | None = peers.get((client.host, client.port))
    return held


def require(permission: Permission) -> Callable[[Request, Identity], Awaitable[Identity]]:
    """A dependency: the caller, if its role has ``permission``; else 403 (audited on writes)."""

    async def check(request: Request, who: Annotated[Identity, Depends(identify)]) -> Identity:
        if not who.can(permission):
            why = who.why_not(permission)
            if request.method != "GET":
                await api_context(request).service.audit_refusal(
                    who, f"http.{request.method} {request.url.path}", why
                )
            raise ProblemError(403, "forbidden", "Forbidden", why)
        return who

    return check


Caller = Annotated[Identity, Depends(identify)]
"""Any known caller; the route (or the service behind it) decides what it may do."""
Reader = Annotated[Identity, Depends(require(Permission.READ))]
Announcer = Annotated[Identity, Depends(require(Permission.ANNOUNCE))]
Context = Annotated[ApiContext, Depends(api_context)]
