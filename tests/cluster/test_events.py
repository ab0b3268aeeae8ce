"""Event log files and notifications: command hooks, webhooks, e-mail; bounded, never blocking."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ophiura.cluster.config import Notifier
from ophiura.cluster.events import EventLog, Notifications, RateLimiter, alert_env
from ophiura.testkit.waiting import wait_for

EVENT = {"time": 1_700_000_000.5, "node": "n2", "kind": "link", "peer": "n1", "link": "ring1",
         "task": "link-down", "desc": "one link lost"}  # fmt: skip


def wait(pred: Callable[[], Any], timeout: float = 5.0) -> None:
    wait_for(pred, timeout, step=0.01, ignore=())


def test_alert_env_has_pacemaker_names() -> None:
    env = alert_env(EVENT, "ops")
    assert env["CRM_alert_kind"] == "link" and env["CRM_alert_task"] == "link-down"
    assert env["CRM_alert_node"] == "n2" and env["CRM_alert_recipient"] == "ops"
    assert env["CRM_alert_timestamp_epoch"] == "1700000000"
    assert env["OPHIURA_ALERT_LINK"] == "ring1"


def test_event_log_daily_files(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "n1", keep_days=2)
    log.start()
    day = 86400.0
    for i in range(4):
        log.record({"time": 1_700_000_000 + i * day, "kind": "node", "task": f"t{i}"})
    log.stop()
    files = sorted(p.name for p in tmp_path.glob("events-*.jsonl"))
    assert len(files) == 2, files  # rotated daily, two days kept
    assert json.loads((tmp_path / files[-1]).read_text())["task"] == "t3"
    assert [e["task"] for e in log.last(2)] == ["t2", "t3"]


def test_command_hook(tmp_path: Path) -> None:
    out = tmp_path / "alerts"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "$CRM_alert_kind $CRM_alert_task $1" >> {out}\n')
    script.chmod(0o755)
    n = Notifications((Notifier("command", str(script), args=("arg1",)),), "c")
    n.start()
    n.submit(EVENT)
    wait(lambda: out.exists() and out.read_text())
    n.stop()
    assert out.read_text().strip() == "link link-down arg1"


def test_failing_hook_is_counted_not_raised(tmp_path: Path) -> None:
    n = Notifications((Notifier("command", "/nonexistent/hook"),), "c")
    n.start()
    n.submit(EVENT)
    wait(lambda: n.failed == 1)
    n.stop()


def test_filters_by_kind(tmp_path: Path) -> None:
    out = tmp_path / "alerts"
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\necho $CRM_alert_kind >> {out}\n")
    script.chmod(0o755)
    n = Notifications((Notifier("command", str(script), events=("node",)),), "c")
    n.start()
    n.submit(EVENT)
    n.submit({**EVENT, "kind": "node"})
    wait(lambda: out.exists())
    n.stop()
    assert out.read_text().split() == ["node"]


@pytest.fixture
def http_sink() -> Iterator[tuple[str, list[bytes]]]:
    got: list[bytes] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/hook", got
    finally:
        srv.shutdown()
        srv.server_close()


def test_webhook(http_sink: tuple[str, list[bytes]]) -> None:
    url, got = http_sink
    n = Notifications((Notifier("webhook", url),), "prod")
    n.start()
    n.submit(EVENT)
    wait(lambda: got)
    n.stop()
    body = json.loads(got[0])
    assert body["cluster"] == "prod" and body["task"] == "link-down"


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib.send_message."""

    received: list[str] = []

    def handle(self) -> None:
        self.wfile.write(b"220 test\r\n")
        data = False
        lines: list[str] = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            text = line.decode().rstrip("\r\n")
            if data:
                if text == ".":
                    data = False
                    _Smtp.received.append("\n".join(lines))
                    self.wfile.write(b"250 ok\r\n")
                else:
                    lines.append(text)
                continue
            verb = text[:4].upper()
            if verb == "DATA":
                data = True
                self.wfile.write(b"354 go\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_email() -> None:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        n = Notifications(
            (Notifier("email", "ops@example.org", smtp=("127.0.0.1", srv.server_address[1])),),
            "prod",
        )
        n.start()
        n.submit(EVENT)
        wait(lambda: _Smtp.received)
        n.stop()
    finally:
        srv.shutdown()
        srv.server_close()
    assert "link-down" in _Smtp.received[0] and "ops@example.org" in _Smtp.received[0]


def test_queue_is_bounded_and_submit_never_blocks(tmp_path: Path) -> None:
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 5\n")
    hang.chmod(0o755)
    n = Notifications((Notifier("command", str(hang), timeout=0.2),), "c")
    n.start()
    t0 = time.monotonic()
    for _ in range(1500):
        n.submit(EVENT)
    assert time.monotonic() - t0 < 0.5
    assert n.dropped >= 400


def test_rate_limiter() -> None:
    r = RateLimiter(5.0)
    assert r.allow("x", 0.0) and not r.allow("x", 1.0) and r.allow("y", 1.0) and r.allow("x", 5.0)
    assert r.suppressed["x"] == 1
