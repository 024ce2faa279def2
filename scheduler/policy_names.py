"""The agent's placement policy names: one list for the config, the CLI and the scheduler.

No imports at all: the client builds its help from these names without loading numpy or
torch (``scheduler/cluster_state.py`` re-exports them for the scheduler).
"""

from __future__ import annotations

POLICIES = (
    "lad",
    "sac",
    "dqn",
    "pod2",
    "greedy",
    "least-loaded",
    "round-robin",
    "random",
    "local",
)
LEARNED = ("lad", "sac", "dqn")  # trained by online learning; torch
HEURISTICS = tuple(p for p in POLICIES if p not in LEARNED)
# Power of d choices: the agent probes d random peers for their load now, then decides
# greedily among them and itself (agent/cluster/probes.py). The policy's name says d.
PROBED = ("pod2",)
DEFAULT_POLICY = "pod2"  # wins the documented benchmark (docs/results_cluster.md, section 1)


def probes_of(policy: str) -> int:
    """Peers a policy probes before each decision: d for ``pod<d>``, 0 for the others."""
    return int(policy[3:]) if policy in PROBED else 0


def policies_text() -> str:
    """The names for a help line: ``lad, sac, dqn (learned), greedy, … or local``."""
    learned = ", ".join(LEARNED) + " (learned)"
    return ", ".join((learned, *HEURISTICS[:-1])) + f" or {HEURISTICS[-1]}"
