"""Every device's poller, as one component; and the one write path to the devices.

:class:`PollerSet` builds a driver and a :class:`~pswd_gateway.southbound.poller.Poller` for each
enabled device, runs each poll loop as a supervised task, restarts the pollers of devices a
reload changed, and is the :data:`DeviceWriter` the control cycle writes through: a write goes
through the device's poller (:meth:`Poller.write`), so the device's timeout and quality apply to
writes as they do to reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pswd_gateway.domain.polling import PollStats
from pswd_gateway.errors import DeviceError, PswdError
from pswd_gateway.logging import get_logger
from pswd_gateway.southbound.factory import build_driver
from pswd_gateway.southbound.poller import Poller

if TYPE_CHECKING:
    from pswd_gateway.config import GatewayConfig, ModbusDeviceConfig, RedfishDeviceConfig
    from pswd_gateway.runtime import Supervisor
    from pswd_gateway.store import PointStore

__all__ = ["PollerSet"]

log = get_logger("southbound")

CLOSE_TIMEOUT_S = 1.0


@dataclass
class PollerSet:
    """The pollers of every enabled device (a component: ``start``/``stop``)."""

    config: GatewayConfig
    store: PointStore
    supervisor: Supervisor
    started_at: float = field(default_factory=time.monotonic)
    pollers: dict[str, Poller] = field(default_factory=dict, init=False)
    name: str = "pollers"

    async def start(self) -> None:
        self.started_at = time.monotonic()
        for device in self.config.devices:
            if device.enabled:
                self._add(device)

    async def stop(self) -> None:
        await asyncio.gather(*(self._remove(n) for n in list(self.pollers)))

    async def write(self, device: str, point: str, value: float) -> None:
        """Write one point of ``device`` through its poller (its timeout; refused while the
        device's readings are invalid, i.e. it has been gone for ``invalid_after_ms``)."""
        poller = self.pollers.get(device)
        if poller is None:
            raise DeviceError(device, "no such device, or it is disabled")
        await poller.write(point, value)

    async def reconfigure(self, config: GatewayConfig) -> tuple[list[str], list[str]]:
        """Apply a reloaded configuration: (restarted, added) device names."""
        old = {d.name: d for d in self.config.devices if d.enabled}
        new = {d.name: d for d in config.devices if d.enabled}
        changed = [n for n in old if new.get(n) != old[n]]
        added = [n for n in new if n not in old]
        self.config = config
        for name in changed:
            await self._remove(name)
        for name in changed + added:
            if name in new:
                self._add(new[name])
        return changed, added

    def stats(self) -> Sequence[PollStats]:
        return [p.stats for p in self.pollers.values()]

    def unhealthy(self, now: float) -> list[str]:
        """Pollers whose loop has not ticked for ``max(grace, 3 intervals)``."""
        grace = self.config.daemon.watchdog_grace_s
        return [
            name
            for name, p in self.pollers.items()
            if now - max(p.stats.last_tick, self.started_at) > max(grace, 3 * p.stats.interval_s)
        ]

    async def first_polls(self, timeout_s: float) -> None:
        """Wait until every device was polled once (at most ``timeout_s``; then log which not)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.stats.polls_total > 0 for p in self.pollers.values()):
                return
            await asyncio.sleep(0.02)
        slow = [n for n, p in self.pollers.items() if p.stats.polls_total == 0]
        log.warning("ready_without_first_poll", devices=slow)

    def _add(self, device: ModbusDeviceConfig | RedfishDeviceConfig) -> None:
        driver = build_driver(device, self.config)
        poller = Poller(driver, self.store, invalid_after_s=device.invalid_after_s)
        self.pollers[device.name] = poller
        self.supervisor.spawn(f"poll:{device.name}", poller.run)

    async def _remove(self, name: str) -> None:
        poller = self.pollers.pop(name, None)
        await self.supervisor.cancel(f"poll:{name}")
        if poller is not None:
            try:
                await asyncio.wait_for(poller.driver.close(), CLOSE_TIMEOUT_S)
            except (TimeoutError, PswdError, OSError) as exc:
                log.warning("driver_close_failed", device=name, error=str(exc))
