"""The SQLite journal: atomic commits, migrations, pagination, events and the audit chain."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pswd_gateway.domain.workloads import Action, Announcement, Workload, WorkloadState
from pswd_gateway.journal import (
    MIGRATIONS,
    AsyncJournal,
    AuditAnchor,
    AuditAnchorWriter,
    AuditEntry,
    EventRow,
    IdempotencyRecord,
    Journal,
    JournalError,
    JournalRetention,
    RetentionPolicy,
    Transition,
    anchor_path,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ANNOUNCEMENT = Announcement.model_validate(
    {
        "workload_type": "ai_training",
        "power_profile": {
            "peak_power_mw": 200,
            "ramp_rate_mw_per_sec": 50,
            "duration_estimate_sec": 3600,
        },
        "timing_constraints": {
            "earliest_start_time": "2026-11-25T14:00:00Z",
            "deadline": "2026-11-25T20:00:00Z",
        },
    }
)


def workload(i: int, state: WorkloadState = WorkloadState.SCHEDULED) -> Workload:
    return Workload(
        id=f"wl_{i:04d}",
        owner="alice" if i % 2 else "bob",
        state=state,
        announcement=ANNOUNCEMENT,
        created_at=T0 + timedelta(seconds=i),
        updated_at=T0 + timedelta(seconds=i),
    )


def audit(action: str = "workload.announce", outcome: str = "accepted") -> AuditEntry:
    return AuditEntry("alice", "submitter", action, None, outcome, {"n": 1}, T0)  # type: ignore[arg-type]


def insert(j: Journal, i: int, key: str | None = None) -> list[EventRow]:
    w = workload(i)
    return j.insert_workload(
        w,
        [Transition(w.id, None, WorkloadState.ANNOUNCED, None, None, "alice", T0)],
        [EventRow("workload.announced", w.id, T0, {"i": i})],
        audit(),
        IdempotencyRecord("alice", key, "h", w.id) if key else None,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "state" / "pswd.db")
    yield j  # type: ignore[misc]
    j.close()


def test_opens_in_wal_mode_at_the_latest_schema(journal: Journal) -> None:
    mode = journal._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert journal.schema_version == len(MIGRATIONS)


def test_a_newer_schema_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "pswd.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(JournalError, match="newer than this gateway knows"):
        Journal(path)


def test_inserted_workloads_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "pswd.db"
    j = Journal(path)
    events = insert(j, 1, key="k1")
    j.close()
    j = Journal(path)
    got = j.get_workload("wl_0001")
    assert got is not None
    assert got.announcement == ANNOUNCEMENT
    assert got.history[0].state is WorkloadState.ANNOUNCED
    assert j.events_after(0)[0].id == events[0].id
    assert j.find_idempotency("alice", "k1") == IdempotencyRecord("alice", "k1", "h", "wl_0001")
    j.close()


def test_a_failed_commit_leaves_nothing_behind(journal: Journal) -> None:
    insert(journal, 1, key="k")
    with pytest.raises(sqlite3.IntegrityError):
        insert(journal, 2, key="k")  # same idempotency key: the whole transaction rolls back
    assert journal.get_workload("wl_0002") is None
    assert journal.count_workloads() == 1
    assert journal.verify_audit() == (1, None)


def test_updates_record_the_transition(journal: Journal) -> None:
    insert(journal, 1)
    w = workload(1)
    journal.update_workload(
        w.id,
        WorkloadState.RUNNING,
        None,
        T0 + timedelta(hours=2),
        [
            Transition(
                w.id,
                WorkloadState.SCHEDULED,
                WorkloadState.RUNNING,
                Action.START,
                "go",
                "alice",
                T0,
            )
        ],
        [],
        audit("workload.start"),
    )
    got = journal.get_workload(w.id)
    assert got is not None
    assert got.state is WorkloadState.RUNNING
    assert [h.action for h in got.history] == [None, Action.START]
    with pytest.raises(JournalError, match="no workload"):
        journal.update_workload("wl_nope", WorkloadState.RUNNING, None, T0, [], [], None)


def test_pages_follow_announcement_order_with_filters(journal: Journal) -> None:
    for i in range(1, 8):
        insert(journal, i)
    page, cursor = journal.list_workloads(limit=3)
    assert [w.id for w in page] == ["wl_0001", "wl_0002", "wl_0003"]
    assert cursor is not None
    page, cursor = journal.list_workloads(limit=3, after_seq=cursor)
    assert [w.id for w in page] == ["wl_0004", "wl_0005", "wl_0006"]
    page, cursor = journal.list_workloads(limit=3, after_seq=cursor or 0)
    assert [w.id for w in page] == ["wl_0007"]
    assert cursor is None
    mine, _ = journal.list_workloads(owner="bob")
    assert {w.owner for w in mine} == {"bob"}
    none, _ = journal.list_workloads(states=[WorkloadState.RUNNING])
    assert none == []


def test_the_audit_chain_detects_an_edited_entry(journal: Journal) -> None:
    for i in range(3):
        insert(journal, i)
    journal.audit(audit("workload.cancel", "refused"))
    assert journal.verify_audit() == (4, None)
    journal._db.execute("UPDATE audit SET outcome = 'accepted' WHERE id = 4")
    assert journal.verify_audit() == (3, 4)


def test_an_unreadable_entry_is_named_not_a_traceback(journal: Journal) -> None:
    """An entry whose ``detail`` is no longer JSON breaks the chain there, with the reason."""
    for outcome in ("accepted", "refused", "accepted"):
        journal.audit(audit("limit", outcome))
    journal._db.execute("UPDATE audit SET detail = '{not json' WHERE id = 2")
    check = journal.check_audit()
    assert (check.count, check.broken_at) == (1, 2)
    assert check.reason is not None
    assert "entry 2 cannot be read" in check.reason


def test_deleting_the_newest_entries_is_caught(journal: Journal) -> None:
    """SQLite remembers the highest id it handed out: a chain that ends before it was cut."""
    for _ in range(4):
        journal.audit(audit("limit", "accepted"))
    journal._db.execute("DELETE FROM audit WHERE id >= 3")
    check = journal.check_audit()
    assert not check.ok
    assert check.count == 2
    assert check.reason is not None
    assert "entries up to 4 were written" in check.reason


def test_a_published_anchor_must_still_be_in_the_chain(journal: Journal) -> None:
    """Even with the id counter reset too, the published head catches the truncation."""
    for _ in range(4):
        journal.audit(audit("limit", "accepted"))
    head = journal.audit_head()
    assert head.entry == 4
    assert journal.check_audit(head).ok
    assert AuditAnchor.loads(head.dumps()) == head
    journal._db.execute("DELETE FROM audit WHERE id >= 3")
    journal._db.execute("UPDATE sqlite_sequence SET seq = 2 WHERE name = 'audit'")
    assert journal.check_audit().ok  # nothing inside the journal shows it any more
    check = journal.check_audit(head)
    assert (check.ok, check.broken_at) == (False, 4)
    assert check.reason is not None
    assert "is missing" in check.reason
    with pytest.raises(ValueError, match="audit anchor"):
        AuditAnchor.loads('{"entry": "4"}')


async def test_the_anchor_writer_publishes_the_head_when_it_moves(tmp_path: Path) -> None:
    journal = AsyncJournal.open(tmp_path / "pswd.db")
    writer = AuditAnchorWriter(journal, anchor_path(journal.sync.path), every_s=3600)
    try:
        await writer.start()
        assert AuditAnchor.loads((tmp_path / "audit.anchor").read_text()).entry == 0
        await journal.call(journal.sync.audit, audit("limit", "accepted"))
        await writer.stop()  # publishes the last entries
        published = AuditAnchor.loads((tmp_path / "audit.anchor").read_text())
        assert published == await journal.call(journal.sync.audit_head)
        assert published.entry == 1
    finally:
        await journal.close()


def test_setpoint_writes_and_site_notices_are_kept(journal: Journal) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    n = journal.record_setpoints(
        [
            (at, "bess", "power_setpoint", 12.5e6, True, None, 0.002),
            (at + 0.1, "bess", "power_setpoint", 0.0, False, "timed out after 50 ms", 0.05),
        ]
    )
    assert n == 2
    latest = journal.setpoints(limit=5)
    assert [r["value"] for r in latest] == [0.0, 12.5e6]
    assert latest[0]["ok"] == 0
    assert latest[0]["error"] == "timed out after 50 ms"
    (event,) = journal.append_events(
        [EventRow("power_request", None, datetime(2026, 1, 1, tzinfo=UTC), {"shortfall_mw": 5.0})]
    )
    assert event.id > 0


def finish(j: Journal, i: int, at: datetime) -> None:
    """Workload ``i`` completed at ``at``."""
    j.update_workload(
        f"wl_{i:04d}",
        WorkloadState.COMPLETED,
        None,
        at,
        [Transition(f"wl_{i:04d}", WorkloadState.RUNNING, WorkloadState.COMPLETED, None, None,
                    "alice", at)],
        [EventRow("workload.completed", f"wl_{i:04d}", at, {})],
        audit("workload.complete"),
    )  # fmt: skip


def count(j: Journal, table: str) -> int:
    return int(j._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_retention_removes_old_setpoints_and_finished_workloads_never_the_audit(
    journal: Journal,
) -> None:
    """Setpoint writes older than ``setpoint_days`` go; a workload finished longer ago than
    ``workload_days`` goes with its transitions, events and idempotency key, and so do the
    site's own events as old; a recent or unfinished workload stays; the audit chain is whole
    and verifies."""
    now = T0 + timedelta(days=400)
    old, recent = (now - timedelta(days=40)).timestamp(), (now - timedelta(hours=1)).timestamp()
    journal.record_setpoints(
        [(old + k, "bess", "power_setpoint", float(k), True, None, 0.001) for k in range(10)]
        + [(recent, "bess", "power_setpoint", 1.0, True, None, 0.001)]
    )
    for i in (1, 2, 3):
        insert(journal, i, key=f"k{i}")
    finish(journal, 1, T0)  # finished 400 days ago
    finish(journal, 2, now - timedelta(days=10))  # finished recently
    journal.append_events([EventRow("power_request", None, T0, {}), EventRow("power_request",
                           None, now, {})])  # fmt: skip
    audits = count(journal, "audit")
    policy = RetentionPolicy(setpoint_full_days=2, setpoint_days=30, workload_days=365)
    removed = journal.prune(now, policy, limit=1000)
    assert removed == {"setpoints": 10, "events": 3, "transitions": 2, "workloads": 1}
    assert journal.get_workload("wl_0001") is None
    assert journal.get_workload("wl_0002") is not None  # finished 10 days ago
    assert journal.get_workload("wl_0003") is not None  # never finished
    assert journal.find_idempotency("alice", "k1") is None
    assert journal.find_idempotency("alice", "k3") is not None
    assert count(journal, "setpoints") == 1
    assert count(journal, "audit") == audits
    assert journal.check_audit().ok
    assert journal.prune(now, policy, limit=1000) == dict.fromkeys(removed, 0)


def test_retention_works_in_batches(journal: Journal) -> None:
    """At most ``limit`` rows a table per call: other journal calls run between them."""
    now = T0 + timedelta(days=100)
    old = T0.timestamp()
    journal.record_setpoints(
        [(old + k, "bess", "power_setpoint", 0.0, True, None, 0.0) for k in range(25)]
    )
    policy = RetentionPolicy()
    assert [journal.prune(now, policy, limit=10)["setpoints"] for _ in range(4)] == [10, 10, 5, 0]


def test_downsampling_keeps_the_last_write_of_each_minute_and_every_failure(
    journal: Journal,
) -> None:
    start = T0.timestamp()
    rows = [(start + 2.0 * k, "bess", "power_setpoint", float(k), True, None, 0.0)
            for k in range(90)]  # fmt: skip  # three minutes, 30 writes each
    rows += [(start + 61.0, "bess", "power_setpoint", -1.0, False, "timed out", 0.05)]
    rows += [(start + 5.0, "thermal", "chw_supply_setpoint", 18.0, True, None, 0.0)]
    journal.record_setpoints(rows)
    removed = journal.downsample_setpoints(T0, T0 + timedelta(minutes=3))
    assert removed == 90 - 3
    kept = journal.setpoints(limit=100)
    assert sorted((r["point"], r["value"]) for r in kept) == [
        ("chw_supply_setpoint", 18.0),
        ("power_setpoint", -1.0),  # the failure
        ("power_setpoint", 29.0),
        ("power_setpoint", 59.0),
        ("power_setpoint", 89.0),
    ]


async def test_the_retention_component_prunes_at_start_and_counts_by_table(
    tmp_path: Path,
) -> None:
    """At start the component downsamples and prunes to the policy, logs and counts it."""
    journal = AsyncJournal.open(tmp_path / "pswd.db")
    now = T0 + timedelta(days=10)
    base = (now - timedelta(days=5)).timestamp()
    journal.sync.record_setpoints(
        [(base + 2.0 * k, "bess", "power_setpoint", float(k), True, None, 0.0) for k in range(60)]
        + [(T0.timestamp(), "bess", "power_setpoint", 0.0, True, None, 0.0)]
    )
    retention = JournalRetention(
        journal, RetentionPolicy(setpoint_full_days=1, setpoint_days=7), clock=lambda: now
    )
    removed = await retention.prune()
    assert removed == {"setpoints": 1 + 58}  # the 10-day-old write; 60 writes in 2 minutes → 2
    assert retention.pruned_total["setpoints"] == 59
    assert await retention.prune() == {}
    assert journal.sync.size_bytes() > 0
    await journal.close()


def test_growth_per_day_and_the_bound_retention_sets(journal: Journal) -> None:
    """What `bench soak` reports: rows and bytes per day at the measured rate, and the size the
    setpoint history stays under once retention has caught up."""
    from pswd_gateway.journal import RetentionPolicy, journal_growth  # noqa: PLC0415

    before = journal.footprint()
    at = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    journal.record_setpoints(
        [(at + i * 0.02, "bess", "power_setpoint", float(i), True, None, 0.002) for i in range(500)]
        + [(at + i * 0.2, "chiller", "chw_setpoint", 7.0, True, None, 0.01) for i in range(50)]
    )
    after = journal.footprint()
    assert after.rows["setpoints"] - before.rows["setpoints"] == 550
    assert after.setpoint_series == 2
    assert after.table_bytes["setpoints"] > 0
    growth = journal_growth(before, after, 10.0, RetentionPolicy(2.0, 30.0, 365.0))
    assert growth.rows_per_day["setpoints"] == pytest.approx(550 * 8640)
    assert growth.setpoint_row_bytes is not None
    whole = 550 * 8640 * 2.0
    minutes = 2 * 1440 * 28.0
    assert growth.bounded_setpoint_bytes == pytest.approx(
        (whole + minutes) * growth.setpoint_row_bytes
    )
    assert growth.audit_bytes_per_year == 0.0


def _append_then_fail(journal: Journal, entry: AuditEntry) -> None:
    with journal._tx():
        journal._append_audit(entry)
        raise RuntimeError  # rolled back: neither kept nor logged


def test_each_committed_audit_entry_is_also_a_log_line(journal: Journal) -> None:
    import structlog  # noqa: PLC0415

    refused = AuditEntry(
        "api:10.9.9.9", "none", "api connection", None, "refused",
        {"reason": "no conduit", "zone": "enterprise", "conduit": "ml"}, T0,
    )  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        journal.audit(refused)
        with pytest.raises(RuntimeError):
            _append_then_fail(journal, refused)
    lines = [e for e in logs if e["event"] == "audit"]
    assert len(lines) == 1
    assert lines[0]["actor"] == "api:10.9.9.9"
    assert lines[0]["outcome"] == "refused"
    assert (lines[0]["zone"], lines[0]["conduit"]) == ("enterprise", "ml")
    assert journal.check_audit().ok
    assert journal.check_audit().count == 1
