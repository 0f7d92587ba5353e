"""Zones and conduits: the config's rules (each with its TOML path), the policy's decisions,
the conduit as a ceiling over a caller's role, and refusals counted and audited once a minute."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pswd_gateway.config import DEMO_TOKEN_SHA256, load_config
from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.errors import ConfigError
from pswd_gateway.security.passwords import hash_password
from pswd_gateway.security.zones import Conduit, Gatekeeper, Policy, Refusals, Zone

DEMO_TOKEN = next(iter(DEMO_TOKEN_SHA256))
CERT = "/etc/pswd-gateway/certs/api.pem"
KEY = "/etc/pswd-gateway/certs/api.key"


def _write(tmp_path: Path, doc: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(doc)
    return path


def _problems(tmp_path: Path, doc: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, doc))
    return info.value.problems


ENTERPRISE_API = f"""
[listeners.api]
host = "0.0.0.0"
port = 8443
tls_cert = "{CERT}"
tls_key = "{KEY}"

[zones.enterprise]
kind = "enterprise"
networks = ["10.20.0.0/16"]

[[conduits]]
name = "ml-platform"
zone = "enterprise"
listener = "api"
access = "announce"

[zones.monitoring]
kind = "monitoring"
networks = ["127.0.0.1/32"]

[[conduits]]
name = "prometheus"
zone = "monitoring"
listener = "metrics"
"""


def test_a_sound_policy_loads_and_admits_by_zone(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, ENTERPRISE_API))
    policy = cfg.policy()
    admission = policy.admit("api", ("10.20.3.4", 51000))
    assert admission is not None
    assert (admission.zone, admission.conduit, admission.access) == (
        "enterprise",
        "ml-platform",
        "announce",
    )
    assert policy.admit("api", ("10.21.0.1", 51000)) is None
    assert policy.admit("api", ("127.0.0.1", 51000)) is None  # no conduit from loopback
    assert policy.admit("metrics", ("127.0.0.1", 1)) is not None
    assert policy.admit("metrics", ("127.0.0.2", 1)) is None
    assert policy.admit("api", "::ffff:10.20.0.9") is not None  # v4-mapped v6 peer
    assert policy.admit("api", None) is None


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (  # plaintext off loopback: the API without TLS
            ('tls_cert = "' + CERT + '"\ntls_key = "' + KEY + '"\n', ""),
            "listeners.api",
            "plaintext listener",
        ),
        (  # a write conduit into control from outside the plant
            ('access = "announce"', 'access = "operate"'),
            "conduits[0].access",
            "outside the plant",
        ),
        (  # a listener with no conduit
            ('listener = "metrics"', 'listener = "api"'),
            "listeners.metrics",
            "no conduit reaches this listener",
        ),
        (  # a conduit from an unknown zone
            ('zone = "enterprise"', 'zone = "enterprize"'),
            "conduits[0].zone",
            "no zone named 'enterprize'",
        ),
        (  # metrics is read-only
            ('listener = "metrics"', 'listener = "metrics"\naccess = "announce"'),
            "conduits[1].access",
            "read-only",
        ),
        (  # an off-loopback zone to a listener that binds loopback
            ('host = "0.0.0.0"', 'host = "127.0.0.1"'),
            "conduits[0]",
            "cannot reach",
        ),
    ],
)
def test_each_insecure_policy_is_refused_with_its_path(
    tmp_path: Path, change: tuple[str, str], path: str, words: str
) -> None:
    doc = ENTERPRISE_API.replace(*change)
    assert doc != ENTERPRISE_API
    problems = _problems(tmp_path, doc)
    assert any(p == path and words in m for p, m in problems), problems


def test_demo_credentials_off_loopback_are_refused(tmp_path: Path) -> None:
    doc = (
        ENTERPRISE_API
        + f"""
[[api.tokens]]
name = "demo-submitter"
role = "submitter"
sha256 = "{DEMO_TOKEN}"
"""
    )
    problems = _problems(tmp_path, doc)
    assert any("demo" in m for _, m in problems), problems


def test_anonymous_access_off_loopback_is_refused(tmp_path: Path) -> None:
    """MMS stays on loopback (no TLS): any off-loopback conduit to it is refused, anonymous
    reading named too."""
    doc = """
[listeners.iec61850]
port = 10102

[iec61850]
anonymous_read = true

[zones.scada]
kind = "scada"
networks = ["10.30.0.0/24"]

[[conduits]]
name = "grid-operator"
zone = "scada"
listener = "iec61850"
access = "operate"

[[conduits]]
name = "api"
zone = "scada"
listener = "api"

[[conduits]]
name = "metrics"
zone = "scada"
listener = "metrics"
"""
    messages = [m for p, m in _problems(tmp_path, doc) if p == "conduits[0]"]
    assert any("without TLS" in m for m in messages), messages
    assert any("anonymous" in m for m in messages), messages


def test_a_listener_off_loopback_without_any_conduit_is_refused(tmp_path: Path) -> None:
    doc = f"""
[listeners.api]
host = "0.0.0.0"
port = 8443
tls_cert = "{CERT}"
tls_key = "{KEY}"
"""
    problems = _problems(tmp_path, doc)
    assert ("listeners.api.host", problems[0][1]) in problems
    assert "no [[conduits]]" in problems[0][1]


def test_without_conduits_every_listener_is_loopback_only() -> None:
    policy = load_config(None).model_copy(update={"conduits": (), "zones": {}}).policy()
    for listener in ("api", "metrics", "opcua", "iec61850"):
        assert policy.admit(listener, ("127.0.0.1", 1)) is not None
        assert policy.admit(listener, ("::1", 1, 0, 0)) is not None
        assert policy.admit(listener, ("10.0.0.1", 1)) is None


def test_the_demo_keeps_every_conduit_on_one_loopback_address() -> None:
    cfg = load_config(None)
    for conduit in cfg.conduits:
        assert cfg.zones[conduit.zone].networks == (ipaddress.ip_network("127.0.0.1/32"),)
    enterprise = [c for c in cfg.conduits if cfg.zones[c.zone].kind == "enterprise"]
    assert enterprise
    assert all(c.access in {"read", "announce"} for c in enterprise)
    raw: dict[str, Any] = tomllib.loads(Path("config/demo.toml").read_text())
    assert raw["conduits"] == [c.model_dump() for c in cfg.conduits]


def test_the_conduit_is_a_ceiling_over_the_role() -> None:
    policy = Policy(
        {"enterprise": Zone("enterprise", "enterprise", (ipaddress.ip_network("10.0.0.0/8"),))},
        (Conduit("ml", "enterprise", "api", "announce"),),
    )
    admission = policy.admit("api", ("10.1.2.3", 1))
    assert admission is not None
    operator = admission.limit(Identity("ops", "operator"))
    assert operator.can(Permission.ANNOUNCE)
    assert operator.can(Permission.ACT_ANY)
    assert not operator.can(Permission.OPERATE)
    assert "conduit 'ml' from zone 'enterprise' does not allow 'operate'" in operator.why_not(
        Permission.OPERATE
    )
    assert operator.via == {"zone": "enterprise", "conduit": "ml"}
    viewer = admission.limit(Identity("v", "viewer"))
    assert not viewer.can(Permission.ANNOUNCE)
    assert viewer.why_not(Permission.ANNOUNCE) == "role 'viewer' lacks 'announce'"


def test_the_most_permissive_conduit_reaching_a_peer_wins() -> None:
    net = (ipaddress.ip_network("10.0.0.0/8"),)
    policy = Policy(
        {"a": Zone("a", "enterprise", net), "b": Zone("b", "scada", net)},
        (Conduit("read", "a", "opcua", "read"), Conduit("ops", "b", "opcua", "operate")),
    )
    admission = policy.admit("opcua", ("10.9.9.9", 1))
    assert admission is not None
    assert admission.conduit == "ops"


def test_refusals_are_counted_each_time_and_audited_once_a_minute_per_peer() -> None:
    now = [0.0]
    audited: list[tuple[str, str, str, int]] = []
    refusals = Refusals(audit=lambda *a: audited.append(a), clock=lambda: now[0])
    gate = Gatekeeper(load_config(None).policy(), refusals)
    for _ in range(5):
        assert gate.admit("api", ("127.0.0.2", 1)) is None
    assert gate.admit("api", ("127.0.0.1", 1)) is not None
    now[0] = 61.0
    assert gate.admit("api", ("127.0.0.2", 1)) is None
    assert refusals.total["api", "not_in_conduit"] == 6
    assert [a[3] for a in audited] == [1, 5]  # the second record counts the four in between
    assert audited[0][:2] == ("api", "127.0.0.2")
    assert "no zone with a conduit to listeners.api" in audited[0][2]
    # on the demo both the ML platform's and the grid operator's zones are loopback: the most
    # permissive conduit (the grid operator's, operate) admits
    assert gate.admitted["api", "scada"] == 1


def test_zones_print_as_rows_and_a_graphviz_digraph() -> None:
    policy = load_config(None).policy()
    rows = policy.rows()
    assert {r["conduit"] for r in rows} >= {"ml-platform", "prometheus"}
    dot = policy.dot({"api": "127.0.0.1:8080"})
    assert dot.startswith("digraph conduits {")
    assert '"zone:enterprise" -> "listener:api"' in dot
    assert "127.0.0.1:8080" in dot


def test_the_zones_command_prints_the_policy_in_each_format() -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from pswd_gateway.cli import app  # noqa: PLC0415

    runner = CliRunner()
    table = runner.invoke(app, ["zones"])
    assert table.exit_code == 0, table.output
    assert "ml-platform" in table.output
    assert "127.0.0.1:8080" in table.output
    nft = runner.invoke(app, ["zones", "--format", "nft"])
    assert nft.exit_code == 0
    assert "tcp dport 8080 ip saddr { 127.0.0.1/32 } accept" in nft.output
    assert "tcp dport 8080 drop" in nft.output
    dot = runner.invoke(app, ["zones", "-f", "dot"])
    assert dot.output.startswith("digraph conduits {")
    assert runner.invoke(app, ["zones", "-f", "svg"]).exit_code == 2


def test_config_check_names_every_broken_rule_with_its_path(tmp_path: Path) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from pswd_gateway.cli import app  # noqa: PLC0415

    doc = ENTERPRISE_API.replace('access = "announce"', 'access = "operate"').replace(
        'listener = "metrics"', 'listener = "metrics"\naccess = "announce"'
    )
    result = CliRunner().invoke(app, ["config", "check", str(_write(tmp_path, doc))])
    assert result.exit_code == 2
    assert "conduits[0].access: zone 'enterprise' is enterprise, outside the plant" in (
        result.output
    )
    assert 'conduits[1].access: the metrics listener is read-only: access = "read"' in (
        result.output
    )


def test_a_peer_opening_connections_too_fast_is_refused_then_let_in_again() -> None:
    now = [0.0]
    gate = Gatekeeper(load_config(None).policy(), rates={"opcua": 10.0}, clock=lambda: now[0])
    admitted = [gate.admit("opcua", ("127.0.0.1", i)) is not None for i in range(25)]
    assert admitted.count(True) == 20  # a burst of two seconds' worth
    assert gate.refusals.total["opcua", "rate"] == 5
    now[0] = 0.5
    assert sum(gate.admit("opcua", ("127.0.0.1", 1)) is not None for _ in range(10)) == 5
    # another listener and a listener without a rate are not affected
    assert all(gate.admit("api", ("127.0.0.1", 1)) is not None for _ in range(100))


def test_a_network_must_be_written_as_one(tmp_path: Path) -> None:
    doc = ENTERPRISE_API.replace('networks = ["10.20.0.0/16"]', "networks = [true, 167772160]")
    problems = _problems(tmp_path, doc)
    assert any(
        p.startswith("zones.enterprise.networks") and "is not a network" in m for p, m in problems
    ), problems


DEMO_MMS_OPERATOR = f"""
[[iec61850.users]]
name = "operator"
role = "operator"
password_hash = "{hash_password("pswd-demo-operator", iterations=1000)}"
"""
"""The demo's MMS operator, whose password (``pswd-demo-operator``) is published."""

MMS_TLS = f"""
[listeners.iec61850]
host = "0.0.0.0"
port = 3782
tls_cert = "{CERT}"
tls_key = "{KEY}"
tls_client_ca = "/etc/pswd-gateway/certs/ca/ca.pem"
tls_crl = "/etc/pswd-gateway/certs/ca/crl.pem"

[listeners.api]
enabled = false
port = 8080

[listeners.metrics]
enabled = false
port = 9464

[zones.scada]
kind = "scada"
networks = ["10.30.0.0/24"]

[[conduits]]
name = "grid-operator"
zone = "scada"
listener = "iec61850"
access = "operate"
"""


def test_mms_over_tls_may_be_reached_from_off_loopback(tmp_path: Path) -> None:
    """With its certificate, key and client CA, the MMS listener is encrypted: a conduit from
    the station bus to it breaks no rule, and the policy admits the station bus only."""
    cfg = load_config(_write(tmp_path, MMS_TLS))
    assert cfg.policy_problems() == []
    policy = cfg.policy()
    assert policy.admit("iec61850", ("10.30.0.7", 40000)) is not None
    assert policy.admit("iec61850", ("10.31.0.7", 40000)) is None


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[iec61850]\nanonymous_read = true\n", "anonymous access is for loopback only"),
        (
            DEMO_MMS_OPERATOR,
            "demo credentials are for loopback only",
        ),
    ],
    ids=["anonymous reads", "the demo operator's password"],
)
def test_mms_over_tls_off_loopback_still_refuses_anonymous_reads_and_demo_passwords(
    tmp_path: Path, extra: str, words: str
) -> None:
    problems = _problems(tmp_path, MMS_TLS + extra)
    assert any(p == "conduits[0]" and words in m for p, m in problems), problems
