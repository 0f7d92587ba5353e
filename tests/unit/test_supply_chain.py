"""The locks agree with pyproject.toml (`make lock` was run after its dependencies changed), every
locked package is pinned exactly with its hashes, the known advisories name what is locked, and
`make audit` passes only known advisories. No network: the locks and files are read as they are.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[2]
REQUIREMENTS = ROOT / "requirements"
RUN_LOCK = REQUIREMENTS / "run.lock"
DEV_LOCK = REQUIREMENTS / "dev.lock"
ADVISORIES = REQUIREMENTS / "advisories.toml"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Locked:
    """One requirement of a lock: the line as pip reads it, continuations joined."""

    requirement: Requirement
    hashes: tuple[str, ...]
    line: str

    @property
    def version(self) -> Version:
        (spec,) = self.requirement.specifier
        return Version(spec.version)


def logical_lines(path: Path) -> Iterator[str]:
    """The lock's lines with backslash continuations joined, comments and blanks left out."""
    text = re.sub(r"\\\n", " ", path.read_text())
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            yield line


def lock(path: Path) -> dict[str, Locked]:
    entries: dict[str, Locked] = {}
    for line in logical_lines(path):
        assert not line.startswith("-"), f"{path.name}: an option line, not a package: {line}"
        requirement = Requirement(line.split(" --hash", 1)[0])
        name = canonicalize_name(requirement.name)
        assert name not in entries, f"{path.name}: {name} is locked twice"
        entries[name] = Locked(requirement, tuple(HASH.findall(line)), line)
    return entries


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(group: str) -> list[Requirement]:
    """pyproject's runtime dependencies, or those of an optional group (`dev`)."""
    project = pyproject()["project"]
    names = project["dependencies"] if group == "run" else project["optional-dependencies"][group]
    return [Requirement(r) for r in names]


LOCKS = {"run": (RUN_LOCK, ("run",)), "dev": (DEV_LOCK, ("run", "dev"))}


@pytest.mark.parametrize("which", sorted(LOCKS))
def test_every_dependency_of_pyproject_is_locked_within_its_range(which: str) -> None:
    path, groups = LOCKS[which]
    locked = lock(path)
    problems = []
    for requirement in (r for g in groups for r in declared(g)):
        entry = locked.get(canonicalize_name(requirement.name))
        if entry is None:
            problems.append(f"{requirement} is not in {path.name}")
        elif not requirement.specifier.contains(entry.version, prereleases=True):
            problems.append(f"{requirement} but {path.name} pins {entry.version}")
    assert not problems, "the lock is behind pyproject.toml: run `make lock`\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize("path", [RUN_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_locked_package_is_pinned_exactly_with_its_hashes(path: Path) -> None:
    locked = lock(path)
    assert locked, f"{path.name} locks nothing"
    for name, entry in locked.items():
        specs = list(entry.requirement.specifier)
        assert len(specs) == 1, f"{path.name}: {name} is not pinned to one version"
        assert specs[0].operator == "==", f"{path.name}: {name} is {specs[0]}, not pinned with =="
        assert "*" not in specs[0].version, f"{path.name}: {name} =={specs[0].version} is a range"
        assert entry.hashes, f"{path.name}: {name} has no --hash (pip --require-hashes refuses it)"
        assert not entry.requirement.extras, f"{path.name}: {name} carries extras"


def test_the_run_lock_pins_what_the_dev_lock_pins() -> None:
    """`make test` installs the dev lock and counts the demo's install done: same versions."""
    run, dev = lock(RUN_LOCK), lock(DEV_LOCK)
    missing = sorted(set(run) - set(dev))
    assert not missing, f"in run.lock but not dev.lock: {missing}"
    differ = {n: (str(run[n].version), str(dev[n].version)) for n in run}
    differ = {n: v for n, v in differ.items() if v[0] != v[1]}
    assert not differ, f"run.lock and dev.lock pin differently (run, dev): {differ}"


def test_the_locks_hold_the_dependencies_not_the_gateway() -> None:
    """The gateway is installed editable from the checkout; a locked copy would shadow it."""
    project = canonicalize_name(pyproject()["project"]["name"])
    for path in (RUN_LOCK, DEV_LOCK):
        assert project not in lock(path), f"{path.name} locks {project} itself"


def test_each_known_advisory_names_a_package_at_its_locked_version() -> None:
    """An entry judged at one version is judged again when the lock moves the package."""
    locked = lock(DEV_LOCK)
    entries = tomllib.loads(ADVISORIES.read_text())["advisory"]
    assert entries, "advisories.toml lists none (the libiec61850 one is expected)"
    for entry in entries:
        for field in ("id", "package", "version", "reason"):
            assert str(entry.get(field, "")).strip(), f"{entry.get('id')}: no {field}"
        at = locked.get(canonicalize_name(entry["package"]))
        assert at is not None, f"{entry['id']}: {entry['package']} is not locked: remove it"
        assert str(at.version) == entry["version"], (
            f"{entry['id']}: judged at {entry['package']} {entry['version']}, locked at "
            f"{at.version}: judge it again, or remove it when the new version has the fix"
        )


# --- make audit (requirements/audit.py), with pip-audit's report made up ----------------------


@pytest.fixture
def audit(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_script", REQUIREMENTS / "audit.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "audit_script", module)
    spec.loader.exec_module(module)
    return module


def write(tmp_path: Path, advisories: str) -> tuple[Path, Path]:
    lock_file = tmp_path / "dev.lock"
    lock_file.write_text(
        "libiec-wrapper==1.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
        "requests==2.0 \\\n    --hash=sha256:" + "b" * 64 + "\n"
    )
    known = tmp_path / "advisories.toml"
    known.write_text(advisories)
    return lock_file, known


KNOWN = """
[[advisory]]
id = "GHSA-known"
package = "libiec-wrapper"
version = "1.0"
reason = "contained by the zone policy"
"""


def report(*vulns: tuple[str, str, str], skipped: tuple[str, ...] = ()) -> dict[str, Any]:
    deps: list[dict[str, Any]] = [
        {
            "name": name,
            "version": version,
            "vulns": [{"id": vid, "aliases": [], "fix_versions": []}],
        }
        for name, version, vid in vulns
    ]
    deps += [{"name": n, "skip_reason": "Dependency not found on PyPI"} for n in skipped]
    return {"dependencies": deps, "fixes": []}


def run_audit(
    audit: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    files: tuple[Path, Path],
    fake: dict[str, Any] | None,
) -> int:
    monkeypatch.setattr(audit, "pip_audit", lambda _lock, _extra: fake)
    code: int = audit.main([str(files[0]), str(files[1])])
    return code


def test_audit_passes_an_advisory_known_at_the_locked_version(
    audit: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = report(("libiec-wrapper", "1.0", "GHSA-known"))
    assert run_audit(audit, monkeypatch, write(tmp_path, KNOWN), fake) == 0
    out = capsys.readouterr().out
    assert "known        libiec-wrapper 1.0: GHSA-known (reported), contained:" in out
    assert "contained by the zone policy" in out


def test_audit_fails_on_an_advisory_that_is_not_known(
    audit: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = report(("libiec-wrapper", "1.0", "GHSA-known"), ("requests", "2.0", "GHSA-new"))
    assert run_audit(audit, monkeypatch, write(tmp_path, KNOWN), fake) == 1
    assert "FINDING      requests 2.0: GHSA-new, fixed in none yet" in capsys.readouterr().out


def test_audit_fails_on_an_entry_judged_at_another_version(
    audit: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = write(tmp_path, KNOWN.replace('version = "1.0"', 'version = "0.9"'))
    assert run_audit(audit, monkeypatch, files, report()) == 2
    assert "STALE        libiec-wrapper 0.9: GHSA-known, locked at 1.0" in capsys.readouterr().out


def test_audit_fails_when_a_package_was_not_audited(
    audit: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = write(tmp_path, KNOWN)
    assert run_audit(audit, monkeypatch, files, report(skipped=("requests",))) == 3
    assert "NOT AUDITED  requests: Dependency not found on PyPI" in capsys.readouterr().out
    assert run_audit(audit, monkeypatch, files, None) == 3
    assert "pip-audit gave no report" in capsys.readouterr().out
