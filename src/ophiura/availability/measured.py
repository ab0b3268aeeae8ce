"""What the cluster really delivered: up and down intervals per hierarchy from the event logs.

Every node writes JSON lines to `events-YYYY-MM-DD.jsonl` (cluster/events.py); the executor
records each hierarchy state change as `{"kind": "hierarchy", "hierarchy": H, "task": EVENT,
"state": NEW, "previous": OLD, "node": N, "time": EPOCH}`. A hierarchy is *up* while it is
`running` on at least one node; `starting`, `recovering` (a resource restarting locally),
`stopping` and the rest are down. Three more events matter:
- a node's own `{"kind": "node", "task": "start"}`: its daemon (re)started with every hierarchy
  stopped (a probe that adopts leftovers is logged as `probed` right after); when it comes
  within a minute of the node's first event (a watchdog may log first), nothing ran there before;
- a peer's `{"kind": "node", "task": "node-dead", "peer": X}`: X stopped sending heartbeats, so
  what ran on X is down. X could not log its own crash; the outage is dated back by
  `deadline` seconds (the heartbeat deadline), never before X's last own event;
- the `previous` field of a node's first state change tells what ran there before it (logs
  rotate away). A node that logged nothing about a hierarchy and no daemon start is *unknown*
  for it; while no node runs the hierarchy and some node is unknown, the time is left out of
  the availability (reported as `unknown_s`) rather than guessed.
Timestamps are read as Decimals, so the nines of a measured availability are exact too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from ophiura.availability.nines import Availability
from ophiura.availability.units import iso

log = logging.getLogger(__name__)

UP = "running"
DEAD = "node-dead"  # our own marker: what ran on a node its peers declared dead
STARTUP_S = 60  # a daemon start this soon after a node's first event begins its log
STALE_S = 86400  # a period that runs this far past the last event gets a warning
UNKNOWN = "unknown"  # a node whose logs say nothing of a hierarchy (yet)


class LogError(ValueError):
    """An event log path that cannot be read, or a period that is empty."""


@dataclass(frozen=True)
class Span:
    """One interval of a hierarchy's timeline: up (running on `nodes`), down, or unknown."""

    start: Fraction
    end: Fraction
    state: str  # "up", "down", or "unknown" (no node runs it and some node's state is unknown)
    nodes: tuple[str, ...]

    @property
    def seconds(self) -> Fraction:
        return self.end - self.start

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "start": iso(float(self.start)),
            "end": iso(float(self.end)),
            "start_epoch": float(self.start),
            "end_epoch": float(self.end),
            "seconds": float(self.seconds),
            "nodes": list(self.nodes),
        }


@dataclass(frozen=True)
class Outage:
    start: Fraction
    end: Fraction
    open: bool  # still down at the end of the period
    cause: dict[str, Any]  # the event that took it down (None-valued keys if before the logs)
    restored_by: dict[str, Any] | None

    @property
    def seconds(self) -> Fraction:
        return self.end - self.start

    def to_json(self) -> dict[str, Any]:
        return {
            "start": iso(float(self.start)),
            "end": iso(float(self.end)),
            "start_epoch": float(self.start),
            "end_epoch": float(self.end),
            "seconds": float(self.seconds),
            "open": self.open,
            "cause": self.cause,
            "restored_by": self.restored_by,
        }


@dataclass(frozen=True)
class HierarchyReport:
    name: str
    since: Fraction
    until: Fraction
    spans: tuple[Span, ...]
    outages: tuple[Outage, ...]
    concurrent: Fraction  # seconds running on two or more nodes at once (should be 0)

    def _total(self, state: str) -> Fraction:
        return sum((s.seconds for s in self.spans if s.state == state), Fraction(0))

    @property
    def up(self) -> Fraction:
        return self._total("up")

    @property
    def down(self) -> Fraction:
        return self._total("down")

    @property
    def unknown(self) -> Fraction:
        return self._total("unknown")

    @property
    def observed(self) -> Fraction:
        """The period less what the logs cannot tell: availability is up / observed."""
        return self.up + self.down

    @property
    def availability(self) -> Availability | None:
        return Availability(self.up / self.observed) if self.observed else None

    @property
    def mttr(self) -> Fraction | None:
        """Mean outage length (an outage still open at the end counts as far as it went)."""
        return self.down / len(self.outages) if self.outages else None

    @property
    def mtbf(self) -> Fraction | None:
        """Up time per outage: the measured T_up of Bottomley's Eq. 2."""
        return self.up / len(self.outages) if self.outages else None

    def to_json(self) -> dict[str, Any]:
        longest = max((o.seconds for o in self.outages), default=None)
        a = self.availability
        figures = (
            a.to_json()
            if a is not None
            else dict.fromkeys(
                (
                    "availability",
                    "unavailability",
                    "nines",
                    "percent",
                    "downtime_per_year_s",
                    "exact",
                )
            )
        )
        return {
            "period_s": float(self.until - self.since),
            "observed_s": float(self.observed),
            "up_s": float(self.up),
            "down_s": float(self.down),
            "unknown_s": float(self.unknown),
            **figures,
            "outage_count": len(self.outages),
            "mttr_s": None if self.mttr is None else float(self.mttr),
            "mtbf_s": None if self.mtbf is None else float(self.mtbf),
            "longest_outage_s": None if longest is None else float(longest),
            "concurrent_s": float(self.concurrent),
            "outages": [o.to_json() for o in self.outages],
            "intervals": [s.to_json() for s in self.spans],
        }


@dataclass(frozen=True)
class MeasuredReport:
    logs: tuple[str, ...]
    files: int
    events: int
    since: Fraction
    until: Fraction
    requested_since: Fraction | None
    hierarchies: dict[str, HierarchyReport]
    nodes: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "logs": list(self.logs),
            "files": self.files,
            "events": self.events,
            "nodes": list(self.nodes),
            "period": {
                "since": iso(float(self.since)),
                "until": iso(float(self.until)),
                "since_epoch": float(self.since),
                "until_epoch": float(self.until),
                "seconds": float(self.until - self.since),
                "requested_since": (
                    None if self.requested_since is None else iso(float(self.requested_since))
                ),
            },
            "hierarchies": {name: h.to_json() for name, h in sorted(self.hierarchies.items())},
            "warnings": list(self.warnings),
        }


# -- reading ---------------------------------------------------------------------------------


def log_files(paths: Iterable[Path | str]) -> list[Path]:
    """Each path is a file or a directory of daily files (`events-*.jsonl`, else `*.jsonl`)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.glob("events-*.jsonl")) or sorted(p.glob("*.jsonl"))
            if not found:
                raise LogError(f"{p}: no event log files (events-YYYY-MM-DD.jsonl) in it")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise LogError(f"{p}: no such file or directory")
    return out


def read_events(files: Sequence[Path]) -> tuple[list[dict[str, Any]], int]:
    """Events with a numeric time, oldest first (stable for equal times); and how many lines
    were skipped (a torn last line while the writer appends, or garbage)."""
    events: list[tuple[Decimal, int, dict[str, Any]]] = []
    skipped = 0
    seq = 0
    for path in files:
        try:
            with path.open() as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        ev = json.loads(line, parse_float=Decimal)
                    except ValueError:
                        skipped += 1
                        continue
                    t = ev.get("time") if isinstance(ev, dict) else None
                    if not isinstance(t, Decimal | int) or isinstance(t, bool):
                        skipped += 1
                        continue
                    events.append((Decimal(t), seq, ev))
                    seq += 1
        except OSError as exc:
            raise LogError(f"cannot read {path}: {exc.strerror or exc}") from exc
    events.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in events], skipped


# -- replay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    t: Fraction
    node: str
    hierarchy: str | None  # None: every hierarchy of `node`
    state: str
    cause: dict[str, Any]


def _cause(ev: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out = {
        "time": iso(float(ev["time"])),
        "node": ev.get("node"),
        "kind": ev.get("kind"),
        "task": ev.get("task"),
        "desc": ev.get("desc") or None,
    }
    out.update(extra)
    return out


def _changes(
    events: list[dict[str, Any]], deadline: Fraction
) -> tuple[list[_Change], dict[tuple[str, str], str], set[str], set[str], set[str]]:
    """State changes in time order; initial states; hierarchies; logging nodes; peers named."""
    changes: list[_Change] = []
    initial: dict[tuple[str, str], str] = {}
    hierarchies: set[str] = set()
    nodes: set[str] = set()
    peers: set[str] = set()
    last_own: dict[str, Fraction] = {}
    started: set[str] = set()  # nodes whose daemon start we have seen
    first_started: set[str] = set()  # ... as their log's beginning: nothing ran before
    first_seen: dict[str, Fraction] = {}
    for ev in events:
        t = Fraction(ev["time"])
        node = str(ev.get("node", ""))
        kind = ev.get("kind")
        task = ev.get("task")
        if node and node not in first_seen:
            first_seen[node] = t
        if (
            kind == "node"
            and task == "start"
            and node not in started
            and t - first_seen[node] <= STARTUP_S
            and not any(n == node for n, _ in initial)
        ):
            first_started.add(node)
        if node:
            nodes.add(node)
        if kind == "hierarchy" and ev.get("hierarchy") and ev.get("state"):
            h = str(ev["hierarchy"])
            hierarchies.add(h)
            if node not in started:
                # Before its first change here, h was in `previous` on this node all along.
                initial.setdefault((node, h), str(ev.get("previous") or "stopped"))
            changes.append(_Change(t, node, h, str(ev["state"]), _cause(ev)))
        elif kind == "node" and task == "start":
            started.add(node)
            changes.append(_Change(t, node, None, "stopped", _cause(ev)))
        elif kind == "node" and task == "node-dead" and ev.get("peer"):
            peer = str(ev["peer"])
            peers.add(peer)
            since = max(t - deadline, last_own.get(peer, t - deadline))
            changes.append(
                _Change(min(since, t), peer, None, DEAD, _cause(ev, peer=peer, detected=True))
            )
        elif isinstance(ev.get("hierarchy"), str):
            hierarchies.add(ev["hierarchy"])
        if node:
            last_own[node] = t
    for node in first_started:
        for h in hierarchies:
            initial.setdefault((node, h), "stopped")
    changes.sort(key=lambda c: c.t)  # stable: backdated node-dead moves before later events
    return changes, initial, hierarchies, nodes, peers


def from_events(
    events: list[dict[str, Any]],
    since: Fraction | None = None,
    until: Fraction | None = None,
    *,
    deadline: Fraction = Fraction(0),
    hierarchies: Iterable[str] | None = None,
) -> tuple[dict[str, HierarchyReport], Fraction, Fraction, list[str], set[str]]:
    """Replay `events` (oldest first); per hierarchy, its timeline clipped to [since, until]."""
    if not events:
        raise LogError("the event logs hold no events")
    changes, initial, known, nodes, peers = _changes(events, deadline)
    first = Fraction(events[0]["time"])
    start = first if since is None else max(since, first)
    end = Fraction(events[-1]["time"]) if until is None else until
    if end <= start:
        raise LogError(
            f"empty period: from {iso(float(start))} to {iso(float(end))} "
            f"(the logs run from {iso(float(first))} to {iso(float(events[-1]['time']))})"
        )
    warnings: list[str] = []
    last = Fraction(events[-1]["time"])
    if end - last > STALE_S:
        warnings.append(
            f"the last event is from {iso(float(last))}: states are taken as unchanged since "
            "then (a node that logs nothing may have stopped; is every log given?)"
        )
    wanted = set(known) if hierarchies is None else set(hierarchies)
    missing = wanted - known
    if missing:
        raise LogError(
            f"no events for hierarchy {', '.join(sorted(missing))} in the logs "
            f"(seen: {', '.join(sorted(known)) or 'none'})"
        )
    unseen = peers - nodes
    if unseen:
        warnings.append(
            f"no log from node(s) {', '.join(sorted(unseen))} (named by their peers): what ran "
            "there is invisible; pass every node's log directory"
        )
    reports = {h: _replay(h, changes, initial, nodes, start, end) for h in sorted(wanted)}
    for h, r in reports.items():
        if r.unknown:
            warnings.append(
                f"{h}: {float(r.unknown):.3f} s when no log tells whether it ran (a node logged "
                "nothing about it); left out of its availability"
            )
    return reports, start, end, warnings, nodes


def _replay(
    h: str,
    changes: list[_Change],
    initial: dict[tuple[str, str], str],
    nodes: set[str],
    start: Fraction,
    end: Fraction,
) -> HierarchyReport:
    state = {n: initial.get((n, h), UNKNOWN) for n in nodes}

    def status() -> tuple[str, tuple[str, ...]]:
        on = tuple(sorted(n for n, s in state.items() if s == UP))
        if on:
            return "up", on
        return ("unknown" if UNKNOWN in state.values() else "down"), on

    spans: list[Span] = []
    outages: list[Outage] = []
    concurrent = Fraction(0)
    cur, on = status()
    seg_start = start
    down_since: Fraction | None = start if cur == "down" else None
    down_cause: dict[str, Any] = {"time": None, "node": None, "kind": None, "task": None,
                                  "desc": "down when the period began"}  # fmt: skip

    def close(t: Fraction) -> None:
        nonlocal concurrent
        if t > seg_start:
            spans.append(Span(seg_start, t, cur, on))
            if len(on) > 1:
                concurrent += t - seg_start

    for ch in changes:
        if ch.hierarchy is not None and ch.hierarchy != h:
            continue
        if ch.t >= end:
            break
        state[ch.node] = ch.state
        new, new_on = status()
        if (new, new_on) == (cur, on):
            continue
        t = max(ch.t, start)
        if ch.t > start:
            close(t)
            seg_start = t
        if new == "down" and cur != "down":
            down_since, down_cause = t, ch.cause
        elif cur == "down" and new != "down" and down_since is not None:
            if t > down_since:
                restored = ch.cause if new == "up" else None
                outages.append(Outage(down_since, t, False, down_cause, restored))
            down_since = None
        cur, on = new, new_on
    close(end)
    if cur == "down" and down_since is not None and end > down_since:
        outages.append(Outage(down_since, end, True, down_cause, None))
    return HierarchyReport(h, start, end, tuple(_merge(spans)), tuple(outages), concurrent)


def _merge(spans: list[Span]) -> list[Span]:
    """Adjacent spans of the same up/down state become one (node changes within up stay split
    only when the set of nodes differs)."""
    out: list[Span] = []
    for s in spans:
        if out and (out[-1].state, out[-1].nodes, out[-1].end) == (s.state, s.nodes, s.start):
            out[-1] = Span(out[-1].start, s.end, s.state, s.nodes)
        else:
            out.append(s)
    return out


def from_logs(
    paths: Iterable[Path | str],
    since: Fraction | float | None = None,
    until: Fraction | float | None = None,
    *,
    deadline: Fraction | float = 0,
    hierarchies: Iterable[str] | None = None,
) -> MeasuredReport:
    """Measured availability of every hierarchy in the logs of one or more nodes (files or
    directories of daily files), between `since` and `until` (epoch seconds; default: the
    first and the last event)."""
    paths = [Path(p) for p in paths]
    files = log_files(paths)
    events, skipped = read_events(files)

    def frac(x: Fraction | float | None) -> Fraction | None:
        if x is None or isinstance(x, Fraction):
            return x
        return Fraction(repr(float(x)))

    req_since = frac(since)
    reports, start, end, warnings, nodes = from_events(
        events,
        req_since,
        frac(until),
        deadline=frac(deadline) or Fraction(0),
        hierarchies=hierarchies,
    )
    if skipped:
        warnings.append(f"{skipped} unreadable line(s) skipped (a torn last line is normal)")
    if req_since is not None and req_since < start:
        warnings.append(
            f"the logs begin at {iso(float(start))}, after the requested start "
            f"{iso(float(req_since))}: measured from there"
        )
    return MeasuredReport(
        logs=tuple(str(p) for p in paths),
        files=len(files),
        events=len(events),
        since=start,
        until=end,
        requested_since=req_since,
        hierarchies=reports,
        nodes=tuple(sorted(nodes)),
        warnings=tuple(warnings),
    )
