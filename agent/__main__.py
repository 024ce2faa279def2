"""``python -m dedgeai.agent [--config FILE] [--set key=value ...]``: same as ``dedgeai agent run``."""

from __future__ import annotations

import typer

from dedgeai.agent.client.cli_tasks import agent_run


def main() -> None:
    typer.run(agent_run)


if __name__ == "__main__":
    main()
