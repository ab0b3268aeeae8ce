"""A small asyncio iSCSI initiator: tests, `ophiura pr`, and the cluster's reservation fencing.

    ini = await IscsiInitiator.connect("127.0.0.1", 3260, "iqn...:disk0", "iqn...:node1")
    await ini.write(0, b"x" * 512); data = await ini.read(0, 1); await ini.logout()

`IscsiInitiator` is an `InitiatorSession` (`initiator_session`: the connection, login, CmdSN
window, tagged requests, NOP/Text/TMF/Logout, `scsi()` for any CDB) plus the SCSI commands
callers use by name, here. What it returns and raises is in `initiator_results`; all of it is
importable from this module.
"""

from __future__ import annotations

import struct
from typing import Any

from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.initiator_results import (
    IscsiError,
    LoginFailed,
    Rejected,
    ScsiCommandError,
    ScsiResult,
)
from ophiura.iscsi.initiator_session import DEFAULT_INITIATOR as DEFAULT_INITIATOR
from ophiura.iscsi.initiator_session import InitiatorSession
from ophiura.iscsi.initiator_session import _Pending as _Pending  # tests make one by hand
from ophiura.iscsi.url import IscsiUrl, parse_url

__all__ = [
    "InitiatorSession",
    "IscsiError",
    "IscsiInitiator",
    "IscsiUrl",
    "LoginFailed",
    "Rejected",
    "ScsiCommandError",
    "ScsiResult",
    "parse_url",
]


class IscsiInitiator(InitiatorSession):
    """An iSCSI session with SCSI commands by name; `ScsiCommandError` when one fails."""

    # ---- SCSI commands ------------------------------------------------------------------
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
