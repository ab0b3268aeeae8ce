"""A small asyncio iSCSI initiator: tests, `ophiura pr`, and the cluster's reservation fencing.

    ini = await IscsiInitiator.connect("127.0.0.1", 3260, "iqn...:disk0", "iqn...:node1")
    await ini.write(0, b"x" * 512); data = await ini.read(0, 1); await ini.logout()

One connection, ErrorRecoveryLevel 0. Commands are tagged and may run concurrently; the CmdSN
window the target advertises is respected; write data goes as immediate data, unsolicited
Data-Out and R2T-solicited Data-Out as negotiated; Data-In is reassembled by buffer offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from ophiura.iscsi import chap as chap_mod
from ophiura.iscsi import pdu as P
from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.session import sn_diff
from ophiura.iscsi.text import SessionParams, apply_response, encode_text, parse_text
from ophiura.iscsi.url import IscsiUrl, parse_url
from ophiura.scsi.api import TmfFunction, TmfResult

log = logging.getLogger(__name__)
__all__ = [
    "IscsiError",
    "IscsiInitiator",
    "IscsiUrl",
    "LoginFailed",
    "Rejected",
    "ScsiCommandError",
    "ScsiResult",
    "parse_url",
]
NO_TAG = P.NO_TAG
DEFAULT_INITIATOR = "iqn.2025-01.org.ophiura:initiator"
_STATUS_OPS = frozenset({0x21, 0x22, 0x24, 0x26, 0x3F})


class IscsiError(Exception):
    """Transport-level failure (connection lost, protocol violation, timeout)."""


class LoginFailed(IscsiError):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"login failed: status 0x{status:04x} {message}".strip())
        self.status = status


class Rejected(IscsiError):
    def __init__(self, reason: int) -> None:
        super().__init__(f"PDU rejected by target, reason 0x{reason:02x}")
        self.reason = reason


@dataclass
class ScsiResult:
    status: int
    data: bytes = b""
    sense: bytes = b""
    residual: int = 0
    overflow: bool = False
    underflow: bool = False
    response: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 0 and self.response == 0

    @property
    def sense_key(self) -> int | None:
        s = self.sense
        if len(s) >= 3 and (s[0] & 0x7F) in (0x70, 0x71):
            return s[2] & 0x0F
        if len(s) >= 2 and (s[0] & 0x7F) in (0x72, 0x73):
            return s[1] & 0x0F
        return None

    @property
    def asc_ascq(self) -> tuple[int, int] | None:
        s = self.sense
        if len(s) >= 14 and (s[0] & 0x7F) in (0x70, 0x71):
            return s[12], s[13]
        if len(s) >= 4 and (s[0] & 0x7F) in (0x72, 0x73):
            return s[2], s[3]
        return None


class ScsiCommandError(IscsiError):
    def __init__(self, what: str, result: ScsiResult) -> None:
        super().__init__(
            f"{what}: status 0x{result.status:02x} sense key {result.sense_key} "
            f"asc/ascq {result.asc_ascq}"
        )
        self.result = result


class _Pending:
    __slots__ = ("buf", "cmdsn", "data_out", "fut", "itt", "lun_raw", "read_length")

    def __init__(self, itt: int, fut: asyncio.Future[Any]) -> None:
        self.itt = itt
        self.fut = fut
        self.buf: bytearray | None = None
        self.data_out = b""
        self.cmdsn = 0
        self.lun_raw = 0
        self.read_length = 0


class IscsiInitiator:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        initiator_name: str,
        target: str | None,
        isid: int,
        timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.initiator_name = initiator_name
        self.target = target
        self.isid = isid
        self.timeout = timeout
        self.tsih = 0
        self.params = SessionParams()
        self._itt = secrets.randbelow(0x7FFFFFFF)
        self.cmdsn = 0
        self.expcmdsn = 0
        self.maxcmdsn = 0
        self.expstatsn = 0
        self._decoder = P.PduDecoder("initiator", 1 << 24)
        self._enc = P.PduEncoder()
        self._pending: dict[int, _Pending] = {}
        self._window_open = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._closed_exc: BaseException | None = None
        self.target_pings = 0

    # ---- construction --------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        target_iqn: str | None,
        initiator_name: str = DEFAULT_INITIATOR,
        *,
        isid: int | None = None,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        header_digest: bool = False,
        data_digest: bool = False,
        max_recv_data_segment_length: int = 262144,
        immediate_data: bool = True,
        initial_r2t: bool = False,
        first_burst_length: int = 65536,
        max_burst_length: int = 262144,
        timeout: float = 10.0,
    ) -> IscsiInitiator:
        """Log in (to a normal session, or a discovery session when target_iqn is None)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        if isid is None:
            isid = (0x80 << 40) | secrets.randbits(24)
        ini = cls(reader, writer, initiator_name, target_iqn, isid, timeout)
        try:
            offer = {
                "HeaderDigest": "CRC32C,None" if header_digest else "None",
                "DataDigest": "CRC32C,None" if data_digest else "None",
                "MaxRecvDataSegmentLength": str(max_recv_data_segment_length),
            }
            if target_iqn is not None:
                offer.update(
                    {
                        "InitialR2T": "Yes" if initial_r2t else "No",
                        "ImmediateData": "Yes" if immediate_data else "No",
                        "MaxBurstLength": str(max_burst_length),
                        "FirstBurstLength": str(first_burst_length),
                        "MaxOutstandingR2T": "1",
                        "MaxConnections": "1",
                        "ErrorRecoveryLevel": "0",
                        "DataPDUInOrder": "Yes",
                        "DataSequenceInOrder": "Yes",
                    }
                )
            ini.params.initiator_mrdsl = max_recv_data_segment_length
            await asyncio.wait_for(ini._login(offer, chap, mutual), timeout)
        except BaseException:
            writer.close()
            raise
        ini._reader_task = asyncio.get_running_loop().create_task(ini._read_loop())
        return ini

    @classmethod
    async def from_url(
        cls, url: str, initiator_name: str = DEFAULT_INITIATOR, **kw: Any
    ) -> tuple[IscsiInitiator, int]:
        u = parse_url(url)
        if u.user is not None and "chap" not in kw:
            kw["chap"] = (u.user, u.password or "")
        return await cls.connect(u.host, u.port, u.target, initiator_name, **kw), u.lun

    @classmethod
    async def discover(
        cls, host: str, port: int, initiator_name: str = DEFAULT_INITIATOR, **kw: Any
    ) -> list[tuple[str, str]]:
        """SendTargets=All: [(target name, address), ...]."""
        ini = await cls.connect(host, port, None, initiator_name, **kw)
        try:
            pairs = await ini.text_request({"SendTargets": "All"})
        finally:
            await ini.logout()
        out: list[tuple[str, str]] = []
        name = None
        for k, v in pairs:
            if k == "TargetName":
                name = v
            elif k == "TargetAddress" and name is not None:
                out.append((name, v))
        return out

    # ---- login ---------------------------------------------------------------------------
    async def _login_pdu(self, flags: int, pairs: list[tuple[str, str]]) -> tuple[P.Pdu, dict]:
        itt = self._itt
        self._writer.writelines(
            self._enc.encode(
                0x43,
                flags,
                0,
                (self.isid << 16) | self.tsih,
                itt,
                0,
                self.cmdsn,
                self.expstatsn,
                data=encode_text(pairs),
            )
        )
        rsp = await self._read_pdu()
        if rsp.opcode != P.Opcode.LOGIN_RESPONSE:
            raise IscsiError(f"expected a Login Response, got {rsp!r}")
        status = rsp.w36 >> 16
        if status:
            raise LoginFailed(status)
        self.tsih = rsp.tsih
        self.expstatsn = (rsp.statsn + 1) & 0xFFFFFFFF
        self.expcmdsn, self.maxcmdsn = rsp.expcmdsn, rsp.maxcmdsn
        keys = dict(parse_text(rsp.data))
        for k, v in keys.items():
            if v == "Reject" and k not in ("X-ignore",):
                log.warning("target rejected %s", k)
        return rsp, keys

    async def _login(
        self,
        offer: dict[str, str],
        chap: tuple[str, str] | None,
        mutual: tuple[str, str] | None,
    ) -> None:
        self.cmdsn = secrets.randbelow(0xFFFFFFFF)
        ident = [("InitiatorName", self.initiator_name)]
        if self.target is None:
            ident.append(("SessionType", "Discovery"))
        else:
            ident += [("TargetName", self.target), ("SessionType", "Normal")]
        if chap is not None:
            rsp, keys = await self._login_pdu(0x81, [*ident, ("AuthMethod", "CHAP,None")])
            if keys.get("AuthMethod") == "CHAP":
                rsp, keys = await self._login_pdu(0x01, [("CHAP_A", "5")])
                if keys.get("CHAP_A") != "5":
                    raise IscsiError(f"target chose CHAP_A={keys.get('CHAP_A')}")
                ident_no = int(keys["CHAP_I"])
                challenge = chap_mod.decode_binary(keys["CHAP_C"])
                answer = [
                    ("CHAP_N", chap[0]),
                    (
                        "CHAP_R",
                        chap_mod.encode_hex(chap_mod.chap_response(ident_no, chap[1], challenge)),
                    ),
                ]
                my_id, my_challenge = chap_mod.new_challenge()
                if mutual is not None:
                    answer += [
                        ("CHAP_I", str(my_id)),
                        ("CHAP_C", chap_mod.encode_hex(my_challenge)),
                    ]
                rsp, keys = await self._login_pdu(0x81, answer)
                if mutual is not None:
                    got = keys.get("CHAP_R")
                    if (
                        keys.get("CHAP_N") != mutual[0]
                        or got is None
                        or not chap_mod.verify(
                            my_id, mutual[1], my_challenge, chap_mod.decode_binary(got)
                        )
                    ):
                        raise LoginFailed(0x0201, "target failed mutual CHAP")
            while not rsp.flags & 0x80:
                rsp, keys = await self._login_pdu(0x81, [])
            ident = []
        pairs = [*ident, *offer.items()]
        while True:
            rsp, keys = await self._login_pdu(0x87, pairs)
            apply_response(self.params, list(keys.items()))
            if rsp.flags & 0x80 and rsp.flags & 3 == 3:
                break
            pairs = []
        p = self.params
        hd, dd = p.header_digest == "CRC32C", p.data_digest == "CRC32C"
        self._enc = P.PduEncoder(hd, dd)
        self._decoder.header_digest, self._decoder.data_digest = hd, dd
        self._decoder.max_data_segment = max(p.initiator_mrdsl, 8192)
        self._window_open.set()

    async def _read_pdu(self) -> P.Pdu:
        while True:
            pdu = self._decoder.next_pdu()
            if pdu is not None:
                return pdu
            chunk = await self._reader.read(262144)
            if not chunk:
                raise IscsiError("connection closed by target")
            self._decoder.feed(chunk)

    # ---- full feature phase --------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                pdu = await self._read_pdu()
                self._handle(pdu)
        except asyncio.CancelledError:
            self._fail_all(IscsiError("initiator closed"))
            raise
        except (P.PduError, IscsiError, OSError) as exc:
            self._fail_all(exc if isinstance(exc, IscsiError) else IscsiError(str(exc)))

    def _fail_all(self, exc: BaseException) -> None:
        self._closed_exc = exc
        for p in list(self._pending.values()):
            if not p.fut.done():
                p.fut.set_exception(exc)
        self._pending.clear()
        self._window_open.set()

    def _serials(self, pdu: P.Pdu) -> None:
        if sn_diff(pdu.maxcmdsn, self.maxcmdsn) > 0:
            self.maxcmdsn = pdu.maxcmdsn
        if sn_diff(pdu.expcmdsn, self.expcmdsn) > 0:
            self.expcmdsn = pdu.expcmdsn
        if sn_diff(self.cmdsn, self.maxcmdsn) <= 0:
            self._window_open.set()

    def _handle(self, pdu: P.Pdu) -> None:
        op = pdu.opcode
        if (
            op in _STATUS_OPS
            or (op == 0x25 and pdu.flags & P.F_STATUS)
            or (op == 0x20 and pdu.itt != NO_TAG)
        ):
            self.expstatsn = (pdu.statsn + 1) & 0xFFFFFFFF
        self._serials(pdu)
        if op == 0x20 and pdu.itt == NO_TAG:
            self.target_pings += 1
            if pdu.ttt != NO_TAG:
                self._send(0x40, 0x80, 0, pdu.lun_raw, NO_TAG, pdu.ttt, self.cmdsn)
            return
        if op == 0x3F:
            bad = pdu.data[:48]
            itt = struct.unpack(">I", bad[16:20])[0] if len(bad) >= 20 else NO_TAG
            p = self._pending.pop(itt, None)
            if p is not None and not p.fut.done():
                p.fut.set_exception(Rejected(pdu.b2 >> 8))
            return
        if op == 0x32:
            log.info("async message event %d", pdu.w36 >> 24)
            return
        p = self._pending.get(pdu.itt)
        if p is None:
            return
        if op == 0x25:
            if p.buf is None:
                p.buf = bytearray()
            off = pdu.w40
            end = off + len(pdu.data)
            if len(p.buf) < end:
                p.buf.extend(bytes(end - len(p.buf)))
            p.buf[off:end] = pdu.data
            if pdu.flags & P.F_STATUS:
                self._done(
                    p,
                    ScsiResult(
                        pdu.b2 & 0xFF,
                        bytes(p.buf),
                        b"",
                        pdu.w44,
                        bool(pdu.flags & P.F_OVERFLOW),
                        bool(pdu.flags & P.F_UNDERFLOW),
                    ),
                )
            return
        if op == 0x21:
            sense = b""
            if len(pdu.data) >= 2:
                n = struct.unpack(">H", pdu.data[:2])[0]
                sense = bytes(pdu.data[2 : 2 + n])
            data = bytes(p.buf) if p.buf is not None else b""
            self._done(
                p,
                ScsiResult(
                    pdu.b2 & 0xFF,
                    data,
                    sense,
                    pdu.w44,
                    bool(pdu.flags & P.F_OVERFLOW),
                    bool(pdu.flags & P.F_UNDERFLOW),
                    pdu.b2 >> 8,
                ),
            )
            return
        if op == 0x31:
            self._send_data_out(p, pdu.ttt, pdu.w40, pdu.w44)
            return
        self._done(p, pdu)

    def _done(self, p: _Pending, value: Any) -> None:
        self._pending.pop(p.itt, None)
        if not p.fut.done():
            p.fut.set_result(value)

    def _send(
        self,
        b0: int,
        flags: int,
        b2: int,
        lun_raw: int,
        itt: int,
        w20: int = 0,
        w24: int = 0,
        w32: int = 0,
        w36: int = 0,
        w40: int = 0,
        w44: int = 0,
        data: bytes | memoryview = b"",
        cdb: bytes | None = None,
    ) -> None:
        if self._closed_exc is not None:
            raise IscsiError(f"connection is down: {self._closed_exc}")
        self._writer.writelines(
            self._enc.encode(
                b0,
                flags,
                b2,
                lun_raw,
                itt,
                w20,
                w24,
                self.expstatsn,
                w32,
                w36,
                w40,
                w44,
                data=data,
                cdb=cdb,
            )
        )

    def _send_data_out(self, p: _Pending, ttt: int, offset: int, length: int) -> None:
        data = memoryview(p.data_out)
        seg = max(512, self.params.target_mrdsl)
        end = min(offset + length, len(data))
        datasn = 0
        while offset < end:
            n = min(seg, end - offset)
            final = 0x80 if offset + n >= end else 0
            self._send(
                0x05,
                final,
                0,
                p.lun_raw,
                p.itt,
                ttt,
                0,
                0,
                datasn,
                offset,
                data=data[offset : offset + n],
            )
            offset += n
            datasn += 1

    def _new_itt(self) -> int:
        self._itt = (self._itt + 1) & 0x7FFFFFFF
        return self._itt

    async def _take_cmdsn(self, immediate: bool) -> int:
        if immediate:
            return self.cmdsn
        while sn_diff(self.cmdsn, self.maxcmdsn) > 0:
            if self._closed_exc is not None:
                raise IscsiError(f"connection is down: {self._closed_exc}")
            self._window_open.clear()
            await self._window_open.wait()
        sn = self.cmdsn
        self.cmdsn = (sn + 1) & 0xFFFFFFFF
        return sn

    async def start_scsi(
        self,
        lun: int,
        cdb: bytes,
        data_out: bytes = b"",
        read_length: int = 0,
        attr: int = 1,
        immediate: bool = False,
    ) -> _Pending:
        """Send a command; await `pending.fut` for its ScsiResult (lets tests abort it)."""
        if len(cdb) > 16:
            raise ValueError("CDBs longer than 16 bytes need an AHS; not supported")
        p = _Pending(self._new_itt(), asyncio.get_running_loop().create_future())
        p.lun_raw = P.encode_lun(lun)
        p.data_out = data_out
        p.read_length = read_length
        cmdsn = await self._take_cmdsn(immediate)
        p.cmdsn = cmdsn
        self._pending[p.itt] = p
        edtl = len(data_out) if data_out else read_length
        flags = 0x80 | (attr & 7)
        if read_length:
            flags |= 0x40
        if data_out:
            flags |= 0x20
        prm = self.params
        immediate_data = b""
        unsolicited = 0
        if data_out:
            burst = min(prm.first_burst, len(data_out))
            if prm.immediate_data:
                immediate_data = data_out[: min(burst, prm.target_mrdsl)]
            if not prm.initial_r2t and len(immediate_data) < burst:
                unsolicited = burst
                flags &= ~0x80
        self._send(
            0x41 if immediate else 0x01,
            flags,
            0,
            p.lun_raw,
            p.itt,
            edtl,
            cmdsn,
            data=immediate_data,
            cdb=cdb,
        )
        if unsolicited:
            self._send_data_out(p, NO_TAG, len(immediate_data), unsolicited - len(immediate_data))
        return p

    async def scsi(
        self,
        lun: int,
        cdb: bytes,
        data_out: bytes = b"",
        read_length: int = 0,
        attr: int = 1,
        timeout: float | None = None,
    ) -> ScsiResult:
        p = await self.start_scsi(lun, cdb, data_out, read_length, attr)
        return await asyncio.wait_for(p.fut, timeout or self.timeout)

    async def _request(
        self,
        b0: int,
        flags: int,
        lun_raw: int = 0,
        w20: int = NO_TAG,
        w32: int = 0,
        w36: int = 0,
        data: bytes = b"",
        timeout: float | None = None,
    ) -> P.Pdu:
        immediate = bool(b0 & 0x40)
        itt = self._new_itt()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        p = _Pending(itt, fut)
        cmdsn = await self._take_cmdsn(immediate)
        self._pending[itt] = p
        self._send(b0, flags, 0, lun_raw, itt, w20, cmdsn, w32, w36, data=data)
        return await asyncio.wait_for(fut, timeout or self.timeout)

    async def text_request(self, pairs: dict[str, str]) -> list[tuple[str, str]]:
        body = b""
        rsp = await self._request(0x44, 0x80, data=encode_text(pairs))
        body += rsp.data
        while rsp.flags & P.F_TEXT_CONTINUE:
            rsp = await self._request(0x44, 0x80, w20=rsp.ttt)
            body += rsp.data
        return parse_text(body, allow_duplicates=True)

    async def nop(self, data: bytes = b"") -> bytes:
        rsp = await self._request(0x40, 0x80, data=data)
        return bytes(rsp.data)

    async def task_management(
        self, function: TmfFunction, lun: int = 0, referenced_itt: int = NO_TAG, ref_cmdsn: int = 0
    ) -> TmfResult:
        rsp = await self._request(
            0x42, 0x80 | int(function), P.encode_lun(lun), w20=referenced_itt, w32=ref_cmdsn
        )
        return TmfResult(rsp.b2 >> 8)

    async def abort_task(self, pending: _Pending, lun: int = 0) -> TmfResult:
        return await self.task_management(TmfFunction.ABORT_TASK, lun, pending.itt, pending.cmdsn)

    async def lun_reset(self, lun: int = 0) -> TmfResult:
        return await self.task_management(TmfFunction.LOGICAL_UNIT_RESET, lun)

    async def logout(self, reason: int = 0) -> None:
        try:
            if self._closed_exc is None:
                await self._request(0x46, 0x80 | reason, timeout=5.0)
        except (TimeoutError, IscsiError, OSError):
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # ---- SCSI conveniences ---------------------------------------------------------------
    async def _checked(
        self, what: str, lun: int, cdb: bytes, data_out: bytes = b"", read_length: int = 0
    ) -> ScsiResult:
        r = await self.scsi(lun, cdb, data_out, read_length)
        if not r.ok:
            raise ScsiCommandError(what, r)
        return r

    async def test_unit_ready(self, lun: int = 0) -> ScsiResult:
        return await self.scsi(lun, bytes(6))

    async def request_sense(self, lun: int = 0) -> bytes:
        r = await self._checked(
            "REQUEST SENSE", lun, bytes([0x03, 0, 0, 0, 252, 0]), read_length=252
        )
        return r.data

    async def inquiry(self, lun: int = 0, page: int | None = None, length: int = 255) -> bytes:
        evpd, pg = (1, page) if page is not None else (0, 0)
        cdb = struct.pack(">BBBHB", 0x12, evpd, pg, length, 0)
        return (await self._checked("INQUIRY", lun, cdb, read_length=length)).data

    async def read_capacity16(self, lun: int = 0) -> tuple[int, int]:
        """(number of blocks, block size)."""
        cdb = struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)
        data = (await self._checked("READ CAPACITY(16)", lun, cdb, read_length=32)).data
        last, bs = struct.unpack(">QI", data[:12])
        return last + 1, bs

    async def read(self, lba: int, blocks: int, lun: int = 0, block_size: int = 512) -> bytes:
        cdb = struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)
        r = await self._checked("READ(16)", lun, cdb, read_length=blocks * block_size)
        return r.data

    async def write(
        self, lba: int, data: bytes, lun: int = 0, block_size: int = 512, fua: bool = False
    ) -> None:
        blocks = len(data) // block_size
        cdb = struct.pack(">BBQIBB", 0x8A, 0x08 if fua else 0, lba, blocks, 0, 0)
        await self._checked("WRITE(16)", lun, cdb, data_out=data)

    async def persistent_reserve_in(
        self, service_action: int, lun: int = 0, allocation_length: int = 8192
    ) -> Any:
        cdb = pr.pr_in_cdb(service_action, allocation_length)
        data = (
            await self._checked("PERSISTENT RESERVE IN", lun, cdb, read_length=allocation_length)
        ).data
        parse = {
            pr.PrIn.READ_KEYS: pr.parse_read_keys,
            pr.PrIn.READ_RESERVATION: pr.parse_read_reservation,
            pr.PrIn.REPORT_CAPABILITIES: pr.parse_capabilities,
            pr.PrIn.READ_FULL_STATUS: pr.parse_full_status,
        }[pr.PrIn(service_action)]
        return parse(data)

    async def persistent_reserve_out(
        self,
        service_action: int,
        key: int = 0,
        sa_key: int = 0,
        pr_type: int = 0,
        aptpl: bool = False,
        lun: int = 0,
        parameters: bytes | None = None,
        all_tg_pt: bool = False,
    ) -> ScsiResult:
        """Returns the result (RESERVATION CONFLICT is a status, not an exception)."""
        params = (
            parameters
            if parameters is not None
            else pr.pr_out_parameters(key, sa_key, aptpl, all_tg_pt)
        )
        cdb = pr.pr_out_cdb(service_action, pr_type, 0, len(params))
        return await self.scsi(lun, cdb, data_out=params)
