"""Policy checkpoints: a torch file of tensors plus a JSON config, read with ``weights_only``.

``OnlinePolicy.save/load`` (one agent, the daemon's) and ``save_trained/load_trained``
(every agent of a ``dedgeai sim train`` run) share the format; ``select_agent`` slices one
agent out of a simulation checkpoint. A checkpoint for another number of servers or state
layout is refused with a message saying what differs. A tensor holding NaN/inf is never
written, and a file holding one (or that cannot be read) is refused at load as corrupt.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TypeVar

import torch

from dedgeai.scheduler.errors import CheckpointError, CorruptCheckpointError
from dedgeai.scheduler.learner import SlotLearner

CHECKPOINT_FORMAT = "dedgeai-policy/1"
T = TypeVar("T")


@dataclass(frozen=True)
class StateLayout:
    """What a state vector means; a checkpoint only fits a policy with the same layout."""

    n_servers: int
    state_dim: int
    inslot_load_in_state: bool
    state_scaling: bool


def config_from_dict(cls: type[T], data: dict[str, object]) -> T:
    known = {f.name for f in fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
    return cls(**values)


def select_agent(
    state: dict[str, torch.Tensor],
    agent: int,
    n_agents: int,
    per_slot_memory: bool,
    template: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Slice one agent out of agent-stacked tensors (critics are stacked as 2A: both copies).

    ``template`` is a one-agent learner's own state: a tensor already of its shape is shared
    by every agent (LAD-TS's step embedding, [I, E]) and is kept whole, even when I happens
    to equal the number of agents; only the first dimension of the others is sliced.
    """
    out = {}
    for key, value in state.items():
        shared = key in template and tuple(template[key].shape) == tuple(value.shape)
        if shared or value.dim() == 0:
            out[key] = value
        elif key == "memory":
            out[key] = value[:, agent : agent + 1] if per_slot_memory else value[agent : agent + 1]
        elif key.startswith(("sac.critics.", "sac.targets.")):
            out[key] = value[[agent, n_agents + agent]]
        elif value.shape[0] == n_agents:
            out[key] = value[agent : agent + 1]
        else:
            out[key] = value  # a shape the learner refuses at load, with its own message
    return out


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` that hold a NaN or an inf."""
    return [
        name
        for name, value in state.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def describe_nonfinite(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return f"{len(names)} tensor(s) hold NaN/inf ({shown})"


def save_checkpoint(
    path: str | Path, config: dict[str, object], state: dict[str, torch.Tensor]
) -> None:
    """Write tensors + JSON config atomically (a crash never leaves half a checkpoint).

    Refuses (``CheckpointError``, nothing written) when a tensor holds NaN/inf."""
    path = Path(path)
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{path}: not saved: {describe_nonfinite(bad)}")
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": json.dumps(config), "state": state}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        config = json.loads(blob["config"])
        state = dict(blob["state"])
    except Exception as exc:  # torch raises many types for a corrupt file; all mean the same
        raise CorruptCheckpointError(
            f"{path}: not a readable policy checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpointError(
            f"{path}: unknown checkpoint format {config.get('format') if isinstance(config, dict) else None!r}"
        )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"{path}: checkpoint state holds non-tensor values")
    bad = nonfinite_tensors(state)
    if bad:
        raise CorruptCheckpointError(f"{path}: {describe_nonfinite(bad)}")
    return config, state


def save_trained(
    path: str | Path, learner: SlotLearner, method: str, episodes: int, seed: int
) -> None:
    """Checkpoint every agent of a simulation run (``dedgeai sim train``)."""
    env, switches = learner.env_cfg, learner.switches
    config = {
        "format": CHECKPOINT_FORMAT,
        "method": method,
        "n_agents": learner.n_agents,
        "layout": asdict(
            StateLayout(
                env.n_servers,
                learner.state_dim,
                switches.inslot_load_in_state,
                switches.state_scaling,
            )
        ),
        "env": asdict(env),
        "switches": switches.as_dict(),
        "learn": asdict(learner.cfg),
        "episodes": episodes,
        "seed": seed,
        "trained_steps": learner.updates,
    }
    save_checkpoint(path, config, learner.networks_state())


def load_trained(
    path: str | Path, method: str, n_servers: int, state_dim_expected: int
) -> dict[str, torch.Tensor]:
    """Tensors of a ``dedgeai sim train`` checkpoint, checked to fit ``method`` on this system."""
    config, state = load_checkpoint(path)
    if config.get("method") != method:
        raise CheckpointError(
            f"{path}: checkpoint is for method {config.get('method')!r}, not {method!r}"
        )
    layout = config.get("layout", {})
    if layout.get("n_servers") != n_servers or layout.get("state_dim") != state_dim_expected:
        raise CheckpointError(
            f"{path}: checkpoint made for {layout.get('n_servers')} servers and {layout.get('state_dim')} state "
            f"features; this run has {n_servers} servers and {state_dim_expected}"
        )
    if config.get("n_agents") != n_servers:
        raise CheckpointError(
            f"{path}: checkpoint holds {config.get('n_agents')} agents, a simulation needs {n_servers}"
        )
    return state
