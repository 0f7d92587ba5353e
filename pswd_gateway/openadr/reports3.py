"""The OpenADR 3 reports the VEN sends while an event is in force: pure (no I/O, no clock).

Two reports per event and report period, both with the event's id and the VEN's name as
``clientName``, one resource (:data:`RESOURCE_NAME`, the site's grid connection), and with a
heat plant a third one, the heat offer (:func:`heat_offer_report`, resource
:data:`HEAT_RESOURCE_NAME`):

- **usage** (``<ven>:usage:<event>``): ``DEMAND`` (reading type ``DIRECT_READ``, kW), the grid
  meter's active power now, and ``USAGE`` (``ESTIMATED``, kWh), that power over the report
  period, in one interval per event interval in force (the event's interval ids, as the
  specification asks of reports that answer an event);
- **forecast** (``<ven>:forecast:<event>``): ``DEMAND`` (``FORECAST``, kW), the planned grid
  import of each scheduler slot from now to the end of the event's window.

Both payload types are not negative in the specification: an export is reported as 0.

The heat offer (``<ven>:heat:<event>``) has no payload type in the specification; it uses two
private ones (the specification allows any string): :data:`HEAT_OFFER_PAYLOAD` (``FORECAST``,
kW), the heat available at the supply temperature, and :data:`SUPPLY_TEMP_PAYLOAD`
(``FORECAST``, ``CELSIUS``), that temperature, one interval per 5-minute slot of the offer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from pswd_gateway.scheduling.heat import OFFER_SLOTS, HeatOffer

__all__ = [
    "FORECAST_SLOTS_OPEN_ENDED",
    "HEAT_OFFER_PAYLOAD",
    "HEAT_RESOURCE_NAME",
    "MAX_FORECAST_SLOTS",
    "MAX_HEAT_SLOTS",
    "RESOURCE_NAME",
    "SUPPLY_TEMP_PAYLOAD",
    "forecast_report",
    "heat_offer_report",
    "iso_duration",
    "usage_report",
]

RESOURCE_NAME: Final = "grid-connection"
MAX_FORECAST_SLOTS: Final = 288
"""A forecast report carries at most this many slots (a day of 5-minute slots)."""
FORECAST_SLOTS_OPEN_ENDED: Final = 12
"""Slots forecast for an event without an end."""
HEAT_RESOURCE_NAME: Final = "heat-recovery"
"""The heat offer's resource: the heat-recovery plant's connection to the heat network."""
HEAT_OFFER_PAYLOAD: Final = "X_HEAT_OFFER"
"""Heat available at the slot's supply temperature, kW (a private payload type)."""
SUPPLY_TEMP_PAYLOAD: Final = "X_HEAT_SUPPLY_TEMPERATURE"
"""The supply temperature the heat is offered at, °C (a private payload type)."""
MAX_HEAT_SLOTS: Final = OFFER_SLOTS
"""A heat-offer report carries at most this many intervals (48 h of 5-minute slots)."""


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


def heat_offer_report(*, event_id: str, ven_name: str, offer: HeatOffer) -> dict[str, Any]:
    """The heat offer: per slot (at most :data:`MAX_HEAT_SLOTS`, from the 5-minute boundary at
    or before the offer's ``generated_at``) the heat available (kW, to the watt, never below 0)
    and the supply temperature it is offered at (°C, to a hundredth), each interval with its
    own period."""
    return {
        "eventID": event_id,
        "clientName": ven_name,
        "reportName": f"{ven_name}:heat:{event_id}",
        "payloadDescriptors": [
            _descriptor(HEAT_OFFER_PAYLOAD, "FORECAST", "KW"),
            _descriptor(SUPPLY_TEMP_PAYLOAD, "FORECAST", "CELSIUS"),
        ],
        "resources": [
            {
                "resourceName": HEAT_RESOURCE_NAME,
                "intervals": [
                    {
                        "id": i,
                        "intervalPeriod": {
                            "start": slot.start.isoformat(),
                            "duration": iso_duration((slot.end - slot.start).total_seconds()),
                        },
                        "payloads": [
                            {"type": HEAT_OFFER_PAYLOAD, "values": [_kw(slot.heat_mw)]},
                            {"type": SUPPLY_TEMP_PAYLOAD, "values": [round(slot.supply_c, 2)]},
                        ],
                    }
                    for i, slot in enumerate(offer.slots[:MAX_HEAT_SLOTS])
                ],
            }
        ],
    }
