"""The MMS server (libiec61850 through pyiec61850-ng) in its own thread.

libiec61850 calls block and hold the interpreter lock, so the server and every update live on
one worker thread. The asyncio side computes a batch from the store once per cycle and hands it
over; the worker applies the whole batch under one model lock (``IedServer_lockDataModel``), so
a client never reads half a cycle. Values are served in the table's units with the point's
quality (good / questionable / invalid validity) and source timestamp; an invalid device is
served as invalid, never as a stale good value.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.iec61850.model import TABLE, build_model
from pswd_gateway.store import PointStore

__all__ = ["MmsServer"]

log = get_logger("iec61850")

VALIDITY: Final = {Quality.GOOD: 0, Quality.INVALID: 2, Quality.QUESTIONABLE: 3}
"""IEC 61850-7-3 quality validity bits as libiec61850 encodes them."""

Update = tuple[str, float, int, int]
"""(LD/LN.DO, value, quality bits, timestamp ms)."""


@dataclass
class MmsStats:
    batches_total: int = 0
    updates_total: int = 0
    last_batch_s: float = 0.0


class MmsServer:
    def __init__(
        self,
        store: PointStore,
        site: Callable[[], SiteConfig],
        *,
        ied_name: str = "PSWD",
        host: str = "127.0.0.1",
        port: int = 10102,
        max_connections: int = 10,
        interval_s: float = 0.1,
        goose_interface: str | None = None,
        goose_times_ms: tuple[int, int] = (4, 1000),
    ) -> None:
        self.goose_interface = goose_interface
        self.goose_times_ms = goose_times_ms
        self.store = store
        self.site = site
        self.ied_name = ied_name
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.interval_s = interval_s
        self.stats = MmsStats()
        self._queue: queue.Queue[list[Update] | None] = queue.Queue(maxsize=4)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, tuple[float, int]] = {}
        self._wake: asyncio.Event | None = None
        self._qualities: dict[str, Quality] = {}
        self._subscription: Any = None

    # ---- lifecycle ----

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iec61850-mms", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 10.0)
        if self._error is not None:
            raise self._error
        self._wake = asyncio.Event()
        self._subscription = self.store.subscribe(self._on_points)
        self._task = asyncio.create_task(self._feed(), name="iec61850-feed")
        log.info("mms_started", host=self.host, port=self.port, ied=self.ied_name)

    def _on_points(self, points: Sequence[Point]) -> None:
        """A quality change (a device going or coming back) is an event: publish it now, not at
        the next cycle, so GOOSE carries it within milliseconds."""
        for p in points:
            if self._qualities.get(p.name) is not p.quality:
                self._qualities[p.name] = p.quality
                if self._wake is not None:
                    self._wake.set()

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1.0)
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    # ---- the worker thread: owns every libiec61850 object ----

    def _run(self) -> None:
        import pyiec61850.pyiec61850 as m  # noqa: PLC0415 - loads the C library in this thread

        try:
            goose = self.goose_times_ms if self.goose_interface else None
            model, refs = build_model(self.ied_name, m, goose)
            kinds = {row.reference: row.cdc for row in TABLE}
            # IedServer_createWithConfig (connection limit) needs a TLS configuration in these
            # bindings; without TLS the library's default limit applies.
            server = m.IedServer_create(model)
            if hasattr(m, "IedServer_setLocalIpAddress"):
                m.IedServer_setLocalIpAddress(server, self.host)
            if self.goose_interface:
                m.IedServer_setGooseInterfaceId(server, self.goose_interface)
            m.IedServer_start(server, self.port)
            running = m.IedServer_isRunning(server)
            if running and self.goose_interface:
                m.IedServer_enableGoosePublishing(server)
        except Exception as exc:  # noqa: BLE001 - any failure is reported to start()
            self._error = exc
            self._ready.set()
            return
        if not running:
            self._error = OSError(f"IEC 61850 server did not start on {self.host}:{self.port}")
            self._ready.set()
            return
        self._ready.set()
        try:
            while (batch := self._queue.get()) is not None:
                t0 = time.perf_counter()
                m.IedServer_lockDataModel(server)
                try:
                    for ref, value, quality, ts_ms in batch:
                        mag, q, t = refs[ref]
                        if kinds[ref] == "SPS":
                            m.IedServer_updateBooleanAttributeValue(server, mag, value >= 0.5)
                        else:
                            m.IedServer_updateFloatAttributeValue(server, mag, value)
                        m.IedServer_updateQuality(server, q, quality)
                        m.IedServer_updateUTCTimeAttributeValue(server, t, ts_ms)
                finally:
                    m.IedServer_unlockDataModel(server)
                self.stats.batches_total += 1
                self.stats.updates_total += len(batch)
                self.stats.last_batch_s = time.perf_counter() - t0
        finally:
            m.IedServer_stop(server)
            m.IedServer_destroy(server)
            m.IedModel_destroy(model)

    # ---- the asyncio side ----

    def batch(self) -> list[Update]:
        """What changed in the store since the last batch, in the table's units."""
        snap = self.store.snapshot(time.time())
        site = self.site()
        out: list[Update] = []
        for row in TABLE:
            got = row.source(snap, site)
            if got is None:
                continue
            value, quality, ts = got
            bits = VALIDITY[quality]
            if self._last.get(row.reference) == (value, bits):
                continue
            self._last[row.reference] = (value, bits)
            out.append((row.reference, float(value), bits, int(ts * 1000)))
        return out

    async def _feed(self) -> None:
        while True:
            batch = self.batch()
            if batch:
                try:
                    self._queue.put_nowait(batch)
                except queue.Full:  # the worker is behind: this cycle's values wait for the next
                    for ref, *_ in batch:
                        self._last.pop(ref, None)
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
