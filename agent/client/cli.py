"""The ``dedgeai`` command: one typer app, one sub-app or command group per module.

Exit codes (stable, for scripts):
  0 done · 1 unexpected internal error · 2 bad input or configuration · 3 agent busy ·
  4 task failed or cancelled · 5 agent unreachable
"""

from __future__ import annotations

import os

# transformers warns about optional image processors that the text-to-image path never uses.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402

from dedgeai.agent.client import cli_demo, cli_keys, cli_models, cli_sim
from dedgeai.agent.client import cli_tasks as cli_agent

app = typer.Typer(
    name="dedgeai",
    help="DEdgeAI: text-to-image on a cluster of edge GPUs, scheduled by LAD-TS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cli_sim.app, name="sim")
cli_models.register(app)
cli_agent.register(app)
cli_keys.register(app)
cli_demo.register(app)


def main() -> None:
    app()
