"""The OpenADR 3 reports the VEN sends while an event is in force: pure (no I/O, no clock).

Two reports per event and report period, both with the event's id and the VEN's name as
``clientName``, one resource (:data:`RESOURCE_NAME`, the site's grid connection):

- **usage** (``<ven>:usage:<event>``): ``DEMAND`` (reading type ``DIRECT_READ``, kW), the grid
  meter's active power now, and ``USAGE`` (``ESTIMATED``, kWh), that power over the report
  period, in one interval per event interval in force (the event's interval ids, as the
  specification asks of reports that answer an event);
- **forecast** (``<ven>:forecast:<event>``): ``DEMAND`` (``FORECAST``, kW), the planned grid
  import of each scheduler slot from now to the end of the event's window.

Both payload types are not negative in the specification: an export is reported as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

__all__ = [
    "FORECAST_SLOTS_OPEN_ENDED",
    "MAX_FORECAST_SLOTS",
    "RESOURCE_NAME",
    "forecast_report",
    "iso_duration",
    "usage_report",
]

RESOURCE_NAME: Final = "grid-connection"
MAX_FORECAST_SLOTS: Final = 288
"""A forecast report carries at most this many slots (a day of 5-minute slots)."""
FORECAST_SLOTS_OPEN_ENDED: Final = 12
"""Slots forecast for an event without an end."""


def iso_duration(seconds: float) -> str:
    """``seconds`` as an ISO 8601 duration (``PT60S``, ``PT0.25S``)."""
    if float(seconds).is_integer():
        return f"PT{int(seconds)}S"
    return f"PT{seconds:.3f}".rstrip("0").rstrip(".") + "S"


def _descriptor(payload_type: str, reading_type: str, units: str) -> dict[str, Any]:
    return {
        "objectType": "REPORT_PAYLOAD_DESCRIPTOR",
        "payloadType": payload_type,
        "readingType": reading_type,
        "units": units,
    }


def _kw(mw: float) -> float:
    return round(max(0.0, mw) * 1000.0, 3)


def usage_report(
    *,
    event_id: str,
    ven_name: str,
    interval_ids: Sequence[int],
    measured_mw: float,
    at: datetime,
    period_s: float,
) -> dict[str, Any]:
    """The delivered load at ``at``: DEMAND (kW) now and USAGE (kWh) over the last period."""
    demand_kw = _kw(measured_mw)
    usage_kwh = round(demand_kw * period_s / 3600.0, 6)
    start = (at - timedelta(seconds=period_s)).isoformat()
    return {
        "eventID": event_id,
        "clientName": ven_name,
        "reportName": f"{ven_name}:usage:{event_id}",
        "payloadDescriptors": [
            _descriptor("DEMAND", "DIRECT_READ", "KW"),
            _descriptor("USAGE", "ESTIMATED", "KWH"),
        ],
        "resources": [
            {
                "resourceName": RESOURCE_NAME,
                "intervalPeriod": {"start": start, "duration": iso_duration(period_s)},
                "intervals": [
                    {
                        "id": interval_id,
                        "payloads": [
                            {"type": "DEMAND", "values": [demand_kw]},
                            {"type": "USAGE", "values": [usage_kwh]},
                        ],
                    }
                    for interval_id in sorted(set(interval_ids))
                ],
            }
        ],
    }


def forecast_report(
    *,
    event_id: str,
    ven_name: str,
    planned: Sequence[tuple[datetime, float]],
    slot_s: int,
    now: datetime,
    until: datetime | None,
) -> dict[str, Any]:
    """The planned import (``planned``: slot start, MW) from the slot holding ``now`` until
    ``until`` (None: :data:`FORECAST_SLOTS_OPEN_ENDED` slots), at most
    :data:`MAX_FORECAST_SLOTS`."""
    slot = timedelta(seconds=slot_s)
    ahead = [(start, mw) for start, mw in planned if start + slot > now]
    if until is None:
        ahead = ahead[:FORECAST_SLOTS_OPEN_ENDED]
    else:
        ahead = [(start, mw) for start, mw in ahead if start < until]
    ahead = ahead[:MAX_FORECAST_SLOTS]
    return {
        "eventID": event_id,
        "clientName": ven_name,
        "reportName": f"{ven_name}:forecast:{event_id}",
        "payloadDescriptors": [_descriptor("DEMAND", "FORECAST", "KW")],
        "resources": [
            {
                "resourceName": RESOURCE_NAME,
                "intervals": [
                    {
                        "id": i,
                        "intervalPeriod": {
                            "start": start.isoformat(),
                            "duration": iso_duration(slot_s),
                        },
                        "payloads": [{"type": "DEMAND", "values": [_kw(mw)]}],
                    }
                    for i, (start, mw) in enumerate(ahead)
                ],
            }
        ],
    }
