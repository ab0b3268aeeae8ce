"""STONITH with Debian's fence-agents, unchanged, in a namespaced cluster (issue 4, STONITH).

A shared-data hierarchy without an own-able resource may only move after its dead owner has been
fenced. The levels for n1, as a cluster.toml would configure them:
  level 1: fence_heuristics_ping to 198.51.100.99 (a gateway that is down: nobody holds it),
           then fence_dummy "ipmi" - which must not run, the heuristic vetoed it;
  level 2: fence_heuristics_ping to the client (up), then fence_dummy "pdu" (powers n1 off).
The agents ping from n2's namespace, across the lab bridge. Root only; skips and says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import CLIENT_ADDR, NET, VIP, Lab, NsCluster, open_lab, web_hierarchy

DOWN = f"{NET}.99"  # on network A, held by no host


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from open_lab(
        storage=False, arping="arping", fence_heuristics_ping="fence-agents", ping="iputils-ping"
    )


def ping(name: str, target: str) -> str:
    """One probe, one second; verbose = "1" makes the agent say which target failed."""
    return f"""[[fencing.devices]]
name = "{name}"
agent = "fence_heuristics_ping"
[fencing.devices.params]
ping_targets = "{target}"
ping_count = "1"
ping_good_count = "1"
ping_timeout = "1"
verbose = "1"
"""


def fencing(tmp: Path) -> str:
    out = ping("gw-ping", DOWN) + ping("client-ping", CLIENT_ADDR)
    for dev in ("ipmi", "pdu"):
        (tmp / f"power-{dev}").write_text("on")  # fence_dummy's "power": no newline
        out += f"""[[fencing.devices]]
name = "{dev}"
agent = "fence_dummy"
params = {{ status_file = "{tmp}/power-{dev}" }}
"""
    for n in ("n1", "n2", "n3"):
        out += f"""[[fencing.levels]]
node = "{n}"
level = 1
devices = ["gw-ping", "ipmi"]
[[fencing.levels]]
node = "{n}"
level = 2
devices = ["client-ping", "pdu"]
"""
    return out


@pytest.mark.timeout(90)
def test_crashed_owner_is_fenced_by_real_agents_level_by_level(lab: Lab, tmp_path: Path) -> None:
    hier = web_hierarchy(tmp_path / "www", bottom="process", extra="shared_data = true")
    c = NsCluster(lab, tmp_path, hier + fencing(tmp_path))
    c.start_all()
    c.wait_for("web on n1", lambda: c.serving("n2") == ["n1"], 30)
    since = time.time()
    c.crash("n1")
    c.wait_for("n2 runs web", lambda: c.serving("n2") == ["n2"], 20)
    print("\n" + "\n".join(c.timeline(n, since) for n in ("n2", "n3")))

    ev = [e for e in c.events("n2") if e["time"] >= since]
    fenced = [e for e in ev if e.get("kind") == "fencing" and e.get("task") == "fenced"]
    assert len(fenced) == 1 and fenced[0]["peer"] == "n1", fenced
    level1, level2 = fenced[0]["desc"].split(" | ")
    # level 1: the heuristic failed for a real reason, and vetoed the power device after it
    assert level1.startswith("level 1: gw-ping: exit 1"), level1
    assert f"ping target {DOWN} received 0 of 1 and thus failed" in level1, level1
    assert level1.endswith("ipmi: skipped (an earlier device of this level failed)"), level1
    assert level2.startswith("level 2: client-ping: exit 0"), level2
    assert f"ping target {CLIENT_ADDR} received 1 of 1" in level2, level2
    assert level2.endswith("; pdu: exit 0: Success: Powered OFF"), level2
    assert (tmp_path / "power-ipmi").read_text() == "on"
    assert (tmp_path / "power-pdu").read_text() == "off"
    # started only once n1 was fenced, and only on n2
    start = [e for e in ev if e.get("task") == "acquire-start" and e.get("hierarchy") == "web"]
    assert len(start) == 1 and start[0]["time"] >= fenced[0]["time"], (start, fenced)
    assert VIP in lab.addresses("n2") and VIP not in lab.addresses("n3")
    assert not any(e.get("task") == "acquire-start" for e in c.events("n3") if e["time"] >= since)
