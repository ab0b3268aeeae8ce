"""`python -m bench` still works: one short pass over every workload (1 s each, 64 MiB file).

The figures are not checked here (a shared CI machine is no place for ratios); what is checked
is that every workload produced a number, that the targets survived QD32 load from iscsi-perf
and qemu-img, and that the report has the shape docs/benchmarks.md is written from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.__main__ import WORKLOADS
from bench.servers import ophiura_target_unavailable, tgtd_unavailable

from .harness import ROOT, require_tools


@pytest.mark.timeout(300)
def test_bench_quick_pass(tmp_path: Path) -> None:
    require_tools("iscsi-perf", "iscsi-readcapacity16", "qemu-img")
    available = {"tgtd": tgtd_unavailable(), "ophiura": ophiura_target_unavailable()}
    targets = [kind for kind, why in available.items() if why is None]
    if not targets:
        pytest.skip("neither tgtd nor ophiura target is available")
    cmd = [sys.executable, "-m", "bench", "--seconds", "1", "--size", "64", "--json",
           "--targets", ",".join(targets), "--workdir", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["machine"]["cores"]
    for kind in targets:
        run = report["targets"][kind]
        assert run["errors"] == {}, (kind, run["errors"], Path(run["log"]).read_text()[-2000:])
        assert set(run["measurements"]) == {w.key for w in WORKLOADS}
        for m in run["measurements"].values():
            assert m["iops"] > 0, m
        assert run["peak_rss_kib"] and run["big_volume_rss_kib"]
    keys = [row["key"] for row in report["table"]]
    assert keys == [w.key for w in WORKLOADS] + ["peak_rss_kib", "big_volume_rss_kib"]
