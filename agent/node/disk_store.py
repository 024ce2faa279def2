"""The core's view of finished tasks on disk: the journal plus the results directory.

Retention lives here too, because it must keep both in step: finished tasks beyond the
count, age or byte limits lose their journal row first and then their files (oldest
first), and result files that no journal row knows (orphans) are removed once they are old
enough not to belong to a task that is being written right now.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from dedgeai.agent.errors import JournalError
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.journal import Journal
from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.tasks import TaskRecord

log = logging.getLogger("dedgeai.agent")

ORPHAN_AGE_S = 3600.0  # a result file younger than this may belong to a task in flight
SUMMARY_TTL_S = 5.0  # ``retention_summary`` rescans the results directory at most this often


@dataclass(frozen=True)
class RetentionLimits:
    """The ``retention_*`` keys of the configuration (``max_bytes`` 0: no size limit)."""

    max_results: int
    max_age_s: float
    max_bytes: int
    orphan_age_s: float = ORPHAN_AGE_S

    @classmethod
    def from_config(cls, config: AgentConfig) -> RetentionLimits:
        return cls(
            config.retention_max_results, config.retention_max_age_s, config.retention_max_bytes
        )


class DiskStore:
    """The core's view of finished tasks: the journal plus the results directory."""

    def __init__(self, journal: Journal, results: ResultStore) -> None:
        self.journal, self.results = journal, results
        self.limits: RetentionLimits | None = None  # those of the last retention pass
        self.deleted_total = 0  # finished tasks deleted by retention since start
        self.orphans_removed_total = 0
        # (when, files, bytes, finished tasks, oldest finished_at), rescanned after SUMMARY_TTL_S
        self._usage: tuple[float, int, int, int, float | None] | None = None

    def finished(self, task: str) -> TaskRecord | None:
        record = self.journal.get(task)
        return record if record is not None and record.state.finished else None

    def png(self, task: str) -> bytes | None:
        return self.results.png(task)

    def result_meta(self, task: str) -> dict[str, Any] | None:
        return self.results.meta(task)

    def recent(self, limit: int, state: str | None, owner: str | None = None) -> list[TaskRecord]:
        return self.journal.recent(limit, state, owner)

    def take_seq(self) -> int:
        return self.journal.take_seq()

    # --- retention -------------------------------------------------------------------

    def apply_retention(self, limits: RetentionLimits, now: float) -> list[TaskId]:
        """Delete what the limits no longer keep; returns the finished tasks deleted.

        Journal rows go first, then their files: a crash in between leaves orphans, which
        a later pass removes. A journal that cannot be written (full disk) skips the rows
        this time but orphans are still removed, which frees space.
        """
        self.limits = limits
        try:
            sizes = self.results.sizes()
        except OSError as exc:
            log.warning("retention: cannot read the results directory: %s", exc)
            return []
        try:
            gone = self.journal.purge(
                limits.max_results,
                limits.max_age_s,
                now,
                max_bytes=limits.max_bytes,
                sizes={task: size for task, (size, _) in sizes.items()},
            )
        except (JournalError, sqlite3.Error) as exc:  # e.g. a full disk: next pass
            log.warning("retention: cannot purge the journal now: %s", exc)
            gone = []
        try:
            self.results.delete(gone)
            orphans = self.results.orphans(self.journal.ids(), now, limits.orphan_age_s)
            self.results.delete(orphans)
        except OSError as exc:  # files left behind are orphans for the next pass
            log.warning("retention: cannot delete result files: %s", exc)
            orphans = []
        self.deleted_total += len(gone)
        self.orphans_removed_total += len(orphans)
        self._usage = None
        if gone or orphans:
            log.info(
                "retention: deleted %d finished task(s) and %d orphaned result(s)",
                len(gone),
                len(orphans),
            )
        return gone

    def retention_summary(self, now: float) -> dict[str, Any]:
        """For ``status``: what is kept, the limits, and what retention removed so far."""
        if self._usage is None or now - self._usage[0] > SUMMARY_TTL_S:
            try:  # out of fds or a failing disk: status still answers, with the last figures
                counts = self.journal.counts()
                finished = sum(counts.get(state, 0) for state in ("done", "failed", "cancelled"))
                usage = self.results.usage()
                self._usage = (now, *usage, finished, self.journal.oldest_finished_at())
            except (OSError, JournalError, sqlite3.Error) as exc:
                log.warning("retention summary unavailable: %s", exc)
                if self._usage is None:
                    return {"error": str(exc)}
        _, files, total, finished, oldest = self._usage
        limits = self.limits
        return {
            "finished_tasks": finished,
            "files": files,
            "bytes": total,
            "oldest_finished_age_s": None if oldest is None else max(0.0, now - oldest),
            "max_results": None if limits is None else limits.max_results,
            "max_age_s": None if limits is None else limits.max_age_s,
            "max_bytes": None if limits is None else limits.max_bytes,
            "deleted": self.deleted_total,
            "orphans_removed": self.orphans_removed_total,
        }
