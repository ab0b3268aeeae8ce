"""The assembled target (file backend + SCSI + iSCSI) under disk faults: a stalled disk and a
full disk. Neither may freeze or kill the target; other sessions keep working."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from tests.scsi import cdbs

from ophiura.block.file import FileBlockDevice
from ophiura.iscsi.initiator import IscsiInitiator
from ophiura.iscsi.server import IscsiServer
from ophiura.scsi.api import Status
from ophiura.scsi.target import ScsiTarget
from ophiura.target_daemon import TargetConfig, TargetDaemon

MiB = 1 << 20
STALLED = "iqn.2026-11.io.test:stalled"
HEALTHY = "iqn.2026-11.io.test:healthy"


class StallingFileDevice(FileBlockDevice):
    """A real file whose writes hang in the kernel-facing call until released (a stalled disk)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.stalled = threading.Event()

    def _write_blocking(self, data, offset, fua):  # type: ignore[no-untyped-def]
        self.stalled.set()
        if not self.release.wait(30):
            raise OSError(5, "stall never released")
        super()._write_blocking(data, offset, fua)


async def test_stalled_disk_freezes_only_its_own_commands(tmp_path: Path) -> None:
    stalled = StallingFileDevice(tmp_path / "stalled.img", size=8 * MiB)
    healthy = FileBlockDevice(tmp_path / "healthy.img", size=8 * MiB)
    server = IscsiServer(
        {STALLED: ScsiTarget(STALLED, {0: stalled}), HEALTHY: ScsiTarget(HEALTHY, {0: healthy})},
        ("127.0.0.1", 0),
    )
    await server.start()
    try:
        victim = await IscsiInitiator.connect("127.0.0.1", server.port, STALLED, "iqn.x:a")
        other = await IscsiInitiator.connect("127.0.0.1", server.port, HEALTHY, "iqn.x:b")
        await victim.test_unit_ready()
        await other.test_unit_ready()
        stuck = await victim.start_scsi(0, cdbs.write(10, 8, 8), data_out=os.urandom(4096))
        assert await asyncio.to_thread(stalled.stalled.wait, 5), "the write never reached disk"

        # While that write hangs, another session does real I/O, bounded in time.
        async def other_io() -> None:
            for i in range(50):
                data = os.urandom(4096)
                await other.write(i * 8, data)
                assert await other.read(i * 8, 8) == data

        await asyncio.wait_for(other_io(), 10)
        # The stalled LUN itself still answers commands that need no disk.
        assert (await asyncio.wait_for(victim.test_unit_ready(), 5)).status == Status.GOOD
        assert not stuck.fut.done()

        stalled.release.set()
        result = await asyncio.wait_for(stuck.fut, 10)
        assert result.status == Status.GOOD
        for ini in (victim, other):
            await ini.logout()
    finally:
        stalled.release.set()
        await server.stop()
        await stalled.close()
        await healthy.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_full_disk_gives_space_allocation_failed_and_target_lives(tmp_path: Path) -> None:
    """/dev/full as the backing store: every write fails ENOSPC in the kernel."""
    daemon = TargetDaemon(
        TargetConfig(backing=Path("/dev/full"), size=MiB, port=0, state_dir=tmp_path / "state")
    )
    await daemon.start()
    assert daemon.frontends.iscsi is not None
    try:
        ini = await IscsiInitiator.connect(
            "127.0.0.1", daemon.frontends.iscsi.port, daemon.config.iqn, "iqn.x:full"
        )
        await ini.test_unit_ready()
        result = await ini.scsi(0, cdbs.write(10, 0, 1), data_out=bytes(512))
        assert result.status == Status.CHECK_CONDITION
        assert result.sense_key == 0x07  # DATA PROTECT
        assert result.asc_ascq == (0x27, 0x07)  # SPACE ALLOCATION FAILED WRITE PROTECT
        # Nothing else broke: reads and further commands work on the same session.
        assert await ini.read(0, 1) == bytes(512)
        assert (await ini.test_unit_ready()).status == Status.GOOD
        await ini.logout()
    finally:
        await daemon.stop()
