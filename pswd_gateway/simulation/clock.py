"""The twin's clock: seconds since the twin started, tied to POSIX time once, at start."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SimClock"]


class SimClock:
    """Simulation time ``t`` = ``clock() - start``; :meth:`posix` maps it to wall-clock time.

    ``clock`` is monotonic (``time.monotonic`` by default) so wall-clock steps cannot move the
    physics backwards; tests may pass a fake.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._start = clock()
        self._posix_start = wall()

    def restart(self, at_s: float = 0.0) -> None:
        """Make ``now()`` ``at_s`` again (called when the twin starts; ``at_s`` is how far its
        physics was already integrated, so that time never runs backwards for it)."""
        self._start = self._clock() - at_s
        self._posix_start = self._wall() - at_s

    def now(self) -> float:
        """Seconds since the twin started."""
        return self._clock() - self._start

    def posix(self, t: float) -> float:
        """The POSIX time of simulation time ``t``."""
        return self._posix_start + t

    def from_posix(self, posix_ts: float) -> float:
        """The simulation time of a POSIX timestamp (e.g. a point's ``source_ts``)."""
        return posix_ts - self._posix_start
