"""Liveness and readiness probes: no token needed."""

from fastapi import APIRouter, Request

from pswd_gateway.northbound.http_api.problems import ProblemError
from pswd_gateway.northbound.http_api.routes import problem_answer

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the API answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: journal open, pollers running",
    responses={503: problem_answer()},
)
async def readyz(request: Request) -> dict[str, str]:
    context = request.app.state.context
    if context is None or not context.ready():
        raise ProblemError(503, "not-ready", "Not ready", "the gateway is not ready yet")
    return {"status": "ready"}
