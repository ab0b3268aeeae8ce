"""Build CDBs and parameter lists for the tests, so a test reads like the command it sends."""

from __future__ import annotations

from ophiura.scsi.constants import Op


def _u(value: int, size: int) -> bytes:
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size)


def tur() -> bytes:
    return bytes(6)


def request_sense(alloc: int = 252, desc: bool = False) -> bytes:
    return bytes((Op.REQUEST_SENSE, int(desc), 0, 0, alloc, 0))


def inquiry(alloc: int = 255, evpd: bool = False, page: int = 0, byte1: int = 0) -> bytes:
    return bytes((Op.INQUIRY, int(evpd) | byte1, page)) + _u(alloc, 2) + b"\x00"


def report_luns(alloc: int = 4096, select: int = 0) -> bytes:
    return bytes((Op.REPORT_LUNS, 0, select, 0, 0, 0)) + _u(alloc, 4) + bytes(2)


def read_capacity10() -> bytes:
    return bytes((Op.READ_CAPACITY_10,)) + bytes(9)


def read_capacity16(alloc: int = 32) -> bytes:
    return bytes((Op.SERVICE_ACTION_IN_16, 0x10)) + bytes(8) + _u(alloc, 4) + bytes(2)


def get_lba_status(lba: int, alloc: int = 24) -> bytes:
    return bytes((Op.SERVICE_ACTION_IN_16, 0x12)) + _u(lba, 8) + _u(alloc, 4) + bytes(2)


def rw(size: int, lba: int, blocks: int, write: bool = False, flags: int = 0) -> bytes:
    """READ/WRITE (6, 10, 12, 16)."""
    if size == 6:
        op = Op.WRITE_6 if write else Op.READ_6
        return bytes((op,)) + _u(lba, 3) + bytes((blocks & 0xFF, 0))
    if size == 10:
        op = Op.WRITE_10 if write else Op.READ_10
        return bytes((op, flags)) + _u(lba, 4) + b"\x00" + _u(blocks, 2) + b"\x00"
    if size == 12:
        op = Op.WRITE_12 if write else Op.READ_12
        return bytes((op, flags)) + _u(lba, 4) + _u(blocks, 4) + bytes(2)
    op = Op.WRITE_16 if write else Op.READ_16
    return bytes((op, flags)) + _u(lba, 8) + _u(blocks, 4) + bytes(2)


def read(size: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return rw(size, lba, blocks, False, flags)


def write(size: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return rw(size, lba, blocks, True, flags)


def lba_cdb(op: int, size: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    """Any 10/12/16-byte CDB with the READ(10/12/16) layout (VERIFY, WRITE AND VERIFY, ...)."""
    if size == 10:
        return bytes((op, flags)) + _u(lba, 4) + b"\x00" + _u(blocks, 2) + b"\x00"
    if size == 12:
        return bytes((op, flags)) + _u(lba, 4) + _u(blocks, 4) + bytes(2)
    return bytes((op, flags)) + _u(lba, 8) + _u(blocks, 4) + bytes(2)


def verify(size: int, lba: int, blocks: int, bytchk: int = 1, flags: int = 0) -> bytes:
    op = {10: Op.VERIFY_10, 12: Op.VERIFY_12, 16: Op.VERIFY_16}[size]
    return lba_cdb(op, size, lba, blocks, flags | (bytchk << 1))


def write_verify(size: int, lba: int, blocks: int, bytchk: int = 1, flags: int = 0) -> bytes:
    op = {10: Op.WRITE_VERIFY_10, 12: Op.WRITE_VERIFY_12, 16: Op.WRITE_VERIFY_16}[size]
    return lba_cdb(op, size, lba, blocks, flags | (bytchk << 1))


def prefetch(size: int, lba: int, blocks: int, immed: bool = False) -> bytes:
    op = Op.PRE_FETCH_10 if size == 10 else Op.PRE_FETCH_16
    return lba_cdb(op, size, lba, blocks, 0x02 if immed else 0)


def sync_cache(size: int, lba: int = 0, blocks: int = 0, immed: bool = False) -> bytes:
    op = Op.SYNCHRONIZE_CACHE_10 if size == 10 else Op.SYNCHRONIZE_CACHE_16
    return lba_cdb(op, size, lba, blocks, 0x02 if immed else 0)


def orwrite(lba: int, blocks: int, flags: int = 0) -> bytes:
    return lba_cdb(Op.ORWRITE_16, 16, lba, blocks, flags)


def compare_and_write(lba: int, blocks: int, flags: int = 0) -> bytes:
    return bytes((Op.COMPARE_AND_WRITE, flags)) + _u(lba, 8) + bytes(3) + bytes((blocks, 0, 0))


def write_same(
    size: int, lba: int, blocks: int, unmap: bool = False, anchor: bool = False, ndob: bool = False
) -> bytes:
    flags = (0x08 if unmap else 0) | (0x10 if anchor else 0) | (0x01 if ndob else 0)
    op = Op.WRITE_SAME_10 if size == 10 else Op.WRITE_SAME_16
    return lba_cdb(op, size, lba, blocks, flags)


def write_atomic16(lba: int, blocks: int, flags: int = 0, boundary: int = 0) -> bytes:
    cdb = bytes((Op.WRITE_ATOMIC_16, flags)) + _u(lba, 8) + _u(boundary, 2) + _u(blocks, 2)
    return cdb + bytes(2)


def unmap(length: int, anchor: bool = False) -> bytes:
    return bytes((Op.UNMAP, int(anchor), 0, 0, 0, 0, 0)) + _u(length, 2) + b"\x00"


def unmap_params(ranges: list[tuple[int, int]]) -> bytes:
    descs = b"".join(_u(lba, 8) + _u(n, 4) + bytes(4) for lba, n in ranges)
    return _u(len(descs) + 6, 2) + _u(len(descs), 2) + bytes(4) + descs


def mode_sense6(page: int = 0x3F, pc: int = 0, alloc: int = 255, dbd: bool = False, sub: int = 0):
    return bytes((Op.MODE_SENSE_6, 0x08 if dbd else 0, (pc << 6) | page, sub, alloc, 0))


def mode_sense10(page: int = 0x3F, pc: int = 0, alloc: int = 1024, llbaa: bool = False) -> bytes:
    return (
        bytes((Op.MODE_SENSE_10, 0x10 if llbaa else 0, (pc << 6) | page, 0, 0, 0, 0))
        + _u(alloc, 2)
        + b"\x00"
    )


def mode_select6(length: int, save: bool = False) -> bytes:
    return bytes((Op.MODE_SELECT_6, 0x10 | int(save), 0, 0, length, 0))


def mode_select10(length: int, save: bool = False) -> bytes:
    return bytes((Op.MODE_SELECT_10, 0x10 | int(save))) + bytes(5) + _u(length, 2) + b"\x00"


def mode_select6_params(page: bytes) -> bytes:
    return bytes(4) + page


def reserve(size: int = 6, byte1: int = 0) -> bytes:
    if size == 6:
        return bytes((Op.RESERVE_6, byte1, 0, 0, 0, 0))
    return bytes((Op.RESERVE_10, byte1)) + bytes(8)


def release(size: int = 6, byte1: int = 0) -> bytes:
    if size == 6:
        return bytes((Op.RELEASE_6, byte1, 0, 0, 0, 0))
    return bytes((Op.RELEASE_10, byte1)) + bytes(8)


def pr_in(sa: int, alloc: int = 8192) -> bytes:
    return bytes((Op.PERSISTENT_RESERVE_IN, sa)) + bytes(5) + _u(alloc, 2) + b"\x00"


def pr_out(sa: int, pr_type: int = 0, length: int = 24, scope: int = 0) -> bytes:
    return (
        bytes((Op.PERSISTENT_RESERVE_OUT, sa, (scope << 4) | pr_type))
        + bytes(2)
        + _u(length, 4)
        + b"\x00"
    )


def pr_params(
    key: int = 0, sa_key: int = 0, aptpl: bool = False, all_tg_pt: bool = False, spec_i_pt=False
) -> bytes:
    flags = (0x01 if aptpl else 0) | (0x04 if all_tg_pt else 0) | (0x08 if spec_i_pt else 0)
    return _u(key, 8) + _u(sa_key, 8) + bytes(4) + bytes((flags, 0, 0, 0))


def iscsi_tid(port: str) -> bytes:
    raw = port.encode() + b"\x00"
    raw += b"\x00" * (-len(raw) % 4)
    return bytes((0x45, 0)) + _u(len(raw), 2) + raw


def register_and_move_params(
    key: int, sa_key: int, rtpi: int, port: str, unreg: bool = False, aptpl: bool = False
) -> bytes:
    tid = iscsi_tid(port)
    flags = (0x02 if unreg else 0) | (0x01 if aptpl else 0)
    return _u(key, 8) + _u(sa_key, 8) + bytes((0, flags)) + _u(rtpi, 2) + _u(len(tid), 4) + tid


def report_opcodes(option: int = 0, opcode: int = 0, sa: int = 0, rctd: bool = False, alloc=65535):
    return (
        bytes((Op.MAINTENANCE_IN, 0x0C, (0x80 if rctd else 0) | option, opcode))
        + _u(sa, 2)
        + _u(alloc, 4)
        + bytes(2)
    )


def report_tmfs(alloc: int = 4) -> bytes:
    return bytes((Op.MAINTENANCE_IN, 0x0D, 0, 0, 0, 0)) + _u(alloc, 4) + bytes(2)


def start_stop(start: bool, power_condition: int = 0, loej: bool = False) -> bytes:
    return bytes(
        (Op.START_STOP_UNIT, 0, 0, 0, (power_condition << 4) | (2 if loej else 0) | start, 0)
    )


def prevent_allow(prevent: int) -> bytes:
    return bytes((Op.PREVENT_ALLOW, 0, 0, 0, prevent, 0))


def read_defect_data10(alloc: int = 32) -> bytes:
    return bytes((Op.READ_DEFECT_DATA_10, 0, 0x18)) + bytes(4) + _u(alloc, 2) + b"\x00"


def read_defect_data12(alloc: int = 32) -> bytes:
    return bytes((Op.READ_DEFECT_DATA_12, 0x18)) + bytes(4) + _u(alloc, 4) + bytes(2)
