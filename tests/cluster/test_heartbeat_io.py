"""The heartbeat thread keeps beating while the main loop is blocked; links are tracked apart."""

from __future__ import annotations

import socket
import time

from ophiura.cluster import membership
from ophiura.cluster.config import parse
from ophiura.cluster.heartbeat_io import HeartbeatService
from ophiura.testkit.ports import free_ports

from .kit import config_dict


def two_nodes() -> tuple[HeartbeatService, HeartbeatService]:
    d = config_dict(nodes=("a", "b"))
    p = free_ports(4, socket.SOCK_DGRAM)
    d["links"][0]["addresses"] = {"a": f"127.0.0.1:{p[0]}", "b": f"127.0.0.1:{p[1]}"}
    d["links"][1]["addresses"] = {"a": f"127.0.0.1:{p[2]}", "b": f"127.0.0.1:{p[3]}"}
    cfg = parse(d)
    return HeartbeatService(cfg, "a"), HeartbeatService(cfg, "b")


def alive(svc: HeartbeatService, peer: str) -> membership.Membership:
    snap = svc.snapshot()
    t = svc.cfg.timings
    return membership.evaluate(snap.last_heard, [peer], ["ring0", "ring1"], time.monotonic(),
                               t.deadline, snap.resumed_at)  # fmt: skip


def test_blocked_main_thread_does_not_stop_heartbeats() -> None:
    a, b = two_nodes()
    a.start()
    b.start()
    try:
        a.set_payload("online", {}, {})
        time.sleep(0.3)
        assert alive(a, "b").peers["b"] == "up"
        # The main thread is now "busy" (a synchronous agent call, a GC pause): 2 s, 3 deadlines.
        time.sleep(2.0)
        assert alive(a, "b").peers["b"] == "up" and alive(b, "a").peers["a"] == "up"
        assert b.snapshot().reports["a"].state == "online"
        assert a.snapshot().sent >= 2 * 15
    finally:
        a.stop()
        b.stop()


def test_blocked_link_goes_down_alone() -> None:
    a, b = two_nodes()
    a.start()
    b.start()
    try:
        time.sleep(0.3)
        a.block_link(1, True)
        time.sleep(a.cfg.timings.deadline + 0.3)
        m = alive(b, "a")
        assert m.peers["a"] == "up"
        assert m.links[("a", "ring0")] == "up" and m.links[("a", "ring1")] == "down"
    finally:
        a.stop()
        b.stop()


def test_bind_conflict_is_an_oserror() -> None:
    a, _ = two_nodes()
    a.start()
    try:
        twin = HeartbeatService(a.cfg, "a")
        try:
            twin.start()
        except OSError as exc:
            assert "cannot bind" in str(exc)
        else:
            twin.stop()
            raise AssertionError("a second node on the same ports must not start")
    finally:
        a.stop()
