"""The twin's BMC against DMTF's Redfish Protocol Validator (``redfish_protocol_validator``).

The validator runs as its own process against the twin on loopback, over HTTPS with a
throw-away self-signed certificate (as a BMC would be), logged in with the demo account, with
SSDP discovery off (it would multicast off the machine; the twin does not answer SSDP). It must
report no failed assertion, for either kind of BMC the twin can be.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pswd_gateway.simulation.clock import SimClock
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.devices import SiteContext
from pswd_gateway.simulation.physics import SitePhysics
from pswd_gateway.simulation.redfish import RedfishTwinServer
from pswd_gateway.simulation.redfish.resources import PowerResource
from pswd_gateway.simulation.redfish_backend import HallBackend

pytestmark = pytest.mark.integration

VALIDATOR_TIMEOUT_S = 180.0

# The validator's own entry point, with SSDP discovery answered "nothing found" instead of an
# M-SEARCH multicast: the SSDP assertions are then reported NOT_TESTED.
RUNNER = """
import sys
from redfish_protocol_validator import console_scripts, utils
utils.discover_ssdp = lambda *args, **kwargs: {}
sys.argv[0] = "rf_protocol_validator"
console_scripts.main()
"""


def _validator_installed() -> None:
    """A dev dependency (`make test` installs it): where it is missing the test fails, saying
    what to install; it never skips."""
    if importlib.util.find_spec("redfish_protocol_validator") is None:
        pytest.fail("redfish_protocol_validator is not installed: pip install -e '.[dev]'")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pswd twin BMC")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bmc-cert.pem", directory / "bmc-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(params=["EnvironmentMetrics", "Power"])
async def https_bmc(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RedfishTwinServer]:
    """One hall's BMC of the demo twin (four racks) over HTTPS on a free loopback port."""
    power_resource: PowerResource = request.param
    cfg = SimulationConfig.model_validate({"redfish": {"racks_per_hall": 4}})
    backend = HallBackend(SiteContext(SitePhysics(cfg), SimClock()), 0, cfg.redfish)
    cert, key = _self_signed(tmp_path)
    server = RedfishTwinServer(
        backend,
        username=cfg.redfish.username,
        password=cfg.redfish.password,
        telemetry=power_resource == "EnvironmentMetrics",
        power_resource=power_resource,
        tls_cert=cert,
        tls_key=key,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _failures(report_dir: Path) -> list[str]:
    """The FAIL rows of the validator's TSV report (assertion, method, status, URI, message)."""
    rows = []
    for tsv in report_dir.glob("*.tsv"):
        for line in tsv.read_text(encoding="utf-8").splitlines():
            cells = line.split("\t")
            if len(cells) > 5 and cells[4] == "FAIL":  # cells[4]: the Result column
                rows.append(" | ".join([*cells[:4], cells[5]]))
    return rows


async def test_the_twin_bmc_passes_dmtf_protocol_validator(
    https_bmc: RedfishTwinServer, tmp_path: Path
) -> None:
    """Every assertion the validator can test on the twin passes: none FAILs."""
    _validator_installed()
    cert = https_bmc.tls_cert
    assert cert is not None
    report_dir = tmp_path / "reports"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUNNER,
        "--rhost",
        f"https://127.0.0.1:{https_bmc.port}",
        "--user",
        "pswd-demo",
        "--password",
        "pswd-demo-bmc",
        "--ca-bundle",
        str(cert),
        "--avoid-http-redirect",
        "--report-dir",
        str(report_dir),
        "--report-type",
        "tsv",
        cwd=tmp_path,
        # some of its checks open their own connections, trusting only the default bundle
        env={**os.environ, "REQUESTS_CA_BUNDLE": str(cert)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), VALIDATOR_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    results_file = report_dir / "results.json"
    assert results_file.exists(), text[-2000:]
    counts = json.loads(results_file.read_text())["TestResults"]["Protocol Validations"]
    assert counts["fail"] == 0, "\n".join(_failures(report_dir))
    assert counts["pass"] > 200, counts
    assert process.returncode == 0, text[-2000:]
