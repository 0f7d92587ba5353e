"""Configuration: validation, TOML paths in errors, environment overrides, `config check`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from pswd_gateway.cli import app
from pswd_gateway.config import DEFAULT_CONFIG, GatewayConfig, RedfishDeviceConfig, load_config
from pswd_gateway.errors import ConfigError

BAD = """
[site]
grid_import_limit_mw = 0
colour = "blue"

[[devices]]
name = "grid_meter"
kind = "modbus"
register_map = "sunspec-meter"

[[devices]]
name = "bess"
kind = "modbus"
register_map = "sunspec-bess"

[[devices]]
name = "thermal"
kind = "modbus"
register_map = "thermal-plant"
poll_interval_ms = 5

[[devices]]
name = "bmc"
kind = "redfish"
base_url = "ftp://bmc"

[listeners.metrics]
port = 70000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_config_is_valid() -> None:
    """The embedded default loads without a single problem."""
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.site.grid_meter == "grid_meter"
    assert {d.name for d in cfg.devices} >= {"grid_meter", "bess", "thermal"}


def test_every_problem_is_reported_with_its_toml_path(tmp_path: Path) -> None:
    """All problems come back at once, each with the TOML path a person would look for."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BAD))
    assert info.value.problems == [
        ("site.grid_import_limit_mw", "must be > 0"),
        ("site.colour", "unknown key"),
        ("devices[2].poll_interval_ms", "must be ≥ 10"),
        ("devices[3].base_url", "must start with http:// or https://"),
        ("listeners.metrics.port", "must be ≤ 65535"),
    ]


def test_missing_register_map_names_the_device(tmp_path: Path) -> None:
    """A register map that does not exist is reported at the device that names it."""
    text = '[[devices]]\nname = "m"\nkind = "modbus"\nregister_map = "no-such-map"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    [(path, message)] = info.value.problems
    assert path == "devices[0].register_map"
    assert "no-such-map" in message


def test_device_names_must_be_unique(tmp_path: Path) -> None:
    """Two devices with one name would share store keys; refuse it."""
    text = '[[devices]]\nname = "m"\nkind = "modbus"\nregister_map = "thermal-plant"\n' * 2
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.problems == [("", "device names must be unique; repeated: m")]


def test_unknown_device_kind_is_named(tmp_path: Path) -> None:
    """A device kind the gateway does not speak is an error that lists the kinds it does."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[[devices]]\nname = "x"\nkind = "bacnet"\n'))
    [(path, message)] = info.value.problems
    assert path == "devices[0]"
    for word in ("modbus", "redfish", "bacnet"):
        assert word in message


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    """A broken TOML file is reported as such, with the parser's line and column."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[site\nname = 1"))
    assert "not valid TOML" in info.value.problems[0][1]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PSWD__SECTION__KEY beats the TOML file."""
    monkeypatch.setenv("PSWD__SITE__GRID_RAMP_LIMIT_MW_PER_S", "7.5")
    monkeypatch.setenv("PSWD__LOGGING__LEVEL", "debug")
    cfg = load_config(write(tmp_path, "[site]\ngrid_ramp_limit_mw_per_s = 30\n"))
    assert cfg.site.grid_ramp_limit_mw_per_s == 7.5
    assert cfg.logging.level == "debug"


def test_bad_environment_override_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invalid override is an error at the same path as in the file."""
    monkeypatch.setenv("PSWD__SITE__GRID_RAMP_LIMIT_MW_PER_S", "-1")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""))
    assert info.value.problems == [("site.grid_ramp_limit_mw_per_s", "must be ≥ 0.001")]


def test_timeouts_default_from_the_poll_interval() -> None:
    """Without timeout_ms a request may take 80 % of the interval; invalid after 3 intervals."""
    cfg = GatewayConfig.model_validate(
        {"devices": [{"name": "m", "kind": "modbus", "register_map": "x", "poll_interval_ms": 100}]}
    )
    device = cfg.devices[0]
    assert device.timeout_s == pytest.approx(0.08)
    assert device.invalid_after_s == pytest.approx(1.0)


def test_config_check_prints_ok() -> None:
    """`pswd-gateway config check` on a good file prints OK and exits 0."""
    result = CliRunner().invoke(app, ["config", "check", str(DEFAULT_CONFIG)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "OK"


def test_config_check_prints_each_error_line_and_exits_2(tmp_path: Path) -> None:
    """On a bad file it prints one `path: message` line per problem and exits 2."""
    result = CliRunner().invoke(app, ["config", "check", str(write(tmp_path, BAD))])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "site.grid_import_limit_mw: must be > 0",
        "site.colour: unknown key",
        "devices[2].poll_interval_ms: must be ≥ 10",
        "devices[3].base_url: must start with http:// or https://",
        "listeners.metrics.port: must be ≤ 65535",
    ]


def _opcua_config(host: str, **opcua: object) -> dict[str, object]:
    from pswd_gateway.config import DEFAULT_CONFIG  # noqa: PLC0415

    demo = tomllib.loads(DEFAULT_CONFIG.read_text())
    return {
        "listeners": {"opcua": {"host": host, "port": 4840}},
        "opcua": {"users": demo["opcua"]["users"], **opcua},
    }


def test_the_demo_opcua_users_are_refused_off_loopback() -> None:
    GatewayConfig.model_validate(_opcua_config("127.0.0.1"))
    with pytest.raises(ValidationError, match="published demo passwords"):
        GatewayConfig.model_validate(_opcua_config("0.0.0.0"))


def test_security_policy_none_is_refused_off_loopback() -> None:
    GatewayConfig.model_validate(
        {"listeners": {"opcua": {"host": "127.0.0.1", "port": 1}}, "opcua": {"allow_none": True}}
    )
    with pytest.raises(ValidationError, match="loopback only"):
        GatewayConfig.model_validate(
            {"listeners": {"opcua": {"host": "10.0.0.5", "port": 1}}, "opcua": {"allow_none": True}}
        )


def test_plaintext_mms_is_refused_off_loopback() -> None:
    GatewayConfig.model_validate({"listeners": {"iec61850": {"host": "127.0.0.1", "port": 10102}}})
    with pytest.raises(ValidationError, match="plaintext"):
        GatewayConfig.model_validate(
            {"listeners": {"iec61850": {"host": "192.0.2.7", "port": 102}}}
        )


def test_mms_listener_limits_and_goose_address_are_validated() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "listeners": {
                "iec61850": {
                    "port": 10102,
                    "max_connections": 3,
                }
            },
            "iec61850": {"goose_appid": 0x3001, "goose_dst_mac": "01:0C:CD:01:00:2A"},
        }
    )
    assert cfg.listeners.iec61850.max_connections == 3
    assert not cfg.iec61850.anonymous_read  # off unless asked for
    for bad in (
        {"listeners": {"iec61850": {"port": 1, "max_connections": 0}}},
        {"listeners": {"iec61850": {"port": 1, "allowed_networks": ["10.0.0.0/8"]}}},
        {"iec61850": {"goose_dst_mac": "ff:ff:ff:ff:ff:ff"}},
        {"iec61850": {"goose_appid": 0x4000}},
        {"iec61850": {"users": [{"name": "x", "role": "engineer", "password_hash": "x"}]}},
    ):
        with pytest.raises(ValidationError):
            GatewayConfig.model_validate(bad)


def test_demand_response_lowers_the_import_limit_only_while_active() -> None:
    from pswd_gateway.config import SiteConfig  # noqa: PLC0415

    site = SiteConfig(grid_import_limit_mw=400.0, demand_response_limit_mw=120.0)
    assert site.import_limit_mw == 400.0
    active = site.model_copy(update={"demand_response_active": True})
    assert active.import_limit_mw == 120.0
    higher = active.model_copy(update={"demand_response_limit_mw": 900.0})
    assert higher.import_limit_mw == 400.0


def test_the_chilled_water_setpoint_is_set_once_in_control_and_planned_from_there() -> None:
    """``[control] chw_supply_setpoint_c`` reaches the scheduler's pre-cooling; a different
    value repeated under ``[scheduling]`` is refused, naming both."""
    from pswd_gateway.config import GatewayConfig  # noqa: PLC0415

    cfg = GatewayConfig.model_validate({"control": {"chw_supply_setpoint_c": 16.5}})
    assert cfg.scheduling.chw_supply_setpoint_c == 16.5
    same = {"chw_supply_setpoint_c": 16.5}
    assert GatewayConfig.model_validate({"control": same, "scheduling": same}).scheduling
    with pytest.raises(ValueError, match=r"scheduling.chw_supply_setpoint_c \(17.0\) differs"):
        GatewayConfig.model_validate(
            {"control": same, "scheduling": {"chw_supply_setpoint_c": 17.0}}
        )


def test_retention_keeps_whole_history_no_longer_than_any_history(tmp_path: Path) -> None:
    """Setpoint history kept whole for longer than it is kept at all is refused where it is."""
    text = "[storage]\nsetpoint_full_days = 40\nsetpoint_days = 30\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    [(path, message)] = info.value.problems
    assert path == "storage"
    assert "setpoint_full_days must not exceed setpoint_days" in message


def test_a_bmc_password_can_come_from_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = {
        "name": "hall_a",
        "kind": "redfish",
        "base_url": "https://192.0.2.11",
        "username": "pswd",
        "password_credential": "hall-a-bmc",
    }
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ValidationError, match="LoadCredential=hall-a-bmc:/etc/credstore/"):
        GatewayConfig.model_validate({"devices": [device]})
    (tmp_path / "hall-a-bmc").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = GatewayConfig.model_validate({"devices": [device]})
    bmc = cfg.device("hall_a")
    assert isinstance(bmc, RedfishDeviceConfig)
    assert bmc.password.get_secret_value() == "s3cret"
    with pytest.raises(ValidationError, match="exclude each other"):
        GatewayConfig.model_validate({"devices": [{**device, "password": "also"}]})
    with pytest.raises(ValidationError, match="cannot read"):
        GatewayConfig.model_validate({"devices": [{**device, "password_credential": "missing"}]})


def test_mutual_tls_settings_need_tls_and_a_ca() -> None:
    for bad, words in (
        ({"port": 1, "tls_client_ca": "/ca.pem"}, "needs tls_cert"),
        (
            {"port": 1, "tls_cert": "/c", "tls_key": "/k", "tls_crl": "/crl.pem"},
            "set tls_client_ca",
        ),
    ):
        with pytest.raises(ValidationError, match=words):
            GatewayConfig.model_validate({"listeners": {"api": bad}})


MMS_TLS = {
    "host": "192.0.2.7",
    "port": 3782,
    "tls_cert": "/etc/pswd-gateway/certs/tls/server.pem",
    "tls_key": "/etc/pswd-gateway/certs/tls/server.key",
    "tls_client_ca": "/etc/pswd-gateway/certs/ca/ca.pem",
}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tls_client_ca": None}, "MMS over TLS always asks the client for a certificate"),
        ({"tls_key": None}, "tls_cert and tls_key go together"),
        ({"tls_client_auth": "optional"}, 'tls_client_auth must be "required"'),
        ({"tls_client_ca": None, "tls_crl": "/etc/crl.pem"}, "set tls_client_ca"),
        ({"tls_cert": None, "tls_key": None, "tls_client_ca": None}, "MMS without TLS"),
        ({"tls_min_version": "1.1"}, "tls_min_version"),
    ],
    ids=["no client CA", "no key", "optional client certificate", "a CRL without its CA",
         "plaintext off loopback", "TLS 1.1"],
)  # fmt: skip
def test_the_mms_tls_settings_that_do_not_fit_together_are_refused(
    change: dict[str, object], words: str
) -> None:
    listener = {k: v for k, v in {**MMS_TLS, **change}.items() if v is not None}
    with pytest.raises(ValidationError, match=words):
        GatewayConfig.model_validate({"listeners": {"iec61850": listener}})


def test_mms_over_tls_reads_its_settings_and_checks_nothing_on_loopback() -> None:
    """The settings as the MMS process gets them; TLS on loopback is allowed too (a test bench,
    or a client on the edge box)."""
    from pswd_gateway.daemon import _mms_tls  # noqa: PLC0415

    listener = {**MMS_TLS, "host": "127.0.0.1", "tls_min_version": "1.3"}
    cfg = GatewayConfig.model_validate({"listeners": {"iec61850": listener}})
    tls = _mms_tls(cfg.listeners.iec61850)
    assert tls is not None
    assert (str(tls.client_ca), tls.crl, tls.min_version) == (MMS_TLS["tls_client_ca"], None, "1.3")
    plain = GatewayConfig.model_validate({"listeners": {"iec61850": {"port": 10102}}})
    assert _mms_tls(plain.listeners.iec61850) is None
