"""The link between the gateway and its MMS process, without a process: what the gateway accepts
from the process (closed shapes, bounded fields), what it vouches for before it operates, how
long it waits before a restart, and that every plain-data argument of the server crosses."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from pswd_gateway.config import Iec61850UserConfig, SiteConfig
from pswd_gateway.domain.identity import Permission
from pswd_gateway.domain.points import NOT_AVAILABLE, OUT_OF_RANGE, Point, Quality
from pswd_gateway.domain.units import SiUnit
from pswd_gateway.northbound.iec61850.link import (
    MAX_CERTIFICATE_BYTES,
    MAX_TEXT,
    Answer,
    Beat,
    Caller,
    Door,
    Failed,
    MmsSettings,
    Operate,
    Points,
    ProtocolError,
    Ready,
    Refused,
    down_frame,
    frame,
    parse_down,
    parse_up,
    read_frame,
    up_frame,
)
from pswd_gateway.northbound.iec61850.model import GooseAddress
from pswd_gateway.northbound.iec61850.process import Backoff, MmsProcess, NotVouched
from pswd_gateway.northbound.iec61850.server import MmsServer, MmsStats
from pswd_gateway.northbound.iec61850.tls import MmsTls
from pswd_gateway.security.passwords import hash_password
from pswd_gateway.security.pki import (
    CertificateHolder,
    SiteCa,
    certificate_holder,
    load_certificate,
)
from pswd_gateway.security.zones import Conduit, Gatekeeper, Policy, Refusals, Zone
from pswd_gateway.store import PointStore

HASH = hash_password("unused", iterations=1000)
USERS = (
    Iec61850UserConfig(name="tso", role="operator", password_hash=HASH),
    Iec61850UserConfig(name="desk", role="viewer", password_hash=HASH),
)
TSO = Caller("mms:tso", "operator", "scada", "tso-mms")


def test_the_settings_carry_every_plain_argument_of_the_server() -> None:
    """A keyword argument added to ``MmsServer`` (a TLS setting …) reaches the MMS process only
    through a field of ``MmsSettings``; the callables are answered over the link."""
    params = inspect.signature(MmsServer.__init__).parameters
    plain = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} - {"door", "hooks"}
    defaults = {n: params[n].default for n in plain} | {"goose_address": GooseAddress()}
    assert MmsSettings().server_kwargs() == defaults  # the server's None stands for GooseAddress()


MESSAGES = [
    Ready(),
    Failed("IEC 61850 server did not start on 127.0.0.1:102"),
    Beat(MmsStats(batches_total=3, updates_total=40, last_batch_s=0.002, connections_open=1), 2),
    Operate(7, "grid_import_limit_mw", 250.0, TSO),
    Operate(8, "demand_response_active", value=True, caller=Caller("mms:tso", "operator")),
    Refused(Caller("unknown", "none"), "mms association", "wrong password"),
    Door(ipaddress.ip_address("192.0.2.7"), zone="scada"),
    Door(ipaddress.ip_address("::1"), reason="rate", why="::1 opens connections too fast"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_what_the_process_sends_is_read_back_as_it_was(message: object) -> None:
    body = up_frame(message)[4:]  # type: ignore[arg-type]
    assert parse_up(body) == message


def _operate(**changes: object) -> bytes:
    raw: dict[str, object] = {
        "t": "operate",
        "id": 1,
        "action": "grid_import_limit_mw",
        "value": 250.0,
        "caller": {"name": "mms:tso", "role": "operator", "zone": None, "conduit": None},
    }
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\x80\x04K\x01.", "not JSON"),  # a pickle: never unpickled here
        (b"[1, 2]", "not a JSON object"),
        (b'{"t": "exec", "code": "x"}', "unknown message"),
        (b'{"t": "ready", "more": 1}', "unexpected"),
        (_operate(id=-1), "not a count"),
        (_operate(id=True), "not a count"),
        (_operate(value="250"), "not a finite number"),
        (_operate(value=None), "not a finite number"),
        (_operate(action="x" * (MAX_TEXT + 1)), "at most"),
        (_operate(caller={"name": "mms:tso", "role": "operator"}), "no 'zone'"),
        (_operate(caller={"name": "a", "role": "b", "zone": None, "conduit": None, "x": 1}),
         "unexpected"),
        (b'{"t": "door", "peer": "localhost", "zone": "z", "reason": null, "why": null}',
         "not an IP address"),
        (b'{"t": "door", "peer": "::1", "zone": "z", "reason": "rate", "why": "x"}',
         "a zone .admitted. or a reason"),
        (b'{"t": "door", "peer": "::1", "zone": null, "reason": "pwned", "why": "x"}',
         "not one of"),
        (b'{"t": "beat", "stats": {"batches_total": 1}, "dropped": 0}', "no 'updates_total'"),
        (json.dumps({"t": "beat", "dropped": 0, "stats": {**vars(MmsStats()), "pid": 1}}).encode(),
         "unexpected"),
        (json.dumps({"t": "beat", "dropped": 0, "stats": {**vars(MmsStats()),
                                                          "last_batch_s": -1}}).encode(),
         "not a duration"),
    ],
)  # fmt: skip
def test_anything_but_a_known_message_is_a_protocol_error(body: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        parse_up(body)


def test_a_non_finite_value_is_refused() -> None:
    """JSON as Python writes it allows NaN and Infinity; the gateway does not."""
    with pytest.raises(ProtocolError, match="not a finite number"):
        parse_up(_operate(value=math.inf))


@given(st.binary(max_size=512))
def test_any_bytes_are_a_message_or_a_protocol_error(body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_up(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(st.sampled_from(["ready", "failed", "beat", "operate", "refused", "door"]),
       st.dictionaries(st.sampled_from(["id", "action", "value", "caller", "stats", "dropped",
                                        "peer", "error", "why", "zone", "reason"]),
                       json_values))  # fmt: skip
def test_a_known_message_with_any_fields_is_read_or_refused(kind: str, fields: dict) -> None:
    with contextlib.suppress(ProtocolError):
        parse_up(json.dumps({"t": kind, **fields}).encode())


async def test_an_oversized_frame_is_refused_before_it_is_read() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(frame(b"x" * 100))
    with pytest.raises(ProtocolError, match="at most 64"):
        await read_frame(reader, 64)


def test_the_process_takes_only_messages_of_the_link_from_the_gateway() -> None:
    assert parse_down(down_frame(Answer(3, None))[4:]) == Answer(3, None)
    import pickle  # noqa: PLC0415

    with pytest.raises(ProtocolError):
        parse_down(pickle.dumps({"not": "a message"}))


def test_the_backoff_doubles_to_its_ceiling_and_resets_after_a_healthy_minute() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0, healthy_s=60.0)
    delays = [backoff.delay(served_s=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.delay(served_s=60.0) == 0.5
    assert backoff.delay(served_s=0.0) == 1.0


def _policy(access: str) -> Policy:
    zone = Zone("scada", "scada", (ipaddress.ip_network("127.0.0.1/32"),))
    return Policy({"scada": zone}, (Conduit("tso-mms", "scada", "iec61850", access),))  # type: ignore[arg-type]


def _process(access: str = "operate") -> MmsProcess:
    return MmsProcess(
        PointStore(),
        SiteConfig,
        MmsSettings(users=USERS),
        gate=Gatekeeper(_policy(access)),
    )


def test_the_gateway_vouches_for_a_configured_user_through_a_configured_conduit() -> None:
    caller = _process()._vouch(Operate(1, "grid_import_limit_mw", 250.0, TSO))
    assert (caller.name, caller.role, caller.conduit) == ("mms:tso", "operator", "tso-mms")
    assert caller.ceiling is not None
    assert Permission.CONFIGURE not in caller.ceiling


@pytest.mark.parametrize(
    ("access", "request_", "why"),
    [
        ("operate", Operate(1, "grid_import_limit_mw", 250.0, Caller("mms:eve", "admin", "scada",
                                                                     "tso-mms")),
         "no configured MMS user"),
        ("operate", Operate(1, "grid_import_limit_mw", 250.0, Caller("mms:desk", "operator",
                                                                     "scada", "tso-mms")),
         "no configured MMS user"),  # a viewer claiming the operator role
        ("operate", Operate(1, "grid_import_limit_mw", 250.0, Caller("mms:tso", "operator",
                                                                     "scada", "made-up")),
         "no conduit 'made-up'"),
        ("read", Operate(1, "grid_import_limit_mw", 250.0, TSO), "does not allow 'operate'"),
        ("operate", Operate(1, "grid_import_limit_mw", -5.0, TSO), "out of range"),
        ("operate", Operate(1, "opcua_secret", 1.0, TSO), "no control sets"),
        ("operate", Operate(1, "demand_response_active", value=True, caller=TSO), "DRLimW first"),
    ],
)  # fmt: skip
def test_the_gateway_does_not_take_the_processs_word_for_an_operate(
    access: str, request_: Operate, why: str
) -> None:
    """A subverted MMS process cannot invent a user, a role, a conduit, a control or a value the
    gateway's own configuration and :func:`judge` would not accept."""
    with pytest.raises(NotVouched, match=why):
        _process(access)._vouch(request_)


def test_counters_never_go_down_across_processes() -> None:
    """What an ended process counted is kept; the gauge-like fields are the serving one's."""
    mms = _process()
    mms._carried = MmsStats(batches_total=10, controls_accepted_total=2)
    stats = mms.stats
    assert (stats.batches_total, stats.controls_accepted_total) == (10, 2)
    assert stats.connections_open == 0


def test_what_the_processs_door_decided_is_counted_and_audited_by_the_gateways() -> None:
    """The child's door decides at accept; the gateway's Gatekeeper counts admissions by zone
    and refusals by reason (auditing those), and refuses a zone its policy does not have (a
    metric label a subverted child could otherwise make up)."""
    audited: list[tuple[str, str, str, int]] = []
    gate = Gatekeeper(_policy("operate"), Refusals(audit=lambda *a: audited.append(a)))
    mms = MmsProcess(PointStore(), SiteConfig, MmsSettings(), gate=gate)
    mms._door(Door(ipaddress.ip_address("127.0.0.1"), zone="scada"))
    mms._door(Door(ipaddress.ip_address("127.0.0.2"), reason="not_in_conduit", why="outside"))
    assert gate.admitted["iec61850", "scada"] == 1
    assert gate.refusals.total["iec61850", "not_in_conduit"] == 1
    assert audited == [("iec61850", "127.0.0.2", "outside", 1)]
    with pytest.raises(ProtocolError, match="no zone"):
        mms._door(Door(ipaddress.ip_address("127.0.0.1"), zone="made-up"))


async def test_the_processs_door_admits_by_the_policy_and_the_rate_and_tells_the_gateway() -> None:
    """In the MMS process a copy of the gateway's door decides at accept (libiec61850's thread
    cannot wait for the gateway): the zone policy, then the listener's connection rate (here
    1/s, a burst of two); every decision is told to the gateway."""
    from pswd_gateway.northbound.iec61850.worker import door  # noqa: PLC0415

    told: list[Door] = []

    class Told:
        post = staticmethod(told.append)

    _, admit = door(_policy("operate"), 1.0, Told(), asyncio.get_running_loop())  # type: ignore[arg-type]
    inside, outside = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.1")
    assert admit(outside) is None
    assert [admit(inside) is not None for _ in range(3)] == [True, True, False]
    await asyncio.sleep(0)  # told on the loop
    assert [(d.peer, d.zone, d.reason) for d in told] == [
        (outside, None, "not_in_conduit"),
        (inside, "scada", None),
        (inside, "scada", None),
        (inside, None, "rate"),
    ]


# ---- MMS over TLS: certificate holders and handshake refusals over the link ----


def _site_ca(tmp_path: Path) -> tuple[SiteCa, SiteCa]:
    ca, other = SiteCa(tmp_path / "site"), SiteCa(tmp_path / "other")
    ca.init("north", ["127.0.0.1"])
    other.init("south", ["127.0.0.1"])
    return ca, other


def _holder(ca: SiteCa, name: str, role: str) -> CertificateHolder:
    issued = ca.issue_client(name, role)
    der = load_certificate(Path(issued.path).read_bytes()).public_bytes(Encoding.DER)
    holder = certificate_holder(der)
    assert holder is not None
    return holder


@given(st.binary(min_size=1, max_size=MAX_CERTIFICATE_BYTES))
def test_a_certificate_holders_caller_crosses_with_its_certificate(der: bytes) -> None:
    caller = Caller.of(CertificateHolder("cert:alice", "operator", zone="scada", certificate=der))
    message = Operate(3, "grid_ramp_limit_mw_per_s", 15.0, caller)
    got = parse_up(up_frame(message)[4:])
    assert got == message
    assert isinstance(got, Operate)
    assert got.caller.der() == der


@pytest.mark.parametrize(
    ("certificate", "says"),
    [
        (12, "not a base64 certificate"),
        ("", "not a base64 certificate"),
        ("A" * (4 * (MAX_CERTIFICATE_BYTES // 3 + 1) + 4), "not a base64 certificate"),
        ("not base64!", "not base64"),
    ],
)
def test_a_malformed_certificate_is_a_protocol_error(certificate: object, says: str) -> None:
    caller = {"name": "cert:a", "role": "operator", "zone": None, "conduit": None,
              "certificate": certificate}  # fmt: skip
    with pytest.raises(ProtocolError, match=says):
        parse_up(_operate(caller=caller))


@given(json_values)
def test_any_certificate_field_is_read_or_refused(value: object) -> None:
    caller = {"name": "cert:a", "role": "operator", "zone": None, "conduit": None,
              "certificate": value}  # fmt: skip
    with contextlib.suppress(ProtocolError):
        parse_up(_operate(caller=caller))


@pytest.mark.parametrize(
    "reason", ["no_certificate", "bad_certificate", "revoked", "tls_handshake"]
)
def test_a_refused_tls_handshake_crosses_as_a_door_refusal(reason: str) -> None:
    message = Door(ipaddress.ip_address("10.30.0.7"), reason=reason, why="TLS handshake refused")
    assert parse_up(up_frame(message)[4:]) == message


def _tls_process(ca: SiteCa) -> MmsProcess:
    tls = MmsTls(ca.server_cert, ca.server_key, ca.cert_path, ca.crl_path)
    return MmsProcess(
        PointStore(),
        SiteConfig,
        MmsSettings(users=USERS, tls=tls),
        gate=Gatekeeper(_policy("operate")),
    )


def test_the_gateway_vouches_for_a_certificate_its_ca_issued_and_did_not_revoke(
    tmp_path: Path,
) -> None:
    ca, other = _site_ca(tmp_path)
    alice = _holder(ca, "alice", "operator")
    through = alice.limited(frozenset(), zone="scada", conduit="tso-mms")
    request = Operate(1, "grid_import_limit_mw", 250.0, Caller.of(through))
    caller = _tls_process(ca)._vouch(request)
    assert (caller.name, caller.role, caller.conduit) == ("cert:alice", "operator", "tso-mms")
    eve = _holder(other, "eve", "operator")
    vic = _holder(ca, "vic", "viewer")
    for claim, why in (
        (Caller.of(eve), "not issued by"),  # another CA's
        (replace(Caller.of(vic), role="operator"), "the certificate names cert:vic .viewer."),
        (replace(Caller.of(alice), name="cert:bob"), "the certificate names cert:alice"),
    ):
        via = replace(claim, zone="scada", conduit="tso-mms")
        with pytest.raises(NotVouched, match=why):
            _tls_process(ca)._vouch(Operate(1, "grid_import_limit_mw", 250.0, via))
    with pytest.raises(NotVouched, match="not served over TLS"):
        _process()._vouch(request)  # a certificate, but the gateway serves no MMS over TLS
    ca.revoke("alice")
    with pytest.raises(NotVouched, match="revoked"):
        _tls_process(ca)._vouch(request)


def test_a_points_reason_goes_down_to_the_mms_process_with_it() -> None:
    """The reason a reading is doubtful (served as detailQual) crosses with its point."""
    points = (
        Point("meter.active_power", 9e9, SiUnit.WATT, Quality.QUESTIONABLE, 1.0, 1.5, OUT_OF_RANGE),
        Point("bess.soc", 0.0, SiUnit.RATIO, Quality.INVALID, 1.0, 1.5, NOT_AVAILABLE),
        Point("meter.frequency", 50.0, SiUnit.HERTZ, Quality.GOOD, 1.0, 1.5),
    )
    got = parse_down(down_frame(Points(points))[4:])
    assert got == Points(points)
    assert isinstance(got, Points)
    assert [p.reason for p in got.points] == [OUT_OF_RANGE, NOT_AVAILABLE, None]
