"""The server-sent events decoder (southbound.redfish.sse): WHATWG rules, bounded, pure."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.southbound.redfish.sse import SseDecoder, SseEvent, SseProtocolError


def decode(*chunks: bytes, limit: int = 1 << 20) -> tuple[list[SseEvent], SseDecoder]:
    decoder = SseDecoder(max_event_bytes=limit)
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events, decoder


def test_events_are_dispatched_on_a_blank_line_with_their_id() -> None:
    """``id:`` then ``data:`` then a blank line is one message event with that id."""
    events, decoder = decode(b'id: 7\ndata: {"a":1}\n\nid: 8\ndata: x\n\n')
    assert events == [SseEvent("message", '{"a":1}', "7"), SseEvent("message", "x", "8")]
    assert decoder.last_event_id == "8"


def test_multi_line_data_is_joined_and_the_event_type_is_kept() -> None:
    """Several data lines are joined with LF; ``event:`` names the type."""
    events, _ = decode(b"event: MetricReport\ndata: a\ndata:b\ndata\n\n")
    assert events == [SseEvent("MetricReport", "a\nb\n", "")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_accepted(eol: bytes) -> None:
    """CRLF, LF and CR all end lines (a CR at a chunk end followed by LF is one line end)."""
    stream = eol.join([b"id: 1", b"data: x", b"", b"data: y", b"", b""])
    events, _ = decode(stream)
    assert [e.data for e in events] == ["x", "y"]
    split = [stream[i : i + 1] for i in range(len(stream))]
    events, _ = decode(*split)
    assert [e.data for e in events] == ["x", "y"]


def test_comments_unknown_fields_and_a_leading_bom_are_ignored() -> None:
    """``:`` lines keep a connection alive; unknown fields are not errors."""
    events, decoder = decode("\ufeff: keep-alive\nfoo: bar\ndata: x\nretry: 1500\n\n".encode())
    assert events == [SseEvent("message", "x", "")]
    assert decoder.retry_ms == 1500


def test_an_id_with_nul_is_ignored_and_an_id_without_data_still_counts() -> None:
    """The last event id moves on dispatch even when there is no data to deliver."""
    events, decoder = decode(b"id: 5\n\nid: a\x00b\ndata: x\n\n")
    assert events == [SseEvent("message", "x", "5")]
    assert decoder.last_event_id == "5"


def test_an_incomplete_event_waits_for_the_next_chunk() -> None:
    """Nothing is dispatched before the blank line arrives."""
    decoder = SseDecoder()
    assert decoder.feed(b"data: par") == []
    assert decoder.feed(b"t\n") == []
    assert decoder.feed(b"\n") == [SseEvent("message", "part", "")]


def test_oversized_lines_and_events_are_refused() -> None:
    """A stream that never ends a line, or an event above the limit, raises SseProtocolError."""
    with pytest.raises(SseProtocolError):
        decode(b"data: " + b"x" * 200, limit=100)
    with pytest.raises(SseProtocolError):
        decode(*[b"data: " + b"x" * 30 + b"\n"] * 5, limit=100)


@given(
    events=st.lists(
        st.tuples(
            st.text(
                alphabet=st.characters(
                    blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)
                ),
                max_size=30,
            ),
            st.integers(min_value=0, max_value=10**9),
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
@settings(max_examples=200, deadline=None)
def test_chunk_boundaries_never_change_the_events(
    events: list[tuple[str, int]], cuts: list[int]
) -> None:
    """The same stream cut anywhere decodes to the same events."""
    stream = b"".join(f"id: {i}\r\ndata: {d}\r\n\r\n".encode() for d, i in events)
    whole, _ = decode(stream)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    split, _ = decode(*pieces)
    assert split == whole
    assert [(e.data, e.last_event_id) for e in whole] == [(d, str(i)) for d, i in events]


@given(st.lists(st.binary(max_size=200), max_size=10))
@settings(max_examples=300, deadline=None)
def test_hostile_bytes_give_events_or_a_protocol_error(chunks: list[bytes]) -> None:
    """Whatever a server streams, the decoder returns events or raises SseProtocolError."""
    decoder = SseDecoder(max_event_bytes=256)
    try:
        for chunk in chunks:
            for event in decoder.feed(chunk):
                assert isinstance(event.data, str)
    except SseProtocolError:
        pass


def test_a_line_trickled_in_small_chunks_costs_time_in_proportion_to_its_length() -> None:
    """A BMC that sends an endless line 1 KiB at a time is refused at the limit after about as
    much work as one 8 MiB chunk (the whole buffer is not searched and copied again for every
    chunk: that took 12 s of CPU here, with the event loop in between each 1 KiB)."""
    decoder = SseDecoder()
    piece = b"x" * 1024

    def trickle() -> None:
        decoder.feed(b"data: ")
        for _ in range(9 * 1024):
            decoder.feed(piece)

    started = time.process_time()
    with pytest.raises(SseProtocolError, match="exceeds 8388608 bytes without a line end"):
        trickle()
    assert time.process_time() - started < 2.0, "CPU seconds for an 8 MiB line in 1 KiB chunks"
