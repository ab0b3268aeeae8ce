"""The event log (JSON lines, one file per day) and notifications to people.

Both sit behind bounded queues drained by their own threads, so a full disk, a hung webhook or
an SMTP server that takes a minute can never delay a heartbeat or a decision: when a queue is
full the event is dropped *and counted*, and the count is shown in `status` and logged.
Command hooks get Pacemaker-alert-style variables (`CRM_alert_kind`, `CRM_alert_node`,
`CRM_alert_rsc`, `CRM_alert_task`, `CRM_alert_rc`, `CRM_alert_desc`, `CRM_alert_timestamp`, ...)
so alert scripts written for Pacemaker run unchanged, plus the same as `OPHIURA_ALERT_*`.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import queue
import smtplib
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ophiura.cluster.config import Notifier

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
RECENT = 200


class RateLimiter:
    """At most one message per key per `period`; counts what it suppressed."""

    def __init__(self, period: float = 5.0) -> None:
        self.period = period
        self._last: dict[str, float] = {}
        self.suppressed: collections.Counter[str] = collections.Counter()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._last.get(key, -1e18) >= self.period:
            self._last[key] = now
            return True
        self.suppressed[key] += 1
        return False


def alert_env(event: Mapping[str, Any], recipient: str) -> dict[str, str]:
    """The environment of a command hook: Pacemaker's names and ours."""
    ts = dt.datetime.fromtimestamp(float(event.get("time", time.time())), dt.UTC)
    fields = {
        "kind": str(event.get("kind", "")),
        "node": str(event.get("node", "")),
        "rsc": str(event.get("resource", event.get("hierarchy", ""))),
        "hierarchy": str(event.get("hierarchy", "")),
        "task": str(event.get("task", "")),
        "desc": str(event.get("desc", "")),
        "rc": str(event.get("rc", "")),
        "status": str(event.get("state", "")),
        "target_rc": "0",
        "timestamp": ts.strftime("%H:%M:%S.%f"),
        "timestamp_epoch": str(int(ts.timestamp())),
        "recipient": recipient,
        "version": "ophiura",
        "link": str(event.get("link", "")),
        "peer": str(event.get("peer", "")),
    }
    env = {f"CRM_alert_{k}": v for k, v in fields.items()}
    env.update({f"OPHIURA_ALERT_{k.upper()}": v for k, v in fields.items()})
    return env


def _stop_worker(
    q: queue.Queue[dict[str, Any] | None], thread: threading.Thread | None, timeout: float
) -> None:
    """Ask a queue's worker thread to finish what is queued and end; wait up to `timeout`."""
    if thread is not None:
        try:
            q.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)


class EventLog:
    """Appends events to `<dir>/events-YYYY-MM-DD.jsonl` from a writer thread; keeps recent ones."""

    def __init__(self, directory: Path | None, node: str, keep_days: int = 14) -> None:
        self.dir = directory
        self.node = node
        self.keep_days = keep_days
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.dropped = 0
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="event-log", daemon=True)
        self._thread.start()

    def record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.recent.append(event)
        try:
            self._q.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("event log queue full: %d events not written", self.dropped)

    def last(self, n: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.recent)[-n:]

    def path_for(self, when: float) -> Path:
        assert self.dir is not None
        day = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d")
        return self.dir / f"events-{day}.jsonl"

    def _run(self) -> None:
        while True:
            event = self._q.get()
            if event is None:
                return
            if self.dir is None:
                continue
            path = self.path_for(float(event.get("time", time.time())))
            new = not path.exists()
            try:
                with path.open("a") as f:
                    f.write(json.dumps(event, default=str, separators=(",", ":")) + "\n")
                if new:
                    self._prune()
            except OSError as exc:
                log.error("cannot write event log %s: %s", path, exc)

    def _prune(self) -> None:
        """Daily rotation: drop files older than `keep_days` when a new day begins."""
        assert self.dir is not None
        files = sorted(self.dir.glob("events-*.jsonl"))
        for old in files[: max(0, len(files) - self.keep_days)]:
            try:
                old.unlink()
            except OSError as exc:
                log.warning("cannot remove old event log %s: %s", old, exc)

    def stop(self, timeout: float = 2.0) -> None:
        _stop_worker(self._q, self._thread, timeout)


class Notifications:
    """Dispatches events to notifiers from one worker thread; bounded, never blocks the caller."""

    def __init__(self, notifiers: tuple[Notifier, ...], cluster: str) -> None:
        self.notifiers = notifiers
        self.cluster = cluster
        self.dropped = 0
        self.failed = 0
        self.sent = 0
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._limit = RateLimiter(30.0)

    def start(self) -> None:
        if self.notifiers:
            self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
            self._thread.start()

    def submit(self, event: dict[str, Any]) -> None:
        if not self.notifiers:
            return
        try:
            self._q.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            event = self._q.get()
            if event is None:
                return
            for n in self.notifiers:
                if n.events and event.get("kind") not in n.events:
                    continue
                try:
                    self._send(n, event)
                    self.sent += 1
                except (
                    OSError,
                    subprocess.SubprocessError,
                    smtplib.SMTPException,
                    ValueError,
                ) as exc:
                    self.failed += 1
                    if self._limit.allow(f"{n.kind}:{n.target}"):
                        log.warning("notification via %s %s failed: %s", n.kind, n.target, exc)

    def _send(self, n: Notifier, event: dict[str, Any]) -> None:
        if n.kind == "command":
            env = {**os.environ, **alert_env(event, n.target)}
            proc = subprocess.run(
                [n.target, *n.args], env=env, timeout=n.timeout, capture_output=True, check=False
            )
            if proc.returncode != 0:
                raise OSError(
                    f"exit {proc.returncode}: {proc.stderr[-300:].decode(errors='replace')}"
                )
        elif n.kind == "webhook":
            body = json.dumps({"cluster": self.cluster, **event}, default=str).encode()
            req = urllib.request.Request(
                n.target, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(req, timeout=n.timeout) as resp:
                resp.read(4096)
        elif n.kind == "email":
            msg = EmailMessage()
            msg["Subject"] = (
                f"[ophiura {self.cluster}] {event.get('kind')} {event.get('node', '')}: "
                f"{event.get('task', '')} {event.get('hierarchy', '')}".strip()
            )
            msg["From"] = n.sender
            msg["To"] = n.target
            msg.set_content(json.dumps(event, indent=2, default=str))
            with smtplib.SMTP(n.smtp[0], n.smtp[1], timeout=n.timeout) as smtp:
                smtp.send_message(msg)

    def stop(self, timeout: float = 2.0) -> None:
        _stop_worker(self._q, self._thread, timeout)
