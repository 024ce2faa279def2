"""One error tree: every DEdgeAI error has one root, and one function maps it to an exit code."""

from __future__ import annotations

import inspect

import pytest

from dedgeai.agent import errors as agent_errors
from dedgeai.agent.errors import (
    AgentBusy,
    ConfigError,
    DedgeaiError,
    HandshakeFailed,
    JournalError,
    PeerUnavailable,
    RemoteError,
    SecurityError,
    TaskFailed,
    TaskNotFound,
)
from dedgeai.agent.exit_codes import ExitCode, exit_code_of
from dedgeai.models import errors as model_errors
from dedgeai.models.errors import GenerationCancelled, InvalidRequest, PlacementError
from dedgeai.scheduler import errors as scheduler_errors
from dedgeai.scheduler.errors import CorruptCheckpointError


@pytest.mark.parametrize("module", [agent_errors, model_errors, scheduler_errors])
def test_every_error_class_has_the_one_root(module: object) -> None:
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, Exception) and c.__module__ == module.__name__  # type: ignore[attr-defined]
    ]
    assert classes
    for cls in classes:
        assert issubclass(cls, DedgeaiError), cls


def test_a_failed_handshake_is_not_a_configuration_error() -> None:
    assert not issubclass(HandshakeFailed, ConfigError)
    assert issubclass(SecurityError, ConfigError)


@pytest.mark.parametrize(
    ("error", "label", "code"),
    [
        (HandshakeFailed("tcp://h:1", "auth", "refused our key"), "refused", ExitCode.BAD_INPUT),
        (SecurityError("no keys"), "error", ExitCode.BAD_INPUT),
        (ConfigError("bad key"), "error", ExitCode.BAD_INPUT),
        (InvalidRequest("steps 0"), "error", ExitCode.BAD_INPUT),
        (PlacementError("8 GiB"), "does not fit", ExitCode.BAD_INPUT),
        (CorruptCheckpointError("nan"), "error", ExitCode.BAD_INPUT),
        (GenerationCancelled(2, 4), "cancelled", ExitCode.TASK_FAILED),
        (PeerUnavailable("tcp://h:1", 1.0, 2), "unreachable", ExitCode.UNREACHABLE),
        (AgentBusy("busy", "full"), "busy", ExitCode.BUSY),
        (TaskFailed("cancelled", "x"), "cancelled", ExitCode.TASK_FAILED),
        (TaskNotFound("not_found", "x"), "not found", ExitCode.BAD_INPUT),
        (RemoteError("forbidden", "x"), "forbidden", ExitCode.BAD_INPUT),
        (RemoteError("storage", "x"), "storage", ExitCode.BUSY),
        (RemoteError("internal", "x"), "internal", ExitCode.INTERNAL),
        (JournalError("locked"), "error", ExitCode.INTERNAL),
    ],
)
def test_one_mapping_from_any_error_to_an_exit_code(
    error: DedgeaiError, label: str, code: ExitCode
) -> None:
    assert exit_code_of(error) == (label, code)
