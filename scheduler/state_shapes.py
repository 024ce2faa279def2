"""The fields the sanity checks read: structural types, so ``state_checks`` needs no import
of the dataclasses (``cluster_state``) that call it, and the import graph stays one-way."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class ClusterLike(Protocol):
    """A ``cluster_state.ClusterState`` as ``state_checks`` reads it."""

    self_index: int
    backlog_steps: np.ndarray
    interval_load_steps: np.ndarray
    capacity_steps_per_s: np.ndarray
    available: np.ndarray
    transfer_s: np.ndarray | None

    def transfer(self) -> np.ndarray: ...


class TaskLike(Protocol):
    """A ``cluster_state.TaskSpec`` as ``state_checks`` reads it."""

    demand_steps: float
    size_mbit: float
