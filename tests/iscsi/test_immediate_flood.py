"""Immediate commands cannot exhaust the target's memory (issue 9, failure 10).

Immediate SCSI commands bypass the CmdSN window, and each WRITE can carry up to FirstBurstLength
(256 KiB) of immediate data. A raw-socket initiator, without CHAP, floods immediate WRITEs whose
remaining data it never sends, so the target holds every one of them. The target must cap how
many it holds (Reject "Immediate command reject" beyond `max_immediate`) and how much
unsolicited data a connection may park (`unsolicited_budget`), and other sessions keep working.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from ophiura.iscsi import pdu as P
from ophiura.iscsi.text import encode_text, parse_text
from ophiura.scsi.api import TmfResult

from .conftest import IQN
from .fakes import MiniDevice
from .test_live import login

pytestmark = pytest.mark.timeout(60)

BURST = 256 * 1024  # FirstBurstLength = MaxRecvDataSegmentLength of the target: one PDU
CAP = 16  # the target's default max_immediate
ENC = P.PduEncoder()
NO_TAG = P.NO_TAG


async def read_pdu(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    hdr = await r.readexactly(48)
    dsl = int.from_bytes(hdr[5:8], "big")
    data = await r.readexactly(dsl + (-dsl & 3))
    return hdr, data[:dsl]


async def raw_login(port: int, isid: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A normal session with unsolicited data on: InitialR2T=No, 256 KiB of immediate data."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    body = encode_text(
        {
            "InitiatorName": f"iqn.2025-01.org.ophiura:flood{isid}",
            "TargetName": IQN,
            "InitialR2T": "No",
            "ImmediateData": "Yes",
            "FirstBurstLength": str(BURST),
            "MaxBurstLength": str(BURST),
            "MaxRecvDataSegmentLength": str(BURST),
        }
    )
    w.writelines(ENC.encode(0x43, 0x87, 0, (0x80 << 56) | (isid << 16), 1, 0, 1, 0, data=body))
    hdr, data = await read_pdu(r)
    assert hdr[0] & 0x3F == 0x23 and hdr[36] == 0, hdr.hex()
    keys = dict(parse_text(data))
    assert keys["InitialR2T"] == "No" and keys["FirstBurstLength"] == str(BURST), keys
    return r, w


def write10(
    w: asyncio.StreamWriter, itt: int, cmdsn: int, lba: int, immediate: bool = True
) -> None:
    """WRITE(10) of 2 x BURST bytes with the first BURST as immediate data (F=1: the rest only
    on R2T, which this initiator never answers: the target holds the immediate data)."""
    cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, 2 * BURST // 512, 0)
    b0 = 0x01 | (0x40 if immediate else 0)
    w.writelines(
        ENC.encode(b0, 0x80 | 0x20 | 1, 0, 0, itt, 2 * BURST, cmdsn, 0, data=bytes(BURST), cdb=cdb)
    )


async def outcomes(r: asyncio.StreamReader, itts: set[int]) -> dict[int, tuple[str, bytes]]:
    """For each ITT, the target's first answer: an R2T (held), a Reject, a SCSI Response or a
    TMF response."""
    seen: dict[int, tuple[str, bytes]] = {}
    while not itts <= seen.keys():
        hdr, data = await read_pdu(r)
        op = hdr[0] & 0x3F
        if op == 0x3F:  # Reject: the ITT is in the rejected header it carries
            seen[struct.unpack(">I", data[16:20])[0]] = ("reject", hdr)
        elif op in (0x31, 0x21, 0x22):
            kind = {0x31: "r2t", 0x21: "rsp", 0x22: "tmf"}[op]
            seen.setdefault(struct.unpack(">I", hdr[16:20])[0], (kind, hdr))
    return seen


def held_bytes(srv: Any) -> int:
    """Write data the target holds for tasks, plus bytes read and not yet decoded."""
    return sum(
        c.decoder.buffered()
        + sum(len(t.data) for t in c.commands.tasks.values() if t.data is not None)
        for c in srv._connections
    )


async def still_works(srv: Any) -> None:
    good = await login(srv, name="iqn.2025-01.org.ophiura:good")
    for i in range(8):
        await good.write(i, bytes([i + 1]) * 512)
        assert await good.read(i, 1) == bytes([i + 1]) * 512
    await good.logout()


async def test_flood_of_held_immediate_writes_is_bounded(start_server: Any) -> None:
    srv = await start_server()
    cap = CAP
    r, w = await raw_login(srv.port, 7)
    n = 4 * cap
    itts = set(range(0x100, 0x100 + n))
    for itt in itts:
        write10(w, itt, 1, 2 * (itt - 0x100))  # immediate: all carry CmdSN 1
    seen = await asyncio.wait_for(outcomes(r, itts), 30)
    kinds = [k for k, _ in seen.values()]
    assert kinds.count("r2t") == cap and kinds.count("reject") == n - cap, kinds
    assert all(
        h[2] == P.RejectReason.IMMEDIATE_COMMAND_REJECT for k, h in seen.values() if k == "reject"
    )
    assert held_bytes(srv) <= (cap + 1) * BURST  # old code: n x 256 KiB
    assert srv.max_immediate == cap and srv.buffered_write_bytes() == held_bytes(srv)
    await still_works(srv)

    # A held command that ends gives its slot back: answer one R2T, then one more fits.
    itt = next(i for i, (k, _) in seen.items() if k == "r2t")
    ttt = struct.unpack(">I", seen[itt][1][20:24])[0]
    w.writelines(ENC.encode(0x05, 0x80, 0, 0, itt, ttt, 0, 0, 0, 0, BURST, data=bytes(BURST)))
    done = await asyncio.wait_for(outcomes(r, {itt}), 10)
    assert done[itt][0] == "rsp"
    write10(w, 0x999, 1, 0)
    assert (await asyncio.wait_for(outcomes(r, {0x999}), 10))[0x999][0] == "r2t"
    write10(w, 0x99A, 1, 0)
    assert (await asyncio.wait_for(outcomes(r, {0x99A}), 10))[0x99A][0] == "reject"
    w.close()


async def test_unsolicited_budget_bounds_the_window_too(start_server: Any) -> None:
    """Commands inside the CmdSN window are bounded by the window, and by the unsolicited data
    budget when depth x FirstBurstLength exceeds it: beyond it, TASK SET FULL (retried)."""
    srv = await start_server(unsolicited_budget=4 * BURST)
    r, w = await raw_login(srv.port, 8)
    itts = list(range(0x200, 0x210))
    for sn, itt in enumerate(itts, start=1):
        write10(w, itt, sn, 2 * sn, immediate=False)
    write10(w, 0x300, len(itts) + 1, 0)  # immediate, over the byte budget: Reject
    seen = await asyncio.wait_for(outcomes(r, {*itts, 0x300}), 30)
    assert [seen[i][0] for i in itts] == ["r2t"] * 4 + ["rsp"] * (len(itts) - 4)
    assert all(seen[i][1][3] == 0x28 for i in itts[4:])  # TASK SET FULL
    assert seen[0x300][0] == "reject"
    assert held_bytes(srv) <= 5 * BURST
    assert srv.counters["task-set-full"] == len(itts) - 4
    await still_works(srv)
    w.close()


class StuckTmfDevice(MiniDevice):
    """Task management that does not return until released: TMFs pile up on the target."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def task_management(self, *args: Any) -> TmfResult:
        await self.release.wait()
        return await super().task_management(*args)


async def test_task_management_flood_is_bounded(start_server: Any) -> None:
    """Immediate TMFs bypass the window and each may wait for the tasks it ends: at most
    max_immediate run at once, the rest are rejected; released, they all answer."""
    dev = StuckTmfDevice()
    srv = await start_server({IQN: dev})
    r, w = await raw_login(srv.port, 9)
    n = 4 * CAP
    itts = set(range(0x400, 0x400 + n))
    for itt in itts:  # immediate LUN RESET (function 5)
        w.writelines(ENC.encode(0x42, 0x80 | 5, 0, 0, itt, NO_TAG, 1, 0))
    rejected = await asyncio.wait_for(outcomes(r, set(range(0x400 + CAP, 0x400 + n))), 10)
    assert all(k == "reject" for k, _ in rejected.values())
    conn = next(iter(srv._connections))
    assert conn.tmf.running == CAP and srv.counters["tmf-rejected"] == n - CAP
    dev.release.set()
    done = await asyncio.wait_for(outcomes(r, set(range(0x400, 0x400 + CAP))), 10)
    assert all(k == "tmf" and h[2] == 0 for k, h in done.values())
    assert conn.tmf.running == 0
    w.close()


async def test_abort_of_a_far_future_cmdsn_is_not_remembered(start_server: Any) -> None:
    """ABORT TASK for a command that has not arrived is remembered only inside the window."""
    srv = await start_server()
    r, w = await raw_login(srv.port, 10)
    for i, ref in enumerate([5, 2**30, 2**31 - 2]):  # one in the window, two far ahead
        w.writelines(ENC.encode(0x42, 0x80 | 1, 0, 0, 0x500 + i, NO_TAG, 2**31, 0, ref))
    seen = await asyncio.wait_for(outcomes(r, {0x500, 0x501, 0x502}), 10)
    assert [seen[0x500 + i][1][2] for i in range(3)] == [0, 1, 1]  # complete; does not exist
    assert next(iter(srv._connections)).commands.aborted_cmdsn == {5}
    w.close()
