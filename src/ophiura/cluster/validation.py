"""`validate()`: every problem in a cluster configuration, named, at once.

An operator fixing a cluster file one error per run learns to hate the tool, so nothing here
stops at the first problem: unknown keys (typos), unknown nodes, dependency cycles, unknown or
missing agent kinds, bad timings, links without every node, and the split-brain trap of shared
data with neither an own-able resource nor fencing (Pacemaker's stonith-enabled=false pain).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ophiura.cluster.agents.base import Resource
from ophiura.cluster.config import (
    API_ROLES,
    FAILBACK_MODES,
    NOTIFY_KINDS,
    QUORUM_MODES,
    ClusterConfig,
    FenceDevice,
    Hierarchy,
)


def find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """One dependency cycle as a path (a -> b -> a), or None. Iterative DFS: bounded stack."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in graph:
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path = [root]
        colour[root] = grey
        while stack:
            node, i = stack[-1]
            deps = [d for d in graph.get(node, ()) if d in graph]
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                if colour[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def _known_kind(kind: str) -> str | None:
    """None if an agent exists for `kind`, else why not (the agents registry decides)."""
    from ophiura.cluster import agentload

    return agentload.check_kind(kind)


def _param_problems(res: Resource) -> list[str]:
    """`res`'s params against its agent's meta-data (agents/schema.py): every problem."""
    from ophiura.cluster.agents.ocf_metadata import check_params
    from ophiura.cluster.agents.params import NETNS
    from ophiura.cluster.agents.schema import metadata_for

    md = metadata_for(res.kind)
    return [] if md is None else check_params(md, res.params, {NETNS})


def _check_fence_device(dev: FenceDevice) -> list[str]:
    from ophiura.cluster import fencing

    return fencing.check_device(dev)


def validate(
    cfg: ClusterConfig,
    known_kind: Callable[[str], str | None] = _known_kind,
    check_fence_device: Callable[[FenceDevice], list[str]] = _check_fence_device,
    param_problems: Callable[[Resource], list[str]] = _param_problems,
) -> list[str]:
    """Every problem in the configuration, as sentences. Empty means valid."""
    p: list[str] = [f"unknown key {k} (a typo?)" for k in cfg.unknown]
    if not cfg.name:
        p.append("cluster.name is missing")
    if len(cfg.secret) < 16:
        p.append(
            "cluster secret is missing or shorter than 16 bytes (cluster.secret or secret_file)"
        )
    if cfg.quorum not in QUORUM_MODES:
        p.append(f"cluster.quorum {cfg.quorum!r} is not one of {', '.join(QUORUM_MODES)}")
    t = cfg.timings
    if not 0.005 <= t.interval <= 10:
        p.append(f"timings.interval {t.interval} s is outside 0.005..10 s")
    if t.deadline < 3 * t.interval:
        p.append(
            f"timings.deadline {t.deadline} s must be at least 3 intervals ({3 * t.interval:g} s)"
        )
    if cfg.watchdog and not (
        1 <= cfg.watchdog_timeout <= 3600 and cfg.watchdog_timeout > t.deadline
    ):
        p.append(
            f"cluster.watchdog_timeout {cfg.watchdog_timeout} s must be 1..3600 s and longer "
            f"than the deadline ({t.deadline} s): a pause the heartbeats forgive must not reset"
        )
    if t.deadline > 120:
        p.append(f"timings.deadline {t.deadline} s is over 120 s")
    if t.startup_grace is not None and t.startup_grace < 0:
        p.append("timings.startup_grace must not be negative")
    if t.restart_lock < 0:
        p.append("timings.restart_lock must not be negative (0: no lock)")
    if not cfg.nodes:
        p.append("no [[nodes]]")
    for n in cfg.nodes.values():
        if not n.name:
            p.append("a node has no name")
        if n.votes < 0:
            p.append(f"node {n.name}: votes must not be negative")
    if len(cfg.links) < 2:
        p.append(
            f"{len(cfg.links)} heartbeat link(s): at least 2 are needed, "
            "so that one lost link is not a failover"
        )
    seen_addr: dict[tuple[str, int], str] = {}
    for link in cfg.links:
        for node, addr in link.addresses.items():
            if node not in cfg.nodes:
                p.append(f"link {link.name}: unknown node {node!r}")
            if addr in seen_addr:
                p.append(f"link {link.name}: {addr[0]}:{addr[1]} is also used by {seen_addr[addr]}")
            seen_addr[addr] = f"{link.name}/{node}"
        for node in cfg.nodes:
            if node not in link.addresses:
                p.append(f"link {link.name}: node {node} has no address on it")
    admins: dict[tuple[str, int], str] = {}
    for n in cfg.nodes.values():
        if n.admin in admins:
            p.append(
                f"node {n.name}: admin address {n.admin[0]}:{n.admin[1]} "
                f"is also node {admins[n.admin]}'s"
            )
        admins[n.admin] = n.name
    p.extend(_validate_api(cfg))
    for h in cfg.hierarchies.values():
        p.extend(_validate_hierarchy(cfg, h, known_kind, param_problems))
    for name, dev in cfg.fence_devices.items():
        if dev.agent == "exec" and not dev.command:
            p.append(f"fence device {name}: agent 'exec' needs a command")
        if not dev.agent:
            p.append(f"fence device {name}: no agent")
        else:
            p.extend(check_fence_device(dev))
    for node, levels in cfg.fence_levels.items():
        if node not in cfg.nodes:
            p.append(f"fencing level for unknown node {node!r}")
        for devs in levels:
            p.extend(
                f"fencing level for {node}: unknown device {d!r}"
                for d in devs
                if d not in cfg.fence_devices
            )
    for i, nf in enumerate(cfg.notifiers):
        if nf.kind not in NOTIFY_KINDS:
            p.append(f"notify[{i}]: kind {nf.kind!r} is not one of {', '.join(NOTIFY_KINDS)}")
        elif not nf.target:
            what = {"command": "command", "webhook": "url"}.get(nf.kind, "to")
            p.append(f"notify[{i}]: no {what}")
    if cfg.quorum == "quorate" and sum(n.votes for n in cfg.nodes.values()) == 0:
        p.append("quorate mode with zero votes in total")
    return p


def _validate_api(cfg: ClusterConfig) -> list[str]:
    """The REST API (ophiura.web): addresses apart from the admin API, well-formed user tokens."""
    p: list[str] = []
    for n in cfg.nodes.values():
        if cfg.http_address(n.name) == n.admin:
            p.append(f"node {n.name}: http address {n.admin[0]}:{n.admin[1]} is its admin address")
    for u in cfg.api_users.values():
        if len(u.token_sha256) != 64 or any(c not in "0123456789abcdef" for c in u.token_sha256):
            p.append(f"api user {u.name}: token_sha256 must be 64 hex digits (a SHA-256)")
        if u.role not in API_ROLES:
            p.append(f"api user {u.name}: role {u.role!r} is not one of {', '.join(API_ROLES)}")
    return p


def _validate_hierarchy(
    cfg: ClusterConfig,
    h: Hierarchy,
    known_kind: Callable[[str], str | None],
    param_problems: Callable[[Resource], list[str]],
) -> list[str]:
    p: list[str] = []
    w = f"hierarchy {h.name or '?'}"
    if not h.name:
        p.append("a hierarchy has no name")
    if not h.nodes:
        p.append(f"{w}: no nodes (priority list)")
    for n in h.nodes:
        if n not in cfg.nodes:
            p.append(f"{w}: unknown node {n!r} in its priority list")
    if len(set(h.nodes)) != len(h.nodes):
        p.append(f"{w}: a node appears twice in its priority list")
    if not h.resources:
        p.append(f"{w}: no resources")
    for name, spec in h.resources.items():
        r = spec.resource
        if not name:
            p.append(f"{w}: a resource has no name")
        if not r.kind:
            p.append(f"{w}: resource {name}: no kind (agent)")
        else:
            why = known_kind(r.kind)
            if why:
                p.append(f"{w}: resource {name}: {why}")
            else:
                p.extend(f"{w}: resource {name} ({r.kind}): {x}" for x in param_problems(r))
        for dep in spec.depends_on:
            if dep not in h.resources:
                p.append(f"{w}: resource {name} depends on unknown resource {dep!r}")
        for key in ("monitor_interval", "monitor_timeout", "start_timeout", "stop_timeout"):
            if getattr(r, key) <= 0:
                p.append(f"{w}: resource {name}: {key} must be positive")
    cycle = find_cycle({n: s.depends_on for n, s in h.resources.items()})
    if cycle:
        p.append(f"{w}: dependency cycle {' -> '.join(cycle)}")
    if h.ownable is not None:
        if h.ownable not in h.resources:
            p.append(f"{w}: own-able resource {h.ownable!r} is not one of its resources")
        elif h.resources[h.ownable].depends_on:
            p.append(
                f"{w}: own-able resource {h.ownable} must depend on nothing (it is acquired first)"
            )
    if h.failback not in FAILBACK_MODES:
        p.append(f"{w}: failback {h.failback!r} is not one of {', '.join(FAILBACK_MODES)}")
    if h.max_restarts < 0:
        p.append(f"{w}: max_restarts must not be negative")
    if h.restart_window <= 0 or h.failure_expiry <= 0:
        p.append(f"{w}: restart_window and failure_expiry must be positive")
    if h.shared_data and h.ownable is None and not cfg.allow_unfenced:
        unfenced = [n for n in h.nodes if not cfg.fenceable(n)]
        if unfenced:
            p.append(
                f"{w}: shared data with no own-able resource and no fencing for "
                f"{', '.join(unfenced)}: split brain could corrupt it "
                "(add ownable = ..., fencing levels, or cluster.allow_unfenced = true)"
            )
    return p
