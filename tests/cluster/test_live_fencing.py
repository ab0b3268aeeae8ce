"""STONITH on a live cluster: a stop that fails even forced gets its node fenced, with reasons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .live import LiveCluster, cluster_toml
from .test_live_local import running, web

NODES = ["n1", "n2", "n3"]


def config(tmp: Path, markers: Path) -> str:
    fence = tmp / "fence.sh"
    # "Power off" the node: kill its daemon and everything it ran (its marker files).
    fence.write_text(
        "#!/bin/sh\n"
        f'echo "fence $OPHIURA_FENCE_NODE $OPHIURA_FENCE_ACTION" >> {tmp}/fenced\n'
        f"kill -9 $(cat {tmp}/pids/$OPHIURA_FENCE_NODE)\n"
        f"rm -f {markers}/*.$OPHIURA_FENCE_NODE\n"
    )
    fence.chmod(0o755)
    levels = "\n".join(f'[[fencing.levels]]\nnode = "{n}"\ndevices = ["power"]\n' for n in NODES)
    return f"""
[[hierarchies]]
name = "web"
nodes = ["n1", "n2", "n3"]
shared_data = true

[[hierarchies.resources]]
name = "app"
kind = "python:tests.cluster.fake_agent:FakeAgent"
params = {{ dir = "{markers}" }}
monitor_interval = 0.3

[[fencing.devices]]
name = "power"
agent = "exec"
command = ["{fence}"]

{levels}
"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveCluster, Path]]:
    markers = tmp_path / "markers"
    markers.mkdir()
    (tmp_path / "pids").mkdir()
    c = LiveCluster(tmp_path, cluster_toml(tmp_path, NODES, config(tmp_path, markers)))
    c.start_all()
    for n, p in c.procs.items():
        (tmp_path / "pids" / n).write_text(str(p.pid))
    try:
        yield c, markers
    finally:
        c.stop()


@pytest.mark.timeout(90)
def test_stop_failure_is_fenced_then_taken_over(live: tuple[LiveCluster, Path]) -> None:
    c, markers = live
    c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
    (markers / "stuck.n1").touch()  # n1 will not be able to stop it, even forced
    r = c.cli("switchover", "web", "--to", "n2", "--timeout", "20")
    assert r.returncode == 0, r.stdout + r.stderr + c.tails()
    assert running(markers) == ["app.n2"]
    assert (c.tmp / "fenced").read_text().split() == ["fence", "n1", "off"]
    assert c.procs["n1"].wait(5) == -9
    ev = c.events("n2")
    fenced = [e for e in ev if e.get("kind") == "fencing" and e.get("task") == "fenced"]
    assert fenced and fenced[0]["peer"] == "n1" and "power: exit 0" in fenced[0]["desc"]
    stop_failed = [e for e in c.events("n1") if e.get("task") == "stop-failed"]
    assert stop_failed and "fence" in stop_failed[0]["desc"]
