"""The journal: SQLite in WAL mode holding workloads, their transitions, events and the audit chain.

Everything the gateway acknowledges is committed here first. One connection, used from one
worker thread (:class:`AsyncJournal` hands calls to it), so writes are serialised and the audit
hash chain has a single order. Schema changes are numbered migrations tracked in
``PRAGMA user_version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from pswd_gateway.domain.grid_signals import GridSignal
from pswd_gateway.domain.workloads import (
    TERMINAL_STATES,
    Action,
    Allocation,
    Announcement,
    StateChange,
    Workload,
    WorkloadState,
)
from pswd_gateway.errors import PswdError
from pswd_gateway.logging import get_logger
from pswd_gateway.tasks import cancel_and_wait

__all__ = [
    "AsyncJournal",
    "AuditAnchor",
    "AuditAnchorWriter",
    "AuditCheck",
    "AuditEntry",
    "EventRow",
    "IdempotencyRecord",
    "Journal",
    "JournalError",
    "JournalFootprint",
    "JournalFullError",
    "JournalGrowth",
    "JournalRetention",
    "RetentionPolicy",
    "SetpointRecorder",
    "Transition",
    "anchor_path",
    "format_ts",
    "journal_growth",
    "parse_ts",
]

log = get_logger("journal")

T = TypeVar("T")

GENESIS_HASH = "0" * 64

MIGRATIONS: tuple[str, ...] = (
    # 1: workloads, transitions, events, idempotency keys, audit chain
    """
    CREATE TABLE workloads (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        state TEXT NOT NULL,
        announcement TEXT NOT NULL,
        allocation TEXT,
        earliest_start TEXT NOT NULL,
        deadline TEXT NOT NULL,
        scheduled_start TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX workloads_state_seq ON workloads (state, seq);
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workload_id TEXT NOT NULL REFERENCES workloads (id),
        from_state TEXT,
        to_state TEXT NOT NULL,
        action TEXT,
        reason TEXT,
        actor TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX transitions_workload ON transitions (workload_id, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        workload_id TEXT,
        at TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE idempotency (
        owner TEXT NOT NULL,
        key TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        workload_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (owner, key)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        role TEXT,
        action TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE setpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        device TEXT NOT NULL,
        point TEXT NOT NULL,
        value REAL NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT,
        latency_s REAL NOT NULL
    );
    CREATE INDEX setpoints_at ON setpoints (at);
    """,
    # 3: grid signals (domain.grid_signals), whatever door they came through
    """
    CREATE TABLE grid_signals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        issuer TEXT NOT NULL,
        received_at TEXT NOT NULL,
        window_end TEXT,
        withdrawn_at TEXT,
        signal TEXT NOT NULL
    );
    CREATE INDEX grid_signals_open ON grid_signals (withdrawn_at, window_end);
    """,
)


class JournalError(PswdError):
    """The journal cannot be opened or written; ``path`` names the database."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"journal {path}: {message}")


class JournalFullError(JournalError):
    """The disk holding the journal (or the journal's page limit) is full: nothing of the
    write was kept; already committed records are intact."""


def format_ts(ts: datetime) -> str:
    """UTC, microseconds, ``Z``: sorts as text in time order."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


SetpointRow = tuple[float, str, str, float, bool, str | None, float]
"""``(at POSIX s, device, point, value, ok, error, latency_s)``."""


@dataclass(frozen=True)
class EventRow:
    """One entry of the event stream; ``id`` is assigned on commit."""

    type: str
    workload_id: str | None
    at: datetime
    data: dict[str, Any]
    id: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "workload_id": self.workload_id,
            "at": format_ts(self.at),
            "data": self.data,
        }


@dataclass(frozen=True)
class Transition:
    workload_id: str
    from_state: WorkloadState | None
    to_state: WorkloadState
    action: Action | None
    reason: str | None
    actor: str
    at: datetime


@dataclass(frozen=True)
class AuditAnchor:
    """A published head of the audit chain: entry id and its hash."""

    entry: int
    hash: str

    def dumps(self) -> str:
        return json.dumps({"entry": self.entry, "hash": self.hash})

    @classmethod
    def loads(cls, text: str) -> AuditAnchor:
        """An anchor from its JSON; ``ValueError`` says what is wrong with it."""
        data = json.loads(text)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("entry"), int)
            or not (isinstance(data.get("hash"), str))
        ):
            msg = 'an audit anchor is {"entry": <int>, "hash": <hex>}'
            raise ValueError(msg)  # noqa: TRY004 -- a malformed file: a value problem
        return cls(data["entry"], data["hash"])


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """What walking the audit chain found."""

    count: int
    """Entries checked and good."""
    broken_at: int | None = None
    reason: str | None = None
    head_id: int = 0
    head_hash: str = GENESIS_HASH

    @property
    def ok(self) -> bool:
        return self.broken_at is None


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit chain: who did what to which target, and how it ended."""

    actor: str
    role: str | None
    action: str
    target: str | None
    outcome: Literal["accepted", "refused", "failed"]
    detail: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class IdempotencyRecord:
    owner: str
    key: str
    request_sha256: str
    workload_id: str


def _audit_hash(prev_hash: str, entry: AuditEntry) -> str:
    body = json.dumps(
        {
            "at": format_ts(entry.at),
            "actor": entry.actor,
            "role": entry.role,
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome,
            "detail": entry.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class Journal:
    """Synchronous journal on one SQLite connection. Use it from one thread at a time."""

    def __init__(self, path: Path, synchronous: Literal["full", "normal"] = "full") -> None:
        self.path = path
        self._unlogged: list[tuple[AuditEntry, str]] = []
        """Audit entries of the open transaction, logged when it commits."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(path, str(exc)) from exc
        self._last_hash = self._tail_hash()
        self.audit_counts: Counter[str] = Counter()
        """Audit entries appended since start, by outcome (metrics)."""

    # ---- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise JournalError(
                self.path,
                f"schema version {version} is newer than this gateway knows "
                f"({len(MIGRATIONS)}); upgrade the gateway or restore a matching backup",
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._tx():
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")
            log.info("journal_migrated", path=str(self.path), version=number)

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._resync, self._committed)

    def _resync(self) -> None:
        """After a rollback the audit tail is whatever the database holds."""
        self._last_hash = self._tail_hash()
        self._unlogged.clear()

    def _committed(self) -> None:
        """Each audit entry committed is also a log line (journald, syslog), ``audit``."""
        for entry, digest in self._unlogged:
            log.info(
                "audit",
                actor=entry.actor,
                role=entry.role,
                action=entry.action,
                target=entry.target,
                outcome=entry.outcome,
                zone=entry.detail.get("zone"),
                conduit=entry.detail.get("conduit"),
                reason=entry.detail.get("reason"),
                hash=digest[:16],
            )
        self._unlogged.clear()

    # ---- writes ------------------------------------------------------------------------------

    def insert_workload(
        self,
        workload: Workload,
        transitions: Sequence[Transition],
        events: Sequence[EventRow],
        audit: AuditEntry,
        idempotency: IdempotencyRecord | None = None,
    ) -> list[EventRow]:
        """Commit a new workload with its first transitions, events and audit line atomically."""
        with self._tx():
            self._db.execute(
                "INSERT INTO workloads (id, owner, state, announcement, allocation, "
                "earliest_start, deadline, scheduled_start, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    workload.id,
                    workload.owner,
                    workload.state.value,
                    workload.announcement.model_dump_json(),
                    _allocation_json(workload.allocation),
                    format_ts(workload.announcement.earliest_start),
                    format_ts(workload.announcement.timing_constraints.deadline),
                    _scheduled(workload.allocation),
                    format_ts(workload.created_at),
                    format_ts(workload.updated_at),
                ),
            )
            if idempotency is not None:
                self._db.execute(
                    "INSERT INTO idempotency (owner, key, request_sha256, workload_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        idempotency.owner,
                        idempotency.key,
                        idempotency.request_sha256,
                        idempotency.workload_id,
                        format_ts(workload.created_at),
                    ),
                )
            self._insert_transitions(transitions)
            committed = self._insert_events(events)
            self._append_audit(audit)
        return committed

    def update_workload(
        self,
        workload_id: str,
        state: WorkloadState,
        allocation: Allocation | None,
        updated_at: datetime,
        transitions: Sequence[Transition],
        events: Sequence[EventRow],
        audit: AuditEntry | None,
    ) -> list[EventRow]:
        """Commit a state and/or allocation change with its transitions, events and audit."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE workloads SET state = ?, allocation = ?, scheduled_start = ?, "
                "updated_at = ? WHERE id = ?",
                (
                    state.value,
                    _allocation_json(allocation),
                    _scheduled(allocation),
                    format_ts(updated_at),
                    workload_id,
                ),
            )
            if cur.rowcount != 1:
                raise JournalError(self.path, f"no workload {workload_id!r} to update")
            self._insert_transitions(transitions)
            committed = self._insert_events(events)
            if audit is not None:
                self._append_audit(audit)
        return committed

    def audit(self, entry: AuditEntry) -> None:
        with self._tx():
            self._append_audit(entry)

    def append_events(self, events: Iterable[EventRow]) -> list[EventRow]:
        """Commit events that belong to no transition (site notices); returns them with ids."""
        with self._tx():
            return self._insert_events(events)

    def record_grid_signal(
        self,
        signal: GridSignal,
        withdraws: Sequence[str],
        audit: AuditEntry,
        events: Iterable[EventRow],
    ) -> list[EventRow]:
        """Keep an accepted grid signal, withdraw the ids it supersedes, with its audit line
        and events: one transaction. Returns the events with their ids."""
        with self._tx():
            self._db.execute(
                "INSERT INTO grid_signals (id, kind, source, issuer, received_at, window_end, "
                "signal) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    signal.id,
                    signal.kind.value,
                    signal.source.value,
                    signal.issuer,
                    format_ts(signal.received_at),
                    format_ts(signal.end) if signal.end is not None else None,
                    signal.model_dump_json(),
                ),
            )
            for old in withdraws:
                self._withdraw_signal(old, signal.received_at, signal.issuer)
            self._append_audit(audit)
            return self._insert_events(events)

    def withdraw_grid_signal(
        self, signal_id: str, at: datetime, by: str, audit: AuditEntry, events: Iterable[EventRow]
    ) -> list[EventRow]:
        """Withdraw an open signal, with its audit line and events: one transaction."""
        with self._tx():
            self._withdraw_signal(signal_id, at, by)
            self._append_audit(audit)
            return self._insert_events(events)

    def _withdraw_signal(self, signal_id: str, at: datetime, by: str) -> None:
        row = self._db.execute(
            "SELECT signal FROM grid_signals WHERE id = ? AND withdrawn_at IS NULL", (signal_id,)
        ).fetchone()
        if row is None:
            return
        kept = GridSignal.model_validate_json(row[0])
        done = kept.model_copy(update={"withdrawn_at": at, "withdrawn_by": by})
        self._db.execute(
            "UPDATE grid_signals SET withdrawn_at = ?, signal = ? WHERE id = ?",
            (format_ts(at), done.model_dump_json(), signal_id),
        )

    def record_setpoints(
        self, rows: Iterable[tuple[float, str, str, float, bool, str | None, float]]
    ) -> int:
        """Store setpoint writes ``(at POSIX s, device, point, value, ok, error, latency_s)``."""
        batch = [
            (format_ts(datetime.fromtimestamp(at, UTC)), d, p, v, int(ok), e, lat)
            for at, d, p, v, ok, e, lat in rows
        ]
        with self._tx():
            self._db.executemany(
                "INSERT INTO setpoints (at, device, point, value, ok, error, latency_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
        return len(batch)

    # ---- retention ---------------------------------------------------------------------------

    def prune(self, now: datetime, policy: RetentionPolicy, limit: int) -> dict[str, int]:
        """Remove, at most ``limit`` rows a table, what ``policy`` no longer keeps at ``now``:
        setpoint writes older than ``setpoint_days``; finished workloads ``workload_days``
        after their last change with their transitions, events and idempotency keys (a workload
        row goes once its transitions have), and the site's own events as old. The audit chain
        is never pruned. Rows removed by table."""
        keep = format_ts(now - timedelta(days=policy.setpoint_days))
        done = format_ts(now - timedelta(days=policy.workload_days))
        terminal = sorted(state.value for state in TERMINAL_STATES)
        marks = ", ".join("?" * len(terminal))
        finished = f"SELECT id FROM workloads WHERE state IN ({marks}) AND updated_at < ?"  # noqa: S608 -- placeholders only
        args = (*terminal, done)
        run = self._db.execute
        with self._tx():
            removed = {
                "setpoints": run(
                    "DELETE FROM setpoints WHERE id IN "
                    "(SELECT id FROM setpoints WHERE at < ? ORDER BY at LIMIT ?)",
                    (keep, limit),
                ).rowcount
            }
            for table in ("events", "transitions"):
                removed[table] = run(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "  # noqa: S608 -- table names are literals
                    f"WHERE workload_id IN ({finished}) LIMIT ?)",
                    (*args, limit),
                ).rowcount
            removed["events"] += run(
                "DELETE FROM events WHERE id IN (SELECT id FROM events "
                "WHERE workload_id IS NULL AND at < ? ORDER BY id LIMIT ?)",
                (done, limit),
            ).rowcount  # the site's own events (power requests, guard trips)
            run(f"DELETE FROM idempotency WHERE workload_id IN ({finished})", args)  # noqa: S608 -- placeholders only
            removed["workloads"] = run(
                f"DELETE FROM workloads WHERE id IN ({finished}) AND NOT EXISTS "  # noqa: S608 -- placeholders only
                "(SELECT 1 FROM transitions t WHERE t.workload_id = workloads.id)",
                args,
            ).rowcount
        return removed

    def downsample_setpoints(self, start: datetime, end: datetime) -> int:
        """Between ``start`` and ``end``, keep the last successful write of each device, point
        and minute, and every failed one; rows removed."""
        lo, hi = format_ts(start), format_ts(end)
        with self._tx():
            return self._db.execute(
                "DELETE FROM setpoints WHERE at >= ? AND at < ? AND ok = 1 AND id NOT IN "
                "(SELECT MAX(id) FROM setpoints WHERE at >= ? AND at < ? AND ok = 1 "
                "GROUP BY device, point, substr(at, 1, 16))",
                (lo, hi, lo, hi),
            ).rowcount

    def footprint(self) -> JournalFootprint:
        """Rows and bytes (pages, indexes included) by table, and the setpoint series."""
        rows: dict[str, int] = {}
        table_bytes: dict[str, int] = {}
        for table in FOOTPRINT_TABLES:
            rows[table] = int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - a constant
            table_bytes[table] = int(
                self._db.execute(
                    "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN "
                    "(SELECT name FROM sqlite_master WHERE tbl_name = ?)",
                    (table,),
                ).fetchone()[0]
            )
        series = int(
            self._db.execute(
                "SELECT count(*) FROM (SELECT DISTINCT device, point FROM setpoints)"
            ).fetchone()[0]
        )
        return JournalFootprint(self.size_bytes(), rows, table_bytes, series)

    def size_bytes(self) -> int:
        """The journal on disk: the database and its write-ahead log."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    def setpoints(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest setpoint writes, newest first."""
        cur = self._db.execute(
            "SELECT at, device, point, value, ok, error, latency_s FROM setpoints "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        keys = ("at", "device", "point", "value", "ok", "error", "latency_s")
        return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]

    def _insert_transitions(self, transitions: Iterable[Transition]) -> None:
        self._db.executemany(
            "INSERT INTO transitions (workload_id, from_state, to_state, action, reason, actor, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    t.workload_id,
                    t.from_state.value if t.from_state else None,
                    t.to_state.value,
                    t.action.value if t.action else None,
                    t.reason,
                    t.actor,
                    format_ts(t.at),
                )
                for t in transitions
            ],
        )

    def _insert_events(self, events: Iterable[EventRow]) -> list[EventRow]:
        committed = []
        for e in events:
            cur = self._db.execute(
                "INSERT INTO events (type, workload_id, at, data) VALUES (?, ?, ?, ?)",
                (e.type, e.workload_id, format_ts(e.at), json.dumps(e.data, default=str)),
            )
            committed.append(
                EventRow(e.type, e.workload_id, e.at, e.data, id=int(cur.lastrowid or 0))
            )
        return committed

    def _append_audit(self, entry: AuditEntry) -> None:
        digest = _audit_hash(self._last_hash, entry)
        self._db.execute(
            "INSERT INTO audit (at, actor, role, action, target, outcome, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                format_ts(entry.at),
                entry.actor,
                entry.role,
                entry.action,
                entry.target,
                entry.outcome,
                json.dumps(entry.detail, sort_keys=True, default=str),
                self._last_hash,
                digest,
            ),
        )
        self._last_hash = digest
        self._unlogged.append((entry, digest))
        self.audit_counts[entry.outcome] += 1

    def _tail_hash(self) -> str:
        row = self._db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        return str(row[0]) if row else GENESIS_HASH

    # ---- reads -------------------------------------------------------------------------------

    def get_workload(self, workload_id: str, *, history: bool = True) -> Workload | None:
        row = self._db.execute(
            "SELECT id, owner, state, announcement, allocation, created_at, updated_at "
            "FROM workloads WHERE id = ?",
            (workload_id,),
        ).fetchone()
        if row is None:
            return None
        return self._workload(row, self._history(workload_id) if history else ())

    def list_workloads(
        self,
        *,
        states: Sequence[WorkloadState] = (),
        owner: str | None = None,
        start_after: datetime | None = None,
        start_before: datetime | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> tuple[list[Workload], int | None]:
        """A page in announcement order and the cursor (``seq``) of the next page, if any.

        ``start_after``/``start_before`` filter on the scheduled start.
        """
        where = ["seq > ?"]
        args: list[Any] = [after_seq]
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args.extend(s.value for s in states)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if start_after is not None:
            where.append("scheduled_start >= ?")
            args.append(format_ts(start_after))
        if start_before is not None:
            where.append("scheduled_start < ?")
            args.append(format_ts(start_before))
        rows = self._db.execute(
            "SELECT id, owner, state, announcement, allocation, created_at, updated_at, seq "  # noqa: S608 - only placeholders are joined in
            f"FROM workloads WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        page = [self._workload(r, ()) for r in rows[:limit]]
        cursor = int(rows[limit - 1][7]) if len(rows) > limit else None
        return page, cursor

    def active_workloads(self) -> list[Workload]:
        """Every workload not in a final state, in announcement order (for start-up)."""
        active = [s.value for s in WorkloadState if s not in _FINAL]
        rows = self._db.execute(
            "SELECT id, owner, state, announcement, allocation, created_at, updated_at "  # noqa: S608 - only placeholders are joined in
            f"FROM workloads WHERE state IN ({', '.join('?' for _ in active)}) ORDER BY seq",
            active,
        ).fetchall()
        return [self._workload(r, ()) for r in rows]

    def open_grid_signals(self, now: datetime) -> list[GridSignal]:
        """Signals not withdrawn whose window has not ended at ``now``, oldest first (start)."""
        rows = self._db.execute(
            "SELECT signal FROM grid_signals WHERE withdrawn_at IS NULL "
            "AND (window_end IS NULL OR window_end > ?) ORDER BY seq",
            (format_ts(now),),
        ).fetchall()
        return [GridSignal.model_validate_json(r[0]) for r in rows]

    def recent_grid_signals(self, limit: int = 100) -> list[GridSignal]:
        """The last ``limit`` signals received, in force or not, newest first."""
        rows = self._db.execute(
            "SELECT signal FROM grid_signals ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [GridSignal.model_validate_json(r[0]) for r in rows]

    def count_workloads(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM workloads").fetchone()[0])

    def find_idempotency(self, owner: str, key: str) -> IdempotencyRecord | None:
        row = self._db.execute(
            "SELECT request_sha256, workload_id FROM idempotency WHERE owner = ? AND key = ?",
            (owner, key),
        ).fetchone()
        return IdempotencyRecord(owner, key, row[0], row[1]) if row else None

    def events_after(self, event_id: int, limit: int = 500) -> list[EventRow]:
        rows = self._db.execute(
            "SELECT id, type, workload_id, at, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (event_id, limit),
        ).fetchall()
        return [EventRow(r[1], r[2], parse_ts(r[3]), json.loads(r[4]), id=r[0]) for r in rows]

    def last_event_id(self) -> int:
        row = self._db.execute("SELECT max(id) FROM events").fetchone()
        return int(row[0] or 0)

    def verify_audit(self) -> tuple[int, int | None]:
        """Walk the audit chain: (entries checked, id of the first broken entry or None)."""
        check = self.check_audit()
        return check.count, check.broken_at

    def check_audit(self, anchor: AuditAnchor | None = None) -> AuditCheck:
        """Walk the audit chain and say where and why it breaks.

        A record is broken when its link or hash does not match, or when it cannot be read at
        all (``detail`` no longer JSON, a time that does not parse): the answer names it. The
        chain is also checked at its end: SQLite remembers the highest id it handed out, so
        deleting the newest records shows as entries allocated but missing; and an ``anchor``
        (the head published earlier: ``audit.anchor`` beside the journal, the ``audit_head``
        log line) must still be in the chain with the same hash.
        """
        prev = GENESIS_HASH
        count, head_id = 0, 0
        hashes: dict[int, str] = {}
        for row in self._db.execute(
            "SELECT id, at, actor, role, action, target, outcome, detail, prev_hash, hash "
            "FROM audit ORDER BY id"
        ):
            try:
                entry = AuditEntry(
                    actor=row[2],
                    role=row[3],
                    action=row[4],
                    target=row[5],
                    outcome=row[6],
                    detail=json.loads(row[7]),
                    at=parse_ts(row[1]),
                )
            except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
                return AuditCheck(count, int(row[0]), f"entry {row[0]} cannot be read: {exc}")
            if row[8] != prev:
                return AuditCheck(
                    count,
                    int(row[0]),
                    f"entry {row[0]} does not follow its "
                    "predecessor (an entry was removed or changed before it)",
                )
            if _audit_hash(prev, entry) != row[9]:
                return AuditCheck(
                    count,
                    int(row[0]),
                    f"entry {row[0]} was changed after it was written (its hash does not match)",
                )
            prev, head_id = row[9], int(row[0])
            hashes[head_id] = prev
            count += 1
        allocated = self._db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit'"
        ).fetchone()
        if allocated is not None and int(allocated[0]) > head_id:
            return AuditCheck(
                count,
                int(allocated[0]),
                f"the chain ends at entry {head_id} but "
                f"entries up to {allocated[0]} were written: the newest were "
                "deleted",
                head_id,
                prev,
            )
        if anchor is not None and hashes.get(anchor.entry) != anchor.hash:
            found = "is missing" if anchor.entry not in hashes else "has another hash"
            return AuditCheck(
                count,
                anchor.entry,
                f"the anchor's entry {anchor.entry} (hash "
                f"{anchor.hash[:16]}…) {found}: the chain was truncated or "
                "rewritten",
                head_id,
                prev,
            )
        return AuditCheck(count, None, None, head_id, prev)

    def audit_head(self) -> AuditAnchor:
        """The newest audit entry's id and hash (id 0 and the genesis hash when empty)."""
        row = self._db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        return AuditAnchor(0, GENESIS_HASH) if row is None else AuditAnchor(int(row[0]), row[1])

    def audit_entries(self, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, at, actor, role, action, target, outcome, detail FROM audit "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        keys = ("id", "at", "actor", "role", "action", "target", "outcome", "detail")
        return [dict(zip(keys, (*r[:7], json.loads(r[7])), strict=True)) for r in rows]

    def _history(self, workload_id: str) -> tuple[StateChange, ...]:
        rows = self._db.execute(
            "SELECT to_state, at, action, reason FROM transitions WHERE workload_id = ? "
            "ORDER BY id",
            (workload_id,),
        ).fetchall()
        return tuple(
            StateChange(
                state=WorkloadState(r[0]),
                at=parse_ts(r[1]),
                action=Action(r[2]) if r[2] else None,
                reason=r[3],
            )
            for r in rows
        )

    @staticmethod
    def _workload(row: Sequence[Any], history: tuple[StateChange, ...]) -> Workload:
        return Workload(
            id=row[0],
            owner=row[1],
            state=WorkloadState(row[2]),
            announcement=Announcement.model_validate_json(row[3]),
            allocation=Allocation.model_validate_json(row[4]) if row[4] else None,
            created_at=parse_ts(row[5]),
            updated_at=parse_ts(row[6]),
            history=history,
        )


_FINAL = frozenset(
    {
        WorkloadState.COMPLETED,
        WorkloadState.CANCELLED,
        WorkloadState.FAILED,
        WorkloadState.EXPIRED,
    }
)


def _allocation_json(allocation: Allocation | None) -> str | None:
    return allocation.model_dump_json() if allocation is not None else None


def _scheduled(allocation: Allocation | None) -> str | None:
    return format_ts(allocation.scheduled_start) if allocation is not None else None


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; ``ROLLBACK`` on any error."""

    def __init__(
        self,
        db: sqlite3.Connection,
        on_rollback: Callable[[], None],
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._on_rollback = on_rollback
        self._on_commit = on_commit

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
            self._on_commit()
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._on_rollback()


class AsyncJournal:
    """The journal for asyncio code: every call runs on the journal's own worker thread."""

    def __init__(self, journal: Journal) -> None:
        self.sync = journal
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self.errors_total = 0
        """Calls that failed in SQLite (metrics: a disk or lock problem to look at)."""

    @classmethod
    def open(cls, path: Path, synchronous: Literal["full", "normal"] = "full") -> AsyncJournal:
        return cls(Journal(path, synchronous))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except sqlite3.Error as exc:
            self.errors_total += 1
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise JournalFullError(self.sync.path, str(exc)) from exc
            raise JournalError(self.sync.path, str(exc)) from exc

    async def close(self) -> None:
        await self.call(self.sync.close)
        self._executor.shutdown(wait=True)


async def _cancelled(task: asyncio.Task[None] | None) -> None:
    """Cancel a component's loop and wait until it has stopped."""
    await cancel_and_wait(task)


class SetpointWritten(Protocol):
    """One setpoint write as the control cycle reports it."""

    @property
    def at(self) -> float: ...
    @property
    def device(self) -> str: ...
    @property
    def point(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def ok(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def latency_s(self) -> float: ...


SETPOINT_FLUSH_S = 1.0
SETPOINT_BUFFER_MAX = 100_000


class SetpointRecorder:
    """Setpoint history: buffered on the control path, written to the journal once a second in
    one transaction (a component: ``start`` runs the flush loop, ``stop`` flushes what is left).
    When the journal falls behind, the oldest rows beyond ``max_rows`` are dropped and logged."""

    name = "setpoint-journal"

    def __init__(
        self,
        journal: AsyncJournal,
        every_s: float = SETPOINT_FLUSH_S,
        max_rows: int = SETPOINT_BUFFER_MAX,
    ) -> None:
        self.journal = journal
        self.every_s = every_s
        self.max_rows = max_rows
        self._buffer: list[SetpointWritten] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, writes: Sequence[SetpointWritten]) -> None:
        self._buffer.extend(writes)
        excess = len(self._buffer) - self.max_rows
        if excess > 0:
            del self._buffer[:excess]
            log.warning("setpoint_history_dropped", writes=excess, reason="journal behind")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await _cancelled(self._task)
        await self.flush()

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        return [self.name] if self._task is not None and self._task.done() else []

    async def flush(self) -> None:
        if not self._buffer:
            return
        rows = [
            (w.at, w.device, w.point, w.value, w.ok, w.error, w.latency_s) for w in self._buffer
        ]
        self._buffer.clear()
        await self.journal.call(self.journal.sync.record_setpoints, rows)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.flush()
            except JournalError as exc:
                log.error("setpoint_history_not_written", error=str(exc))


PRUNE_BATCH = 5000
"""Rows one prune call removes from a table at most: other journal calls run between them."""
PRUNE_EVERY_S = 600.0
DOWNSAMPLE_WINDOW = timedelta(hours=1)
"""Setpoint history is downsampled an hour at a time (one journal call each)."""


FOOTPRINT_TABLES: Final = ("setpoints", "audit", "events", "transitions", "workloads")


@dataclass(frozen=True)
class JournalFootprint:
    """The journal's size at one moment (``Journal.footprint``)."""

    size_bytes: int
    """Database and write-ahead log on disk."""
    rows: dict[str, int]
    table_bytes: dict[str, int]
    """Pages each table uses, its indexes included."""
    setpoint_series: int
    """Distinct (device, point) pairs written: what the downsampled history keeps per minute."""


@dataclass(frozen=True)
class JournalGrowth:
    """How fast the journal grows at a measured load, and where retention bounds it."""

    seconds: float
    rows_per_day: dict[str, float]
    bytes_per_day: dict[str, float]
    """Without retention: the measured rate, per table."""
    setpoint_row_bytes: float | None
    bounded_setpoint_bytes: float | None
    """The setpoint history's size once retention has caught up (it stays there): whole rows
    for ``setpoint_full_days``, then one per series and minute until ``setpoint_days``."""
    audit_bytes_per_year: float
    """The audit chain is never pruned: it grows by this much a year at this load."""


def journal_growth(
    before: JournalFootprint, after: JournalFootprint, seconds: float, policy: RetentionPolicy
) -> JournalGrowth:
    """Growth between two footprints ``seconds`` apart, and the bound ``policy`` sets."""
    day = 86400.0 / seconds if seconds > 0 else 0.0
    rows = {t: (after.rows[t] - before.rows[t]) * day for t in after.rows}
    size = {t: (after.table_bytes[t] - before.table_bytes[t]) * day for t in after.table_bytes}
    setpoints = after.rows.get("setpoints", 0)
    row_bytes = after.table_bytes["setpoints"] / setpoints if setpoints else None
    bound = None
    if row_bytes is not None:
        whole = rows["setpoints"] * policy.setpoint_full_days
        minutes = after.setpoint_series * 1440 * (policy.setpoint_days - policy.setpoint_full_days)
        bound = (whole + minutes) * row_bytes
    audit = size.get("audit", 0.0) * 365
    return JournalGrowth(seconds, rows, size, row_bytes, bound, audit)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long the journal keeps what (``[storage]``); the audit chain is kept whole."""

    setpoint_full_days: float = 2.0
    """Setpoint writes are kept whole this long, then the last of each minute (and failures)."""
    setpoint_days: float = 30.0
    """… and deleted after this long."""
    workload_days: float = 365.0
    """Finished workloads, with their transitions and events, this long after they ended."""


class JournalRetention:
    """Keeps the journal bounded (a component). At start and every ``every_s`` it prunes by
    ``policy``: old setpoint history downsampled an hour at a time, then what is past keeping
    removed in batches of :data:`PRUNE_BATCH`; each is its own journal call, so announcements
    and audit entries are written between them. What it removed is logged (``journal_pruned``)
    and counted by table."""

    name = "journal-retention"

    def __init__(
        self,
        journal: AsyncJournal,
        policy: RetentionPolicy,
        every_s: float = PRUNE_EVERY_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.journal = journal
        self.policy = policy
        self.every_s = every_s
        self.clock = clock
        self.pruned_total: Counter[str] = Counter()
        """Rows removed since start, by table (metrics)."""
        self._downsampled_to: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await _cancelled(self._task)

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        return [self.name] if self._task is not None and self._task.done() else []

    async def prune(self) -> dict[str, int]:
        """One pass; rows removed by table."""
        now = self.clock()
        policy = self.policy
        removed: Counter[str] = Counter()
        oldest = now - timedelta(days=policy.setpoint_days)
        start = max(self._downsampled_to or oldest, oldest)
        end = now - timedelta(days=policy.setpoint_full_days)
        while start < end:
            stop = min(start + DOWNSAMPLE_WINDOW, end)
            sync = self.journal.sync
            removed["setpoints"] += await self.journal.call(sync.downsample_setpoints, start, stop)
            start = self._downsampled_to = stop
        while True:
            batch = await self.journal.call(self.journal.sync.prune, now, policy, PRUNE_BATCH)
            removed.update(batch)
            if max(batch.values(), default=0) < PRUNE_BATCH:
                break
        self.pruned_total.update(removed)
        if any(removed.values()):
            log.info("journal_pruned", **{table: n for table, n in removed.items() if n})
        return {table: n for table, n in removed.items() if n}

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except JournalError as exc:
                log.error("journal_prune_failed", error=str(exc))
            await asyncio.sleep(self.every_s)


ANCHOR_EVERY_S = 10.0


def anchor_path(journal_path: Path) -> Path:
    """Where the audit chain's head is published: ``audit.anchor`` beside the journal."""
    return journal_path.with_name("audit.anchor")


class AuditAnchorWriter:
    """Publishes the audit chain's head, so deleting its newest records is caught: whenever the
    head moved, it is written to ``path`` (``audit.anchor`` beside the journal, replaced
    atomically) and logged (``audit_head``: the log leaves the machine through journald);
    ``pswd-gateway audit verify`` checks the chain still holds it (a component)."""

    name = "audit-anchor"

    def __init__(self, journal: AsyncJournal, path: Path, every_s: float = ANCHOR_EVERY_S) -> None:
        self.journal = journal
        self.path = path
        self.every_s = every_s
        self.head: AuditAnchor | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.publish()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await _cancelled(self._task)
        with contextlib.suppress(JournalError, OSError):
            await self.publish()  # the last entries of this run

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        return [self.name] if self._task is not None and self._task.done() else []

    async def publish(self) -> None:
        head = await self.journal.call(self.journal.sync.audit_head)
        if head == self.head:
            return
        tmp = self.path.with_suffix(".anchor.tmp")
        tmp.write_text(head.dumps() + "\n", encoding="utf-8")
        tmp.replace(self.path)
        self.head = head
        log.info("audit_head", entry=head.entry, hash=head.hash)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.publish()
            except (JournalError, OSError) as exc:
                log.error("audit_anchor_not_written", error=str(exc), path=str(self.path))
