"""When a simulated device stalls, which of its requests go unanswered, how late each reply is.

``[simulation.faults]`` as pure functions of the seed, the device's name, the twin's time and
the request's number at the device (0, 1, 2 … in the order the device receives them), so that a
run with the same seed and the same requests meets the same faults:

- a reply leaves ``jitter_s(n)`` (uniform in 0…``reply_jitter_ms``) after it was computed;
- request ``n`` is never answered when ``lost(n)`` (a seeded ``lost_reply_ratio`` of them);
- stall ``k`` (k = 1, 2 …) lasts ``stall_ms`` from ``k·stall_every_s`` plus a seeded offset of
  the device within the period; a request arriving in a stall is handled when it ends.

The Modbus servers (:mod:`pswd_gateway.simulation.modbus_servers`) act on these answers.
"""

from __future__ import annotations

import math
import zlib
from typing import Final

from pswd_gateway.simulation.config import FaultsSimConfig
from pswd_gateway.simulation.noise import uniform

__all__ = ["DeviceFaults"]

_JITTER_STREAM: Final = 0x717E
_LOST_STREAM: Final = 0x1057
_STALL_STREAM: Final = 0x57A1


class DeviceFaults:
    """The faults of one device: ``DeviceFaults(cfg, seed, "grid_meter")``."""

    def __init__(self, cfg: FaultsSimConfig, seed: int, device: str) -> None:
        self.config = cfg
        self.seed = seed
        self.device = device
        self._stream = zlib.crc32(device.encode())
        self.jitter_max_s = cfg.reply_jitter_ms / 1000.0
        self.every_s = cfg.stall_every_s
        self.stall_s = cfg.stall_ms / 1000.0
        offset = uniform(seed, _STALL_STREAM ^ self._stream, 0)
        self.stall_offset_s = offset * max(self.every_s - self.stall_s, 0.0)
        """Where this device's stall lies within its period."""

    @property
    def stalls(self) -> bool:
        """Whether the device ever stalls."""
        return self.every_s > 0.0 and self.stall_s > 0.0

    def lost(self, request: int) -> bool:
        """Whether request number ``request`` is never answered."""
        ratio = self.config.lost_reply_ratio
        return ratio > 0.0 and uniform(self.seed, _LOST_STREAM ^ self._stream, request) < ratio

    def jitter_s(self, request: int) -> float:
        """How long the reply to request number ``request`` is held after it was computed."""
        if self.jitter_max_s <= 0.0:
            return 0.0
        return self.jitter_max_s * uniform(self.seed, _JITTER_STREAM ^ self._stream, request)

    def stall(self, k: int) -> tuple[float, float]:
        """(start, end) of stall ``k`` ≥ 1, twin time in seconds."""
        if k < 1 or not self.stalls:
            raise ValueError(f"{self.device} has no stall {k}")
        start = k * self.every_s + self.stall_offset_s
        return start, start + self.stall_s

    def stall_end(self, t: float) -> float | None:
        """The end of the stall ``t`` falls in (``start ≤ t < end``), or ``None``."""
        if not self.stalls:
            return None
        k = math.floor(t / self.every_s)
        if k < 1:
            return None
        start, end = self.stall(k)
        return end if start <= t < end else None

    def next_stall(self, t: float) -> tuple[float, float] | None:
        """(start, end) of the first stall that has not ended at ``t``; ``None`` without
        stalls."""
        if not self.stalls:
            return None
        k = max(math.floor(t / self.every_s), 1)
        start, end = self.stall(k)
        return (start, end) if t < end else self.stall(k + 1)
