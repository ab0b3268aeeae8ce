"""Write throughput and latency of one SE over loopback (4 KiB writes), printed with `-s`.

    .venv/bin/pytest tests/replication/test_se_bench.py -s -q

The assertion is only a floor that catches a lost group commit; the printed figures are the
measurement (fdatasync of the log and of the metadata slot per batch, on this machine's disk).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

from .test_se_support import MiB, client_for, running_se


async def test_write_throughput_and_latency_4k(tmp_path: Path) -> None:
    data = os.urandom(4096)
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", 64 * MiB)
        seq = 0
        lat: list[float] = []
        for _ in range(300):  # QD1: latency of one durable write
            seq += 1
            t = time.perf_counter()
            await c.write("v", 1, seq, (seq % 16384) * 4096, data)
            lat.append(time.perf_counter() - t)
        results = {}
        for qd in (1, 8, 32, 128):
            n = 300 if qd == 1 else 4000
            window = asyncio.Semaphore(qd)

            async def one(s: int, window: asyncio.Semaphore = window) -> None:
                async with window:
                    await c.write("v", 1, s, (s % 16384) * 4096, data)

            t = time.perf_counter()
            await asyncio.gather(*[one(seq + i + 1) for i in range(n)])
            seq += n
            results[qd] = n / (time.perf_counter() - t)
        lat.sort()
        print(
            f"\nSE 4KiB writes: QD1 latency median {statistics.median(lat) * 1e6:.0f} us, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1e6:.0f} us; "
            + ", ".join(
                f"QD{qd} {r:,.0f} IOPS ({r * 4096 / MiB:.1f} MiB/s)" for qd, r in results.items()
            )
        )
        assert results[32] > 2 * results[1] or results[32] > 5000
