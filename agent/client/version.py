"""`dedgeai --version`: the installed package's version, without importing anything heavy."""

from __future__ import annotations

from typing import Annotated

import typer

DISTRIBUTION = "dedgeai"


def version_text() -> str:
    """``dedgeai X.Y.Z`` from the installed distribution's metadata."""
    from importlib import metadata  # ~15 ms: paid by `--version`, not by every command

    try:
        return f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return f"{DISTRIBUTION} (not installed: run from a source tree)"


def version_callback(value: bool) -> None:
    """Eager ``--version`` option callback: print the version and exit 0."""
    if value:
        typer.echo(version_text())
        raise typer.Exit()


VersionOpt = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
]


def root_options(version: VersionOpt = False) -> None:
    """DEdgeAI: text-to-image on a cluster of edge GPUs, scheduled by LAD-TS."""
