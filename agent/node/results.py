"""Finished images on disk: ``<task>.png`` beside ``<task>.json`` (its metadata).

Files are written to a temporary name and renamed, so a crash leaves either the whole
result or nothing. The metadata file is renamed last: its presence means "complete",
which lets recovery mark a task done whose journal commit was lost.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

from dedgeai.agent.node.protocol import TaskId


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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # ENOSPC and the like: no half file stays behind
            raise

    def write(self, task: TaskId, png: bytes, meta: dict[str, Any]) -> None:
        """Store a result whole or not at all; OSError (e.g. ENOSPC) leaves no new file."""
        png_path, meta_path = self._paths(task)
        self._write(png_path, png)
        try:
            self._write(meta_path, json.dumps(meta, sort_keys=True).encode())
        except BaseException:
            if not meta_path.exists():  # an image without its metadata is not a result
                png_path.unlink(missing_ok=True)
            raise
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

    def sizes(self) -> dict[str, tuple[int, float]]:
        """Bytes on disk and newest modification time of each task's result files."""
        found: dict[str, tuple[int, float]] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                task, dot, suffix = entry.name.rpartition(".")
                if not dot or suffix not in ("png", "json"):
                    continue  # *.tmp and strangers
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                size, mtime = found.get(task, (0, 0.0))
                found[task] = (size + stat.st_size, max(mtime, stat.st_mtime))
        return found

    def usage(self) -> tuple[int, int]:
        """(result files, their bytes): images and metadata, not temporaries."""
        files = total = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith((".png", ".json")):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat().st_size
                        files += 1
        return files, total

    def orphans(self, known: Container[str], now: float, min_age_s: float) -> list[str]:
        """Tasks with result files but not in ``known``, untouched for ``min_age_s``."""
        return sorted(
            task
            for task, (_, mtime) in self.sizes().items()
            if task not in known and mtime < now - min_age_s
        )
