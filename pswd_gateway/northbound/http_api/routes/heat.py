"""``GET /v1/heat/offer``: heat for the municipal network, 48 h in 5-minute slots.

The offer is worked out on request from the current plan (the scheduler's site forecast) and
``[heat]`` by :func:`~pswd_gateway.scheduling.heat.offer_from_plan`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from pswd_gateway.northbound.http_api.deps import Context, Reader
from pswd_gateway.scheduling.heat import SUPPLY_RANGE_C, HeatOffer, offer_from_plan

__all__ = ["HeatOfferOut", "HeatSlotOut", "router"]

router = APIRouter(tags=["heat"])


class HeatSlotOut(BaseModel):
    start: datetime
    end: datetime
    heat_mw: float
    """Heat available at ``supply_c`` over the slot."""
    supply_c: float


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
                    start=s.start, end=s.end, heat_mw=round(s.heat_mw, 3), supply_c=s.supply_c
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
    supply_c: Annotated[
        float | None,
        Query(
            ge=SUPPLY_RANGE_C[0],
            le=SUPPLY_RANGE_C[1],
            description="Supply temperature the network asks, °C (default: heat.supply_temp_c)",
        ),
    ] = None,
) -> HeatOfferOut:
    service = context.service
    offer = offer_from_plan(service.clock(), service.site_forecast(), service.config.heat, supply_c)
    return HeatOfferOut.of(offer)
