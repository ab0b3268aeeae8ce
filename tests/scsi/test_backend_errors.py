"""A failing BlockDevice becomes sense data, never an exception out of execute()."""

from __future__ import annotations

import pytest

from ophiura.block.device import BlockDeviceError, MediumError, NoSpaceError, ReadOnlyError
from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.api import Status
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BS, MakeTarget, login


class FailingDevice(MemoryBlockDevice):
    def __init__(self, error: Exception) -> None:
        super().__init__(1 << 20, BS, thin=True)
        self.error = error

    async def read(self, offset: int, length: int) -> bytes:
        raise self.error

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        raise self.error

    async def flush(self) -> None:
        raise self.error

    async def discard(self, offset: int, length: int) -> None:
        raise self.error

    async def extents(self, offset: int, length: int) -> list:
        raise self.error


async def start(make_target: MakeTarget, error: Exception) -> tuple[ScsiTarget, object]:
    target = make_target({0: FailingDevice(error)})
    return target, await login(target, "a")


@pytest.mark.parametrize(
    ("error", "read_sense", "write_sense"),
    [
        (MediumError("EIO", 5), (3, 0x11, 0), (3, 0x0C, 0)),
        (BlockDeviceError("odd", None), (3, 0x11, 0), (3, 0x0C, 0)),
        (NoSpaceError("ENOSPC", 28), (7, 0x27, 0x07), (7, 0x27, 0x07)),
        (ReadOnlyError("quorum lost"), (7, 0x27, 0), (7, 0x27, 0)),
    ],
)
async def test_error_mapping(
    make_target: MakeTarget, error: Exception, read_sense: tuple, write_sense: tuple
) -> None:
    _, ini = await start(make_target, error)
    assert await ini.sense(cdbs.read(10, 4, 1)) == read_sense
    assert await ini.sense(cdbs.write(10, 4, 1), bytes(BS)) == write_sense
    assert await ini.sense(cdbs.sync_cache(10)) == write_sense
    assert await ini.sense(cdbs.write_same(16, 0, 2), b"x" * BS) == write_sense
    assert await ini.sense(cdbs.compare_and_write(0, 1), bytes(2 * BS)) == read_sense
    assert await ini.sense(cdbs.get_lba_status(0)) == read_sense
    params = cdbs.unmap_params([(0, 1)])
    assert await ini.sense(cdbs.unmap(len(params)), params) == write_sense


async def test_medium_error_reports_the_lba(make_target: MakeTarget) -> None:
    _, ini = await start(make_target, MediumError("EIO", 5))
    rsp = await ini.run(cdbs.read(10, 77, 1))
    assert rsp.sense[0] & 0x80 and int.from_bytes(rsp.sense[3:7]) == 77


async def test_unexpected_exception_is_hardware_error(make_target: MakeTarget) -> None:
    _, ini = await start(make_target, ZeroDivisionError("bug"))
    rsp = await ini.run(cdbs.read(10, 0, 1))
    assert rsp.status == Status.CHECK_CONDITION
    assert rsp.sense[2] == 4 and rsp.sense[12] == 0x44
