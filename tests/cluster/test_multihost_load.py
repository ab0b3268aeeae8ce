"""Busy is not dead; stopped past the deadline is (issue 4, "Must show" 5), in namespaces.

With the default timings (heartbeat every 0.1 s, deadline 0.7 s): a CPU hog on every core plus
an I/O burst (dd with fsync) cause no failover; a SIGSTOP of n1's daemon shorter than half the
deadline causes none; a SIGSTOP longer than the deadline does, and when n1 is continued it
stops its copy, while its writes through its own I_T nexus already meet RESERVATION CONFLICT
(n2 took the LUN with PREEMPT AND ABORT). Root only; skips and says why otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import (
    VIP,
    Lab,
    NsCluster,
    open_lab,
    pr_holder,
    web_hierarchy,
    write_as,
)

GOOD, RESERVATION_CONFLICT = 0x00, 0x18
HOG = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\n" + (
    "while time.monotonic() < end:\n    pass\n"
)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from open_lab(arping="arping")


def trouble(c: NsCluster, since: float) -> list[str]:
    """Membership trouble or hierarchy moves any node logged since wall-clock `since`."""
    bad = {"node-dead", "link-down", "acquire-start", "failover", "restart"}
    return [
        f"{n} {e.get('task')} {e.get('peer', '')} {e.get('link', '')} {e.get('desc', '')}"
        for n in c.lab.nodes
        for e in c.events(n)
        if e["time"] >= since and e.get("task") in bad
    ]


def on_n1_only(c: NsCluster) -> bool:
    w = c.hier("n3")
    return w["running_on"] == ["n1"] and w["gen"] == 1


@pytest.mark.timeout(150)
def test_busy_is_not_dead_but_stopped_is_fenced(lab: Lab, tmp_path: Path) -> None:
    c = NsCluster(lab, tmp_path, web_hierarchy(tmp_path / "www"))
    t = c.cfg.timings
    assert (t.interval, t.deadline) == (0.1, 0.7)  # the defaults
    c.start_target()
    c.start_all()
    c.wait_for("web on n1", lambda: c.serving("n2") == ["n1"] and on_n1_only(c), 30)

    # 1. A CPU hog on every core and an I/O burst, together for ~5 s: no failover.
    since = time.time()
    cores = os.cpu_count() or 1
    hogs = [
        subprocess.Popen([sys.executable, "-c", HOG, "5"]) for _ in range(cores)
    ]  # fmt: skip
    burst = tmp_path / "burst"
    dd = subprocess.Popen(
        ["timeout", "20", "dd", "if=/dev/zero", f"of={burst}", "bs=1M", "count=768",
         "conv=fsync"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        for p in hogs:
            p.wait(20)
        _, err = dd.communicate(timeout=25)
        busy = time.monotonic() - t0
    finally:
        for p in [*hogs, dd]:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        burst.unlink(missing_ok=True)
    time.sleep(1.0)
    rate = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
    print(f"\n{cores} CPU hogs + dd (768 MiB, fsync) for {busy:.1f} s: {rate}")
    assert trouble(c, since) == [], trouble(c, since)
    assert on_n1_only(c)

    # 2. SIGSTOP of n1's daemon for less than half the deadline: nothing happens.
    since = time.time()
    daemon = c.daemons["n1"]
    short = t.deadline / 2 * 0.8
    daemon.signal(signal.SIGSTOP)
    time.sleep(short)
    daemon.signal(signal.SIGCONT)
    time.sleep(1.5)
    assert trouble(c, since) == [], trouble(c, since)
    assert on_n1_only(c)
    print(f"SIGSTOP of n1 for {short:.2f} s: no failover")

    # 3. SIGSTOP past the deadline: n2 takes over (PREEMPT AND ABORT), n1's writes are refused.
    since = time.time()
    daemon.signal(signal.SIGSTOP)
    try:
        assert write_as(lab, "n1") == GOOD  # the rogue's data path, while it still owns the LUN
        took = c.wait_for("n2 takes over", lambda: c.serving("n3") == ["n2"], 10)
        assert pr_holder(lab) == "n2"
        # n1 is still frozen with its VIP and service up: its cached writes meet the fence.
        assert VIP in lab.addresses("n1") and c.service_pid("n1") is not None
        assert write_as(lab, "n1") == RESERVATION_CONFLICT
    finally:
        daemon.signal(signal.SIGCONT)
    t0 = time.monotonic()
    stopped = c.wait_for(
        "n1 stops its copy",
        lambda: (
            c.hier("n1")["local"]["state"] in ("stopped", "failed")
            and not c.hier("n1")["local"]["busy"]
        ),
        10,
    )
    print(
        f"SIGSTOP of n1 past the deadline: n2 took over {took:.2f} s after the stop; "
        f"n1 stopped its copy {stopped:.2f} s after SIGCONT\n"
        + c.timeline("n1", since)
        + "\n"
        + c.timeline("n2", since)
    )
    assert VIP not in lab.addresses("n1") and c.service_pid("n1") is None
    assert write_as(lab, "n1") == RESERVATION_CONFLICT  # still fenced after waking up
    for via in ("n1", "n2", "n3"):
        c.wait_for(f"{via} sees web on n2 only", lambda via=via: c.serving(via) == ["n2"], 2)
    assert pr_holder(lab) == "n2" and VIP in lab.addresses("n2")
    assert time.monotonic() - t0 < 10
