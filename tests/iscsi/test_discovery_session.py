"""A discovery session carries no SCSI: the connection holds no command path for it.

A SCSI Command gets a Reject (protocol error) without taking a CmdSN, a stray Data-Out is
ignored, a TMF gets "Function rejected", and the session keeps answering SendTargets.
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
from .test_immediate_flood import read_pdu

pytestmark = pytest.mark.timeout(30)
ENC = P.PduEncoder()
NO_TAG = P.NO_TAG


async def test_discovery_session_refuses_scsi_and_keeps_working(start_server: Any) -> None:
    srv = await start_server()
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    body = encode_text(
        {"InitiatorName": "iqn.2025-01.org.ophiura:disc", "SessionType": "Discovery"}
    )
    w.writelines(ENC.encode(0x43, 0x87, 0, (0x80 << 56) | (1 << 16), 1, 0, 1, 0, data=body))
    hdr, _ = await read_pdu(r)
    assert hdr[0] & 0x3F == 0x23 and hdr[36] == 0, hdr.hex()
    statsn = struct.unpack(">I", hdr[24:28])[0]

    # TEST UNIT READY in CmdSN order: rejected, and CmdSN 1 stays free.
    w.writelines(ENC.encode(0x01, 0x80, 0, 0, 0x10, 0, 1, statsn + 1, cdb=bytes(6)))
    hdr, data = await read_pdu(r)
    assert hdr[0] & 0x3F == 0x3F and hdr[2] == P.RejectReason.PROTOCOL_ERROR, hdr.hex()
    assert struct.unpack(">I", data[16:20])[0] == 0x10  # the rejected header's ITT
    # A Data-Out for no task: nothing comes back for it.
    w.writelines(ENC.encode(0x05, 0x80, 0, 0, 0x11, NO_TAG, 0, 0, 0, 0, 0, data=bytes(512)))
    # An immediate LUN RESET: the TMF response says rejected.
    w.writelines(ENC.encode(0x42, 0x80 | 5, 0, 0, 0x12, NO_TAG, 1, 0))
    hdr, _ = await read_pdu(r)
    assert hdr[0] & 0x3F == 0x22 and struct.unpack(">I", hdr[16:20])[0] == 0x12, hdr.hex()
    assert hdr[2] == TmfResult.REJECTED
    # SendTargets in CmdSN order, with CmdSN 1: still the next one expected.
    text = encode_text({"SendTargets": "All"})
    w.writelines(ENC.encode(0x04, 0x80, 0, 0, 0x13, NO_TAG, 1, 0, data=text))
    hdr, data = await asyncio.wait_for(read_pdu(r), 10)
    assert hdr[0] & 0x3F == 0x24 and struct.unpack(">I", hdr[16:20])[0] == 0x13, hdr.hex()
    assert dict(parse_text(data))["TargetName"] == IQN
    w.close()


async def test_discovery_lists_only_the_targets_an_initiator_may_log_in_to() -> None:
    from ophiura.block.memory import MemoryBlockDevice
    from ophiura.iscsi.initiator import IscsiInitiator, LoginFailed
    from ophiura.iscsi.server import IscsiServer
    from ophiura.scsi.target import ScsiTarget

    open_iqn, closed_iqn = "iqn.2025-01.org.ophiura:open", "iqn.2025-01.org.ophiura:closed"
    friend, stranger = "iqn.2025-01.org.ophiura:friend", "iqn.2025-01.org.ophiura:stranger"
    targets = {n: ScsiTarget(n, {0: MemoryBlockDevice(1 << 20)}) for n in (open_iqn, closed_iqn)}
    srv = IscsiServer(targets, ("127.0.0.1", 0), acls={closed_iqn: frozenset({friend})})
    await srv.start()
    try:
        seen = await IscsiInitiator.discover("127.0.0.1", srv.port, stranger)
        assert [n for n, _ in seen] == [open_iqn]
        seen = await IscsiInitiator.discover("127.0.0.1", srv.port, friend)
        assert sorted(n for n, _ in seen) == [closed_iqn, open_iqn]
        with pytest.raises(LoginFailed) as err:
            await IscsiInitiator.connect("127.0.0.1", srv.port, closed_iqn, stranger)
        assert err.value.status == 0x0202
        ini = await IscsiInitiator.connect("127.0.0.1", srv.port, closed_iqn, friend)
        await ini.logout()
        # add_target carries an ACL too
        srv.add_target(open_iqn, targets[open_iqn], initiators=frozenset({friend}))
        assert await IscsiInitiator.discover("127.0.0.1", srv.port, stranger) == []
    finally:
        await srv.stop()
