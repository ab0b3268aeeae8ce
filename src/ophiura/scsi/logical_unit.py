"""One logical unit: its BlockDevice and all the state SPC/SBC keep for it.

Mode pages, reservations (both kinds), unit attentions and the task set are per LU and shared by
every I_T nexus, as the HA profile asks. The I/O helpers here are the only place that talks to
the BlockDevice, so backend failures become sense data in one place and never escape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ophiura.block.device import (
    BlockDevice,
    BlockDeviceError,
    NoSpaceError,
    ReadOnlyError,
    physical_block_size,
)
from ophiura.scsi.api import Nexus
from ophiura.scsi.constants import Asc, SenseKey
from ophiura.scsi.identity import naa_designator, normalize_port, unit_serial
from ophiura.scsi.modepages import ModePages
from ophiura.scsi.opcodes import CommandInfo, commands_for
from ophiura.scsi.pr_state import PrState, load
from ophiura.scsi.sense import CheckCondition, lba_out_of_range
from ophiura.scsi.taskset import TaskSet
from ophiura.scsi.unit_attention import UnitAttentions
from ophiura.scsi.write_guard import WriteGuard

log = logging.getLogger(__name__)

# Block limits we advertise (VPD B0h) and enforce. Byte limits keep buffers bounded whatever the
# block size.
MAX_TRANSFER_BYTES = 8 * 1024 * 1024
OPTIMAL_TRANSFER_BYTES = 1024 * 1024
MAX_COMPARE_AND_WRITE_BLOCKS = 255  # the CDB field is one byte
MAX_UNMAP_BLOCKS = 1 << 20
MAX_UNMAP_DESCRIPTORS = 256
# Below 65536 on purpose: libiscsi's WRITESAME16.Unmap then expects a 65536-block WRITE SAME to
# be refused, instead of first writing 65536 blocks with one WRITE(16) beyond our transfer limit.
MAX_WRITE_SAME_BLOCKS = 0xFFFF
WRITE_SAME_CHUNK_BYTES = 1024 * 1024


def backend_error(exc: BlockDeviceError, writing: bool, lba: int | None = None) -> CheckCondition:
    """Map a BlockDevice failure to sense data (issue 2: a failing disk is not a dead target)."""
    if isinstance(exc, NoSpaceError):
        return CheckCondition(SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
    if isinstance(exc, ReadOnlyError):
        return CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
    asc = Asc.WRITE_ERROR if writing else Asc.UNRECOVERED_READ_ERROR
    return CheckCondition(SenseKey.MEDIUM_ERROR, asc, information=lba)


class LogicalUnit:
    def __init__(
        self,
        lun: int,
        device: BlockDevice,
        target_name: str,
        state_dir: Path | None,
        report_physical_block: bool = False,
    ) -> None:
        """`report_physical_block`: advertise the device's physical block (LBPPBE in READ
        CAPACITY(16), the granularities in Block Limits). Off by default: see target.py."""
        self.lun = lun
        self.device = device
        self.block_size = device.block_size
        self.num_blocks = device.size // device.block_size
        self.thin = bool(device.thin)
        self.serial = unit_serial(target_name, lun)
        self.naa = naa_designator(target_name, lun)
        self.state_dir = state_dir
        self.pr_path = None if state_dir is None else state_dir / f"lun{lun}.pr.json"
        self.modes = ModePages(None if state_dir is None else state_dir / f"lun{lun}.mode.json")
        restored = None if self.pr_path is None else load(self.pr_path)
        self.pr: PrState = restored if restored is not None else PrState()
        self.pr_lock = asyncio.Lock()
        # Where every PR change must be durable before its PR OUT completes, when the device
        # replicates it (an HE: all registrations and reservations, APTPL or not, on Q SEs).
        # None: only APTPL state is kept, in `pr_path` (SPC-4: the rest dies with the device).
        self.pr_store: Callable[[PrState], Awaitable[None]] | None = None
        self.spc2_holder: tuple[str, str] | None = None
        self.ua = UnitAttentions()
        self.tasks = TaskSet()
        self.guard = WriteGuard()
        self.stopped = False
        self.commands: tuple[CommandInfo, ...] = commands_for(self.thin)
        self.background: set[asyncio.Task[None]] = set()
        bs = self.block_size
        self.max_transfer_blocks = max(1, MAX_TRANSFER_BYTES // bs)
        self.optimal_transfer_blocks = max(1, OPTIMAL_TRANSFER_BYTES // bs)
        pbs = physical_block_size(device) if report_physical_block else bs
        self.physical_block_blocks = pbs // bs  # logical blocks per physical block (LBPPB)
        self.lbppbe = self.physical_block_blocks.bit_length() - 1
        # Optimal transfer / unmap granularity: the physical block, and at least 4 KiB (a page:
        # what the file backend writes and punches in even when no physical block is reported).
        self.granularity_blocks = max(self.physical_block_blocks, 4096 // bs, 1)
        # WRITE ATOMIC(16): atomic with respect to other commands that write the same blocks,
        # up to the transfer limit (the data is already in memory when the command runs).
        self.max_atomic_blocks = self.max_transfer_blocks

    @staticmethod
    def nexus_ident(nexus: Nexus) -> tuple[str, str]:
        return (normalize_port(nexus.initiator_port), normalize_port(nexus.target_port))

    @property
    def write_protected(self) -> bool:
        return self.device.read_only or self.modes.swp

    @property
    def ptpl_capable(self) -> bool:
        return self.pr_path is not None

    def refresh_capacity(self) -> bool:
        """Re-read the device size; True if it changed."""
        blocks = self.device.size // self.block_size
        changed = blocks != self.num_blocks
        self.num_blocks = blocks
        return changed

    # -- checks shared by many commands ------------------------------------------------------

    def check_range(self, lba: int, blocks: int) -> None:
        """LBA OUT OF RANGE unless [lba, lba+blocks) is on the medium (and lba itself is)."""
        if lba + (blocks or 1) > self.num_blocks:
            raise lba_out_of_range()

    def check_ready(self) -> None:
        if self.stopped:
            raise CheckCondition(SenseKey.NOT_READY, Asc.NOT_READY_INIT_REQUIRED)

    def check_writable(self) -> None:
        if self.device.read_only:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
        if self.modes.swp:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.SOFTWARE_WRITE_PROTECTED)

    # -- I/O: the only calls into the BlockDevice --------------------------------------------

    async def read(self, lba: int, blocks: int) -> bytes | bytearray | memoryview:
        bs = self.block_size
        try:
            return await self.device.read(lba * bs, blocks * bs)
        except BlockDeviceError as exc:
            raise backend_error(exc, writing=False, lba=lba) from exc

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        """A plain write; it waits only behind an overlapping COMPARE AND WRITE."""
        end = lba + len(data) // self.block_size
        guard = self.guard
        wid = await guard.begin_write(lba, end)
        try:
            await self.device.write(lba * self.block_size, data, fua or not self.modes.wce)
        except BlockDeviceError as exc:
            raise backend_error(exc, writing=True, lba=lba) from exc
        finally:
            guard.end_write(wid)

    async def write_locked(self, lba: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        """A write inside an atomic range the caller already owns (COMPARE AND WRITE)."""
        try:
            await self.device.write(lba * self.block_size, data, fua or not self.modes.wce)
        except BlockDeviceError as exc:
            raise backend_error(exc, writing=True, lba=lba) from exc

    async def discard(self, lba: int, blocks: int) -> None:
        wid = await self.guard.begin_write(lba, lba + blocks)
        bs = self.block_size
        try:
            await self.device.discard(lba * bs, blocks * bs)
        except BlockDeviceError as exc:
            raise backend_error(exc, writing=True, lba=lba) from exc
        finally:
            self.guard.end_write(wid)

    async def write_zeroes(self, lba: int, blocks: int) -> None:
        wid = await self.guard.begin_write(lba, lba + blocks)
        bs = self.block_size
        try:
            await self.device.write_zeroes(lba * bs, blocks * bs)
        except BlockDeviceError as exc:
            raise backend_error(exc, writing=True, lba=lba) from exc
        finally:
            self.guard.end_write(wid)

    async def flush(self) -> None:
        try:
            await self.device.flush()
        except BlockDeviceError as exc:
            raise backend_error(exc, writing=True) from exc

    def flush_in_background(self) -> None:
        """SYNCHRONIZE CACHE with IMMED=1: status now, the flush continues (errors are logged)."""

        async def run() -> None:
            try:
                await self.device.flush()
            except BlockDeviceError as exc:
                log.error("LUN %d: background cache flush failed: %s", self.lun, exc)

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
