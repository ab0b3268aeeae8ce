"""Fixtures: a ScsiTarget over MemoryBlockDevices and initiator-side helpers, no network."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from ophiura.block.device import BlockDevice
from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.api import Command, Nexus, Response, Status
from ophiura.scsi.sense import decode_sense
from ophiura.scsi.target import ScsiTarget

from . import cdbs

TARGET = "iqn.2025-01.org.ophiura:test"
BS = 512
BLOCKS = 4096
_tags = itertools.count(1)


def nexus(name: str, isid: int = 1, port: int = 1) -> Nexus:
    return Nexus(f"iqn.2025-01.org.example:{name},i,0x{isid:012x}", f"{TARGET},t,0x{port:x}", port)


class Initiator:
    """One I_T nexus talking to a target: send CDBs, check statuses."""

    def __init__(self, target: ScsiTarget, nexus: Nexus, lun: int = 0) -> None:
        self.target = target
        self.nexus = nexus
        self.lun = lun

    def command(self, cdb: bytes, data: bytes = b"", tag: int | None = None) -> Command:
        return Command(
            self.nexus, self.lun, next(_tags) if tag is None else tag, cdb, data_out=data
        )

    async def run(self, cdb: bytes, data: bytes = b"", lun: int | None = None) -> Response:
        cmd = self.command(cdb, data)
        if lun is not None:
            cmd.lun = lun
        return await self.target.execute(cmd)

    async def good(self, cdb: bytes, data: bytes = b"") -> bytes:
        rsp = await self.run(cdb, data)
        assert rsp.status == Status.GOOD, (rsp.status, rsp.sense and decode_sense(rsp.sense))
        return bytes(rsp.data_in)

    async def sense(self, cdb: bytes, data: bytes = b"") -> tuple[int, int, int]:
        rsp = await self.run(cdb, data)
        assert rsp.status == Status.CHECK_CONDITION, rsp.status
        return decode_sense(rsp.sense)

    async def status(self, cdb: bytes, data: bytes = b"") -> int:
        return (await self.run(cdb, data)).status

    async def clear_ua(self) -> list[tuple[int, int]]:
        """TEST UNIT READY until no unit attention is left; returns what was reported."""
        seen = []
        for _ in range(20):
            rsp = await self.run(cdbs.tur())
            if rsp.status == Status.CHECK_CONDITION and decode_sense(rsp.sense)[0] == 6:
                seen.append(decode_sense(rsp.sense)[1:])
                continue
            return seen
        raise AssertionError("unit attentions never cleared")


MakeTarget = Callable[..., ScsiTarget]


@pytest.fixture
def make_target(tmp_path: Path) -> MakeTarget:
    def make(
        devices: dict[int, BlockDevice] | None = None,
        thin: bool = False,
        state_dir: Path | bool | None = None,
        blocks: int = BLOCKS,
    ) -> ScsiTarget:
        if devices is None:
            devices = {0: MemoryBlockDevice(blocks * BS, BS, thin=thin)}
        sd = tmp_path / "state" if state_dir is True else state_dir or None
        return ScsiTarget(TARGET, devices, state_dir=sd)

    return make


@pytest.fixture
def target(make_target: MakeTarget) -> ScsiTarget:
    return make_target()


@pytest.fixture
def thin_target(make_target: MakeTarget) -> ScsiTarget:
    return make_target(thin=True)


async def login(target: ScsiTarget, name: str, isid: int = 1, port: int = 1) -> Initiator:
    """A nexus that logged in and has consumed its power-on unit attention."""
    ini = Initiator(target, nexus(name, isid, port))
    target.nexus_added(ini.nexus)
    await ini.clear_ua()
    return ini


@pytest.fixture
async def a(target: ScsiTarget) -> Initiator:
    return await login(target, "alpha")


@pytest.fixture
async def b(target: ScsiTarget) -> Initiator:
    return await login(target, "beta")


class BlockingDevice(MemoryBlockDevice):
    """A MemoryBlockDevice whose reads wait on an event: holds a command in flight."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def read(self, offset: int, length: int) -> bytes:
        self.entered.set()
        await self.gate.wait()
        return await super().read(offset, length)
