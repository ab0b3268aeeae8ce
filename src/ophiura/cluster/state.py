"""Every state machine of the cluster, as tables (h11's `_state.py` shape).

Everything that can change a node's, a peer's, a link's, a hierarchy's or a resource's state
lives in this file: `TRANSITIONS[state][event] -> new state`. An event with no entry is a bug in
the caller (the executor or the daemon), so `transition()` raises `IllegalTransition` instead of
ignoring it: a cluster that silently drops "stop_failed" is a cluster that fences without
explanation. `docs/cluster.md` draws these tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar


class IllegalTransition(Exception):
    """An event arrived in a state whose table has no entry for it."""

    def __init__(self, machine: str, state: str, event: str) -> None:
        super().__init__(f"{machine}: no transition from {state!r} on {event!r}")
        self.machine = machine
        self.state = state
        self.event = event


class NodeState(StrEnum):
    """This daemon's own state, reported in every heartbeat."""

    STARTING = "starting"  # learning membership for one deadline before deciding anything
    ONLINE = "online"
    STANDBY = "standby"  # admin: runs no hierarchy
    NO_QUORUM = "no-quorum"  # quorate mode only: runs nothing, starts nothing
    LEAVING = "leaving"  # SIGTERM received: stopping its hierarchies and going away
    # SIGTERM received, leaving some hierarchies running (--keep-resources, maintenance, frozen):
    # the daemon restarts; peers keep their hands off what it holds for `timings.restart_lock`.
    RESTARTING = "restarting"


class PeerState(StrEnum):
    """What we believe about another node (membership.py computes the events)."""

    UNKNOWN = "unknown"  # never heard since we started
    UP = "up"  # at least one link heard within the deadline
    DEAD = "dead"  # every link silent past the deadline


class LinkState(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class HierarchyState(StrEnum):
    """A hierarchy's state on one node (ours locally; peers' as their heartbeats report)."""

    STOPPED = "stopped"
    STARTING = "starting"  # acquiring the own-able resource, then starting bottom-up
    RUNNING = "running"
    RECOVERING = "recovering"  # restarting a failed resource locally
    STOPPING = "stopping"  # top-down, own-able resource released last
    FAILED = "failed"  # stopped after too many failures here: ineligible until they expire
    STOP_FAILED = "stop-failed"  # a stop failed even forced: unclean, must be fenced


class ResourceState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"  # a monitor or start failed
    STOPPING = "stopping"
    STOP_FAILED = "stop-failed"


NODE_TRANSITIONS: Mapping[NodeState, Mapping[str, NodeState]] = {
    NodeState.STARTING: {
        "settled": NodeState.ONLINE,
        "standby": NodeState.STANDBY,
        "quorum_lost": NodeState.NO_QUORUM,
        "shutdown": NodeState.LEAVING,
        "restart": NodeState.RESTARTING,
    },
    NodeState.ONLINE: {
        "standby": NodeState.STANDBY,
        "quorum_lost": NodeState.NO_QUORUM,
        "shutdown": NodeState.LEAVING,
        "restart": NodeState.RESTARTING,
    },
    NodeState.STANDBY: {
        "online": NodeState.ONLINE,
        "quorum_lost": NodeState.NO_QUORUM,
        "shutdown": NodeState.LEAVING,
        "restart": NodeState.RESTARTING,
    },
    NodeState.NO_QUORUM: {
        "quorum_regained": NodeState.ONLINE,
        "standby": NodeState.NO_QUORUM,
        "online": NodeState.NO_QUORUM,
        "shutdown": NodeState.LEAVING,
        "restart": NodeState.RESTARTING,
    },
    NodeState.LEAVING: {"shutdown": NodeState.LEAVING, "restart": NodeState.LEAVING},
    NodeState.RESTARTING: {"shutdown": NodeState.RESTARTING, "restart": NodeState.RESTARTING},
}

PEER_TRANSITIONS: Mapping[PeerState, Mapping[str, PeerState]] = {
    PeerState.UNKNOWN: {"heard": PeerState.UP, "silent": PeerState.UNKNOWN},
    PeerState.UP: {"heard": PeerState.UP, "silent": PeerState.DEAD},
    PeerState.DEAD: {"heard": PeerState.UP, "silent": PeerState.DEAD},
}

LINK_TRANSITIONS: Mapping[LinkState, Mapping[str, LinkState]] = {
    LinkState.UNKNOWN: {"heard": LinkState.UP, "silent": LinkState.UNKNOWN},
    LinkState.UP: {"heard": LinkState.UP, "silent": LinkState.DOWN},
    LinkState.DOWN: {"heard": LinkState.UP, "silent": LinkState.DOWN},
}

H = HierarchyState
HIERARCHY_TRANSITIONS: Mapping[HierarchyState, Mapping[str, HierarchyState]] = {
    H.STOPPED: {
        "start": H.STARTING,
        "stop": H.STOPPED,
        "fail": H.FAILED,
        "probed": H.RUNNING,  # found wholly running at daemon start (the daemon was restarted)
        "stop_failed": H.STOP_FAILED,  # cleaning up what a probe found failed
    },
    H.STARTING: {
        "started": H.RUNNING,
        "start_failed": H.STOPPED,  # rolled back cleanly; may retry (restart policy)
        "exhausted": H.FAILED,  # rolled back cleanly; too many failures here
        "stop_failed": H.STOP_FAILED,  # the rollback itself failed
    },
    H.RUNNING: {"restart": H.RECOVERING, "stop": H.STOPPING, "failover": H.STOPPING},
    H.RECOVERING: {
        "restarted": H.RUNNING,
        "restart_failed": H.STOPPING,  # give up here: stop everything, fail over
        "stop": H.STOPPING,
        "failover": H.STOPPING,
    },
    H.STOPPING: {
        "stopped": H.STOPPED,
        "exhausted": H.FAILED,  # stopped because we failed it over
        "stop_failed": H.STOP_FAILED,
    },
    H.FAILED: {"expire": H.STOPPED, "cleanup": H.STOPPED, "stop": H.FAILED},
    H.STOP_FAILED: {
        "cleanup": H.STOPPED,  # admin or fencing says it is down after all
        "stop": H.STOPPING,  # try again
    },
}

R = ResourceState
RESOURCE_TRANSITIONS: Mapping[ResourceState, Mapping[str, ResourceState]] = {
    R.STOPPED: {
        "start": R.STARTING,
        "stop": R.STOPPING,
        "probe_running": R.RUNNING,
        "probe_failed": R.FAILED,
    },
    R.STARTING: {"started": R.RUNNING, "start_failed": R.FAILED},
    R.RUNNING: {"monitor_failed": R.FAILED, "stop": R.STOPPING, "monitor_ok": R.RUNNING},
    R.FAILED: {"stop": R.STOPPING, "monitor_failed": R.FAILED},
    R.STOPPING: {"stopped": R.STOPPED, "stop_failed": R.STOP_FAILED},
    R.STOP_FAILED: {"stop": R.STOPPING, "cleanup": R.STOPPED},
}

MACHINES: Mapping[str, Mapping] = {
    "node": NODE_TRANSITIONS,
    "peer": PEER_TRANSITIONS,
    "link": LINK_TRANSITIONS,
    "hierarchy": HIERARCHY_TRANSITIONS,
    "resource": RESOURCE_TRANSITIONS,
}

# States in which a node holds (or may hold) a hierarchy's resources: nobody else may start it.
HOLDING = frozenset({H.STARTING, H.RUNNING, H.RECOVERING, H.STOPPING, H.STOP_FAILED})
# States in which a node offers the hierarchy's service (or is about to).
ACTIVE = frozenset({H.STARTING, H.RUNNING, H.RECOVERING})


S = TypeVar("S", bound=StrEnum)


def transition(machine: str, state: S, event: str) -> S:
    """The next state, or IllegalTransition if the table has no entry."""
    table = MACHINES[machine]
    try:
        return table[state][event]
    except KeyError:
        raise IllegalTransition(machine, str(state), event) from None
