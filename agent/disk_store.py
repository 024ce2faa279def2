"""The core's view of finished tasks on disk: the journal plus the results directory."""

from __future__ import annotations

from typing import Any

from dedgeai.agent.journal import Journal
from dedgeai.agent.results import ResultStore
from dedgeai.agent.tasks import TaskRecord


class DiskStore:
    """The core's view of finished tasks: the journal plus the results directory."""

    def __init__(self, journal: Journal, results: ResultStore) -> None:
        self.journal, self.results = journal, results

    def finished(self, task: str) -> TaskRecord | None:
        record = self.journal.get(task)
        return record if record is not None and record.state.finished else None

    def png(self, task: str) -> bytes | None:
        return self.results.png(task)

    def result_meta(self, task: str) -> dict[str, Any] | None:
        return self.results.meta(task)

    def recent(self, limit: int, state: str | None) -> list[TaskRecord]:
        return self.journal.recent(limit, state)

    def take_seq(self) -> int:
        return self.journal.take_seq()
