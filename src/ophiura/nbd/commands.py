"""NBD transmission commands against a BlockDevice: the command set, kept apart from the socket.

A request comes in as a decoded `Request`, and what goes back is a wire error number (0 on
success) plus, for READ, the data. Range, flag and alignment checks happen here, before the
device is touched, so a backend only ever sees in-range, block-aligned offsets (as the SCSI layer
guarantees too). The device's typed errors map to the errors the spec allows:

    ReadOnlyError -> EPERM    NoSpaceError -> ENOSPC    MediumError, other -> EIO
    out of range  -> EINVAL   (ENOSPC for WRITE / WRITE_ZEROES past the end, per the spec)
    unknown command, unknown or misplaced flag, unaligned write -> EINVAL
"""

from __future__ import annotations

import logging

from ophiura.block.device import (
    BlockDevice,
    BlockDeviceError,
    MediumError,
    NoSpaceError,
    ReadOnlyError,
)
from ophiura.nbd.constants import MAX_REQUEST, Command, CommandFlag, Errno, TransmissionFlag
from ophiura.nbd.protocol import ExportInfo, Request

log = logging.getLogger(__name__)

# Which command flags each supported command accepts; FUA must be accepted everywhere.
# Plain ints: `~` of an IntFlag only complements the bits the enum defines.
ALLOWED_FLAGS: dict[int, int] = {
    Command.READ: int(CommandFlag.FUA),
    Command.WRITE: int(CommandFlag.FUA),
    Command.FLUSH: int(CommandFlag.FUA),
    Command.TRIM: int(CommandFlag.FUA),
    Command.WRITE_ZEROES: int(CommandFlag.FUA | CommandFlag.NO_HOLE),
}
_MODIFIES = frozenset({Command.WRITE, Command.TRIM, Command.WRITE_ZEROES})

Result = tuple[int, bytes | bytearray | memoryview | None]
_OK: Result = (Errno.OK, None)


def transmission_flags(device: BlockDevice) -> TransmissionFlag:
    """What we advertise. CAN_MULTI_CONN is safe: every connection shares one device object,
    whose flush covers writes from all of them (one fdatasync, one replicated barrier)."""
    flags = (
        TransmissionFlag.HAS_FLAGS
        | TransmissionFlag.SEND_FLUSH
        | TransmissionFlag.SEND_FUA
        | TransmissionFlag.SEND_TRIM
        | TransmissionFlag.SEND_WRITE_ZEROES
        | TransmissionFlag.CAN_MULTI_CONN
    )
    if device.read_only:
        flags |= TransmissionFlag.READ_ONLY
    return flags


def export_info(
    name: str, device: BlockDevice, description: str = "", max_request: int = MAX_REQUEST
) -> ExportInfo:
    block = device.block_size
    return ExportInfo(
        name=name,
        size=device.size,
        flags=transmission_flags(device),
        min_block=block,
        preferred_block=max(block, 4096),
        max_block=max_request,
        description=description,
    )


def error_for(exc: BlockDeviceError) -> Errno:
    if isinstance(exc, ReadOnlyError):
        return Errno.EPERM
    if isinstance(exc, NoSpaceError):
        return Errno.ENOSPC
    if isinstance(exc, MediumError):
        return Errno.EIO
    return Errno.EIO


async def execute(device: BlockDevice, req: Request, max_request: int = MAX_REQUEST) -> Result:
    """Run one request; never raises for device trouble (the reply carries the error)."""
    command = req.command
    allowed = ALLOWED_FLAGS.get(command)
    if allowed is None or req.flags & ~allowed:
        return Errno.EINVAL, None
    if command in _MODIFIES and device.read_only:
        return Errno.EPERM, None
    try:
        if command == Command.READ:
            return await _read(device, req, max_request)
        if command == Command.WRITE:
            return await _write(device, req)
        if command == Command.FLUSH:
            await device.flush()
            return _OK
        if command == Command.TRIM:
            return await _trim(device, req)
        return await _write_zeroes(device, req)
    except BlockDeviceError as exc:
        error = error_for(exc)
        log.warning(
            "%s %d+%d failed (%s): %s",
            Command(command).name,
            req.offset,
            req.length,
            error.name,
            exc,
        )
        return error, None


async def _read(device: BlockDevice, req: Request, max_request: int) -> Result:
    offset, length = req.offset, req.length
    if length > max_request or offset + length > device.size:
        return Errno.EINVAL, None
    if length == 0:
        return Errno.OK, b""
    block = device.block_size
    start = offset - offset % block
    stop = -(-(offset + length) // block) * block
    data = await device.read(start, stop - start)
    if start == offset and stop - start == length:
        return Errno.OK, data
    # An unaligned read costs nothing extra to serve: read the covering blocks and slice.
    return Errno.OK, memoryview(data)[offset - start : offset - start + length]


def _aligned(device: BlockDevice, offset: int, length: int) -> bool:
    block = device.block_size
    return offset % block == 0 and length % block == 0


async def _write(device: BlockDevice, req: Request) -> Result:
    assert req.data is not None
    if req.offset + req.length > device.size:
        return Errno.ENOSPC, None
    if not _aligned(device, req.offset, req.length):
        return Errno.EINVAL, None  # no read-modify-write: clients honour NBD_INFO_BLOCK_SIZE
    if req.length:
        await device.write(req.offset, req.data, fua=bool(req.flags & CommandFlag.FUA))
    return _OK


async def _trim(device: BlockDevice, req: Request) -> Result:
    offset, length = req.offset, req.length
    if offset + length > device.size:
        return Errno.EINVAL, None
    # TRIM is a hint: discard the whole blocks inside the range, leave partial ones alone.
    block = device.block_size
    start = -(-offset // block) * block
    stop = (offset + length) // block * block
    if stop > start:
        await device.discard(start, stop - start)
        if req.flags & CommandFlag.FUA:
            await device.flush()
    return _OK


async def _write_zeroes(device: BlockDevice, req: Request) -> Result:
    offset, length = req.offset, req.length
    if offset + length > device.size:
        return Errno.ENOSPC, None
    if not _aligned(device, offset, length):
        return Errno.EINVAL, None
    if length:
        if device.thin and not req.flags & CommandFlag.NO_HOLE:
            await device.discard(offset, length)  # a thin discard punches a hole: reads zeros
        else:
            await device.write_zeroes(offset, length)
        if req.flags & CommandFlag.FUA:
            await device.flush()
    return _OK
