"""`ophiura demo` end to end, headless, as `make demo` runs it: its JSON report says nothing
acknowledged was lost, which recovery the SE kill caused, where the failover went, that the
node's return did not pull the hierarchy back, and what the client saw. Then Ctrl-C in the
middle of the story must leave no process, namespace or temp dir behind.

Loopback always; the same in network namespaces (floating IP) when root.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ophiura.demo import netns
from ophiura.demo.topology import marked_pids

REPO = Path(__file__).resolve().parents[2]
MODES = ["loopback", "netns"]


def _skip_unless_mode(mode: str) -> list[str]:
    if mode == "loopback":
        return ["--no-netns"]
    why = netns.unavailable()
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    return ["--netns"]


def _demo(*args: str, live: bool = False) -> subprocess.Popen[str]:
    """`ophiura demo`, headless, or with the live view forced on although stdout is a pipe."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:" + os.environ.get("PYTHONPATH", "")}
    env.pop("FORCE_COLOR", None)
    if live:
        env.update(FORCE_COLOR="1", COLUMNS="120", LINES="60")
        return subprocess.Popen(
            [sys.executable, "-m", "ophiura.cli", "demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
        )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "ophiura.cli", "demo", "--headless", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )  # fmt: skip


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode", MODES)
def test_story_loses_nothing_and_reports_it(mode: str, tmp_path: Path) -> None:
    flags = _skip_unless_mode(mode)
    out = tmp_path / "report.json"
    t0 = time.monotonic()
    # loopback runs with the live view (rich tables redrawn 4 times a second), so its
    # rendering is exercised all through the story; namespaces run headless
    proc = _demo(*flags, "--json", str(out), live=mode == "loopback")
    text, _ = proc.communicate(timeout=180)
    took = time.monotonic() - t0
    print(text[-6000:])
    assert proc.returncode == 0, text
    assert took < 180, f"the demo took {took:.0f} s (must stay under 3 minutes)"
    r: dict[str, Any] = json.loads(out.read_text())
    assert r["ok"] is True and r["error"] is None and r["mode"] == mode
    rec = r["records"]
    assert rec["lost"] == 0 and rec["lost_ids"] == []
    assert rec["acknowledged"] > 500 and rec["verified"] == rec["acknowledged"]
    ev = {e["name"]: e for e in r["events"]}
    assert [e["name"] for e in r["events"]] == ["se-crash", "node-crash", "node-return",
                                                "switchover"]  # fmt: skip
    # an SE killed for ~4 s while writes go on: every missed write is still in the HE queue
    se = ev["se-crash"]
    assert se["recovery"]["kind"] == "quick", se
    assert 0 <= se["recovery"]["duration_s"] < 5
    assert se["outage_s"] is not None and se["outage_s"] < 1.0, se  # Q=2 still met: no outage
    # the active node dies: the next by priority takes the epoch, the client sees a bounded gap
    nc = ev["node-crash"]
    assert nc["from"] == "n1" and nc["to"] == nc["expected_to"] == "n2", nc
    assert nc["takeover"]["epoch_after"] > nc["takeover"]["epoch_before"]
    assert nc["detected_s"] is not None and 0.3 < nc["detected_s"] < 3.0, nc
    assert nc["outage_s"] is not None and 0.5 < nc["outage_s"] < 15.0, nc
    assert nc["failed_requests"] > 0  # the client did notice the crash
    # it comes back: no automatic failback
    back = ev["node-return"]
    assert back["failback"] is False and back["running_on"] == ["n2"], back
    # manual switchover back to n1
    sw = ev["switchover"]
    assert sw["from"] == "n2" and sw["to"] == "n1", sw
    assert sw["outage_s"] is not None and 0 < sw["outage_s"] < 15.0, sw
    assert sw["epoch_after"] > nc["takeover"]["epoch_after"]
    # availability: measured by the client, and by the models when `ophiura avail` exists
    a = r["availability"]
    c = a["measured_client"]
    assert 0.5 < c["availability"] < 1.0 and c["unavailable_s"] >= nc["outage_s"] * 0.5
    if importlib.util.find_spec("ophiura.availability.cli") is not None:
        assert a["promised_storage"] is not None, a["promised_storage_error"]
        assert a["promised_storage"]["nines"] >= 3  # N=3, Q=2 of 99% SEs
        assert a["measured_cluster"] is not None, a["measured_cluster_error"]
        assert a["measured_cluster"]["outage_count"] >= 1
    else:
        assert "not part of this build" in a["promised_storage_error"]
    if mode == "loopback":  # the live view drew its tables, with the failover in them
        assert "storage elements" in text and "cluster nodes" in text and "owner, gen 2" in text
    if mode == "netns":
        assert r["left_out"] == []
    else:
        assert any("floating IP" in why for why in r["left_out"])
    _assert_clean(r["run_id"], text)


def _assert_clean(run_id: str, text: str) -> None:
    assert marked_pids(run_id) == [], "processes of the demo outlived it"
    assert netns.leftover_namespaces(run_id) == []
    tmp = re.search(r"temp dir (\S+)", text)
    assert tmp is not None and not Path(tmp.group(1)).exists(), "temp dir left behind"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("mode", "sig", "code"),
    [("loopback", signal.SIGINT, 130), ("netns", signal.SIGINT, 130),
     ("loopback", signal.SIGTERM, 143)],
)  # fmt: skip
def test_interrupted_mid_story_leaves_nothing_behind(mode: str, sig: int, code: int) -> None:
    """Ctrl-C (or SIGTERM from a supervisor) while the active node is being killed."""
    flags = _skip_unless_mode(mode)
    proc = _demo(*flags)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    run_id = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"run (\w+),", line)
        run_id = run_id or (m.group(1) if m else None)
        if "== 4/6" in line:  # the active node is being killed: processes come and go
            time.sleep(0.3)
            break
    assert run_id is not None and any("== 4/6" in x for x in lines), "".join(lines)
    assert marked_pids(run_id), "the demo should be running things by now"
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    print(text)
    assert proc.returncode == code, text
    assert "cleaned up" in rest
    _assert_clean(run_id, text)
