"""The immutable snapshot the decision function reads, and the actions it returns.

Patroni's lesson: build one frozen view per cycle, decide from it with a pure function, then act.
Everything `decide()` may look at is in `ClusterView`; everything it may ask for is an `Action`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ophiura.cluster.config import ClusterConfig
from ophiura.cluster.heartbeat import HierReport
from ophiura.cluster.state import HierarchyState, NodeState, PeerState


@dataclass(frozen=True)
class AdminState:
    """Cluster-wide admin flags, gossiped in heartbeats: the highest (version, origin) wins.

    A switchover entry lives only until the target runs the hierarchy (or cannot): it is a
    request, not a constraint, so nothing is left behind (Pacemaker's `crm_resource --move` pain).
    """

    version: int = 0
    origin: str = ""
    standby: frozenset[str] = frozenset()
    frozen: frozenset[str] = frozenset()
    maintenance: bool = False
    switchover: Mapping[str, str] = field(default_factory=dict)
    cleanup: Mapping[str, int] = field(default_factory=dict)  # hierarchy -> request counter

    def newer_than(self, other: AdminState) -> bool:
        return (self.version, self.origin) > (other.version, other.origin)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "o": self.origin,
            "s": sorted(self.standby),
            "f": sorted(self.frozen),
            "m": self.maintenance,
            "w": dict(self.switchover),
            "c": dict(self.cleanup),
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> AdminState:
        """Parse gossip; ValueError if it is not well formed (the sender is then ignored)."""
        try:
            version, origin = d["v"], d["o"]
            if not isinstance(version, int) or not isinstance(origin, str):
                raise ValueError("bad admin version/origin")
            sw, cl = d.get("w", {}), d.get("c", {})
            if not isinstance(sw, dict) or not isinstance(cl, dict):
                raise ValueError("bad switchover or cleanup table")
            return cls(
                version=version,
                origin=origin,
                standby=frozenset(str(x) for x in d.get("s", [])),
                frozen=frozenset(str(x) for x in d.get("f", [])),
                maintenance=bool(d.get("m", False)),
                switchover={str(k): str(v) for k, v in sw.items()},
                cleanup={str(k): int(v) for k, v in cl.items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad admin state: {exc}") from exc


@dataclass(frozen=True)
class PeerView:
    name: str
    state: PeerState
    node_state: str | None = None  # as its last heartbeat said; None if never heard
    hierarchies: Mapping[str, HierReport] = field(default_factory=dict)  # last report, even if dead
    fenced: bool = False  # fenced successfully since it was last heard
    heard_at: float | None = None  # monotonic time of its last heartbeat on any link


@dataclass(frozen=True)
class LocalHier:
    state: HierarchyState = HierarchyState.STOPPED
    gen: int = 0
    failures: tuple[float, ...] = ()  # monotonic times of failures not yet expired
    failed_resources: tuple[str, ...] = ()  # monitor said failed, in dependency order
    busy: bool = False  # an executor operation is in flight
    # Eligible again here only since a cleanup/expiry of FAILED or STOP_FAILED: start nothing
    # before this monotonic time (our view of the peers may predate a takeover; see decide).
    hold_until: float = 0.0
    # Our own-able resource was taken by another node (reservation preempted, epoch stale).
    taken: bool = False


@dataclass(frozen=True)
class ClusterView:
    me: str
    config: ClusterConfig
    now: float  # monotonic
    node_state: NodeState
    settled: bool  # startup grace over: we have heard whoever is there to hear
    peers: Mapping[str, PeerView]
    local: Mapping[str, LocalHier]
    admin: AdminState = AdminState()
    tie_breaker: bool | None = False  # quorate mode: None = asked, no answer yet
    fencing: frozenset[str] = frozenset()  # fence operations in flight


@dataclass(frozen=True)
class Action:
    hierarchy: str = ""
    reason: str = ""


@dataclass(frozen=True)
class NodeEvent(Action):
    """Feed `event` to our node's state table (settled, standby, online, quorum_*)."""

    event: str = ""


@dataclass(frozen=True)
class StartHierarchy(Action):
    """Acquire the own-able resource, then start the rest bottom-up, as generation `gen`."""

    gen: int = 0


@dataclass(frozen=True)
class StopHierarchy(Action):
    """Stop top-down, own-able last. `failover`: we give up here (FAILED, ineligible).
    `self_fence`: we lost the right to run it (own-able resource or quorum): the watchdog,
    if any, stops being kicked until this stop completes."""

    failover: bool = False
    self_fence: bool = False


@dataclass(frozen=True)
class RestartResource(Action):
    resource: str = ""


@dataclass(frozen=True)
class FenceNode(Action):
    node: str = ""


@dataclass(frozen=True)
class ClearFailures(Action):
    """Every failure here expired: FAILED -> STOPPED, eligible again."""


@dataclass(frozen=True)
class ClearSwitchover(Action):
    """The switchover request is fulfilled or moot: drop it from the admin state."""


@dataclass(frozen=True)
class KeepRunning(Action):
    """Shutdown: leave this hierarchy running, unmanaged, for the restarted daemon to adopt."""


@dataclass(frozen=True)
class Blocked(Action):
    """Not an order: why nothing happens (logged once per change, shown in status)."""
