"""A node back from standby starts nothing until it has fresh heartbeats (found by the
multi-host work: `test_live_local.py::test_admin_commands` saw two copies of a hierarchy after
`online`, both started as generation 2, because the returning node decided on a view of its peer
one heartbeat old, from before the peer started the hierarchy)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ophiura.cluster.daemon import NodeDaemon
from ophiura.cluster.model import NodeEvent, StartHierarchy
from ophiura.cluster.state import NodeState

from .kit import config


@pytest.fixture
def daemon(tmp_path: Path) -> NodeDaemon:
    app = {
        "name": "app",
        "kind": "python:tests.cluster.fake_agent:FakeAgent",
        "params": {"dir": str(tmp_path)},
    }
    hier = {"name": "web", "nodes": ["n1", "n2", "n3"], "resources": [app]}
    return NodeDaemon(config(hierarchies=[hier], state_dir=str(tmp_path / "{node}")), "n1")


async def test_back_from_standby_holds_starts(daemon: NodeDaemon) -> None:
    daemon.state = NodeState.STANDBY
    blocked: dict[str, str] = {}
    daemon.apply(NodeEvent(reason="admin: online", event="online"), blocked)
    assert daemon.state == NodeState.ONLINE
    daemon.apply(StartHierarchy("web", "highest-priority eligible node (gen 2)", gen=2), blocked)
    assert "back online" in blocked["web"]
    assert not daemon.executor.hier["web"].busy()
    hold = daemon.online_hold()
    assert 0.3 <= hold <= daemon.cfg.timings.deadline  # a few heartbeats, less than a deadline
    daemon._hold_until = time.monotonic() - 0.001  # the hold is over
    blocked.clear()
    daemon.apply(StartHierarchy("web", "x", gen=2), blocked)
    assert blocked == {} and daemon.executor.hier["web"].busy()  # submitted
    await daemon.executor.shutdown(stop_resources=True, timeout=10)


def test_settling_at_start_and_failover_do_not_hold(daemon: NodeDaemon) -> None:
    blocked: dict[str, str] = {}
    daemon.apply(NodeEvent(reason="startup grace over", event="settled"), blocked)
    assert daemon.state == NodeState.ONLINE and daemon._hold_until == 0.0
