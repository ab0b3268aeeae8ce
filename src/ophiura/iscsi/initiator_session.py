"""The initiator's iSCSI session: one TCP connection, ErrorRecoveryLevel 0.

`InitiatorSession` owns the wire: it logs in (the conversation is `initiator_login`), then one
reader task decodes every PDU the target sends and resolves the request it answers. Requests are
tagged (ITT) and may run concurrently; non-immediate ones take a CmdSN and wait while the
target's window (MaxCmdSN) is closed. SCSI write data goes as immediate data, unsolicited
Data-Out and R2T-solicited Data-Out as negotiated; Data-In is reassembled by buffer offset.
The SCSI commands themselves (INQUIRY, READ, PERSISTENT RESERVE...) are `IscsiInitiator`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any, Self

from ophiura.iscsi import pdu as P
from ophiura.iscsi.initiator_login import login_offer, negotiate
from ophiura.iscsi.initiator_results import IscsiError, LoginFailed, Rejected, ScsiResult
from ophiura.iscsi.session import sn_diff
from ophiura.iscsi.text import SessionParams, encode_text, parse_text
from ophiura.iscsi.url import parse_url
from ophiura.scsi.api import TmfFunction, TmfResult

log = logging.getLogger(__name__)

NO_TAG = P.NO_TAG
DEFAULT_INITIATOR = "iqn.2025-01.org.ophiura:initiator"
_STATUS_OPS = frozenset({0x21, 0x22, 0x24, 0x26, 0x3F})


class _Pending:
    """One outstanding request: its future, and for a SCSI command its data in both ways."""

    __slots__ = ("buf", "cmdsn", "data_out", "fut", "itt", "lun_raw", "read_length")

    def __init__(self, itt: int, fut: asyncio.Future[Any]) -> None:
        self.itt = itt
        self.fut = fut
        self.buf: bytearray | None = None
        self.data_out = b""
        self.cmdsn = 0
        self.lun_raw = 0
        self.read_length = 0


class InitiatorSession:
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
    ) -> Self:
        """Log in (to a normal session, or a discovery session when target_iqn is None)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        if isid is None:
            isid = (0x80 << 40) | secrets.randbits(24)
        ini = cls(reader, writer, initiator_name, target_iqn, isid, timeout)
        try:
            offer = login_offer(
                target_iqn is not None,
                header_digest=header_digest,
                data_digest=data_digest,
                max_recv_data_segment_length=max_recv_data_segment_length,
                immediate_data=immediate_data,
                initial_r2t=initial_r2t,
                first_burst_length=first_burst_length,
                max_burst_length=max_burst_length,
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
    ) -> tuple[Self, int]:
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
        p = self.params
        await negotiate(self._login_pdu, p, self.initiator_name, self.target, offer, chap, mutual)
        self._enc = P.negotiated_codec(self._decoder, *p.digests, max(p.initiator_mrdsl, 8192))
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

    # ---- what the target sends -----------------------------------------------------------
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
            p = self._pending.pop(P.rejected_itt(pdu.data), None)
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
                self._done(p, _result(pdu, bytes(p.buf), b"", 0))
            return
        if op == 0x21:
            data = bytes(p.buf) if p.buf is not None else b""
            self._done(p, _result(pdu, data, P.parse_sense_segment(pdu.data), pdu.b2 >> 8))
            return
        if op == 0x31:
            self._send_data_out(p, pdu.ttt, pdu.w40, pdu.w44)
            return
        self._done(p, pdu)

    def _done(self, p: _Pending, value: Any) -> None:
        self._pending.pop(p.itt, None)
        if not p.fut.done():
            p.fut.set_result(value)

    # ---- what we send --------------------------------------------------------------------
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
            chunk = data[offset : offset + n]
            self._send(0x05, final, 0, p.lun_raw, p.itt, ttt, 0, 0, datasn, offset, data=chunk)
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

    # ---- requests ------------------------------------------------------------------------
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


def _result(pdu: P.Pdu, data: bytes, sense: bytes, response: int) -> ScsiResult:
    """The ScsiResult of a status-bearing PDU (Data-In with the S bit, or SCSI Response)."""
    return ScsiResult(
        pdu.b2 & 0xFF,
        data,
        sense,
        pdu.w44,
        bool(pdu.flags & P.F_OVERFLOW),
        bool(pdu.flags & P.F_UNDERFLOW),
        response,
    )
