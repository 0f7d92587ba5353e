"""`pswd-gateway certs init|trust`: they work on the certificate directory the gateway reads —
the config's `opcua.certs_dir` (the demo config's by default) — and always name it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from typer.testing import CliRunner, Result

from pswd_gateway.cli import app
from pswd_gateway.config import load_config
from pswd_gateway.security.certs import (
    make_client_certificate,
    resolve_certs_dir,
    trust_opcua_client,
)


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One client certificate (DER) made as `pswd-gateway opcua client-cert` makes it."""
    cert, _key = make_client_certificate(
        tmp_path_factory.mktemp("client"), "scada", "urn:example:scada"
    )
    return cert


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, as the gateway would be started in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PSWD__OPCUA__CERTS_DIR", raising=False)
    return tmp_path


def gateway_config(path: Path, certs_dir: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[opcua]\ncerts_dir = "{certs_dir}"\n')
    return path


def pswd(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def trusted_files(certs_dir: Path) -> list[Path]:
    folder = certs_dir / "opcua" / "trusted"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_certs_trust_with_no_flag_writes_where_the_demo_gateway_reads(
    workdir: Path, client_cert: Path
) -> None:
    """The README's `certs trust --opcua CERT`, run where `make demo` runs, lands in the demo
    config's `opcua.certs_dir` (var/certs), not in a directory of its own."""
    result = pswd("certs", "trust", "--opcua", str(client_cert))

    assert result.exit_code == 0, result.output
    demo_dir = resolve_certs_dir(load_config().opcua.certs_dir)
    assert demo_dir == workdir / "var" / "certs"
    [trusted] = trusted_files(demo_dir)
    assert result.stdout.startswith(f"trusted: var/certs/opcua/trusted/{trusted.name} ")
    assert "(the gateway's opcua.certs_dir from " in result.stdout
    assert "demo.toml)" in result.stdout
    assert not (workdir / "certs").exists()


def test_certs_trust_resolves_a_relative_certs_dir_from_the_working_directory_like_the_server(
    workdir: Path, client_cert: Path
) -> None:
    config = gateway_config(workdir / "etc" / "gateway.toml", "site-certs")

    result = pswd("certs", "trust", "--opcua", str(client_cert), "--config", str(config))

    assert result.exit_code == 0, result.output
    assert len(trusted_files(workdir / "site-certs")) == 1
    assert not (workdir / "etc" / "site-certs").exists()
    assert "(the gateway's opcua.certs_dir from etc/gateway.toml)" in result.stdout


def test_certs_trust_uses_an_absolute_certs_dir_as_configured(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, client_cert: Path
) -> None:
    elsewhere = tmp_path_factory.mktemp("etc-pswd") / "certs"
    config = gateway_config(workdir / "gateway.toml", str(elsewhere))

    result = pswd("certs", "trust", "--opcua", str(client_cert), "-c", str(config))

    assert result.exit_code == 0, result.output
    [trusted] = trusted_files(elsewhere)
    assert result.stdout.startswith(f"trusted: {trusted} (")


def test_certs_dir_flag_wins_and_the_output_says_so(workdir: Path, client_cert: Path) -> None:
    result = pswd("certs", "trust", "--opcua", str(client_cert), "--dir", "mine")

    assert result.exit_code == 0, result.output
    assert len(trusted_files(workdir / "mine")) == 1
    assert not (workdir / "var").exists()
    assert "(given with --dir)" in result.stdout


def test_certs_dir_flag_against_an_explicit_config_names_the_directory_that_gateway_reads(
    workdir: Path, client_cert: Path
) -> None:
    config = gateway_config(workdir / "gateway.toml", "var/certs")

    result = pswd(
        "certs", "trust", "--opcua", str(client_cert), "--config", str(config), "--dir", "mine"
    )

    assert result.exit_code == 0, result.output
    assert len(trusted_files(workdir / "mine")) == 1
    assert "note: --dir wins; gateway.toml has opcua.certs_dir var/certs" in result.stderr


def test_certs_trust_accepts_a_pem_certificate(workdir: Path, client_cert: Path) -> None:
    pem = workdir / "scada-cert.pem"
    cert = x509.load_der_x509_certificate(client_cert.read_bytes())
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    result = pswd("certs", "trust", "--opcua", str(pem))

    assert result.exit_code == 0, result.output
    [trusted] = trusted_files(workdir / "var" / "certs")
    assert trusted.read_bytes() == client_cert.read_bytes()  # stored as DER


def test_certs_trust_refuses_a_private_key_and_says_which_file_to_give(workdir: Path) -> None:
    _cert, key = make_client_certificate(workdir, "scada", "urn:example:scada")

    result = pswd("certs", "trust", "--opcua", str(key))

    assert result.exit_code == 2
    assert "holds a private key; give the certificate" in result.stderr
    assert trusted_files(workdir / "var" / "certs") == []


def test_certs_trust_reports_a_bad_config_by_its_toml_path(
    workdir: Path, client_cert: Path
) -> None:
    config = workdir / "gateway.toml"
    config.write_text("[opcua]\ncerts_dir = 7\n")

    result = pswd("certs", "trust", "--opcua", str(client_cert), "--config", str(config))

    assert result.exit_code == 2
    assert "opcua.certs_dir" in result.stderr
    assert not list(workdir.glob("**/trusted"))


def test_certs_trust_warns_when_the_directory_has_no_server_certificate(
    workdir: Path, client_cert: Path
) -> None:
    result = pswd("certs", "trust", "--opcua", str(client_cert))

    assert result.exit_code == 0, result.output
    assert "var/certs has no OPC UA server certificate yet" in result.stderr


def test_certs_trust_into_a_gateways_directory_promises_no_restart(
    workdir: Path, client_cert: Path
) -> None:
    assert pswd("certs", "init").exit_code == 0

    result = pswd("certs", "trust", "--opcua", str(client_cert))

    assert result.exit_code == 0, result.output
    assert "a running gateway admits the client at its next connection attempt" in result.stdout
    assert result.stderr == ""


def test_certs_trust_help_says_no_restart_is_needed() -> None:
    result = pswd("certs", "trust", "--help")

    assert result.exit_code == 0
    assert "No restart needed" in " ".join(result.output.split())


def test_certs_init_writes_into_the_configs_certs_dir_and_keeps_an_existing_one(
    workdir: Path,
) -> None:
    config = gateway_config(workdir / "gateway.toml", "site-certs")

    first = pswd("certs", "init", "--config", str(config), "--host", "127.0.0.1")
    cert = workdir / "site-certs" / "opcua" / "server_cert.der"
    written = cert.read_bytes()
    second = pswd("certs", "init", "--config", str(config))

    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(
        "wrote site-certs/opcua/server_cert.der and site-certs/opcua/server_key.pem "
        "(the gateway's opcua.certs_dir from gateway.toml)"
    )
    assert f"`pswd-gateway certs trust --opcua CERT --config {config}`" in first.stdout
    assert second.stdout.startswith("kept site-certs/opcua/server_cert.der")
    assert cert.read_bytes() == written


def test_certs_init_force_says_a_restart_is_needed(workdir: Path) -> None:
    assert pswd("certs", "init").exit_code == 0

    result = pswd("certs", "init", "--force")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote var/certs/opcua/server_cert.der")
    assert "serves the old certificate until it restarts" in result.stdout


def test_trusting_a_certificate_removes_the_servers_rejected_copy(
    tmp_path: Path, client_cert: Path
) -> None:
    """The server saves a refused certificate as `rejected/<sha256[:16]>.der`."""
    cert = x509.load_der_x509_certificate(client_cert.read_bytes())
    rejected = tmp_path / "opcua" / "rejected"
    rejected.mkdir(parents=True)
    saved = rejected / f"{cert.fingerprint(hashes.SHA256()).hex()[:16]}.der"
    saved.write_bytes(client_cert.read_bytes())

    trust_opcua_client(tmp_path, client_cert)

    assert not saved.exists()
    assert len(trusted_files(tmp_path)) == 1
