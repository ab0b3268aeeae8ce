"""Failover timing in NodeMetrics.on_cycle, fed views as the decision loop builds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ophiura.cluster.config import parse
from ophiura.cluster.daemon import NodeDaemon
from ophiura.cluster.heartbeat import HierReport
from ophiura.cluster.model import ClusterView, LocalHier, PeerView
from ophiura.cluster.state import HierarchyState, NodeState, PeerState

H = HierarchyState


@pytest.fixture
def daemon(tmp_path: Path) -> NodeDaemon:
    cfg = parse(
        {
            "cluster": {"name": "c", "secret": "s" * 32, "state_dir": str(tmp_path / "{node}")},
            "nodes": [
                {"name": "n1", "admin": "127.0.0.1:1"},
                {"name": "n2", "admin": "127.0.0.1:2"},
            ],
            "links": [{"name": "a", "addresses": {"n1": "127.0.0.1:3", "n2": "127.0.0.1:4"}}],
            "hierarchies": [
                {
                    "name": "web",
                    "nodes": ["n1", "n2"],
                    "resources": [{"name": "app", "kind": "process", "params": {"command": "x"}}],
                }
            ],
        }
    )
    return NodeDaemon(cfg, "n2")  # built, never run: no socket is opened


def view(d: NodeDaemon, now: float, here: HierarchyState, peer: str | None) -> ClusterView:
    """web's state here, and on n1 (up and running it when `peer` == "running")."""
    hiers = {"web": HierReport(peer)} if peer else {}
    state = PeerState.UP if peer else PeerState.DEAD
    return ClusterView(
        me="n2", config=d.cfg, now=now, node_state=NodeState.ONLINE, settled=True,
        peers={"n1": PeerView("n1", state, "online", hiers)},
        local={"web": LocalHier(here)},
    )  # fmt: skip


def failovers(d: NodeDaemon) -> tuple[int, float]:
    h = d.metrics.failover.labels("web")
    return sum(h.counts), h.sum


def test_takeover_from_a_peer_is_a_failover_timed_from_its_last_report(daemon: NodeDaemon) -> None:
    d = daemon
    d.metrics.on_cycle(view(d, 10.0, H.STOPPED, "running"))
    d.metrics.on_cycle(view(d, 11.0, H.STOPPED, "running"))  # last seen running on n1 at 11
    d.metrics.on_cycle(view(d, 13.0, H.STOPPED, None))  # n1 dead
    d.metrics.on_cycle(view(d, 13.5, H.STARTING, None))
    assert failovers(d) == (0, 0.0)
    d.metrics.on_cycle(view(d, 14.25, H.RUNNING, None))
    assert failovers(d) == (1, 3.25)
    d.metrics.on_cycle(view(d, 20.0, H.RUNNING, None))  # still running: counted once
    assert failovers(d) == (1, 3.25)


def test_first_start_and_local_restart_are_not_failovers(daemon: NodeDaemon) -> None:
    d = daemon
    for now, state in [(1.0, H.STOPPED), (2.0, H.STARTING), (3.0, H.RUNNING),
                       (4.0, H.RECOVERING), (5.0, H.RUNNING)]:  # fmt: skip
        d.metrics.on_cycle(view(d, now, state, None))
    assert failovers(d) == (0, 0.0)
    # back to n1 and then here again: that second move is a failover
    d.metrics.on_cycle(view(d, 6.0, H.STOPPED, "running"))
    d.metrics.on_cycle(view(d, 7.0, H.STOPPED, None))
    d.metrics.on_cycle(view(d, 8.5, H.RUNNING, None))
    assert failovers(d) == (1, 2.5)


def test_fencing_events_are_counted_and_timed(daemon: NodeDaemon) -> None:
    m = daemon.metrics
    m.observe({"kind": "fencing", "task": "fence", "peer": "n1"})  # the start: not an action yet
    m.observe({"kind": "fencing", "task": "fenced", "peer": "n1", "elapsed": 1.5, "rc": 0})
    m.observe({"kind": "fencing", "task": "fence-failed", "peer": "n1", "elapsed": 9.0, "rc": 1})
    assert m.fencing.labels("n1", "fenced").value == 1
    assert m.fencing.labels("n1", "failed").value == 1
    assert m.fence_time.labels("n1").sum == 10.5
    assert m.events.labels("fencing").value == 3
