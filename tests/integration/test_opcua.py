"""OPC UA: a real asyncua client against the gateway's server, over secure channels."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.security.certs import init_opcua_certs, trust_opcua_client
from pswd_gateway.security.passwords import hash_password

pytestmark = pytest.mark.integration

CLIENT_URI = "urn:pswd:test-client"
USERS = {"viewer": "viewer", "operator": "operator", "engineer": "engineer", "admin": "admin"}


@dataclass
class Site:
    gw: Gateway
    url: str
    certs: Path
    client_cert: Path
    client_key: Path


def client_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {},
        [x509.UniformResourceIdentifier(CLIENT_URI), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


def config(tmp: Path, port: int, **opcua: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "listeners": {
                "metrics": {"enabled": False, "port": 0},
                "api": {"enabled": False, "port": 0},
                "opcua": {"host": "127.0.0.1", "port": port},
            },
            "site": {"grid_meter": "meter", "bess": "bess", "thermal": None},
            "storage": {"state_dir": str(tmp / "state"), "journal_synchronous": "normal"},
            "scheduling": {
                "demand_response": [
                    {
                        "start": "2030-01-15T17:00:00Z",
                        "end": "2030-01-15T19:00:00Z",
                        "import_limit_mw": 150.0,
                    }
                ]
            },
            "opcua": {
                "certs_dir": str(tmp / "certs"),
                "users": [
                    {
                        "name": n,
                        "role": r,
                        "password_hash": hash_password(f"pw-{n}", iterations=1000),
                    }
                    for n, r in USERS.items()
                ],
                "publish_interval_ms": 50,
                **opcua,
            },
        }
    )


@pytest.fixture
async def site(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    certs = tmp_path / "certs"
    init_opcua_certs(certs, ["127.0.0.1", "localhost"])
    cert, key = client_certificate(tmp_path, "scada")
    trust_opcua_client(certs, cert)
    port = free_port()
    extra = getattr(request, "param", {})
    gw = Gateway(config(tmp_path, port, **extra))
    await gw.start()
    try:
        yield Site(gw, f"opc.tcp://127.0.0.1:{port}/pswd", certs, cert, key)
    finally:
        await gw.stop()


async def secure_client(
    site: Site,
    user: str | None = "viewer",
    *,
    cert: Path | None = None,
    key: Path | None = None,
    mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt,
) -> Client:
    client = Client(site.url, timeout=5)
    client.application_uri = CLIENT_URI
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=str(cert or site.client_cert),
        private_key=str(key or site.client_key),
        server_certificate=str(site.certs / "opcua" / "server_cert.der"),
        mode=mode,
    )
    if user is not None:
        client.set_user(user)
        client.set_password(f"pw-{user}")
    return client


def feed(site: Site, grid_w: float, quality: Quality = Quality.GOOD) -> None:
    now = time.time()
    site.gw.store.update(
        [
            Point("meter.active_power", grid_w, "W", quality, now, now),
            Point("bess.soc", 0.42, "1", Quality.GOOD, now, now),
        ]
    )


async def test_a_secure_session_browses_the_model_and_reads_live_values(site: Site) -> None:
    feed(site, 123.5e6)
    client = await secure_client(site)
    async with client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        pswd = await client.nodes.objects.get_child(f"{idx}:PSWD")
        children = {(await c.read_browse_name()).Name for c in await pswd.get_children()}
        assert {"GridConnection", "Battery", "ITLoad", "ThermalPlant", "Workloads"} <= children
        power = await pswd.get_child([f"{idx}:GridConnection", f"{idx}:ActivePower"])
        await asyncio.sleep(0.2)
        dv = await power.read_data_value()
        assert dv.Value.Value == pytest.approx(123.5e6)
        assert dv.StatusCode_.is_good() if hasattr(dv, "StatusCode_") else dv.StatusCode.is_good()
        eu = await (await power.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "W"


async def test_a_100_ms_subscription_carries_every_change(site: Site) -> None:
    feed(site, 10e6)
    client = await secure_client(site)
    seen: list[float] = []

    class Handler:
        def datachange_notification(self, node: Any, val: float, data: Any) -> None:
            if val is not None:
                seen.append(val)

    async with client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        node = client.get_node(ua.NodeId("PSWD.GridConnection.ActivePower", idx))
        sub = await client.create_subscription(100, Handler())
        await sub.subscribe_data_change(node)
        for mw in (20, 30, 40):
            await asyncio.sleep(0.3)
            feed(site, mw * 1e6)
        await asyncio.sleep(0.5)
    assert [v / 1e6 for v in seen][-3:] == [20.0, 30.0, 40.0]


async def test_an_invalid_device_turns_its_variables_bad(site: Site) -> None:
    feed(site, 50e6)
    client = await secure_client(site)
    async with client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        node = client.get_node(ua.NodeId("PSWD.GridConnection.ActivePower", idx))
        await asyncio.sleep(0.2)
        feed(site, 50e6, Quality.INVALID)
        await asyncio.sleep(0.3)
        with pytest.raises(ua.UaStatusCodeError) as err:
            await node.read_value()
        assert err.value.code == ua.StatusCodes.BadNoCommunication


def announcement() -> str:
    start = datetime.now(UTC) + timedelta(hours=2)
    return json.dumps(
        {
            "workload_type": "ai_training",
            "power_profile": {
                "peak_power_mw": 50,
                "ramp_rate_mw_per_sec": 10,
                "duration_estimate_sec": 1800,
            },
            "timing_constraints": {
                "earliest_start_time": start.isoformat(),
                "deadline": (start + timedelta(hours=6)).isoformat(),
            },
        }
    )


async def test_methods_check_arguments_and_roles(site: Site) -> None:
    async with await secure_client(site, "operator") as op:
        idx = await op.get_namespace_index("urn:pswd:gateway")
        pswd = op.get_node(ua.NodeId("PSWD", idx))
        wid = await pswd.call_method(f"{idx}:AnnounceWorkload", announcement())
        assert wid.startswith("wl_")
        assert site.gw.workloads is not None
        assert wid in site.gw.workloads.active
        with pytest.raises(ua.UaStatusCodeError) as bad:
            await pswd.call_method(f"{idx}:AnnounceWorkload", '{"workload_type": "x"}')
        assert bad.value.code == ua.StatusCodes.BadInvalidArgument
        await pswd.call_method(f"{idx}:SetGridImportLimit", 250.0)
        # a grid signal (docs/grid.md): the limit in force, the site's own one unchanged
        assert site.gw.config.site.import_limit_mw == 250.0
        assert site.gw.config.site.grid_import_limit_mw == 400.0
        # …in force at once where placement is decided, not only in the control cycle
        assert site.gw.workloads.scheduler.site.import_limit_mw == 250.0
        with pytest.raises(ua.UaStatusCodeError) as out:
            await pswd.call_method(f"{idx}:SetGridImportLimit", -5.0)
        assert out.value.code == ua.StatusCodes.BadOutOfRange
        await pswd.call_method(f"{idx}:CancelWorkload", wid, "test")
        assert wid not in site.gw.workloads.active
    async with await secure_client(site, "viewer") as viewer:
        pswd = viewer.get_node(ua.NodeId("PSWD", idx))
        for method, args in (
            ("AnnounceWorkload", [announcement()]),
            ("SetGridImportLimit", [300.0]),
        ):
            with pytest.raises(ua.UaStatusCodeError) as denied:
                await pswd.call_method(f"{idx}:{method}", *args)
            assert denied.value.code == ua.StatusCodes.BadUserAccessDenied
    assert site.gw.config.site.import_limit_mw == 250.0
    assert site.gw.journal is not None
    audit = await site.gw.journal.call(site.gw.journal.sync.audit_entries, 0, 100)
    assert any(a["action"] == "grid signal accepted" for a in audit)
    denied_lines = [a for a in audit if a["action"] == "opcua SetGridImportLimit"]
    assert any(a["outcome"] == "refused" and a["actor"] == "opcua:viewer" for a in denied_lines)


async def test_anonymous_wrong_password_and_untrusted_certificates_are_refused(
    site: Site, tmp_path: Path
) -> None:
    with pytest.raises((ua.UaError, OSError, TimeoutError)):
        async with await secure_client(site, None):
            pass
    client = await secure_client(site, "viewer")
    client.set_password("wrong")
    with pytest.raises((ua.UaError, OSError, TimeoutError)):
        async with client:
            pass
    stranger_cert, stranger_key = client_certificate(tmp_path, "stranger")
    with pytest.raises((ua.UaError, OSError, TimeoutError)):
        async with await secure_client(site, "viewer", cert=stranger_cert, key=stranger_key):
            pass
    assert list((site.certs / "opcua" / "rejected").iterdir())
    await asyncio.sleep(0.1)
    assert site.gw.journal is not None
    audit = await site.gw.journal.call(site.gw.journal.sync.audit_entries, 0, 100)
    refused = [a for a in audit if a["action"] == "opcua login" and a["outcome"] == "refused"]
    assert refused, audit


async def test_a_certificate_removed_from_the_trust_list_is_refused_without_a_restart(
    site: Site,
) -> None:
    async with await secure_client(site, "viewer"):
        pass
    trusted = site.certs / "opcua" / "trusted"
    for path in trusted.iterdir():
        path.unlink()
    with pytest.raises((ua.UaError, OSError, TimeoutError)):
        async with await secure_client(site, "viewer"):
            pass
    assert list((site.certs / "opcua" / "rejected").iterdir())
    trust_opcua_client(site.certs, site.client_cert)  # trusted again: admitted again
    async with await secure_client(site, "viewer"):
        pass


async def test_a_session_forced_onto_a_none_channel_is_rejected(site: Site) -> None:
    """asyncua 2.1.0 would open this channel and activate this session; the guard refuses."""
    client = Client(site.url, timeout=5)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()  # policy None: the server has no None endpoint
        endpoints = await client.get_endpoints()  # allowed: discovery
        assert all(e.SecurityMode != ua.MessageSecurityMode.None_ for e in endpoints)
        params = ua.CreateSessionParameters()
        params.ClientDescription = ua.ApplicationDescription(ApplicationUri=CLIENT_URI)
        params.EndpointUrl = site.url
        params.SessionName = "forced"
        params.RequestedSessionTimeout = 60_000
        params.ClientNonce = b"\x00" * 32
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.uaclient.create_session(params)
        assert err.value.code == ua.StatusCodes.BadSecurityModeRejected
    finally:
        client.disconnect_socket()


@pytest.mark.parametrize("site", [{"modes": ["SignAndEncrypt"]}], indirect=True)
async def test_a_mode_the_server_does_not_offer_gets_an_error_answer(site: Site) -> None:
    client = await secure_client(site, "viewer", mode=ua.MessageSecurityMode.Sign)
    with pytest.raises(ua.UaStatusCodeError) as err:
        async with client:
            pass
    assert err.value.code == ua.StatusCodes.BadSecurityPolicyRejected


async def test_the_served_model_equals_the_checked_in_nodeset(site: Site, tmp_path: Path) -> None:
    assert site.gw.opcua is not None
    served = tmp_path / "served.xml"
    await site.gw.opcua.export_nodeset(served)
    checked_in = Path(__file__).parents[2] / "docs" / "pswd-gateway.NodeSet2.xml"
    assert served.read_text() == checked_in.read_text(), (
        "the model changed: run `pswd-gateway opcua nodeset` and commit the NodeSet2 file"
    )


async def test_workload_state_changes_and_alarms_arrive_as_events(site: Site) -> None:
    feed(site, 10e6)
    received: list[Any] = []

    class Handler:
        def event_notification(self, event: Any) -> None:
            received.append(event)

    async with await secure_client(site, "operator") as op:
        idx = await op.get_namespace_index("urn:pswd:gateway")
        pswd = op.get_node(ua.NodeId("PSWD", idx))
        sub = await op.create_subscription(100, Handler())
        await sub.subscribe_events(pswd, ua.ObjectIds.BaseEventType)
        await pswd.call_method(f"{idx}:AnnounceWorkload", announcement())
        feed(site, 10e6, Quality.INVALID)  # a device gone: an alarm
        await asyncio.sleep(0.8)
    messages = [e.Message.Text for e in received]
    assert any("announced → scheduled" in m for m in messages), messages
    assert any("no valid data from meter" in m for m in messages), messages


async def test_demand_response_is_acknowledged_by_operators_only(site: Site) -> None:
    async with await secure_client(site, "operator") as op:
        idx = await op.get_namespace_index("urn:pswd:gateway")
        pswd = op.get_node(ua.NodeId("PSWD", idx))
        await pswd.call_method(f"{idx}:AcknowledgeDemandResponse", "dr-20300115T1700Z")
        with pytest.raises(ua.UaStatusCodeError) as missing:
            await pswd.call_method(f"{idx}:AcknowledgeDemandResponse", "dr-19990101T0000Z")
        assert missing.value.code == ua.StatusCodes.BadNotFound
        with pytest.raises(ua.UaStatusCodeError) as wrong:
            await pswd.call_method(f"{idx}:CancelWorkload", "wl_0000000000000000", "x")
        assert wrong.value.code == ua.StatusCodes.BadNotFound
    for role in ("viewer", "engineer"):  # engineering settings are not operating the grid
        async with await secure_client(site, role) as other:
            pswd = other.get_node(ua.NodeId("PSWD", idx))
            for method, args in (
                ("AcknowledgeDemandResponse", ["dr-20300115T1700Z"]),
                ("CancelWorkload", ["wl_0000000000000000", "x"]),
                ("SetGridRampLimit", [10.0]),
            ):
                with pytest.raises(ua.UaStatusCodeError) as denied:
                    await pswd.call_method(f"{idx}:{method}", *args)
                assert denied.value.code == ua.StatusCodes.BadUserAccessDenied
    assert site.gw.opcua is not None
    assert site.gw.opcua.acknowledged == {"dr-20300115T1700Z"}


@pytest.mark.parametrize(
    "site",
    [{"max_monitored_items_per_subscription": 5, "max_subscriptions_per_session": 2}],
    indirect=True,
)
async def test_monitored_items_beyond_the_limit_are_refused(site: Site) -> None:
    async with await secure_client(site) as client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        node = client.get_node(ua.NodeId("PSWD.GridConnection.ActivePower", idx))

        class Handler:
            def datachange_notification(self, *_: Any) -> None:
                pass

        sub = await client.create_subscription(100, Handler())
        await sub.subscribe_data_change([node] * 10)  # the limit: 5 x 2
        with pytest.raises(ua.UaStatusCodeError) as err:
            await sub.subscribe_data_change([node])
        assert err.value.code == ua.StatusCodes.BadTooManyMonitoredItems


async def test_subscribed_grid_power_matches_the_twin(tmp_path: Path) -> None:
    """The twin's meter, polled by the gateway, seen by a 100 ms subscription."""
    from pswd_gateway.simulation.config import SimulationConfig  # noqa: PLC0415
    from pswd_gateway.simulation.twin import Twin  # noqa: PLC0415

    twin = Twin(
        SimulationConfig.model_validate(
            {"seed": 3, "ports": {"grid_meter": 0, "bess": 0, "thermal": 0, "redfish": [0, 0]}}
        )
    )
    await twin.start()
    certs = tmp_path / "certs"
    init_opcua_certs(certs, ["127.0.0.1"])
    cert, key = client_certificate(tmp_path, "scada")
    trust_opcua_client(certs, cert)
    port = free_port()
    settings = config(tmp_path, port).model_dump(mode="json", exclude={"config_dir"})
    settings["site"] = {"grid_meter": "grid_meter", "bess": None, "thermal": None}
    settings["devices"] = [d for d in twin.gateway_devices() if d["name"] == "grid_meter"]
    gw = Gateway(GatewayConfig.model_validate(settings))
    await gw.start()
    seen: list[tuple[float, datetime]] = []

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            if val is not None:
                seen.append((val, data.monitored_item.Value.SourceTimestamp))

    try:
        site = Site(gw, f"opc.tcp://127.0.0.1:{port}/pswd", certs, cert, key)
        async with await secure_client(site) as client:
            idx = await client.get_namespace_index("urn:pswd:gateway")
            node = client.get_node(ua.NodeId("PSWD.GridConnection.ActivePower", idx))
            sub = await client.create_subscription(100, Handler())
            await sub.subscribe_data_change(node)
            await asyncio.sleep(3.0)
    finally:
        await gw.stop()
        await twin.stop()
    assert len(seen) >= 15  # 10 Hz meter, 100 ms publishing: most readings arrive
    resolution = 100e3  # the meter's W register counts in 100 kW (W_SF = 5)
    for value, ts in seen:
        sent = ts.replace(tzinfo=UTC).timestamp() if ts.tzinfo is None else ts.timestamp()
        # The reading was taken between the request (its source time) and the answer; allow
        # for the twin's clock, which maps monotonic time to wall time once at its start. The
        # meter shows refreshed window means (with its noise), not the instantaneous truth.
        low, high = twin.meter_power_range_w(sent - 0.25, sent + 0.5)
        assert low - resolution <= value <= high + resolution, (value, low, high)


async def test_an_x509_user_certificate_signs_in_with_its_role(tmp_path: Path) -> None:
    import hashlib  # noqa: PLC0415

    certs = tmp_path / "certs"
    init_opcua_certs(certs, ["127.0.0.1"])
    app_cert, app_key = client_certificate(tmp_path, "scada")
    trust_opcua_client(certs, app_cert)
    user_cert, user_key = client_certificate(tmp_path, "alice")
    digest = hashlib.sha256(user_cert.read_bytes()).hexdigest()
    port = free_port()
    cfg = config(
        tmp_path,
        port,
        certificate_users=[{"name": "alice", "role": "operator", "sha256": digest}],
    )
    gw = Gateway(cfg)
    await gw.start()
    try:
        site = Site(gw, f"opc.tcp://127.0.0.1:{port}/pswd", certs, app_cert, app_key)
        client = await secure_client(site, None)
        await client.load_client_certificate(str(user_cert))
        await client.load_private_key(str(user_key))
        async with client:
            idx = await client.get_namespace_index("urn:pswd:gateway")
            pswd = client.get_node(ua.NodeId("PSWD", idx))
            await pswd.call_method(f"{idx}:SetGridRampLimit", 15.0)  # an operator's method
        assert gw.config.site.grid_ramp_limit_mw_per_s == 15.0
        stranger_cert, stranger_key = client_certificate(tmp_path, "mallory")
        client = await secure_client(site, None)
        await client.load_client_certificate(str(stranger_cert))
        await client.load_private_key(str(stranger_key))
        with pytest.raises((ua.UaError, OSError, TimeoutError)):
            async with client:
                pass
    finally:
        await gw.stop()


async def test_a_guard_trip_raises_the_control_guard_alarm_until_it_rearms(site: Site) -> None:
    """A trip is an active, high-severity `ControlGuard` alarm carrying the guard's detail and
    time, and `Control.GuardActive` reads 1; the re-arm clears both."""
    from guard_events import REARM_DETAIL, TRIP_DETAIL, rearm, trip  # noqa: PLC0415

    received: list[Any] = []

    class Handler:
        def event_notification(self, event: Any) -> None:
            received.append(event)

    def alarms() -> list[Any]:
        return [e for e in received if getattr(e, "ConditionName", None) == "ControlGuard"]

    async def until(count: int) -> None:
        for _ in range(100):
            if len(alarms()) >= count:
                return
            await asyncio.sleep(0.05)

    async with await secure_client(site) as client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        pswd = client.get_node(ua.NodeId("PSWD", idx))
        state = client.get_node(ua.NodeId("PSWD.Control.GuardActive", idx))
        sub = await client.create_subscription(100, Handler())
        await sub.subscribe_events(pswd, ua.ObjectIds.AlarmConditionType)
        await asyncio.sleep(0.2)
        assert await state.read_value() == 0.0
        tripped = trip(site.gw, at=time.time() - 2.0)
        await until(1)
        during = await state.read_data_value()
        rearmed = rearm(site.gw)
        await until(2)
        after = await state.read_data_value()
    on, off = alarms()
    assert on.ActiveState.Text == "Active"
    assert getattr(on, "ActiveState/Id") is True
    assert on.Severity == 900
    assert on.Retain is True
    assert on.Message.Text == TRIP_DETAIL
    assert on.Time.timestamp() == pytest.approx(tripped.at, abs=1e-3)
    assert off.ActiveState.Text == "Inactive"
    assert getattr(off, "ActiveState/Id") is False
    assert off.Retain is False
    assert REARM_DETAIL in off.Message.Text
    assert off.Time.timestamp() == pytest.approx(rearmed.at, abs=1e-3)
    assert during.Value.Value == 1.0
    assert during.SourceTimestamp.timestamp() == pytest.approx(tripped.at, abs=1e-3)
    assert after.Value.Value == 0.0


async def test_the_role_table_every_method_for_every_role(site: Site) -> None:
    """Per role, each method passes or is refused exactly as the one role model
    (domain.identity.ROLE_PERMISSIONS) says: the same table as the HTTP API and IEC 61850.
    A permitted call may still fail on its argument (an unknown id): it must not be
    BadUserAccessDenied."""
    from pswd_gateway.domain.identity import Identity  # noqa: PLC0415
    from pswd_gateway.northbound.opcua.server import METHOD_PERMISSIONS  # noqa: PLC0415

    args = {
        "AnnounceWorkload": [announcement()],
        "CancelWorkload": ["wl_unknown", "role table"],
        "AcknowledgeDemandResponse": ["dr-unknown"],
        "SetGridImportLimit": [320.0],
        "SetGridRampLimit": [20.0],
        "SubmitGridSignal": ['{"kind": "brownout"}'],
        "WithdrawGridSignal": ["gs_unknown"],
    }
    assert set(args) == set(METHOD_PERMISSIONS)
    table: dict[tuple[str, str], bool] = {}
    for role in USERS:
        async with await secure_client(site, role) as client:
            idx = await client.get_namespace_index("urn:pswd:gateway")
            pswd = client.get_node(ua.NodeId("PSWD", idx))
            for method, values in args.items():
                try:
                    await pswd.call_method(f"{idx}:{method}", *values)
                    table[role, method] = True
                except ua.UaStatusCodeError as exc:
                    table[role, method] = exc.code != ua.StatusCodes.BadUserAccessDenied
    expected = {
        (role, method): Identity(role, role).can(permission)
        for role in USERS
        for method, permission in METHOD_PERMISSIONS.items()
    }
    assert table == expected
    assert not table["engineer", "AnnounceWorkload"]  # engineering is not operating
