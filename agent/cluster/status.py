"""The ``cluster`` section of an agent's ``status``, read from a ``Cluster`` (which never
imports this module: the status is built from the outside, by ``node.status``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dedgeai.agent.cluster.partial_gossip import gossip_status
from dedgeai.agent.node.records import ClusterStatus
from dedgeai.scheduler.stats import percentile

if TYPE_CHECKING:
    from dedgeai.agent.cluster.coordinator import Cluster


def cluster_status(self: Cluster, now: float) -> ClusterStatus:
    """Rows for this agent, every peer slot, and the mDNS finds it does not use."""
    rows = [{"slot": self.self_index, "self": True, "state": "up", **self.body(now)}]
    rows[0]["gossip"] = gossip_status(self, now)  # this box's gossip cost, either mode
    for peer in self.table:
        info = peer.info
        rows.append(
            {
                **info,
                "slot": peer.slot,
                "self": False,
                "state": peer.state.value,
                "endpoint": peer.endpoint,
                "node": peer.node,
                "name": peer.name,
                "silent_s": peer.silent_for(now),
                "rtt_s": peer.rtt_s,
                "error": peer.error,
                "discovered": peer.discovered,
                "key": self.security.key_name(peer.endpoint) if self.security else None,
                **(self.partial.row(peer.slot, now) if self.partial is not None else {}),
            }
        )
    made, decisions = self.decision_summary
    if made != self.decisions_made:  # percentiles only when a decision was added: `status`
        times = np.asarray(self.decision_s) * 1e6  # is asked far more often than that
        decisions = {"count": int(times.size)}
        if times.size:
            decisions.update(
                p50_us=percentile(times, 50),
                p99_us=percentile(times, 99),
                max_us=float(times.max()),
            )
        self.decision_summary = (self.decisions_made, decisions)
    return ClusterStatus(
        self_index=self.self_index,
        n_servers=self.n_slots,
        gossip_interval_s=self.interval_s,
        scheduler=self.host.status(),
        decisions=decisions,
        forwarding={
            **self.forwarding.stats(),
            "forwarded": self.core.counters["forwarded"],
            "reclaimed": self.core.counters["reclaimed"],
            "stealing": self.stealing.stats(self.core.counters["stolen_out"]),
        },
        servers=tuple(sorted(rows, key=lambda r: r["slot"])),
        discovered_unused=tuple({"endpoint": e, **v} for e, v in self.unused.items()),
        probes=_probes(self),
    )


def _probes(self: Cluster) -> dict[str, Any]:
    """pod2's probe counters; an agent that does not probe shows only those it answered."""
    if self.probes is not None:
        return self.probes.stats()
    return {"served": self.probes_served} if self.probes_served else {}
