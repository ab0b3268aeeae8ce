"""`GET /api/v1/events?since=T`: the node's event log, newest `limit` events after T.

Recent events come from the daemon's in-memory ring (what was just recorded may not be on disk
yet: the log is written by its own thread); anything older than the ring comes from the daily
JSON-lines files, read off the event loop and streamed through a bounded deque, so a long log
costs time in a worker thread, never memory or a stalled heartbeat decision.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
RING_ALL = 1 << 20  # EventLog.last(n): the whole ring (it is bounded itself)


def event_time(event: dict[str, Any]) -> float:
    t = event.get("time", 0.0)
    return float(t) if isinstance(t, int | float) else 0.0


def from_files(
    directory: Path | None, since: float, before: float, limit: int
) -> list[dict[str, Any]]:
    """Events with since < time < before from the daily files, the newest `limit`, oldest first."""
    if directory is None or not directory.is_dir():
        return []
    first_day = dt.datetime.fromtimestamp(max(since, 0.0), dt.UTC).strftime("%Y-%m-%d")
    out: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
    for path in sorted(directory.glob("events-*.jsonl")):
        if path.stem.removeprefix("events-") < first_day:
            continue
        try:
            with path.open() as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue  # a torn last line while the writer appends
                    if isinstance(event, dict) and since < event_time(event) < before:
                        out.append(event)
        except OSError as exc:
            log.warning("cannot read event log %s: %s", path, exc)
    return list(out)


def select(
    recent: Iterable[dict[str, Any]], files: list[dict[str, Any]], since: float, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Merge file events (older than the ring) with the ring; (newest `limit`, truncated?)."""
    ring = [e for e in recent if event_time(e) > since]
    merged = files + ring
    return merged[-limit:], len(merged) > limit


def ring_covers(recent: list[dict[str, Any]], since: float) -> bool:
    """True when the in-memory ring alone holds every event after `since` (no file read)."""
    return bool(recent) and event_time(recent[0]) <= since
