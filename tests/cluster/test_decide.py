"""Tables of views -> actions for the pure decision function."""

from __future__ import annotations

from typing import Any

import pytest

from ophiura.cluster import decide as d
from ophiura.cluster.config import parse
from ophiura.cluster.heartbeat import HierReport
from ophiura.cluster.model import (
    Action,
    AdminState,
    Blocked,
    ClearFailures,
    ClearSwitchover,
    FenceNode,
    LocalHier,
    NodeEvent,
    PeerView,
    RestartResource,
    StartHierarchy,
    StopHierarchy,
)
from ophiura.cluster.state import HierarchyState as H
from ophiura.cluster.state import NodeState, PeerState

from .kit import config, config_dict, peer, view

AGENT = "python:tests.cluster.fake_agent:FakeAgent"


def summary(actions: list[Action]) -> list[tuple[str, str]]:
    out = []
    for a in actions:
        match a:
            case NodeEvent():
                out.append(("node", a.event))
            case StartHierarchy():
                out.append(("start", f"{a.hierarchy}@{a.gen}"))
            case StopHierarchy(failover=True):
                out.append(("failover", a.hierarchy))
            case StopHierarchy():
                out.append(("stop", a.hierarchy))
            case RestartResource():
                out.append(("restart", a.resource))
            case FenceNode():
                out.append(("fence", a.node))
            case ClearFailures():
                out.append(("clear", a.hierarchy))
            case ClearSwitchover():
                out.append(("clear-switchover", a.hierarchy))
            case Blocked():
                out.append(("blocked", a.hierarchy))
    return out


CFG = config()
AUTO = parse(
    config_dict(
        hierarchies=[
            {
                "name": "web",
                "nodes": ["n1", "n2", "n3"],
                "failback": "auto",
                "resources": [{"name": "app", "kind": AGENT}],
            }
        ]
    )
)
TWO = parse(
    config_dict(
        hierarchies=[
            {"name": "a", "nodes": ["n1", "n2"], "resources": [{"name": "x", "kind": AGENT}]},
            {"name": "b", "nodes": ["n1", "n3", "n2"], "resources": [{"name": "y", "kind": AGENT}]},
        ]
    )
)
QUORATE = config(quorum="quorate")
QUORATE2 = config(quorum="quorate", nodes=("n1", "n2"))
FENCED = parse(
    {
        **config_dict(
            hierarchies=[
                {
                    "name": "web",
                    "nodes": ["n1", "n2", "n3"],
                    "shared_data": True,
                    "resources": [{"name": "app", "kind": AGENT}],
                }
            ]
        ),
        "fencing": {
            "devices": [{"name": "pdu", "agent": "exec", "command": ["true"]}],
            "levels": [{"node": n, "devices": ["pdu"]} for n in ("n1", "n2", "n3")],
        },
    }
)
OWNABLE = parse(
    config_dict(
        hierarchies=[
            {
                "name": "web",
                "nodes": ["n1", "n2", "n3"],
                "shared_data": True,
                "ownable": "vol",
                "resources": [
                    {"name": "vol", "kind": AGENT},
                    {"name": "app", "kind": AGENT, "depends_on": ["vol"]},
                ],
            }
        ]
    )
)


def failing(n: int, now: float = 1000.0) -> LocalHier:
    return LocalHier(H.RUNNING, 1, tuple(now - i for i in range(n)), ("app",))


CASES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("top priority starts", dict(cfg=CFG), [("start", "web@1")]),
    ("second waits for first", dict(cfg=CFG, me="n2"), []),
    (
        "second takes over from dead first",
        dict(cfg=CFG, me="n2", peers=[peer("n1", alive=False, web="running"), peer("n3")]),
        [("start", "web@2")],
    ),
    ("third waits for second", dict(cfg=CFG, me="n3", peers=[peer("n1", False), peer("n2")]), []),
    (
        "third takes over when both dead",
        dict(cfg=CFG, me="n3", peers=[peer("n1", False), peer("n2", False, web=("running", 4))]),
        [("start", "web@5")],
    ),
    (
        "nothing while another runs it",
        dict(cfg=CFG, me="n2", peers=[peer("n1", web="running"), peer("n3")]),
        [],
    ),
    (
        "manual failback: returning first stays put",
        dict(cfg=CFG, peers=[peer("n2", web=("running", 2)), peer("n3")]),
        [],
    ),
    (
        "auto failback: owner stops for the top node",
        dict(cfg=AUTO, me="n2", peers=[peer("n1"), peer("n3")], local={"web": "running"}),
        [("stop", "web")],
    ),
    (
        "auto failback: top node waits until it stopped",
        dict(cfg=AUTO, peers=[peer("n2", web=("stopping", 2)), peer("n3")]),
        [("blocked", "web")],
    ),
    (
        "auto failback waits while top node is starting",
        dict(
            cfg=AUTO,
            me="n2",
            peers=[peer("n1", node_state="starting"), peer("n3")],
            local={"web": "running"},
        ),
        [],
    ),
    (
        "healed split brain: older generation stops",
        dict(
            cfg=CFG,
            peers=[peer("n2", web=("running", 2)), peer("n3")],
            local={"web": LocalHier(H.RUNNING, 1)},
        ),
        [("stop", "web")],
    ),
    (
        "healed split brain: newer generation stays",
        dict(
            cfg=CFG,
            me="n2",
            peers=[peer("n1", web=("running", 1)), peer("n3")],
            local={"web": LocalHier(H.RUNNING, 2)},
        ),
        [],
    ),
    (
        "switchover: owner stops",
        dict(
            cfg=CFG, local={"web": "running"}, admin=AdminState(1, "n1", switchover={"web": "n3"})
        ),
        [("stop", "web")],
    ),
    (
        "switchover: target waits for owner",
        dict(
            cfg=CFG,
            me="n3",
            peers=[peer("n1", web="stopping"), peer("n2")],
            admin=AdminState(1, "n1", switchover={"web": "n3"}),
        ),
        [("blocked", "web")],
    ),
    (
        "switchover: target starts",
        dict(
            cfg=CFG,
            me="n3",
            peers=[peer("n1", web="stopped"), peer("n2")],
            admin=AdminState(1, "n1", switchover={"web": "n3"}),
        ),
        [("start", "web@2")],
    ),
    (
        "switchover: target running clears request",
        dict(
            cfg=CFG,
            me="n3",
            local={"web": "running"},
            admin=AdminState(1, "n1", switchover={"web": "n3"}),
        ),
        [("clear-switchover", "web")],
    ),
    (
        "switchover to a dead node is moot",
        dict(
            cfg=CFG,
            peers=[peer("n2"), peer("n3", False)],
            local={"web": "running"},
            admin=AdminState(1, "n1", switchover={"web": "n3"}),
        ),
        [("clear-switchover", "web")],
    ),
    (
        "standby: node stops its hierarchies",
        dict(
            cfg=CFG, local={"web": "running"}, admin=AdminState(1, "x", standby=frozenset({"n1"}))
        ),
        [("node", "standby"), ("stop", "web")],
    ),
    (
        "standby peer is not eligible",
        dict(cfg=CFG, me="n2", peers=[peer("n1", node_state="standby"), peer("n3")]),
        [("start", "web@1")],
    ),
    (
        "frozen: nothing moves",
        dict(
            cfg=CFG,
            local={"web": "running"},
            admin=AdminState(1, "x", standby=frozenset({"n1"}), frozen=frozenset({"web"})),
        ),
        [("node", "standby")],
    ),
    ("maintenance: nothing at all", dict(cfg=CFG, admin=AdminState(1, "x", maintenance=True)), []),
    ("local restart", dict(cfg=CFG, local={"web": failing(1)}), [("restart", "app")]),
    ("local restart, third time", dict(cfg=CFG, local={"web": failing(3)}), [("restart", "app")]),
    (
        "restarts exhausted: fail over",
        dict(cfg=CFG, local={"web": failing(4)}),
        [("failover", "web")],
    ),
    (
        "old failures outside the window do not count",
        dict(
            cfg=CFG, local={"web": LocalHier(H.RUNNING, 1, (1000.0, 500.0, 499.0, 498.0), ("app",))}
        ),
        [("restart", "app")],
    ),
    (
        "failed here, failures expired",
        dict(cfg=CFG, local={"web": LocalHier(H.FAILED)}),
        [("clear", "web")],
    ),
    (
        "failed here, failures live",
        dict(cfg=CFG, local={"web": LocalHier(H.FAILED, 1, (999.0,))}),
        [],
    ),
    (
        # test_live_local::test_local_restart_then_failover: n1 FAILED, n2 took over, `cleanup`
        # made n1 eligible again while its view still showed n2 stopped: n1 started a 2nd copy.
        "just cleaned up after FAILED, stale view of the peers: hold",
        dict(cfg=CFG, local={"web": LocalHier(H.STOPPED, 1, hold_until=1000.3)}),
        [("blocked", "web")],
    ),
    (
        "cleaned up, hold over, the peer's takeover now visible: stay off (manual failback)",
        dict(
            cfg=CFG,
            peers=[peer("n2", web="running"), peer("n3")],
            local={"web": LocalHier(H.STOPPED, 1, hold_until=999.9)},
        ),
        [],
    ),
    (
        "cleaned up, hold over, nobody runs it: start",
        dict(cfg=CFG, local={"web": LocalHier(H.STOPPED, 1, hold_until=999.9)}),
        [("start", "web@2")],
    ),
    (
        "next node takes over from a failed one",
        dict(cfg=CFG, me="n2", peers=[peer("n1", web="failed"), peer("n3")]),
        [("start", "web@2")],
    ),
    ("busy: wait for the operation", dict(cfg=CFG, local={"web": LocalHier(busy=True)}), []),
    (
        "starting node decides nothing but settling",
        dict(cfg=CFG, node_state=NodeState.STARTING),
        [("node", "settled"), ("start", "web@1")],
    ),
    ("leaving node decides nothing", dict(cfg=CFG, node_state=NodeState.LEAVING), []),
    (
        "quorate: alone, lose quorum and stop",
        dict(cfg=QUORATE, peers=[peer("n2", False), peer("n3", False)], local={"web": "running"}),
        [("node", "quorum_lost"), ("stop", "web")],
    ),
    (
        "quorate: two of three run",
        dict(cfg=QUORATE, me="n2", peers=[peer("n1", False, web="running"), peer("n3")]),
        [("start", "web@2")],
    ),
    (
        "quorate: quorum regained",
        dict(cfg=QUORATE, node_state=NodeState.NO_QUORUM),
        [("node", "quorum_regained"), ("start", "web@1")],
    ),
    (
        "quorate: exactly half, tie-breaker held",
        dict(cfg=QUORATE2, me="n2", peers=[peer("n1", False, web="running")], tie_breaker=True),
        [("start", "web@2")],
    ),
    (
        "quorate: exactly half, tie-breaker lost",
        dict(cfg=QUORATE2, peers=[peer("n2", False)], local={"web": "running"}, tie_breaker=False),
        [("node", "quorum_lost"), ("stop", "web")],
    ),
    (
        "quorate: exactly half, tie-breaker not answered yet: hold still",
        dict(cfg=QUORATE2, peers=[peer("n2", False)], local={"web": "running"}, tie_breaker=None),
        [],
    ),
    (
        "fencing: fence the dead owner first",
        dict(cfg=FENCED, me="n2", peers=[peer("n1", False, web="running"), peer("n3")]),
        [("fence", "n1")],
    ),
    (
        "fencing: wait while fencing",
        dict(
            cfg=FENCED,
            me="n2",
            peers=[peer("n1", False, web="running"), peer("n3")],
            fencing=frozenset({"n1"}),
        ),
        [("blocked", "web")],
    ),
    (
        "fencing: start once fenced",
        dict(
            cfg=FENCED, me="n2", peers=[peer("n1", False, fenced=True, web="running"), peer("n3")]
        ),
        [("start", "web@2")],
    ),
    (
        "fencing: a dead node that held nothing needs none",
        dict(cfg=FENCED, me="n2", peers=[peer("n1", False, web="stopped"), peer("n3")]),
        [("start", "web@2")],
    ),
    (
        "fencing: live node whose stop failed",
        dict(cfg=FENCED, me="n2", peers=[peer("n1", web="stop-failed"), peer("n3")]),
        [("fence", "n1")],
    ),
    (
        "no fencing: live stop-failed node blocks",
        dict(cfg=CFG, me="n2", peers=[peer("n1", web="stop-failed"), peer("n3")]),
        [("blocked", "web")],
    ),
    (
        "own-able resource fences: no STONITH needed",
        dict(cfg=OWNABLE, me="n2", peers=[peer("n1", False, web="running"), peer("n3")]),
        [("start", "web@2")],
    ),
    (
        "lost own-able resource: self-fence, never restart",
        dict(cfg=OWNABLE, local={"web": LocalHier(H.RUNNING, 1, (999.0,), ("vol", "app"))}),
        [("failover", "web")],
    ),
    (
        "stop failed here: blocked",
        dict(cfg=CFG, local={"web": "stop-failed"}),
        [("blocked", "web")],
    ),
    (
        "independent hierarchies recover in parallel (n2)",
        dict(cfg=TWO, me="n2", peers=[peer("n1", False, a="running", b="running"), peer("n3")]),
        [("start", "a@2")],
    ),
    (
        "independent hierarchies recover in parallel (n3)",
        dict(cfg=TWO, me="n3", peers=[peer("n1", False, a="running", b="running"), peer("n2")]),
        [("start", "b@2")],
    ),
    (
        "no eligible node: the first live node says so",
        dict(
            cfg=CFG,
            peers=[peer("n2", web="failed"), peer("n3", web="failed")],
            local={"web": LocalHier(H.FAILED, 1, (999.0,))},
        ),
        [],
    ),
    (
        "unknown state from a newer peer is not a claim",
        dict(cfg=CFG, me="n2", peers=[peer("n1", False, web="weird"), peer("n3")]),
        [("start", "web@2")],
    ),
]


def taken(name: str, alive: bool = True, gen: int = 1) -> PeerView:
    """A peer whose own-able resource for `web` was taken (preempted) at generation `gen`."""
    return PeerView(
        name,
        PeerState.UP if alive else PeerState.DEAD,
        "online",
        {"web": HierReport("failed", gen, 1, taken=True)},
    )


# Partition n1 | n2 n3 while n2 ran web (gen 1): n1 preempted it (gen 2, unseen by n2, n3).
CASES += [
    (
        "partition: the taken owner's side does not recover it a second time",
        dict(cfg=OWNABLE, me="n3", peers=[peer("n1", False, web=("stopped", 0)), taken("n2")]),
        [("blocked", "web")],
    ),
    (
        "taken by a node we know (newer generation, now dead): recover it",
        dict(cfg=OWNABLE, me="n3", peers=[peer("n1", False, web=("running", 2)), taken("n2")]),
        [("start", "web@3")],
    ),
    (
        "a dead peer's old taken report does not block",
        dict(cfg=OWNABLE, me="n3", peers=[peer("n1", False), taken("n2", alive=False)]),
        [("start", "web@2")],
    ),
    (
        "healed: the taker is heard running it, nothing moves",
        dict(cfg=OWNABLE, me="n3", peers=[peer("n1", web=("running", 2)), taken("n2")]),
        [],
    ),
]


@pytest.mark.parametrize(("case", "kw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide_table(case: str, kw: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert summary(d.decide(view(**kw))) == expected


def test_not_settled_does_nothing() -> None:
    v = view(CFG, node_state=NodeState.STARTING)
    v = type(v)(**{**v.__dict__, "settled": False})
    assert d.decide(v) == []


def test_every_node_agrees_on_the_owner() -> None:
    """Same heartbeats, same answer, whoever computes it."""
    peers = {"n1": peer("n1", False, web="running"), "n2": peer("n2"), "n3": peer("n3")}
    owners = set()
    for me in ("n2", "n3"):
        v = view(CFG, me=me, peers=[p for n, p in peers.items() if n != me])
        owners.add(d.desired_owner(v, CFG.hierarchies["web"], NodeState.ONLINE))
    assert owners == {"n2"}


def test_restart_policy_counts_the_window() -> None:
    h = CFG.hierarchies["web"]
    assert d.restart_allowed((), 0, h)
    assert d.restart_allowed((1.0, 2.0, 3.0), 3.0, h)
    assert not d.restart_allowed((1.0, 2.0, 3.0, 4.0), 4.0, h)
    assert d.restart_allowed((1.0, 2.0, 3.0, 400.0), 400.0, h)


def hiers(*spec: tuple[str, list[str]]):  # type: ignore[no-untyped-def]
    return parse(
        config_dict(
            hierarchies=[
                {"name": h, "nodes": nodes, "resources": [{"name": f"{h}-x", "kind": AGENT}]}
                for h, nodes in spec
            ]
        )
    )


def starts(cfg, me: str, peers: list[PeerView]) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(a.hierarchy for a in d.decide(view(cfg, me=me, peers=peers))
                  if isinstance(a, StartHierarchy))  # fmt: skip


def test_n_into_1_symmetric_and_asymmetric_fall_out_of_priority_lists() -> None:
    """The HATS configurations are only priority lists: no mode switch anywhere."""
    # N-into-1: n3 is the one spare for n1's a and n2's b; both owners die: n3 runs both.
    n_into_1 = hiers(("a", ["n1", "n3"]), ("b", ["n2", "n3"]))
    assert starts(n_into_1, "n1", [peer("n2"), peer("n3")]) == ["a"]
    assert starts(n_into_1, "n3", [peer("n1", False, a="running"), peer("n2", b="running")]) == [
        "a"
    ]
    both_dead = [peer("n1", False, a="running"), peer("n2", False, b="running")]
    assert starts(n_into_1, "n3", both_dead) == ["a", "b"]
    # Symmetric: each node is the other's backup.
    sym = hiers(("a", ["n1", "n2"]), ("b", ["n2", "n1"]))
    assert starts(sym, "n1", [peer("n2"), peer("n3")]) == ["a"]
    assert starts(sym, "n2", [peer("n1"), peer("n3")]) == ["b"]
    assert starts(sym, "n2", [peer("n1", False, a="running"), peer("n3", b=("stopped", 0))]) == [
        "a",
        "b",
    ]
    # Asymmetric (active/standby): n2 runs nothing until n1 dies; n3 is not in the list at all.
    asym = hiers(("a", ["n1", "n2"]))
    assert starts(asym, "n2", [peer("n1"), peer("n3")]) == []
    assert starts(asym, "n2", [peer("n1", False, a="running"), peer("n3")]) == ["a"]
    assert starts(asym, "n3", [peer("n1", False, a="running"), peer("n2", False)]) == []


# -- restart without an outage -----------------------------------------------------------------


def restarting(alive: bool, heard_at: float, **hiers: tuple[str, int] | str) -> PeerView:
    p = peer("n1", alive, node_state="restarting", **hiers)
    return PeerView(p.name, p.state, p.node_state, p.hierarchies, heard_at=heard_at)


RESTART_CASES = [
    (
        "restarting owner, still heard: nobody starts it",
        dict(cfg=CFG, me="n2", peers=[restarting(True, 999.9, web="running"), peer("n3")]),
        [("blocked", "web")],
    ),
    (
        "restarting owner, silent within the lock: nobody starts or fences it",
        dict(cfg=FENCED, me="n2", peers=[restarting(False, 950.0, web="running"), peer("n3")]),
        [("blocked", "web")],
    ),
    (
        "restarting owner silent past the lock: treated as dead (fenced first)",
        dict(cfg=FENCED, me="n2", peers=[restarting(False, 900.0, web="running"), peer("n3")]),
        [("fence", "n1")],
    ),
    (
        "restarting node that held nothing locks nothing",
        dict(cfg=CFG, me="n2", peers=[restarting(False, 999.0, web="stopped"), peer("n3")]),
        [("start", "web@2")],
    ),
    (
        "no lock when restart_lock = 0",
        dict(
            cfg=parse({**config_dict(), "timings": {"restart_lock": 0}}),
            me="n2",
            peers=[restarting(False, 999.0, web="running"), peer("n3")],
        ),
        [("start", "web@2")],
    ),
    (
        "a peer still probing may run it already: wait",
        dict(cfg=CFG, peers=[peer("n2", node_state="starting"), peer("n3")]),
        [("blocked", "web")],
    ),
    (
        "a dead peer is not probing",
        dict(cfg=CFG, peers=[peer("n2", False, node_state="starting"), peer("n3")]),
        [("start", "web@1")],
    ),
    (
        "restarting node decides nothing",
        dict(cfg=CFG, node_state=NodeState.RESTARTING, local={"web": "running"}),
        [],
    ),
]


@pytest.mark.parametrize(
    ("case", "kw", "expected"), RESTART_CASES, ids=[c[0] for c in RESTART_CASES]
)
def test_restart_table(case: str, kw: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert summary(d.decide(view(**kw))) == expected


SHUTDOWN_CASES = [
    ("default: stop what runs here", {}, False, "shutdown", {"a": "stop", "c": "stop"}),
    ("--keep-resources", {}, True, "restart", {"a": "keep", "c": "keep"}),
    ("maintenance", {"maintenance": True}, False, "restart", {"a": "keep", "c": "keep"}),
    ("frozen", {"frozen": frozenset({"a"})}, False, "restart", {"a": "keep", "c": "stop"}),
    (
        "frozen, not held here",
        {"frozen": frozenset({"b"})},
        False,
        "shutdown",
        {"a": "stop", "c": "stop"},
    ),
]


@pytest.mark.parametrize(
    ("case", "admin", "keep", "event", "plan"), SHUTDOWN_CASES, ids=[c[0] for c in SHUTDOWN_CASES]
)
def test_shutdown_plan(
    case: str, admin: dict[str, Any], keep: bool, event: str, plan: dict[str, str]
) -> None:
    """What SIGTERM does: a, c held here (c stop-failed), b stopped here."""
    from ophiura.cluster.model import KeepRunning

    local = {"a": LocalHier(H.RUNNING, 1), "b": LocalHier(), "c": LocalHier(H.STOP_FAILED, 1)}
    v = view(TWO, local=local, admin=AdminState(**admin))  # type: ignore[arg-type]
    assert d.leaving_event(v, keep) == event
    got = {
        a.hierarchy: "keep" if isinstance(a, KeepRunning) else "stop"
        for a in d.shutdown_plan(v, keep)
    }
    assert got == plan
