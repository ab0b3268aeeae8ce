"""`python -m bench replication` still works: every workload once, ~1 s each, on a 64 MiB volume.

As in test_bench.py, no ratio is checked (a shared CI machine is no place for them): what is
checked is that each micro-benchmark gave a figure for direct, N=3 Q=1 and N=3 Q=2 (near 1 ms),
that the recovery part saw a replay and a full recovery, that PostMark (kernel ext4 on a loop
device over nbdfuse) gave a transaction rate (root only, else it must say why it skipped), that
the targets table has its rows, that the HE CPU per operation (4 KiB QD16 writes and reads) is
reported, and that the plots are drawn when matplotlib is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.replication import MICROS, postmark_unavailable
from bench.servers import ophiura_target_unavailable

from .harness import ROOT, require_tools


@pytest.mark.timeout(420)
def test_bench_replication_quick_pass(tmp_path: Path) -> None:
    require_tools("fio")
    why = ophiura_target_unavailable()
    if why:
        pytest.skip(why)
    cmd = [sys.executable, "-m", "bench", "replication", "--quick", "--seconds", "1",
           "--size", "64", "--delays", "1", "--no-internet", "--outage", "2",
           "--pm-files", "20", "--pm-transactions", "40", "--pm-transactions-repl", "10",
           "--cpu-ios", "2000",
           "--json", "--workdir", str(tmp_path), "--plots", str(tmp_path / "img")]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["machine"]["cores"]
    keys = {w.key for w in MICROS}
    for run in report["direct_runs"] + report["configs"]:
        assert run["errors"] == {}, (run["title"], run["errors"])
        assert set(run["results"]) == keys, run["title"]
        for m in run["results"].values():
            assert m["iops"] > 0 and m["lat_mean_us"] > 0, m
    assert [c["config"]["quorum"] for c in report["configs"]] == [1, 2]
    rec = report["recovery"]
    assert "error" not in rec, rec.get("error")
    assert "recovering-replay" in rec["replay"]["states_seen"], rec["replay"]
    assert "recovering-full" in rec["full"]["states_seen"], rec["full"]
    assert rec["replay"]["fraction"] > 0 and rec["full"]["rate_mib_s"] > 0
    cpu = report["he_cpu"]
    assert "error" not in cpu, cpu.get("error")
    for key in ("write", "read"):
        load = cpu["loads"][key]
        assert load["ios"] == 2000 and load["he_ms_per_op"] > 0, load
        assert set(load["se_ms_per_op"]) == {"local", "near", "far"}, load
    assert sum(cpu["loads"]["read"]["reads_by_se"].values()) >= 2000, cpu["loads"]["read"]
    pm = report["postmark"]
    if postmark_unavailable() is None:
        assert pm["direct_tps"] > 0 and pm["replicated_tps"] > 0, pm
    else:
        assert pm["skipped"], pm
    targets = [t["target"] for t in report["targets"]]
    assert any("PostMark" in t for t in targets) and any("replay" in t for t in targets)
    assert any(t.startswith("write latency") for t in targets)
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("latency", "throughput", "recovery"):
            png = tmp_path / "img" / f"replication-{name}.png"
            assert png.stat().st_size > 10_000, png
