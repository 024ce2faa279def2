"""The journal and the results directory under damage: truncation, corruption, bad rows,
a full disk, and retention by bytes and age (issue 10). Real sqlite files in tmp_path."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sqlite3
import uuid
from pathlib import Path

import pytest

from dedgeai.agent.errors import JournalError
from dedgeai.agent.node import journal as journal_module
from dedgeai.agent.node import results as results_module
from dedgeai.agent.node.disk_store import DiskStore, RetentionLimits
from dedgeai.agent.node.journal import Journal, StorageError, open_journal
from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.tasks import Finished, Started, TaskRecord, apply
from dedgeai.models.backend import GenerationRequest

_COLUMNS = "seq, id, origin, state, request, submitted_at"
_GOOD_REQUEST = json.dumps(
    {
        "prompt": "p",
        "negative_prompt": "",
        "steps": 2,
        "width": 64,
        "height": 64,
        "guidance": 4.5,
        "seed": 1,
    }
)


def _task(
    journal: Journal, name: str, prompt: str = "a red cube", owner: str = "local"
) -> TaskRecord:
    request = GenerationRequest(prompt=prompt, steps=3, width=64, height=64, seed=7)
    return TaskRecord(TaskId(name), "node", request, journal.take_seq(), 0.0, owner=owner)


def _done(journal: Journal, name: str, finished_at: float, owner: str = "local") -> TaskRecord:
    task = apply(_task(journal, name, owner=owner), Started(finished_at - 1.0))
    return apply(task, Finished(finished_at, {"png_bytes": 1}))


def _used_state(state_dir: Path, tasks: int = 3) -> str:
    """A state directory after a real run: journal, node_id, finished tasks and their files."""
    journal = open_journal(state_dir)
    node = journal.require_node_id()
    store = ResultStore(state_dir / "results")
    for i in range(tasks):
        journal.save([_done(journal, f"t{i}", 100.0 + i)])
        store.write(TaskId(f"t{i}"), b"\x89PNG" + bytes(100), {"task": f"t{i}"})
    journal.close()
    return node


def _sql(path: Path, *statements: str) -> None:
    """Change the journal behind the agent's back, as a person or a bad disk would."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for statement in statements:
            db.execute(statement)


def _refusal(state_dir: Path) -> str:
    with pytest.raises(JournalError) as caught:
        open_journal(state_dir)
    message = str(caught.value)
    assert "\n" not in message and "journal.sqlite3" in message
    return message


# --- opening ------------------------------------------------------------------------


def test_node_id_lives_in_the_journal_and_a_file_that_agree(tmp_path):
    node = _used_state(tmp_path)
    assert (tmp_path / "node_id").read_text().strip() == node
    reopened = open_journal(tmp_path)
    assert reopened.require_node_id() == node and reopened.get("t2") is not None
    reopened.close()
    (tmp_path / "node_id").unlink()  # an agent from before the file existed: written again
    open_journal(tmp_path).close()
    assert (tmp_path / "node_id").read_text().strip() == node


def test_truncated_journal_beside_results_is_refused_not_recreated(tmp_path):
    _used_state(tmp_path)
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"")
    message = _refusal(tmp_path)
    assert "empty" in message and "3 result file" not in message and "6 result file" in message
    assert "node_id" in message and "move" in message
    assert path.stat().st_size == 0  # nothing was created in its place
    path.unlink()
    assert "missing" in _refusal(tmp_path) and not path.exists()


def test_first_start_in_an_empty_directory_is_fine(tmp_path):
    (tmp_path / "results").mkdir()  # an empty results directory is no earlier state
    journal = open_journal(tmp_path)
    assert journal.node_id() is not None and journal.unfinished() == []
    journal.close()


def test_dropped_tasks_table_is_refused(tmp_path):
    _used_state(tmp_path)
    _sql(tmp_path / "journal.sqlite3", "DROP TABLE tasks")
    assert "lost its tasks table" in _refusal(tmp_path)


@pytest.mark.parametrize("where", ["middle", "unaligned", "header"])
def test_garbage_in_the_file_is_refused_with_one_line(tmp_path, where):
    _used_state(tmp_path, tasks=0)
    journal = open_journal(tmp_path)
    journal.save([_task(journal, f"q{i}", prompt="x" * 500) for i in range(200)])  # ~30 pages
    journal.close()
    path = tmp_path / "journal.sqlite3"
    size = path.stat().st_size
    offset = {"middle": size // 2 // 4096 * 4096, "unaligned": size // 2 + 1000, "header": 0}
    with open(path, "r+b") as handle:
        handle.seek(offset[where])
        handle.write(bytes(range(256)) * 16)  # 4 KiB of garbage
    assert "unreadable" in _refusal(tmp_path)


def test_unknown_schema_version_is_refused(tmp_path):
    _used_state(tmp_path)
    _sql(tmp_path / "journal.sqlite3", "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    assert "schema version '7'" in _refusal(tmp_path)


def test_node_id_disagreement_is_refused(tmp_path):
    node = _used_state(tmp_path)
    other = str(uuid.uuid4())
    (tmp_path / "node_id").write_text(other + "\n")
    message = _refusal(tmp_path)
    assert "disagree" in message and node in message and other in message
    (tmp_path / "node_id").write_text("not a uuid")
    with pytest.raises(JournalError, match="not a node id"):
        open_journal(tmp_path)


# --- rows that cannot be read ---------------------------------------------------------


def test_unreadable_rows_are_skipped_logged_once_counted_and_kept(tmp_path, caplog, monkeypatch):
    _used_state(tmp_path, tasks=0)
    journal = open_journal(tmp_path)
    good = _task(journal, "good")
    journal.save([good])
    journal.close()
    bad = {
        "not-json": ("queued", "{oops", None, "local"),
        "wrong-fields": ("queued", json.dumps({"prompt": "p", "colour": "red"}), None, "local"),
        "odd-state": ("exploded", _GOOD_REQUEST, None, "local"),
        "bad-result": ("done", _GOOD_REQUEST, "[1, 2", "local"),
        "bad-owner": ("running", _GOOD_REQUEST, None, "two words"),
    }
    with contextlib.closing(sqlite3.connect(tmp_path / "journal.sqlite3")) as db, db:
        for seq, (task, (state, request, result, owner)) in enumerate(bad.items(), start=10):
            db.execute(
                f"INSERT INTO tasks ({_COLUMNS}, result, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, task, "node", state, request, 1.0, result, owner),
            )
    logger = logging.getLogger("dedgeai.agent.node.journal")  # "dedgeai" may not propagate
    monkeypatch.setattr(logger, "handlers", [caplog.handler])
    monkeypatch.setattr(logger, "level", logging.WARNING)
    monkeypatch.setattr(logger, "propagate", False)
    journal = open_journal(tmp_path)
    for _ in range(2):  # asking again logs nothing new
        assert journal.unfinished() == [good]
        assert [t.id for t in journal.recent(10)] == ["good"]
        assert all(journal.get(task) is None for task in bad)
    assert {row["task"] for row in journal.corrupt_rows()} == set(bad)
    assert {row["state"] for row in journal.corrupt_rows()} >= {"exploded", "queued"}
    warned = [re.search(r"skipping task '(\S+)',", r.getMessage()) for r in caplog.records]
    assert sorted(m.group(1) for m in warned if m) == sorted(bad)
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    journal.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "journal.sqlite3")) as db:  # untouched
        assert db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 1 + len(bad)
    screen = journal_module._SCREEN
    monkeypatch.setattr(journal_module, "_SCREEN", "no_such_function(1)")  # sqlite sans JSON1
    without_json1 = open_journal(tmp_path)
    assert len(without_json1.corrupt_rows()) == len(bad)
    without_json1.close()
    monkeypatch.setattr(journal_module, "_SCREEN", screen)
    reopened = open_journal(tmp_path)
    assert len(reopened.corrupt_rows()) == len(bad)  # known at open, before anyone asks
    reopened.save([apply(_task(reopened, "odd-state"), Started(2.0))])  # replaced by a good row
    assert reopened.get("odd-state") is not None and len(reopened.corrupt_rows()) == 4
    reopened.close()


# --- the owner column -----------------------------------------------------------------


def test_owner_column_is_added_to_old_journals_and_filters_recent(tmp_path):
    path = tmp_path / "journal.sqlite3"
    # The first release's schema: no placement, no owner.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,"
            " origin TEXT NOT NULL, state TEXT NOT NULL, request TEXT NOT NULL,"
            " submitted_at REAL NOT NULL, started_at REAL, finished_at REAL,"
            " step INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
            " cancel_requested INTEGER NOT NULL DEFAULT 0, error TEXT, result TEXT);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
        )
        db.execute(
            f"INSERT INTO tasks ({_COLUMNS}) VALUES (1, 'old', 'node', 'queued', ?, 1.0)",
            (_GOOD_REQUEST,),
        )
    journal = open_journal(tmp_path)
    old = journal.get("old")
    assert old is not None and old.owner == "local" and old.placement == {}
    alice, bob = "key:" + "A" * 40, "key:" + "B" * 40
    journal.save([_task(journal, "a1", owner=alice), _task(journal, "b1", owner=bob)])
    journal.save([_done(journal, "a2", 50.0, owner=alice)])
    assert [t.id for t in journal.recent(10, owner=alice)] == ["a2", "a1"]
    assert [t.id for t in journal.recent(10, "queued", alice)] == ["a1"]
    assert [t.id for t in journal.recent(1, owner=alice)] == ["a2"]
    assert [t.id for t in journal.recent(10)] == ["a2", "b1", "a1", "old"]
    journal.close()
    reopened = Journal(path)
    assert reopened.get("a1").owner == alice  # type: ignore[union-attr]
    reopened.close()


# --- a full disk ----------------------------------------------------------------------


def test_disk_full_on_save_commits_nothing_until_there_is_room(tmp_path):
    journal = open_journal(tmp_path)
    journal.save([_task(journal, "before")])
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
    journal._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now "full"
    batch = [_task(journal, f"b{i}", prompt="y" * 2000) for i in range(40)]
    with pytest.raises(StorageError, match="full"):
        journal.save(batch)
    assert all(journal.get(t.id) is None for t in batch)  # none of the batch, not a part
    assert [t.id for t in journal.recent(100)] == ["before"]
    assert not journal.writable()
    journal._db.execute(f"PRAGMA max_page_count = {pages * 100}")  # room again
    assert journal.writable()
    journal.save(batch)
    journal.close()
    reopened = Journal(tmp_path / "journal.sqlite3")
    assert len(reopened.recent(100)) == 41
    reopened.close()


@pytest.mark.parametrize("failing_write", [2, 6])  # mid-image, the metadata's
def test_result_write_on_enospc_leaves_no_file(tmp_path, monkeypatch, failing_write):
    store = ResultStore(tmp_path / "results")
    real_write, calls = os.write, []

    def short_then_full(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == failing_write:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:16]))  # short writes: the image takes 5 calls

    monkeypatch.setattr(results_module.os, "write", short_then_full)
    with pytest.raises(OSError) as caught:
        store.write(TaskId("t"), b"\x89PNG" + bytes(64), {"task": "t"})
    assert caught.value.errno == errno.ENOSPC
    assert sorted(os.listdir(store.directory)) == []
    monkeypatch.undo()
    store.write(TaskId("t"), b"\x89PNG" + bytes(64), {"task": "t"})
    assert store.png("t") == b"\x89PNG" + bytes(64) and store.meta("t") == {"task": "t"}


# --- retention ------------------------------------------------------------------------


def _finished_with_files(tmp_path: Path, sizes: list[int]) -> DiskStore:
    journal = open_journal(tmp_path)
    store = DiskStore(journal, ResultStore(tmp_path / "results"))
    for i, size in enumerate(sizes):  # t0 is the oldest
        journal.save([_done(journal, f"t{i}", 1000.0 + i)])
        store.results.write(TaskId(f"t{i}"), bytes(size), {"task": f"t{i}"})
    return store


def test_retention_by_bytes_removes_the_oldest_first(tmp_path):
    store = _finished_with_files(tmp_path, [4000, 1000, 1000, 1000, 1000])
    queued = _task(store.journal, "queued")
    store.journal.save([queued])
    store.results.write(queued.id, bytes(500), {})  # counts, but is not retention's to take
    per_task = store.results.sizes()["t1"][0]
    limits = RetentionLimits(max_results=100, max_age_s=1e9, max_bytes=3 * per_task + 600)
    assert store.apply_retention(limits, now=2000.0) == ["t1", "t0"]
    assert sorted(store.results.sizes()) == ["queued", "t2", "t3", "t4"]
    assert store.journal.get("t0") is None and store.journal.get("queued") is not None
    assert store.results.usage()[1] <= limits.max_bytes
    unlimited = RetentionLimits(max_results=100, max_age_s=1e9, max_bytes=0)
    assert store.apply_retention(unlimited, now=2000.0) == []
    summary = store.retention_summary(2000.0)
    assert summary["deleted"] == 2 and summary["finished_tasks"] == 3
    assert summary["files"] == 8 and summary["max_bytes"] == 0
    assert summary["oldest_finished_age_s"] == pytest.approx(2000.0 - 1002.0)


def test_retention_by_age_and_of_old_orphans(tmp_path):
    store = _finished_with_files(tmp_path, [100, 100, 100])
    for name, age_s in (("ghost", 7200.0), ("young-ghost", 60.0)):  # no journal row
        store.results.write(TaskId(name), bytes(10), {})
        mtime = 10_000.0 - age_s
        for path in store.results.directory.glob(f"{name}.*"):
            os.utime(path, (mtime, mtime))
    limits = RetentionLimits(max_results=100, max_age_s=8998.5, max_bytes=0)
    assert store.apply_retention(limits, now=10_000.0) == ["t1", "t0"]  # finished 1001, 1000
    assert sorted(store.results.sizes()) == ["t2", "young-ghost"]
    summary = store.retention_summary(10_000.0)
    assert summary["orphans_removed"] == 1 and summary["deleted"] == 2
    assert summary["max_age_s"] == 8998.5 and summary["finished_tasks"] == 1


def test_retention_keeps_going_when_the_journal_is_full(tmp_path):
    store = _finished_with_files(tmp_path, [100, 100])
    store.results.write(TaskId("ghost"), bytes(10), {})
    for path in store.results.directory.glob("ghost.*"):
        os.utime(path, (0.0, 0.0))
    db = store.journal._db
    db.execute("PRAGMA query_only = 1")  # the purge's DELETE cannot be written
    limits = RetentionLimits(max_results=1, max_age_s=1e9, max_bytes=0)
    assert store.apply_retention(limits, now=5000.0) == []
    assert sorted(store.results.sizes()) == ["t0", "t1"]  # the orphan went; rows stay
    db.execute("PRAGMA query_only = 0")
    assert store.apply_retention(limits, now=5000.0) == ["t0"]


# --- the agent itself -----------------------------------------------------------------


def test_agent_on_a_truncated_journal_exits_2_with_one_line(agent_factory):
    agent = agent_factory(policy="local").start()
    request = GenerationRequest(prompt="a red cube", steps=2, width=256, height=256)
    with agent.client() as client:
        for _ in range(2):
            task = client.submit(request, wait=True).get("task")
            client.wait(task)
    assert agent.stop()[0] == 0
    (agent.state_dir / "journal.sqlite3").write_bytes(b"")
    before = len(agent.log())
    with pytest.raises(RuntimeError, match="exited with 2"):
        agent.start()
    assert agent.proc is not None and agent.proc.returncode == 2
    lines = agent.log()[before:].splitlines()
    refusals = [line for line in lines if "journal.sqlite3" in line]
    assert len(refusals) == 1 and "empty" in refusals[0] and "result file" in refusals[0]
    assert not any("Traceback" in line for line in lines)
