"""Measure HE figures for docs/replication.md (not a test; run by hand):

    .venv/bin/python -m tests.replication.he_measure

Starts 3 `ophiura se` subprocesses on 127.0.0.1, an in-process HE (N=3 Q=2), and reports
single-threaded 8 KiB random write latency (with near-SE delays 0 and 1 ms), read-hit and
read-miss latency, and the standby takeover time (command to first served read).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ophiura.replication.he.control import control_call

from .he_harness import SECRET, he_config, spawn_ses, start_he, wait_all_up


async def _latency(op, n: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for i in range(n):
        t = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="he-measure-"))
    ses = await spawn_ses(tmp, log_size=64 << 20)
    rng = random.Random(1)
    size = 64 << 20
    data = b"m" * 8192
    try:
        for near_ms in (0.0, 1.0):
            specs = (ses[0].spec(), ses[1].spec(near_ms), ses[2].spec(near_ms * 4))
            cfg = replace(he_config(ses, volumes=(("vol", size),), cache_bytes=32 << 20), ses=specs)
            he = await start_he(cfg, tmp / f"he{near_ms}")
            await wait_all_up(he)
            vol = he.volumes["vol"].data
            offs = [rng.randrange(size // 8192) * 8192 for _ in range(2000)]
            w = await _latency(lambda i, vol=vol, offs=offs: vol.write(offs[i], data), 2000)
            vol.cache.clear()
            vol.cache.max_pages = 0
            miss = await _latency(lambda i, vol=vol, offs=offs: vol.read(offs[i], 8192), 1000)
            vol.cache.max_pages = (32 << 20) // 4096
            for o in offs[:500]:
                await vol.read(o, 8192)
            hit = await _latency(lambda i, vol=vol, offs=offs: vol.read(offs[i % 500], 8192), 2000)
            print(
                f"N=3 Q=2 near one-way {near_ms:g} ms (far {near_ms * 4:g} ms): 8 KiB write "
                f"{w:.3f} ms, read miss {miss:.3f} ms, read hit {hit:.3f} ms (medians)"
            )
            await he.stop()
        cfg = he_config(ses)
        old = await start_he(cfg, tmp / "old")
        new = await start_he(replace(cfg, standby=True, state_dir=tmp / "new"), tmp)
        await wait_all_up(old)
        for i in range(200):
            await old.volumes["vol"].data.write(i * 4096, b"t" * 4096)
        t0 = time.perf_counter()
        info = await control_call("127.0.0.1", new.control.port, SECRET, "takeover")
        await new.volumes["vol"].data.read(0, 4096)
        first = time.perf_counter() - t0
        print(
            f"takeover (1 volume, N=3 Q=2): activation {info['activated_s'] * 1e3:.1f} ms, "
            f"control command to first served read {first * 1e3:.1f} ms"
        )
        await old.stop()
        await new.stop()
    finally:
        for h in ses:
            h.terminate()


if __name__ == "__main__":
    asyncio.run(main())
