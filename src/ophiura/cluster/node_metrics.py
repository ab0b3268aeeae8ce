"""What `ophiura node` exposes on `/metrics`: membership, links, hierarchies, failovers, fencing.

Three sources, so that nothing is stored twice:
- scrape-time collectors read the daemon's own state (node, peer and link states, hierarchy and
  resource states, fail counts, heartbeat counters) the way `cluster status` does;
- the heartbeat thread's `LinkStats` owns the RTT histograms and loss counters;
- `observe(event)` (every event the daemon emits passes here) counts what only happens once:
  fencing actions and their durations, resource operations, events per kind;
- `on_cycle(view)` (once per decision cycle) measures failovers: from the last heartbeat that
  showed a hierarchy running on another node to the first cycle that sees it running here. That
  is an upper bound of the service gap as the cluster saw it (the old owner may have died up to
  one heartbeat interval after it last spoke), and it includes detection (the deadline),
  fencing, and the start of every resource.

State-sets (`ophiura_node_state{state=...}`) carry one series per possible state, 1 for the
current one, so a dashboard or an alert never has to guess which states exist.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ophiura import __version__, metrics
from ophiura.cluster.model import ClusterView
from ophiura.cluster.state import HierarchyState, LinkState, NodeState, PeerState, ResourceState

if TYPE_CHECKING:
    from ophiura.cluster.daemon import NodeDaemon

# Failovers take from under a second (a switchover of a light hierarchy) to minutes.
FAILOVER_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
FENCE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


def _state_set(fam: metrics.Family, current: str, states: Any, **labels: str) -> None:
    for s in states:
        fam.add(1 if str(s) == current else 0, **labels, state=str(s))


class NodeMetrics:
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon
        self.started = time.time()
        r = self.registry = metrics.Registry()
        self.events = r.counter(
            "ophiura_events_total", "Cluster events emitted by this node, per kind.", ["kind"]
        )
        self.fencing = r.counter(
            "ophiura_fencing_actions_total",
            "Fencing actions this node performed, per target and result (fenced, failed).",
            ["peer", "result"],
        )
        self.fence_time = r.histogram(
            "ophiura_fencing_duration_seconds",
            "How long each fencing action of this node took.",
            ["peer"],
            FENCE_BUCKETS,
        )
        self.resource_ops = r.counter(
            "ophiura_resource_operations_total",
            "Agent operations reported as events (start, stop, forced-stop, failed monitors), "
            "per result (ok, failed).",
            ["hierarchy", "resource", "op", "result"],
        )
        self.transitions = r.counter(
            "ophiura_hierarchy_transitions_total",
            "Local hierarchy state changes, per new state.",
            ["hierarchy", "state"],
        )
        self.failover = r.histogram(
            "ophiura_failover_duration_seconds",
            "Hierarchies taken over by this node (its _count is the number of failovers): from "
            "the last heartbeat showing the hierarchy running on another node to running here.",
            ["hierarchy"],
            FAILOVER_BUCKETS,
        )
        for h in daemon.cfg.hierarchies:
            self.failover.labels(h)
            for st in (HierarchyState.RUNNING, HierarchyState.FAILED):
                self.transitions.labels(h, str(st))
        for n in daemon.cfg.nodes:
            if n != daemon.me:
                for result in ("fenced", "failed"):
                    self.fencing.labels(n, result)
        r.add_collector(self._collect)
        r.add_collector(daemon.hb.stats.families)
        self._running_here: dict[str, bool] = {}
        self._elsewhere: dict[str, float] = {}  # hierarchy -> monotonic, last heard running there

    # -- fed by the daemon --------------------------------------------------------------------

    def observe(self, event: dict[str, Any]) -> None:
        """Count one emitted event (daemon.emit calls this; main loop only)."""
        kind = str(event.get("kind", ""))
        self.events.labels(kind).inc()
        task = event.get("task")
        if kind == "fencing" and task in ("fenced", "fence-failed"):
            peer = str(event.get("peer", ""))
            self.fencing.labels(peer, "fenced" if task == "fenced" else "failed").inc()
            if isinstance(event.get("elapsed"), int | float):
                self.fence_time.labels(peer).observe(float(event["elapsed"]))
        elif kind == "resource" and task:
            result = "ok" if event.get("rc") == 0 else "failed"
            h, res = str(event.get("hierarchy", "")), str(event.get("resource", ""))
            self.resource_ops.labels(h, res, str(task), result).inc()
        elif kind == "hierarchy" and event.get("state") is not None and event.get("hierarchy"):
            self.transitions.labels(str(event["hierarchy"]), str(event["state"])).inc()

    def on_cycle(self, view: ClusterView) -> None:
        """Failover timing from this cycle's view (pure bookkeeping, no I/O)."""
        heard: dict[str, float] = {}
        for (peer, _link), at in self.d.hb.snapshot().last_heard.items():
            heard[peer] = max(heard.get(peer, 0.0), at)
        for h in self.d.cfg.hierarchies:
            here = view.local[h].state == HierarchyState.RUNNING if h in view.local else False
            for p, pv in view.peers.items():
                rep = pv.hierarchies.get(h)
                if pv.state == PeerState.UP and rep is not None and rep.state == "running":
                    self._elsewhere[h] = max(self._elsewhere.get(h, 0.0), heard.get(p, view.now))
            if here and not self._running_here.get(h, False) and h in self._elsewhere:
                self.failover.labels(h).observe(max(0.0, view.now - self._elsewhere[h]))
            if here:
                self._elsewhere.pop(h, None)  # what ran elsewhere before is now history
            self._running_here[h] = here

    # -- health (the unauthenticated probes of ophiura.web.probes) -----------------------------

    def node_healthy(self) -> tuple[bool, str]:
        """Up and part of the cluster: online or standby (not starting, leaving, no quorum)."""
        state = self.d.state
        return state in (NodeState.ONLINE, NodeState.STANDBY), str(state)

    def running_here(self, hierarchy: str) -> bool:
        """True only for a configured hierarchy whose every resource runs on this node."""
        rt = self.d.executor.hier.get(hierarchy)
        return rt is not None and rt.state == HierarchyState.RUNNING

    # -- scrape -------------------------------------------------------------------------------

    def render(self) -> str:
        return metrics.render(self.registry.collect())

    def _collect(self) -> list[metrics.Family]:
        d = self.d
        F = metrics.Family
        me = d.me
        snap = d.hb.snapshot()
        now = time.monotonic()
        peers = [n for n in d.cfg.nodes if n != me]
        out = [
            F("ophiura_node_info", "This node: cluster, name and ophiura version.", "gauge").add(
                1, cluster=d.cfg.name, node=me, version=__version__
            ),
            F(
                "ophiura_node_start_time_seconds", "When this daemon started (Unix time).", "gauge"
            ).add(self.started),
        ]
        node_state = F("ophiura_node_state", "This node's state (1 for the current one).", "gauge")
        _state_set(node_state, str(d.state), NodeState)
        out.append(node_state)
        view = d.view
        quorate = F("ophiura_quorate", "1 if this node counts itself in a quorum.", "gauge")
        if view is not None:
            from ophiura.cluster.decide import quorate as is_quorate

            quorate.add(1 if is_quorate(view) else 0)
        out.append(quorate)
        out.append(
            F("ophiura_maintenance", "1 while the cluster is in maintenance mode.", "gauge").add(
                1 if d.admin.maintenance else 0
            )
        )
        out.append(F("ophiura_node_standby", "1 for each node the admin put in standby.", "gauge"))
        for n in d.cfg.nodes:
            out[-1].add(1 if n in d.admin.standby else 0, node=n)
        mem = d.mem
        peer_up = F(
            "ophiura_peer_up", "1 if the peer is up (a link heard within the deadline).", "gauge"
        )
        fenced = F(
            "ophiura_peer_fenced", "1 if this node fenced the peer and it is not back.", "gauge"
        )
        link_up = F("ophiura_link_up", "1 if the link to the peer is up.", "gauge")
        heard = F(
            "ophiura_heartbeat_last_heard_seconds",
            "Seconds since the last heartbeat from the peer on the link (absent: never heard).",
            "gauge",
        )
        for p in peers:
            peer_up.add(1 if mem is not None and mem.peers.get(p) == PeerState.UP else 0, peer=p)
            fenced.add(1 if p in d.fenced else 0, peer=p)
            for ln in d.cfg.links:
                up = mem is not None and mem.links.get((p, ln.name)) == LinkState.UP
                link_up.add(1 if up else 0, peer=p, link=ln.name)
                at = snap.last_heard.get((p, ln.name))
                if at is not None:
                    heard.add(max(0.0, now - at), peer=p, link=ln.name)
        out += [peer_up, fenced, link_up, heard]
        out.append(
            F(
                "ophiura_heartbeat_sent_total",
                "Heartbeat datagrams sent (one per link).",
                "counter",
            ).add(snap.sent)
        )
        rejected = F(
            "ophiura_heartbeat_rejected_total",
            "Heartbeats refused, per reason (bad-mac, replay, stale, ...).",
            "counter",
        )
        for reason, n in sorted(snap.rejected.items()):
            rejected.add(n, reason=reason)
        out.append(rejected)
        out += self._hierarchies()
        dropped = F(
            "ophiura_events_dropped_total",
            "Events or notifications dropped (queue full).",
            "counter",
        )
        dropped.add(d.events.dropped, queue="events").add(d.notify.dropped, queue="notifications")
        out.append(dropped)
        return out

    def _hierarchies(self) -> list[metrics.Family]:
        d = self.d
        F = metrics.Family
        state = F(
            "ophiura_hierarchy_state", "A hierarchy's state on this node (1: current).", "gauge"
        )
        here = F("ophiura_hierarchy_running_here", "1 if the hierarchy runs on this node.", "gauge")
        nodes = F(
            "ophiura_hierarchy_running_nodes",
            "Nodes running the hierarchy as this node sees them (1 is healthy, 0 is down, "
            "more than 1 is a split brain).",
            "gauge",
        )
        gen = F(
            "ophiura_hierarchy_generation", "Ownership generation of the hierarchy here.", "gauge"
        )
        frozen = F("ophiura_hierarchy_frozen", "1 if the admin froze the hierarchy.", "gauge")
        blocked = F(
            "ophiura_hierarchy_blocked",
            "1 if this node should act on the hierarchy but may not (the reason is in "
            "`cluster status`).",
            "gauge",
        )
        res_state = F(
            "ophiura_resource_state", "A resource's state on this node (1: current).", "gauge"
        )
        fails = F(
            "ophiura_resource_fail_count",
            "Failures of the resource on this node not yet expired (failure_expiry), as "
            "Pacemaker's fail-count: the decision to restart or move uses it.",
            "gauge",
        )
        counts = d.executor.fail_counts()
        view = d.view
        for h, spec in d.cfg.hierarchies.items():
            rt = d.executor.hier[h]
            _state_set(state, str(rt.state), HierarchyState, hierarchy=h)
            running = rt.state == HierarchyState.RUNNING
            here.add(1 if running else 0, hierarchy=h)
            n = 1 if running else 0
            if view is not None:
                for pv in view.peers.values():
                    rep = pv.hierarchies.get(h)
                    if pv.state == PeerState.UP and rep is not None and rep.state == "running":
                        n += 1
            nodes.add(n, hierarchy=h)
            gen.add(rt.gen, hierarchy=h)
            frozen.add(1 if h in d.admin.frozen else 0, hierarchy=h)
            blocked.add(1 if h in d.blocked else 0, hierarchy=h)
            for r in spec.resources:
                cur = str(rt.resources.get(r, ResourceState.STOPPED))
                _state_set(res_state, cur, ResourceState, hierarchy=h, resource=r)
                fails.add(counts.get(h, {}).get(r, 0), hierarchy=h, resource=r)
        return [state, here, nodes, gen, frozen, blocked, res_state, fails]
