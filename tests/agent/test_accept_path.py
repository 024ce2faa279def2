"""The accept path's shortcuts keep the agent's promises: the journal's WAL is folded in by
the loop (not inside a commit) without losing a commit, and a reused status body never
hides a change a client just made."""

from __future__ import annotations

import sqlite3

from dedgeai.agent.node.journal import AUTOCHECKPOINT_PAGES, BUSY_CHECKPOINT_COMMITS, Journal
from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.tasks import Started, TaskRecord, apply
from dedgeai.models.backend import GenerationRequest


def _record(journal: Journal, name: str) -> TaskRecord:
    request = GenerationRequest(prompt="a small boat", steps=2, width=256, height=256, seed=1)
    return TaskRecord(TaskId(name), "origin", request, journal.take_seq(), 0.0)


def test_commits_leave_the_wal_to_the_loop_and_checkpoint_folds_it_in(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    assert journal._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTOCHECKPOINT_PAGES
    records = [_record(journal, f"t{i}") for i in range(300)]  # > sqlite's default 1000 pages
    for record in records:
        journal.save([record])
        journal.save([apply(record, Started(1.0))])
    assert journal.uncheckpointed == 600
    assert journal.checkpoint_due(idle=True)
    assert journal.checkpoint_due(idle=False) is (journal.uncheckpointed >= BUSY_CHECKPOINT_COMMITS)
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0

    assert journal.checkpoint() is True
    assert journal.uncheckpointed == 0 and not journal.checkpoint_due(idle=True)
    # Every commit is now in the database file itself: a copy without the WAL has them all.
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(path.read_bytes())
    db = sqlite3.connect(copy)
    states = dict(db.execute("SELECT id, state FROM tasks"))
    db.close()
    assert len(states) == 300 and set(states.values()) == {"running"}
    journal.close()


def test_checkpoint_with_nothing_committed_is_harmless(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    assert journal.checkpoint() is True
    journal.save([_record(journal, "a")])
    assert journal.uncheckpointed == 1 and journal.checkpoint_due(idle=True)
    assert not journal.checkpoint_due(idle=False)
    assert journal.checkpoint() is True
    assert journal.get("a") is not None
    journal.close()


def _unfinished(status: dict) -> int:
    queue = status["queue"]
    return queue["owned"] + (queue["running"] is not None)


def test_status_right_after_each_submit_shows_it(agent_factory):
    """Status bodies are reused while nothing changes: never across a submit or a cancel."""
    agent = agent_factory(emulated_steps_per_second=0.5).start()  # tasks stay queued
    request = GenerationRequest(prompt="a small boat", steps=50, width=256, height=256, seed=1)
    with agent.client(timeout_s=10.0) as client:
        before = _unfinished(client.status())
        ids = []
        for i in range(1, 41):
            accepted = client.submit(request, wait=False)
            ids.append(accepted.get("task"))
            client.status()  # a second status in a row may be the cached body: still right
            assert _unfinished(client.status()) == before + i
        client.cancel(ids[-1])
        assert client.status()["counters"]["cancelled"] >= 1
