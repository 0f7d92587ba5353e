"""The poll scheduler: one task per device on absolute deadlines, with IEC 61850-style quality.

- Deadlines are ``t0 + k·interval`` on the monotonic clock: no drift however long polls take.
  ``t0`` is a whole multiple of the interval, so devices polled at the same interval are polled
  on one grid: the grid meter's and the battery's readings belong to the same instants.
- A slot whose deadline passed by a whole interval (the previous poll was still running, or the
  loop was late) is counted in ``overruns_total`` and skipped — never queued.
- Each poll runs under ``asyncio.timeout(driver.timeout_s)``.
- A failed or timed-out poll marks the device ``questionable`` at once; ``invalid_after_s``
  without a good reading marks it ``invalid``; a good reading brings fresh ``good`` points.
- A failed poll closes the connection (a late reply would otherwise answer the next request:
  Modbus clients match replies in order) and reconnects at the next slot: a lost reply, or a
  short burst of late ones on a busy machine, costs only its slots. From the
  ``BACKOFF_AFTER``-th failure in a row the reconnects back off exponentially (0.1 s doubling to
  5 s) inside the deadline grid: never in a tight loop against a device that is gone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from pswd_gateway.domain.histogram import LATENCY_BUCKETS_S
from pswd_gateway.domain.points import Quality
from pswd_gateway.domain.polling import Percentiles, PollStats
from pswd_gateway.errors import DeviceError
from pswd_gateway.logging import get_logger
from pswd_gateway.southbound.base import Driver
from pswd_gateway.store import PointStore

__all__ = ["LATENESS_BUCKETS_S", "Percentiles", "PollStats", "Poller"]

log = get_logger("poller")

LATENESS_BUCKETS_S = LATENCY_BUCKETS_S
CONNECT_TIMEOUT_S = 2.0
"""Connecting (TCP, sessions, SunSpec chain check) is not latency-critical: at least this long."""
BACKOFF_AFTER = 3
"""Failures in a row before reconnects back off."""
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
LOG_EVERY_S = 10.0


class _WaitingToReconnect(Exception):  # noqa: N818 - a signal, not an error
    """The back-off since the last failure has not elapsed: this slot is skipped."""


class Poller:
    """Polls one driver on absolute deadlines and writes readings into the store."""

    def __init__(
        self,
        driver: Driver,
        store: PointStore,
        *,
        invalid_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.driver = driver
        self.store = store
        self.invalid_after_s = invalid_after_s
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self.stats = PollStats(driver.name, driver.poll_interval_s)
        self._connected = False
        self._backoff_s = BACKOFF_MIN_S
        self._failures_in_row = 0
        self._next_connect = 0.0
        self._last_good = clock()
        self._last_log = -math.inf

    @property
    def name(self) -> str:
        return self.driver.name

    async def run(self) -> None:
        """Poll until cancelled."""
        interval = self.driver.poll_interval_s
        now = self._clock()
        t0 = math.ceil(now / interval) * interval  # one grid for every device of this interval
        self._last_good = now
        k = 0
        try:
            while True:
                deadline = t0 + k * interval
                now = self._clock()
                if now < deadline:
                    await self._sleep(deadline - now)
                    now = self._clock()
                missed = int((now - deadline) // interval)
                if missed > 0:
                    self.stats.overruns_total += missed
                    self._log_rate_limited("poll_overrun", skipped=missed)
                    k += missed
                    deadline = t0 + k * interval
                self.stats.last_tick = now
                self.stats.observe_lateness(max(0.0, now - deadline))
                await self.poll_once()
                k += 1
        finally:
            self._connected = False

    async def poll_once(self) -> None:
        """One poll: connect if needed, read, update the store and the device's quality."""
        self.stats.polls_total += 1
        now = self._clock()
        try:
            if not self._connected:
                if now < self._next_connect:
                    raise _WaitingToReconnect  # noqa: TRY301
                async with asyncio.timeout(max(self.driver.timeout_s, CONNECT_TIMEOUT_S)):
                    await self.driver.connect()
                self._connected = True
                self.stats.reconnects_total += 1
            async with asyncio.timeout(self.driver.timeout_s):
                points = await self.driver.read()
        except _WaitingToReconnect:
            self._failed(now, None)
        except TimeoutError:
            self.stats.timeouts_total += 1
            self._failed(now, f"no answer within {self.driver.timeout_s * 1e3:.0f} ms")
        except DeviceError as exc:
            self._failed(now, str(exc))
        except OSError as exc:
            self._failed(now, f"{type(exc).__name__}: {exc}")
        else:
            self._succeeded(now)
            self.store.update(points)

    async def write(self, point: str, value: float) -> None:
        """Write one point through the driver within the device's timeout.

        Refused (``DeviceError``, nothing sent) while the device's readings are invalid: it has
        been gone for ``invalid_after_ms`` and a write would only wait out its timeout. Writes
        and their failures are counted beside the polls."""
        self.stats.writes_total += 1
        if self.stats.quality is Quality.INVALID:
            self.stats.write_errors_total += 1
            raise DeviceError(
                self.name, f"not written: the device is gone ({self.stats.last_error})"
            )
        try:
            async with asyncio.timeout(self.driver.timeout_s):
                await self.driver.write(point, value)
        except TimeoutError:
            self.stats.write_errors_total += 1
            raise DeviceError(
                self.name, f"{point}: no answer within {self.driver.timeout_s * 1e3:.0f} ms"
            ) from None
        except (DeviceError, OSError):
            self.stats.write_errors_total += 1
            raise

    def _succeeded(self, now: float) -> None:
        self._backoff_s = BACKOFF_MIN_S
        self._failures_in_row = 0
        self._last_good = now
        self.stats.last_success_wall = self._wall()
        if not self.stats.up:
            log.info("device_up", device=self.name)
        self.stats.up = True
        self.stats.quality = Quality.GOOD
        self.stats.last_error = None

    def _failed(self, now: float, reason: str | None) -> None:
        """A failed slot; ``reason`` is None when the slot was skipped during back-off."""
        self.stats.errors_total += 1
        if reason is not None:
            self.stats.last_error = reason
            if self._connected:
                self._connected = False
                asyncio.get_running_loop().create_task(self._close_quietly())
            if self._failures_in_row < BACKOFF_AFTER - 1:
                self._next_connect = now  # reconnect at the next slot
            else:
                self._next_connect = now + self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            self._failures_in_row += 1
            self._log_rate_limited("poll_failed", error=reason)
        self.stats.up = False
        target = (
            Quality.INVALID
            if now - self._last_good >= self.invalid_after_s
            else Quality.QUESTIONABLE
        )
        if self.stats.quality is not target:
            self.stats.quality = target
            event = "device_invalid" if target is Quality.INVALID else "device_questionable"
            log.warning(event, device=self.name, error=self.stats.last_error)
        self.store.mark_device(self.name, target)

    async def _close_quietly(self) -> None:
        try:
            async with asyncio.timeout(self.driver.timeout_s):
                await self.driver.close()
        except (TimeoutError, DeviceError, OSError) as exc:
            log.debug("driver_close_failed", device=self.name, error=str(exc))

    def _log_rate_limited(self, event: str, **kw: object) -> None:
        now = self._clock()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(event, device=self.name, **kw)
