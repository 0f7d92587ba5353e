"""The Debian package (`make deb`): it builds lintian-clean, installs with its maintainer scripts
into a scratch root (`dpkg --root`), and the gateway installed there runs.

The package is built once per module (about 90 s with pip's cache warm) and installed once; the
reinstall-and-purge test installs a copy of its own, so no test depends on another's order.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_systemd_unit import assert_verifies_cleanly

import pswd_gateway

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "build-deb"
PREFIX = "opt/pswd-gateway"
PACKAGE = "pswd-gateway"
TestFunction = Callable[..., None]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.needs_tool("dpkg-deb", "dpkg"),
    pytest.mark.needs_tool("lintian", "lintian"),
    pytest.mark.needs_tool("objdump", "binutils"),
    pytest.mark.needs_tool("/usr/bin/python3.11", "python3.11-venv"),
]


def needs_install(test: TestFunction) -> TestFunction:
    """dpkg installs into a scratch root as root; postinst's user and directories need systemd's
    sysusers and tmpfiles."""
    for mark in (
        pytest.mark.needs_root,
        pytest.mark.needs_tool("dpkg", "dpkg"),
        pytest.mark.needs_tool("systemd-sysusers", "systemd"),
        pytest.mark.needs_tool("systemd-tmpfiles", "systemd"),
    ):
        test = mark(test)
    return test


@dataclass(frozen=True)
class Built:
    deb: Path
    log: str
    control: Path  # the package's DEBIAN/ area, extracted


def run(
    *args: str | Path,
    timeout_s: float = 120,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command; its standard output, or fail the test with everything it printed."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def dpkg_install(deb: Path, root: Path) -> None:
    """Install into ROOT as dpkg does on a live system, except that the maintainer scripts run
    outside a chroot with DPKG_ROOT=ROOT (the package's scripts honour it) and the Depends
    (Debian's python3.11, libc6) are the host's, not the scratch root's."""
    admin = root / "var" / "lib" / "dpkg"
    for sub in ("updates", "info"):
        (admin / sub).mkdir(parents=True, exist_ok=True)
    (admin / "status").touch()
    run(
        "dpkg",
        f"--root={root}",
        "--force-script-chrootless",
        "--force-depends",
        "-i",
        deb,
        timeout_s=300,
    )


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at another interpreter's
    modules (pytest runs inside the development venv)."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`packaging/build-deb` run once, as `make deb` runs it (pip driven by this interpreter)."""
    result = subprocess.run(
        [str(BUILD_SCRIPT)],
        cwd=REPO,
        env={**os.environ, "PIP_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"build-deb failed:\n{log[-6000:]}"
    arch = run("dpkg", "--print-architecture").strip()
    deb = REPO / "dist" / f"{PACKAGE}_{pswd_gateway.__version__}_{arch}.deb"
    assert deb.is_file(), log
    control = tmp_path_factory.mktemp("control")
    run("dpkg-deb", "--control", deb, control)
    return Built(deb=deb, log=log, control=control)


@pytest.fixture(scope="module")
def contents(built: Built) -> dict[str, tuple[str, str, str]]:
    """`dpkg-deb --contents`: path → (mode string, owner/group, symlink target or "")."""
    listing: dict[str, tuple[str, str, str]] = {}
    for line in run("dpkg-deb", "--contents", built.deb).splitlines():
        mode, owner, _size, _date, _time, rest = line.split(maxsplit=5)
        path, _, target = rest.partition(" -> ")
        listing[path.removeprefix("./").rstrip("/")] = (mode, owner, target)
    return listing


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed into a scratch root; the path of that root."""
    root = tmp_path_factory.mktemp("scratch") / "root"
    dpkg_install(built.deb, root)
    return root


def test_build_ends_with_a_clean_lintian_run(built: Built) -> None:
    """The build script runs `lintian --fail-on error,warning` last and it reported nothing."""
    assert "lintian: clean" in built.log
    assert not re.search(r"^[EW]: ", built.log, re.MULTILINE), built.log


def test_control_names_the_package_its_version_arch_and_interpreter(built: Built) -> None:
    """DEBIAN/control: the project's version, the build machine's architecture, a Maintainer
    with an address, Debian's python3.11 as the interpreter, and a synopsis with a body."""
    fields = dict(
        line.split(": ", 1)
        for line in (built.control / "control").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith(" ")
    )
    assert fields["Package"] == PACKAGE
    assert fields["Version"] == pswd_gateway.__version__
    assert fields["Architecture"] == run("dpkg", "--print-architecture").strip()
    assert re.fullmatch(r"[^<>]+ <[^@\s]+@[^@\s]+>", fields["Maintainer"])
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "python3.11" in depends
    assert any(d.startswith("libc6 (>= ") for d in depends)
    assert fields["Description"].strip()
    body = run("dpkg-deb", "--field", built.deb, "Description").splitlines()[1:]
    assert len(body) > 3


def test_configuration_and_register_maps_are_conffiles(built: Built) -> None:
    """dpkg keeps an operator's edits of the configuration and maps across upgrades."""
    conffiles = (built.control / "conffiles").read_text(encoding="utf-8").split()
    maps = sorted(f"/etc/{PACKAGE}/devices/{p.name}" for p in (REPO / "config/devices").iterdir())
    assert conffiles == sorted([f"/etc/{PACKAGE}/gateway.toml", *maps])


def test_maintainer_scripts_are_executable_sh(built: Built) -> None:
    """postinst, prerm and postrm are POSIX sh scripts dpkg can run."""
    for name in ("postinst", "prerm", "postrm"):
        script = built.control / name
        assert stat.S_IMODE(script.stat().st_mode) == 0o755, name
        assert script.read_text(encoding="utf-8").startswith("#!/bin/sh\n"), name


def test_files_are_where_debian_puts_them_owned_by_root(
    contents: dict[str, tuple[str, str, str]],
) -> None:
    """The venv in /opt, the command on PATH, the unit, sysusers and tmpfiles entries, the
    configuration, docs, ICD and NodeSet, man page, overrides -- with Debian's modes, all
    root's, and no byte-code (postinst compiles it on the target)."""
    expected = {
        f"{PREFIX}/bin/pswd-gateway": "-rwxr-xr-x",
        f"{PREFIX}/pyvenv.cfg": "-rw-r--r--",
        "lib/systemd/system/pswd-gateway.service": "-rw-r--r--",
        "usr/lib/sysusers.d/pswd-gateway.conf": "-rw-r--r--",
        "usr/lib/tmpfiles.d/pswd-gateway.conf": "-rw-r--r--",
        "etc/pswd-gateway/gateway.toml": "-rw-r--r--",  # 0640 root:pswd-gateway after postinst
        "usr/share/doc/pswd-gateway/copyright": "-rw-r--r--",
        "usr/share/doc/pswd-gateway/changelog.gz": "-rw-r--r--",
        "usr/share/doc/pswd-gateway/README.md": "-rw-r--r--",
        "usr/share/doc/pswd-gateway/CHANGELOG.md.gz": "-rw-r--r--",
        "usr/share/doc/pswd-gateway/docs/deployment.md.gz": "-rw-r--r--",
        "usr/share/doc/pswd-gateway/python-packages.txt": "-rw-r--r--",
        "usr/share/pswd-gateway/pswd-gateway.icd": "-rw-r--r--",
        "usr/share/pswd-gateway/pswd-gateway.NodeSet2.xml": "-rw-r--r--",
        "usr/share/man/man1/pswd-gateway.1.gz": "-rw-r--r--",
        "usr/share/lintian/overrides/pswd-gateway": "-rw-r--r--",
    }
    for path, mode in expected.items():
        assert path in contents, path
        assert contents[path][0] == mode, (path, contents[path])
    assert contents["usr/bin/pswd-gateway"][0].startswith("l")
    assert contents["usr/bin/pswd-gateway"][2] == f"/{PREFIX}/bin/pswd-gateway"
    assert contents[f"{PREFIX}/bin/python3.11"][2] == "/usr/bin/python3.11"
    assert {owner for _, owner, _ in contents.values()} == {"root/root"}
    assert not [p for p in contents if p.endswith(".pyc") or "__pycache__" in p]
    assert not [p for p in contents if p.startswith("var/")]  # made by tmpfiles, purged by postrm


@needs_install
def test_copyright_is_machine_readable_gpl3(installed: Path) -> None:
    """The copyright file is DEP-5 and points at Debian's copy of the GPL 3."""
    text = (installed / "usr/share/doc/pswd-gateway/copyright").read_text(encoding="utf-8")
    assert text.startswith(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    )
    assert "\nFiles: *\n" in text
    assert "\nLicense: GPL-3+\n" in text
    assert '"/usr/share/common-licenses/GPL-3"' in text


@needs_install
def test_bundled_python_distributions_are_listed_once_with_a_licence(installed: Path) -> None:
    """python-packages.txt names every distribution of the venv once, the gateway included,
    each with the licence it declares (the copyright file points there)."""
    listing = (installed / "usr/share/doc/pswd-gateway/python-packages.txt").read_text(
        encoding="utf-8"
    )
    rows = [line.split(maxsplit=2) for line in listing.splitlines()[2:]]
    names = [row[0].lower() for row in rows]
    assert len(names) == len(set(names)), names
    assert {"pswd-gateway", "pydantic", "numpy", "pyiec61850-ng"} <= set(names)
    assert all(len(row) == 3 for row in rows), rows
    dist_infos = list((installed / PREFIX).glob("lib/python3.11/site-packages/*.dist-info"))
    assert len(names) == len(dist_infos)


def _names(db: Path) -> dict[int, str]:
    """id → name from a passwd- or group-format file (root is 0 even where the file is new)."""
    names = {0: "root"}
    for line in db.read_text(encoding="utf-8").splitlines():
        name, _password, ident, *_ = line.split(":")
        names[int(ident)] = name
    return names


def _owner(path: Path, root: Path) -> tuple[str, str]:
    """User and group of PATH by the scratch root's own /etc/passwd and /etc/group."""
    st = path.stat()
    users, groups = _names(root / "etc/passwd"), _names(root / "etc/group")
    return users.get(st.st_uid, str(st.st_uid)), groups.get(st.st_gid, str(st.st_gid))


@needs_install
def test_postinst_creates_the_user_and_tightens_the_directories(installed: Path) -> None:
    """postinst ran systemd-sysusers and systemd-tmpfiles against the scratch root: the system
    user exists there, the state directory is its own (0750), and the configuration, which
    holds device credentials, is readable by its group only."""
    passwd = (installed / "etc/passwd").read_text(encoding="utf-8")
    assert re.search(r"^pswd-gateway:x:\d+:\d+:[^:]*:/var/lib/pswd-gateway:/usr/sbin/nologin$",
                     passwd, re.MULTILINE)  # fmt: skip
    expected = {
        "var/lib/pswd-gateway": (0o750, ("pswd-gateway", "pswd-gateway")),
        "etc/pswd-gateway": (0o750, ("root", "pswd-gateway")),
        "etc/pswd-gateway/gateway.toml": (0o640, ("root", "pswd-gateway")),
    }
    for rel, (mode, owner) in expected.items():
        path = installed / rel
        assert stat.S_IMODE(path.stat().st_mode) == mode, rel
        assert _owner(path, installed) == owner, rel
    status = run(
        "dpkg-query", f"--admindir={installed}/var/lib/dpkg", "-W", "-f=${Status}", PACKAGE
    )
    assert status == "install ok installed"


@needs_install
def test_postinst_byte_compiles_the_venv(installed: Path) -> None:
    """The service runs with PYTHONDONTWRITEBYTECODE on a read-only /opt: postinst compiled."""
    site = installed / PREFIX / "lib/python3.11/site-packages"
    assert list((site / "pswd_gateway/__pycache__").glob("cli.cpython-311.pyc"))


@needs_install
def test_installed_gateway_checks_the_shipped_configuration(installed: Path) -> None:
    """The installed console script, run by the installed venv's interpreter, accepts the
    example configuration with the register maps next to it. (Its `#!` names
    /opt/pswd-gateway/bin/python, which is the final path, not the scratch root's: the script
    is handed to the scratch root's interpreter instead.)"""
    venv = installed / PREFIX
    script = venv / "bin/pswd-gateway"
    assert script.read_text(encoding="utf-8").startswith(f"#!/{PREFIX}/bin/python\n")
    check = run(
        venv / "bin/python",
        script,
        "config",
        "check",
        installed / "etc/pswd-gateway/gateway.toml",
        cwd=installed,
        env=clean_env(),
    )
    assert check.strip() == "OK"
    where = run(
        venv / "bin/python",
        "-c",
        "import pswd_gateway, sys; print(pswd_gateway.__file__); print(sys.prefix)",
        cwd=installed,
        env=clean_env(),
    ).splitlines()
    assert Path(where[0]).is_relative_to(venv / "lib/python3.11/site-packages")
    assert Path(where[1]) == venv
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text(encoding="utf-8")


@needs_install
@pytest.mark.needs_tool("systemd-analyze", "systemd")
def test_installed_unit_is_the_repository_unit_and_verifies(
    installed: Path, tmp_path: Path
) -> None:
    """The unit in /lib/systemd/system is systemd/pswd-gateway.service as is; `systemd-analyze
    verify` passes once ExecStart's /usr/bin/pswd-gateway is read inside the scratch root,
    where it is a symlink to the venv's console script."""
    unit = installed / "lib/systemd/system/pswd-gateway.service"
    text = unit.read_text(encoding="utf-8")
    assert text == (REPO / "systemd/pswd-gateway.service").read_text(encoding="utf-8")
    link = (installed / "usr/bin/pswd-gateway").readlink()
    target = installed / link.relative_to("/")
    assert os.access(target, os.X_OK)
    local = tmp_path / "pswd-gateway.service"
    local.write_text(text.replace("/usr/bin/pswd-gateway", str(target)), encoding="utf-8")
    assert_verifies_cleanly(local)


@needs_install
def test_reinstall_keeps_an_edited_configuration_and_purge_removes_the_rest(
    built: Built, tmp_path: Path
) -> None:
    """Installing over an installed package (prerm upgrade, postinst configure with the old
    version) keeps the operator's edit of the conffile and recompiles; prerm drops the byte-code
    postinst made, so nothing is left in /opt; purge takes the conffiles and the gateway's state
    (/var/lib/pswd-gateway) too. The system user stays, as Debian leaves system users."""
    root = tmp_path / "root"
    config = root / "etc/pswd-gateway/gateway.toml"
    dpkg_install(built.deb, root)
    edited = config.read_text(encoding="utf-8").replace("dc-north-campus", "dc-south-campus")
    config.write_text(edited, encoding="utf-8")
    dpkg_install(built.deb, root)
    assert config.read_text(encoding="utf-8") == edited
    assert list((root / PREFIX).rglob("pswd_gateway/__pycache__/cli.cpython-311.pyc"))

    (root / "var/lib/pswd-gateway/journal").write_text("state\n", encoding="utf-8")
    run("dpkg", f"--root={root}", "--force-script-chrootless", "--purge", PACKAGE)
    left = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.is_relative_to(root / "var/lib/dpkg") and not p.is_relative_to(root / "etc")
    )
    assert left == ["var", "var/lib"], left
    assert not (root / "etc/pswd-gateway").exists()
    assert "pswd-gateway:" in (root / "etc/passwd").read_text(encoding="utf-8")
