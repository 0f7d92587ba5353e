"""`pswd-gateway audit verify`: names the broken entry and why, and catches a chain whose newest
entries were deleted, against the published anchor."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from pswd_gateway.cli import app
from pswd_gateway.journal import AuditEntry, Journal, anchor_path


def setup(tmp_path: Path, entries: int) -> tuple[Path, Journal]:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[storage]\nstate_dir = "{tmp_path / "state"}"\n')
    (tmp_path / "state").mkdir()
    journal = Journal(tmp_path / "state" / "pswd.db")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(entries):
        journal.audit(AuditEntry("op", "operator", "set limit", "site", "accepted", {"i": i}, at))
    return config, journal


def verify(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    return result.exit_code, result.output


def test_an_intact_chain_holds_its_anchor(tmp_path: Path) -> None:
    config, journal = setup(tmp_path, 3)
    anchor_path(journal.path).write_text(journal.audit_head().dumps())
    journal.close()
    code, out = verify(config)
    assert code == 0, out
    assert "OK: 3 audit entries, chain intact, holds the anchor's entry 3" in out


def test_a_truncated_chain_fails_against_its_anchor(tmp_path: Path) -> None:
    config, journal = setup(tmp_path, 4)
    anchor_path(journal.path).write_text(journal.audit_head().dumps())
    journal._db.execute("DELETE FROM audit WHERE id = 4")
    journal._db.execute("UPDATE sqlite_sequence SET seq = 3 WHERE name = 'audit'")
    journal.close()
    code, out = verify(config)
    assert code == 1
    assert "broken at entry 4 (after 3 good entries)" in out
    assert "truncated or rewritten" in out


def test_an_unreadable_entry_is_named(tmp_path: Path) -> None:
    config, journal = setup(tmp_path, 2)
    journal._db.execute("UPDATE audit SET detail = 'nope' WHERE id = 1")
    journal.close()
    code, out = verify(config)
    assert code == 1
    assert "entry 1 cannot be read" in out
    assert "Traceback" not in out
