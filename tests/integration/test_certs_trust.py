"""`pswd-gateway certs trust` end to end: the CLI, given only the gateway's config, writes where
the running asyncua server reads, and the server admits the client without a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from typer.testing import CliRunner

from pswd_gateway.bench.api import free_port
from pswd_gateway.cli import app
from pswd_gateway.config import load_config
from pswd_gateway.daemon import Gateway
from pswd_gateway.security.passwords import hash_password

pytestmark = pytest.mark.integration

CLIENT_URI = "urn:pswd:test-scada"


def write_config(directory: Path, port: int) -> Path:
    """A gateway with only its OPC UA listener. ``certs_dir`` is relative, as in the demo, and
    the file lies in a subdirectory: the CLI must resolve it as the server does (from the
    working directory), not from the file's directory."""
    path = directory / "etc" / "gateway.toml"
    path.parent.mkdir()
    password_hash = hash_password("pw-viewer", iterations=1000)
    path.write_text(
        f"""
[listeners.metrics]
enabled = false
port = 0

[listeners.api]
enabled = false
port = 0

[listeners.opcua]
enabled = true
host = "127.0.0.1"
port = {port}

[storage]
state_dir = "state"
journal_synchronous = "normal"

[opcua]
certs_dir = "certs"

[[opcua.users]]
name = "viewer"
role = "viewer"
password_hash = "{password_hash}"
"""
    )
    return path


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def browse_site(url: str, cert: Path, key: Path, server_cert: Path) -> set[str]:
    """Connect as a SCADA client with CERT (SignAndEncrypt) and list ``Objects/PSWD``."""
    client = Client(url, timeout=5)
    client.application_uri = CLIENT_URI
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=str(cert),
        private_key=str(key),
        server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    client.set_user("viewer")
    client.set_password("pw-viewer")
    async with client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        pswd = await client.nodes.objects.get_child(f"{idx}:PSWD")
        return {(await c.read_browse_name()).Name for c in await pswd.get_children()}


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    """The gateway's OPC UA listener on a free port, started as `pswd-gateway run` would be
    (from the config file, in its working directory); its config path; stopped afterwards."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, free_port())
    cli("certs", "init", "--config", str(config), "--host", "127.0.0.1")
    gw = Gateway(load_config(config), config_path=config)
    await gw.start()
    try:
        yield config
    finally:
        await gw.stop()


async def test_certs_trust_given_only_the_config_lets_a_refused_client_in_without_restart(
    gateway: Path, tmp_path: Path
) -> None:
    """Refused (BadCertificateUntrusted) before; `certs trust --opcua CERT --config FILE`, with
    no --dir; then the same running server admits the same client, and its rejected copy is
    gone. Without the server re-reading trusted/ this fails (checked by stubbing its reload)."""
    cfg = load_config(gateway)
    url = f"opc.tcp://127.0.0.1:{cfg.listeners.opcua.port}/pswd"
    server_cert = tmp_path / "certs" / "opcua" / "server_cert.der"
    cli("opcua", "client-cert", "--name", "scada", "--uri", CLIENT_URI, "-o", "client")
    cert, key = tmp_path / "client" / "scada.der", tmp_path / "client" / "scada.pem"

    with pytest.raises(ua.UaStatusCodeError) as refused:
        await browse_site(url, cert, key, server_cert)
    assert refused.value.code == ua.StatusCodes.BadCertificateUntrusted
    rejected = tmp_path / "certs" / "opcua" / "rejected"
    assert len(list(rejected.iterdir())) == 1

    output = cli("certs", "trust", "--opcua", "client/scada.der", "--config", str(gateway))
    assert output.startswith("trusted: certs/opcua/trusted/scada-")
    assert "(the gateway's opcua.certs_dir from etc/gateway.toml)" in output

    assert "GridConnection" in await browse_site(url, cert, key, server_cert)  # no restart
    assert not list(rejected.iterdir())
