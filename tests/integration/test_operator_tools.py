"""`ophiura pr` and `ophiura demo --target` as an operator runs them: real processes and target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.servers import Server, start_ophiura

from .harness import TargetFactory

OPHIURA = [sys.executable, "-m", "ophiura.cli"]
NODE_A = "iqn.2026-11.io.test:node-a"
NODE_B = "iqn.2026-11.io.test:node-b"


def pr(server: Server, *args: str, node: str = NODE_A) -> subprocess.CompletedProcess[str]:
    cmd = [*OPHIURA, "pr", server.url(), *args, "--initiator-name", node]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def pr_json(server: Server, action: str, node: str = NODE_A) -> dict:
    out = pr(server, action, "--json", node=node)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_register_reserve_conflict_and_break(start_target: TargetFactory) -> None:
    server = start_target("ophiura")
    assert pr(server, "register", "--new-key", "0xa").returncode == 0
    assert pr(server, "register", "--new-key", "0xb", node=NODE_B).returncode == 0
    assert pr(server, "reserve", "--key", "0xa", "--type", "we").returncode == 0

    keys = pr_json(server, "read-keys", node=NODE_B)
    assert sorted(keys["keys"]) == ["0xa", "0xb"]
    held = pr_json(server, "read-reservation", node=NODE_B)["reservation"]
    assert held == {"key": "0xa", "type": "write-exclusive", "scope": 0}

    # Another nexus cannot take it: a clear error, not a traceback.
    refused = pr(server, "reserve", "--key", "0xb", "--type", "we", node=NODE_B)
    assert refused.returncode == 1
    assert "RESERVATION CONFLICT" in refused.stderr
    assert "Traceback" not in refused.stderr

    # The operator breaks the dead node's hold (the seed's "break reservation").
    broke = pr(
        server, "preempt-abort", "--key", "0xb", "--victim", "0xa", "--type", "we", node=NODE_B
    )
    assert broke.returncode == 0, broke.stderr
    status = pr_json(server, "read-full-status", node=NODE_B)
    assert [(r["key"], r["holder"]) for r in status["registrations"]] == [("0xb", True)]
    assert status["registrations"][0]["initiator"].startswith(NODE_B + ",i,0x")
    text = pr(server, "read-reservation", node=NODE_B)
    assert "reservation held by key 0xb, type write-exclusive" in text.stdout


def test_bad_input_is_named(start_target: TargetFactory) -> None:
    server = start_target("ophiura")
    out = pr(server, "reserve", "--key", "0x1", "--type", "bogus")
    assert out.returncode == 2 and "unknown type 'bogus'" in out.stderr
    out = pr(server, "preempt", "--key", "0x1", "--type", "we")
    assert out.returncode == 2 and "--victim" in out.stderr
    out = subprocess.run(
        [*OPHIURA, "pr", "iscsi://127.0.0.1:1/iqn.x:y/0", "read-keys"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "127.0.0.1" in out.stderr and "Traceback" not in out.stderr


def test_aptpl_reservation_survives_kill_9(tmp_path: Path) -> None:
    backing, state = tmp_path / "disk.img", tmp_path / "state"
    first = start_ophiura(backing, "64M", tmp_path / "1.log", state_dir=state)
    try:
        assert pr(first, "register", "--new-key", "0x77", "--aptpl").returncode == 0
        assert pr(first, "reserve", "--key", "0x77", "--type", "earo").returncode == 0
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
    second = start_ophiura(backing, "64M", tmp_path / "2.log", state_dir=state)
    try:
        held = pr_json(second, "read-reservation", node=NODE_B)["reservation"]
        assert held == {"key": "0x77", "type": "exclusive-access-registrants-only", "scope": 0}
        assert pr_json(second, "read-keys", node=NODE_B)["keys"] == ["0x77"]
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=20) == 0


def test_demo_target_tour_runs_end_to_end() -> None:
    argv = [*OPHIURA, "demo", "--target"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "node-b read it back: identical" in out.stdout
    assert "node-b WRITE while node-a holds it: RESERVATION CONFLICT" in out.stdout
    assert "reservation now: key 0xb write-exclusive" in out.stdout
    assert "target stopped cleanly (exit 0)" in out.stdout
