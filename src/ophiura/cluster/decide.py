"""The decision function: `decide(ClusterView) -> list[Action]`, pure.

Resource-driven recovery (Bottomley §2.2): no global leader, no cluster-wide transaction. Every
node asks, per hierarchy, "am I now the highest-priority live node eligible to run it?" and, if
so, acquires the own-able resource first and only then starts it. All nodes see (nearly) the same
heartbeats and apply the same rule, so they agree; where they briefly disagree (a partition), the
own-able resource decides, and the ownership generation in every heartbeat lets the older owner
find out and stop. Hierarchies are decided independently, so they recover in parallel.
"""

from __future__ import annotations

from ophiura.cluster.config import Hierarchy, Timings
from ophiura.cluster.membership import has_quorum
from ophiura.cluster.model import (
    Action,
    Blocked,
    ClearFailures,
    ClearSwitchover,
    ClusterView,
    FenceNode,
    KeepRunning,
    LocalHier,
    NodeEvent,
    RestartResource,
    StartHierarchy,
    StopHierarchy,
)
from ophiura.cluster.state import ACTIVE, HOLDING, HierarchyState, NodeState, PeerState, transition

H = HierarchyState
INELIGIBLE_NODE_STATES = frozenset(
    {NodeState.LEAVING, NodeState.RESTARTING, NodeState.NO_QUORUM, NodeState.STANDBY}
)
GONE = (NodeState.LEAVING, NodeState.RESTARTING)


def fresh_view_hold(timings: Timings) -> float:
    """How long a node that just became eligible again starts nothing (see `decide_hierarchy`).

    While we were ineligible (standby, no quorum, or the hierarchy FAILED here) a peer may have
    decided to start a hierarchy; our view of it lags by up to a heartbeat interval plus
    scheduling, so right after becoming eligible we could take ourselves for the desired owner of
    a hierarchy that a peer is starting this very moment, and start it too (same generation: two
    copies until the tie is seen). Waiting for our next heartbeat (one interval), the peers' next
    cycle and heartbeat (1.5 intervals) and slack for a loaded machine closes that race.
    """
    return max(3 * timings.interval, timings.deadline / 2)


def recent(failures: tuple[float, ...], now: float, window: float) -> int:
    return sum(1 for t in failures if now - t <= window)


def restart_allowed(failures: tuple[float, ...], now: float, h: Hierarchy) -> bool:
    """Restart locally while failures in the window (this one included) stay <= max_restarts."""
    return recent(failures, now, h.restart_window) <= h.max_restarts


def quorate(view: ClusterView) -> bool | None:
    """True/False; None while exactly half the votes are present and the tie-breaker has not
    answered yet (then nothing changes: a survivor must not stop its hierarchies for the few
    milliseconds it takes to ask)."""
    cfg = view.config
    if cfg.quorum != "quorate":
        return True
    present = {p for p, v in view.peers.items() if v.state == PeerState.UP} | {view.me}
    votes = {n: node.votes for n, node in cfg.nodes.items()}
    total = sum(votes.values())
    have = sum(votes.get(n, 0) for n in present)
    if total and 2 * have == total and view.tie_breaker is None:
        return None
    return has_quorum(votes, present, bool(view.tie_breaker))


def node_events(view: ClusterView) -> tuple[NodeState, list[Action]]:
    """Our node's state after this cycle, and the events that take it there."""
    state = view.node_state
    events: list[Action] = []

    def feed(event: str, reason: str) -> None:
        nonlocal state
        state = transition("node", state, event)
        events.append(NodeEvent(reason=reason, event=event))

    if state in GONE:
        return state, events
    if state == NodeState.STARTING and view.settled:
        feed("settled", "startup grace over")
    has_q = quorate(view)
    if has_q is False and state != NodeState.NO_QUORUM and state != NodeState.STARTING:
        feed("quorum_lost", "no majority of the votes (nor half with the tie-breaker)")
    elif has_q and state == NodeState.NO_QUORUM:
        feed("quorum_regained", "a majority of the votes (or half with the tie-breaker)")
    standby = view.me in view.admin.standby
    if standby and state == NodeState.ONLINE:
        feed("standby", "admin: standby")
    elif not standby and state == NodeState.STANDBY:
        feed("online", "admin: online")
    return state, events


def _report_state(view: ClusterView, node: str, h: str) -> tuple[H | None, int]:
    if node == view.me:
        local = view.local.get(h, LocalHier())
        return local.state, local.gen
    rep = view.peers[node].hierarchies.get(h) if node in view.peers else None
    if rep is None:
        return None, 0
    try:
        return H(rep.state), rep.gen
    except ValueError:
        return None, rep.gen  # a newer peer's state we do not know: not a claim we can use


def _alive(view: ClusterView, node: str) -> bool:
    return node == view.me or (node in view.peers and view.peers[node].state == PeerState.UP)


def eligible(view: ClusterView, h: Hierarchy, node: str, my_state: NodeState) -> bool:
    """May `node` run `h` now? Live, listed, not standby/leaving/quorumless, not failed there."""
    if node not in h.nodes or node in view.admin.standby or not _alive(view, node):
        return False
    if node == view.me:
        nstate: str | None = my_state
    else:
        nstate = view.peers[node].node_state
    if nstate in INELIGIBLE_NODE_STATES:
        return False
    state, _ = _report_state(view, node, h.name)
    return state not in (H.FAILED, H.STOP_FAILED)


def desired_owner(view: ClusterView, h: Hierarchy, my_state: NodeState) -> str | None:
    """The node that should run `h`, as every node computes it from the same heartbeats."""
    candidates = [n for n in h.nodes if eligible(view, h, n, my_state)]
    if not candidates:
        return None
    target = view.admin.switchover.get(h.name)
    if target in candidates:
        return target
    active = []
    for n in candidates:
        state, gen = _report_state(view, n, h.name)
        if state in ACTIVE:
            active.append((gen, -h.priority(n), n))
    if active:
        current = max(active)[2]
        top = candidates[0]
        if h.failback == "auto" and top != current:
            top_state = my_state if top == view.me else view.peers[top].node_state
            if top_state == NodeState.ONLINE:
                return top
        return current
    return candidates[0]


def restart_locked(view: ClusterView, h: Hierarchy) -> str | None:
    """Why nobody else may start `h` now: a peer left it running to restart (`--keep-resources`,
    maintenance, frozen) and its `restart_lock` has not run out. None: no such peer.

    Without this a rolling restart is a failover per node: the peers would see the restarting
    node die, fence it or start a second copy, and the service would move (or run twice) each
    time a daemon is upgraded. The lock counts from the peer's last heartbeat, so a node that
    never comes back is treated as dead `restart_lock` seconds later.
    """
    lock = view.config.timings.restart_lock
    if lock <= 0:
        return None
    for peer, pv in sorted(view.peers.items()):
        if pv.node_state != NodeState.RESTARTING:
            continue
        state, _ = _report_state(view, peer, h.name)
        if state not in HOLDING:
            continue
        silent = 0.0 if pv.state == PeerState.UP or pv.heard_at is None else view.now - pv.heard_at
        if silent < lock:
            return f"{peer} restarts with {h.name} left running (locked to it for {lock:g} s)"
    return None


def leaving_event(view: ClusterView, keep_resources: bool) -> str:
    """The node event for SIGTERM: `restart` when anything held here stays running."""
    if keep_resources or view.admin.maintenance:
        return "restart"
    held = (n for n, lh in view.local.items() if lh.state in HOLDING)
    return "restart" if any(n in view.admin.frozen for n in held) else "shutdown"


def shutdown_plan(view: ClusterView, keep_resources: bool) -> list[Action]:
    """What a leaving node does with each hierarchy it holds: stop it, or leave it running.

    Left running: everything under `--keep-resources` (or `stop_on_shutdown = false`), in
    maintenance, and frozen hierarchies, because the operator said nothing is to be touched.
    A stop-failed one is left alone too when kept (a retried stop would touch it).
    """
    out: list[Action] = []
    for name, local in sorted(view.local.items()):
        if local.state not in HOLDING:
            continue
        if view.admin.maintenance:
            out.append(KeepRunning(name, "maintenance mode"))
        elif name in view.admin.frozen:
            out.append(KeepRunning(name, "frozen"))
        elif keep_resources:
            out.append(KeepRunning(name, "--keep-resources"))
        else:
            out.append(StopHierarchy(name, "node shutting down"))
    return out


def _taken_unseen(view: ClusterView, h: str) -> str | None:
    """A live node (us included) whose own-able resource for `h` was taken by a node whose
    ownership we have never heard of: no report we have shows a newer generation than the
    loser's (a taker starts at the highest generation it saw + 1)."""
    known = _next_gen(view, h) - 1
    reports = [(view.me, view.local.get(h, LocalHier()).taken, view.local.get(h, LocalHier()).gen)]
    for peer, pv in view.peers.items():
        rep = pv.hierarchies.get(h)
        if rep is not None and pv.state == PeerState.UP:
            reports.append((peer, rep.taken, rep.gen))
    for node, taken, gen in sorted(reports):
        if taken and gen >= known:
            return node
    return None


def _next_gen(view: ClusterView, h: str) -> int:
    gens = [view.local.get(h, LocalHier()).gen]
    gens += [p.hierarchies[h].gen for p in view.peers.values() if h in p.hierarchies]
    return max(gens) + 1


def _first_failed(h: Hierarchy, failed: tuple[str, ...]) -> str:
    """The failed resource none of whose dependencies failed: restarting it restarts the rest."""
    fs = set(failed)
    for r in failed:
        if not _depends_on_any(h, r, fs - {r}):
            return r
    return failed[0]


def _depends_on_any(h: Hierarchy, r: str, others: set[str]) -> bool:
    seen: set[str] = set()
    todo = list(h.depends(r))
    while todo:
        d = todo.pop()
        if d in others:
            return True
        if d not in seen and d in h.resources:
            seen.add(d)
            todo.extend(h.depends(d))
    return False


def decide_hierarchy(
    view: ClusterView, h: Hierarchy, my_state: NodeState, has_q: bool
) -> list[Action]:
    name = h.name
    local = view.local.get(name, LocalHier())
    if local.busy or view.admin.maintenance or name in view.admin.frozen:
        return []
    if local.state == H.STOP_FAILED:
        return [Blocked(name, "a stop failed here: waiting to be fenced or cleaned up")]
    if local.state == H.FAILED:
        if not local.failures:
            return [ClearFailures(name, "every failure here expired")]
        return []
    if not has_q:
        if local.state in HOLDING:
            return [StopHierarchy(name, "no quorum: stopping (self-fence)", self_fence=True)]
        return [Blocked(name, "no quorum")]
    if local.state == H.RUNNING and local.failed_resources:
        res = _first_failed(h, local.failed_resources)
        if h.ownable in local.failed_resources:
            # Lost the reservation or the epoch: someone else owns the data now. Restarting would
            # preempt them back (a ping-pong split brain): stop at once and stay off (self-fence).
            return [
                StopHierarchy(
                    name,
                    f"lost own-able resource {h.ownable}: self-fencing",
                    failover=True,
                    self_fence=True,
                )
            ]
        if restart_allowed(local.failures, view.now, h) and eligible(view, h, view.me, my_state):
            n = recent(local.failures, view.now, h.restart_window)
            return [
                RestartResource(
                    name, f"{res} failed ({n}/{h.max_restarts} in window)", resource=res
                )
            ]
        return [
            StopHierarchy(
                name, f"{res} failed more than {h.max_restarts} times: failing over", failover=True
            )
        ]
    if local.state not in ACTIVE:
        locked = restart_locked(view, h)
        if locked:
            return [Blocked(name, locked)]
    desired = desired_owner(view, h, my_state)
    actions: list[Action] = []
    switch_target = view.admin.switchover.get(name)
    if switch_target is not None and (
        (switch_target == view.me and local.state == H.RUNNING)
        or (switch_target != desired and view.me == desired and local.state == H.RUNNING)
    ):
        actions.append(ClearSwitchover(name, f"switchover to {switch_target} done or impossible"))
    if local.state in ACTIVE:
        if desired != view.me:
            why = (
                f"switchover to {switch_target}"
                if switch_target == desired
                else f"{desired} should run it"
                if desired
                else "not eligible here"
            )
            actions.append(StopHierarchy(name, why))
        return actions
    if desired != view.me:
        if desired is None and view.me in h.nodes and my_state == NodeState.ONLINE:
            first_live = [n for n in h.nodes if _alive(view, n)]
            if first_live and first_live[0] == view.me:
                actions.append(Blocked(name, "no eligible node can run it"))
        return actions
    # We should run it and do not: make sure nobody else holds it, then acquire and start.
    holders = []
    for peer, pv in view.peers.items():
        state, _ = _report_state(view, peer, name)
        if state not in HOLDING:
            continue
        if pv.state == PeerState.UP:
            holders.append(peer)
        elif not pv.fenced and h.ownable is None and view.config.fenceable(peer):
            holders.append(peer)  # dead, may still write: fence before we start
    for peer in sorted(holders):
        state, _ = _report_state(view, peer, name)
        dead = view.peers[peer].state != PeerState.UP
        if (dead or state == H.STOP_FAILED) and view.config.fenceable(peer):
            if peer not in view.fencing and not view.peers[peer].fenced:
                actions.append(
                    FenceNode(name, f"{peer} may still hold {name} ({state})", node=peer)
                )
            else:
                actions.append(Blocked(name, f"waiting for {peer} to be fenced"))
        else:
            actions.append(Blocked(name, f"waiting for {peer} to stop it ({state})"))
    if holders:
        return actions
    loser = _taken_unseen(view, name)
    if loser:
        # Bottomley: in a partition each side may recover hierarchies, but a race for the
        # own-able resource has one winner. `loser` lost it to a node this side cannot see:
        # that node recovered it, and preempting it back would move it twice.
        return [
            *actions,
            Blocked(
                name,
                f"{loser} lost {h.ownable} to a node we cannot see, which runs it now: "
                "not recovering it twice (cleanup, heal or failure expiry ends this)",
            ),
        ]
    if view.now < local.hold_until:
        # Just cleaned up (or its failures expired) after FAILED here: the peer that took it
        # over meanwhile may not show in our view yet. Starting now could run a second copy.
        return [*actions, Blocked(name, "eligible again: waiting for fresh heartbeats")]
    probing = [
        p
        for p in h.nodes
        if p in view.peers
        and view.peers[p].state == PeerState.UP
        and view.peers[p].node_state == NodeState.STARTING
    ]
    if probing:
        # A starting daemon reports nothing running until its probes are done; it may have been
        # restarted under a running copy (Pacemaker starts nothing before every probe is in).
        return [*actions, Blocked(name, f"waiting for {', '.join(probing)} to finish probing")]
    gen = _next_gen(view, name)
    return [*actions, StartHierarchy(name, f"highest-priority eligible node (gen {gen})", gen=gen)]


def decide(view: ClusterView) -> list[Action]:
    """Every action this node should take now, node events first."""
    my_state, actions = node_events(view)
    if my_state == NodeState.STARTING or my_state in GONE:
        return actions
    has_q = quorate(view)
    if has_q is None:
        return actions  # asking the tie-breaker: hold still
    for h in view.config.hierarchies.values():
        actions.extend(decide_hierarchy(view, h, my_state, has_q))
    return actions
