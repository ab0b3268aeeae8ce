"""Membership never depends on wall-clock time; replays stay refused (issue 9, failure 9).

Real `HeartbeatService`s exchange real packets over UDP on 127.0.0.1. A node's clock is stepped
the way an operator's `date -s` or an NTP step would: `time.time` and `time.time_ns` return a
shifted value, but only on the threads of that node (`SteppedClock`), so two nodes can live in
one process with clocks an hour apart. A third configured node, "c", is a plain socket: every
peer sends it the same bytes it sends the others, so it captures packets for replay.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster import clock, membership
from ophiura.cluster import heartbeat as hb
from ophiura.cluster.config import ClusterConfig, parse
from ophiura.cluster.heartbeat_io import HeartbeatService
from ophiura.testkit.ports import free_ports
from ophiura.testkit.waiting import wait_for

from .kit import config_dict


class SteppedClock:
    """Shift the wall clock seen by chosen threads (one node's), leave every other one alone."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offsets: dict[int, float] = {}
        real, real_ns = time.time, time.time_ns

        def fake() -> float:
            return real() + self.offsets.get(threading.get_ident(), 0.0)

        def fake_ns() -> int:
            return real_ns() + int(self.offsets.get(threading.get_ident(), 0.0) * 1e9)

        monkeypatch.setattr(time, "time", fake)
        monkeypatch.setattr(time, "time_ns", fake_ns)

    def step(self, svc: HeartbeatService, seconds: float) -> None:
        assert svc._thread is not None and svc._thread.ident is not None
        self.offsets[svc._thread.ident] = seconds

    def start(self, cfg: ClusterConfig, node: str, seconds: float) -> HeartbeatService:
        """Start `node`'s daemon with its clock already `seconds` off, construction included."""
        me = threading.get_ident()
        self.offsets[me] = seconds
        try:
            svc = HeartbeatService(cfg, node)
        finally:
            del self.offsets[me]
        svc.start()
        self.step(svc, seconds)
        return svc


def three_node_config() -> ClusterConfig:
    d = config_dict(nodes=("a", "b", "c"))
    p = free_ports(6, socket.SOCK_DGRAM)
    for i, link in enumerate(d["links"]):
        link["addresses"] = {n: f"127.0.0.1:{p[3 * i + j]}" for j, n in enumerate("abc")}
    return parse(d)


@pytest.fixture
def cfg() -> ClusterConfig:
    return three_node_config()


@pytest.fixture
def tap(cfg: ClusterConfig) -> Iterator[socket.socket]:
    """Node c's ring0 address: receives (captures) what a and b send on ring0."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(cfg.links[0].addresses["c"])
    s.settimeout(5.0)
    yield s
    s.close()


@pytest.fixture
def running() -> Iterator[list[HeartbeatService]]:
    services: list[HeartbeatService] = []
    yield services
    for svc in services:
        svc.stop()


def hears(rx: HeartbeatService, tx: HeartbeatService) -> bool:
    """`rx` holds a report from `tx`'s current incarnation."""
    r = rx.snapshot().reports.get(tx.me)
    return r is not None and r.incarnation == tx.incarnation


def alive(rx: HeartbeatService, peer: str) -> bool:
    snap = rx.snapshot()
    t = rx.cfg.timings
    m = membership.evaluate(snap.last_heard, [peer], ["ring0", "ring1"], time.monotonic(),
                            t.deadline, snap.resumed_at)  # fmt: skip
    return m.peers[peer] == "up"


def capture(tap: socket.socket, cfg: ClusterConfig, sender: str, n: int) -> list[bytes]:
    """`n` ring0 packets `sender` sent to every peer, each echoing a's challenge (the ones that
    could prove it fresh to a). The tap is node c's address: it hears what a hears."""
    got: list[bytes] = []
    while len(got) < n:
        data, _ = tap.recvfrom(65536)
        packet = hb.decode(data, cfg.key("heartbeat"))
        if packet.node == sender and packet.echoes.get("a"):
            got.append(data)
    return got


def start(cfg: ClusterConfig, node: str, running: list[HeartbeatService]) -> HeartbeatService:
    svc = HeartbeatService(cfg, node)
    svc.start()
    running.append(svc)
    return svc


def test_restart_with_the_clock_set_back_is_accepted_at_once(
    cfg: ClusterConfig, running: list[HeartbeatService], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SteppedClock(monkeypatch)
    a = start(cfg, "a", running)
    b = start(cfg, "b", running)
    wait_for(lambda: hears(a, b), 5.0, "a hears b")
    b.stop()
    b2 = clock.start(cfg, "b", -3600.0)  # b's node restarts with its clock an hour back
    running.append(b2)
    # At once: one heartbeat to learn a's challenge, the next proves b2 fresh.
    wait_for(lambda: hears(a, b2) and alive(a, "b"), 5.0, "a accepts the restarted b")
    wait_for(lambda: hears(b2, a), 5.0, "b2 accepts a")
    assert "old-incarnation" not in a.snapshot().rejected


@pytest.mark.parametrize("step", [60.0, -60.0], ids=["ahead", "behind"])
def test_a_clock_step_does_not_kill_a_peer(
    cfg: ClusterConfig,
    running: list[HeartbeatService],
    monkeypatch: pytest.MonkeyPatch,
    step: float,
) -> None:
    clock = SteppedClock(monkeypatch)
    a = start(cfg, "a", running)
    b = start(cfg, "b", running)
    wait_for(lambda: hears(a, b) and hears(b, a), 5.0, "a and b hear each other")
    clock.step(a, step)
    base = a.seq
    t = cfg.timings
    # Watch for three deadlines' worth of a's heartbeats (counted, not timed): both stay up.
    while a.seq < base + 3 * t.deadline / t.interval:
        assert alive(b, "a") and alive(a, "b"), (b.snapshot().rejected, a.snapshot().rejected)
        time.sleep(t.interval / 2)
    after = base + 2 * t.deadline / t.interval
    wait_for(
        lambda: b.snapshot().reports["a"].seq > after, 5.0, "b accepts a's packets after the step"
    )
    assert alive(b, "a") and alive(a, "b")
    assert not (set(b.snapshot().rejected) | set(a.snapshot().rejected)) - {"unechoed"}


def test_replayed_packets_of_the_current_incarnation_are_refused(
    cfg: ClusterConfig, running: list[HeartbeatService], tap: socket.socket
) -> None:
    a = start(cfg, "a", running)
    b = start(cfg, "b", running)
    wait_for(lambda: hears(a, b), 5.0, "a hears b")
    captured = capture(tap, cfg, "b", 5)
    last = max(hb.decode(d, cfg.key("heartbeat")).seq for d in captured)
    wait_for(lambda: a.snapshot().reports["b"].seq > last, 5.0, "a moved past the capture")
    before = a.snapshot().rejected.get("replay", 0)
    addr = cfg.links[0].addresses["a"]
    for data in captured:
        tap.sendto(data, addr)
    wait_for(
        lambda: a.snapshot().rejected.get("replay", 0) >= before + len(captured),
        5.0,
        "every replay refused",
    )
    assert a.snapshot().reports["b"].seq > last


def test_an_old_incarnation_never_comes_back(
    cfg: ClusterConfig, running: list[HeartbeatService], tap: socket.socket
) -> None:
    a = start(cfg, "a", running)
    b = start(cfg, "b", running)
    wait_for(lambda: hears(a, b), 5.0, "a hears b")
    old = capture(tap, cfg, "b", 5)  # b's first incarnation, echoing a's challenge
    b.stop()
    b2 = start(cfg, "b", running)
    wait_for(lambda: hears(a, b2), 5.0, "a accepts the restarted b")
    b2.stop()
    wait_for(lambda: not alive(a, "b"), 10.0, "b is dead to a")
    before = a.snapshot().rejected.get("stale-echo", 0)
    addr = cfg.links[0].addresses["a"]
    for data in old:
        tap.sendto(data, addr)
    wait_for(
        lambda: a.snapshot().rejected.get("stale-echo", 0) >= before + len(old),
        5.0,
        "old incarnation refused",
    )
    assert hears(a, b2) and not alive(a, "b")


def test_a_restarted_receiver_refuses_every_captured_packet(
    cfg: ClusterConfig, running: list[HeartbeatService], tap: socket.socket
) -> None:
    """Seconds-old packets of a now-dead peer cannot make it look alive to a fresh daemon (the
    old wall-clock window accepted anything stamped within 30 s)."""
    a = start(cfg, "a", running)
    b = start(cfg, "b", running)
    wait_for(lambda: hears(a, b), 5.0, "a hears b")
    captured = capture(tap, cfg, "b", 5)
    b.stop()
    a.stop()
    a2 = start(cfg, "a", running)
    addr = cfg.links[0].addresses["a"]
    for data in captured:
        tap.sendto(data, addr)
    wait_for(
        lambda: sum(a2.snapshot().rejected.values()) >= len(captured),
        5.0,
        "every replay refused",
    )
    snap = a2.snapshot()
    assert "b" not in snap.reports and not alive(a2, "b"), snap.rejected


# Where cluster code may read the wall clock: stamps on events for people to read, and the name
# of the day's event file. Anything else would let a clock step change a decision.
# display only: event timestamps, the disk watchdog's stamp, the metrics' process start time
WALL_CLOCK_READERS = {
    "daemon.py": 1,
    "events.py": 2,
    "agents/disk_watchdog.py": 1,
    "node_metrics.py": 1,
}


def test_no_decision_reads_the_wall_clock() -> None:
    root = Path(clock.__file__).parent
    pattern = re.compile(r"\btime\.time(_ns)?\(|datetime\.now\(|\.today\(|\butcnow\(")
    found = {
        str(p.relative_to(root)): n
        for p in sorted(root.rglob("*.py"))
        if p.name != "clock.py" and (n := len(pattern.findall(p.read_text())))
    }
    assert found == WALL_CLOCK_READERS


def test_step_clock_shifts_time_time_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `step-clock` test hook moves this process's wall clock, never the monotonic one."""
    monkeypatch.setattr(time, "time", time.time)
    monkeypatch.setattr(time, "time_ns", time.time_ns)
    monkeypatch.setattr(clock, "_offset_ns", 0)
    wall, mono = time.time(), time.monotonic()
    assert clock.step(-3600) == -3600.0
    assert time.time() - wall < -3599 and abs(time.time_ns() / 1e9 - time.time()) < 1
    assert 0 <= time.monotonic() - mono < 60
    assert clock.step(3600.5) == 0.5 and clock.offset() == 0.5
