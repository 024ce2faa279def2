"""Finished images on disk: ``<task>.png`` beside ``<task>.json`` (its metadata).

Files are written to a temporary name and renamed, so a crash leaves either the whole
result or nothing. The metadata file is renamed last: its presence means "complete",
which lets recovery mark a task done whose journal commit was lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dedgeai.agent.protocol import TaskId


class ResultStore:
    """One directory of results. Safe to write from the worker and read from the loop."""

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._fsync = fsync

    def _paths(self, task: str) -> tuple[Path, Path]:
        return self.directory / f"{task}.png", self.directory / f"{task}.json"

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            if self._fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)

    def write(self, task: TaskId, png: bytes, meta: dict[str, Any]) -> None:
        png_path, meta_path = self._paths(task)
        self._write(png_path, png)
        self._write(meta_path, json.dumps(meta, sort_keys=True).encode())
        if self._fsync:
            # Make the renames themselves durable.
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def meta(self, task: str) -> dict[str, Any] | None:
        """The metadata of a complete result, or None (absent or torn)."""
        try:
            meta = json.loads(self._paths(task)[1].read_bytes())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def png(self, task: str) -> bytes | None:
        try:
            return self._paths(task)[0].read_bytes()
        except OSError:
            return None

    def delete(self, tasks: Iterable[str]) -> None:
        for task in tasks:
            for path in self._paths(task):
                path.unlink(missing_ok=True)

    def sweep_temporary(self) -> int:
        """Remove half-written files left by a crash; returns how many."""
        removed = 0
        for path in self.directory.glob("*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed
