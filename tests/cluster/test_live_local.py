"""Three `ophiura node` daemons on 127.0.0.1, two heartbeat links each, one hierarchy."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster import heartbeat as hb

from .live import LiveCluster, cluster_toml

NODES = ["n1", "n2", "n3"]


def hierarchy(markers: Path) -> str:
    hook = markers.parent / "hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        'echo "$CRM_alert_node $CRM_alert_kind $CRM_alert_task $CRM_alert_peer"'
        f" >> {markers.parent}/alerts\n"
    )
    hook.chmod(0o755)
    return f"""
[[notify]]
kind = "command"
command = ["{hook}"]
events = ["link", "node", "fencing"]
[[hierarchies]]
name = "web"
nodes = ["n1", "n2", "n3"]
max_restarts = 1
restart_window = 60

[[hierarchies.resources]]
name = "app"
kind = "python:tests.cluster.fake_agent:FakeAgent"
params = {{ dir = "{markers}" }}
monitor_interval = 0.3
"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveCluster, Path]]:
    markers = tmp_path / "markers"
    markers.mkdir()
    c = LiveCluster(tmp_path, cluster_toml(tmp_path, NODES, hierarchy(markers)))
    c.start_all()
    try:
        yield c, markers
    finally:
        c.stop()


def running(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir() if p.name.startswith("app."))


def web(c: LiveCluster, via: str) -> dict:  # type: ignore[type-arg]
    return c.status(via)["hierarchies"]["web"]


@pytest.mark.timeout(120)
def test_three_nodes(live: tuple[LiveCluster, Path]) -> None:
    c, markers = live
    # 1. The highest-priority node starts the hierarchy, and only it.
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
    assert running(markers) == ["app.n1"]

    # 2. Heartbeats with a wrong MAC, or an unproven incarnation under the right key (it echoes
    #    a challenge n2 never issued), are refused.
    n2_ring0 = c.cfg.links[0].addresses["n2"]
    forged = hb.Heartbeat("live", "n1", 0, 1, 10**9, "online", echoes={"n2": 1})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(hb.encode(forged, b"not the cluster key"), n2_ring0)
        s.sendto(hb.encode(forged, c.cfg.key("heartbeat")), n2_ring0)
        s.sendto(b"garbage", n2_ring0)
    c.wait_for(
        "rejections counted",
        lambda: {"bad-mac", "stale-echo", "short"} <= set(c.status("n2")["heartbeat"]["rejected"]),
        5,
    )
    assert any(e.get("task") == "heartbeat-rejected" for e in c.status("n2")["events"])

    # 3. One link cut (n1 drops ring1): an event on the others, no failover.
    c.admin("n1", {"op": "block-link", "link": 1, "blocked": True})
    c.wait_for(
        "link-down event on n2",
        lambda: any(
            e.get("task") == "link-down" and e.get("peer") == "n1" for e in c.status("n2")["events"]
        ),
        5,
    )
    time.sleep(1.0)
    st = c.status("n2")
    assert st["nodes"]["n1"]["state"] == "up"
    assert st["nodes"]["n1"]["links"] == {"ring0": "up", "ring1": "down"}
    assert st["hierarchies"]["web"]["running_on"] == ["n1"] and running(markers) == ["app.n1"]
    alerts = c.tmp / "alerts"
    c.wait_for("link-down notification", lambda: "n2 link link-down n1" in alerts.read_text(), 5)
    c.admin("n1", {"op": "block-link", "link": 1, "blocked": False})

    # 3b. n1's wall clock steps an hour back, then two ahead: membership reads no wall clock, so
    #     for three deadlines' worth of n1's heartbeats after each step nothing changes.
    for step in (-3600, 7200):
        c.admin("n1", {"op": "step-clock", "seconds": step})
        t = c.cfg.timings
        target = (
            c.status("n1")["heartbeat"]["sent"] + 3 * len(c.cfg.links) * t.deadline / t.interval
        )
        c.wait_for("n1 beats on", lambda n=target: c.status("n1")["heartbeat"]["sent"] > n, 10)
        st = c.status("n2")
        assert st["nodes"]["n1"]["state"] == "up" and st["nodes"]["n1"]["links"]["ring1"] == "up"
        assert st["hierarchies"]["web"]["running_on"] == ["n1"] and running(markers) == ["app.n1"]

    # 4. kill -9 n1's daemon (and its service, as a crash would): n2 takes over within ~1 s.
    t0 = time.monotonic()
    c.kill("n1")
    (markers / "app.n1").unlink()
    took = c.wait_for("n2 runs app", lambda: running(markers) == ["app.n2"], 10)
    print(f"\nfailover after kill -9: {took:.3f} s (deadline {c.cfg.timings.deadline} s)")
    assert took < 2.0, f"failover took {took:.2f} s"
    c.wait_for("n3 sees n2 own web", lambda: web(c, "n3")["owner"] == "n2", 5)
    assert time.monotonic() - t0 < 10

    # 5. status --json shows it all.
    r = c.cli("status", "--json", "--node", "n3")
    assert r.returncode == 0, r.stderr
    import json

    st = json.loads(r.stdout)
    assert st["nodes"]["n1"]["state"] == "dead" and st["nodes"]["n2"]["state"] == "up"
    assert st["hierarchies"]["web"]["owner"] == "n2"
    assert any(e.get("task") == "node-dead" and e.get("peer") == "n1" for e in st["events"])

    # 6. switchover moves it and leaves nothing behind.
    r = c.cli("switchover", "web", "--to", "n3", "--timeout", "20")
    assert r.returncode == 0, r.stdout + r.stderr + c.tails()
    assert running(markers) == ["app.n3"]
    w = web(c, "n2")
    assert w["switchover"] is None and w["running_on"] == ["n3"]
    assert w["states"]["n2"] == "stopped"
    r = c.cli("status")
    assert r.returncode == 0 and "web" in r.stdout, r.stderr


@pytest.mark.timeout(120)
def test_admin_commands(live: tuple[LiveCluster, Path]) -> None:
    c, markers = live
    c.wait_for("web on n1", lambda: web(c, "n3")["running_on"] == ["n1"], 15)
    # standby moves it off n1; online does not move it back (manual failback).
    assert c.cli("standby", "n1").returncode == 0
    c.wait_for("web off n1", lambda: running(markers) == ["app.n2"], 10)
    assert c.cli("online", "n1").returncode == 0
    time.sleep(1.0)
    assert running(markers) == ["app.n2"]
    # frozen: a crash of its resource is not recovered.
    assert c.cli("freeze", "web").returncode == 0
    c.wait_for("frozen seen", lambda: web(c, "n2")["frozen"], 5)
    r = c.cli("switchover", "web", "--to", "n3")
    assert r.returncode != 0 and "frozen" in (r.stdout + r.stderr)
    assert web(c, "n2")["switchover"] is None  # the failed request leaves nothing behind
    assert c.cli("unfreeze", "web").returncode == 0
    # maintenance: nothing moves even when the owner dies.
    assert c.cli("maintenance", "on").returncode == 0
    c.wait_for("maintenance everywhere", lambda: all(c.status(n)["admin"]["m"] for n in NODES), 5)
    c.kill("n2")
    (markers / "app.n2").unlink()
    time.sleep(1.5)
    assert running(markers) == []
    assert c.cli("maintenance", "off", "--node", "n1").returncode == 0
    c.wait_for("recovery after maintenance", lambda: running(markers) == ["app.n1"], 10)


@pytest.mark.timeout(120)
def test_local_restart_then_failover(live: tuple[LiveCluster, Path]) -> None:
    """max_restarts = 1: the first crash restarts on n1, the second moves web to n2."""
    c, markers = live
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
    (markers / "app.n1").unlink()  # the service "crashes"
    c.wait_for("restarted on n1", lambda: running(markers) == ["app.n1"], 5)
    assert web(c, "n1")["fail_counts"]["n1"] == {"app": 1}
    time.sleep(0.5)
    (markers / "app.n1").unlink()
    c.wait_for("failed over to n2", lambda: running(markers) == ["app.n2"], 5)
    w = web(c, "n2")
    assert w["states"]["n1"] == "failed" and w["owner"] == "n2"
    # cleanup clears the fail counts everywhere; n1 is eligible again (and failback is manual).
    assert c.cli("cleanup", "web").returncode == 0
    c.wait_for("n1 clean", lambda: web(c, "n2")["states"]["n1"] == "stopped", 5)
    assert "n1" not in web(c, "n2")["fail_counts"] and running(markers) == ["app.n2"]


@pytest.mark.timeout(60)
def test_sigstop_shorter_than_half_deadline_no_failover(live: tuple[LiveCluster, Path]) -> None:
    c, markers = live
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
    c.kill("n1", signal.SIGSTOP)
    time.sleep(c.cfg.timings.deadline / 2 * 0.8)
    c.kill("n1", signal.SIGCONT)
    time.sleep(1.0)
    assert running(markers) == ["app.n1"]
    assert not any(e.get("task") == "node-dead" for e in c.status("n2")["events"])


@pytest.mark.timeout(60)
def test_rogue_node_wakes_up_and_stops_its_copy(live: tuple[LiveCluster, Path]) -> None:
    """SIGSTOP longer than the deadline: n2 takes over; n1, continued, sees the newer owner."""
    c, markers = live
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
    c.kill("n1", signal.SIGSTOP)
    took = c.wait_for("n2 takes over", lambda: "app.n2" in running(markers), 10)
    assert running(markers) == ["app.n1", "app.n2"]  # n1's frozen copy is still "there"
    print(f"\ntakeover from a stopped node: {took:.3f} s")
    c.kill("n1", signal.SIGCONT)
    took = c.wait_for("n1 stops its copy", lambda: running(markers) == ["app.n2"], 5)
    print(f"rogue node stopped its copy {took:.3f} s after SIGCONT")
    c.wait_for("n3 sees n2 own web", lambda: web(c, "n3")["running_on"] == ["n2"], 3)


@pytest.mark.timeout(60)
def test_restarted_daemon_probes_and_yields(live: tuple[LiveCluster, Path]) -> None:
    """kill -9 of the daemon alone leaves the service running; the new daemon finds it (probe)."""
    c, markers = live
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
    c.kill("n1")
    c.wait_for("n2 takes over", lambda: "app.n2" in running(markers), 10)
    c.start("n1")
    c.wait_for("n1 stops the copy it found", lambda: running(markers) == ["app.n2"], 15)
    assert any(e.get("task") == "probe" for e in c.events("n1"))


@pytest.mark.timeout(60)
def test_sigterm_hands_over_cleanly(live: tuple[LiveCluster, Path]) -> None:
    """stop_on_shutdown (default): the leaving node stops its copy, the next starts at once."""
    c, markers = live
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
    assert web(c, "n2")["resources"]["n1"] == {"app": "running"}
    c.kill("n1", signal.SIGTERM)
    assert c.procs["n1"].returncode == 0
    c.wait_for("n2 runs it", lambda: running(markers) == ["app.n2"], 5)
    w = web(c, "n3")
    assert w["resources"]["n2"] == {"app": "running"}
