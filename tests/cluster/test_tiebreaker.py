"""The quorum-LUN tie-breaker (`tiebreaker.py`) against a real `ophiura target`: first come
reserves, a live holder keeps it by refreshing, a silent holder is preempted after `challenge`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ophiura.cluster.tiebreaker import arbitrate

from .test_agents_volume import Server, _res, _write_as, target  # noqa: F401 (fixture)


async def test_challenge_and_defense(target: Server, tmp_path: Path) -> None:  # noqa: F811
    url = target.url()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert await arbitrate(url, "n1", a, challenge=0.6) == (True, "reserved")
    held, why = await arbitrate(url, "n2", b, challenge=0.6)
    assert not held and why.endswith("challenging"), why
    # n1 alive (in the same tie it asks every second): n2 never wins
    for _ in range(3):
        time.sleep(0.4)
        assert (await arbitrate(url, "n1", a, challenge=0.6))[0]
        held, why = await arbitrate(url, "n2", b, challenge=0.6)
        assert not held, why
    # n1 falls silent (dead, or cut off from the LUN): after `challenge`, n2 preempts it
    time.sleep(0.3)
    held, why = await arbitrate(url, "n2", b, challenge=0.6)
    assert not held and "silent for" in why, why
    time.sleep(0.4)
    held, why = await arbitrate(url, "n2", b, challenge=0.6)
    assert held and why.endswith("preempted"), why
    assert await _write_as(_res(target, "n1")) != 0  # PREEMPT AND ABORT: n1 is fenced off it
    held, why = await arbitrate(url, "n1", a, challenge=0.6)  # n1 back: n2 holds it now
    assert not held and why.endswith("challenging"), why
    assert (await arbitrate(url, "n2", b, challenge=0.6))[0]


def test_cli_exit_codes(target: Server, tmp_path: Path) -> None:  # noqa: F811
    def ask(node: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ophiura.cli", "cluster", "tie-breaker", "--url", target.url(),
             "--node", node, "--state", str(tmp_path / f"{node}.json")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    r = ask("n1")
    assert r.returncode == 0 and r.stdout.startswith("held: reserved"), r.stdout + r.stderr
    r = ask("n2")
    assert r.returncode == 1 and "challenging" in r.stdout, r.stdout + r.stderr
