"""Measure fio --ioengine=nbd against `ophiura target --nbd` and `nbdkit file` on one file.

    .venv/bin/python tests/nbd/fio_compare.py [--size 256M] [--runtime 8]

Not a test (it takes minutes): it prints the table that docs/nbd.md quotes. Both servers serve
the same prefilled file from the page cache, one at a time, on 127.0.0.1 free ports; each is
stopped by PID. Every fio run is bounded by --runtime plus a margin.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ophiura.sizes import parse_size
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import stop, wait_port

JOBS = [
    ("4k randread QD1", ["--rw=randread", "--bs=4k", "--iodepth=1"], "read", "iops"),
    ("4k randread QD16", ["--rw=randread", "--bs=4k", "--iodepth=16"], "read", "iops"),
    ("4k randwrite QD1", ["--rw=randwrite", "--bs=4k", "--iodepth=1"], "write", "iops"),
    ("4k randwrite QD16", ["--rw=randwrite", "--bs=4k", "--iodepth=16"], "write", "iops"),
    ("1M seq read QD4", ["--rw=read", "--bs=1m", "--iodepth=4"], "read", "MB/s"),
]


def start_ophiura(path: Path, size: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "ophiura.cli", "target", "--backing", str(path), "--size", size,
           "--listen", f"127.0.0.1:{free_port()}", "--nbd", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 20, proc)
    return proc, f"nbd://127.0.0.1:{port}/disk"


def start_nbdkit(path: Path, size: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = ["nbdkit", "--foreground", "--ipaddr", "127.0.0.1", "--port", str(port),
           "file", f"file={path}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 20, proc)
    return proc, f"nbd://127.0.0.1:{port}/disk"


def run_fio(uri: str, size: str, runtime: int, extra: list[str]) -> dict:
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
           "--time_based", f"--runtime={runtime}", "--ramp_time=1", "--output-format=json",
           *extra]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime + 60, check=True)
    return json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="256M")
    parser.add_argument("--runtime", type=int, default=8)
    args = parser.parse_args()
    for tool in ("fio", "nbdkit"):
        if shutil.which(tool) is None:
            print(f"missing {tool}")
            return 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "disk.img"
        count = parse_size(args.size) >> 20
        dd = ["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={count}", "status=none"]
        subprocess.run(dd, check=True, timeout=300)
        results: dict[str, dict[str, float]] = {}
        for name, start in (("ophiura", start_ophiura), ("nbdkit file", start_nbdkit)):
            proc, uri = start(path, args.size)
            try:
                for label, extra, side, unit in JOBS:
                    job = run_fio(uri, args.size, args.runtime, extra)[side]
                    value = job["iops"] if unit == "iops" else job["bw_bytes"] / 1e6
                    results.setdefault(label, {})[name] = value
                    print(f"{name:12} {label:20} {value:10.0f} {unit}", flush=True)
            finally:
                stop(proc, 15)
    print("\n| workload | ophiura | nbdkit file | ratio |\n|---|---|---|---|")
    for label, _, _, unit in JOBS:
        ours, theirs = results[label]["ophiura"], results[label]["nbdkit file"]
        print(f"| {label} | {ours:,.0f} {unit} | {theirs:,.0f} {unit} | {ours / theirs:.2f} |")
    print(f"\nfile {args.size}, runtime {args.runtime} s per job, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
