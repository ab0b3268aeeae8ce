"""A rolling restart of three `ophiura node` daemons in network namespaces (issue 12, Must show 2).

[volume (PR LUN) -> ip (VIP) -> http.server] on n1; a client in its own namespace polls the VIP
every 10 ms. Each daemon in turn, started with `--keep-resources`, is stopped with SIGTERM (what
`systemctl stop` does before the code is replaced) and started again: the restarted daemon adopts
what runs (its probe: the reservation, the address, the process), nothing is stopped or started,
and the client sees 0 failed requests, every answer from n1. Root only (network namespaces).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import HTTP_PORT, VIP, HttpClient, Lab, NsCluster, open_lab, pr_holder, web_hierarchy


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from open_lab(arping="arping")


def http_pid(c: NsCluster) -> int:
    (pidfile,) = (c.tmp / "rsc" / "n1").rglob("process-http.pid")
    return int(pidfile.read_text().split()[0])


@pytest.mark.timeout(180)
def test_rolling_restart_keeps_every_hierarchy_running(lab: Lab, tmp_path: Path) -> None:
    c = NsCluster(lab, tmp_path, web_hierarchy(tmp_path / "www"))
    c.start_target()
    for n in lab.nodes:
        c.start(n, "--keep-resources")
    c.wait_for("web on n1", lambda: c.serving("n2") == ["n1"], 30)
    pid = http_pid(c)
    client = HttpClient(lab, tmp_path / "client.json", HTTP_PORT, duration=60.0)
    try:
        c.wait_for("client answered", lambda: (tmp_path / "client.log").exists(), 5)
        time.sleep(0.5)  # a few answers before the first restart (not a wait for a state)
        for n in lab.nodes:
            before = len(c.events(n))
            assert c.daemons[n].stop(timeout=30) == 0, c.daemons[n].tail()
            c.start(n, "--keep-resources")
            c.wait_for(f"{n} online", lambda n=n: c.status(n)["state"] == "online", 30)
            c.wait_for("all see web on n1", lambda: all(
                c.hier(m)["running_on"] == ["n1"] for m in lab.nodes), 10)  # fmt: skip
            new = [e for e in c.events(n)[before:] if e.get("kind") in ("resource", "hierarchy")]
            acted = [e for e in new if e.get("task") in ("start", "stop", "acquire-start")]
            assert acted == [], acted
            if n == "n1":
                assert any("adopted" in e.get("desc", "") for e in new), new
    finally:
        result = client.finish()
    answers = {who for _, _, who in result["ok"]}
    print(
        f"\nrolling restart: {len(result['ok'])} answers, {result['fails']} failed, from {answers}"
    )
    assert result["fails"] == 0 and answers == {"n1"} and len(result["ok"]) > 50
    assert http_pid(c) == pid
    assert pr_holder(lab) == "n1" and VIP in lab.addresses("n1")
