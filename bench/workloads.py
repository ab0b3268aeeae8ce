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
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass

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
