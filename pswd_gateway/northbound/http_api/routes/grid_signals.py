"""``/v1/grid/signals``: grid signals over HTTP (send, list, withdraw), the same objects as the
OPC UA and IEC 61850 doors make (:mod:`pswd_gateway.grid_signals`, docs/grid.md)."""

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

from pswd_gateway.domain.grid_signals import (
    CarbonLevel,
    FastFrequencyResponse,
    GridSignal,
    HeatRequest,
    ImportLimit,
    PriceLevel,
    Shed,
    SignalInvalidError,
    SignalKind,
    SignalRequest,
    SignalSource,
)
from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.errors import ForbiddenError, NotFoundError
from pswd_gateway.grid_signals import GridSignalService, delivery_json
from pswd_gateway.northbound.http_api.deps import ApiContext, Context, Reader, require
from pswd_gateway.northbound.http_api.problems import FieldProblem, ProblemError
from pswd_gateway.northbound.http_api.routes import problem_answer

__all__ = ["EffectiveOut", "GridSignalsOut", "Operator", "Signals", "router", "submit_signal"]

_KINDS = frozenset(k.value for k in SignalKind)


class _UntaggedErrors(APIRoute):
    """Validation errors of a body of several kinds name the field as sent (``/shed_mw``),
    not under the kind pydantic chose by ``kind`` (``/shed/shed_mw``); an unknown or missing
    kind is ``/kind``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = []
                for error in exc.errors():
                    loc = tuple(error.get("loc", ()))
                    if len(loc) > 1 and loc[0] == "body" and loc[1] in _KINDS:
                        error = {**error, "loc": (loc[0], *loc[2:])}  # noqa: PLW2901
                    elif loc == ("body",) and str(error.get("type")).startswith("union_tag"):
                        error = {**error, "loc": ("body", "kind")}  # noqa: PLW2901
                    errors.append(error)
                raise RequestValidationError(errors, body=exc.body) from None

        return handle


router = APIRouter(tags=["grid signals"], route_class=_UntaggedErrors)

Operator = Annotated[Identity, Depends(require(Permission.OPERATE))]


class EffectiveOut(BaseModel):
    """What the signals in force ask of the site now (docs/grid.md, the rules)."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    import_limit_mw: float | None
    """The strictest import limit of the signals; null: none limits the import."""
    import_limit_by: str | None
    site_import_limit_mw: float
    """The limit in force at the site: the site's own, lowered by the signals."""
    shed_mw: float
    ffr: dict[str, Any] | None
    price: dict[str, Any] | None
    carbon: dict[str, Any] | None
    heat_request: dict[str, Any] | None
    in_force: list[str]


class GridSignalsOut(BaseModel):
    """The open signals (not withdrawn, window not ended), the recent ones, what is in force."""

    model_config = ConfigDict(frozen=True)

    open: list[GridSignal]
    recent: list[GridSignal]
    effective: EffectiveOut


def _service(request: Request) -> GridSignalService:
    service = getattr(request.app.state, "grid_signals", None)
    if not isinstance(service, GridSignalService):
        raise ProblemError(503, "starting", "Starting", "grid signals are not available yet; retry")
    return service


Signals = Annotated[GridSignalService, Depends(_service)]


@router.post(
    "/v1/grid/signals",
    status_code=201,
    summary="Send a grid signal (operator); the answer is the signal as kept",
    responses={422: problem_answer("Not a valid signal (the field and the rule are named)")},
)
async def send(
    body: SignalRequest,
    response: Response,
    who: Operator,
    signals: Signals,
    context: Context,
) -> GridSignal:
    return await submit_signal(body, who, signals, context, response)


async def submit_signal(
    body: ImportLimit | Shed | FastFrequencyResponse | PriceLevel | CarbonLevel | HeatRequest,
    who: Identity,
    signals: GridSignalService,
    context: ApiContext,
    response: Response,
) -> GridSignal:
    """A signal sent over HTTP: accepted (``Location`` names it), or a problem answer naming
    what was wrong."""
    try:
        signal = await signals.submit(body, SignalSource.HTTP, who)
    except ForbiddenError as exc:
        raise ProblemError(403, "forbidden", "Forbidden", str(exc)) from None
    except SignalInvalidError as exc:
        await context.service.audit_refusal(who, "grid signal", str(exc))
        raise ProblemError(
            422,
            "validation",
            "The request is not valid",
            str(exc),
            errors=[FieldProblem(pointer="#" + exc.field, detail=exc.message, rule="window")],
        ) from None
    response.headers["Location"] = f"/v1/grid/signals/{signal.id}"
    return signal


@router.get("/v1/grid/signals", summary="Grid signals: open, recent, and what is in force")
async def list_signals(
    _: Reader,
    signals: Signals,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many recent ones")] = 50,
) -> GridSignalsOut:
    journal = signals.journal
    recent = await journal.call(journal.sync.recent_grid_signals, limit)
    now = signals.clock()
    effective = signals.effective(now)
    return GridSignalsOut(
        open=signals.open_signals(),
        recent=recent,
        effective=EffectiveOut(
            at=now,
            import_limit_mw=effective.import_limit_mw,
            import_limit_by=effective.import_limit_by,
            site_import_limit_mw=signals.settings.current.import_limit_mw,
            shed_mw=effective.shed_mw,
            ffr=_dump(effective.ffr),
            price=_dump(effective.price),
            carbon=_dump(effective.carbon),
            heat_request=_dump(effective.heat_request),
            in_force=list(effective.in_force),
        ),
    )


@router.delete(
    "/v1/grid/signals/{signal_id}",
    summary="Withdraw an open grid signal (operator)",
    responses={404: problem_answer("No open signal by that id")},
)
async def withdraw(signal_id: str, who: Operator, signals: Signals) -> GridSignal:
    try:
        return await signals.withdraw(signal_id, who)
    except NotFoundError as exc:
        raise ProblemError(404, "not-found", "Not found", str(exc)) from None
    except ForbiddenError as exc:
        raise ProblemError(403, "forbidden", "Forbidden", str(exc)) from None


@router.get(
    "/v1/grid/signals/{signal_id}/delivery",
    summary="Requested against delivered of a limit, shed or heat request, over its window",
    responses={404: problem_answer("No delivery measured for that id")},
)
async def delivery(
    signal_id: str,
    _: Reader,
    signals: Signals,
    series: Annotated[
        bool, Query(description="Include every sample (time, asked, measured)")
    ] = False,
) -> dict[str, Any]:
    kept = signals.delivery(signal_id)
    if kept is None:
        raise ProblemError(
            404,
            "not-found",
            "Not found",
            f"no delivery measured for {signal_id!r}: not a limit, shed or heat request, not in "
            "force yet, or ended before the last hundred",
        )
    out = delivery_json(kept.report())
    out["ended"] = kept.ended
    if series:
        out["series"] = [
            {"at": s.at.isoformat(), "asked_mw": s.asked_mw, "measured_mw": s.measured_mw}
            for s in kept.samples
        ]
    return out


def _dump(body: BaseModel | None) -> dict[str, Any] | None:
    return None if body is None else body.model_dump(mode="json")
