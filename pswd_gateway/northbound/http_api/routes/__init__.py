"""One ``APIRouter`` per resource; :func:`~pswd_gateway.northbound.http_api.app.create_app`
includes them. Shared here: how a route declares a problem answer and raises a parameter one.
"""

from typing import Any

from pswd_gateway.northbound.http_api.problems import (
    PROBLEM_JSON,
    FieldProblem,
    Problem,
    ProblemError,
)

__all__ = ["param_problem", "problem_answer"]


def problem_answer(description: str | None = None) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry for an RFC 9457 problem."""
    answer: dict[str, Any] = {"model": Problem, "content": {PROBLEM_JSON: {}}}
    if description is not None:
        answer["description"] = description
    return answer


def param_problem(name: str, detail: str, rule: str, where: str = "query") -> ProblemError:
    """A 422 for one query or header parameter that validation could not express."""
    pointer = f"{where}:{name}"
    return ProblemError(
        422,
        "validation",
        "The request is not valid",
        f"{pointer}: {detail}",
        errors=[FieldProblem(pointer=pointer, detail=detail, rule=rule)],
    )
