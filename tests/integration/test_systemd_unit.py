"""The shipped systemd unit: verifies cleanly, exposure ≤ 2.0, keeps the documented promises."""

from __future__ import annotations

import configparser
import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "pswd-gateway.service"
analyze = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.needs_tool("systemd-analyze", "systemd")


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's pswd-gateway (verify checks that
    the binary exists); every other line unchanged."""
    exe = Path(sys.executable).with_name("pswd-gateway")
    text = UNIT.read_text(encoding="utf-8").replace("/usr/bin/pswd-gateway", str(exe))
    path = tmp_path / "pswd-gateway.service"
    path.write_text(text, encoding="utf-8")
    return path


def directives() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT, encoding="utf-8")
    return parser


def assert_verifies_cleanly(unit: Path) -> None:
    """`systemd-analyze verify` prints nothing and succeeds (the unit here, and as the Debian
    package installs it: tests/integration/test_deb.py)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    assert_verifies_cleanly(unit_for_this_machine(tmp_path))


@needs_systemd
def test_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit 1.5 or better (issue: IEC
    62443-3-3 least privilege)."""
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(unit_for_this_machine(tmp_path))],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5, result.stdout


def test_unit_keeps_the_documented_promises() -> None:
    """Type=notify with a watchdog, a dedicated non-root user, exactly the two capabilities
    MMS (port 102) and GOOSE (raw frames) need, and a read-only system."""
    service = directives()["Service"]
    assert service["Type"] == "notify"
    assert service["WatchdogSec"]
    assert service["User"] not in ("", "root")
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert set(service["AmbientCapabilities"].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert "AF_PACKET" in service["RestrictAddressFamilies"].split()
    assert service["StateDirectory"] == "pswd-gateway"
    assert service["ConfigurationDirectory"] == "pswd-gateway"


def test_the_unit_reaches_no_public_address() -> None:
    """Peers are loopback and the private ranges only: nothing on the internet by default."""
    service = directives()["Service"]
    assert service["IPAddressDeny"] == "any"
    allowed = service["IPAddressAllow"].split()
    assert "localhost" in allowed
    public = [a for a in allowed if a not in {"localhost", "link-local"}
              and not ipaddress.ip_network(a).is_private]  # fmt: skip
    assert not public
