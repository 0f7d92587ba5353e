"""Telemetry: the power MetricReport, the TelemetryService and EventService that describe it,
and the server-sent event feed that streams it.

One ``MetricReport`` (``TelemetryService/MetricReports/PowerReport``) carries every rack's power,
inlet temperature and power limit. The same report is streamed every ``interval_s`` at
``EventService.ServerSentEventUri``, so a client need not GET hundreds of resources.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from pswd_gateway.logging import get_logger
from pswd_gateway.simulation.redfish.backend import RedfishTwinBackend
from pswd_gateway.simulation.redfish.documents import (
    OK,
    TYPES,
    V1,
    RedfishJSON,
    chassis_uri,
    collection,
    iso,
    ref,
)
from pswd_gateway.simulation.redfish.registry import RedfishError

__all__ = ["REPORT_ID", "SSE_HEADERS", "ReportFeed", "Telemetry", "last_event_id"]

log = get_logger("simulation.redfish")

REPORT_ID: Final = "PowerReport"
SSE_HISTORY: Final = 64
"""Events kept for clients that reconnect with ``Last-Event-ID``."""
SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_TELEMETRY: Final = V1 + "/TelemetryService"
_DEFINITION: Final = f"{_TELEMETRY}/MetricReportDefinitions/{REPORT_ID}"
_REPORT: Final = f"{_TELEMETRY}/MetricReports/{REPORT_ID}"


def last_event_id(raw: str | None) -> int | None:
    """A ``Last-Event-ID`` header as a sequence number; ``None`` when absent or not one."""
    if raw is not None and raw.isascii() and raw.isdigit() and len(raw) < 19:
        return int(raw)
    return None


class Telemetry:
    """The report and the resources that describe it, read from ``backend`` when asked."""

    def __init__(self, backend: RedfishTwinBackend, interval_s: float) -> None:
        self.backend = backend
        self.interval_s = interval_s
        self._seq = 0

    def next_report(self) -> tuple[int, dict[str, Any]]:
        """The power report, read from the backend now, with the next ``ReportSequence``."""
        values: list[dict[str, str]] = []
        newest = -math.inf
        for cid in self.backend.chassis_ids():
            reading = self.backend.chassis_reading(cid)
            if math.isfinite(reading.timestamp):
                newest = max(newest, reading.timestamp)
            stamp = iso(reading.timestamp)
            prefix = chassis_uri(cid) + "/EnvironmentMetrics#/"
            limit = self.backend.power_limit_w(cid)
            for metric, prop, value in (
                ("PowerWatts", "PowerWatts/Reading", reading.power_w),
                ("TemperatureCelsius", "TemperatureCelsius/Reading", reading.inlet_temp_c),
                ("PowerLimitWatts", "PowerLimitWatts/SetPoint", limit),
            ):
                if value is not None and math.isfinite(value):
                    values.append(
                        {
                            "MetricId": metric,
                            "MetricValue": repr(float(value)),
                            "Timestamp": stamp,
                            "MetricProperty": prefix + prop,
                        }
                    )
        self._seq += 1
        return self._seq, {
            "@odata.id": _REPORT,
            "@odata.type": TYPES["MetricReport"],
            "Id": REPORT_ID,
            "Name": "Rack power report",
            "ReportSequence": str(self._seq),
            "Timestamp": iso(newest if math.isfinite(newest) else time.time()),
            "MetricReportDefinition": ref(_DEFINITION),
            "MetricValues": values,
        }

    def _duration(self) -> str:
        return f"PT{self.interval_s:g}S"

    # ---- resources -----------------------------------------------------------------------------

    async def service(self, _: Request) -> Response:
        """``GET /redfish/v1/TelemetryService``."""
        return RedfishJSON(
            {
                "@odata.id": _TELEMETRY,
                "@odata.type": TYPES["TelemetryService"],
                "Id": "TelemetryService",
                "Name": "Telemetry Service",
                "ServiceEnabled": True,
                "MinCollectionInterval": self._duration(),
                "MetricReportDefinitions": ref(_TELEMETRY + "/MetricReportDefinitions"),
                "MetricReports": ref(_TELEMETRY + "/MetricReports"),
                "Status": OK,
            }
        )

    async def definitions(self, _: Request) -> Response:
        uri = _TELEMETRY + "/MetricReportDefinitions"
        return RedfishJSON(
            collection(
                uri,
                "MetricReportDefinitionCollection",
                "Metric Report Definition Collection",
                [_DEFINITION],
            )
        )

    async def definition(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        if rid != REPORT_ID:
            raise RedfishError(404, "ResourceNotFound", "MetricReportDefinition", rid)
        pattern = V1 + "/Chassis/{ChassisId}/EnvironmentMetrics#/"
        return RedfishJSON(
            {
                "@odata.id": _DEFINITION,
                "@odata.type": TYPES["MetricReportDefinition"],
                "Id": REPORT_ID,
                "Name": "Rack power, inlet temperature and power limit",
                "MetricReportDefinitionType": "Periodic",
                "MetricReportDefinitionEnabled": True,
                "Schedule": {"RecurrenceInterval": self._duration()},
                "ReportActions": ["RedfishEvent", "LogToMetricReportsCollection"],
                "ReportUpdates": "Overwrite",
                "Metrics": [
                    {
                        "MetricId": "PowerWatts",
                        "MetricProperties": [pattern + "PowerWatts/Reading"],
                    },
                    {
                        "MetricId": "TemperatureCelsius",
                        "MetricProperties": [pattern + "TemperatureCelsius/Reading"],
                    },
                    {
                        "MetricId": "PowerLimitWatts",
                        "MetricProperties": [pattern + "PowerLimitWatts/SetPoint"],
                    },
                ],
                "Wildcards": [{"Name": "ChassisId", "Values": list(self.backend.chassis_ids())}],
                "MetricReport": ref(_REPORT),
                "Status": OK,
            }
        )

    async def reports(self, _: Request) -> Response:
        uri = _TELEMETRY + "/MetricReports"
        return RedfishJSON(
            collection(uri, "MetricReportCollection", "Metric Report Collection", [_REPORT])
        )

    async def report(self, request: Request) -> Response:
        """``GET …/MetricReports/PowerReport``: built now, with its own ``ReportSequence``."""
        rid = request.path_params["rid"]
        if rid != REPORT_ID:
            raise RedfishError(404, "ResourceNotFound", "MetricReport", rid)
        return RedfishJSON(self.next_report()[1])

    async def event_service(self, _: Request) -> Response:
        """``GET /redfish/v1/EventService``: names the SSE stream."""
        return RedfishJSON(
            {
                "@odata.id": V1 + "/EventService",
                "@odata.type": TYPES["EventService"],
                "Id": "EventService",
                "Name": "Event Service",
                "ServiceEnabled": True,
                "EventFormatTypes": ["MetricReport"],
                "ServerSentEventUri": V1 + "/EventService/SSE",
                "SSEFilterPropertiesSupported": {"MetricReportDefinition": True},
                "Status": OK,
            }
        )


class ReportFeed:
    """One producer for every SSE client.

    While anyone listens, a report is built every ``interval_s`` (on absolute deadlines) and kept
    in a short history, so a client that reconnects with ``Last-Event-ID`` gets what it missed.
    """

    def __init__(self, build: Callable[[], tuple[int, dict[str, Any]]], interval_s: float) -> None:
        self._build = build
        self.interval_s = interval_s
        self._events: deque[tuple[int, bytes]] = deque(maxlen=SSE_HISTORY)
        self._published = asyncio.Event()
        self._listeners = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._epoch = 0  # bumped to end every open stream

    @property
    def listeners(self) -> int:
        return self._listeners

    async def events(self, last_event_id: int | None) -> AsyncGenerator[bytes]:
        """Frames after ``last_event_id`` (or from the newest report), then live ones."""
        if self._closed:
            return
        self._listeners += 1
        try:
            self._ensure_producer()
            cursor = self._cursor(last_event_id)
            epoch = self._epoch
            while not self._closed and epoch == self._epoch:
                published = self._published
                pending = [(seq, frame) for seq, frame in self._events if seq > cursor]
                if not pending:
                    await published.wait()
                    continue
                for seq, frame in pending:
                    cursor = seq
                    yield frame
        finally:
            self._listeners -= 1

    def _cursor(self, last_event_id: int | None) -> int:
        newest = self._events[-1][0] if self._events else 0
        if last_event_id is None or last_event_id > newest:
            return newest - 1 if self._events else 0  # start with the newest report
        return last_event_id

    def _ensure_producer(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._produce(), name="redfish-twin-sse")

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while self._listeners > 0 and not self._closed:
            try:
                seq, doc = self._build()
            except Exception:  # the physics failed: log it, keep the feed alive
                log.exception("redfish_twin_report_failed")
            else:
                data = json.dumps(doc, separators=(",", ":"))
                self._events.append((seq, f"id: {seq}\ndata: {data}\n\n".encode()))
                self._publish()
            deadline += self.interval_s
            now = loop.time()
            deadline = max(deadline, now)  # a late slot is skipped, never queued
            await asyncio.sleep(deadline - now)

    def _publish(self) -> None:
        published, self._published = self._published, asyncio.Event()
        published.set()

    def end_streams(self) -> None:
        """End every open stream (clients reconnect); the feed stays usable."""
        self._epoch += 1
        self._publish()

    async def close(self) -> None:
        """End every stream and stop producing; idempotent."""
        self._closed = True
        self._publish()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
