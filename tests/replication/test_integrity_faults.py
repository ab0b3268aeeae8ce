"""Issue 3, "Must show" 1: integrity under faults with real clients, N=3, Q=2, all real processes.

Three `ophiura se` and one `ophiura he --nbd --iscsi --control` subprocesses. While a real
client writes, one SE is killed with SIGKILL and brought back:

- fio (`--ioengine=nbd --verify=crc32c`): (a) restarted at once -> quick recovery; (b) kept down
  until the HE write queue (`--queue 1M`) overflowed -> replay from a peer's log; (c) its data
  directory wiped -> full copy. Then fio's own verify of everything it wrote, a second fio run
  with `--verify_only`, and `ophiura status --json` (polled all along) must have shown the SE
  failed, then that kind of recovery, then up.
- qemu-io over iSCSI (`iscsi://.../iqn.2026-11.org.ophiura:vol/0`): patterns written across the
  volume while an SE is killed and restarted, then every pattern read back with `read -P`.

The HE runs with `--cache 0`, so every read of the verify passes came from an SE, not from HE
memory. SE contents are compared in two ways: (1) while running, each SE's own READ path, over
the wire from a client of the test, every answer carrying the same applied sequence (= the HE's
newest write); (2) each SE's data file after a clean stop (SIGTERM syncs it). (1) is what a
host would get after a failover; (2) is what is on disk. For qemu-io the test also knows the
exact expected image, so the SEs' checksums are compared against it.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .he_harness import (
    HeProcess,
    MiB,
    SeHandle,
    StatusPoller,
    all_caught_up,
    require_tools,
    run_tool,
    se_file_digest,
    se_served_digest,
    spawn_ses,
)

pytestmark = [pytest.mark.tools, pytest.mark.timeout(150)]

VOL = "vol"
SIZE = 32 * MiB
IQN = f"iqn.2026-11.org.ophiura:{VOL}"
SE_LOG = "32M"  # each SE's replay log: holds every write of a run (for replay recovery)
QUEUE_BYTES = {"64M": 64 * MiB, "1M": MiB}
ENTRY = 4096 + 64  # HE queue cost of one 4 KiB write


@dataclass
class Cluster:
    ses: list[SeHandle]
    he: HeProcess
    status: StatusPoller

    def se(self, name: str) -> SeHandle:
        return next(s for s in self.ses if s.name == name)


@pytest.fixture
async def cluster_factory(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Cluster] = []

    async def make(queue: str) -> Cluster:
        ses = await spawn_ses(tmp_path, log_size=32 << 20)
        he = HeProcess(ses, tmp_path, volumes=(f"{VOL}:32M",), queue=queue, cache="0")
        cluster = Cluster(ses, he, StatusPoller(he))
        made.append(cluster)
        await he.start()
        cluster.status.start()
        await cluster.status.wait(all_caught_up, 20, "all SEs up")
        return cluster

    yield make
    for c in made:
        await c.status.stop()
        c.he.terminate()
        for s in c.ses:
            s.terminate()


def fio_cmd(c: Cluster, *extra: str) -> list[str]:
    return [
        "fio",
        "--name=integrity",
        "--ioengine=nbd",
        f"--uri=nbd://127.0.0.1:{c.he.nbd}/{VOL}",
        "--rw=randwrite",
        "--bs=4k",
        f"--size={SIZE}",
        "--iodepth=8",
        "--randseed=20261103",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=normal",
        *extra,
    ]


def check_fio(rc: int, out: str, what: str) -> None:
    assert rc == 0, f"{what}: fio exited {rc}\n{out}"
    assert "err= 0" in out, f"{what}:\n{out}"
    for bad in ("verify failed", "bad magic", "bad header", "crc32c: verify"):
        assert bad not in out, f"{what}: {bad!r}\n{out}"
    assert "READ: bw=" in out, f"{what}: no verify reads\n{out}"


async def compare_ses(c: Cluster, expected: str | None = None) -> str:
    """Every SE serves the same bytes at the same applied seq; then the same on disk."""
    snap = await c.status.wait(all_caught_up, 30, "every SE acked the newest write")
    latest = snap["latest_seq"]
    served = {s.name: await se_served_digest(s, VOL, SIZE) for s in c.ses}
    for name, (_, seqs) in served.items():
        assert seqs == {latest}, f"SE {name} served at seqs {seqs}, HE latest is {latest}"
    digests = {name: d for name, (d, _) in served.items()}
    assert len(set(digests.values())) == 1, f"SEs differ: {digests}"
    digest = next(iter(digests.values()))
    if expected is not None:
        assert digest == expected, f"SEs hold {digest}, the client wrote {expected}"
    # on disk, after a clean stop of the HE and the SEs
    await c.status.stop()
    c.he.terminate()
    for s in c.ses:
        s.terminate()
    on_disk = {s.name: se_file_digest(s, VOL, SIZE) for s in c.ses}
    assert set(on_disk.values()) == {digest}, f"data files {on_disk}, served {digest}"
    return digest


async def kill_during_writes(
    c: Cluster, victim: str, client: asyncio.Task[Any], kind: str, queue_bytes: int
) -> dict[str, Any]:
    """Kill -9 `victim` while `client` writes; bring it back as `kind` recovery needs; wait up."""
    se = c.se(victim)
    start = (await c.status.wait(lambda s: True, 10, "a status"))["latest_seq"]
    await c.status.wait(lambda s: s["latest_seq"] >= start + 300, 30, "writes flowing")
    assert not client.done(), "the client finished before the fault: make it write more"
    killed_wall = time.time()
    se.kill9()
    killed = await c.status.wait(
        lambda s: next(x for x in s["ses"] if x["name"] == victim)["state"] == "failed",
        10,
        f"{victim} failed",
    )
    down_at = killed["latest_seq"]
    if kind == "replay":
        # down until the HE queue no longer holds what it missed (1M holds ~250 writes)
        need = down_at + 2 * queue_bytes // ENTRY
        await c.status.wait(lambda s: s["latest_seq"] >= need, 30, "queue overflow")
    if kind == "full":
        shutil.rmtree(se.data_dir)
    at_restart = c.status.last
    behind = next(x for x in at_restart["ses"] if x["name"] == victim)["acked_seq"]
    if kind == "replay":
        assert at_restart["queue"]["first_seq"] > behind + 1, at_restart["queue"]
    writing_at_restart = not client.done()
    se.spawn()
    up = await c.status.wait(
        lambda s: (
            next(x for x in s["ses"] if x["name"] == victim)["state"] == "up"
            and next(x for x in s["ses"] if x["name"] == victim)["recoveries"]
        ),
        60,
        f"{victim} recovered",
    )
    return {
        "killed_wall": killed_wall,
        "killed_at_seq": down_at,
        "behind": behind,
        "up_at_seq": up["latest_seq"],
        "writing_at_restart": writing_at_restart,
    }


def shown(fault: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fault.items() if k != "killed_wall"}


def check_recovery_shown(c: Cluster, victim: str, kind: str, since: float) -> list[str]:
    """`ophiura status --json` showed `victim` failed by the kill, then `kind` recovery, then up.

    The polls see the states they happen to catch (a quick or replay recovery of a few hundred
    writes can begin and end between two polls); the status' per-SE `history` (the last state
    changes with wall times) shows every step, so the check uses both.
    """
    seen = c.status.states_seen(victim)
    final = c.status.se(victim)
    steps = [h for h in final["history"] if h["at"] >= since - 0.01]
    states = [h["state"] for h in steps]
    assert states and states[0] == "failed" and steps[0]["event"] == "lost", (steps, seen)
    rec = [s for s in states if s.startswith("recovering-")]
    assert rec and rec[0] == f"recovering-{kind}", (steps, seen)
    after = states[states.index(rec[0]) + 1 :]
    assert after and after[0] == "up", (steps, seen)
    assert final["state"] == "up" and final["recoveries"].get(kind, 0) >= 1, final
    assert "failed" in seen and seen[-1] == "up", seen
    # the polls agree: a recovering state they caught between the failure and up is this kind
    window = seen[seen.index("failed") :]
    window = window[: window.index("up")] if "up" in window else window
    assert {s for s in window if s.startswith("recovering-")} <= {f"recovering-{kind}"}, seen
    # the other SEs were never recovered, unless a full queue declared them lagging (by design)
    for other in c.ses:
        if other.name != victim:
            st = c.status.se(other.name)
            n = sum(st["recoveries"].values())
            assert n <= st["failures"].get("lagging", 0), st
    t0 = steps[0]["at"]
    return [f"{h['state']}@+{h['at'] - t0:.2f}s" for h in steps] + [f"polled {seen}"]


@pytest.mark.parametrize(
    ("kind", "queue"),
    [("quick", "64M"), ("replay", "1M"), ("full", "64M")],
)
async def test_fio_verify_through_nbd_with_se_fault(
    cluster_factory: Any, tmp_path: Path, kind: str, queue: str
) -> None:
    require_tools("fio")
    c: Cluster = await cluster_factory(queue)
    t0 = time.monotonic()
    writer = asyncio.create_task(run_tool(*fio_cmd(c), timeout=90, cwd=tmp_path))
    fault = await kill_during_writes(c, "c", writer, kind, QUEUE_BYTES[queue])
    rc, out = await writer
    check_fio(rc, out, "fio randwrite + verify")
    assert "WRITE: bw=" in out, out
    seen = check_recovery_shown(c, "c", kind, fault["killed_wall"])
    # a second, read-only fio pass over everything the first one wrote
    rc, out = await run_tool(*fio_cmd(c, "--verify_only"), timeout=60, cwd=tmp_path)
    check_fio(rc, out, "fio --verify_only")
    digest = await compare_ses(c)
    print(
        f"\n{kind}: c {seen}; fault {shown(fault)}; SEs identical sha256 {digest[:16]}; "
        f"{time.monotonic() - t0:.1f}s"
    )


# ---- qemu-io over iSCSI ------------------------------------------------------------------------


def pattern_writes(image: bytearray, count: int, length: int, stride: int, phase: int) -> list[str]:
    """qemu-io `write -P` commands spread across the volume; `image` gets the same bytes."""
    cmds = []
    for i in range(count):
        off = (i * stride + phase * 4096) % (SIZE - length)
        off -= off % 4096
        pat = (i * 37 + phase * 101 + 1) % 255 + 1  # never 0: a lost write cannot look right
        image[off : off + length] = bytes([pat]) * length
        cmds.append(f"write -P 0x{pat:02x} {off} {length}")
    return cmds


def pattern_reads(image: bytearray, granule: int = 4096) -> list[str]:
    """`read -P` for every run of equal bytes (at 4 KiB granularity) of the whole image."""
    cmds = []
    start = 0
    for off in range(granule, SIZE + granule, granule):
        if off < SIZE and image[off : off + granule] == image[start : start + 1] * granule:
            continue
        if off - start >= granule:
            block = image[start : start + granule]
            assert block == block[:1] * granule
            cmds.append(f"read -P 0x{block[0]:02x} {start} {off - start}")
        start = off
    return cmds


async def qemu_io(c: Cluster, cmds: list[str], timeout: float = 60) -> str:
    url = f"iscsi://127.0.0.1:{c.he.iscsi}/{IQN}/0"
    out_all = []
    for i in range(0, len(cmds), 500):  # bounded command lines
        args = ["qemu-io", "-f", "raw", url]
        for cmd in cmds[i : i + 500]:
            args += ["-c", cmd]
        rc, out = await run_tool(*args, timeout=timeout)
        assert rc == 0, f"qemu-io exited {rc}\n{out[-3000:]}"
        for bad in ("failed", "error", "Error"):
            assert bad not in out, f"qemu-io: {bad!r}\n{out[-3000:]}"
        out_all.append(out)
    return "".join(out_all)


async def test_qemu_io_patterns_through_iscsi_with_se_restart(cluster_factory: Any) -> None:
    require_tools("qemu-io")
    c: Cluster = await cluster_factory("64M")
    t0 = time.monotonic()
    image = bytearray(SIZE)
    # the whole volume, 256 KiB at a time, before any fault
    await qemu_io(c, pattern_writes(image, SIZE // (256 * 1024), 256 * 1024, 256 * 1024, 0))
    # then 8 KiB and 4 KiB patterns scattered over it while SE b is killed and restarted
    during = pattern_writes(image, 1500, 8192, 61440, 1)
    after = pattern_writes(image, 1500, 4096, 45056, 2)
    writer = asyncio.create_task(qemu_io(c, during + after))
    fault = await kill_during_writes(c, "b", writer, "quick", QUEUE_BYTES["64M"])
    out = await writer
    assert out.count("wrote ") == len(during) + len(after), out[-2000:]
    seen = check_recovery_shown(c, "b", "quick", fault["killed_wall"])
    # every pattern back, through a new iSCSI session (the HE has no cache: the SEs answer)
    reads = pattern_reads(image)
    out = await qemu_io(c, reads)
    assert out.count("read ") == len(reads), out[-2000:]
    expected = hashlib.sha256(image).hexdigest()
    digest = await compare_ses(c, expected)
    print(
        f"\niscsi/qemu-io: b {seen}; fault {shown(fault)}; {len(during) + len(after)} pattern "
        f"writes, {len(reads)} pattern reads; SEs == image sha256 {digest[:16]}; "
        f"{time.monotonic() - t0:.1f}s"
    )
