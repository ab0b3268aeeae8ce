"""Three `ophiura node` daemons in network namespaces (issue 4, "Must show" 1 and 3).

Each node is a namespace with two heartbeat links (networks A and B) and a storage network on
which `ophiura target` serves the shared LUN; a client namespace on network A polls the floating
IP. Root only (network namespaces); when not root the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import (
    HTTP_PORT,
    VIP,
    HttpClient,
    Lab,
    NsCluster,
    open_lab,
    pr_holder,
    web_hierarchy,
)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from open_lab(arping="arping")


@pytest.mark.timeout(90)
def test_crash_of_the_owner_fails_over_in_under_a_second(lab: Lab, tmp_path: Path) -> None:
    """[volume -> ip -> http.server], n1 > n2 > n3, default timings: crash n1 (kill -9 of its
    daemon and services, its bridge ports down); the client sees an outage under 1 s and the
    hierarchy runs on n2 only."""
    c = NsCluster(lab, tmp_path, web_hierarchy(tmp_path / "www"))
    assert c.cfg.timings.interval == 0.1 and c.cfg.timings.deadline == 0.7  # the defaults
    c.start_target()
    c.start_all()
    c.wait_for("web on n1", lambda: c.serving("n2") == ["n1"], 30)
    assert pr_holder(lab) == "n1"
    client = HttpClient(lab, tmp_path / "client.json", HTTP_PORT, duration=20.0)
    try:
        time.sleep(1.0)  # the client sees n1 for a while
        crash = c.crash("n1")
        # no status polling while the failover runs: it would compete with it for the CPU
        time.sleep(1.5)
        c.wait_for("n2 runs web", lambda: c.serving("n3") == ["n2"], 10)
    finally:
        result = client.finish()
    o = HttpClient.outage(result, crash, "n1", "n2")
    print(
        f"\ncrash of n1: client-observed outage {o.seconds:.3f} s "
        f"(first answer from n2 {o.since_crash:.3f} s after the crash); "
        f"answers {o.answered_by}, failed probes {o.fails}\n" + c.timeline("n2", c.crashed_at)
    )
    assert o.seconds is not None, f"the client never saw both nodes: {o}"
    assert o.seconds < 1.0, f"outage {o.seconds:.3f} s"
    # Only n2 runs it, say n2 (admin API) and n3 (`ophiura cluster status --json` run there);
    # n2 holds the reservation and the VIP.
    w = c.hier("n2")
    assert w["running_on"] == ["n2"] and w["owner"] == "n2" and w["states"]["n3"] == "stopped", w
    assert c.status("n2")["nodes"]["n1"]["state"] == "dead"
    r = c.cli("n3", "status", "--json", "--node", "n3")
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout)
    w = st["hierarchies"]["web"]
    assert w["running_on"] == ["n2"] and w["owner"] == "n2" and w["states"]["n3"] == "stopped", w
    assert st["nodes"]["n1"]["state"] == "dead" and st["nodes"]["n2"]["state"] == "up"
    assert pr_holder(lab) == "n2"
    assert VIP in lab.addresses("n2") and VIP not in lab.addresses("n3")
    events = c.events("n2")
    assert any(e.get("task") == "node-dead" and e.get("peer") == "n1" for e in events)
    # Once n2 answered, every answer came from n2 (none from a half-dead n1).
    late = [who for _, done, who in result["ok"] if done >= o.first_after]
    assert set(late) == {"n2"}, set(late)


@pytest.mark.timeout(120)
def test_crashing_service_restarts_locally_then_fails_over_and_counts_expire(
    lab: Lab, tmp_path: Path
) -> None:
    """http.server killed with SIGKILL: restarted on n1 max_restarts (2) times, the third crash
    moves the hierarchy to n2; n1's fail counts are shown, then expire (n1 eligible again)."""
    extra = "max_restarts = 2\nrestart_window = 20.0\nfailure_expiry = 6.0"
    c = NsCluster(lab, tmp_path, web_hierarchy(tmp_path / "www", bottom="process", extra=extra))
    c.start_all()
    c.wait_for("web on n1", lambda: c.serving("n2") == ["n1"], 30)
    t0 = time.monotonic()
    for n in (1, 2):
        pid = c.service_pid("n1")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        c.wait_for(
            f"restart {n} on n1",
            lambda pid=pid: (
                c.service_pid("n1") not in (None, pid) and c.hier("n1")["states"]["n1"] == "running"
            ),
            10,
        )
        counts = c.hier("n1")["fail_counts"]["n1"]
        assert counts == {"http": n}, counts
        # n3 learns of the restart by heartbeat: one interval after n1 says running
        c.wait_for("n3 sees web on n1 again", lambda: c.serving("n3") == ["n1"], 5)
    pid = c.service_pid("n1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    c.wait_for("failover to n2", lambda: c.serving("n3") == ["n2"], 10)
    w = c.hier("n2")
    assert w["states"]["n1"] == "failed" and w["fail_counts"]["n1"] == {"total": 3}, w
    assert c.hier("n1")["fail_counts"]["n1"] == {"http": 3}
    assert VIP in lab.addresses("n2") and VIP not in lab.addresses("n1")
    print(f"\n3 crashes in {time.monotonic() - t0:.2f} s: 2 local restarts, then failover to n2")
    # Failures older than failure_expiry (6 s) are forgotten: n1 is eligible again; no failback.
    c.wait_for("n1's failures expire", lambda: c.hier("n2")["states"]["n1"] == "stopped", 15)
    w = c.hier("n1")
    assert "n1" not in w["fail_counts"] and w["running_on"] == ["n2"], w
    assert any(e.get("task") == "expire" for e in c.events("n1"))
    print(f"n1's fail counts expired {time.monotonic() - t0:.2f} s after the first crash")
    # ... and a crash on n2 now moves it back to n1, the best eligible node.
    c.crash("n2")
    c.wait_for("web back on n1", lambda: c.serving("n3") == ["n1"], 10)
