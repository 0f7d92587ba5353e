"""Carbon-aware placement of announced workloads (HiGHS) and the workload service."""

from pswd_gateway.scheduling.model import (
    CarbonForecast,
    OptimiseResult,
    PlacedJob,
    SiteForecast,
    SiteForecastSlot,
)
from pswd_gateway.scheduling.scheduler import Scheduler

__all__ = [
    "CarbonForecast",
    "OptimiseResult",
    "PlacedJob",
    "Scheduler",
    "SiteForecast",
    "SiteForecastSlot",
]
