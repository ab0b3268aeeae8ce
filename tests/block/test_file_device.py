"""The file backend against a real file on disk: sparse creation, I/O, holes, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ophiura.block.device import (
    BlockDevice,
    BlockDeviceError,
    MediumError,
    NoSpaceError,
    ReadOnlyError,
    physical_block_size,
)
from ophiura.block.file import FileBlockDevice, translate_os_error
from ophiura.block.memory import MemoryBlockDevice

MiB = 1 << 20


async def test_creates_sparse_file_of_requested_size(tmp_path: Path) -> None:
    dev = FileBlockDevice(tmp_path / "d.img", size=64 * MiB, thin=True)
    st = os.stat(tmp_path / "d.img")
    assert st.st_size == 64 * MiB
    assert st.st_blocks == 0, "a new backing file must be sparse"
    assert await dev.read(0, 4096) == bytes(4096)
    await dev.close()


async def test_write_read_roundtrip_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    dev = FileBlockDevice(path, size=8 * MiB)
    pattern = os.urandom(128 * 1024)
    await dev.write(MiB, pattern, fua=True)
    await dev.flush()
    assert await dev.read(MiB, len(pattern)) == pattern
    await dev.close()
    again = FileBlockDevice(path)  # size taken from the file
    assert again.size == 8 * MiB
    assert await again.read(MiB, len(pattern)) == pattern
    await again.close()


async def test_thin_discard_punches_hole_and_reports_extents(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    dev = FileBlockDevice(path, size=8 * MiB, thin=True)
    await dev.write(0, b"\xaa" * MiB)
    await dev.flush()
    allocated = os.stat(path).st_blocks
    await dev.discard(0, 512 * 1024)
    assert os.stat(path).st_blocks < allocated, "discard on a thin LUN must free space"
    assert await dev.read(0, 512 * 1024) == bytes(512 * 1024)
    assert await dev.read(512 * 1024, 4096) == b"\xaa" * 4096
    runs = await dev.extents(0, 2 * MiB)
    assert runs[0].mapped is False and runs[0].offset == 0
    assert any(r.mapped for r in runs)
    assert sum(r.length for r in runs) == 2 * MiB
    assert runs[-1].mapped is False  # the never-written tail is a hole
    await dev.close()


async def test_thick_discard_zeroes_but_keeps_mapped(tmp_path: Path) -> None:
    dev = FileBlockDevice(tmp_path / "d.img", size=4 * MiB, thin=False)
    await dev.write(0, b"\x55" * 8192)
    await dev.discard(0, 8192)
    assert await dev.read(0, 8192) == bytes(8192)
    assert [r.mapped for r in await dev.extents(0, 4 * MiB)] == [True]
    await dev.close()


async def test_read_only_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    FileBlockDevice(path, size=MiB)
    dev = FileBlockDevice(path, read_only=True)
    with pytest.raises(ReadOnlyError):
        await dev.write(0, bytes(512))
    await dev.close()


async def test_out_of_range_is_an_error(tmp_path: Path) -> None:
    dev = FileBlockDevice(tmp_path / "d.img", size=MiB)
    with pytest.raises(BlockDeviceError):
        await dev.read(MiB - 512, 1024)
    await dev.close()


def test_os_errors_become_typed_errors() -> None:
    import errno

    assert isinstance(translate_os_error(OSError(errno.EIO, "io"), "x"), MediumError)
    assert isinstance(translate_os_error(OSError(errno.ENOSPC, "full"), "x"), NoSpaceError)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_full_disk_surfaces_as_no_space(tmp_path: Path) -> None:
    """/dev/full fails every write with ENOSPC: the backend must say so, typed."""
    dev = FileBlockDevice("/dev/full", size=MiB)
    with pytest.raises(NoSpaceError):
        await dev.write(0, bytes(4096))
    await dev.close()


async def test_memory_device_extents_and_discard() -> None:
    dev = MemoryBlockDevice(MiB, thin=True)
    await dev.write(4096, b"\x01" * 4096)
    runs = await dev.extents(0, 16384)
    assert [(r.offset, r.length, r.mapped) for r in runs] == [
        (0, 4096, False),
        (4096, 4096, True),
        (8192, 8192, False),
    ]
    await dev.discard(4096, 4096)
    assert await dev.read(4096, 4096) == bytes(4096)


def test_physical_block_size_helper() -> None:
    class Bare:
        block_size = 512

    class Odd(Bare):
        physical_block_size = 1536  # not a power-of-two multiple

    class Huge(Bare):
        physical_block_size = 512 << 16  # exponent would not fit in 4 bits

    assert physical_block_size(Bare()) == 512  # type: ignore[arg-type]
    assert physical_block_size(Odd()) == 512  # type: ignore[arg-type]
    assert physical_block_size(Huge()) == 512  # type: ignore[arg-type]
    assert physical_block_size(MemoryBlockDevice(MiB, 512, physical_block_size=4096)) == 4096
    assert MemoryBlockDevice(MiB).physical_block_size == 512
    with pytest.raises(ValueError):
        MemoryBlockDevice(MiB, 4096, physical_block_size=512)


async def test_file_physical_block_size_is_the_filesystem_block(tmp_path: Path) -> None:
    dev = FileBlockDevice(tmp_path / "d.img", size=MiB)
    frsize = os.statvfs(tmp_path).f_frsize
    assert dev.physical_block_size == (frsize if 512 <= frsize <= 65536 else 512)
    assert isinstance(dev, BlockDevice)
    await dev.close()
    big = FileBlockDevice(tmp_path / "d.img", block_size=4096)
    assert big.physical_block_size == max(4096, dev.physical_block_size)
    await big.close()
    given = FileBlockDevice(tmp_path / "d.img", physical_block_size=8192)
    assert given.physical_block_size == 8192
    await given.close()
    with pytest.raises(ValueError):
        FileBlockDevice(tmp_path / "d.img", physical_block_size=1000)


async def test_memory_discard_of_a_huge_range_walks_stored_blocks() -> None:
    dev = MemoryBlockDevice(1 << 40, 512, thin=True)  # 2^31 blocks: a range loop would hang
    await dev.write(4096, b"x" * 1024)
    await dev.write(1 << 39, b"y" * 512)
    await dev.discard(0, 1 << 39)
    assert await dev.read(4096, 1024) == bytes(1024)
    assert await dev.read(1 << 39, 512) == b"y" * 512
