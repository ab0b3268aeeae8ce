"""Measure what the `attach` agent's fallback costs: fio on the block device it produces
(nbdfuse + a loop device) against fio straight on the same NBD export (`--ioengine=nbd`,
libnbd, no kernel in the path).

    PYTHONPATH=src .venv/bin/python tests/cluster/attach_cost.py [--size 256M] [--runtime 5]

Not a test (it takes a minute or two, and needs root): it prints the table docs/cluster.md
quotes. The export is `ophiura target --nbd` on a prefilled file on 127.0.0.1, stopped by PID,
or, with `--uri nbd://HOST:PORT/EXPORT`, an export already running (docs/cluster.md measures
an HE over three SEs this way, prefilled with nbdcopy). Each of the three setups (fio's nbd
engine, nbdfuse + loop buffered, nbdfuse + loop with direct I/O) runs every job in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ophiura.cluster.agents.attach import AttachAgent
from ophiura.cluster.agents.base import Resource
from ophiura.cluster.agents.process import ProcessAgent
from ophiura.sizes import parse_size
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import stop, wait_port

JOBS = [
    ("4k randread QD1", ["--rw=randread", "--bs=4k", "--iodepth=1"], "read", "iops"),
    ("4k randread QD16", ["--rw=randread", "--bs=4k", "--iodepth=16"], "read", "iops"),
    ("4k randwrite QD1", ["--rw=randwrite", "--bs=4k", "--iodepth=1"], "write", "iops"),
    ("4k randwrite QD16", ["--rw=randwrite", "--bs=4k", "--iodepth=16"], "write", "iops"),
    ("1M seq read QD4", ["--rw=read", "--bs=1m", "--iodepth=4"], "read", "MB/s"),
    ("1M seq write QD4", ["--rw=write", "--bs=1m", "--iodepth=4"], "write", "MB/s"),
]


def fio(target: list[str], job: list[str], size: str, runtime: int) -> dict[str, float]:
    cmd = ["fio", "--name=j", "--output-format=json", f"--size={size}", "--time_based",
           f"--runtime={runtime}", "--ramp_time=1", "--numjobs=1", *target, *job]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime + 60, check=True)
    return json.loads(res.stdout[res.stdout.index("{") :])["jobs"][0]


def value(job: dict, side: str, unit: str) -> float:  # type: ignore[type-arg]
    return job[side]["iops"] if unit == "iops" else job[side]["bw"] / 1024


async def measure(
    tmp: Path, host: str, port: str, export: str, uri: str, args: argparse.Namespace
) -> list[tuple[str, str, float, float, float]]:
    """fio direct on the export, then on the attached device, buffered loop and direct-I/O
    loop (one event loop for all: the process agent reaps nbdfuse on it)."""
    agent = AttachAgent(ProcessAgent(tmp / "rsc"))
    link = str(tmp / "dev")
    results: dict[str, dict[str, float]] = {}
    for mode in ("direct", "off", "on"):
        if mode != "direct":
            res = Resource("cost", "attach", {"address": host, "port": port, "export": export,
                           "link": link, "method": "nbdfuse", "direct_io": mode})  # fmt: skip
            out = await agent.start(res, 30)
            assert out.ok, out
            target = ["--ioengine=libaio", "--direct=1", f"--filename={os.path.realpath(link)}"]
        else:
            target = ["--ioengine=nbd", f"--uri={uri}"]
        try:
            for name, job, side, unit in JOBS:
                got = await asyncio.to_thread(fio, target, job, args.size, args.runtime)
                results.setdefault(name, {})[mode] = value(got, side, unit)
        finally:
            if mode != "direct":
                await agent.stop(res, 30)
    return [(n, u, results[n]["direct"], results[n]["off"], results[n]["on"])
            for n, _, _, u in JOBS]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256M")
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--uri", help="an NBD export to measure instead of a fresh ophiura target")
    args = ap.parse_args()
    size = parse_size(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="attach-cost-"))
    proc = None
    try:
        if args.uri:
            uri = args.uri
        else:
            backing = tmp / "lun.img"
            with open(backing, "wb") as f:
                for _ in range(size >> 20):
                    f.write(os.urandom(1 << 20))
            port = free_port()
            listen = f"127.0.0.1:{free_port()}"
            cmd = [sys.executable, "-m", "ophiura.cli", "target", "--backing", str(backing),
                   "--listen", listen, "--nbd", f"127.0.0.1:{port}"]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port, 20, proc)
            uri = f"nbd://127.0.0.1:{port}/disk"
        host_port, _, export = uri.removeprefix("nbd://").partition("/")
        host, _, port_text = host_port.rpartition(":")
        rows = asyncio.run(measure(tmp, host, port_text, export, uri, args))
        print("| job | unit | NBD direct (fio nbd engine) | nbdfuse + loop | ratio |"
              " nbdfuse + loop, direct I/O | ratio |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for name, unit, d, lo, dio in rows:
            print(f"| {name} | {unit} | {d:,.0f} | {lo:,.0f} | {lo / d:.2f} | {dio:,.0f} | "
                  f"{dio / d:.2f} |")  # fmt: skip
    finally:
        if proc is not None:
            stop(proc, 5)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
