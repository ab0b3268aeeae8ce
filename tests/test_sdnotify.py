"""sd_notify over a real AF_UNIX datagram socket, and log lines for the journal."""

from __future__ import annotations

import io
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura import logsetup
from ophiura.sdnotify import Notifier, socket_address


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_ready_and_status_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "OTHER": "x"}
    n = Notifier.from_environ(env)
    assert env == {"OTHER": "x"}  # unset, so the processes we start do not inherit it
    assert n.enabled and n.ready("node n1 up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=node n1 up"
    assert n.stopping("bye")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"ophiura-test-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.notify(READY="1")
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_pings_while_the_loop_cycles(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    now = [100.0]
    n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, lambda: now[0])
    assert n.watchdog_usec == 2_000_000
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    now[0] += 0.3
    assert not n.watchdog()  # at most every quarter period (0.5 s)
    now[0] += 0.3
    n.loop_alive()
    assert n.watchdog()
    now[0] += 1.1  # the decision loop has not cycled for more than half the period: hung
    assert not n.watchdog()
    n.loop_alive()
    assert n.watchdog()
    assert [sock.recv(4096) for _ in range(2)] == [b"WATCHDOG=1"] * 2


def test_watchdog_for_another_pid_or_no_socket_is_off(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    other = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(other).watchdog_usec == 0
    mine = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(mine).watchdog_usec == 1_000_000
    off = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not off.enabled and not off.ready("x") and not off.watchdog()


def test_bad_socket_values() -> None:
    assert socket_address("@x") == b"\0x"
    with pytest.raises(ValueError, match="absolute path"):
        socket_address("relative/path")
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative"}).enabled
    gone = Notifier.from_environ({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert gone.enabled and not gone.ready("x")  # logged once, never raised


# -- logs ---------------------------------------------------------------------------------------


def record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("ophiura.cluster.daemon", level, __file__, 1, msg, None, None)


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    f = logsetup.JournalFormatter()
    assert f.format(record(logging.INFO, "kind=node task=start")) == (
        "<6>ophiura.cluster.daemon: kind=node task=start"
    )
    assert f.format(record(logging.WARNING, "w")).startswith("<4>")
    assert f.format(record(logging.ERROR, "e")).startswith("<3>")
    assert f.format(record(logging.CRITICAL, "c")).startswith("<2>")
    assert f.format(record(logging.DEBUG, "d")).startswith("<7>")
    assert f.format(record(logging.ERROR, "one\ntwo")) == (
        "<3>ophiura.cluster.daemon: one\n<3>two"
    )  # journald makes an entry per line: each keeps the priority


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as out, (tmp_path / "other").open("w") as other:
        st = os.fstat(out.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logsetup.is_journal(out, env)
        assert not logsetup.is_journal(other, env)  # stderr redirected elsewhere by the user
        assert not logsetup.is_journal(out, {"JOURNAL_STREAM": "garbage"})
        assert not logsetup.is_journal(io.StringIO(), env)


def test_configure_replaces_its_own_handler(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        h1 = logsetup.configure(logging.INFO, io.StringIO())
        h2 = logsetup.configure(logging.INFO, io.StringIO())
        assert h2 in root.handlers and h1 not in root.handlers
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)
