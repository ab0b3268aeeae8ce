"""Quorate mode, live, two nodes: with half the votes the tie-breaker decides who may run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .live import LiveCluster, cluster_toml
from .test_live_local import running, web


def config(markers: Path) -> str:
    return f"""
[[hierarchies]]
name = "web"
nodes = ["n1", "n2"]

[[hierarchies.resources]]
name = "app"
kind = "python:tests.cluster.fake_agent:FakeAgent"
params = {{ dir = "{markers}" }}
monitor_interval = 0.3
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("held", [True, False], ids=["tie-breaker-held", "tie-breaker-lost"])
def test_two_nodes_tie_breaker(tmp_path: Path, held: bool) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    breaker = "true" if held else "false"
    toml = cluster_toml(
        tmp_path, ["n1", "n2"], config(markers),
        extra_cluster=f'quorum = "quorate"\ntie_breaker = ["{breaker}"]',
    )  # fmt: skip
    c = LiveCluster(tmp_path, toml)
    c.start_all()
    try:
        c.wait_for("web on n1", lambda: web(c, "n2")["running_on"] == ["n1"], 15)
        c.kill("n1")
        (markers / "app.n1").unlink()
        if held:
            c.wait_for(
                "n2 takes over with the tie-breaker", lambda: running(markers) == ["app.n2"], 10
            )
            assert c.status("n2")["quorate"] is True
        else:
            c.wait_for(
                "n2 knows it has no quorum", lambda: c.status("n2")["state"] == "no-quorum", 10
            )
            time.sleep(1.0)
            assert running(markers) == [] and c.status("n2")["quorate"] is False
    finally:
        c.stop()
