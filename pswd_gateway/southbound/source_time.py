"""When a device measured a value it does not time-stamp: refresh detection.

Modbus devices carry no time with their registers. A meter refreshes its power registers every
``T`` (its averaging window: each refresh shows the mean over the window just ended) and a poll
reads whatever the last refresh left. So a reading's own time is not when it was requested:

- a value that *changed* since the previous poll was refreshed between the two requests; its
  refresh instant is estimated as the middle of ``(max(previous request, request - T), request]``
  and the measurement it shows is centred half a window before that;
- a value that did *not* change is the same measurement as before and keeps its time while no
  refresh can have happened since: until one period after the latest instant the device can
  have refreshed it. After that the device has certainly refreshed again and repeated the value
  (a battery holding a setpoint shows the same power for seconds): a new measurement, from
  about one window before the request. A steady device keeps its readings' times advancing.

With ``T = 0`` (a device that measures when asked) the time is the request's, as before.
The control loop combines readings of different devices by these times, so a meter that shows
100 ms averages and a battery polled every 20 ms are compared at the same instant.

Pure: the times are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SourceClock"]


@dataclass
class SourceClock:
    """Source times of one device's points; ``refresh_s`` is the device's refresh period."""

    refresh_s: float = 0.0
    _previous_request: float | None = field(default=None, init=False)
    _request: float | None = field(default=None, init=False)
    _seen: dict[str, tuple[float, float, float]] = field(default_factory=dict, init=False)
    """Per key: (value, source time, latest instant its refresh can have happened)."""

    def begin(self, request_ts: float) -> None:
        """A poll's request is about to be sent at ``request_ts``."""
        self._previous_request, self._request = self._request, request_ts

    def stamp(self, key: str, value: float) -> float:
        """The source time of ``value`` read for ``key`` in the current poll."""
        request = self._request
        if request is None:
            raise RuntimeError("begin() a poll before stamping its values")
        window = self.refresh_s
        if window <= 0.0:
            return request
        seen = self._seen.get(key)
        if seen is not None and seen[0] == value and request < seen[2] + window:
            return seen[1]
        if seen is None or self._previous_request is None or seen[0] == value:
            source = request - window  # refreshed somewhere in the last window
        else:
            earliest = max(self._previous_request, request - window)
            source = 0.5 * (earliest + request) - 0.5 * window
        self._seen[key] = (value, source, request)
        return source
