"""The ``dedgeai`` command: one typer app, one sub-app or command group per module.

Exit codes (stable, for scripts):
  0 done · 1 unexpected internal error · 2 bad input or configuration · 3 agent busy ·
  4 task failed or cancelled · 5 agent unreachable

The client commands stay light (no torch, diffusers or matplotlib: tests/test_light_imports.py):
``sim``, the one sub-app that needs the simulator, is imported only when it is used.
"""

from __future__ import annotations

import importlib
import os

# transformers warns about optional image processors that the text-to-image path never uses.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import click  # noqa: E402
import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from dedgeai.agent.client import cli_demo, cli_keys, cli_models, version  # noqa: E402
from dedgeai.agent.client import cli_tasks as cli_agent  # noqa: E402

SIM_HELP = "Train and compare schedulers on the paper's simulated edge system."


class LazyGroup(TyperGroup):
    """A sub-app whose module (``target``: ``"module:attribute"``, a ``typer.Typer``) is
    imported on first use: listing, running or asking for the help of its commands."""

    target = ""

    def _loaded(self) -> click.Group:
        module, _, attribute = self.target.partition(":")
        group = typer.main.get_group(getattr(importlib.import_module(module), attribute))
        self.no_args_is_help = group.no_args_is_help
        return group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._loaded().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._loaded().get_command(ctx, cmd_name)


def lazy_typer(target: str, help_text: str) -> typer.Typer:
    """A placeholder ``typer.Typer`` for ``add_typer`` that imports ``target`` when used."""
    group = type(f"Lazy[{target}]", (LazyGroup,), {"target": target})
    return typer.Typer(cls=group, help=help_text, no_args_is_help=True)


app = typer.Typer(
    name="dedgeai",
    help="DEdgeAI: text-to-image on a cluster of edge GPUs, scheduled by LAD-TS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.callback()(version.root_options)  # `dedgeai --version`
app.add_typer(lazy_typer("dedgeai.agent.client.cli_sim:app", SIM_HELP), name="sim")
cli_models.register(app)
cli_agent.register(app)
cli_keys.register(app)
cli_demo.register(app)


def main() -> None:
    app()
