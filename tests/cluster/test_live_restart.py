"""Restarting `ophiura node` without an outage (issue 12, Must show 1 and 2).

The service is a real long-running process (Python's http.server) run by the stock OCF
`anything` agent, with a client polling it all along. The node daemon is stopped with SIGTERM
(`--keep-resources`, maintenance mode, a frozen hierarchy) and started again: the service's PID
must be the same before and after, it must never have been stopped, the restarted daemon must
report the hierarchy running (adopted by its probe, no start run), and the client must have seen
no failed request. A rolling restart of three nodes does the same node by node.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ophiura.testkit.ports import free_port

from .live import LiveCluster, cluster_toml

ANYTHING = Path("/usr/lib/ocf/resource.d/heartbeat/anything")
pytestmark = pytest.mark.skipif(not ANYTHING.exists(), reason="resource-agents not installed")


def hierarchy(tmp: Path, nodes: list[str], port: int) -> str:
    (tmp / "www").mkdir()
    (tmp / "www" / "index.html").write_text("ok\n")
    opts = f"-m http.server {port} --bind 127.0.0.1 --directory {tmp / 'www'}"
    return f"""
[[hierarchies]]
name = "web"
nodes = {nodes!r}

[[hierarchies.resources]]
name = "app"
kind = "ocf:heartbeat:anything"
monitor_interval = 0.5
[hierarchies.resources.params]
binfile = "{sys.executable}"
cmdline_options = "{opts}"
pidfile = "{tmp}/app-{{node}}.pid"
logfile = "{tmp}/app.log"
"""


class Client:
    """Polls the service every 20 ms from its first answer on; counts failed requests."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/index.html"
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    assert r.read() == b"ok\n"
                self.ok += 1
            except Exception as exc:
                self.failed.append(f"{time.monotonic():.3f} {exc!r}")
            self._stop.wait(0.02)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)


def pid_of(tmp: Path, node: str = "n1") -> int:
    """The service's PID as `node`'s copy of the agent recorded it (one pidfile per node: the
    nodes share this machine, and each must probe only its own copy)."""
    return int((tmp / f"app-{node}.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def web(c: LiveCluster, via: str) -> dict[str, Any]:
    return c.status(via)["hierarchies"]["web"]


def serving(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def restart(c: LiveCluster, name: str, args: tuple[str, ...]) -> list[dict[str, Any]]:
    """SIGTERM `name`'s daemon, start it again, wait until it is online; its new events."""
    c.kill(name, signal.SIGTERM)
    assert c.procs[name].returncode == 0, c.tails()
    before = len(c.events(name))
    c.start(name, *args)
    c.wait_for(f"{name} online again", lambda: c.status(name)["state"] == "online", 20)
    return c.events(name)[before:]


def no_start(events: list[dict[str, Any]]) -> None:
    starts = [e for e in events if e.get("task") in ("start", "acquire-start", "stop")]
    starts = [e for e in starts if e.get("kind") in ("resource", "hierarchy")]
    assert starts == [], starts


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    """launch(nodes, *args): a live cluster running the web hierarchy; torn down after."""
    made: list[LiveCluster] = []

    def make(nodes: list[str], *args: str) -> tuple[LiveCluster, int]:
        port = free_port()
        c = LiveCluster(tmp_path, cluster_toml(tmp_path, nodes, hierarchy(tmp_path, nodes, port)))
        made.append(c)
        for n in nodes:
            c.start(n, *args)
        return c, port

    try:
        yield make
    finally:
        for c in made:
            c.stop()
        for f in tmp_path.glob("app-*.pid"):  # the service outlives the daemons by design
            pid = int(f.read_text().split()[0])
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["keep-resources", "maintenance", "frozen"])
def test_restart_keeps_the_service(launch: Any, mode: str) -> None:
    args = ("--keep-resources",) if mode == "keep-resources" else ()
    c, port = launch(["n1", "n2"], *args)
    tmp = c.tmp
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 20)
    c.wait_for("service answers", lambda: serving(port), 10)
    pid = pid_of(tmp)
    if mode == "maintenance":
        assert c.cli("maintenance", "on").returncode == 0
        c.wait_for(
            "maintenance on both", lambda: all(c.status(n)["admin"]["m"] for n in c.procs), 5
        )
    elif mode == "frozen":
        assert c.cli("freeze", "web").returncode == 0
        c.wait_for("frozen on both", lambda: all(web(c, n)["frozen"] for n in c.procs), 5)

    with Client(port) as client:
        c.wait_for("client served", lambda: client.ok > 0, 5)
        c.kill("n1", signal.SIGTERM)
        assert c.procs["n1"].returncode == 0, c.tails()
        assert alive(pid), "SIGTERM stopped the service"
        left = c.events("n1")
        assert any(e.get("task") == "keep-running" for e in left), left[-5:]
        # n1 is silent past the deadline: n2 sees it dead and still neither starts nor fences.
        c.wait_for("n2 sees n1 dead", lambda: c.status("n2")["nodes"]["n1"]["state"] == "dead", 5)
        w = web(c, "n2")
        assert w["local"]["state"] == "stopped", w
        if mode == "keep-resources":
            assert "restarts with web left running" in (w["blocked"] or ""), w
        before = len(c.events("n1"))
        c.start("n1", *args)
        c.wait_for("n1 online again", lambda: c.status("n1")["state"] == "online", 20)
        new = c.events("n1")[before:]
        c.wait_for("n2 sees web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 10)
        assert web(c, "n1")["local"]["state"] == "running"
        time.sleep(0.3)  # a few more client requests after the restart (not a wait for state)
    assert pid_of(tmp) == pid and alive(pid)
    assert any(e.get("task") == "probe" and "adopted" in e.get("desc", "") for e in new), new
    no_start(new)
    no_start([e for e in c.events("n2") if e.get("kind") in ("resource", "hierarchy")])
    assert client.failed == [], client.failed[:5]
    print(f"\n{mode}: {client.ok} requests during the restart, 0 failed")
    if mode == "maintenance":  # and managed again afterwards: monitors see it, nothing moves
        assert c.cli("maintenance", "off").returncode == 0
        c.wait_for("maintenance off", lambda: not c.status("n2")["admin"]["m"], 5)
        assert web(c, "n2")["running_on"] == ["n1"] and pid_of(tmp) == pid


@pytest.mark.timeout(240)
def test_rolling_restart_of_three_nodes(launch: Any) -> None:
    """Stop, start, node by node, every daemon with --keep-resources: 0 failed requests."""
    nodes = ["n1", "n2", "n3"]
    args = ("--keep-resources",)
    c, port = launch(nodes, *args)
    c.wait_for("web on n1", lambda: web(c, "n3")["running_on"] == ["n1"], 20)
    c.wait_for("service answers", lambda: serving(port), 10)
    pid = pid_of(c.tmp)
    with Client(port) as client:
        c.wait_for("client served", lambda: client.ok > 0, 5)
        t0 = time.monotonic()
        for n in nodes:
            no_start(restart(c, n, args))
            c.wait_for(
                "all see web on n1",
                lambda: all(web(c, m)["running_on"] == ["n1"] for m in nodes),
                10,
            )
            assert alive(pid) and pid_of(c.tmp) == pid
        took = time.monotonic() - t0
    assert client.failed == [], client.failed[:5]
    print(f"\nrolling restart of 3 nodes in {took:.1f} s: {client.ok} requests, 0 failed")
