"""The sqlite journal and the results directory, on a temporary disk."""

from __future__ import annotations

from dedgeai.agent.node.journal import Journal
from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.tasks import Finished, Started, TaskRecord, TaskState, apply
from dedgeai.models.backend import GenerationRequest


def _record(journal: Journal, name: str, submitted_at: float = 0.0) -> TaskRecord:
    request = GenerationRequest(prompt="p ✓", negative_prompt="n", steps=3, guidance=4.5, seed=9)
    return TaskRecord(TaskId(name), "origin", request, journal.take_seq(), submitted_at)


def test_records_round_trip_and_survive_reopen(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    node = journal.require_node_id()
    first, second = _record(journal, "a"), _record(journal, "b")
    journal.save([first, second])
    journal.save([apply(second, Started(1.0))])
    journal.close()

    reopened = Journal(path, sync="full")
    assert reopened.require_node_id() == node
    assert reopened.get("a") == first
    assert [t.id for t in reopened.unfinished()] == ["a", "b"]
    assert reopened.unfinished()[1].state is TaskState.RUNNING
    assert reopened.take_seq() == 3  # sequence continues after a restart


def test_retention_by_count_and_age(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    done = []
    for i in range(5):
        task = apply(apply(_record(journal, f"t{i}"), Started(i)), Finished(100.0 + i, {"i": i}))
        done.append(task)
    journal.save([*done, _record(journal, "queued")])
    assert set(journal.purge(max_finished=3, max_age_s=1e9, now=200.0)) == {"t0", "t1"}
    assert set(journal.purge(max_finished=10, max_age_s=97.5, now=200.0)) == {"t2"}
    assert journal.get("queued") is not None  # unfinished tasks are never purged
    assert journal.counts() == {"done": 2, "queued": 1}


def test_result_store_is_atomic_and_sweeps_leftovers(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.write(TaskId("t"), b"\x89PNG", {"task": "t", "steps": 2})
    assert store.png("t") == b"\x89PNG" and store.meta("t") == {"task": "t", "steps": 2}
    (tmp_path / "results" / "u.json.tmp").write_bytes(b"{")  # a crash mid-write
    assert store.meta("u") is None and store.sweep_temporary() == 1
    store.delete(["t"])
    assert store.png("t") is None and store.meta("t") is None


def test_journal_uses_wal(tmp_path):
    import sqlite3

    Journal(tmp_path / "j.sqlite3").close()
    mode = sqlite3.connect(tmp_path / "j.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
