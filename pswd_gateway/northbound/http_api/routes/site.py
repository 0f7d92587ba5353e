"""The live site snapshot and the planning forecast."""

from fastapi import APIRouter

from pswd_gateway.northbound.http_api.deps import Context, Reader
from pswd_gateway.northbound.http_api.schemas import ForecastOut, SiteOut

__all__ = ["router"]

router = APIRouter(tags=["site"])


@router.get("/v1/site", summary="The live site snapshot")
async def site(_: Reader, context: Context) -> SiteOut:
    return context.site()


@router.get(
    "/v1/forecast",
    summary="Site load, grid import, battery and heat for the planning horizon",
)
async def forecast(_: Reader, context: Context) -> ForecastOut:
    return ForecastOut.of(context.service.site_forecast())
