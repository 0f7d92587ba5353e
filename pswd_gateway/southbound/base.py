"""The one Protocol every southbound driver implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pswd_gateway.domain.points import Point

__all__ = ["Driver"]


@runtime_checkable
class Driver(Protocol):
    """A device driver. The poller owns scheduling, timeouts and quality; a driver only talks.

    - ``read`` returns every point of the device with quality ``good`` and SI values, keyed
      ``"<device>.<point>"`` (an implausible reading: questionable or invalid, with its
      ``reason``); it raises :class:`pswd_gateway.errors.DeviceError` when the
      device does not answer or answers with something that cannot be decoded.
    - ``write`` sets one writable point (SI value) or raises ``DeviceError`` /
      ``WriteRefusedError``.
    - ``connect``/``close`` are idempotent; ``read`` after a lost connection reconnects.
    """

    @property
    def name(self) -> str: ...

    @property
    def poll_interval_s(self) -> float: ...

    @property
    def timeout_s(self) -> float: ...

    async def connect(self) -> None: ...

    async def read(self) -> Sequence[Point]: ...

    async def write(self, point: str, value: float) -> None: ...

    async def close(self) -> None: ...
