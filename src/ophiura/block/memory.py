"""A RAM-backed BlockDevice: for tests, demos and the read path of nothing else."""

from __future__ import annotations

from ophiura.block.device import BlockDeviceError, DeviceGeometry, Extent, ReadOnlyError


class MemoryBlockDevice(DeviceGeometry):
    """Sparse in memory: only written blocks take space, so a 1 TiB test LUN is free."""

    def __init__(
        self,
        size: int,
        block_size: int = 512,
        thin: bool = False,
        read_only: bool = False,
        physical_block_size: int | None = None,
    ) -> None:
        """`physical_block_size` (default block_size) only shapes what the SCSI layer reports:
        it lets tests model a 512e disk (512-byte logical blocks on 4096-byte physical ones)."""
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two")
        pbs = block_size if physical_block_size is None else physical_block_size
        if pbs < block_size or pbs % block_size or pbs & (pbs - 1):
            raise ValueError(f"physical block size {pbs} is not a power-of-two multiple")
        if size <= 0 or size % block_size:
            raise ValueError(f"size {size} is not a positive multiple of {block_size}")
        self._block_size = block_size
        self._physical_block_size = pbs
        self._size = size
        self._thin = thin
        self._read_only = read_only
        self._blocks: dict[int, bytes] = {}
        self._zero = bytes(block_size)
        self.flushes = 0  # observable by tests: SYNCHRONIZE CACHE really reached us

    def _check(self, offset: int, length: int) -> None:
        bs = self._block_size
        if offset < 0 or length < 0 or offset % bs or length % bs or offset + length > self._size:
            raise BlockDeviceError(f"bad range offset={offset} length={length} size={self._size}")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        bs = self._block_size
        first = offset // bs
        get = self._blocks.get
        zero = self._zero
        return b"".join(get(first + i, zero) for i in range(length // bs))

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> None:
        if self._read_only:
            raise ReadOnlyError("device is read-only")
        self._check(offset, len(data))
        bs = self._block_size
        first = offset // bs
        view = memoryview(data)
        for i in range(len(data) // bs):
            self._blocks[first + i] = bytes(view[i * bs : (i + 1) * bs])

    async def flush(self) -> None:
        self.flushes += 1

    async def discard(self, offset: int, length: int) -> None:
        if self._read_only:
            raise ReadOnlyError("device is read-only")
        self._check(offset, length)
        bs = self._block_size
        first, end = offset // bs, (offset + length) // bs
        if end - first > len(self._blocks):  # a huge range: walk what is stored, not the range
            for lba in [b for b in self._blocks if first <= b < end]:
                del self._blocks[lba]
            return
        for lba in range(first, end):
            self._blocks.pop(lba, None)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.discard(offset, length)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        self._check(offset, length)
        bs = self._block_size
        runs: list[Extent] = []
        for lba in range(offset // bs, (offset + length) // bs):
            mapped = lba in self._blocks or not self._thin
            if runs and runs[-1].mapped == mapped:
                last = runs[-1]
                runs[-1] = Extent(last.offset, last.length + bs, mapped)
            else:
                runs.append(Extent(lba * bs, bs, mapped))
        return runs

    async def close(self) -> None:
        self._blocks.clear()
