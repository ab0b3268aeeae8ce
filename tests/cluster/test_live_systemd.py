"""`ophiura node` as systemd runs it: READY=1, WATCHDOG=1, STOPPING=1 on a real notify socket,
and log lines with syslog priorities and no timestamps when stderr is the journal's stream."""

from __future__ import annotations

import errno
import os
import re
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .live import OPHIURA, REPO, LiveCluster, cluster_toml
from .test_live_local import hierarchy


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"ophiura-test-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())  # abstract namespace: NOTIFY_SOCKET=@name
    sock.settimeout(15)
    yield sock, "@" + name
    sock.close()


def bound(addr: tuple[str, int], kind: int) -> bool:
    """Is something of ours listening (TCP) or bound (UDP) on addr?"""
    s = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.settimeout(2)
            return s.connect_ex(addr) == 0
        try:
            s.bind(addr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False
    finally:
        s.close()


@pytest.mark.timeout(90)
def test_notify_ready_watchdog_stopping_and_journal_lines(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    markers = tmp_path / "markers"
    markers.mkdir()
    hiers = hierarchy(markers).replace('["n1", "n2", "n3"]', '["n1", "n2"]')
    c = LiveCluster(tmp_path, cluster_toml(tmp_path, ["n1", "n2"], hiers))
    log = tmp_path / "n1.journal"
    c.start("n2")
    with log.open("wb") as out:
        st = os.fstat(out.fileno())
        env = {
            **c.env("n1"),
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": "800000",
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
        }
        # as the unit runs it: no -v (the node logs its events at INFO by itself)
        proc = subprocess.Popen(
            [*OPHIURA, "node", "--config", str(c.path), "--name", "n1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    c.procs["n1"] = proc
    try:
        try:
            while (first := sock.recv(4096)) == b"WATCHDOG=1":
                pass  # the heartbeat thread starts first, and may ping before READY
        except TimeoutError:
            raise AssertionError(f"no READY=1 from n1\n{log.read_text()}") from None
        # READY only once the admin socket listens and every heartbeat link is bound
        assert first.startswith(b"READY=1\nSTATUS=node n1: 2 links"), first
        assert bound(c.cfg.nodes["n1"].admin, socket.SOCK_STREAM)
        for link in c.cfg.links:
            assert bound(link.addresses["n1"], socket.SOCK_DGRAM)
        pings = [sock.recv(4096) for _ in range(3)]
        assert pings == [b"WATCHDOG=1"] * 3
        c.wait_for("n1 online", lambda: c.status("n1")["state"] == "online", 15)
        proc.send_signal(signal.SIGTERM)
        while (msg := sock.recv(4096)) == b"WATCHDOG=1":
            pass
        assert msg.startswith(b"STOPPING=1"), msg
        assert proc.wait(30) == 0
    finally:
        c.stop()
    lines = log.read_text().splitlines()
    assert lines
    ours = [ln for ln in lines if re.match(r"^<\d>ophiura\.", ln)]
    assert len(ours) == len(lines), [ln for ln in lines if ln not in ours][:5]
    assert any(ln.startswith("<6>ophiura.cluster.daemon: ") and "task=start" in ln for ln in lines)
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", ln) for ln in lines)
