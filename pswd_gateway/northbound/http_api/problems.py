"""RFC 9457 problem details: every error the API gives names what was wrong and where."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from pydantic_core import InitErrorDetails, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pswd_gateway.config import format_validation_error
from pswd_gateway.journal import JournalError, JournalFullError

__all__ = [
    "PROBLEM_JSON",
    "FieldProblem",
    "Problem",
    "ProblemError",
    "body_not_read",
    "instance_of",
    "problem_response",
    "validation_problems",
]

PROBLEM_JSON = "application/problem+json"
FASTAPI_UNPARSED = "There was an error parsing the body"
"""FastAPI's detail of the 400 it raises when it cannot decode a body (its cause attached)."""
TYPE_PREFIX = "urn:pswd:problem:"


class FieldProblem(BaseModel):
    """One thing wrong with the request."""

    pointer: str
    """JSON Pointer into the body (``#/power_profile/peak_power_mw``), or ``query:NAME`` /
    ``header:NAME`` for parameters."""
    detail: str
    rule: str
    """The rule it broke, e.g. ``greater_than``, ``timezone_aware``, ``extra_forbidden``."""


class Problem(BaseModel):
    """An error answer (``application/problem+json``, RFC 9457)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None


class ProblemError(Exception):
    """Raise to answer with a problem; ``extra`` adds members (e.g. ``earliest_feasible_start``)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldProblem] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.extra = extra


def problem_response(request: Request | None, exc: ProblemError) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + exc.slug,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    if request is not None:
        body["instance"] = instance_of(request)
    if exc.errors is not None:
        body["errors"] = [e.model_dump() for e in exc.errors]
    body.update(exc.extra)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers, media_type=PROBLEM_JSON)


def instance_of(request: Request) -> str:
    """The request's path as the client sent it, percent-encoded (a URI reference, as RFC 9457
    asks): the decoded path may hold characters a URI cannot (``%0A`` became a lost newline)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else quote(request.url.path)


def validation_problems(errors: Sequence[Any]) -> list[FieldProblem]:
    """FastAPI/pydantic validation errors → field problems with JSON pointers."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        where, path = (loc[0], loc[1:]) if loc else ("body", [])
        ctx = e.get("ctx") or {}
        field = ctx.get("field")
        if isinstance(field, str):
            path = [*path, *field.split(".")]
        detail = _detail(e)
        if where == "body":
            pointer = "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)
        else:
            pointer = f"{where}:{'.'.join(path)}"
        out.append(FieldProblem(pointer=pointer, detail=detail, rule=str(e.get("type", "invalid"))))
    return out


def _detail(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"the body is not valid JSON: {error.get('ctx', {}).get('error', 'parse error')}"
    if kind == "timezone_aware":
        return "must carry a timezone (e.g. 2026-11-25T14:00:00Z)"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    return _config_wording(error)


def _config_wording(error: Mapping[str, Any]) -> str:
    """The same wording as config errors (``must be > 0``) where a template exists."""
    try:
        err = ValidationError.from_exception_data(
            "request",
            [
                InitErrorDetails(
                    type=error["type"],
                    loc=(),
                    input=error.get("input"),
                    ctx=error.get("ctx") or {},
                )
            ],
        )
    except (KeyError, TypeError, ValueError):
        return str(error.get("msg", "invalid"))
    (_, message), *_ = format_validation_error(err)
    return message


async def handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(request, exc)


async def handle_journal(request: Request, exc: Exception) -> JSONResponse:
    """The journal could not keep the request: nothing of it was accepted (a full disk: 507,
    anything else: 503), and the answer says so; what was acknowledged before is intact."""
    assert isinstance(exc, JournalError)
    if isinstance(exc, JournalFullError):
        problem = ProblemError(
            507,
            "journal-full",
            "The journal's disk is full",
            f"{exc}. Nothing of this request was kept. Free space on the journal's file system "
            "or shorten its retention ([storage] setpoint_days, workload_days); what was "
            "accepted before is intact.",
            headers={"Retry-After": "60"},
        )
    else:
        problem = ProblemError(
            503,
            "journal-unavailable",
            "The journal cannot be written",
            f"{exc}. Nothing of this request was kept; try again.",
            headers={"Retry-After": "5"},
        )
    return problem_response(request, problem)


async def handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_problems(exc.errors())
    summary = "; ".join(f"{e.pointer}: {e.detail}" for e in errors[:5])
    return problem_response(
        request,
        ProblemError(
            422,
            "validation",
            "The request is not valid",
            summary or "invalid request",
            errors=errors,
        ),
    )


async def handle_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    unreadable = _unreadable_body(exc)
    if unreadable is not None:
        return problem_response(request, unreadable)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such resource: {request.url.path}"
    return problem_response(
        request,
        ProblemError(exc.status_code, slug, detail, detail, headers=exc.headers),
    )


def body_not_read(exc: Exception) -> bool:
    """Whether ``exc`` answers a body FastAPI could not decode as JSON: raised before any
    dependency ran, so before the caller was known."""
    if isinstance(exc, RequestValidationError):
        return any(e.get("type") == "json_invalid" for e in exc.errors())
    return isinstance(exc, StarletteHTTPException) and _unreadable_body(exc) is not None


def _unreadable_body(exc: StarletteHTTPException) -> ProblemError | None:
    """FastAPI answers a body it cannot even decode (not UTF-8, nested deeper than the parser
    goes) with a bare 400 "There was an error parsing the body": it is a body that is not
    JSON, answered like any other (422, ``json_invalid``) and saying why."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None or exc.detail != FASTAPI_UNPARSED:
        return None
    if isinstance(cause, UnicodeDecodeError):
        why = f"not UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset {cause.start})"
    elif isinstance(cause, RecursionError):
        why = "arrays or objects nested too deeply"
    else:
        why = f"cannot be read ({type(cause).__name__})"
    detail = f"the body is not valid JSON: {why}"
    return ProblemError(
        422,
        "validation",
        "The request is not valid",
        f"#/: {detail}",
        errors=[FieldProblem(pointer="#/", detail=detail, rule="json_invalid")],
    )
