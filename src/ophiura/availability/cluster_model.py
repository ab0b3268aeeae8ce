"""Bottomley §4.5: availability of one node (Eq. 2) and of an N-node failover cluster (Eq. 3).

Eq. 3 charges each failure of the node running the service with T_down when every other node is
down too (probability (1 - A)^(N-1)) and with T_recover otherwise. It is an approximation: it
takes the other nodes' state at a failure as independent of the past, and waits for the failed
node's own repair. `simulate.simulate_cluster` measures how far off that is (docs/availability.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ophiura.availability.nines import Availability, restore_time
from ophiura.availability.units import YEAR_S


class ClusterModelError(ValueError):
    """Times or node counts the model cannot take."""


def eq2(t_up: Fraction, t_down: Fraction) -> Fraction:
    """Eq. 2: A = T_up / (T_up + T_down)."""
    if t_up <= 0:
        raise ClusterModelError("uptime (mean time between failures) must be > 0")
    if t_down < 0:
        raise ClusterModelError("downtime (mean time to repair) must be >= 0")
    return t_up / (t_up + t_down)


def eq3(t_up: Fraction, t_down: Fraction, t_recover: Fraction, nodes: int) -> Fraction:
    """Eq. 3: A_N = T_up / (T_up + T_down (1-A)^(N-1) + T_recover (1 - (1-A)^(N-1)))."""
    if nodes < 1:
        raise ClusterModelError(f"{nodes} nodes: a cluster needs at least one")
    if t_recover < 0:
        raise ClusterModelError("recover time must be >= 0")
    a = eq2(t_up, t_down)
    all_down = (1 - a) ** (nodes - 1)
    return t_up / (t_up + t_down * all_down + t_recover * (1 - all_down))


@dataclass(frozen=True)
class ClusterResult:
    nodes: int
    t_up: Fraction
    t_down: Fraction
    t_detect: Fraction
    t_recover: Fraction

    @property
    def t_restore(self) -> Fraction:
        """Bottomley Eq. 1: what a failover costs, T_detect + T_recover."""
        return restore_time(self.t_detect, self.t_recover)

    @property
    def node(self) -> Availability:
        return Availability(eq2(self.t_up, self.t_down))

    @property
    def cluster(self) -> Availability:
        return Availability(eq3(self.t_up, self.t_down, self.t_restore, self.nodes))

    @property
    def downtime_per_failure(self) -> Fraction:
        """Eq. 3's expected outage when the service's node fails."""
        all_down = (1 - self.node.value) ** (self.nodes - 1)
        return self.t_down * all_down + self.t_restore * (1 - all_down)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "uptime_s": float(self.t_up),
            "downtime_s": float(self.t_down),
            "detect_s": float(self.t_detect),
            "recover_s": float(self.t_recover),
            "restore_s": float(self.t_restore),
            "failures_per_year": float(Fraction(YEAR_S) / (self.t_up + self.t_down)),
            "downtime_per_failure_s": float(self.downtime_per_failure),
            "node": self.node.to_json(),
            "eq3": self.cluster.to_json(),
        }


def cluster_availability(
    nodes: int,
    uptime: Fraction,
    downtime: Fraction,
    recover: Fraction,
    detect: Fraction = Fraction(0),
) -> ClusterResult:
    """Eq. 3 with T_recover = detect + recover (Bottomley Eq. 1: T_restore)."""
    if detect < 0:
        raise ClusterModelError("detect time must be >= 0")
    result = ClusterResult(nodes, uptime, downtime, detect, recover)
    _ = result.cluster  # validate now, not when first printed
    return result
