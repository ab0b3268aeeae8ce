"""A file-backed BlockDevice: sparse file, preadv/pwritev, hole punching, fdatasync.

Reads first try `preadv(RWF_NOWAIT)` on the event loop: a page-cache hit costs no thread hop
(that is most of a hot read workload). Anything that may block — a cache miss, every write,
fdatasync, fallocate — runs on a small dedicated thread pool, so a slow or stalled disk delays
only the commands that touch it, never the event loop that serves the other sessions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from pathlib import Path

from ophiura.block.device import (
    BlockDeviceError,
    DeviceGeometry,
    Extent,
    MediumError,
    NoSpaceError,
    ReadOnlyError,
)
from ophiura.block.io_threads import IoThreads

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_ZERO_CHUNK = 1 << 20
_BLKPBSZGET = 0x127B  # _IO(0x12, 123): a block device's physical sector size
_MAX_PHYSICAL_BLOCK = 64 * 1024  # beyond this st_blksize is a transfer hint (NFS), not a block

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _derive_physical_block_size(fd: int, st: os.stat_result, block_size: int) -> int:
    """What the backing store allocates and writes in: the filesystem block of a file (holes
    are punched, and partial blocks rewritten, in these units), the physical sector of a disk."""
    size = 0
    if stat.S_ISBLK(st.st_mode):
        try:
            raw = fcntl.ioctl(fd, _BLKPBSZGET, b"\0" * 4)
            size = struct.unpack("I", raw)[0]
        except OSError:
            size = 0
    elif stat.S_ISREG(st.st_mode):
        try:
            size = os.fstatvfs(fd).f_frsize
        except OSError:
            size = 0
        size = size or st.st_blksize
    if size < block_size or size > _MAX_PHYSICAL_BLOCK or size & (size - 1):
        return block_size
    return size


def translate_os_error(exc: OSError, what: str) -> BlockDeviceError:
    """Map an OS error to the typed error the SCSI layer turns into sense data."""
    message = f"{what}: {exc.strerror or exc}"
    if exc.errno in _NO_SPACE:
        return NoSpaceError(message, exc.errno)
    if exc.errno in (errno.EROFS, errno.EPERM, errno.EACCES):
        return ReadOnlyError(message, exc.errno)
    return MediumError(message, exc.errno)


class FileBlockDevice(DeviceGeometry):
    """One file, one LUN. The file is created sparse and grown to `size` if needed."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int | None = None,
        block_size: int = 512,
        thin: bool = False,
        read_only: bool = False,
        io_threads: int = 4,
        physical_block_size: int | None = None,
    ) -> None:
        """`physical_block_size` None: derived from the backing file's filesystem (or disk)."""
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two")
        if physical_block_size is not None and (
            physical_block_size < block_size
            or physical_block_size % block_size
            or physical_block_size & (physical_block_size - 1)
        ):
            raise ValueError(
                f"physical block size {physical_block_size} is not a power-of-two multiple "
                f"of {block_size}"
            )
        self.path = Path(path)
        flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT
        self._fd = os.open(self.path, flags | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(self._fd)
            # A block or character device (a real disk, /dev/full in tests) cannot be grown.
            current = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(self._fd, 0, os.SEEK_END)
            if size is None:
                size = current - current % block_size
            if size <= 0 or size % block_size:
                raise ValueError(f"size {size} is not a positive multiple of {block_size}")
            if current < size and not read_only and stat.S_ISREG(st.st_mode):
                os.ftruncate(self._fd, size)  # grows sparse: no blocks allocated
            elif current < size and stat.S_ISREG(st.st_mode):
                raise ValueError(f"{self.path} is {current} bytes, smaller than size {size}")
            if physical_block_size is None:
                physical_block_size = _derive_physical_block_size(self._fd, st, block_size)
        except BaseException:
            os.close(self._fd)
            raise
        self._size = size
        self._block_size = block_size
        self._physical_block_size = physical_block_size
        self._thin = thin
        self._read_only = read_only
        self._pool = IoThreads(io_threads, name=f"io-{self.path.name}")
        self._nowait_reads = hasattr(os, "RWF_NOWAIT")

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise BlockDeviceError(f"range {offset}+{length} outside device of {self._size}")

    async def _off_loop(self, func, *args):  # type: ignore[no-untyped-def]
        return await self._pool.run(func, *args)

    def _read_blocking(self, buf: bytearray, offset: int, done: int) -> None:
        view = memoryview(buf)
        while done < len(buf):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:  # past the end of a short file: the rest reads as zeros
                return
            done += n

    async def read(self, offset: int, length: int) -> bytearray:
        self._check(offset, length)
        buf = bytearray(length)
        done = 0
        try:
            if self._nowait_reads:
                try:
                    done = os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT)
                except BlockingIOError:
                    done = 0
                except OSError as exc:
                    if exc.errno != errno.EOPNOTSUPP:
                        raise
                    self._nowait_reads = False
                if done == length:
                    return buf
            await self._off_loop(self._read_blocking, buf, offset, done)
        except OSError as exc:
            raise translate_os_error(exc, f"read {length} bytes at {offset}") from exc
        return buf

    def _write_blocking(self, data: bytes | bytearray | memoryview, offset: int, fua: bool) -> None:
        view = memoryview(data)
        flags = os.RWF_DSYNC if fua else 0
        done = 0
        while done < len(view):
            done += os.pwritev(self._fd, [view[done:]], offset + done, flags)

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{self.path} is read-only")
        self._check(offset, len(data))
        try:
            await self._off_loop(self._write_blocking, data, offset, fua)
        except OSError as exc:
            raise translate_os_error(exc, f"write {len(data)} bytes at {offset}") from exc

    async def flush(self) -> None:
        if self._read_only:
            return
        try:
            await self._off_loop(os.fdatasync, self._fd)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a special file (e.g. /dev/full): no cache to flush
                return
            raise translate_os_error(exc, "fdatasync") from exc

    def _zero_blocking(self, offset: int, length: int, punch: bool) -> None:
        modes = [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE] if punch else []
        modes.append(FALLOC_FL_ZERO_RANGE)
        for mode in modes:
            try:
                _fallocate(self._fd, mode, offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        zeros = bytes(min(length, _ZERO_CHUNK))  # filesystem without fallocate modes
        end = offset + length
        while offset < end:
            offset += os.pwrite(self._fd, zeros[: end - offset], offset)

    async def discard(self, offset: int, length: int) -> None:
        """Thin: punch a hole (space comes back). Thick: zero the range, keep it allocated."""
        await self._zero(offset, length, punch=self._thin)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._zero(offset, length, punch=False)

    async def _zero(self, offset: int, length: int, punch: bool) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{self.path} is read-only")
        self._check(offset, length)
        if length == 0:
            return
        try:
            await self._off_loop(self._zero_blocking, offset, length, punch)
        except OSError as exc:
            raise translate_os_error(exc, f"zero {length} bytes at {offset}") from exc

    def _extents_blocking(self, offset: int, length: int) -> list[Extent]:
        end = offset + length
        file_end = os.fstat(self._fd).st_size
        bs = self._block_size
        runs: list[Extent] = []
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA) if pos < file_end else end
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                    raise
                data = end
            data = min(end, data - data % bs)
            if data > pos:
                runs.append(Extent(pos, data - pos, False))
                pos = data
                continue
            try:
                hole = os.lseek(self._fd, pos, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                hole = end
            hole = min(end, -(-hole // bs) * bs)
            hole = max(hole, pos + bs)
            runs.append(Extent(pos, hole - pos, True))
            pos = hole
        return runs

    async def extents(self, offset: int, length: int) -> list[Extent]:
        """Mapped and deallocated runs; a thick device reports everything mapped."""
        self._check(offset, length)
        if not self._thin:
            return [Extent(offset, length, True)] if length else []
        try:
            return await self._off_loop(self._extents_blocking, offset, length)
        except OSError as exc:
            raise translate_os_error(exc, "SEEK_DATA/SEEK_HOLE") from exc

    async def close(self) -> None:
        if self._fd < 0:
            return
        self._pool.shutdown()
        os.close(self._fd)
        self._fd = -1
