"""The benchmark workloads: reads with libiscsi's `iscsi-perf`, writes with `qemu-img bench`.

iscsi-perf (libiscsi 1.19.0, utils/iscsi-perf.c) issues READ16 with `-m` commands in flight and
`-b` blocks per command (blocks of the LUN's own length, so 4 KiB is `-b 8` on a 512-byte LUN),
random LBAs with `-r`, sequential otherwise, for `-t` seconds. It ends with a line
`iops average N (M MB/s)`: N is completed commands per second over the whole run, M is
N * blocks * block length >> 20. We take N and compute bytes/s ourselves.

`qemu-img bench -w` has no time limit, only a count (`-c`); it prints
`Run completed in X seconds.`. So each write workload first runs a short calibration and then a
count sized to last about the requested time (capped), and the subprocess has a timeout anyway.
It writes sequentially from offset 0 and wraps at the end of the disk.

The replication suite (`python -m bench replication`) uses `fio --ioengine=nbd` (8 KiB random
I/O, one thread or eight, one NBD connection per thread) and PostMark on a filesystem reached
through `nbdfuse` + `fuse2fs`; see `bench/replication.py`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PERF_INITIATOR = "iqn.2026-11.io.ophiura.bench:iscsi-perf"
_PERF_AVG = re.compile(r"iops average (\d+) \((\d+) MB/s\)")
_QEMU_DONE = re.compile(r"Run completed in ([0-9.]+) seconds")
_CAPACITY = re.compile(r"capacity is (\d+) blocks or (\d+) byte")


class WorkloadError(RuntimeError):
    """A benchmark tool failed; the message carries its command and output."""


@dataclass
class Measurement:
    """One workload on one target: operations per second and what the tool reported."""

    name: str
    iops: float
    bytes_per_op: int
    seconds: float
    ops: int
    command: list[str]

    @property
    def mib_per_s(self) -> float:
        return self.iops * self.bytes_per_op / (1 << 20)

    @property
    def latency_us(self) -> float:
        """Mean time per operation; at queue depth 1 that is the latency."""
        return 1e6 / self.iops if self.iops else float("inf")

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.update(mib_per_s=round(self.mib_per_s, 1), latency_us=round(self.latency_us, 1))
        return data


def _run(cmd: list[str], timeout: float) -> str:
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkloadError(f"{' '.join(cmd)}: no result after {timeout:.0f} s") from exc
    if res.returncode != 0:
        tail = (res.stdout[-800:] + res.stderr[-800:]).strip()
        raise WorkloadError(f"{' '.join(cmd)} exited {res.returncode}: {tail}")
    return res.stdout


def block_length(url: str) -> int:
    out = _run(["iscsi-readcapacity16", url], timeout=30)
    match = re.search(r"LOGICAL BLOCK LENGTH IN BYTES:(\d+)", out)
    if not match:
        raise WorkloadError(f"iscsi-readcapacity16 {url}: no block length in {out!r}")
    return int(match.group(1))


def iscsi_perf(
    name: str, url: str, *, io_size: int, depth: int, seconds: int, random: bool, block: int
) -> Measurement:
    """READ16 at `depth` commands in flight, `io_size` bytes each, for `seconds`."""
    if io_size % block:
        raise WorkloadError(f"{io_size} bytes is not a multiple of the {block}-byte block")
    cmd = ["iscsi-perf", "-i", PERF_INITIATOR, "-t", str(seconds), "-m", str(depth),
           "-b", str(io_size // block)]  # fmt: skip
    if random:
        cmd.append("-r")
    cmd.append(url)
    start = time.monotonic()
    out = _run(cmd, timeout=seconds + 60)
    elapsed = time.monotonic() - start
    averages = _PERF_AVG.findall(out)
    if not averages or "finished." not in out:
        raise WorkloadError(f"{' '.join(cmd)}: no final average in {out[-500:]!r}")
    iops = float(averages[-1][0])
    return Measurement(name, iops, io_size, elapsed, int(iops * seconds), cmd)


def qemu_img_bench_write(
    name: str, url: str, *, io_size: int, depth: int, seconds: float, max_count: int
) -> Measurement:
    """Sequential writes of `io_size` at `depth`, sized by a calibration run to last ~seconds."""

    def once(count: int) -> tuple[float, list[str]]:
        cmd = ["qemu-img", "bench", "-w", "-d", str(depth), "-s", str(io_size), "-t", "none",
               "-f", "raw", "-c", str(count), url]  # fmt: skip
        out = _run(cmd, timeout=max(120.0, seconds * 6))
        match = _QEMU_DONE.search(out)
        if not match:
            raise WorkloadError(f"{' '.join(cmd)}: no 'Run completed' in {out!r}")
        return max(float(match.group(1)), 1e-6), cmd

    calibration = min(max_count, 200 * depth if depth > 1 else 500)
    took, _ = once(calibration)
    count = int(min(max_count, max(calibration, calibration / took * seconds)))
    took, cmd = once(count)
    return Measurement(name, count / took, io_size, took, count, cmd)


# ------------------------------------------------------------------ fio over NBD (replication)

FIO_RAMP = 0.5  # seconds of each fio run not counted (connection setup, first misses)


@dataclass
class FioMeasurement(Measurement):
    """A fio run: IOPS and bandwidth summed over the jobs, completion latency over all I/Os."""

    lat_mean_us: float = 0.0
    lat_p50_us: float = 0.0
    lat_p99_us: float = 0.0
    jobs: int = 1

    @property
    def latency_ms(self) -> float:
        return self.lat_mean_us / 1000


def fio_nbd(
    name: str,
    uri: str,
    *,
    rw: str,
    jobs: int,
    seconds: float,
    span: int,
    bs: int = 8192,
    depth: int = 1,
    output: Path | None = None,
    extra: list[str] | None = None,
) -> FioMeasurement:
    """`fio --ioengine=nbd`: `jobs` threads (one NBD connection each) of `bs` I/O at `depth`,
    over the first `span` bytes of the export, for `seconds` (after FIO_RAMP)."""
    ramp = min(FIO_RAMP, seconds / 4)
    cmd = [
        "fio",
        "--name",
        name,
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--iodepth={depth}",
        f"--numjobs={jobs}",
        "--thread",
        "--group_reporting",
        "--time_based",
        f"--runtime={seconds:g}",
        f"--ramp_time={ramp:g}",
        f"--size={span}",
        "--randrepeat=0",
        "--norandommap",
        "--output-format=json",
    ]
    cmd += extra or []
    out = _run(cmd, timeout=seconds + ramp + 60)
    if output is not None:
        output.write_text(out)
    try:
        data = json.loads(out[out.index("{") :])
        job = data["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        raise WorkloadError(f"{' '.join(cmd)}: no JSON result in {out[-500:]!r}") from exc
    side = job["write"] if "write" in rw else job["read"]
    if job.get("error") or not side["io_bytes"]:
        raise WorkloadError(f"{' '.join(cmd)}: error {job.get('error')}, {side['io_bytes']} bytes")
    clat = side["clat_ns"]
    pct = clat.get("percentile", {})
    runtime = side["runtime"] / 1000 or seconds
    return FioMeasurement(
        name,
        float(side["iops"]),
        bs,
        runtime,
        int(side["total_ios"]),
        cmd,
        lat_mean_us=clat["mean"] / 1000,
        lat_p50_us=pct.get("50.000000", 0) / 1000,
        lat_p99_us=pct.get("99.000000", 0) / 1000,
        jobs=jobs,
    )


# ------------------------------------------------------------------ PostMark through FUSE

_PM_TX = re.compile(r"(\d+) seconds of transactions \((\d+) per second\)")
_PM_TOTAL = re.compile(r"(\d+) seconds total")


@dataclass
class PostmarkResult:
    tps: float  # transactions / transaction-phase seconds (PostMark's own, whole seconds)
    tx_seconds: int
    total_seconds: int
    wall_seconds: float
    transactions: int
    files: int
    errors: int  # PostMark "Error:" lines (the same FUSE stack gives them for every server)
    output: str
    unmount_seconds: float = 0.0  # umount after the run: the page cache's dirty data written

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["output"] = self.output[-1500:]
        return data


def postmark_config(location: Path, *, files: int, transactions: int, seed: int = 42) -> str:
    """StarFish Table 4 shape (files of 500..10,000 bytes), scaled down in counts."""
    return (
        f"set location {location}\nset number {files}\nset transactions {transactions}\n"
        f"set size 500 10000\nset seed {seed}\nrun\nquit\n"
    )


def run_postmark(
    location: Path, *, files: int, transactions: int, timeout: float
) -> PostmarkResult:
    cfg = location.parent / f"{location.name}.postmark.cfg"
    cfg.write_text(postmark_config(location, files=files, transactions=transactions))
    start = time.monotonic()
    out = _run(["postmark", str(cfg)], timeout=timeout)
    wall = time.monotonic() - start
    tx, total = _PM_TX.search(out), _PM_TOTAL.search(out)
    if not tx or not total:
        raise WorkloadError(f"postmark: no 'seconds of transactions' in {out[-800:]!r}")
    tx_s = int(tx.group(1))
    tps = transactions / tx_s if tx_s else float(tx.group(2))
    return PostmarkResult(
        tps, tx_s, int(total.group(1)), wall, transactions, files, out.count("Error:"), out
    )
