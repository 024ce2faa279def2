"""`dedgeai demo`: three local agents (being written)."""

import typer


def register(app: typer.Typer) -> None:
    return None
