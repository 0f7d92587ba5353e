"""Hostile OPC UA clients against the gateway's asyncua server (a free loopback port).

Raw bytes on the wire: random bytes, and a valid conversation (HEL, OPN with policy None,
GetEndpoints, CLO) with bytes changed, sizes lying and the stream cut anywhere. The server
stays up: after each one a HEL is still acknowledged, and afterwards a secure client signs in
and reads. A message that declares more than the receive buffer, or cannot be decoded, ends its
connection with an Error message.

Method calls by a signed-in operator with hypothesis-drawn arguments (wrong types and counts,
NaN and infinities, huge strings, negative durations, absurd powers, grid signals with a field
spoiled): each is answered with a
precise Bad status code, nothing of a refused call is stored, and nothing is logged as an
error by the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Client, Node, ua
from asyncua.common.connection import SecureConnection, TransportLimits
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.ua_binary import struct_to_binary
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from test_opcua import Site, announcement, client_certificate, config, secure_client

from fuzzing import bounded, long_run_marks
from pswd_gateway.config import GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.grid_signals import SignalRequest
from pswd_gateway.domain.identity import SYSTEM
from pswd_gateway.domain.workloads import Announcement
from pswd_gateway.northbound.opcua.guard import GuardedProcessor
from pswd_gateway.northbound.opcua.methods import LIMIT_RANGE_MW, MAX_SIGNAL_JSON_BYTES
from pswd_gateway.security.certs import init_opcua_certs, trust_opcua_client

pytestmark = [pytest.mark.integration, pytest.mark.fuzz, *long_run_marks()]

T = TypeVar("T")

ENDPOINT_PATH = b"/pswd"
READ_WAIT_S = 0.05
"""How long a raw connection is read after its bytes were sent (the server answers or closes
within milliseconds on loopback; a conversation cut short is simply left waiting)."""


class _Errors(logging.Handler):
    """Records what the server logs at ERROR or above while calls are made."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [
            f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[1]!r})" if r.exc_info else "")
            for r in self.records
        ]
        self.records.clear()
        return out


@dataclass
class LiveOpcUa:
    gw: Gateway
    site: Site
    port: int
    loop: asyncio.AbstractEventLoop
    operator: Client
    pswd: Node
    idx: int
    errors: _Errors

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="module")
def live_opcua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveOpcUa]:
    """The whole gateway with only its OPC UA listener (port 0: a free one), on an event loop
    of its own, and an operator signed in over Basic256Sha256."""
    tmp: Path = tmp_path_factory.mktemp("hostile-opcua")
    certs = tmp / "certs"
    init_opcua_certs(certs, ["127.0.0.1", "localhost"])
    cert, key = client_certificate(tmp, "scada")
    trust_opcua_client(certs, cert)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hostile-opcua", daemon=True)
    thread.start()
    settings = config(tmp, 0).model_dump(mode="json", exclude={"config_dir"})
    # the protocol is under test here, not the listener's limit on new connections
    settings["listeners"]["opcua"]["max_new_connections_per_s"] = 0
    gw = Gateway(GatewayConfig.model_validate(settings))
    errors = _Errors()
    asyncua_log = logging.getLogger("asyncua")
    asyncua_log.addHandler(errors)

    async def start() -> tuple[int, Client, Node, int]:
        await gw.start()
        assert gw.opcua is not None
        assert gw.opcua.server is not None
        port: int = gw.opcua.server.bserver.port
        site = Site(gw, f"opc.tcp://127.0.0.1:{port}/pswd", certs, cert, key)
        operator = await secure_client(site, "operator")
        await operator.connect()
        idx = await operator.get_namespace_index("urn:pswd:gateway")
        return port, operator, operator.get_node(ua.NodeId("PSWD", idx)), idx

    try:
        port, operator, pswd, idx = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        site = Site(gw, f"opc.tcp://127.0.0.1:{port}/pswd", certs, cert, key)
        yield LiveOpcUa(gw, site, port, loop, operator, pswd, idx, errors)
        asyncio.run_coroutine_threadsafe(operator.disconnect(), loop).result(30)
    finally:
        asyncua_log.removeHandler(errors)
        asyncio.run_coroutine_threadsafe(gw.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# ---- raw bytes ----------------------------------------------------------------------------


def hello(url: bytes, receive: int = 65535, send: int = 65535) -> bytes:
    body = struct.pack("<IIIIIi", 0, receive, send, 0, 0, len(url)) + url
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


def conversation(port: int) -> bytes:
    """What a client says to open a None channel and ask for the endpoints, then close."""
    url = f"opc.tcp://127.0.0.1:{port}/pswd"
    channel = SecureConnection(SecurityPolicyNone(), TransportLimits())
    open_request = ua.OpenSecureChannelRequest()
    open_request.Parameters.RequestType = ua.SecurityTokenRequestType.Issue
    open_request.Parameters.SecurityMode = ua.MessageSecurityMode.None_
    open_request.Parameters.RequestedLifetime = 60_000
    open_request.Parameters.ClientNonce = b""
    opn = channel.message_to_binary(
        struct_to_binary(open_request), message_type=ua.MessageType.SecureOpen, request_id=1
    )
    endpoints = ua.GetEndpointsRequest()
    endpoints.Parameters.EndpointUrl = url
    msg = channel.message_to_binary(struct_to_binary(endpoints), request_id=2)
    clo = channel.message_to_binary(
        struct_to_binary(ua.CloseSecureChannelRequest()),
        message_type=ua.MessageType.SecureClose,
        request_id=3,
    )
    return hello(url.encode()) + opn + msg + clo


def u32(n: int) -> bytes:
    return struct.pack("<I", n % 2**32)


u32s = st.one_of(
    st.sampled_from([0, 1, 7, 8, 9, 8191, 8192, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1]),
    st.integers(min_value=0, max_value=2**32 - 1),
)
"""Sizes and counts: the edges of the fields and anything between."""


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One OPC UA TCP message of any type whose header may lie about its size."""
    kind = draw(st.sampled_from([b"HEL", b"ACK", b"ERR", b"RHE", b"OPN", b"MSG", b"CLO", b"ZZZ"]))
    chunk = draw(st.sampled_from([b"F", b"C", b"A", b"\x00"]))
    if kind == b"HEL" and draw(st.booleans()):
        url = draw(st.binary(max_size=300))
        claimed = draw(st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1))
        body = b"".join(u32(draw(u32s)) for _ in range(5))
        body += struct.pack("<i", len(url) if claimed is None else claimed) + url
    else:
        body = draw(st.binary(max_size=300))
    size = draw(
        st.one_of(
            st.just(8 + len(body)),
            st.integers(min_value=-16, max_value=16).map(lambda d: max(0, 8 + len(body) + d)),
            u32s,
        )
    )
    return kind + chunk + u32(size) + body


@st.composite
def wire_bytes(draw: st.DrawFn, port: int) -> bytes:
    """Random bytes; messages that lie; or the valid conversation changed and cut short."""
    choice = draw(st.sampled_from(["random", "frames", "mutated"]))
    if choice == "random":
        return draw(st.binary(min_size=1, max_size=600))
    if choice == "frames":
        head = draw(st.sampled_from([b"", hello(b"opc.tcp://127.0.0.1" + ENDPOINT_PATH)]))
        return head + b"".join(draw(st.lists(frames(), min_size=1, max_size=4)))
    data = bytearray(conversation(port))
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        data[draw(st.integers(min_value=0, max_value=len(data) - 1))] = draw(
            st.integers(min_value=0, max_value=255)
        )
    return bytes(data[: draw(st.integers(min_value=1, max_value=len(data)))])


def exchange(port: int, data: bytes, wait_s: float = READ_WAIT_S, *, one: bool = False) -> bytes:
    """Send ``data`` on a fresh connection; what came back until the server closed it or
    ``wait_s`` passed (``one``: or a whole message came)."""
    deadline = time.monotonic() + wait_s
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # the server closed it already: a refusal
        answer = b""
        try:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                answer += chunk
                if not chunk or (one and _whole(answer)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def _whole(answer: bytes) -> bool:
    return len(answer) >= 8 and len(answer) >= struct.unpack_from("<I", answer, 4)[0]


def assert_still_answers_hello(port: int) -> None:
    url = f"opc.tcp://127.0.0.1:{port}/pswd".encode()
    answer = exchange(port, hello(url), wait_s=5.0, one=True)
    assert answer[:4] == b"ACKF", answer


def test_the_valid_conversation_gets_its_endpoints(live_opcua: LiveOpcUa) -> None:
    """The unmutated bytes the raw fuzz starts from are a conversation the server follows."""
    answer = exchange(live_opcua.port, conversation(live_opcua.port), wait_s=1.0)
    assert answer[:4] == b"ACKF", answer
    assert b"OPNF" in answer
    assert b"Basic256Sha256" in answer  # the endpoints, served on a None channel


@given(data=st.data())
@example(data=None)
@bounded(60)
def test_raw_bytes_never_take_the_server_down(live_opcua: LiveOpcUa, data: Any) -> None:
    port = live_opcua.port
    raw = b"" if data is None else data.draw(wire_bytes(port), label="raw")
    if raw:
        exchange(port, raw)
    assert_still_answers_hello(port)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"MSGF" + u32(2**31) + u32(0) + b"\x00" * 300_000, id="declares-2GiB"),
        pytest.param(b"HELF" + u32(2**32 - 1) + b"x" * 100, id="hel-declares-4GiB"),
        pytest.param(hello(b"u" * 70_000), id="hel-larger-than-the-buffer"),
    ],
)
def test_a_message_larger_than_the_receive_buffer_is_refused_when_its_header_arrives(
    live_opcua: LiveOpcUa, raw: bytes
) -> None:
    """asyncua would buffer a declared 2 GiB whole; the guard answers BadTcpMessageTooLarge
    and closes the connection, holding nothing."""
    before = GuardedProcessor.malformed_total
    answer = exchange(live_opcua.port, raw, wait_s=5.0, one=True)
    assert answer[:4] == b"ERRF", answer
    (code,) = struct.unpack_from("<I", answer, 8)
    assert code == ua.StatusCodes.BadTcpMessageTooLarge
    assert GuardedProcessor.malformed_total == before + 1
    assert live_opcua.gw.opcua is not None
    assert live_opcua.gw.opcua.refusals()["malformed"] == before + 1  # pswd_opcua_refusals_total
    server = live_opcua.gw.opcua.server if live_opcua.gw.opcua else None
    assert server is not None
    assert all(len(c._buffer) < 65536 for c in server.bserver.clients)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"MSGF" + u32(40) + b"\x00" * 32, id="msg-before-opn"),
        pytest.param(b"OPNF" + u32(40) + b"\xff" * 32, id="opn-garbage"),
        pytest.param(b"ZZZF" + u32(16) + b"\x00" * 8, id="unknown-type"),
        pytest.param(b"ACKF" + u32(28) + b"\x00" * 20, id="ack-from-a-client"),
        pytest.param(
            b"HELF" + u32(32) + struct.pack("<IIIIIi", 0, 65535, 65535, 0, 0, 2**31 - 1),
            id="hel-url-longer-than-the-message",
        ),
    ],
)
def test_a_message_that_cannot_be_decoded_ends_its_connection_with_an_error(
    live_opcua: LiveOpcUa, raw: bytes
) -> None:
    """asyncua logged these with a traceback and read on from the same connection."""
    live_opcua.errors.take()
    answer = exchange(live_opcua.port, raw, wait_s=5.0, one=True)
    assert answer[:4] == b"ERRF", answer
    assert not [r for r in live_opcua.errors.records if r.exc_info], live_opcua.errors.take()


def test_after_the_raw_fuzz_a_secure_client_signs_in_and_reads(live_opcua: LiveOpcUa) -> None:
    async def read() -> float:
        async with await secure_client(live_opcua.site, "viewer") as client:
            idx = await client.get_namespace_index("urn:pswd:gateway")
            node = client.get_node(ua.NodeId("PSWD.GridConnection.ImportLimit", idx))
            value: float = await node.read_value()
            return value

    assert live_opcua.gw.opcua is not None
    assert live_opcua.gw.opcua.unhealthy(time.time()) == []
    assert live_opcua.run(read()) > 0.0


# ---- method calls -------------------------------------------------------------------------

STRING, DOUBLE = ua.VariantType.String, ua.VariantType.Double
METHODS: dict[str, list[ua.VariantType]] = {
    "AnnounceWorkload": [STRING],
    "CancelWorkload": [STRING, STRING],
    "AcknowledgeDemandResponse": [STRING],
    "SetGridImportLimit": [DOUBLE],
    "SetGridRampLimit": [DOUBLE],
    "SubmitGridSignal": [STRING],
    "WithdrawGridSignal": [STRING],
}
"""Each method's arguments as declared."""

nasty_floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e308, -1e308, 5e-324]),
    st.floats(),
)
huge_text = st.integers(min_value=1_000, max_value=200_000).map(lambda n: "x" * n)
variants = st.one_of(
    nasty_floats.map(lambda v: ua.Variant(v, DOUBLE)),
    st.floats(width=32).map(lambda v: ua.Variant(v, ua.VariantType.Float)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(
        lambda v: ua.Variant(v, ua.VariantType.Int64)
    ),
    st.integers(min_value=0, max_value=2**32 - 1).map(
        lambda v: ua.Variant(v, ua.VariantType.UInt32)
    ),
    st.booleans().map(lambda v: ua.Variant(v, ua.VariantType.Boolean)),
    (st.text(max_size=50) | huge_text).map(lambda v: ua.Variant(v, STRING)),
    st.binary(max_size=100).map(lambda v: ua.Variant(v, ua.VariantType.ByteString)),
    st.just(ua.Variant(None, ua.VariantType.Null)),
    st.lists(st.floats(allow_nan=False), max_size=4).map(lambda v: ua.Variant(v, DOUBLE)),
)
"""Any value of any type."""


def _announcement_with(path: tuple[str, ...], value: Any) -> str:
    body = json.loads(announcement())
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(body)  # NaN and Infinity as JavaScript spells them


hostile_announcements = st.builds(
    _announcement_with,
    st.sampled_from(
        [
            ("power_profile", "peak_power_mw"),
            ("power_profile", "ramp_rate_mw_per_sec"),
            ("power_profile", "duration_estimate_sec"),
            ("power_profile", "idle_power_mw"),
            ("timing_constraints", "deadline"),
            ("workload_type",),
            ("name",),
            ("owner",),
            ("priority",),
        ]
    ),
    st.one_of(
        nasty_floats,
        st.sampled_from([-3600, -1, 0, 10**12, 2**63, -(2**63)]),
        huge_text,
        st.text(max_size=20),
        st.none(),
        st.lists(st.integers(), max_size=3),
    ),
).map(lambda text: ua.Variant(text, STRING))


SIGNALS: dict[str, dict[str, Any]] = {
    "import_limit": {"kind": "import_limit", "import_limit_mw": 250},
    "shed": {"kind": "shed", "shed_mw": 20, "baseline_mw": 300},
    "ffr": {"kind": "ffr", "enabled": True, "max_mw": 40},
    "heat_request": {"kind": "heat_request", "heat_mw": 10, "supply_temp_c": 80},
}
"""A valid grid signal of some kinds, for ``SubmitGridSignal`` to be given with a field spoiled."""


def _signal_with(kind: str, field: str, value: Any) -> str:
    return json.dumps(SIGNALS[kind] | {field: value})  # NaN and Infinity as JavaScript spells them


hostile_signals = st.builds(
    _signal_with,
    st.sampled_from(sorted(SIGNALS)),
    st.sampled_from(
        ["kind", "import_limit_mw", "shed_mw", "baseline_mw", "max_mw", "droop_pct",
         "deadband_hz", "ramp_mw_per_s", "heat_mw", "supply_temp_c", "start", "end", "enabled"]
    ),
    st.one_of(
        nasty_floats,
        st.sampled_from([-1, 0, 10**12, 2**63, "2020-01-01T00:00:00Z", "2030-01-01T00:00:00"]),
        huge_text,
        st.text(max_size=20),
        st.none(),
        st.booleans(),
    ),
).map(lambda text: ua.Variant(text, STRING))  # fmt: skip


def arguments(method: str) -> st.SearchStrategy[list[ua.Variant]]:
    """Arguments of the right count and declared types with hostile values, or any values of
    any type and count."""
    declared = METHODS[method]
    right = {
        "AnnounceWorkload": st.tuples(hostile_announcements).map(list),
        "CancelWorkload": st.tuples(
            (st.text(max_size=30) | huge_text).map(lambda v: ua.Variant(v, STRING)),
            (st.text(max_size=30) | huge_text).map(lambda v: ua.Variant(v, STRING)),
        ).map(list),
        "AcknowledgeDemandResponse": st.tuples(
            (st.text(max_size=30) | huge_text).map(lambda v: ua.Variant(v, STRING))
        ).map(list),
        "SetGridImportLimit": st.tuples(nasty_floats.map(lambda v: ua.Variant(v, DOUBLE))).map(
            list
        ),
        "SetGridRampLimit": st.tuples(nasty_floats.map(lambda v: ua.Variant(v, DOUBLE))).map(list),
        "SubmitGridSignal": st.tuples(hostile_signals).map(list),
        "WithdrawGridSignal": st.tuples(
            (st.text(max_size=30) | huge_text).map(lambda v: ua.Variant(v, STRING))
        ).map(list),
    }[method]
    anything = st.lists(variants, min_size=0, max_size=len(declared) + 2)
    return right | anything


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, list[ua.Variant]]:
    method = draw(st.sampled_from(sorted(METHODS)))
    return method, draw(arguments(method))


@dataclass(frozen=True)
class Stored:
    """What a method call may change."""

    workloads: int
    import_limit_mw: float
    ramp_limit_mw_per_s: float
    acknowledged: frozenset[str]
    open_signals: int


def stored(live: LiveOpcUa) -> Stored:
    gw = live.gw
    assert gw.journal is not None
    assert gw.opcua is not None
    journal = gw.journal
    count = live.run(journal.call(journal.sync.count_workloads))
    site = gw.settings.current
    return Stored(
        count,
        site.import_limit_mw,
        site.grid_ramp_limit_mw_per_s,
        frozenset(gw.opcua.acknowledged),
        len(gw.grid_signals.open_signals()) if gw.grid_signals is not None else 0,
    )


def restore_limits(live: LiveOpcUa) -> None:
    """The configured limits again, after an example set others (an accepted limit of
    0.0011 MW would leave every later announcement without room)."""
    for what, value in (("grid_import_limit_mw", 400.0), ("grid_ramp_limit_mw_per_s", 20.0)):
        if getattr(live.gw.settings.current, what) != value:
            live.run(live.gw.settings.set(what, value, SYSTEM))
    signals = live.gw.grid_signals  # SetGridImportLimit is a grid signal (docs/grid.md)
    assert signals is not None
    for kept in signals.open_signals():
        live.run(signals.withdraw(kept.id, SYSTEM))


def valid_limit(args: list[ua.Variant]) -> bool:
    low, high = LIMIT_RANGE_MW
    return (
        len(args) == 1
        and isinstance(args[0].Value, float)
        and math.isfinite(args[0].Value)
        and low < args[0].Value <= high
    )


def valid_signal(args: list[ua.Variant]) -> bool:
    if len(args) != 1 or not isinstance(args[0].Value, str):
        return False
    if len(args[0].Value.encode("utf-8", "surrogatepass")) > MAX_SIGNAL_JSON_BYTES:
        return False
    try:
        TypeAdapter(SignalRequest).validate_json(args[0].Value)
    except ValidationError:
        return False
    return True


def valid_announcement(args: list[ua.Variant]) -> bool:
    if len(args) != 1 or not isinstance(args[0].Value, str):
        return False
    try:
        Announcement.model_validate_json(args[0].Value)
    except ValidationError:
        return False
    return True


REFUSALS = frozenset(
    {
        ua.StatusCodes.BadTypeMismatch,
        ua.StatusCodes.BadInvalidArgument,
        ua.StatusCodes.BadOutOfRange,
        ua.StatusCodes.BadNotFound,
        ua.StatusCodes.BadRequestNotAllowed,
        ua.StatusCodes.BadArgumentsMissing,
        ua.StatusCodes.BadTooManyArguments,
        ua.StatusCodes.BadInvalidState,
    }
)
"""The precise answers to an argument the method cannot take (never BadUnexpectedError)."""


@given(call=calls())
@example(call=("SetGridImportLimit", []))
@example(call=("SetGridRampLimit", [ua.Variant(1.0, DOUBLE), ua.Variant(2.0, DOUBLE)]))
@example(call=("SetGridImportLimit", [ua.Variant(math.nan, DOUBLE)]))
@example(call=("CancelWorkload", [ua.Variant("wl_x", STRING)]))
@example(call=("SubmitGridSignal", [ua.Variant(_signal_with("ffr", "max_mw", math.nan), STRING)]))
@example(call=("SubmitGridSignal", [ua.Variant(" " * (MAX_SIGNAL_JSON_BYTES + 1), STRING)]))
@example(call=("WithdrawGridSignal", [ua.Variant("x" * 200_000, STRING)]))
@example(call=("AnnounceWorkload", [ua.Variant("x" * 200_000, STRING)]))
@example(
    call=(
        "AnnounceWorkload",
        [ua.Variant(_announcement_with(("power_profile", "peak_power_mw"), math.nan), STRING)],
    )
)
@bounded(80)
def test_hostile_method_arguments_get_a_bad_status_and_store_nothing(
    live_opcua: LiveOpcUa, call: tuple[str, list[ua.Variant]]
) -> None:
    method, args = call
    restore_limits(live_opcua)
    live_opcua.errors.take()
    before = stored(live_opcua)
    status = ua.StatusCodes.Good
    result: Any = None
    try:
        result = live_opcua.run(live_opcua.pswd.call_method(f"{live_opcua.idx}:{method}", *args))
    except ua.UaStatusCodeError as exc:
        status = exc.code
    after = stored(live_opcua)
    assert live_opcua.errors.take() == []
    if status != ua.StatusCodes.Good:
        assert status in REFUSALS, ua.StatusCode(status).name
        assert after == before
        return
    # accepted: only what a valid call of this method stores
    if method.startswith("SetGrid"):
        assert valid_limit(args), args
        assert after.workloads == before.workloads
    elif method == "AnnounceWorkload":
        assert valid_announcement(args), args
        assert after.workloads == before.workloads + 1
        assert isinstance(result, str)
        assert result.startswith("wl_")
    elif method == "SubmitGridSignal":
        assert valid_signal(args), args
        assert after.open_signals == before.open_signals + 1
        assert isinstance(result, str)
        assert result.startswith("gs_")
    else:
        assert method == "AcknowledgeDemandResponse", (method, args)
        assert after.acknowledged - before.acknowledged <= {args[0].Value}


def test_a_cancel_reason_is_bounded_as_over_http(live_opcua: LiveOpcUa) -> None:
    """A reason is journalled with the cancel: at most 500 characters, as the HTTP API's."""
    pswd, idx = live_opcua.pswd, live_opcua.idx
    restore_limits(live_opcua)
    wid = live_opcua.run(pswd.call_method(f"{idx}:AnnounceWorkload", announcement()))
    with pytest.raises(ua.UaStatusCodeError) as refused:
        live_opcua.run(pswd.call_method(f"{idx}:CancelWorkload", wid, "r" * 501))
    assert refused.value.code == ua.StatusCodes.BadOutOfRange
    assert live_opcua.gw.workloads is not None
    assert wid in live_opcua.gw.workloads.active
    live_opcua.run(pswd.call_method(f"{idx}:CancelWorkload", wid, "r" * 500))
    assert wid not in live_opcua.gw.workloads.active
