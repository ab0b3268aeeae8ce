"""One SCSI task on the wire: Data-Out collection (unsolicited, immediate, R2T) and the PDUs
of its completion (Data-In segmentation, phase collapse, residuals, sense). Pure: no sockets.

Data-Out arrives strictly in order (we negotiate DataPDUInOrder=Yes and
DataSequenceInOrder=Yes), so the buffer only ever grows at its end and holds exactly the bytes
received; every Data-Out PDU is checked against the sequence it belongs to: the expected DataSN
(0, 1, 2... per R2T or unsolicited burst) and buffer offset, and no sequence may exceed its
length or the EDTL. Any violation ends the task with CHECK CONDITION (what libiscsi's
iSCSIDataSnInvalid expects) instead of writing misplaced data.
"""

from __future__ import annotations

from ophiura.iscsi.pdu import (
    F_FINAL,
    F_OVERFLOW,
    F_STATUS,
    F_UNDERFLOW,
    NO_TAG,
    PduEncoder,
    sense_segment,
)
from ophiura.scsi.api import Status, TaskAttribute
from ophiura.scsi.sense import encode_sense

SIMPLE = int(TaskAttribute.SIMPLE)
UNTAGGED = int(TaskAttribute.UNTAGGED)


# ABORTED COMMAND sense for iSCSI data-phase errors (RFC 7143 §11.4.7.2 / SPC-4 4B/xx).
SENSE_DATA_PHASE_ERROR = encode_sense(0x0B, 0x4B, 0x00)
SENSE_DATA_OFFSET_ERROR = encode_sense(0x0B, 0x4B, 0x05)
SENSE_TOO_MUCH_WRITE_DATA = encode_sense(0x0B, 0x4B, 0x02)
SENSE_INTERNAL_FAILURE = encode_sense(0x04, 0x44, 0x00)  # HARDWARE ERROR, internal target failure
SENSE_INVALID_FIELD_IN_CDB = encode_sense(0x05, 0x24, 0x00)


class DataOutError(Exception):
    def __init__(self, message: str, sense: bytes = SENSE_DATA_PHASE_ERROR) -> None:
        super().__init__(message)
        self.sense = sense


class R2TState:
    __slots__ = ("datasn", "end", "offset")

    def __init__(self, offset: int, end: int) -> None:
        self.offset = offset
        self.end = end
        self.datasn = 0


def unsolicited_length(
    edtl: int, immediate: int, final: bool, initial_r2t: bool, first_burst: int
) -> int:
    """Bytes a write brings without being asked: its immediate data, plus the unsolicited
    Data-Out that may follow when InitialR2T=No and the command's F bit is clear (§4.2.5.2).
    The target must hold them until the task is delivered; it cannot pace them with R2Ts."""
    if not initial_r2t and not final:
        return min(first_burst, edtl)
    return immediate


class Task:
    __slots__ = (
        "attr",
        "cdb",
        "cmdsn",
        "counted",
        "data",
        "datasn",
        "delivered",
        "edtl",
        "future",
        "immediate",
        "is_read",
        "is_write",
        "itt",
        "lun",
        "lun_raw",
        "r2t_next",
        "r2ts",
        "r2tsn",
        "ready",
        "reserved",
        "unsol_datasn",
        "unsol_end",
        "unsol_held",
        "unsol_open",
        "waiting_budget",
    )

    def __init__(
        self,
        itt: int,
        lun_raw: int,
        lun: int,
        cdb: bytes,
        flags: int,
        edtl: int,
        cmdsn: int,
        immediate: bool,
    ) -> None:
        self.itt = itt
        self.lun_raw = lun_raw
        self.lun = lun
        self.cdb = cdb
        self.attr = flags & 7
        self.is_read = bool(flags & 0x40)
        self.is_write = bool(flags & 0x20)
        self.edtl = edtl
        self.cmdsn = cmdsn
        self.immediate = immediate
        self.counted = False  # holds a slot of the CmdSN window
        self.data: bytearray | bytes | None = None
        self.datasn = 0
        self.delivered = False
        self.future = None
        self.r2t_next = 0
        self.r2tsn = 0
        self.r2ts: dict[int, R2TState] = {}
        self.ready = True
        self.reserved = 0
        self.unsol_datasn = 0
        self.unsol_end = 0
        self.unsol_held = 0  # unsolicited bytes counted against the connection's budget
        self.unsol_open = False
        self.waiting_budget = False

    @property
    def simple(self) -> bool:
        return self.attr == SIMPLE or self.attr == UNTAGGED

    # ---- Data-Out ------------------------------------------------------------------------
    def start_write(
        self, immediate_data: bytes, final: bool, initial_r2t: bool, first_burst: int
    ) -> None:
        """Set up collection for a write; `final` is the command PDU's F bit."""
        edtl = self.edtl
        if len(immediate_data) > edtl or len(immediate_data) > first_burst:
            raise DataOutError("immediate data beyond EDTL/FirstBurstLength")
        self.data = bytearray(immediate_data)
        n = len(immediate_data)
        self.unsol_end = unsolicited_length(edtl, n, final, initial_r2t, first_burst)
        self.unsol_open = n < self.unsol_end
        self.r2t_next = self.unsol_end
        self.ready = len(self.data) >= edtl

    def data_out(self, ttt: int, datasn: int, offset: int, payload: bytes, final: bool) -> bool:
        """Take one Data-Out PDU. Returns True when an R2T sequence just completed."""
        data = self.data
        assert isinstance(data, bytearray)
        if offset != len(data):
            raise DataOutError(
                f"Data-Out offset {offset}, expected {len(data)}", SENSE_DATA_OFFSET_ERROR
            )
        if ttt == NO_TAG:
            if not self.unsol_open:
                raise DataOutError("unsolicited Data-Out not expected")
            if datasn != self.unsol_datasn:
                raise DataOutError(f"DataSN {datasn}, expected {self.unsol_datasn}")
            if offset + len(payload) > self.unsol_end:
                raise DataOutError("unsolicited data beyond FirstBurstLength")
            data += payload
            self.unsol_datasn += 1
            if final:
                if len(data) != self.unsol_end:
                    raise DataOutError("unsolicited burst ended early")
                self.unsol_open = False
            self.ready = len(data) >= self.edtl
            return False
        r2t = self.r2ts.get(ttt)
        if r2t is None:
            raise DataOutError(f"Data-Out for unknown TTT 0x{ttt:08x}")
        if datasn != r2t.datasn:
            raise DataOutError(f"DataSN {datasn}, expected {r2t.datasn}")
        if offset + len(payload) > r2t.end:
            raise DataOutError("Data-Out beyond the R2T's length", SENSE_TOO_MUCH_WRITE_DATA)
        data += payload
        r2t.datasn += 1
        done = len(data) == r2t.end
        if final and not done:
            raise DataOutError("R2T sequence ended early")
        if done:
            del self.r2ts[ttt]
        self.ready = len(data) >= self.edtl
        return done


def build_completion(
    enc: PduEncoder,
    task: Task,
    status: int,
    data_in: bytes | bytearray | memoryview,
    sense: bytes,
    data_out_length: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    mrdsl: int,
    max_burst: int,
) -> list[bytes | bytearray | memoryview]:
    """All PDUs that end a task: Data-In (S bit on the last if we may collapse), else Response."""
    edtl = task.edtl
    n = len(data_in)
    res_flags = 0
    residual = 0
    if task.is_write:
        spdtl = data_out_length
    elif task.is_read:
        spdtl = n
    else:
        spdtl = n or data_out_length
    if spdtl > edtl:
        res_flags, residual = F_OVERFLOW, spdtl - edtl
    elif spdtl < edtl:
        res_flags, residual = F_UNDERFLOW, edtl - spdtl
    if n > edtl:
        n = edtl
    lun_raw = task.lun_raw
    itt = task.itt
    out: list[bytes | bytearray | memoryview] = []
    collapse = not sense and (status == 0 or status == Status.CONDITION_MET)
    if n and (task.is_read or not task.is_write):
        view = memoryview(data_in)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        seg = max(512, min(mrdsl, max_burst))
        offset = 0
        datasn = task.datasn
        while offset < n:
            burst_end = min(n, (offset // max_burst + 1) * max_burst)
            length = min(seg, burst_end - offset)
            end = offset + length
            flags = F_FINAL if end == burst_end else 0
            chunk = view[offset:end] if (offset or end != len(view)) else data_in
            if end == n and collapse:
                out += enc.encode(
                    0x25,
                    flags | F_FINAL | F_STATUS | res_flags,
                    status,
                    lun_raw,
                    itt,
                    NO_TAG,
                    statsn,
                    expcmdsn,
                    maxcmdsn,
                    datasn,
                    offset,
                    residual,
                    data=chunk,
                )
            else:
                out += enc.encode(
                    0x25,
                    flags,
                    0,
                    lun_raw,
                    itt,
                    NO_TAG,
                    0,
                    expcmdsn,
                    maxcmdsn,
                    datasn,
                    offset,
                    0,
                    data=chunk,
                )
            datasn += 1
            offset = end
        task.datasn = datasn
        if collapse:
            return out
    payload = sense_segment(sense) if sense else b""
    out += enc.encode(
        0x21,
        F_FINAL | res_flags,
        status,
        0,
        itt,
        0,
        statsn,
        expcmdsn,
        maxcmdsn,
        task.datasn + task.r2tsn,
        0,
        residual,
        data=payload,
    )
    return out
