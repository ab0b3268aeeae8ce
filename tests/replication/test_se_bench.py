"""Write throughput and latency of one SE over loopback (4 KiB writes), printed with `-s`.

    .venv/bin/pytest tests/replication/test_se_bench.py -s -q

The assertion checks group commit itself (log fdatasyncs per write at QD32), not a speed: a
throughput ratio failed on a loaded 2-core machine where QD1 and QD32 are both CPU-bound. The
printed figures are the measurement (fdatasync of the log and of the metadata slot per batch).
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
        rlog = se.volumes["v"].disk.log
        real_sync = rlog.sync
        syncs = [0]

        def counting_sync() -> None:
            syncs[0] += 1
            real_sync()

        rlog.sync = counting_sync  # type: ignore[method-assign]
        results: dict[int, float] = {}
        syncs_per_write: dict[int, float] = {}
        for qd in (1, 8, 32, 128):
            n = 300 if qd == 1 else 4000
            window = asyncio.Semaphore(qd)

            async def one(s: int, window: asyncio.Semaphore = window) -> None:
                async with window:
                    await c.write("v", 1, s, (s % 16384) * 4096, data)

            syncs[0] = 0
            t = time.perf_counter()
            await asyncio.gather(*[one(seq + i + 1) for i in range(n)])
            seq += n
            results[qd] = n / (time.perf_counter() - t)
            syncs_per_write[qd] = syncs[0] / n
        lat.sort()
        print(
            f"\nSE 4KiB writes: QD1 latency median {statistics.median(lat) * 1e6:.0f} us, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1e6:.0f} us; "
            + ", ".join(
                f"QD{qd} {r:,.0f} IOPS ({r * 4096 / MiB:.1f} MiB/s)" for qd, r in results.items()
            )
        )
        print(f"log fdatasyncs per write: {syncs_per_write}")
        assert syncs_per_write[1] > 0.9  # QD1: one batch per write (the counter works)
        assert syncs_per_write[32] < 0.25  # QD32: writes that arrive together share a commit
