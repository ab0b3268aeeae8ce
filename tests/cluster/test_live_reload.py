"""Reloading the configuration on a live cluster (issue 12, Must show 3).

SIGHUP with a good change applies it (a new hierarchy starts, the running one is untouched);
a bad file changes nothing and says why; a change that would restart a resource is refused; a
node whose file differs shows in `cluster status`, raises a notification, and `cluster config
diff --node` shows the difference.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .live import LiveCluster, cluster_toml

AGENT = "python:tests.cluster.fake_agent:FakeAgent"


def hierarchies(tmp: Path) -> str:
    hook = tmp / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$CRM_alert_node $CRM_alert_task" >> {tmp}/alerts\n')
    hook.chmod(0o755)
    return f"""
[[notify]]
kind = "command"
command = ["{hook}"]
events = ["config"]

[[hierarchies]]
name = "web"
nodes = ["n1", "n2"]

[[hierarchies.resources]]
name = "app"
kind = "{AGENT}"
params = {{ dir = "{tmp / "markers"}" }}
monitor_interval = 0.3
"""


DB = """
[[hierarchies]]
name = "db"
nodes = ["n1", "n2"]

[[hierarchies.resources]]
name = "dbapp"
kind = "{agent}"
params = {{ dir = "{markers}" }}
"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveCluster]:
    (tmp_path / "markers").mkdir()
    c = LiveCluster(tmp_path, cluster_toml(tmp_path, ["n1", "n2"], hierarchies(tmp_path)))
    c.paths["n2"] = tmp_path / "cluster-n2.toml"
    c.paths["n2"].write_text(c.path.read_text())
    c.paths["n2"].chmod(0o600)
    c.start_all()
    try:
        yield c
    finally:
        c.stop()


def events(c: LiveCluster, node: str, task: str) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in c.events(node) if e.get("task") == task]


@pytest.mark.timeout(120)
def test_reload(live: LiveCluster) -> None:
    c = live
    markers = c.tmp / "markers"
    c.wait_for("web on n1", lambda: (markers / "app.n1").exists(), 20)
    c.wait_for("n1 sees n2", lambda: c.status("n1")["config"]["nodes"].get("n2"), 5)
    st = c.status("n1")["config"]
    assert st["differ"] == [] and st["nodes"]["n1"] == st["nodes"]["n2"]
    digest0 = st["digest"]
    stamp = (markers / "app.n1").stat().st_mtime_ns

    # 1. SIGHUP with a good change: a new hierarchy and a monitor interval. Applied, shown.
    good = c.path.read_text().replace("monitor_interval = 0.3", "monitor_interval = 0.4")
    good += DB.format(agent=AGENT, markers=markers)
    c.path.write_text(good)
    os.kill(c.procs["n1"].pid, signal.SIGHUP)
    c.wait_for("db in n1's status", lambda: "db" in c.status("n1")["hierarchies"], 5)
    c.wait_for("db runs on n1", lambda: (markers / "dbapp.n1").exists(), 10)
    st = c.status("n1")
    assert st["config"]["digest"] != digest0
    (reload_ev,) = events(c, "n1", "reload")
    assert reload_ev["rc"] == 0 and "hierarchy db added" in reload_ev["desc"]
    assert "app.monitor_interval 0.3 -> 0.4" in reload_ev["desc"]
    assert (markers / "app.n1").stat().st_mtime_ns == stamp  # web was not touched
    assert not [
        e for e in c.events("n1") if e.get("hierarchy") == "web" and e.get("task") == "stop"
    ]

    # 2. n2 still runs the old file: both sides see it, and each notifies.
    c.wait_for("n1 sees n2 differ", lambda: c.status("n1")["config"]["differ"] == ["n2"], 5)
    c.wait_for("n2 sees n1 differ", lambda: c.status("n2")["config"]["differ"] == ["n1"], 5)
    alerts = c.tmp / "alerts"
    c.wait_for("mismatch notified", lambda: "n1 config-mismatch" in alerts.read_text(), 5)
    c.wait_for("mismatch notified", lambda: "n2 config-mismatch" in alerts.read_text(), 5)
    r = c.cli("status", "--node", "n1")
    assert "DIFFERS on n2" in r.stdout, r.stdout + r.stderr
    r = c.cli("config", "diff", "--config", str(c.path), "--node", "n2")
    assert r.returncode == 1, r.stderr
    assert '+name = "db"' not in r.stdout and '-name = "db"' in r.stdout, r.stdout
    assert "-monitor_interval = 0.4" in r.stdout and "+monitor_interval = 0.3" in r.stdout

    # 3. The same file on n2, `cluster reload`: applied, the mismatch is gone.
    c.paths["n2"].write_text(good)
    r = c.cli("reload", "--node", "n2")
    assert r.returncode == 0 and "n2: applied" in r.stdout, r.stdout + r.stderr
    c.wait_for("same everywhere", lambda: c.status("n1")["config"]["differ"] == [], 5)
    c.wait_for("match notified", lambda: "n1 config-match" in alerts.read_text(), 5)
    r = c.cli("config", "diff", "--config", str(c.path), "--node", "n2")
    assert r.returncode == 0 and "same configuration" in r.stdout

    # 4. A bad file changes nothing and says why; the daemon lives on.
    digest1 = c.status("n1")["config"]["digest"]
    c.path.write_text(good + "\n[[hierarchies\n")
    os.kill(c.procs["n1"].pid, signal.SIGHUP)
    c.wait_for("refusal", lambda: len(events(c, "n1", "reload")) == 2, 5)
    bad = events(c, "n1", "reload")[-1]
    assert bad["rc"] == 1 and "not valid TOML" in bad["desc"], bad
    assert c.procs["n1"].poll() is None
    assert c.status("n1")["config"]["digest"] == digest1

    # 5. A change that needs a resource restart is refused with the reason; nothing changes.
    c.path.write_text(
        good.replace("monitor_interval = 0.4", "monitor_interval = 9.0").replace(
            f'params = {{ dir = "{markers}" }}\nmonitor_interval = 9.0',
            f'params = {{ dir = "{markers}", slow_start = "0.1" }}\nmonitor_interval = 9.0',
        )
    )
    r = c.cli("reload", "--node", "n1")
    assert r.returncode == 1, r.stdout
    assert "app: params changed (slow_start)" in r.stdout and "nothing changed" in r.stdout
    assert c.status("n1")["config"]["digest"] == digest1
    assert (markers / "app.n1").stat().st_mtime_ns == stamp
