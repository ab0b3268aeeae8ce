"""The watchdog behind self-fencing (`watchdog.py`, `[cluster] watchdog`).

This machine has no /dev/watchdog and cannot load softdog (no kernel modules in this
container), and opening a real device in a test would arm a machine reset anyway. So the device
is a FIFO the test reads: every byte the daemon writes is recorded with its arrival time, which
shows the keepalives (b"\\0" every heartbeat interval, from the heartbeat thread), the pause
while a self-fencing stop is pending, and the magic close (b"V") on a clean shutdown. The
ioctl that sets a real device's timeout is not exercised here.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster.config import parse
from ophiura.cluster.validation import validate
from ophiura.cluster.watchdog import Watchdog, WatchdogError

from .kit import config_dict
from .live import LiveCluster, cluster_toml
from .test_live_local import running
from .test_live_quorum import config


class Reader:
    """Drain a FIFO on a thread, keeping (arrival time, byte) for every byte."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.got: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            data = os.read(self.fd, 4096)
            if not data:  # no writer (yet, or any more)
                time.sleep(0.02)
            now = time.time()
            self.got += [(now, data[i : i + 1]) for i in range(len(data))]

    def since(self, t: float) -> list[bytes]:
        return [b for at, b in list(self.got) if at >= t]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.fd)


def test_kicks_holds_and_magic_close(tmp_path: Path) -> None:
    r = Reader(tmp_path / "wd")
    try:
        wd = Watchdog(str(tmp_path / "wd"), 10)
        assert wd.open() is None  # a FIFO: no timeout ioctl
        wd.kick()
        wd.kick()
        assert wd.hold("web") and not wd.hold("web")
        wd.kick()  # held: not written
        assert wd.release("web")
        wd.kick()
        assert wd.close() is True
        time.sleep(0.2)
        assert b"".join(b for _, b in r.got) == b"\0\0\0V"
        wd = Watchdog(str(tmp_path / "wd"), 10)
        wd.open()
        wd.hold("db")
        assert wd.close() is False  # a self-fence pending: left armed, no magic close
        time.sleep(0.2)
        assert b"".join(b for _, b in r.got) == b"\0\0\0V"
    finally:
        r.close()


def test_no_kicks_while_the_decision_loop_is_hung(tmp_path: Path) -> None:
    r = Reader(tmp_path / "wd")
    try:
        wd = Watchdog(str(tmp_path / "wd"), 0.4)  # kicks need a cycle within 0.2 s
        wd.open()
        wd.loop_alive()
        wd.kick()
        time.sleep(0.3)  # the loop did not cycle
        wd.kick()
        wd.loop_alive()
        wd.kick()
        assert wd.kicks == 2
        wd.close()
        time.sleep(0.2)
        assert b"".join(b for _, b in r.got) == b"\0\0V"
    finally:
        r.close()


def test_a_missing_device_is_named() -> None:
    with pytest.raises(WatchdogError, match="watchdog /nonexistent/watchdog: No such file"):
        Watchdog("/nonexistent/watchdog", 10).open()


def test_validate_watchdog_timeout() -> None:
    d = config_dict()
    d["cluster"].update(watchdog="/dev/watchdog", watchdog_timeout=0.5)
    assert any("watchdog_timeout" in p for p in validate(parse(d)))
    d["cluster"].update(watchdog_timeout=10)
    assert not any("watchdog" in p for p in validate(parse(d)))


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[LiveCluster, dict[str, Reader], Path]]:
    """n1, n2 in quorate mode with a tie-breaker they never hold: alone, a node has no quorum."""
    markers = tmp_path / "markers"
    markers.mkdir()
    readers = {n: Reader(tmp_path / f"wd-{n}") for n in ("n1", "n2")}
    extra = (
        'quorum = "quorate"\ntie_breaker = ["false"]\n'
        f'watchdog = "{tmp_path}/wd-{{node}}"\nwatchdog_timeout = 5.0'
    )
    c = LiveCluster(
        tmp_path,
        cluster_toml(tmp_path, ["n1", "n2"], config(markers), extra_cluster=extra),
    )
    c.start_all()
    try:
        yield c, readers, markers
    finally:
        c.stop()
        for r in readers.values():
            r.close()


def event(c: LiveCluster, node: str, task: str) -> dict[str, object]:
    return next(e for e in c.events(node) if e.get("task") == task)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", ["completes", "fails"])
def test_self_fence_pauses_the_watchdog(
    two: tuple[LiveCluster, dict[str, Reader], Path], stop: str
) -> None:
    c, readers, markers = two
    c.wait_for("web on n1", lambda: running(markers) == ["app.n1"], 15)
    t0 = time.time()
    time.sleep(1.0)
    kicks = readers["n1"].since(t0)
    assert 7 <= len(kicks) <= 13 and set(kicks) == {b"\0"}, kicks  # one per 0.1 s interval
    if stop == "fails":
        (markers / "stuck.n1").touch()  # n1 cannot stop web, even forced
    c.kill("n2")  # n1 is left with half the votes and no tie-breaker: it must self-fence
    c.wait_for("watchdog hold on n1", lambda: event(c, "n1", "watchdog-hold"), 10)
    held_at = float(event(c, "n1", "watchdog-hold")["time"])  # type: ignore[arg-type]
    if stop == "completes":
        c.wait_for("release on n1", lambda: event(c, "n1", "watchdog-release"), 10)
        released = float(event(c, "n1", "watchdog-release")["time"])  # type: ignore[arg-type]
        assert running(markers) == []
        # no kick while the stop was pending (short here: the fake agent stops at once)
        assert not [at for at, _ in readers["n1"].got if held_at + 0.15 <= at < released]
        time.sleep(1.0)
        assert len(readers["n1"].since(released + 0.05)) >= 7  # kicking again
    else:
        c.wait_for("stop-failed on n1", lambda: c.status("n1")["hierarchies"]["web"]["local"][
            "state"] == "stop-failed", 10)  # fmt: skip
        time.sleep(2.0)
        assert readers["n1"].since(held_at + 0.15) == []  # no kick since: the device would reset
    c.kill("n1", 15)  # SIGTERM: a clean shutdown
    time.sleep(0.3)
    tail = b"".join(b for _, b in readers["n1"].got)[-1:]
    closing = str(event(c, "n1", "watchdog-close")["desc"])
    if stop == "completes":
        assert tail == b"V" and closing.startswith("magic close"), closing
    else:
        assert tail == b"\0" and "left armed" in closing, closing
