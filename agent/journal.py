"""The task journal: one sqlite database in WAL mode inside the state directory.

Every admitted task is written here before ``accepted`` leaves the agent, and every state
change after it, so a restarted agent knows what to run again. Only the daemon's loop
thread touches the connection (sqlite connections are not shared across threads).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path

from dedgeai.agent.errors import JournalError
from dedgeai.agent.protocol import NodeId, TaskId
from dedgeai.agent.tasks import TaskRecord, TaskState
from dedgeai.models.backend import GenerationRequest

SCHEMA_VERSION = 1
SYNC_MODES = ("normal", "full")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    placement TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
"""
_COLUMNS = (
    "seq, id, origin, state, request, submitted_at, started_at, finished_at, step, attempts, "
    "cancel_requested, error, result, placement"
)


def _row(task: TaskRecord) -> tuple[object, ...]:
    req = task.request
    request = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "steps": req.steps,
        "width": req.width,
        "height": req.height,
        "guidance": req.guidance,
        "seed": req.seed,
    }
    return (
        task.seq,
        task.id,
        task.origin,
        task.state.value,
        json.dumps(request),
        task.submitted_at,
        task.started_at,
        task.finished_at,
        task.step,
        task.attempts,
        int(task.cancel_requested),
        task.error,
        json.dumps(task.result) if task.result else None,
        json.dumps(task.placement) if task.placement else None,
    )


def _record(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        id=TaskId(row["id"]),
        origin=row["origin"],
        request=GenerationRequest(**json.loads(row["request"])),
        seq=row["seq"],
        submitted_at=row["submitted_at"],
        state=TaskState(row["state"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        step=row["step"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        error=row["error"],
        result=json.loads(row["result"]) if row["result"] else {},
        placement=json.loads(row["placement"]) if row["placement"] else {},
    )


class Journal:
    """Durable task table. ``sync="full"`` also survives power loss, at an fsync per commit."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        if sync not in SYNC_MODES:
            raise JournalError(f"journal sync mode must be one of {SYNC_MODES}, got {sync!r}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise JournalError(
                    f"{path}: sqlite refused WAL mode (got {mode}); use a local disk"
                )
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(tasks)")}
            if "placement" not in columns:  # a journal written before forwarding existed
                self._db.execute("ALTER TABLE tasks ADD COLUMN placement TEXT")
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise JournalError(f"{path}: journal schema v{version}, this agent reads v1")
            self._next_seq = (self._db.execute("SELECT MAX(seq) FROM tasks").fetchone()[0] or 0) + 1
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        self.path = path

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def require_node_id(self) -> NodeId:
        """This agent's UUID: read from the journal, created on first start."""
        node = self._meta("node_id")
        if node is None:
            node = str(uuid.uuid4())
            self._set_meta("node_id", node)
        return NodeId(node)

    def take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def save(self, tasks: Iterable[TaskRecord]) -> None:
        """Insert or replace the records in one transaction (one commit for a whole batch)."""
        rows = [_row(t) for t in tasks]
        if not rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write the journal {self.path}: {exc}") from exc

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _record(row)

    def unfinished(self) -> list[TaskRecord]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE state IN ('queued', 'running', 'forwarded') "
            "ORDER BY seq"
        )
        return [_record(r) for r in rows]

    def recent(self, limit: int, state: str | None = None) -> list[TaskRecord]:
        """Newest first."""
        if state is None:
            query, args = f"SELECT {_COLUMNS} FROM tasks ORDER BY seq DESC LIMIT ?", (limit,)
        else:
            query = f"SELECT {_COLUMNS} FROM tasks WHERE state = ? ORDER BY seq DESC LIMIT ?"
            args = (state, limit)  # type: ignore[assignment]
        return [_record(r) for r in self._db.execute(query, args)]

    def purge(self, max_finished: int, max_age_s: float, now: float) -> list[TaskId]:
        """Delete finished tasks beyond ``max_finished`` (oldest first) or older than the age."""
        rows = self._db.execute(
            "SELECT id, finished_at FROM tasks WHERE state IN ('done', 'failed', 'cancelled') "
            "ORDER BY finished_at DESC, seq DESC"
        ).fetchall()
        doomed = [
            TaskId(row["id"])
            for index, row in enumerate(rows)
            if index >= max_finished or (row["finished_at"] or 0.0) < now - max_age_s
        ]
        if doomed:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM tasks WHERE id = ?", [(t,) for t in doomed])
        return doomed

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        return {state: n for state, n in rows}

    def close(self) -> None:
        """Fold the WAL back into the database so the directory is self-contained."""
        # Another reader may hold the WAL; sqlite then folds it in on the next open.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
