"""The BlockDevice protocol: the only thing the SCSI layer knows about storage.

Offsets and lengths are in bytes and always multiples of `block_size`; the SCSI layer checks
ranges before calling. Backends raise the typed errors below, which the SCSI layer turns into
sense data (MEDIUM ERROR, SPACE ALLOCATION FAILED), so a failing disk never kills the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class BlockDeviceError(Exception):
    """A backend operation failed; `errno` says why when the OS told us."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class MediumError(BlockDeviceError):
    """The medium could not be read or written (EIO and friends)."""


class NoSpaceError(BlockDeviceError):
    """A thin device could not allocate space (ENOSPC, EDQUOT)."""


class ReadOnlyError(BlockDeviceError):
    """The device refuses writes (StarFish read-only mode: fewer than Q storage elements)."""


@dataclass(frozen=True)
class Extent:
    """A run of blocks with one provisioning state, for GET LBA STATUS."""

    offset: int
    length: int
    mapped: bool


class DeviceGeometry:
    """The read-only shape every concrete backend reports: set once in its __init__."""

    _block_size: int
    _physical_block_size: int
    _size: int
    _thin: bool
    _read_only: bool

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def physical_block_size(self) -> int:
        return self._physical_block_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def thin(self) -> bool:
        return self._thin

    @property
    def read_only(self) -> bool:
        return self._read_only


@runtime_checkable
class BlockDevice(Protocol):
    """Storage as the SCSI layer sees it. Every method that may block is a coroutine."""

    @property
    def block_size(self) -> int: ...

    # Optional, not part of the structural check: `physical_block_size: int`, the unit the
    # backend allocates and writes in (a filesystem block). Read it with physical_block_size().

    @property
    def size(self) -> int:
        """Capacity in bytes (a multiple of block_size)."""
        ...

    @property
    def thin(self) -> bool:
        """True when discard really deallocates (SCSI LBPME=1)."""
        ...

    @property
    def read_only(self) -> bool: ...

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview: ...

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> None:
        """Write; with fua the data is durable before this returns."""
        ...

    async def flush(self) -> None:
        """Make every completed write durable (SYNCHRONIZE CACHE)."""
        ...

    async def discard(self, offset: int, length: int) -> None:
        """Deallocate (thin) or zero (thick) the range; it then reads back as zeros."""
        ...

    async def write_zeroes(self, offset: int, length: int) -> None: ...

    async def extents(self, offset: int, length: int) -> list[Extent]:
        """Mapped/unmapped runs covering [offset, offset+length), for GET LBA STATUS."""
        ...

    async def close(self) -> None: ...


def physical_block_size(device: BlockDevice) -> int:
    """The device's physical block size in bytes: its optional `physical_block_size` attribute.

    Optional so that older backends still satisfy the protocol; a missing or unusable value
    (not a power-of-two multiple of block_size, or more than 2^15 logical blocks: the READ
    CAPACITY(16) exponent is 4 bits) means one logical block per physical block.
    """
    bs = device.block_size
    value = getattr(device, "physical_block_size", None)
    if not isinstance(value, int) or value < bs or value % bs:
        return bs
    ratio = value // bs
    if ratio & (ratio - 1) or ratio > 1 << 15:
        return bs
    return value
