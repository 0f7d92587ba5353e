"""The Redfish driver: rack power, inlet temperature and power limits from a BMC or aggregator.

Reading strategy, fastest first:

1. **Event stream** — with ``use_event_service`` and a BMC that offers
   ``EventService.ServerSentEventUri``, a supervised background task follows the SSE stream and
   keeps the newest power ``MetricReport``; ``read()`` returns it without any I/O while it is
   fresh. A lost stream is logged, reads fall back to (2) at once, and the task reconnects with
   ``Last-Event-ID`` and exponential back-off.
2. **MetricReport** — one GET of the TelemetryService report that carries every chassis'
   ``EnvironmentMetrics#/PowerWatts/Reading``.
3. **EnvironmentMetrics** — one GET per chassis, at most :data:`CONCURRENCY` at a time.

Authentication is a Redfish session (``POST …/SessionService/Sessions`` → ``X-Auth-Token``),
re-established once when a request is answered 401, deleted on :meth:`RedfishDriver.close`.
Every request has a timeout; every failure is a :class:`~pswd_gateway.errors.DeviceError` naming
the device, the method and path, and the status or transport error.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.domain.points import Point, Quality, point_key
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.errors import DeviceError, DeviceTimeoutError, WriteRefusedError
from pswd_gateway.logging import get_logger
from pswd_gateway.southbound.redfish.documents import (
    ChassisNames,
    ChassisSample,
    chassis_id_of,
    error_summary,
    link,
    members,
    parse_control,
    parse_environment_metrics,
    parse_metric_report,
    power_limit_uri,
    safe_path,
)
from pswd_gateway.southbound.redfish.sse import SseDecoder, SseEvent, SseProtocolError

__all__ = ["CONCURRENCY", "RedfishDriver", "RedfishStats"]

log = get_logger("southbound.redfish")

V1: Final = "/redfish/v1"
CONCURRENCY: Final = 16
"""Most EnvironmentMetrics GETs in flight at once on the slowest path."""
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_REPORTS_PROBED: Final = 16
STREAM_BACKOFF_MIN_S: Final = 0.2
STREAM_BACKOFF_MAX_S: Final = 10.0
STREAM_READ_TIMEOUT_MIN_S: Final = 10.0
LIMIT_SUFFIX: Final = "_power_limit"
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")


@dataclass
class RedfishStats:
    """Plain counters; the metrics collector may read them at scrape time."""

    requests_total: int = 0
    logins_total: int = 0
    stream_events_total: int = 0
    stream_failures_total: int = 0
    stream_reads_total: int = 0
    """Reads answered from the event stream without any I/O."""


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes

    def summary(self) -> str:
        """``"<status> <reason>"`` plus the Redfish error message when the body has one."""
        detail = error_summary(_loads(self.body))
        return f"{self.status} {self.reason}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True, slots=True)
class _Streamed:
    samples: Mapping[str, ChassisSample]
    arrived: float  # monotonic
    arrived_wall: float
    gap_s: float  # since the previous event: how often the BMC sends


def _loads(body: bytes | str) -> object:
    """Decoded JSON, or ``None`` when ``body`` is not JSON (too deep counts as not JSON)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedfishDriver:
    """A :class:`~pswd_gateway.southbound.base.Driver` for one BMC (or aggregator of BMCs).

    Points (SI units, quality good): ``total_power`` (W, the sum over the chassis read) and per
    chassis ``<chassis>_power`` (W), ``<chassis>_inlet_temp`` (degC) and ``<chassis>_power_limit``
    (W, only while a limit is set), where ``<chassis>`` is the chassis id lower-cased
    (:class:`~pswd_gateway.southbound.redfish.documents.ChassisNames`). ``<chassis>_power_limit``
    is writable when the device's ``power_limit_writes`` is on.
    """

    def __init__(self, cfg: RedfishDeviceConfig) -> None:
        self.cfg = cfg
        self.stats = RedfishStats()
        self.last_event_id: str | None = None
        """The id of the newest event taken from the stream (sent back as ``Last-Event-ID``)."""
        self._client: httpx.AsyncClient | None = None
        self._auth_lock = asyncio.Lock()
        self._token: str | None = None
        self._session_path: str | None = None
        self._sessions_path = V1 + "/SessionService/Sessions"
        self._names = ChassisNames()
        self._chassis_paths: dict[str, str] = {}
        self._chassis: tuple[str, ...] = ()
        self._control_paths: dict[str, str] = {}
        self._report_path: str | None = None
        self._stream_path: str | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._streamed: _Streamed | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def poll_interval_s(self) -> float:
        return self.cfg.poll_interval_s

    @property
    def timeout_s(self) -> float:
        return self.cfg.timeout_s

    @property
    def report_path(self) -> str | None:
        """The MetricReport read in one GET, when the BMC offers one with chassis power."""
        return self._report_path

    @property
    def stream_path(self) -> str | None:
        """The SSE URI followed in the background, when the event stream is in use."""
        return self._stream_path

    @property
    def streaming(self) -> bool:
        """Whether ``read()`` would answer from the event stream right now (no I/O)."""
        return self._fresh_stream() is not None

    # ---- connection --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the session and discover the fastest way to read; idempotent."""
        if self._client is not None:
            return
        self._client = httpx.AsyncClient(
            base_url=self.cfg.base_url,
            verify=self.cfg.verify_tls,
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=CONCURRENCY + 2),
            headers={"Accept": "application/json", "OData-Version": "4.0"},
        )
        try:
            root = await self._service_root()
            sessions = link(root.get("Links"), "Sessions")
            if sessions is not None:
                self._sessions_path = sessions
            await self._login()
            await self._discover(root)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the stream task, delete the session, close the connections; idempotent."""
        task, self._stream_task = self._stream_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._streamed = None
        client, self._client = self._client, None
        if client is None:
            return
        session, self._session_path = self._session_path, None
        try:
            if session is not None and self._token is not None:
                reply = await self._send(client, "DELETE", session, auth=True)
                if reply.status >= 300:
                    log.debug("redfish_logout_refused", device=self.name, status=reply.status)
        except DeviceError as exc:
            log.debug("redfish_logout_failed", device=self.name, error=str(exc))
        finally:
            self._token = None
            self._report_path = self._stream_path = None
            self._chassis_paths.clear()
            self._control_paths.clear()
            self._chassis = ()
            await client.aclose()

    async def _service_root(self) -> Mapping[str, Any]:
        path = V1
        reply = await self._send(self._require(), "GET", path, auth=False)
        if reply.status == 401:  # the root must be readable without a session; tolerate BMCs
            return {}
        return self._document("GET", path, reply)

    async def _login(self) -> None:
        if not self.cfg.username:
            return  # a BMC that needs no credentials (a lab or a read-only aggregator)
        path = self._sessions_path
        body = {"UserName": self.cfg.username, "Password": self.cfg.password.get_secret_value()}
        reply = await self._send(self._require(), "POST", path, body=body, auth=False)
        if reply.status in (401, 403):
            raise DeviceError(
                self.name,
                f"POST {path}: login refused for user {self.cfg.username!r} ({reply.summary()}); "
                "check username/password of this device",
            )
        if reply.status not in (200, 201):
            raise DeviceError(self.name, f"POST {path}: no session: {reply.summary()}")
        token = reply.headers.get("x-auth-token")
        if token is None or not _TOKEN.fullmatch(token):
            raise DeviceError(self.name, f"POST {path}: the answer has no usable X-Auth-Token")
        self._token = token
        self._session_path = self._session_location(reply)
        self.stats.logins_total += 1
        log.debug("redfish_session_opened", device=self.name, session=self._session_path)

    def _session_location(self, reply: _Reply) -> str | None:
        """The new session's path: ``Location`` when it is on this service, else ``@odata.id``."""
        location = reply.headers.get("location")
        if location:
            try:
                url = self._require().base_url.join(location)
            except (httpx.InvalidURL, ValueError):
                url = None
            base = self._require().base_url
            if url is not None and (url.scheme, url.host, url.port) == (
                base.scheme,
                base.host,
                base.port,
            ):
                return safe_path(url.raw_path.decode("ascii", "replace"))
        doc = _loads(reply.body)
        return safe_path(doc.get("@odata.id")) if isinstance(doc, Mapping) else None

    async def _reauthenticate(self, stale_token: str | None) -> None:
        """Log in again unless another request already replaced ``stale_token``."""
        async with self._auth_lock:
            if self._token != stale_token:
                return
            log.info("redfish_reauthenticate", device=self.name)
            self._token = None
            await self._login()

    async def _discover(self, root: Mapping[str, Any]) -> None:
        collection = link(root, "Chassis") or V1 + "/Chassis"
        for member in members(await self._get(collection)):
            self._chassis_paths.setdefault(chassis_id_of(member), member)
        report = await self._find_power_report(root)
        ids = set(self._chassis_paths) | (set(report[1]) if report else set())
        self._names = ChassisNames(ids)
        if self.cfg.chassis:
            missing = sorted(set(self.cfg.chassis) - ids)
            if missing:
                log.warning("redfish_chassis_not_found", device=self.name, chassis=missing)
            self._chassis = tuple(c for c in self.cfg.chassis if c in ids)
        else:
            self._chassis = tuple(sorted(ids))
        if report is not None:
            self._report_path = report[0]
            if self.cfg.use_event_service:
                self._stream_path = await self._find_stream(root)
        if self._stream_path is not None:
            self._stream_task = asyncio.create_task(
                self._follow_stream(self._stream_path), name=f"redfish-sse:{self.name}"
            )
        log.info(
            "redfish_connected",
            device=self.name,
            chassis=len(self._chassis),
            report=self._report_path,
            stream=self._stream_path,
        )

    async def _find_power_report(
        self, root: Mapping[str, Any]
    ) -> tuple[str, dict[str, ChassisSample]] | None:
        """The first MetricReport that carries chassis power, with its samples."""
        telemetry = link(root, "TelemetryService")
        if telemetry is None:
            return None
        try:
            reports = link(await self._get(telemetry), "MetricReports")
            candidates = members(await self._get(reports)) if reports else []
            for path in candidates[:MAX_REPORTS_PROBED]:
                samples = parse_metric_report(self.name, await self._get(path), time.time())
                if any(s.power_w is not None for s in samples.values()):
                    return path, samples
        except DeviceError as exc:
            log.warning("redfish_telemetry_unusable", device=self.name, error=str(exc))
        return None

    async def _find_stream(self, root: Mapping[str, Any]) -> str | None:
        events = link(root, "EventService")
        if events is None:
            return None
        try:
            doc = await self._get(events)
        except DeviceError as exc:
            log.warning("redfish_event_service_unusable", device=self.name, error=str(exc))
            return None
        if doc.get("ServiceEnabled") is False:
            return None
        return safe_path(doc.get("ServerSentEventUri"))

    # ---- reading -----------------------------------------------------------------------------

    async def read(self) -> Sequence[Point]:
        """Every point of the device (see the class docstring)."""
        self._require()
        sent = time.time()
        streamed = self._fresh_stream()
        if streamed is not None:
            self.stats.stream_reads_total += 1
            return self._points(streamed.samples, streamed.arrived_wall)
        if self._report_path is not None:
            samples = parse_metric_report(self.name, await self._get(self._report_path), sent)
        else:
            samples = await self._read_environment_metrics(sent)
        return self._points(samples, time.time())

    def _fresh_stream(self) -> _Streamed | None:
        streamed = self._streamed
        if streamed is None or self._client is None:
            return None
        stale_after = min(
            self.cfg.invalid_after_s, max(2.0 * self.poll_interval_s, 3.0 * streamed.gap_s)
        )
        return streamed if time.monotonic() - streamed.arrived <= stale_after else None

    def _points(self, samples: Mapping[str, ChassisSample], received: float) -> list[Point]:
        wanted = self._chassis if self.cfg.chassis else sorted(samples)
        points: list[Point] = []
        total, oldest, reporting = 0.0, math.inf, 0

        def add(point: str, value: float, unit: SiUnit, source_ts: float) -> None:
            key = point_key(self.name, point)
            points.append(Point(key, value, unit, Quality.GOOD, source_ts, received))

        for cid in wanted:
            sample = samples.get(cid)
            if sample is None:
                continue
            prefix = self._names.prefix(cid)
            if sample.power_w is not None:
                add(f"{prefix}_power", sample.power_w, SiUnit.WATT, sample.source_ts)
                total += sample.power_w
                oldest = min(oldest, sample.source_ts)
                reporting += 1
            if sample.inlet_temp_c is not None:
                add(f"{prefix}_inlet_temp", sample.inlet_temp_c, SiUnit.CELSIUS, sample.source_ts)
            if sample.power_limit_w is not None:
                add(f"{prefix}{LIMIT_SUFFIX}", sample.power_limit_w, SiUnit.WATT, sample.source_ts)
        if reporting == 0:
            scope = f" among {', '.join(self.cfg.chassis)}" if self.cfg.chassis else ""
            raise DeviceError(self.name, f"no chassis reported its power{scope}")
        add("total_power", total, SiUnit.WATT, oldest)
        return points

    async def _read_environment_metrics(self, sent: float) -> dict[str, ChassisSample]:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(cid: str) -> tuple[str, ChassisSample | None]:
            path = self._chassis_path(cid) + "/EnvironmentMetrics"
            async with limit:
                doc = await self._get_optional(path)
            if doc is None:
                return cid, None
            return cid, parse_environment_metrics(self.name, doc, sent)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(cid)) for cid in self._chassis]
        except ExceptionGroup as failed:
            first = _first_device_error(failed)
            if first is None:
                raise
            raise first from None
        return {cid: sample for cid, sample in (t.result() for t in tasks) if sample is not None}

    def _chassis_path(self, cid: str) -> str:
        return self._chassis_paths.get(cid) or f"{V1}/Chassis/{quote(cid, safe='')}"

    # ---- the event stream --------------------------------------------------------------------

    async def _follow_stream(self, path: str) -> None:
        """Keep the newest MetricReport from the SSE stream; supervised until cancelled."""
        backoff = STREAM_BACKOFF_MIN_S
        while True:
            before = self.stats.stream_events_total
            try:
                await self._stream_once(path)
                reason = "the BMC ended the stream"
            except DeviceError as exc:
                reason = str(exc)
            except Exception as exc:  # supervised: logged with its traceback, counted, retried
                log.exception("redfish_stream_crashed", device=self.name)
                reason = _describe(exc)
            self._streamed = None
            self.stats.stream_failures_total += 1
            if self.stats.stream_events_total > before:
                backoff = STREAM_BACKOFF_MIN_S
            log.warning(
                "redfish_stream_lost",
                device=self.name,
                path=path,
                error=reason,
                retry_s=backoff,
                fallback="polling",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2.0, STREAM_BACKOFF_MAX_S)

    async def _stream_once(self, path: str) -> None:
        """Follow the stream until it ends; a 401 logs in again and reconnects once."""
        client = self._require()
        read_timeout = max(STREAM_READ_TIMEOUT_MIN_S, 10.0 * self.poll_interval_s)
        timeout = httpx.Timeout(self.timeout_s, read=read_timeout)
        for attempt in (1, 2):
            token = self._token
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if token is not None:
                headers["X-Auth-Token"] = token
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            self.stats.requests_total += 1
            try:
                async with client.stream("GET", path, headers=headers, timeout=timeout) as resp:
                    if not (resp.status_code == 401 and attempt == 1 and self.cfg.username):
                        await self._consume_stream(path, resp)
                        return
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise DeviceError(self.name, f"GET {path}: {_describe(exc)}") from None
            except SseProtocolError as exc:
                raise DeviceError(self.name, f"GET {path}: {exc}") from None
            except _TooLargeError:
                raise DeviceError(self.name, f"GET {path}: the error answer is too large") from None
            await self._reauthenticate(token)

    async def _consume_stream(self, path: str, resp: httpx.Response) -> None:
        if resp.status_code != 200:
            body = await _read_capped(resp, 64 * 1024)
            reply = _Reply(resp.status_code, resp.reason_phrase, resp.headers, body)
            raise DeviceError(self.name, f"GET {path}: {reply.summary()}")
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            raise DeviceError(self.name, f"GET {path}: the answer is not an event stream")
        log.info("redfish_stream_open", device=self.name, path=path, resume=self.last_event_id)
        decoder = SseDecoder()
        async for chunk in resp.aiter_bytes():
            for event in decoder.feed(chunk):
                self._on_event(event)

    def _on_event(self, event: SseEvent) -> None:
        doc = _loads(event.data)
        if not isinstance(doc, Mapping) or "MetricValues" not in doc:
            return  # not a metric report (a Redfish Event, or garbage)
        origin = safe_path(doc.get("@odata.id"))
        report = self._report_path
        if origin is not None and report is not None and origin.rstrip("/") != report.rstrip("/"):
            return  # another report on a shared stream
        try:
            samples = parse_metric_report(self.name, doc, time.time())
        except DeviceError:
            return
        if not any(s.power_w is not None for s in samples.values()):
            return
        now = time.monotonic()
        previous = self._streamed
        gap = 0.0 if previous is None else now - previous.arrived
        self._streamed = _Streamed(samples, now, time.time(), gap)
        self.stats.stream_events_total += 1
        if event.last_event_id:
            self.last_event_id = event.last_event_id

    # ---- writing -----------------------------------------------------------------------------

    async def write(self, point: str, value: float) -> None:
        """Set ``<chassis>_power_limit`` (W) through the chassis' power-limit Control."""
        name = point.removeprefix(f"{self.name}.")
        self._require()
        if not self.cfg.power_limit_writes:
            raise WriteRefusedError(
                self.name,
                "power-limit writes are disabled for this BMC "
                "(set power_limit_writes = true in its [[devices]] entry)",
            )
        cid = self._names.chassis(name.removesuffix(LIMIT_SUFFIX))
        if not name.endswith(LIMIT_SUFFIX) or cid is None or cid not in self._chassis:
            raise WriteRefusedError(
                self.name,
                f"{point!r} is not a writable point; only <chassis>{LIMIT_SUFFIX} of a chassis "
                "read from this BMC can be written",
            )
        if not math.isfinite(value):
            raise WriteRefusedError(self.name, f"{name} = {value} is not a finite number of W")
        path = await self._control_path(cid)
        reply = await self._request("GET", path)
        limits = parse_control(self.name, self._document("GET", path, reply))
        if not limits.allows(value):
            lo, hi = limits.allowable_min_w, limits.allowable_max_w
            raise WriteRefusedError(
                self.name, f"{name} = {value:g} W is outside [{lo:g}, {hi:g}] W allowed by {path}"
            )
        body: dict[str, Any] = {"SetPoint": value}
        if limits.control_mode == "Disabled":
            body["ControlMode"] = "Automatic"
        etag = reply.headers.get("etag")
        headers = {"If-Match": etag} if etag else None
        answer = await self._request("PATCH", path, body=body, headers=headers)
        if answer.status not in (200, 202, 204):
            raise DeviceError(self.name, f"PATCH {path}: {answer.summary()}")
        log.info("device_write", device=self.name, point=name, value=value, unit="W", path=path)

    async def _control_path(self, cid: str) -> str:
        """The chassis' power-limit Control, as its EnvironmentMetrics names it."""
        known = self._control_paths.get(cid)
        if known is not None:
            return known
        doc = await self._get_optional(self._chassis_path(cid) + "/EnvironmentMetrics")
        path = power_limit_uri(doc) or self._chassis_path(cid) + "/Controls/PowerLimit"
        self._control_paths[cid] = path
        return path

    # ---- HTTP --------------------------------------------------------------------------------

    def _require(self) -> httpx.AsyncClient:
        if self._client is None:
            raise DeviceError(self.name, f"not connected to {self.cfg.base_url}")
        return self._client

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        auth: bool = True,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One request with a timeout and a size limit on the answer."""
        merged = dict(headers or {})
        if auth and self._token is not None:
            merged["X-Auth-Token"] = self._token
        self.stats.requests_total += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                request = client.build_request(method, path, json=body, headers=merged)
                response = await client.send(request, stream=True)
                try:
                    content = await _read_capped(response, MAX_BODY_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise DeviceTimeoutError(
                self.name, f"{method} {path}: no answer within {self.timeout_s * 1e3:.0f} ms"
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise DeviceError(self.name, f"{method} {path}: {_describe(exc)}") from None
        except _TooLargeError:
            raise DeviceError(
                self.name, f"{method} {path}: the answer exceeds {MAX_BODY_BYTES} bytes"
            ) from None
        return _Reply(response.status_code, response.reason_phrase, response.headers, content)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        """A request in the session; a 401 logs in again and retries once."""
        client = self._require()
        token = self._token
        reply = await self._send(client, method, path, body=body, headers=headers)
        if reply.status == 401 and self.cfg.username:
            await self._reauthenticate(token)
            reply = await self._send(client, method, path, body=body, headers=headers)
        return reply

    async def _get(self, path: str) -> dict[str, Any]:
        """The JSON object at ``path``."""
        return self._document("GET", path, await self._request("GET", path))

    async def _get_optional(self, path: str) -> dict[str, Any] | None:
        """The JSON object at ``path``; ``None`` when the BMC answers 404."""
        reply = await self._request("GET", path)
        return None if reply.status == 404 else self._document("GET", path, reply)

    def _document(self, method: str, path: str, reply: _Reply) -> dict[str, Any]:
        if reply.status != 200:
            raise DeviceError(self.name, f"{method} {path}: {reply.summary()}")
        doc = _loads(reply.body)
        if not isinstance(doc, dict):
            raise DeviceError(self.name, f"{method} {path}: the answer is not a JSON object")
        return doc


class _TooLargeError(Exception):
    """An answer body over the size limit."""


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _TooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def _first_device_error(group: BaseExceptionGroup[BaseException]) -> DeviceError | None:
    for exc in group.exceptions:
        if isinstance(exc, DeviceError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            nested = _first_device_error(exc)
            if nested is not None:
                return nested
    return None
