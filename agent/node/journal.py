"""The task journal: one sqlite database in WAL mode inside the state directory.

Every admitted task is written here before ``accepted`` leaves the agent, and every state
change after it, so a restarted agent knows what to run again. Only the daemon's loop
thread touches the connection (sqlite connections are not shared across threads).

The journal is trusted no further than it checks out. ``open_journal`` refuses, with one
line saying what to do, a journal that is missing or empty beside an earlier agent's state,
corrupt, of an unknown schema, or whose node id disagrees with ``<state>/node_id``. A row
that cannot be read is skipped, logged once and counted (``corrupt_rows``), never deleted.
A full disk raises ``StorageError`` and commits nothing; ``writable`` says when it passes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dedgeai.agent.errors import JournalError
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.node.tasks import TaskRecord, TaskState
from dedgeai.models.backend import GenerationRequest

log = logging.getLogger("dedgeai.agent.node.journal")

SCHEMA_VERSION = 1
SYNC_MODES = ("normal", "full")
JOURNAL_FILE = "journal.sqlite3"
NODE_ID_FILE = "node_id"
# What an agent leaves in its state directory besides the journal: beside any of these an
# empty journal means a lost one, not a first start.
EARLIER_STATE = ("node_id", "capacity.json", "policy.pt")
RESULTS_DIR = "results"
WRITABLE_PROBE_BYTES = 16384  # a few pages: a probe that fits in free pages proves little
# The WAL is folded into the database by the daemon's loop (``checkpoint_due``/``checkpoint``)
# after it has sent its replies: sqlite's own checkpoint, every 1000 pages by default, runs
# inside a commit that ``accepted`` replies wait for (1-5 ms CPU and an fsync, every ~190
# commits of ~5 pages each). sqlite's own is kept as a backstop, far beyond the loop's.
AUTOCHECKPOINT_PAGES = 10_000  # 4 KiB pages: a 40 MB WAL at most
BUSY_CHECKPOINT_COMMITS = 1000  # ~5,300 pages: a loop that is never idle folds in this often

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
    placement TEXT,
    owner TEXT NOT NULL DEFAULT 'local'
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
"""
# Columns added after the first release, with the clause that adds them to older journals.
_ADDED_COLUMNS = {
    "placement": "placement TEXT",  # forwarding (issue 5)
    "owner": "owner TEXT NOT NULL DEFAULT 'local'",  # authority (issue 10)
}
_COLUMNS = (
    "seq, id, origin, state, request, submitted_at, started_at, finished_at, step, attempts, "
    "cancel_requested, error, result, placement, owner"
)
_FINISHED = "('done', 'failed', 'cancelled')"
_REQUEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "negative_prompt": str,
    "steps": int,
    "width": int,
    "height": int,
    "guidance": (int, float),
    "seed": int,
}
_JSON_MAPS, _OBJECT = ("result", "placement"), "'object'"
_OWNER = re.compile(r"[!-~]{1,128}")  # printable ASCII: ``local``, ``key:<z85>``, ...


def _json_is(column: str, path: str, types: str) -> str:
    # CASE, not AND: sqlite does not promise to skip json_type() of malformed JSON.
    return f"CASE WHEN json_valid({column}) THEN json_type({column}, '{path}') END IN ({types})"


_SQL_TYPES = {str: "'text'", int: "'integer'", (int, float): "'integer', 'real'"}
_NUMBER, _MAYBE_NUMBER = "('integer', 'real')", "('null', 'integer', 'real')"
# A cheap screen in SQL (JSON1) for ``check_rows``: only the rows it does not pass get the
# full check of ``_record`` in Python, about ten times faster on a 10k-row journal.
_SCREEN = " AND ".join(
    [
        "state IN (" + ", ".join(f"'{s.value}'" for s in TaskState) + ")",
        "typeof(origin) = 'text'",
        "typeof(owner) = 'text' AND length(owner) BETWEEN 1 AND 128",
        "owner NOT GLOB '*[^!-~]*'",
        f"typeof(submitted_at) IN {_NUMBER} AND typeof(step) IN {_NUMBER}",
        f"typeof(attempts) IN {_NUMBER}",
        f"typeof(started_at) IN {_MAYBE_NUMBER} AND typeof(finished_at) IN {_MAYBE_NUMBER}",
        _json_is("request", "$", "'object'"),
        "CASE WHEN json_valid(request) THEN (SELECT COUNT(*) FROM json_each(request)) END = "
        f"{len(_REQUEST_TYPES)}",
        *(_json_is("request", f"$.{n}", _SQL_TYPES[t]) for n, t in _REQUEST_TYPES.items()),
        *(f"(coalesce({c}, '') = '' OR {_json_is(c, '$', _OBJECT)})" for c in _JSON_MAPS),
    ]
)
# sqlite's primary result codes that mean "the disk cannot take it", not "the file is bad".
_STORAGE_CODES = {
    8: "read-only",  # SQLITE_READONLY: e.g. the file system was remounted read-only
    10: "I/O error",  # SQLITE_IOERR (and its extended codes)
    13: "full",  # SQLITE_FULL
    14: "cannot open",  # SQLITE_CANTOPEN: e.g. no room for the -wal or -shm file
}


class StorageError(JournalError):
    """The disk refused a commit (full, I/O error, read-only); nothing of it was written."""


class _NoTables(JournalError):
    """The database has no tables at all (a missing, empty or new file)."""


def _row(task: TaskRecord) -> tuple[object, ...]:
    req = task.request
    request = {name: getattr(req, name) for name in _REQUEST_TYPES}
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
        task.owner,
    )


def _json_map(text: Any, column: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError as exc:
        raise ValueError(f"{column} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{column} is JSON but not an object")
    return value


def _request(text: Any) -> GenerationRequest:
    fields = _json_map(text, "request")
    if set(fields) != set(_REQUEST_TYPES):
        raise ValueError(f"request has fields {sorted(fields)}, expected {sorted(_REQUEST_TYPES)}")
    for name, kind in _REQUEST_TYPES.items():
        if isinstance(fields[name], bool) or not isinstance(fields[name], kind):
            raise ValueError(f"request field {name} is {type(fields[name]).__name__}")
    return GenerationRequest(**fields)


def _number(value: Any, column: str, optional: bool = False) -> Any:
    if (value is None and optional) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    ):
        return value
    raise ValueError(f"{column} is {value!r}, not a number")


def _record(row: sqlite3.Row) -> TaskRecord:
    """The record of one row; ValueError/TypeError naming the first column that is wrong."""
    owner = row["owner"]
    if not isinstance(owner, str) or not _OWNER.fullmatch(owner):
        raise ValueError(f"owner is {owner!r}, not a principal id")
    if not isinstance(row["origin"], str):
        raise ValueError(f"origin is {row['origin']!r}")
    return TaskRecord(
        id=TaskId(row["id"]),
        origin=row["origin"],
        request=_request(row["request"]),
        seq=row["seq"],
        submitted_at=_number(row["submitted_at"], "submitted_at"),
        state=TaskState(row["state"]),
        started_at=_number(row["started_at"], "started_at", optional=True),
        finished_at=_number(row["finished_at"], "finished_at", optional=True),
        step=int(_number(row["step"], "step")),
        attempts=int(_number(row["attempts"], "attempts")),
        cancel_requested=bool(row["cancel_requested"]),
        error=None if row["error"] is None else str(row["error"]),
        result=_json_map(row["result"], "result"),
        placement=_json_map(row["placement"], "placement"),
        owner=owner,
    )


def storage_problem(exc: sqlite3.Error) -> str | None:
    """What ``exc`` says about the disk ("full", "I/O error"...), or None for other errors."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _STORAGE_CODES:
        return _STORAGE_CODES[code & 0xFF]
    return None


class Journal:
    """Durable task table. ``sync="full"`` also survives power loss, at an fsync per commit.

    ``create=False`` refuses (``JournalError``) a database without tables instead of
    creating them; ``open_journal`` uses it when an earlier agent's state is around.
    """

    def __init__(self, path: Path, sync: str = "normal", create: bool = True) -> None:
        if sync not in SYNC_MODES:
            raise JournalError(f"journal sync mode must be one of {SYNC_MODES}, got {sync!r}")
        self.path = path
        self._corrupt: dict[str, dict[str, str]] = {}  # task id -> its state and the problem
        self.uncheckpointed = 0  # commits since the WAL was last folded into the database
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        try:
            self._open(sync, create)
        except JournalError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            problem = storage_problem(exc)
            if problem is None:
                raise JournalError(_corrupt_message(path, exc)) from exc
            raise StorageError(
                f"cannot open the journal {path}: {exc} (disk {problem}); free space on "
                "its file system or fix the disk, then start the agent again"
            ) from exc

    def _open(self, sync: str, create: bool) -> None:
        self._db.row_factory = sqlite3.Row
        check = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]  # reads every page
        if check != "ok":
            raise sqlite3.DatabaseError(str(check))
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if not tables and not create:
            raise _NoTables(f"the journal {self.path} has no tables")
        if tables and not {"meta", "tasks"} <= tables:
            lost = " and ".join(sorted({"meta", "tasks"} - tables))
            raise JournalError(
                f"the journal {self.path} has lost its {lost} table: restore it from a backup, "
                f"or {_afresh(self.path.parent)}"
            )
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(
                f"{self.path}: sqlite refused WAL mode (got {mode}); use a local disk"
            )
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(tasks)")}
        for name, clause in _ADDED_COLUMNS.items():
            if name not in columns:  # a journal written by an older agent
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {clause}")
        self._db.execute("CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, seq)")
        version = self._meta("schema_version")
        if version is None:
            self._set_meta("schema_version", str(SCHEMA_VERSION))
        elif version != str(SCHEMA_VERSION):
            raise JournalError(
                f"the journal {self.path} has schema version {version!r}; this agent reads "
                f"v{SCHEMA_VERSION}: run the agent version that wrote it, or "
                f"{_afresh(self.path.parent)}"
            )
        self._next_seq = (self._db.execute("SELECT MAX(seq) FROM tasks").fetchone()[0] or 0) + 1

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def node_id(self) -> NodeId | None:
        """The node id stored in the journal, or None before the first start."""
        node = self._meta("node_id")
        return None if node is None else NodeId(node)

    def require_node_id(self) -> NodeId:
        """This agent's UUID: read from the journal, created on first start."""
        node = self.node_id()
        if node is None:
            node = NodeId(str(uuid.uuid4()))
            self._set_meta("node_id", node)
        return node

    def take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # --- writes: one transaction each, mapped to StorageError when the disk refuses ------

    def _commit(self, statements: Callable[[], object], what: str) -> None:
        try:
            self._db.execute("BEGIN")
            try:
                statements()
                self._db.execute("COMMIT")
                self.uncheckpointed += 1
            except BaseException:
                if self._db.in_transaction:  # sqlite may have rolled back already
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            problem = storage_problem(exc)
            message = f"cannot {what} the journal {self.path}: {exc}"
            if problem is not None:
                raise StorageError(f"{message} (disk {problem})") from exc
            raise JournalError(message) from exc

    def save(self, tasks: Iterable[TaskRecord]) -> None:
        """Insert or replace the records in one transaction (one commit for a whole batch).

        Raises:
            StorageError: the disk is full or failing; none of the records was written.
        """
        rows = [_row(t) for t in tasks]
        if not rows:
            return
        marks = ", ".join("?" * len(rows[0]))
        sql = f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES ({marks})"
        self._commit(lambda: self._db.executemany(sql, rows), "write")
        for row in rows:  # a corrupt row replaced by a good one is no longer corrupt
            self._corrupt.pop(str(row[1]), None)

    def writable(self, probe_bytes: int = WRITABLE_PROBE_BYTES) -> bool:
        """Whether a commit of ``probe_bytes`` works now (after a ``StorageError``)."""
        try:
            self._commit(lambda: self._set_meta("probe", "0" * probe_bytes), "probe")
            self._commit(lambda: self._db.execute("DELETE FROM meta WHERE key = 'probe'"), "probe")
        except JournalError:
            return False
        return True

    def checkpoint_due(self, idle: bool) -> bool:
        """Whether to ``checkpoint`` now: any commit since the last one when the loop is
        idle, else once ``BUSY_CHECKPOINT_COMMITS`` have piled up."""
        return self.uncheckpointed >= (1 if idle else BUSY_CHECKPOINT_COMMITS)

    def checkpoint(self) -> bool:
        """Fold the WAL into the database now, without waiting on readers (``PASSIVE``).

        It moves committed pages only: durability is the commit's (``sync``), before and
        after. Returns whether the whole WAL was folded in; either way the next one is due
        after more commits (a reader that held it back, or an error, is not retried every
        turn; sqlite's own backstop still bounds the WAL).
        """
        self.uncheckpointed = 0
        try:
            busy, frames, done = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("journal checkpoint failed: %s", exc)
            return False
        return not busy and done == frames

    # --- reads: rows that cannot be read are skipped, logged once and counted ----------

    def _read(self, row: sqlite3.Row) -> TaskRecord | None:
        try:
            return _record(row)
        except (ValueError, TypeError, KeyError) as exc:
            task = str(row["id"])
            if task not in self._corrupt:
                log.warning("journal: skipping task %r, its row cannot be read: %s", task, exc)
                self._corrupt[task] = {"task": task, "state": str(row["state"]), "error": str(exc)}
            return None

    def _records(
        self, query: str, args: Iterable[object], limit: int | None = None
    ) -> list[TaskRecord]:
        out: list[TaskRecord] = []
        if limit is not None and limit <= 0:
            return out
        cursor = self._db.execute(query, tuple(args))
        try:
            for row in cursor:  # sqlite steps lazily: no LIMIT, so skipped rows are made up
                record = self._read(row)
                if record is not None:
                    out.append(record)
                    if limit is not None and len(out) >= limit:
                        break
        finally:
            cursor.close()
        return out

    def get(self, task_id: str) -> TaskRecord | None:
        """The task, or None when unknown or unreadable."""
        found = self._records(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,), 1)
        return found[0] if found else None

    def unfinished(self) -> list[TaskRecord]:
        return self._records(
            f"SELECT {_COLUMNS} FROM tasks WHERE state IN ('queued', 'running', 'forwarded') "
            "ORDER BY seq",
            (),
        )

    def recent(
        self, limit: int, state: str | None = None, owner: str | None = None
    ) -> list[TaskRecord]:
        """Newest first; only ``state`` and only ``owner``'s tasks when given (None: all)."""
        clauses, args = [], []
        for column, value in (("state", state), ("owner", owner)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        return self._records(f"SELECT {_COLUMNS} FROM tasks {where}ORDER BY seq DESC", args, limit)

    def check_rows(self) -> int:
        """Check every row once so that ``corrupt_rows`` knows them all; returns their count."""
        try:
            # coalesce: a NULL from the screen (json_type of malformed JSON) is a failure
            self._records(f"SELECT {_COLUMNS} FROM tasks WHERE NOT coalesce(({_SCREEN}), 0)", ())
        except sqlite3.OperationalError:  # a sqlite built without JSON1: read every row
            self._records(f"SELECT {_COLUMNS} FROM tasks", ())
        return len(self._corrupt)

    def corrupt_rows(self) -> list[dict[str, str]]:
        """The rows skipped so far: ``task``, ``state`` (as stored) and ``error``."""
        return list(self._corrupt.values())

    # --- retention -------------------------------------------------------------------

    def purge(
        self,
        max_finished: int,
        max_age_s: float,
        now: float,
        max_bytes: int = 0,
        sizes: Mapping[str, int] | None = None,
    ) -> list[TaskId]:
        """Delete finished tasks, oldest first, beyond any limit; returns their ids.

        Args:
            max_finished: finished tasks kept.
            max_age_s: finished longer ago than this: deleted.
            now: the current time (``time.time()``).
            max_bytes: the total of ``sizes`` kept; 0: no size limit. Bytes of tasks that
                are not finished (or not in the journal) count but cannot be deleted here.
            sizes: bytes on disk per task id (``ResultStore.sizes``).
        """
        rows = self._db.execute(
            f"SELECT id, finished_at FROM tasks WHERE state IN {_FINISHED} "
            "ORDER BY finished_at DESC, seq DESC"
        ).fetchall()
        sizes = sizes or {}
        finished = {row["id"] for row in rows}
        total = sum(size for task, size in sizes.items() if task not in finished)
        over_bytes = False  # once the newest ones fill the budget, every older one goes
        doomed: list[TaskId] = []
        for index, row in enumerate(rows):
            size = sizes.get(row["id"], 0)
            over_bytes = over_bytes or (max_bytes > 0 and total + size > max_bytes)
            too_old = (row["finished_at"] or 0.0) < now - max_age_s
            if over_bytes or too_old or index >= max_finished:
                doomed.append(TaskId(row["id"]))
            else:
                total += size
        if doomed:
            delete = "DELETE FROM tasks WHERE id = ?"
            self._commit(lambda: self._db.executemany(delete, [(t,) for t in doomed]), "purge")
        return doomed

    def ids(self) -> set[str]:
        """Every task id in the journal, readable rows or not."""
        return {str(row[0]) for row in self._db.execute("SELECT id FROM tasks")}

    def oldest_finished_at(self) -> float | None:
        row = self._db.execute(f"SELECT MIN(finished_at) FROM tasks WHERE state IN {_FINISHED}")
        value = row.fetchone()[0]
        return value if isinstance(value, (int, float)) else None

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        return {str(state): n for state, n in rows}

    def close(self) -> None:
        """Fold the WAL back into the database so the directory is self-contained."""
        # Another reader may hold the WAL; sqlite then folds it in on the next open.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


# --- opening the journal of a state directory ---------------------------------------


def _afresh(state_dir: Path) -> str:
    return f"move {state_dir} aside to start afresh as a new node (its tasks are then forgotten)"


def _corrupt_message(path: Path, exc: Exception) -> str:
    detail = " ".join(str(exc).replace("*** in database main ***", "").split())  # one line
    return (
        f"the journal {path} is unreadable ({detail}): restore it from a backup, or salvage "
        f"it (`sqlite3 {path} .recover | sqlite3 recovered.sqlite3`, then put that in its "
        f"place), or {_afresh(path.parent)}"
    )


def earlier_state(state_dir: Path) -> list[str]:
    """What an earlier agent left in ``state_dir`` besides its journal (names, counts)."""
    found = [name for name in EARLIER_STATE if (state_dir / name).exists()]
    results = state_dir / RESULTS_DIR
    if results.is_dir():
        with os.scandir(results) as entries:
            count = sum(1 for e in entries if e.name.endswith((".png", ".json")))
        if count:
            found.append(f"{count} result file(s)")
    return found


def _read_node_file(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(
            f"cannot read {path}: {exc}; delete it to keep the journal's id"
        ) from exc
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise JournalError(
            f"{path} holds {text[:40]!r}, not a node id; delete it to keep the journal's id"
        ) from None


def write_node_file(path: Path, node: str) -> None:
    """Write ``node`` to ``path`` atomically and durably (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{node}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def open_journal(state_dir: Path, sync: str = "normal") -> Journal:
    """Open ``<state_dir>/journal.sqlite3`` and check it against the rest of the state.

    The node id is kept both in the journal and in ``<state_dir>/node_id``; they must agree.
    Rows that cannot be read are counted here once (``Journal.corrupt_rows``).

    Raises:
        JournalError: one line saying what is wrong and what to do: the journal is missing
            or empty beside an earlier agent's state, unreadable or corrupt, of an unknown
            schema, or its node id is not the one in ``node_id``.
    """
    path = state_dir / JOURNAL_FILE
    node_path = state_dir / NODE_ID_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        earlier = earlier_state(state_dir)
    except OSError as exc:
        raise JournalError(f"cannot use the state directory {state_dir}: {exc}") from exc
    lost = (
        f"but {state_dir} holds an earlier agent's state ({', '.join(earlier)}): restore the "
        f"journal from a backup, or {_afresh(state_dir)}"
    )
    if earlier and not path.exists():
        raise JournalError(f"the journal {path} is missing {lost}")
    try:
        journal = Journal(path, sync, create=not earlier)
    except _NoTables:
        raise JournalError(f"the journal {path} is empty (no tasks table) {lost}") from None
    try:
        _agree_on_node_id(journal, node_path)
        corrupt = journal.check_rows()
    except (JournalError, OSError, sqlite3.Error) as exc:
        journal.close()
        if isinstance(exc, JournalError):
            raise
        raise JournalError(f"cannot set up {node_path}: {exc}") from exc
    if corrupt:
        log.warning("journal: %d row(s) cannot be read and are left as they are", corrupt)
    return journal


def _agree_on_node_id(journal: Journal, node_path: Path) -> None:
    in_file = _read_node_file(node_path)
    in_journal = journal.node_id()
    if in_journal is None and in_file is not None:
        raise JournalError(
            f"the journal {journal.path} has no node id but {node_path} says {in_file}: put back "
            f"the journal of this node, or {_afresh(node_path.parent)}"
        )
    if in_journal is not None and in_file is not None and in_journal != in_file:
        raise JournalError(
            f"node ids disagree: the journal {journal.path} says {in_journal}, {node_path} says "
            f"{in_file}: put back the journal of this node, or delete {node_path} to keep the "
            "journal's id"
        )
    node = journal.require_node_id()
    if in_file is None:
        write_node_file(node_path, node)
