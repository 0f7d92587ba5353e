"""``/v1/heat``: heat for the municipal network — the offer, and the network's requests.

``GET /v1/heat/offer``: the offer, 48 h in 5-minute slots, worked out on request from the
current plan (the scheduler's site forecast), ``[heat]`` and the heat requests open, by
:func:`~pswd_gateway.scheduling.heat.offer_from_plan`.

``POST /v1/heat/requests`` (operator): the heat network asks for MW at a supply temperature over
a window. It is a grid signal of kind ``heat_request`` (``POST /v1/grid/signals`` takes the same
body with ``"kind": "heat_request"``): journalled and audited before the answer, the heat-
recovery setpoint follows its supply temperature while it is in force, and the offer shows it.
``GET /v1/heat/requests``: the open ones with the heat delivered against each.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from pswd_gateway.domain.grid_signals import GridSignal, HeatRequest
from pswd_gateway.grid_signals import delivery_json
from pswd_gateway.northbound.http_api.deps import Context, Reader
from pswd_gateway.northbound.http_api.routes import problem_answer
from pswd_gateway.northbound.http_api.routes.grid_signals import Operator, Signals, submit_signal
from pswd_gateway.scheduling.heat import SUPPLY_RANGE_C, HeatOffer, offer_from_plan, requested_of

__all__ = ["HeatOfferOut", "HeatRequestOut", "HeatSlotOut", "router"]

router = APIRouter(tags=["heat"])


class HeatSlotOut(BaseModel):
    start: datetime
    end: datetime
    heat_mw: float
    """Heat available at ``supply_c`` over the slot."""
    supply_c: float
    requested_mw: float
    """Heat the network's request in force over the slot asks (0: none)."""


class HeatOfferOut(BaseModel):
    """Heat the site can deliver at the network's supply temperature, slot by slot."""

    generated_at: datetime
    supply_c: float
    slot_s: int
    slots: list[HeatSlotOut]

    @classmethod
    def of(cls, offer: HeatOffer) -> HeatOfferOut:
        return cls(
            generated_at=offer.generated_at,
            supply_c=offer.supply_c,
            slot_s=offer.slot_s,
            slots=[
                HeatSlotOut(
                    start=s.start,
                    end=s.end,
                    heat_mw=round(s.heat_mw, 3),
                    supply_c=s.supply_c,
                    requested_mw=s.requested_mw,
                )
                for s in offer.slots
            ],
        )


@router.get(
    "/v1/heat/offer",
    summary="Heat for the municipal network at its supply temperature, 48 h in 5-minute slots",
)
async def heat_offer(
    _: Reader,
    context: Context,
    signals: Signals,
    supply_c: Annotated[
        float | None,
        Query(
            ge=SUPPLY_RANGE_C[0],
            le=SUPPLY_RANGE_C[1],
            description="Supply temperature the network asks, °C (default: heat.supply_temp_c;"
            " slots inside an open heat request's window are at the request's)",
        ),
    ] = None,
) -> HeatOfferOut:
    service = context.service
    requests = requested_of(signals.open_signals())
    offer = offer_from_plan(
        service.clock(), service.site_forecast(), service.config.heat, supply_c, requests
    )
    return HeatOfferOut.of(offer)


class HeatRequestOut(BaseModel):
    """An open heat request and the heat delivered against it so far."""

    signal: GridSignal
    delivery: dict[str, Any] | None
    """Requested against delivered (MW, mean over the samples while in force); null before
    its window opens."""


@router.post(
    "/v1/heat/requests",
    status_code=201,
    summary="Ask for heat over a window (operator): MW at a supply temperature",
    responses={422: problem_answer("Not a valid heat request (the field and the rule are named)")},
)
async def request_heat(
    body: HeatRequest,
    response: Response,
    who: Operator,
    signals: Signals,
    context: Context,
) -> GridSignal:
    return await submit_signal(body, who, signals, context, response)


@router.get("/v1/heat/requests", summary="Open heat requests and the heat delivered against each")
async def heat_requests(_: Reader, signals: Signals) -> list[HeatRequestOut]:
    out = []
    for s in signals.open_signals():
        if not isinstance(s.signal, HeatRequest):
            continue
        delivery = signals.delivery(s.id)
        out.append(
            HeatRequestOut(
                signal=s, delivery=None if delivery is None else delivery_json(delivery.report())
            )
        )
    return out
