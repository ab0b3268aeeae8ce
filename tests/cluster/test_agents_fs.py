"""`fs` on a real ext4 image (mkfs.ext4 on a file, loop-mounted: root only) and `disk-watchdog`
on a real file."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.agents.disk_watchdog import DiskWatchdogAgent, decode_counter, encode_block
from ophiura.cluster.agents.fs import FsAgent, holders, mount_at


@pytest.fixture
def image(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    if os.geteuid() != 0:
        print("SKIP: loop mounts need root")
        pytest.skip("loop mounts need root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 missing (e2fsprogs)")
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    try:
        yield img, mnt
    finally:
        # unmount only what this test mounted
        if mount_at(str(mnt)) is not None:
            subprocess.run(["umount", str(mnt)], check=False)


async def test_fs_start_monitor_stop(image: tuple[Path, Path]) -> None:
    img, mnt = image
    agent = FsAgent()
    res = Resource("data", "fs", {"device": str(img), "directory": str(mnt), "fstype": "ext4"})
    assert (await agent.validate(res, 10)).ok
    assert (await agent.monitor(res, 10)).code == OcfCode.NOT_RUNNING
    out = await agent.start(res, 30)
    assert out.ok, out
    m = mount_at(str(mnt))
    assert m is not None and m.fstype == "ext4"
    assert (await agent.start(res, 30)).ok  # already mounted
    assert (await agent.monitor(res, 10)).ok
    deep = Resource(res.name, "fs", res.params, monitor_depth=10)
    out = await agent.monitor(deep, 10)
    assert out.ok, out
    assert (mnt / ".ophiura-fs-check").exists()
    (mnt / "payload").write_text("kept")
    assert (await agent.stop(res, 30)).ok
    assert mount_at(str(mnt)) is None
    assert (await agent.stop(res, 30)).ok  # idempotent
    assert (await agent.monitor(res, 10)).code == OcfCode.NOT_RUNNING
    assert (await agent.start(res, 30)).ok
    assert (mnt / "payload").read_text() == "kept"
    assert (await agent.stop(res, 30)).ok


async def test_fs_stop_kills_processes_holding_the_mount(image: tuple[Path, Path]) -> None:
    img, mnt = image
    agent = FsAgent()
    res = Resource("data", "fs", {"device": str(img), "directory": str(mnt), "grace": "0.5"})
    assert (await agent.start(res, 30)).ok
    # one polite holder (cwd inside), one that ignores SIGTERM and holds an open file
    polite = subprocess.Popen(["sleep", "300"], cwd=mnt)
    stubborn = subprocess.Popen(
        ["sh", "-c", f"trap '' TERM; exec 3>{mnt}/held; while :; do sleep 0.1; done"]
    )
    await asyncio.sleep(0.3)
    dev = mount_at(str(mnt)).dev  # type: ignore[union-attr]
    found = holders(dev)
    assert polite.pid in found and stubborn.pid in found
    t0 = time.monotonic()
    out = await agent.stop(res, 20)
    assert out.ok, out
    assert "SIGTERM" in out.reason and "SIGKILL" in out.reason
    assert time.monotonic() - t0 < 10
    assert polite.wait(5) is not None and stubborn.wait(5) is not None
    assert mount_at(str(mnt)) is None


async def test_fs_fsck_refuses_a_broken_filesystem(image: tuple[Path, Path]) -> None:
    img, mnt = image
    with open(img, "r+b") as f:  # wipe the superblock and the first group descriptors
        f.seek(1024)
        f.write(b"\0" * 8192)
    agent = FsAgent()
    res = Resource("data", "fs", {"device": str(img), "directory": str(mnt), "fstype": "ext4"})
    out = await agent.start(res, 30)
    assert out.code == OcfCode.ERR_GENERIC and "fsck" in out.reason
    assert mount_at(str(mnt)) is None


async def test_fs_params() -> None:
    agent = FsAgent()
    out = await agent.validate(Resource("x", "fs", {"device": "/dev/null"}), 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'directory'" in out.reason
    out = await agent.validate(Resource("x", "fs", {"device": "d", "directory": "rel"}), 5)
    assert out.code == OcfCode.ERR_CONFIGURED
    out = await agent.start(Resource("x", "fs", {"device": "/no/dev", "directory": "/mnt/x"}), 5)
    assert out.code == OcfCode.ERR_INSTALLED


# ---- disk watchdog ---------------------------------------------------------------------------
async def test_disk_watchdog_rmw_periodically(tmp_path: Path) -> None:
    dev = tmp_path / "disk"
    dev.write_bytes(b"\0" * (1 << 20))
    agent = DiskWatchdogAgent()
    res = Resource(
        "wd",
        "disk-watchdog",
        {"device": str(dev), "offset": "65536", "interval": "0.05", "deadline": "2"},
    )
    assert (await agent.validate(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.start(res, 5)).ok
    await asyncio.sleep(0.4)
    st = agent.state(res)
    assert st is not None and st.rounds >= 3
    assert (await agent.monitor(res, 5)).ok
    with open(dev, "rb") as f:
        f.seek(65536)
        counter = decode_counter(f.read(4096))
    assert counter is not None and counter >= 3
    with open(dev, "rb") as f:
        assert f.read(65536) == b"\0" * 65536, "only the reserved block is touched"
    # the device goes away: the next round fails, monitor says why (without doing I/O itself)
    dev.unlink()
    await asyncio.sleep(0.3)
    out = await agent.monitor(res, 5)
    assert out.code == OcfCode.ERR_GENERIC and str(dev) in out.reason
    assert (await agent.stop(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING


async def test_disk_watchdog_deadline(tmp_path: Path) -> None:
    dev = tmp_path / "disk"
    dev.write_bytes(b"\0" * 8192)
    agent = DiskWatchdogAgent()
    slow = Resource(
        "wd",
        "disk-watchdog",
        {"device": str(dev), "offset": "0", "interval": "0.05", "deadline": "0.000001"},
    )
    out = await agent.start(slow, 5)
    assert out.code == OcfCode.ERR_GENERIC and "deadline" in out.reason
    assert (await agent.stop(slow, 5)).ok


async def test_disk_watchdog_params_and_block_format() -> None:
    agent = DiskWatchdogAgent()
    out = await agent.validate(Resource("w", "disk-watchdog", {"device": "/x"}), 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'offset'" in out.reason
    out = await agent.validate(Resource("w", "disk-watchdog", {"device": "/x", "offset": "100"}), 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "multiple" in out.reason
    block = encode_block("n1", 42, 4096)
    assert decode_counter(block) == 42
    assert decode_counter(block[:20] + b"X" + block[21:]) is None
