"""Make a virtual environment built at STAGED belong to FINAL, its path on the target machine.

    python3 packaging/relocate_venv.py STAGED FINAL

A venv names its own path in a few text files only: pip's console-script shebangs (bin/*), the
activate scripts and pyvenv.cfg's `command =` line. Those are rewritten, and the RECORD lines of
the rewritten files get their new hashes and sizes, so that pip's view of the venv stays true.
pip's direct_url.json, which names the wheel file the project came from (a path on the build
machine), goes with its RECORD line. Fails if STAGED is left in any file, text or binary.
`home = /usr/bin` in pyvenv.cfg and the bin/python3.11 symlink already name the target's
interpreter: they need nothing.
"""

# ruff: noqa: INP001 - a build step run as a script, not an importable module
from __future__ import annotations

import base64
import csv
import hashlib
import sys
from pathlib import Path


def record_hash(data: bytes) -> str:
    """A RECORD hash: sha256, urlsafe base64 without padding (PEP 376 / PEP 627)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def rewrite_paths(staged: Path, final: str) -> set[Path]:
    """Replace STAGED (as given, and with symlinks resolved) by FINAL in every text file of the
    venv; the files rewritten."""
    olds = {str(staged).encode(), str(staged.resolve()).encode()}
    new = final.encode()
    rewritten: set[Path] = set()
    for path in sorted(staged.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if not any(old in data for old in olds):
            continue
        if b"\0" in data:
            raise SystemExit(f"relocate_venv: binary {path} names {staged}: cannot relocate")
        for old in olds:
            data = data.replace(old, new)
        path.write_bytes(data)
        rewritten.add(path.resolve())
    return rewritten


def update_records(staged: Path, rewritten: set[Path]) -> None:
    """Refresh the RECORD lines of rewritten files; drop direct_url.json and its line."""
    for record in sorted(staged.glob("lib/python3*/site-packages/*.dist-info/RECORD")):
        site = record.parent.parent
        with record.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        kept: list[list[str]] = []
        for row in rows:
            path = Path(site, row[0]).resolve()
            if row[0].endswith(".dist-info/direct_url.json"):
                path.unlink()
                continue
            if path in rewritten:
                data = path.read_bytes()
                row = [row[0], record_hash(data), str(len(data))]  # noqa: PLW2901
            kept.append(row)
        if kept != rows:
            with record.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows(kept)  # pip writes RECORD with \r\n, as csv does


def main(staged: Path, final: str) -> None:
    if not staged.is_absolute():
        raise SystemExit(f"relocate_venv: {staged} is not an absolute path")
    rewritten = rewrite_paths(staged, final)
    update_records(staged, rewritten)
    print(f"relocate_venv: {len(rewritten)} files now name {final}")  # noqa: T201 - build log


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2])
