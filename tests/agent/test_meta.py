"""Meta-tests: every error code documented and mapped, every config key documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from dedgeai.agent.client.cli_tasks import exit_on_errors
from dedgeai.agent.errors import ErrorCode, PeerUnavailable, remote_error
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.node.config import KEYS

DOCS = Path(__file__).resolve().parents[2] / "docs"

EXPECTED_EXIT = {
    ErrorCode.BAD_FRAME: ExitCode.BAD_INPUT,
    ErrorCode.BAD_VERSION: ExitCode.BAD_INPUT,
    ErrorCode.BAD_TYPE: ExitCode.BAD_INPUT,
    ErrorCode.BAD_FIELD: ExitCode.BAD_INPUT,
    ErrorCode.BUSY: ExitCode.BUSY,
    ErrorCode.NOT_FOUND: ExitCode.BAD_INPUT,
    ErrorCode.ALREADY_FINISHED: ExitCode.BAD_INPUT,
    ErrorCode.TASK_FAILED: ExitCode.TASK_FAILED,
    ErrorCode.CANCELLED: ExitCode.TASK_FAILED,
    ErrorCode.SHUTTING_DOWN: ExitCode.BUSY,
    ErrorCode.INTERNAL: ExitCode.INTERNAL,
    ErrorCode.FORBIDDEN: ExitCode.BAD_INPUT,
    ErrorCode.STORAGE: ExitCode.BUSY,
}


def test_every_error_code_is_documented():
    text = (DOCS / "protocol.md").read_text()
    for code in ErrorCode:
        assert f"| `{code.value}` |" in text, code


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_maps_to_its_exit_code(code):
    with pytest.raises(typer.Exit) as caught, exit_on_errors():
        raise remote_error(code.value, "message")
    assert caught.value.exit_code == EXPECTED_EXIT[code]


def test_unreachable_maps_to_5():
    with pytest.raises(typer.Exit) as caught, exit_on_errors():
        raise PeerUnavailable("tcp://127.0.0.1:1", 0.1, 3)
    assert caught.value.exit_code == ExitCode.UNREACHABLE


def test_every_config_key_is_documented():
    text = (DOCS / "agent.md").read_text()
    for key in KEYS:
        assert f"| `{key.name}` |" in text, key.name
