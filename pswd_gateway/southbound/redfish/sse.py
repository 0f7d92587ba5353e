"""A server-sent events decoder (WHATWG HTML "event stream" rules), pure and bounded.

Feed it the bytes of a ``text/event-stream`` body in chunks of any size; it returns the events
completed by each chunk. Lines may end in CRLF, LF or CR; ``data`` lines are joined with LF;
``id`` sets the last event id (ignored when it contains NUL); ``:`` lines are comments. A line
or event larger than ``max_event_bytes`` raises :class:`SseProtocolError` instead of growing
without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["SseDecoder", "SseEvent", "SseProtocolError"]

DEFAULT_MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
_BOM: Final = "\ufeff"


class SseProtocolError(ValueError):
    """The stream is not a usable event stream (an event larger than the limit)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its type (``message`` by default), data and last event id."""

    event: str
    data: str
    last_event_id: str


class SseDecoder:
    """Incremental decoder; :attr:`last_event_id` is what to send as ``Last-Event-ID``."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""
        self.retry_ms: int | None = None
        self._pending = bytearray()
        self._skip_lf = False
        self._first_line = True
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._id_buffer = ""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Decode ``chunk``; returns the events it completed, oldest first.

        Only ``chunk`` is searched for line ends and the unfinished line is kept in a growing
        buffer, so a line trickled in many small chunks costs time in proportion to its length
        (searching the whole buffer again for each chunk would cost its square)."""
        events: list[SseEvent] = []
        start = 0
        size = len(chunk)
        # next CR / LF at or after `start`; -1 once there is none left (each found once: linear)
        cr, lf = chunk.find(b"\r"), chunk.find(b"\n")
        while start < size:
            if self._skip_lf:
                self._skip_lf = False
                if chunk[start : start + 1] == b"\n":
                    start += 1
                    continue
            if 0 <= cr < start:
                cr = chunk.find(b"\r", start)
            if 0 <= lf < start:
                lf = chunk.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 else cr if lf < 0 else min(cr, lf)
            self._pending += chunk[start:end]
            line = self._pending.decode("utf-8", "replace")
            self._pending.clear()
            start = end + 1
            if end == cr:
                self._skip_lf = True
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._pending += chunk[start:]
        if len(self._pending) > self.max_event_bytes:
            raise SseProtocolError(
                f"an event-stream line exceeds {self.max_event_bytes} bytes without a line end"
            )
        return events

    def _line(self, line: str) -> SseEvent | None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._field(name, value)
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self._data_size += len(value) + 1
            if self._data_size > self.max_event_bytes:
                raise SseProtocolError(f"an event's data exceeds {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and 0 < len(value) <= 9 and value.isascii() and value.isdigit():
            self.retry_ms = int(value)

    def _dispatch(self) -> SseEvent | None:
        self.last_event_id = self._id_buffer
        data, event = self._data, self._event
        self._data, self._data_size, self._event = [], 0, ""
        if not data:
            return None
        return SseEvent(event or "message", "\n".join(data), self.last_event_id)
