"""Who is alive, from when each peer was last heard on each link: pure functions.

A link silent past the deadline is an *event* (logged and notified), never a failover; a node is
dead only when every link to it is silent past the deadline. After we ourselves stalled (SIGSTOP,
a VM pause, a swap storm: `resumed_at`), silence we could not have heard proves nothing, so every
peer gets one fresh deadline from the moment we resumed instead of being declared dead at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ophiura.cluster.state import LinkState, PeerState


@dataclass(frozen=True)
class Membership:
    """One evaluation: per peer its state, and per (peer, link) the link's state."""

    peers: Mapping[str, PeerState]
    links: Mapping[tuple[str, str], LinkState]

    @property
    def alive(self) -> frozenset[str]:
        return frozenset(p for p, s in self.peers.items() if s == PeerState.UP)


@dataclass(frozen=True)
class MembershipEvent:
    kind: str  # node-up | node-dead | link-up | link-down
    node: str
    link: str = ""


def link_state(
    last_heard: float | None, now: float, deadline: float, resumed_at: float = 0.0
) -> LinkState:
    """UP if heard within `deadline` (measured from `resumed_at` if we stalled since)."""
    if last_heard is None:
        return LinkState.UNKNOWN
    return LinkState.UP if now - max(last_heard, resumed_at) <= deadline else LinkState.DOWN


def next_expiry(
    last_heard: Mapping[tuple[str, str], float],
    now: float,
    deadline: float,
    resumed_at: float = 0.0,
) -> float | None:
    """The earliest moment after `now` at which a link that is up now goes down (None: none
    is up). The daemon wakes then instead of at its next tick: a death is seen the moment the
    deadline passes, not up to half an interval later."""
    ends = [max(t, resumed_at) + deadline for t in last_heard.values()]
    future = [e for e in ends if e >= now]
    return min(future) if future else None


def peer_state(links: Iterable[LinkState]) -> PeerState:
    states = list(links)
    if any(s == LinkState.UP for s in states):
        return PeerState.UP
    if all(s == LinkState.UNKNOWN for s in states):
        return PeerState.UNKNOWN
    return PeerState.DEAD


def evaluate(
    last_heard: Mapping[tuple[str, str], float],
    peers: Iterable[str],
    links: Iterable[str],
    now: float,
    deadline: float,
    resumed_at: float = 0.0,
) -> Membership:
    """The membership implied by last-heard times (monotonic seconds) at `now`."""
    link_names = list(links)
    ls: dict[tuple[str, str], LinkState] = {}
    ps: dict[str, PeerState] = {}
    for peer in peers:
        states = []
        for link in link_names:
            s = link_state(last_heard.get((peer, link)), now, deadline, resumed_at)
            ls[(peer, link)] = s
            states.append(s)
        ps[peer] = peer_state(states)
    return Membership(ps, ls)


def changes(before: Membership | None, after: Membership) -> list[MembershipEvent]:
    """Events between two evaluations. UNKNOWN -> DEAD is not news; UNKNOWN -> UP is."""
    events: list[MembershipEvent] = []
    for peer, state in after.peers.items():
        old = before.peers.get(peer, PeerState.UNKNOWN) if before else PeerState.UNKNOWN
        if old != state:
            if state == PeerState.UP:
                events.append(MembershipEvent("node-up", peer))
            elif state == PeerState.DEAD and old == PeerState.UP:
                events.append(MembershipEvent("node-dead", peer))
    for (peer, link), state in after.links.items():
        old = before.links.get((peer, link), LinkState.UNKNOWN) if before else LinkState.UNKNOWN
        if old == state:
            continue
        if state == LinkState.DOWN and old == LinkState.UP:
            events.append(MembershipEvent("link-down", peer, link))
        elif state == LinkState.UP and old == LinkState.DOWN:
            events.append(MembershipEvent("link-up", peer, link))
    return events


def has_quorum(votes: Mapping[str, int], present: Iterable[str], tie_breaker: bool = False) -> bool:
    """More than half of all votes present; exactly half wins only with the tie-breaker."""
    total = sum(votes.values())
    have = sum(votes.get(n, 0) for n in set(present))
    if total == 0:
        return False
    return 2 * have > total or (2 * have == total and tie_breaker)
