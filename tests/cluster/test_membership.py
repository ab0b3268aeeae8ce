"""Membership tables: link and node liveness from last-heard times."""

from __future__ import annotations

import pytest

from ophiura.cluster import membership as m
from ophiura.cluster.state import LinkState, PeerState

DL = 0.7
LINKS = ("ring0", "ring1")

# (case, last heard per (peer, link), now, resumed_at, expected peer state, expected link states)
CASES = [
    ("never heard", {}, 10.0, 0.0, PeerState.UNKNOWN, (LinkState.UNKNOWN, LinkState.UNKNOWN)),
    (
        "both links fresh",
        {"ring0": 9.9, "ring1": 9.95},
        10.0,
        0.0,
        PeerState.UP,
        (LinkState.UP, LinkState.UP),
    ),
    (
        "one link silent: still up",
        {"ring0": 9.9, "ring1": 5.0},
        10.0,
        0.0,
        PeerState.UP,
        (LinkState.UP, LinkState.DOWN),
    ),
    (
        "one link never heard: still up",
        {"ring0": 9.9},
        10.0,
        0.0,
        PeerState.UP,
        (LinkState.UP, LinkState.UNKNOWN),
    ),
    (
        "all silent past deadline: dead",
        {"ring0": 9.2, "ring1": 9.25},
        10.0,
        0.0,
        PeerState.DEAD,
        (LinkState.DOWN, LinkState.DOWN),
    ),
    (
        "exactly at the deadline: up",
        {"ring0": 9.3, "ring1": 9.3},
        10.0,
        0.0,
        PeerState.UP,
        (LinkState.UP, LinkState.UP),
    ),
    (
        "we stalled: fresh deadline from resume",
        {"ring0": 1.0, "ring1": 1.0},
        10.0,
        9.5,
        PeerState.UP,
        (LinkState.UP, LinkState.UP),
    ),
    (
        "we stalled long ago: dead",
        {"ring0": 1.0, "ring1": 1.0},
        10.0,
        5.0,
        PeerState.DEAD,
        (LinkState.DOWN, LinkState.DOWN),
    ),
]


@pytest.mark.parametrize(
    ("case", "heard", "now", "resumed", "peer", "links"), CASES, ids=[c[0] for c in CASES]
)
def test_membership_table(case, heard, now, resumed, peer, links) -> None:  # type: ignore[no-untyped-def]
    mem = m.evaluate({("n2", k): v for k, v in heard.items()}, ["n2"], LINKS, now, DL, resumed)
    assert mem.peers["n2"] == peer
    assert tuple(mem.links[("n2", link)] for link in LINKS) == links


def test_changes_link_down_is_an_event_not_a_death() -> None:
    before = m.evaluate({("n2", "ring0"): 9.9, ("n2", "ring1"): 9.9}, ["n2"], LINKS, 10.0, DL)
    after = m.evaluate({("n2", "ring0"): 10.5, ("n2", "ring1"): 9.9}, ["n2"], LINKS, 10.7, DL)
    assert m.changes(before, after) == [m.MembershipEvent("link-down", "n2", "ring1")]


def test_changes_node_dead_and_back() -> None:
    up = m.evaluate({("n2", "ring0"): 9.9, ("n2", "ring1"): 9.9}, ["n2"], LINKS, 10.0, DL)
    dead = m.evaluate({("n2", "ring0"): 9.9, ("n2", "ring1"): 9.9}, ["n2"], LINKS, 11.0, DL)
    kinds = [e.kind for e in m.changes(up, dead)]
    assert kinds == ["node-dead", "link-down", "link-down"]
    back = m.evaluate({("n2", "ring0"): 12.0, ("n2", "ring1"): 12.0}, ["n2"], LINKS, 12.0, DL)
    assert [e.kind for e in m.changes(dead, back)] == ["node-up", "link-up", "link-up"]
    assert [e.kind for e in m.changes(None, back)] == ["node-up"]


def test_next_expiry_is_the_first_up_link_to_go_down() -> None:
    heard = {("n2", "ring0"): 9.9, ("n2", "ring1"): 9.8, ("n3", "ring0"): 8.0}
    assert m.next_expiry(heard, 10.0, DL) == pytest.approx(9.8 + DL)
    assert m.next_expiry(heard, 10.0, DL, resumed_at=9.95) == pytest.approx(9.95 + DL)
    assert m.next_expiry(heard, 20.0, DL) is None  # everything already down
    up = m.evaluate(heard, ["n2", "n3"], LINKS, 10.0, DL)
    at = m.next_expiry(heard, 10.0, DL)
    assert at is not None
    after = m.evaluate(heard, ["n2", "n3"], LINKS, at + 0.001, DL)
    assert m.changes(up, after) == [m.MembershipEvent("link-down", "n2", "ring1")]


@pytest.mark.parametrize(
    ("votes", "present", "tie", "expected"),
    [
        ({"a": 1, "b": 1, "c": 1}, {"a", "b"}, False, True),
        ({"a": 1, "b": 1, "c": 1}, {"a"}, False, False),
        ({"a": 1, "b": 1}, {"a"}, False, False),
        ({"a": 1, "b": 1}, {"a"}, True, True),
        ({"a": 2, "b": 1, "c": 1}, {"a"}, True, True),
        ({"a": 0, "b": 0}, {"a", "b"}, True, False),
    ],
)
def test_quorum(votes, present, tie, expected) -> None:  # type: ignore[no-untyped-def]
    assert m.has_quorum(votes, present, tie) is expected
