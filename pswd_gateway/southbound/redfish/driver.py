"""The Redfish driver: rack power from a BMC, with a one-request fast path.

Reading strategy, fastest first:

1. the BMC's EventService SSE stream (``ServerSentEventUri``) carrying a MetricReport with every
   rack's power — kept by a background task, so ``read()`` does no I/O while the stream is fresh;
2. the TelemetryService MetricReport that carries ``PowerWatts`` — one GET for all racks;
3. every chassis' ``EnvironmentMetrics`` — one GET each, with bounded concurrency.

Authentication is a Redfish session (``X-Auth-Token``), re-established once on a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.domain.points import Point, Quality, point_key
from pswd_gateway.errors import DeviceError, WriteRefusedError
from pswd_gateway.logging import get_logger

__all__ = ["RedfishDriver", "parse_metric_report"]

log = get_logger("redfish")

V1 = "/redfish/v1"
CONCURRENCY = 16
_CHASSIS_RE = re.compile(r"/Chassis/([^/#]+)/EnvironmentMetrics#/(.+)$")
_PROPERTY_POINT = {
    "PowerWatts/Reading": ("power", "W"),
    "TemperatureCelsius/Reading": ("inlet_temp", "degC"),
    "PowerLimitWatts/SetPoint": ("power_limit", "W"),
}
_SAFE = re.compile(r"[^a-z0-9_]")


def chassis_point(chassis_id: str, suffix: str) -> str:
    """The point name for a chassis: ``Rack001`` → ``rack001_power``."""
    name = _SAFE.sub("_", chassis_id.lower())
    return f"{name if name[:1].isalpha() else 'c_' + name}_{suffix}"


def _timestamp(value: object, default: float) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value).timestamp()
    return default


def parse_metric_report(
    device: str, report: object, received: float
) -> tuple[dict[str, tuple[float, str, float]], dict[str, str]]:
    """Values of a MetricReport as ``{point: (value, unit, source_ts)}`` and the chassis ids.

    Raises :class:`DeviceError` when the document is not a MetricReport.
    """
    if not isinstance(report, Mapping) or not isinstance(report.get("MetricValues"), list):
        raise DeviceError(device, "metric report has no MetricValues list")
    values: dict[str, tuple[float, str, float]] = {}
    chassis: dict[str, str] = {}
    for entry in report["MetricValues"]:
        if not isinstance(entry, Mapping):
            continue
        match = _CHASSIS_RE.search(str(entry.get("MetricProperty", "")))
        if match is None or match.group(2) not in _PROPERTY_POINT:
            continue
        suffix, unit = _PROPERTY_POINT[match.group(2)]
        try:
            value = float(entry.get("MetricValue"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not math.isfinite(value):
            continue
        cid = match.group(1)
        chassis[chassis_point(cid, "")[:-1]] = cid
        values[chassis_point(cid, suffix)] = (
            value,
            unit,
            _timestamp(entry.get("Timestamp"), received),
        )
    return values, chassis


class RedfishDriver:
    """A :class:`~pswd_gateway.southbound.base.Driver` for one BMC (or aggregator)."""

    def __init__(self, cfg: RedfishDeviceConfig) -> None:
        self.cfg = cfg
        self._client: httpx.AsyncClient | None = None
        self._session_uri: str | None = None
        self._report_uri: str | None = None
        self._sse_uri: str | None = None
        self._chassis: dict[str, str] = {}  # point prefix -> chassis id
        self._latest: tuple[float, dict[str, tuple[float, str, float]]] | None = None
        self._sse_task: asyncio.Task[None] | None = None
        self._last_event_id: str | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def poll_interval_s(self) -> float:
        return self.cfg.poll_interval_s

    @property
    def timeout_s(self) -> float:
        return self.cfg.timeout_s

    # ---- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._client = httpx.AsyncClient(
            base_url=self.cfg.base_url,
            verify=self.cfg.verify_tls,
            timeout=self.timeout_s,
            headers={"Accept": "application/json", "OData-Version": "4.0"},
        )
        try:
            root = await self._get(V1, auth=False)
            await self._login()
            await self._discover(root)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        task, self._sse_task = self._sse_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is None:
            return
        if self._session_uri is not None:
            with contextlib.suppress(httpx.HTTPError):
                await client.delete(self._session_uri, timeout=self.timeout_s)
        self._session_uri = None
        await client.aclose()

    async def _login(self) -> None:
        client = self._require()
        body = {"UserName": self.cfg.username, "Password": self.cfg.password.get_secret_value()}
        path = V1 + "/SessionService/Sessions"
        try:
            resp = await client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise DeviceError(self.name, f"POST {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code in (401, 403):
            raise DeviceError(
                self.name,
                f"POST {path}: login refused for user {self.cfg.username!r} ({resp.status_code})",
            )
        if resp.status_code not in (200, 201) or "x-auth-token" not in resp.headers:
            raise DeviceError(self.name, f"POST {path}: no session ({resp.status_code})")
        client.headers["X-Auth-Token"] = resp.headers["x-auth-token"]
        self._session_uri = resp.headers.get("location")

    async def _discover(self, root: Mapping[str, Any]) -> None:
        telemetry = _link(root, "TelemetryService")
        if telemetry:
            reports = _link(await self._get(telemetry), "MetricReports")
            if reports:
                for member in _members(await self._get(reports)):
                    report = await self._get(member)
                    values, chassis = parse_metric_report(self.name, report, time.time())
                    if any(k.endswith("_power") for k in values):
                        self._report_uri = member
                        self._chassis.update(chassis)
                        break
        if not self._chassis:
            collection = _link(root, "Chassis") or V1 + "/Chassis"
            for member in _members(await self._get(collection)):
                cid = member.rstrip("/").rsplit("/", 1)[-1]
                self._chassis[chassis_point(cid, "")[:-1]] = cid
        if self.cfg.chassis:
            wanted = set(self.cfg.chassis)
            self._chassis = {k: v for k, v in self._chassis.items() if v in wanted}
        events = _link(root, "EventService")
        if self.cfg.use_event_service and events and self._report_uri:
            uri = (await self._get(events)).get("ServerSentEventUri")
            if isinstance(uri, str) and uri:
                self._sse_uri = uri
                self._sse_task = asyncio.create_task(self._follow_events(), name=f"sse:{self.name}")
        log.info(
            "redfish_connected",
            device=self.name,
            chassis=len(self._chassis),
            report=self._report_uri,
            sse=self._sse_uri,
        )

    # ---- reading ---------------------------------------------------------------------------

    async def read(self) -> Sequence[Point]:
        received = time.time()
        latest = self._latest
        if latest is not None and received - latest[0] <= 2 * self.poll_interval_s:
            values = latest[1]
        elif self._report_uri is not None:
            values, _ = parse_metric_report(self.name, await self._get(self._report_uri), received)
        else:
            values = await self._read_chassis(received)
        return self._points(values, time.time())

    def _points(
        self, values: Mapping[str, tuple[float, str, float]], received: float
    ) -> list[Point]:
        wanted = {f"{prefix}_" for prefix in self._chassis}
        points = [
            Point(point_key(self.name, key), value, unit, Quality.GOOD, ts, received)
            for key, (value, unit, ts) in values.items()
            if not wanted or any(key.startswith(w) for w in wanted)
        ]
        power = [p for p in points if p.name.endswith("_power")]
        if not power:
            raise DeviceError(self.name, "the BMC reported no rack power")
        total = sum(p.value for p in power)
        oldest = min(p.source_ts for p in power)
        points.append(
            Point(point_key(self.name, "total_power"), total, "W", Quality.GOOD, oldest, received)
        )
        return points

    async def _read_chassis(self, received: float) -> dict[str, tuple[float, str, float]]:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(cid: str) -> dict[str, tuple[float, str, float]]:
            async with limit:
                doc = await self._get(f"{V1}/Chassis/{cid}/EnvironmentMetrics")
            out: dict[str, tuple[float, str, float]] = {}
            for prop, (suffix, unit) in _PROPERTY_POINT.items():
                section, _, field = prop.partition("/")
                raw = doc.get(section, {})
                value = raw.get(field) if isinstance(raw, Mapping) else None
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[chassis_point(cid, suffix)] = (float(value), unit, received)
            return out

        merged: dict[str, tuple[float, str, float]] = {}
        for part in await asyncio.gather(*(one(cid) for cid in self._chassis.values())):
            merged.update(part)
        return merged

    async def _follow_events(self) -> None:
        """Keep the newest MetricReport from the SSE stream; reconnect with Last-Event-ID."""
        assert self._sse_uri is not None
        backoff = 0.5
        while True:
            try:
                await self._stream_once(self._sse_uri)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, DeviceError, ValueError) as exc:
                log.warning("redfish_sse_lost", device=self.name, error=str(exc), retry_s=backoff)
            self._latest = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _stream_once(self, uri: str) -> None:
        client = self._require()
        headers = {"Accept": "text/event-stream"}
        if self._last_event_id is not None:
            headers["Last-Event-ID"] = self._last_event_id
        timeout = httpx.Timeout(self.timeout_s, read=max(5.0, 10 * self.poll_interval_s))
        async with client.stream("GET", uri, headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise DeviceError(self.name, f"GET {uri}: {resp.status_code}")
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line.startswith("id:"):
                    self._last_event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    report = json.loads("\n".join(data))
                    data = []
                    values, _ = parse_metric_report(self.name, report, time.time())
                    self._latest = (time.time(), values)

    # ---- writing ---------------------------------------------------------------------------

    async def write(self, point: str, value: float) -> None:
        if not self.cfg.power_limit_writes:
            raise WriteRefusedError(
                self.name,
                "power-limit writes are disabled for this BMC (set power_limit_writes = true)",
            )
        prefix = point.removesuffix("_power_limit")
        cid = self._chassis.get(prefix) if point.endswith("_power_limit") else None
        if cid is None:
            raise WriteRefusedError(self.name, f"{point!r} is not a writable power limit")
        path = f"{V1}/Chassis/{cid}/Controls/PowerLimit"
        control = await self._get(path)
        lo, hi = control.get("AllowableMin"), control.get("AllowableMax")
        if isinstance(lo, int | float) and isinstance(hi, int | float) and not lo <= value <= hi:
            raise WriteRefusedError(self.name, f"{point} = {value:g} W is outside [{lo}, {hi}]")
        resp = await self._request("PATCH", path, json={"SetPoint": value})
        if resp.status_code not in (200, 204):
            raise DeviceError(self.name, f"PATCH {path}: {resp.status_code} {_message(resp)}")
        log.info("device_write", device=self.name, point=point, value=value, unit="W")

    # ---- HTTP helpers ------------------------------------------------------------------------

    def _require(self) -> httpx.AsyncClient:
        if self._client is None:
            raise DeviceError(self.name, f"not connected to {self.cfg.base_url}")
        return self._client

    async def _request(
        self, method: str, path: str, *, auth: bool = True, **kw: Any
    ) -> httpx.Response:
        client = self._require()
        try:
            resp = await client.request(method, path, **kw)
            if resp.status_code == 401 and auth:
                log.info("redfish_reauthenticate", device=self.name)
                await self._login()
                resp = await client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DeviceError(self.name, f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return resp

    async def _get(self, path: str, *, auth: bool = True) -> dict[str, Any]:
        resp = await self._request("GET", path, auth=auth)
        if resp.status_code != 200:
            raise DeviceError(self.name, f"GET {path}: {resp.status_code} {_message(resp)}")
        try:
            doc = resp.json()
        except ValueError:
            raise DeviceError(self.name, f"GET {path}: the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise DeviceError(self.name, f"GET {path}: the answer is not a JSON object")
        return doc


def _link(doc: Mapping[str, Any], key: str) -> str | None:
    ref = doc.get(key)
    if isinstance(ref, Mapping) and isinstance(ref.get("@odata.id"), str):
        return str(ref["@odata.id"])
    return None


def _members(doc: Mapping[str, Any]) -> list[str]:
    members = doc.get("Members")
    if not isinstance(members, list):
        return []
    return [
        str(m["@odata.id"])
        for m in members
        if isinstance(m, Mapping) and isinstance(m.get("@odata.id"), str)
    ]


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.reason_phrase
