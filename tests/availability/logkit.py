"""Synthetic cluster event logs written by the real code: `NodeDaemon.emit` builds each event,
`Executor._set` performs hierarchy transitions through the real state table, and `EventLog`
writes the daily files. Only the clock is ours, so the format cannot drift from the daemon's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ophiura.cluster import daemon as daemon_module
from ophiura.cluster.daemon import NodeDaemon
from ophiura.cluster.events import EventLog
from ophiura.cluster.executor import Executor
from ophiura.cluster.state import HierarchyState, NodeState


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


class LoggingNode:
    """Stands in for a NodeDaemon (and its Executor): the attributes their methods use."""

    def __init__(self, directory: Path, name: str) -> None:
        self.me = name
        self.events = EventLog(directory, name)
        self.notify = SimpleNamespace(submit=lambda event: None)
        self.metrics = SimpleNamespace(observe=lambda event: None)
        self.hier: dict[str, Any] = {}
        self.events.start()

    def emit(self, kind: str, **fields: Any) -> None:
        NodeDaemon.emit(self, kind, **fields)  # type: ignore[arg-type]

    def set(self, hierarchy: str, event: str) -> None:
        rt = self.hier.setdefault(
            hierarchy,
            SimpleNamespace(state=HierarchyState.STOPPED, spec=SimpleNamespace(name=hierarchy)),
        )
        Executor._set(self, rt, event)  # type: ignore[arg-type]

    def daemon_start(self) -> None:
        """A (re)started daemon: a fresh executor, every hierarchy stopped."""
        self.hier.clear()
        self.emit("node", task="start", state=NodeState.STARTING, desc="incarnation 1")

    def peer_dead(self, peer: str) -> None:
        # as NodeDaemon.build_view emits a membership change
        self.emit(
            "node", peer=peer, link=None, task="node-dead",
            desc="every link silent past the deadline",
        )  # fmt: skip

    def close(self) -> None:
        self.events.stop()


class Cluster:
    """Nodes writing to `<root>/<node>/events-*.jsonl` at times the test chooses."""

    def __init__(self, root: Path, names: list[str], t0: float, mp: pytest.MonkeyPatch) -> None:
        self.t0 = t0
        self.clock = Clock(t0)
        mp.setattr(daemon_module, "time", self.clock)
        self.dirs = {n: root / n for n in names}
        self.nodes = {n: LoggingNode(d, n) for n, d in self.dirs.items()}

    def at(self, offset: float) -> Cluster:
        self.clock.t = self.t0 + offset
        return self

    def __getitem__(self, name: str) -> LoggingNode:
        return self.nodes[name]

    def close(self) -> None:
        for n in self.nodes.values():
            n.close()
