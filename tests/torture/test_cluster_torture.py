"""`ophiura torture --mode cluster`: the cluster faults against the demo's three-node cluster in
network namespaces (root only), and its checker on hand-made ledgers and poll samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ophiura.demo.client import Ack
from ophiura.torture.cluster import ledger_overlaps, status_overlaps, unavailable, verdict
from ophiura.torture.schedule import (
    CLUSTER_FAULT_KINDS,
    Schedule,
    default_cluster_kinds,
    make_cluster_schedule,
)

SEED = 2  # its 45 s schedule holds five kinds, clock steps among them
DURATION = "45"


# ---------------------------------------------------------------------- schedule and checker


def test_cluster_schedule_is_seeded_replayable_and_keeps_a_quorum(tmp_path: Path) -> None:
    s = make_cluster_schedule(5, 600, default_cluster_kinds())
    assert s == make_cluster_schedule(5, 600, default_cluster_kinds())
    assert s.faults != make_cluster_schedule(6, 600, default_cluster_kinds()).faults
    assert set(s.counts()) == set(CLUSTER_FAULT_KINDS)
    path = tmp_path / "s.json"
    s.save(path)
    assert Schedule.load(path) == s and Schedule.load(path).mode == "cluster"
    # at most two nodes impaired at once (a fault, then its settling time)
    from ophiura.torture.schedule import CLUSTER_SETTLE_S

    spans = [(f.at, f.at + f.duration + CLUSTER_SETTLE_S.get(f.kind, 2.0)) for f in s.faults]
    for at, _ in spans:
        assert sum(1 for a, b in spans if a <= at < b) <= 2
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), "never overlaps"
    assert all(f.params["net"] in ("a", "b") for f in s.faults if f.kind == "link-cut-one")
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_cluster_schedule(1, 10, ["se-kill"])


def _ack(rid: str, node: str, sent: float, done: float, data: str = "x") -> Ack:
    return Ack(rid, data, sent, done, node)


def test_ledger_overlap_is_split_brain_a_handover_is_not() -> None:
    clean = [_ack("1", "n1", 0.0, 0.1), _ack("2", "n1", 0.2, 0.3), _ack("3", "n2", 2.0, 2.1)]
    assert ledger_overlaps(clean) == []
    both = [*clean, _ack("4", "n1", 2.05, 2.2)]  # n1 acked while n2 was acknowledging
    assert [(a.id, b.id) for a, b in ledger_overlaps(both)] == [("3", "4")]


def test_status_overlap_needs_two_ballots_advancing_in_short_overlapping_intervals() -> None:
    def s(t: float, node: str, he: str, seq: int) -> dict[str, Any]:
        return {"t": t, "node": node, "he_id": he, "acked_seq": seq, "fenced": False}

    handover = [s(0, "n1", "a", 1), s(0.5, "n1", "a", 5), s(3, "n2", "b", 6), s(3.5, "n2", "b", 9)]
    assert status_overlaps(handover) == []
    paused = [s(0, "n1", "a", 1), s(4.0, "n1", "a", 5), s(1, "n2", "b", 6), s(1.5, "n2", "b", 9)]
    assert status_overlaps(paused) == []  # n1's 4 s interval proves nothing
    both = [s(0, "n1", "a", 1), s(0.5, "n1", "a", 5), s(0.2, "n2", "b", 6), s(0.7, "n2", "b", 9)]
    assert len(status_overlaps(both)) == 1


def test_verdict_counts_lost_wrong_and_availability() -> None:
    acked = [_ack("1", "n1", 0.0, 0.1, "a"), _ack("2", "n1", 1.0, 1.1, "b"),
             _ack("3", "n1", 3.0, 3.1, "c")]  # fmt: skip
    v = verdict(acked, {"1": "a", "2": "B"}, None, [], (0.0, 4.0))
    assert (v["lost"], v["wrong"], v["split_brain"]) == (1, 1, 0)
    assert (v["lost_ids"], v["wrong_ids"]) == (["3"], ["2"])
    assert v["availability"] == 0.75  # seconds 0, 1 and 3 of 4 saw an acknowledgement


# ---------------------------------------------------------------------- the live run

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or unavailable() is not None,
    reason=unavailable() or "the cluster mode needs root (network namespaces)",
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("cluster-torture")
    proc = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "torture", "--mode", "cluster", "--seed",
         str(SEED), "--duration", DURATION, "--mean-gap", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    path = out / f"torture-cluster-{SEED}.json"
    assert path.exists(), proc.stdout + proc.stderr
    assert (out / f"torture-cluster-{SEED}.schedule.json").exists()
    return proc.returncode, proc.stdout, json.loads(path.read_text())


@needs_root
def test_live_run_injects_several_kinds_and_reports(live: tuple[int, str, dict[str, Any]]) -> None:
    rc, stdout, r = live
    line = next(ln for ln in stdout.splitlines() if ln.startswith(f"seed={SEED} mode=cluster f"))
    print(line)
    assert rc == (1 if line.endswith("-> FAIL") else 0), line
    assert r["faults_total"] >= 5 and len(r["faults_injected"]) >= 4, r["faults_injected"]
    assert r["acked"] > 100
    assert len(r["acked_by_node"]) >= 2, "no failover happened"
    assert r["polls"] > 20
    assert 0 < r["availability"] <= 1
    assert r["schedule"]["mode"] == "cluster" and r["schedule"]["seed"] == SEED


@needs_root
def test_live_run_lost_nothing_and_no_split_brain(live: tuple[int, str, dict[str, Any]]) -> None:
    _, _, r = live
    assert r["split_brain"] == 0, r["split_brain_examples"]
    if r["volume_read"]:  # (when the cluster did not heal there is no owner to read it from)
        assert (r["lost"], r["wrong"]) == (0, 0), (r["lost_ids"], r["wrong_ids"])


@needs_root
def test_live_run_heals_and_reads_the_volume(live: tuple[int, str, dict[str, Any]]) -> None:
    _, _, r = live
    assert r["healed"], r["heal_note"]
    assert r["volume_read"] and r["error"] is None, r["error"]


def test_without_root_the_mode_says_it_is_unavailable() -> None:
    if os.geteuid() == 0:
        assert unavailable() is None or "unavailable" in unavailable()  # type: ignore[operator]
        return
    assert "cluster mode unavailable" in (unavailable() or "")
