"""`ophiura demo --app postgres` end to end, headless, as a user runs it: PostgreSQL 15 on the
replicated volume through the demo's story. Its JSON report must say that every committed
ledger row is there with its digest, that pgbench's invariants hold, that pgbench saw no error
through the SE kill, and split the crash's outage into its steps; afterwards no process,
namespace, temp dir or loop device of the run is left. Root with PostgreSQL 15 only (skips
with the reason otherwise); the refusal without namespaces runs everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ophiura.demo import postgres
from ophiura.demo.topology import marked_pids
from ophiura.testkit.waiting import wait_for

from .test_demo_story import REPO, ProcessWatch, _assert_clean, _demo, _read_until


def _loops_backed_under(tmp: str) -> list[str]:
    """Loop devices whose backing file lies in the demo's temp dir (none once it ended)."""
    out = []
    for f in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if tmp in f.read_text():
                out.append(f.parent.parent.name)
        except OSError:
            continue
    return out


@pytest.mark.timeout(240)
def test_postgres_story_loses_no_commit_and_keeps_pgbench_consistent(tmp_path: Path) -> None:
    why = postgres.unusable()
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    out = tmp_path / "report.json"
    t0 = time.monotonic()
    proc = _demo("--app", "postgres", "--json", str(out))
    watch = ProcessWatch(proc.pid)
    try:
        text, _ = proc.communicate(timeout=220)
    finally:
        if proc.poll() is None:  # a hung demo: interrupt it so that it still cleans up
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=60)
    took = time.monotonic() - t0
    print(text[-9000:])
    assert proc.returncode == 0, text
    assert took < 180, f"the demo took {took:.0f} s (must stay under 3 minutes)"
    r: dict[str, Any] = json.loads(out.read_text())
    watch.run_id = r["run_id"]
    _assert_clean(r["run_id"], text, watch)
    tmp = text.split("temp dir ", 1)[1].split()[0]
    assert _loops_backed_under(tmp) == [], "loop devices of the demo left bound"
    assert r["ok"] is True and r["error"] is None, r["error"]
    assert r["app"] == "postgres" and r["mode"] == "netns"
    assert [e["name"] for e in r["events"]] == ["se-crash", "node-crash", "node-return",
                                                "switchover"]  # fmt: skip
    rec = r["records"]
    # every committed ledger row is there with its digest, and no row nobody wrote
    led = rec["ledger"]
    assert rec["lost"] == 0 and led["lost"] == 0, led
    assert led["missing"] == [] and led["wrong_digest"] == [] and led["unexpected"] == [], led
    assert led["committed"] > 200 and led["present"] == led["committed"], led
    assert led["rows"] >= led["committed"]
    # pgbench: error-free through the SE kill; the invariants hold after everything
    inv = rec["invariants"]
    assert inv["hold"] is True and rec["invariants_hold"] is True, inv
    assert inv["sum_accounts_abalance"] == inv["sum_history_delta"], inv
    assert inv["history_rows"] > 0, inv
    first, crash = rec["pgbench"]
    assert first["returncode"] == 0 and first["failed"] == 0 and first["processed"] > 0, first
    assert crash["processed"] is not None, crash
    ev = {e["name"]: e for e in r["events"]}
    assert ev["se-crash"]["pgbench"]["returncode"] == 0
    assert ev["se-crash"]["outage_s"] is not None and ev["se-crash"]["outage_s"] < 1.0
    # the crash: n2 takes the epoch, attaches, fscks, mounts, the database recovers
    nc = ev["node-crash"]
    assert nc["from"] == "n1" and nc["to"] == "n2", nc
    assert nc["takeover"]["epoch_after"] > nc["takeover"]["epoch_before"] >= 1, nc
    split = rec["outage_split"]
    assert split is not None and split["outage_s"] is not None, split
    steps = {s["step"]: s for s in split["steps"]}
    order = ["detection", "vol", "disk", "data", "vip", "first-answer"]
    assert set(order) <= set(steps), steps
    ends = [steps[k]["end_s"] for k in order]
    assert ends == sorted(ends) and ends[0] > 0.3, split
    assert 0 < split["outage_s"] < 20, split
    assert "client-observed outage:" in text and "fsck + mount (journal replay)" in text
    # back, no failback; switched over by hand
    assert ev["node-return"]["failback"] is False, ev["node-return"]
    sw = ev["switchover"]
    assert sw["from"] == "n2" and sw["to"] == "n1", sw
    assert "OK: nothing committed was lost, pgbench's invariants hold" in text


def _running(run_id: str, what: str) -> bool:
    """A process of the run whose command line holds `what` is running."""
    for pid in marked_pids(run_id):
        try:
            if what in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return True
        except OSError:
            continue
    return False


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("when", "what"), [("== 1/6", "initdb"), ("== 2/6", "pgbench")])
def test_postgres_interrupted_leaves_nothing_behind(when: str, what: str) -> None:
    """Ctrl-C while initdb runs (the database is made by a process of the run, in n1's
    namespace, with its own mounts), and while pgbench runs against PostgreSQL: no process,
    namespace, temp dir or loop device of the run is left."""
    why = postgres.unusable()
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    proc = _demo("--app", "postgres")
    watch = ProcessWatch(proc.pid)
    try:
        lines = _read_until(proc, watch, when)
        assert watch.run_id is not None
        run_id = watch.run_id
        wait_for(lambda: _running(run_id, what), 60, f"{what} running")
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines) + rest
    print(text)
    assert proc.returncode == 130, text
    assert watch.run_id is not None and f"interrupted; run {watch.run_id} cleaned up" in rest
    _assert_clean(watch.run_id, text, watch)
    tmp = text.split("temp dir ", 1)[1].split()[0]
    assert _loops_backed_under(tmp) == [], "loop devices of the demo left bound"
    assert not any(tmp in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_postgres_refuses_loopback_in_one_line() -> None:
    """Without namespaces there are no loop devices and mounts of our own: a one-line refusal
    and exit 2, no traceback, nothing started."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:" + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "demo", "--headless", "--app", "postgres",
         "--no-netns"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 2, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert "network namespaces" in out, out
