"""`ophiura se` and `ophiura he` under systemd `Type=notify`: READY=1 only once they serve
(the SE's port accepts connections, the HE's control port answers), STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import stop

from .he_harness import secret_file


def _notify_socket(tmp: Path, name: str) -> tuple[socket.socket, dict[str, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp / name))
    sock.settimeout(30)
    return sock, {**os.environ, "NOTIFY_SOCKET": str(tmp / name)}


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ophiura.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _ready(sock: socket.socket, log: Path) -> bytes:
    try:
        msg = sock.recv(4096)
    except TimeoutError:
        pytest.fail(f"no READY=1: {log.read_text()[-2000:]}")
    assert msg.startswith(b"READY=1\n"), msg
    return msg


def test_se_and_he_notify_ready_once_serving_and_stopping(tmp_path: Path) -> None:
    sf = secret_file(tmp_path)
    se_sock, se_env = _notify_socket(tmp_path, "se.notify")
    se_port = free_port()
    se_log = tmp_path / "se.log"
    se = _spawn(
        ["se", "--name", "a", "--data-dir", str(tmp_path / "a"), "--listen",
         f"127.0.0.1:{se_port}", "--secret-file", str(sf)],
        se_env, se_log,
    )  # fmt: skip
    he = None
    try:
        assert b"serving" in _ready(se_sock, se_log)
        socket.create_connection(("127.0.0.1", se_port), timeout=5).close()  # no wait needed

        he_sock, he_env = _notify_socket(tmp_path, "he.notify")
        control = free_port()
        he_log = tmp_path / "he.log"
        he = _spawn(
            ["he", "--se", f"a=127.0.0.1:{se_port}", "--quorum", "1", "--volume", "v:4M",
             "--control", f"127.0.0.1:{control}", "--secret-file", str(sf),
             "--state-dir", str(tmp_path / "he-state")],
            he_env, he_log,
        )  # fmt: skip
        assert b"active" in _ready(he_sock, he_log)
        socket.create_connection(("127.0.0.1", control), timeout=5).close()
        assert stop(he, 15) == 0, he_log.read_text()[-2000:]
        he = None
        assert he_sock.recv(4096).startswith(b"STOPPING=1\n")
    finally:
        if he is not None:
            stop(he, 15)
        code = stop(se, 15)
    assert code == 0, se_log.read_text()[-2000:]
    assert se_sock.recv(4096).startswith(b"STOPPING=1\n")
