"""Output folders checked before any long work: a bad ``--out`` must not cost a run."""

from __future__ import annotations

import tempfile
from pathlib import Path


def unwritable_dir(directory: Path, option: str) -> str | None:
    """Make ``directory`` (with parents) and prove it writable; what is wrong, or None."""
    if directory.exists() and not directory.is_dir():
        return f"{option} {directory} is a file, not a directory"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return f"cannot write into {option} {directory}: {exc.strerror or exc}"
    return None
