"""Builders for cluster unit tests: configs from dicts, views from short tables."""

from __future__ import annotations

from typing import Any

from ophiura.cluster.config import ClusterConfig, parse
from ophiura.cluster.heartbeat import HierReport
from ophiura.cluster.model import AdminState, ClusterView, LocalHier, PeerView
from ophiura.cluster.state import HierarchyState, NodeState, PeerState

SECRET = "0123456789abcdef0123456789abcdef"


def config_dict(
    nodes: tuple[str, ...] = ("n1", "n2", "n3"),
    hierarchies: list[dict[str, Any]] | None = None,
    **cluster: Any,
) -> dict[str, Any]:
    """A valid three-node, two-link config on 127.0.0.1 (ports 17000+)."""
    if hierarchies is None:
        hierarchies = [
            {
                "name": "web",
                "nodes": list(nodes),
                "resources": [
                    {"name": "app", "kind": "python:tests.cluster.fake_agent:FakeAgent"},
                ],
            }
        ]
    return {
        "cluster": {"name": "test", "secret": SECRET, **cluster},
        "nodes": [{"name": n, "admin": f"127.0.0.1:{17100 + i}"} for i, n in enumerate(nodes)],
        "links": [
            {
                "name": "ring0",
                "addresses": {n: f"127.0.0.1:{17000 + 2 * i}" for i, n in enumerate(nodes)},
            },
            {
                "name": "ring1",
                "addresses": {n: f"127.0.0.1:{17001 + 2 * i}" for i, n in enumerate(nodes)},
            },
        ],
        "hierarchies": hierarchies,
    }


def config(**kw: Any) -> ClusterConfig:
    return parse(config_dict(**kw))


def peer(
    name: str,
    alive: bool = True,
    node_state: str = "online",
    fenced: bool = False,
    **hiers: tuple[str, int] | str,
) -> PeerView:
    reports = {}
    for h, v in hiers.items():
        state, gen = (v, 1) if isinstance(v, str) else v
        reports[h] = HierReport(state, gen)
    return PeerView(
        name,
        PeerState.UP if alive else PeerState.DEAD,
        node_state,
        reports,
        fenced=fenced,
    )


def view(
    cfg: ClusterConfig,
    me: str = "n1",
    peers: list[PeerView] | None = None,
    local: dict[str, LocalHier | str] | None = None,
    node_state: NodeState = NodeState.ONLINE,
    admin: AdminState | None = None,
    now: float = 1000.0,
    **kw: Any,
) -> ClusterView:
    if peers is None:
        peers = [peer(n) for n in cfg.nodes if n != me]
    loc = {
        k: LocalHier(HierarchyState(v), gen=1) if isinstance(v, str) else v
        for k, v in (local or {}).items()
    }
    return ClusterView(
        me=me,
        config=cfg,
        now=now,
        node_state=node_state,
        settled=True,
        peers={p.name: p for p in peers},
        local=loc,
        admin=admin or AdminState(),
        **kw,
    )
