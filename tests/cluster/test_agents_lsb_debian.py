"""`lsb:` with a Debian init script, unchanged: `/etc/init.d/fio` (package fio).

It is a real `init-d-script` service (start-stop-daemon, pid file /run/fio.pid, status_of_proc)
whose daemon, `fio --server`, listens on TCP 8765 on every address and touches nothing else, so
it is safe to start here; it runs inside a network namespace this test creates (the agent's
`netns` param), so not even that port shows in the root namespace. Other scripts in /etc/init.d
here are not safe to start: keepalived changes addresses, tgt and postgresql are shared by other
tests, dbus/udev/procps/hwclock.sh touch the host. Root only (namespaces); skips and says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.agents.lsb import LsbAgent
from ophiura.testkit.netns import in_netns, missing_tools, namespace, unavailable

SCRIPT = Path("/etc/init.d/fio")
PIDFILE = Path("/run/fio.pid")
PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def ns() -> Iterator[str]:
    why = unavailable() or missing_tools(fio="fio")
    if not why and not SCRIPT.is_file():
        why = f"{SCRIPT} is not installed (Debian package fio)"
    if not why and _fio_server_running():
        why = f"an fio server this test did not start runs ({PIDFILE})"
    if not why:
        PIDFILE.unlink(missing_ok=True)  # stale: left by a run that was killed (no server runs)
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    with namespace("lsb") as name:
        yield name


def _fio_server_running() -> bool:
    try:
        pid = int(PIDFILE.read_text().strip())
        return b"--server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Adopt the daemon fio leaves behind, so its death is seen as such: PID 1 on this machine
    reaps no orphans, and a zombie still "exists" for the init script's status check."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def reap(pid: int) -> None:
    """Wait for our adopted daemon (only that pid: asyncio waits for its own children)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


async def test_debian_init_script_start_status_crash_stop(ns: str) -> None:
    agent = LsbAgent()
    res = Resource("fio", "lsb:fio", params={"netns": ns})
    assert (await agent.validate(res, 5)).ok
    assert (await agent.monitor(res, 10)).code == OcfCode.NOT_RUNNING  # LSB status 3
    with subreaper():
        out = await agent.start(res, 20)
        assert out.ok, out
        pid = int(PIDFILE.read_text())
        try:
            assert (await agent.monitor(res, 10)).ok  # LSB status 0
            assert in_netns(ns, listening, 8765)  # the daemon serves inside the namespace only
            assert (await agent.start(res, 20)).ok  # start of a started service: success

            os.kill(pid, signal.SIGKILL)  # the service crashes, its pid file stays behind
            reap(pid)
            out = await agent.monitor(res, 10)
            assert out.code == OcfCode.ERR_GENERIC, out  # LSB 1: dead, pid file exists: failed
            assert (await agent.stop(res, 20)).ok  # cleans up after the dead daemon
            assert (await agent.monitor(res, 10)).code == OcfCode.NOT_RUNNING

            assert (await agent.start(res, 20)).ok  # and it starts again
            pid = int(PIDFILE.read_text())
            assert (await agent.monitor(res, 10)).ok
        finally:
            out = await agent.stop(res, 20)
            reap(pid)
        assert out.ok, out
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and in_netns(ns, listening, 8765):
        time.sleep(0.05)
    assert not in_netns(ns, listening, 8765)
    assert (await agent.monitor(res, 10)).code == OcfCode.NOT_RUNNING
    assert (await agent.stop(res, 20)).ok  # stop of a stopped service: success (LSB and OCF)
