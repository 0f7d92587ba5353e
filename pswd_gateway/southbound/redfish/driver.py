"""The Redfish driver: rack power, inlet temperature and power limits from a BMC or aggregator.

Reading strategy, fastest first:

1. **Event stream** — with ``use_event_service`` and a BMC that offers
   ``EventService.ServerSentEventUri``, a supervised background task follows the SSE stream and
   keeps the newest power ``MetricReport``; ``read()`` returns it without any I/O while it is
   fresh. A lost stream is logged, reads fall back to (2) at once, and the task reconnects with
   ``Last-Event-ID`` and exponential back-off.
2. **MetricReport** — one GET of the TelemetryService report that carries every chassis'
   power: ``EnvironmentMetrics#/PowerWatts/Reading``, its power supplies'
   ``Metrics#/InputPowerWatts/Reading`` or ``Power#/PowerControl/0/PowerConsumedWatts``
   (:func:`~pswd_gateway.southbound.redfish.documents.parse_metric_report`).
3. **Per chassis**, at most :data:`CONCURRENCY` GETs at a time, from the first source the chassis
   offers: ``EnvironmentMetrics.PowerWatts``, the ``PowerSubsystem``'s power-supply metrics
   (``InputPowerWatts`` summed), the older ``Power`` resource
   (``PowerControl[0].PowerConsumedWatts``), then its ``Sensors`` of ``ReadingType`` ``Power``.
   The source found is remembered (:attr:`RedfishDriver.power_sources`, log
   ``redfish_power_source``) and looked for again when it stops answering.

Power limits are written through the chassis' ``Control`` (named by its EnvironmentMetrics, or
``Controls/PowerLimit``), or through the older ``Power`` resource's
``PowerControl[0].PowerLimit.LimitInWatts`` when the chassis offers no Control
(:meth:`RedfishDriver._limit_target`).

The total counts each watt once: a chassis inside another chassis that reports power
(``Links.Contains`` / ``ContainedBy``, a blade in its enclosure) is not added. Only the chassis
found at connect are read and published: a report or event naming others is not followed (they
are read after the next reconnect), so a BMC cannot grow the gateway's points without bound.

Plausibility: a power, power limit or total outside the IT load's physical range
(:data:`POWER_RANGE_W`) and an inlet temperature outside :data:`INLET_TEMP_RANGE_C` are published
questionable, "out of range" (never good, so never used for control); the total then sums only
the plausible chassis and is questionable too.

Authentication (``auth``): a Redfish session (``POST …/SessionService/Sessions``, any 2xx with an
``X-Auth-Token``), or HTTP Basic — configured, or in ``auto`` when the service has no
SessionService or refuses to create a session with a 4xx. A request answered 401 logs in again
once; a second 401 fails the poll. The session is deleted on :meth:`RedfishDriver.close`.
TLS is verified against the system CAs, a ``ca_bundle``, or a pinned certificate fingerprint.
Every request has a timeout; every failure is a :class:`~pswd_gateway.errors.DeviceError` naming
the device, the method and path, and the status or transport error.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote

import httpx

from pswd_gateway.config import RedfishDeviceConfig
from pswd_gateway.domain.points import Point, Quality, point_key
from pswd_gateway.domain.signals import IT_POWER
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.errors import DeviceError, DeviceTimeoutError, WriteRefusedError
from pswd_gateway.logging import get_logger
from pswd_gateway.security.tls import default_client_context
from pswd_gateway.southbound.redfish.documents import (
    MAX_PATH_CHARS,
    ChassisNames,
    ChassisSample,
    ControlLimits,
    PowerSource,
    chassis_id_of,
    chassis_parents,
    counted_in_total,
    error_summary,
    link,
    members,
    parse_control,
    parse_environment_metrics,
    parse_metric_report,
    parse_power_limit,
    parse_power_resource,
    power_limit_patch,
    power_limit_uri,
    power_sensor_total,
    power_supply_input_w,
    safe_path,
    sensor_power,
)
from pswd_gateway.southbound.redfish.sse import SseDecoder, SseEvent, SseProtocolError
from pswd_gateway.tasks import cancel_and_wait

__all__ = ["CONCURRENCY", "LimitResource", "RedfishDriver", "RedfishStats"]

log = get_logger("southbound.redfish")

V1: Final = "/redfish/v1"
CONCURRENCY: Final = 16
"""Most EnvironmentMetrics GETs in flight at once on the slowest path."""
DISCOVERY_CONCURRENCY: Final = 2
"""Chassis documents read at once while connecting (once per connection)."""
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""The largest answer read (as sent: answers are asked for and accepted uncompressed only, so
that a small compressed body cannot unpack to gigabytes)."""
MAX_ERROR_BODY_BYTES: Final = 64 * 1024
"""The largest error answer to an event-stream request read for its message."""
MAX_CHASSIS: Final = 10_000
"""The most chassis one device is read with (a collection or report naming more is refused:
each chassis costs a request at connect and points in the store)."""
MAX_REPORTS_PROBED: Final = 16
MAX_PARTS_PROBED: Final = 64
"""Most power supplies or sensors of one chassis looked at when finding its power source."""
SOURCE_RETRY_S: Final = 60.0
"""How long a chassis without any power source is left alone before it is looked at again."""
STREAM_BACKOFF_MIN_S: Final = 0.2
STREAM_BACKOFF_MAX_S: Final = 10.0
STREAM_READ_TIMEOUT_MIN_S: Final = 10.0
LIMIT_SUFFIX: Final = "_power_limit"
POWER_RANGE_W: Final = (IT_POWER.low, IT_POWER.high)
"""Where a chassis' power, its power limit and the device's total can lie: the IT load's
physical range in the site signal catalogue (no chassis draws more than the whole IT load)."""
INLET_TEMP_RANGE_C: Final = (-40.0, 100.0)
"""Where the temperature of the air entering a chassis can lie."""
OUT_OF_RANGE: Final = "out of range"
MAX_REASON_CHARS: Final = 200
"""Most characters of an HTTP reason phrase an error message repeats."""
LOG_EVERY_S: Final = 10.0
"""At most one warning per point and kind in this long (a broken BMC answers every poll)."""
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
        """``"<status> <reason>"`` plus the Redfish error message when the body has one, or
        where a redirect pointed (redirects are not followed: the session token stays here)."""
        detail = error_summary(_loads(self.body))
        location = self.headers.get("location")
        if 300 <= self.status < 400 and location:
            detail = f"a redirect to {location[:MAX_PATH_CHARS]!r}, not followed"
        return f"{self.status} {self.reason[:MAX_REASON_CHARS]}" + (
            f" ({detail})" if detail else ""
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one chassis' power is read each poll: the source and the resources to GET."""

    source: PowerSource
    paths: tuple[str, ...]


class LimitResource(StrEnum):
    """Where a chassis' power limit is written."""

    CONTROL = "Control"
    """A ``Control`` resource's ``SetPoint`` (with ``AllowableMin``/``AllowableMax``)."""
    POWER = "Power"
    """The older ``Power`` resource's ``PowerControl[0].PowerLimit.LimitInWatts``."""


@dataclass(frozen=True, slots=True)
class _LimitTarget:
    resource: LimitResource
    path: str


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


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _range_text(limits: ControlLimits) -> str:
    """``[lo, hi] W`` with an open end where the BMC gave no bound."""
    lo = "-inf" if limits.allowable_min_w is None else f"{limits.allowable_min_w:g}"
    hi = "inf" if limits.allowable_max_w is None else f"{limits.allowable_max_w:g}"
    return f"[{lo}, {hi}] W"


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
        self._basic: str | None = None
        """The ``Authorization`` header value while HTTP Basic is in use."""
        self._has_session_service = True
        self._session_path: str | None = None
        self._sessions_path = V1 + "/SessionService/Sessions"
        self._names = ChassisNames()
        self._chassis_collection = V1 + "/Chassis"
        self._chassis_paths: dict[str, str] = {}
        self._chassis: tuple[str, ...] = ()
        self._chassis_ids: frozenset[str] = frozenset()
        self._limit_targets: dict[str, _LimitTarget] = {}
        self._chassis_docs: dict[str, Mapping[str, Any]] = {}
        self._parents: dict[str, frozenset[str]] = {}
        self._plans: dict[str, _Plan] = {}
        self._unpowered: dict[str, float] = {}  # chassis id → monotonic time of the last search
        self._report_path: str | None = None
        self._stream_path: str | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._streamed: _Streamed | None = None
        self._last_log: dict[tuple[str, str], float] = {}

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
    def auth_mode(self) -> str | None:
        """``"session"`` or ``"basic"`` once connected with credentials, else ``None``."""
        if self._token is not None:
            return "session"
        return "basic" if self._basic is not None else None

    @property
    def power_sources(self) -> dict[str, str]:
        """Per chassis id, where its power is read (a :class:`PowerSource` value)."""
        if self._report_path is not None:
            return dict.fromkeys(self._chassis, PowerSource.METRIC_REPORT.value)
        return {cid: plan.source.value for cid, plan in self._plans.items()}

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
            verify=self._tls_verification(),
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=CONCURRENCY + 2),
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "identity",
                "OData-Version": "4.0",
            },
        )
        try:
            root = await self._service_root()
            sessions = link(root.get("Links"), "Sessions")
            if sessions is not None:
                self._sessions_path = sessions
            elif root and link(root, "SessionService") is None:
                self._has_session_service = False
            self._chassis_collection = link(root, "Chassis") or V1 + "/Chassis"
            await self._login()
            await self._discover(root)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the stream task, delete the session, close the connections; idempotent."""
        task, self._stream_task = self._stream_task, None
        await cancel_and_wait(task)
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
            self._token = self._basic = None
            self._report_path = self._stream_path = None
            self._chassis_paths.clear()
            self._limit_targets.clear()
            self._chassis_docs.clear()
            self._parents.clear()
            self._plans.clear()
            self._unpowered.clear()
            self._chassis = ()
            self._chassis_ids = frozenset()
            await client.aclose()

    async def _service_root(self) -> Mapping[str, Any]:
        path = V1
        reply = await self._send(self._require(), "GET", path, auth=False)
        if reply.status == 401:  # the root must be readable without a session; tolerate BMCs
            return {}
        return self._document("GET", path, reply)

    def _tls_verification(self) -> ssl.SSLContext | bool:
        """What ``httpx`` verifies the BMC's certificate with."""
        if not self.cfg.base_url.startswith("https://"):
            return self.cfg.verify_tls
        if self.cfg.tls_fingerprint_sha256 is not None:
            return pinned_context(self.cfg.tls_fingerprint_sha256)
        if self.cfg.ca_bundle is not None:
            try:
                return ssl.create_default_context(cafile=str(self.cfg.ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise DeviceError(
                    self.name,
                    f"ca_bundle {self.cfg.ca_bundle}: not a readable PEM file ({_describe(exc)})",
                ) from None
        # A shared context: building one per connect would block the event loop ~30 ms.
        return default_client_context() if self.cfg.verify_tls else False

    async def _login(self) -> None:
        if not self.cfg.username:
            return  # a BMC that needs no credentials (a lab or a read-only aggregator)
        mode = self.cfg.auth
        if mode == "basic" or (mode == "auto" and not self._has_session_service):
            await self._use_basic("configured" if mode == "basic" else "no SessionService")
            return
        path = self._sessions_path
        body = {"UserName": self.cfg.username, "Password": self.cfg.password.get_secret_value()}
        reply = await self._send(self._require(), "POST", path, body=body, auth=False)
        token = reply.headers.get("x-auth-token")
        usable = token is not None and _TOKEN.fullmatch(token) is not None
        if 200 <= reply.status < 300 and usable:
            self._token = token
        elif mode == "auto" and (400 <= reply.status < 500 or 200 <= reply.status < 300):
            refusal = f"POST {path}: {reply.summary()}"
            if reply.status in (401, 403):
                refusal = (
                    f"POST {path}: login refused for user {self.cfg.username!r} ({reply.summary()})"
                )
            await self._use_basic(refusal, after=refusal)
            return
        elif reply.status in (401, 403):
            raise DeviceError(
                self.name,
                f"POST {path}: login refused for user {self.cfg.username!r} ({reply.summary()}); "
                "check username/password of this device",
            )
        elif 200 <= reply.status < 300:
            raise DeviceError(self.name, f"POST {path}: the answer has no usable X-Auth-Token")
        else:
            raise DeviceError(self.name, f"POST {path}: no session: {reply.summary()}")
        self._session_path = self._session_location(reply)
        self.stats.logins_total += 1
        log.debug("redfish_session_opened", device=self.name, session=self._session_path)

    async def _use_basic(self, why: str, *, after: str = "") -> None:
        """Switch to HTTP Basic and prove the credentials with one GET.

        ``after`` is what the session login answered, told again when Basic is refused too.
        """
        user, password = self.cfg.username, self.cfg.password.get_secret_value()
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._basic = f"Basic {encoded}"
        self._token = None
        path = self._chassis_collection
        reply = await self._send(self._require(), "GET", path)
        if reply.status in (401, 403):
            self._basic = None
            before = f"{after}; then " if after else ""
            raise DeviceError(
                self.name,
                f"{before}GET {path}: login refused for user {self.cfg.username!r} with HTTP "
                f"Basic ({reply.summary()}); check username/password of this device",
            )
        self.stats.logins_total += 1
        log.info("redfish_basic_auth", device=self.name, reason=why)

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
            if self._token != stale_token or self._basic is not None:
                return  # renewed meanwhile, or HTTP Basic: nothing to renew
            log.info("redfish_reauthenticate", device=self.name)
            self._token = self._basic = None
            await self._login()

    async def _discover(self, root: Mapping[str, Any]) -> None:
        for member in members(await self._get(self._chassis_collection)):
            self._chassis_paths.setdefault(chassis_id_of(member), member)
        self._check_chassis_count(len(self._chassis_paths), f"GET {self._chassis_collection}")
        await self._read_chassis_documents()
        report = await self._find_power_report(root)
        ids = set(self._chassis_paths) | (set(report[1]) if report else set())
        if report is not None:
            self._check_chassis_count(len(ids), f"GET {report[0]} (with the chassis collection)")
        self._names = ChassisNames(ids)
        if self.cfg.chassis:
            missing = sorted(set(self.cfg.chassis) - ids)
            if missing:
                log.warning("redfish_chassis_not_found", device=self.name, chassis=missing)
            self._chassis = tuple(c for c in self.cfg.chassis if c in ids)
        else:
            self._chassis = tuple(sorted(ids))
        self._chassis_ids = frozenset(self._chassis)
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

    def _check_chassis_count(self, count: int, where: str) -> None:
        if count > MAX_CHASSIS:
            raise DeviceError(
                self.name,
                f"{where}: {count} chassis, more than the {MAX_CHASSIS} one device is read with",
            )

    async def _read_chassis_documents(self) -> None:
        """Every chassis resource: its links to power sources and what it contains (a few at a
        time, by as many workers: a connect must not crowd out the polls of the devices already
        running, nor start a task per chassis)."""
        pending = iter(list(self._chassis_paths.items()))

        async def worker() -> None:
            for cid, path in pending:  # shared: each chassis is read by one worker
                try:
                    doc = await self._get_optional(path)
                except DeviceError as exc:
                    log.warning("redfish_chassis_unreadable", device=self.name, error=str(exc))
                    continue
                if doc is not None:
                    self._chassis_docs[cid] = doc

        async with asyncio.TaskGroup() as group:
            for _ in range(DISCOVERY_CONCURRENCY):
                group.create_task(worker())
        self._parents = chassis_parents(self._chassis_docs)

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
            report = parse_metric_report(self.name, await self._get(self._report_path), sent)
            samples = self._read_chassis_only(report)
        else:
            samples = await self._read_each_chassis(sent)
        return self._points(samples, time.time())

    def _fresh_stream(self) -> _Streamed | None:
        streamed = self._streamed
        if streamed is None or self._client is None:
            return None
        stale_after = min(
            self.cfg.invalid_after_s, max(2.0 * self.poll_interval_s, 3.0 * streamed.gap_s)
        )
        return streamed if time.monotonic() - streamed.arrived <= stale_after else None

    def _read_chassis_only(self, samples: Mapping[str, ChassisSample]) -> dict[str, ChassisSample]:
        """The samples of the chassis this device is read with: a report or an event naming
        chassis not found at connect (or not configured) does not add them, so a BMC cannot
        grow the gateway's points; new ones are logged and read after the next reconnect."""
        read = {cid: sample for cid, sample in samples.items() if cid in self._chassis_ids}
        if len(read) < len(samples) and not self.cfg.chassis:
            unknown = sorted(samples.keys() - read.keys())
            self._log_rate_limited(
                "redfish_unknown_chassis", "", chassis=unknown[:10], count=len(unknown)
            )
        return read

    def _points(self, samples: Mapping[str, ChassisSample], received: float) -> list[Point]:
        """The points of the chassis read, each judged for plausibility."""
        points: list[Point] = []
        oldest = math.inf
        powered: dict[str, float] = {}
        implausible: set[str] = set()
        for cid in self._chassis:
            sample = samples.get(cid)
            if sample is None:
                continue
            prefix, ts = self._names.prefix(cid), sample.source_ts
            readings = (
                ("_power", sample.power_w, SiUnit.WATT, POWER_RANGE_W),
                ("_inlet_temp", sample.inlet_temp_c, SiUnit.CELSIUS, INLET_TEMP_RANGE_C),
                (LIMIT_SUFFIX, sample.power_limit_w, SiUnit.WATT, POWER_RANGE_W),
            )
            for suffix, value, unit, bounds in readings:
                if value is not None:
                    points.append(self._judged(prefix + suffix, value, unit, bounds, ts, received))
            if sample.power_w is not None:
                oldest = min(oldest, ts)
                if _within(sample.power_w, POWER_RANGE_W):
                    powered[cid] = sample.power_w
                else:
                    implausible.add(cid)
        if not powered and not implausible:
            scope = f" among {', '.join(self.cfg.chassis)}" if self.cfg.chassis else ""
            raise DeviceError(self.name, f"no chassis reported its power{scope}")
        counted = counted_in_total(powered.keys() | implausible, self._parents)
        total = math.fsum(powered[cid] for cid in sorted(counted - implausible))
        point = self._judged("total_power", total, SiUnit.WATT, POWER_RANGE_W, oldest, received)
        if counted & implausible:  # the sum of the others: no total of the device
            point = Point(
                point.name, total, point.unit, Quality.QUESTIONABLE, oldest, received, OUT_OF_RANGE
            )
        points.append(point)
        return points

    def _judged(
        self,
        point: str,
        value: float,
        unit: SiUnit,
        bounds: tuple[float, float],
        source_ts: float,
        received: float,
    ) -> Point:
        """A reading as a point: good inside ``bounds``, else questionable, "out of range"."""
        key = point_key(self.name, point)
        if _within(value, bounds):
            return Point(key, value, unit, Quality.GOOD, source_ts, received)
        low, high = bounds
        self._log_rate_limited("point_out_of_range", point, value=value, low=low, high=high)
        return Point(key, value, unit, Quality.QUESTIONABLE, source_ts, received, OUT_OF_RANGE)

    def _log_rate_limited(self, event: str, point: str, **kw: object) -> None:
        """One warning per event and point every :data:`LOG_EVERY_S`."""
        now = time.monotonic()
        if now - self._last_log.get((event, point), -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[event, point] = now
            log.warning(event, device=self.name, point=point or None, **kw)

    async def _read_each_chassis(self, sent: float) -> dict[str, ChassisSample]:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(cid: str) -> tuple[str, ChassisSample | None]:
            plan = self._plans.get(cid)
            if plan is not None:
                sample = await self._read_plan(plan, sent, limit)
                if sample is not None:
                    return cid, sample
                del self._plans[cid]
                log.info(
                    "redfish_power_source_lost", device=self.name, chassis=cid, source=plan.source
                )
            searched = self._unpowered.get(cid)
            if searched is not None and time.monotonic() - searched < SOURCE_RETRY_S:
                return cid, None
            again = plan is not None or searched is not None
            return cid, await self._find_source(cid, sent, limit, refresh=again)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(cid)) for cid in self._chassis]
        except ExceptionGroup as failed:
            first = _first_device_error(failed)
            if first is None:
                raise
            raise first from None
        return {cid: sample for cid, sample in (t.result() for t in tasks) if sample is not None}

    async def _read_plan(
        self, plan: _Plan, sent: float, limit: asyncio.Semaphore
    ) -> ChassisSample | None:
        """One poll of a chassis by its known source; ``None`` when it gave no power."""
        docs: list[dict[str, Any] | None] = []
        for path in plan.paths:
            async with limit:
                docs.append(await self._get_optional(path))
        return _sample_of(self.name, plan.source, docs, sent)

    async def _find_source(
        self, cid: str, sent: float, limit: asyncio.Semaphore, *, refresh: bool
    ) -> ChassisSample | None:
        """Try the chassis' power sources in order; remember and log the first that answers.

        ``refresh``: read the chassis resource again first (a firmware update may have changed
        what it links).
        """
        if refresh:
            async with limit:
                doc = await self._get_optional(self._chassis_path(cid))
            if doc is not None:
                self._chassis_docs[cid] = doc
        chassis = self._chassis_docs.get(cid, {})
        env = link(chassis, "EnvironmentMetrics")
        strict = env is not None or not chassis  # linked, or no chassis document to tell
        env = env or self._chassis_path(cid) + "/EnvironmentMetrics"
        candidates: list[tuple[PowerSource, str | None]] = [
            (PowerSource.ENVIRONMENT_METRICS, env),
            (PowerSource.POWER_SUBSYSTEM, link(chassis, "PowerSubsystem")),
            (PowerSource.POWER, link(chassis, "Power")),
            (PowerSource.SENSORS, link(chassis, "Sensors")),
        ]
        for source, path in candidates:
            if path is None:
                continue
            try:
                plan = await self._plan(source, path, limit)
                sample = None if plan is None else await self._read_plan(plan, sent, limit)
            except DeviceError as exc:
                if source is PowerSource.ENVIRONMENT_METRICS and strict:
                    raise
                log.warning("redfish_power_source_unusable", device=self.name, error=str(exc))
                continue
            if plan is not None and sample is not None:
                self._plans[cid] = plan
                self._unpowered.pop(cid, None)
                log.info("redfish_power_source", device=self.name, chassis=cid, source=source)
                return sample
        if cid not in self._unpowered:
            log.info("redfish_chassis_without_power", device=self.name, chassis=cid)
        self._unpowered[cid] = time.monotonic()
        return None

    async def _plan(self, source: PowerSource, path: str, limit: asyncio.Semaphore) -> _Plan | None:
        """The resources to GET each poll for ``source``, found from its top resource."""
        if source in (PowerSource.ENVIRONMENT_METRICS, PowerSource.POWER):
            return _Plan(source, (path,))
        async with limit:
            top = await self._get_optional(path)
        if source is PowerSource.POWER_SUBSYSTEM:
            supplies = link(top, "PowerSupplies")
            if supplies is None:
                return None
            async with limit:
                collection = await self._get_optional(supplies)
            metrics: list[str] = []
            for supply in members(collection)[:MAX_PARTS_PROBED]:
                async with limit:
                    found = link(await self._get_optional(supply), "Metrics")
                if found is not None:
                    metrics.append(found)
            return _Plan(source, tuple(metrics)) if metrics else None
        sensors: list[str] = []
        for sensor in members(top)[:MAX_PARTS_PROBED]:
            async with limit:
                doc = await self._get_optional(sensor)
            reading = sensor_power(doc)
            if reading is not None and reading[0] == "Chassis":
                return _Plan(source, (sensor,))
            if reading is not None and reading[0] == "PowerSupply":
                sensors.append(sensor)
        return _Plan(source, tuple(sensors)) if sensors else None

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
            elif self._basic is not None:
                headers["Authorization"] = self._basic
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
            except (SseProtocolError, _RefusedBodyError) as exc:
                raise DeviceError(self.name, f"GET {path}: {exc}") from None
            await self._reauthenticate(token)

    async def _consume_stream(self, path: str, resp: httpx.Response) -> None:
        if resp.status_code != 200:
            body = await _read_capped(resp, MAX_ERROR_BODY_BYTES)
            reply = _Reply(resp.status_code, resp.reason_phrase, resp.headers, body)
            raise DeviceError(self.name, f"GET {path}: {reply.summary()}")
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            raise DeviceError(self.name, f"GET {path}: the answer is not an event stream")
        _check_uncompressed(resp)
        log.info("redfish_stream_open", device=self.name, path=path, resume=self.last_event_id)
        decoder = SseDecoder()
        async for chunk in resp.aiter_raw():
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
            samples = self._read_chassis_only(parse_metric_report(self.name, doc, time.time()))
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
        """Set ``<chassis>_power_limit`` (W) through the chassis' power-limit Control, or through
        its ``Power`` resource when it offers no Control (see :meth:`_limit_target`)."""
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
        target = await self._limit_target(cid)
        try:
            await self._write_limit(name, target, value)
        except DeviceError:
            self._limit_targets.pop(cid, None)  # looked for again: the BMC may have changed
            raise

    async def _write_limit(self, name: str, target: _LimitTarget, value: float) -> None:
        """GET the resource, refuse a value it does not allow, PATCH the new limit."""
        path = target.path
        reply = await self._request("GET", path)
        doc = self._document("GET", path, reply)
        body: dict[str, Any]
        if target.resource is LimitResource.POWER:
            limits = parse_power_limit(self.name, doc)
            body = power_limit_patch(value)
        else:
            limits = parse_control(self.name, doc)
            body = {"SetPoint": value}
            if limits.control_mode == "Disabled":
                body["ControlMode"] = "Automatic"
        if not limits.allows(value):
            raise WriteRefusedError(
                self.name,
                f"{name} = {value:g} W is outside {_range_text(limits)} allowed by {path}",
            )
        etag = reply.headers.get("etag")
        headers = {"If-Match": etag} if etag else None
        answer = await self._request("PATCH", path, body=body, headers=headers)
        if answer.status not in (200, 202, 204):
            raise DeviceError(self.name, f"PATCH {path}: {answer.summary()}")
        log.info(
            "device_write",
            device=self.name,
            point=name,
            value=value,
            unit="W",
            path=path,
            resource=target.resource,
        )

    async def _limit_target(self, cid: str) -> _LimitTarget:
        """Where the chassis' power limit is written, in this order of preference:

        1. the Control that ``EnvironmentMetrics.PowerLimitWatts.DataSourceUri`` names;
        2. ``<chassis>/Controls/PowerLimit`` when the chassis links ``Controls`` or its
           ``EnvironmentMetrics`` has a ``PowerLimitWatts`` that names no Control;
        3. the older ``Power`` resource (``PowerControl[0].PowerLimit.LimitInWatts``) when the
           chassis links it and offers neither of the above;
        4. ``<chassis>/Controls/PowerLimit`` (where DMTF's mockups put it) otherwise.

        ``EnvironmentMetrics`` is also looked for at ``<chassis>/EnvironmentMetrics`` when the
        chassis does not link it; an error there then means it has none.
        """
        known = self._limit_targets.get(cid)
        if known is not None:
            return known
        chassis = self._chassis_docs.get(cid, {})
        base = self._chassis_path(cid)
        env_link = link(chassis, "EnvironmentMetrics")
        try:
            env = await self._get_optional(env_link or base + "/EnvironmentMetrics")
        except DeviceError:
            if env_link is not None or not chassis:
                raise
            env = None
        named = power_limit_uri(env)
        power = link(chassis, "Power")
        has_control = link(chassis, "Controls") is not None or (
            env is not None and "PowerLimitWatts" in env
        )
        if named is not None:
            target = _LimitTarget(LimitResource.CONTROL, named)
        elif power is not None and not has_control:
            target = _LimitTarget(LimitResource.POWER, power)
        else:
            target = _LimitTarget(LimitResource.CONTROL, base + "/Controls/PowerLimit")
        self._limit_targets[cid] = target
        log.info(
            "redfish_power_limit_target",
            device=self.name,
            chassis=cid,
            resource=target.resource,
            path=target.path,
        )
        return target

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
        elif auth and self._basic is not None:
            merged["Authorization"] = self._basic
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
        except _RefusedBodyError as exc:
            raise DeviceError(self.name, f"{method} {path}: {exc}") from None
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
            if reply.status == 401:
                how = "with HTTP Basic" if self._basic is not None else "after logging in anew"
                raise DeviceError(
                    self.name,
                    f"{method} {path}: {reply.summary()} {how} as {self.cfg.username!r}; "
                    "the BMC does not accept this user's credentials; check them",
                )
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


def _sample_of(
    device: str, source: PowerSource, docs: Sequence[Mapping[str, Any] | None], sent: float
) -> ChassisSample | None:
    """A chassis sample from the documents of its plan; ``None`` when they hold no power."""
    if source is PowerSource.ENVIRONMENT_METRICS:
        doc = docs[0] if docs else None
        sample = None if doc is None else parse_environment_metrics(device, doc, sent)
        return sample if sample is not None and sample.power_w is not None else None
    if source is PowerSource.POWER:
        return parse_power_resource(docs[0] if docs else None, sent)
    if source is PowerSource.POWER_SUBSYSTEM:
        inputs = [w for w in map(power_supply_input_w, docs) if w is not None]
        watts = math.fsum(inputs) if inputs else None
    else:
        watts = power_sensor_total(r for r in map(sensor_power, docs) if r is not None)
    return None if watts is None else ChassisSample(power_w=watts, source_ts=sent)


def pinned_context(fingerprint_sha256: str) -> ssl.SSLContext:
    """A TLS client context that accepts exactly the certificate with this SHA-256 (of its DER).

    The chain and the host name are not checked (BMCs ship self-signed certificates); the pin
    is checked at the end of the handshake, before any request, credentials included, is sent.
    """
    expected = fingerprint_sha256.replace(":", "").lower()

    class PinnedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            seen = hashlib.sha256(der).hexdigest() if der else "no certificate"
            if seen != expected:
                raise ssl.SSLCertVerificationError(
                    f"the certificate's SHA-256 is {seen}, not the pinned {expected} "
                    "(tls_fingerprint_sha256)"
                )

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.sslobject_class = PinnedObject
    return context


class _RefusedBodyError(Exception):
    """An answer body that is not read: over the size limit, or compressed."""


def _check_uncompressed(response: httpx.Response) -> None:
    """Refuse a compressed answer: ``Accept-Encoding: identity`` asked for none, and a few
    kilobytes of gzip can unpack to gigabytes before any size limit could see them."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _RefusedBodyError(
            f"the answer is compressed (Content-Encoding: {encoding[:40]!r}), "
            "though only an uncompressed one was accepted"
        )


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body as sent, at most ``limit`` bytes."""
    _check_uncompressed(response)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise _RefusedBodyError(f"the answer exceeds {limit} bytes")
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
