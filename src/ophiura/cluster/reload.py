"""What a configuration reload may change, decided without I/O: `plan(old, new, held)`.

SIGHUP and `ophiura cluster reload` re-read the file, validate it, and apply what can be applied
without touching a running resource: timings, notifications, fencing devices and levels, new
hierarchies, priorities and failback, restart policy, monitor intervals and timeouts, and any
change to a hierarchy that runs nowhere. A change that would need a resource restarted (its kind,
params, dependencies, the set of resources of a running hierarchy, removing a running
hierarchy) or the daemon restarted (cluster name, secret, nodes, links, quorum mode, watchdog,
web) is refused with the reason, and then nothing at all changes: a half-applied file would be
a configuration nobody wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from ophiura.cluster.config import ClusterConfig, Hierarchy

# Fields applied live; every other field of ClusterConfig needs a daemon restart.
LIVE = frozenset(
    {
        "timings",
        "hierarchies",
        "notifiers",
        "fence_devices",
        "fence_levels",
        "allow_unfenced",
        "stop_on_shutdown",
    }
)
IGNORED = frozenset({"source", "unknown", "digest", "text"})


@dataclass(frozen=True)
class Plan:
    changes: tuple[str, ...]  # what the reload applies, one line each
    refused: tuple[str, ...]  # why it cannot be applied; non-empty: nothing is applied

    @property
    def ok(self) -> bool:
        return not self.refused


def _resource_diff(old: Hierarchy, new: Hierarchy) -> list[str]:
    """Changes to `old` that need one of its resources restarted (it runs somewhere)."""
    out = []
    gone = [r for r in old.resources if r not in new.resources]
    added = [r for r in new.resources if r not in old.resources]
    if gone:
        out.append(f"resources removed: {', '.join(gone)}")
    if added:
        out.append(f"resources added: {', '.join(added)}")
    for r in old.resources:
        if r not in new.resources:
            continue
        a, b = old.resources[r], new.resources[r]
        if a.resource.kind != b.resource.kind:
            out.append(f"{r}: kind {a.resource.kind} -> {b.resource.kind}")
        if a.resource.params != b.resource.params:
            keys = sorted(
                k
                for k in set(a.resource.params) | set(b.resource.params)
                if a.resource.params.get(k) != b.resource.params.get(k)
            )
            out.append(f"{r}: params changed ({', '.join(keys)})")
        if a.depends_on != b.depends_on:
            out.append(f"{r}: depends_on changed")
        if a.resource.monitor_depth != b.resource.monitor_depth:
            out.append(f"{r}: monitor_depth changed")
    if old.ownable != new.ownable:
        out.append(f"ownable {old.ownable} -> {new.ownable}")
    if old.shared_data != new.shared_data:
        out.append("shared_data changed")
    return out


def _live_diff(old: Hierarchy, new: Hierarchy) -> list[str]:
    """The changes to a hierarchy that are applied live (named for the event)."""
    out = []
    for attr in ("nodes", "failback", "max_restarts", "restart_window", "failure_expiry"):
        if getattr(old, attr) != getattr(new, attr):
            out.append(f"{attr} {getattr(old, attr)} -> {getattr(new, attr)}")
    for r, spec in new.resources.items():
        if r not in old.resources:
            continue
        a, b = old.resources[r].resource, spec.resource
        for attr in ("monitor_interval", "monitor_timeout", "start_timeout", "stop_timeout"):
            if getattr(a, attr) != getattr(b, attr):
                out.append(f"{r}.{attr} {getattr(a, attr):g} -> {getattr(b, attr):g}")
    return out


def plan(old: ClusterConfig, new: ClusterConfig, held: Mapping[str, frozenset[str]]) -> Plan:
    """`held`: hierarchy -> the nodes holding it now (this one and peers, as heard)."""
    changes: list[str] = []
    refused: list[str] = []
    for f in fields(ClusterConfig):
        if f.name in IGNORED or f.name == "hierarchies":
            continue
        if getattr(old, f.name) == getattr(new, f.name):
            continue
        if f.name in LIVE:
            changes.append(f"{f.name} changed")
        else:
            refused.append(f"cluster setting {f.name!r} changed: needs a restart of every daemon")
    for name in sorted(set(old.hierarchies) | set(new.hierarchies)):
        where = held.get(name, frozenset())
        on = f" (runs on {', '.join(sorted(where))})" if where else ""
        if name not in old.hierarchies:
            changes.append(f"hierarchy {name} added")
            continue
        a = old.hierarchies[name]
        if name not in new.hierarchies:
            if where:
                refused.append(f"hierarchy {name} removed while it runs{on}: stop it first")
            else:
                changes.append(f"hierarchy {name} removed")
            continue
        b = new.hierarchies[name]
        if a == b:
            continue
        if not where:
            changes.append(f"hierarchy {name} changed (it runs nowhere)")
            continue
        needs = _resource_diff(a, b)
        dropped = sorted(where - set(b.nodes))
        if dropped:
            needs.append(f"nodes no longer lists {', '.join(dropped)}, where it runs")
        if needs:
            refused.append(
                f"hierarchy {name}{on}: {'; '.join(needs)}: needs a restart of its resources"
            )
        else:
            changes.append(f"hierarchy {name}: {', '.join(_live_diff(a, b)) or 'changed'}")
    return Plan(tuple(changes), tuple(refused))
