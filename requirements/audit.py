"""`make audit`: a lock against PyPI's advisory data (pip-audit), less the advisories that
requirements/advisories.toml lists as known and contained at the locked version.

    python requirements/audit.py LOCK ADVISORIES [pip-audit options, e.g. -s osv]

Exit status: 0 no advisory but known ones; 1 an advisory that is not known; 2 advisories.toml
is incomplete or disagrees with the lock (an entry for a package or version that is not
locked); 3 pip-audit could not audit every package, or none (not audited is not clean).
"""

# ruff: noqa: INP001 - a script that make runs, not a module of a package

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
FIELDS = ("id", "package", "version", "reason")
AUDIT_TIMEOUT_S = 900


@dataclass(frozen=True)
class Advisory:
    """One entry of advisories.toml."""

    id: str
    package: str
    version: str
    reason: str


@dataclass(frozen=True)
class Finding:
    """One advisory pip-audit reported for a locked package."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]


def canonical(name: str) -> str:
    """A distribution's name as PyPI compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, str]:
    """Every package of a pip-compile lock with its pinned version."""
    pins = (PIN.match(line) for line in lock.read_text().splitlines())
    return {canonical(m[1]): m[2] for m in pins if m}


def known(path: Path) -> list[Advisory]:
    """The advisories of advisories.toml; a missing or empty field is an error."""
    entries: list[dict[str, Any]] = tomllib.loads(path.read_text()).get("advisory", [])
    out = []
    for number, entry in enumerate(entries, 1):
        missing = [f for f in FIELDS if not str(entry.get(f, "")).strip()]
        if missing:
            sys.stderr.write(f"audit: {path}: advisory {number} has no {', '.join(missing)}\n")
            raise SystemExit(2)
        out.append(
            Advisory(
                str(entry["id"]),
                canonical(str(entry["package"])),
                str(entry["version"]),
                " ".join(str(entry["reason"]).split()),
            )
        )
    return out


def pip_audit(lock: Path, extra: list[str]) -> dict[str, Any] | None:
    """pip-audit's JSON report of the lock, taken as pinned (no resolution, hashes required);
    None when it gave none (what it said is passed on)."""
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--requirement",
        str(lock),
        "--require-hashes",
        "--disable-pip",
        "--format",
        "json",
        "--aliases",
        "on",
        "--progress-spinner",
        "off",
        *extra,
    ]
    result = subprocess.run(  # noqa: S603 - this interpreter's pip-audit, arguments from make
        command, capture_output=True, text=True, timeout=AUDIT_TIMEOUT_S, check=False
    )
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(result.stderr)
        return None
    return report


def findings(report: dict[str, Any]) -> list[Finding]:
    return [
        Finding(
            canonical(dep["name"]),
            dep["version"],
            vuln["id"],
            tuple(vuln.get("aliases", ())),
            tuple(vuln.get("fix_versions", ())),
        )
        for dep in report["dependencies"]
        for vuln in dep.get("vulns", ())
    ]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write(__doc__ or "")
        return 2
    lock, advisories_file, extra = Path(argv[0]), Path(argv[1]), argv[2:]
    pins = locked(lock)
    advisories = known(advisories_file)
    stale = [a for a in advisories if pins.get(a.package) != a.version]

    report = pip_audit(lock, extra)
    if report is None:
        say("audit: failed: pip-audit gave no report (its error is above): nothing was audited")
        return 3
    skipped = [d for d in report["dependencies"] if "skip_reason" in d]
    found = findings(report)
    reported = {(f.package, f.version, name) for f in found for name in (f.id, *f.aliases)}
    unknown = [
        f
        for f in found
        if not any(
            (a.package, a.version) == (f.package, f.version) and a.id in {f.id, *f.aliases}
            for a in advisories
        )
    ]

    for f in unknown:
        aliases = f" ({', '.join(f.aliases)})" if f.aliases else ""
        fix = ", ".join(f.fixed_in) or "none yet"
        say(f"FINDING      {f.package} {f.version}: {f.id}{aliases}, fixed in {fix}")
    for d in skipped:
        say(f"NOT AUDITED  {d['name']}: {d['skip_reason']}")
    for a in advisories:
        now = pins.get(a.package)
        if a in stale:
            where = f"locked at {now}" if now else "no longer locked"
            say(
                f"STALE        {a.package} {a.version}: {a.id}, {where}: judge it again, "
                "or remove it when the new version has the fix"
            )
            continue
        seen = "reported" if (a.package, a.version, a.id) in reported else "not in pip-audit's data"
        say(f"known        {a.package} {a.version}: {a.id} ({seen}), contained:")
        say(textwrap.fill(a.reason, width=100, initial_indent=" " * 13, subsequent_indent=" " * 13))

    audited = len(report["dependencies"]) - len(skipped)
    say(
        f"audit: {audited} of {len(pins)} packages of {lock} audited; {len(found)} advisories "
        f"reported, {len(unknown)} not known; {len(advisories)} known and contained"
    )
    if unknown:
        say(
            "audit: failed: upgrade past each FINDING, or judge it and list it in "
            + str(advisories_file)
        )
        return 1
    if stale:
        say(f"audit: failed: {advisories_file} has entries the lock no longer matches")
        return 2
    if skipped:
        say("audit: failed: not audited is not clean (no advisory data for those packages)")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
