"""Live tests: IscsiServer on 127.0.0.1 port 0 and our IscsiInitiator (plus raw sockets)."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest

from ophiura.iscsi import Credentials, TargetPolicy
from ophiura.iscsi import pdu as P
from ophiura.iscsi.initiator import IscsiInitiator, LoginFailed, Rejected, parse_url
from ophiura.iscsi.text import encode_text, parse_text
from ophiura.scsi.api import TmfResult

from .conftest import IQN, make_device
from .fakes import MiniDevice

pytestmark = pytest.mark.timeout(60)
INI = "iqn.2025-01.org.ophiura:ini1"


async def login(srv: Any, **kw: Any) -> IscsiInitiator:
    """Log in and consume the POWER ON/RESET unit attention every new nexus starts with."""
    ini = await IscsiInitiator.connect(
        "127.0.0.1", srv.port, kw.pop("target", IQN), kw.pop("name", INI), **kw
    )
    for _ in range(3):
        if (await ini.test_unit_ready()).status == 0:
            break
    return ini


async def test_write_read_back_and_inquiry(start_server: Any) -> None:
    srv = await start_server()
    ini = await login(srv)
    assert (await ini.test_unit_ready()).status in (0, 2)  # UA allowed after login
    inq = await ini.inquiry()
    assert inq[0] & 0x1F == 0
    blocks, bs = await ini.read_capacity16()
    assert bs == 512 and blocks > 1000
    pattern = os.urandom(64 * 512)
    await ini.write(100, pattern)
    assert await ini.read(100, 64) == pattern
    assert await ini.nop(b"ping-data") == b"ping-data"
    await ini.logout()


async def test_large_io_r2t_and_datain_segmentation_with_digests(start_server: Any) -> None:
    policy = TargetPolicy(
        max_recv_data_segment_length=8192,
        max_burst_length=65536,
        first_burst_length=16384,
        max_outstanding_r2t=2,
    )
    srv = await start_server(policy=policy)
    ini = await login(
        srv,
        max_recv_data_segment_length=4096,
        header_digest=True,
        data_digest=True,
        immediate_data=True,
        initial_r2t=False,
        first_burst_length=16384,
        max_burst_length=65536,
    )
    assert ini.params.header_digest == "CRC32C" and ini.params.data_digest == "CRC32C"
    assert ini.params.target_mrdsl == 8192
    data = os.urandom(1 << 20)
    await ini.write(2048, data)
    assert await ini.read(2048, len(data) // 512) == data
    await ini.logout()


async def test_many_concurrent_commands(start_server: Any) -> None:
    srv = await start_server(queue_depth=8)
    ini = await login(srv)
    blobs = {i: os.urandom(4096) for i in range(64)}
    await asyncio.gather(*(ini.write(i * 8, b) for i, b in blobs.items()))
    got = await asyncio.gather(*(ini.read(i * 8, 8) for i in blobs))
    assert got == list(blobs.values())
    await ini.logout()


async def test_chap_and_mutual_chap(start_server: Any) -> None:
    creds = Credentials("alice", "alice-secret", "tgt", "tgt-secret-1")
    srv = await start_server(chap={IQN: creds})
    ok = await login(srv, chap=("alice", "alice-secret"))
    with pytest.raises(LoginFailed) as err:
        await login(srv, chap=("alice", "wrong-secret"), name="iqn.x:evil")
    assert err.value.status == 0x0201
    with pytest.raises(LoginFailed) as err:
        await login(srv, name="iqn.x:nochap")
    assert err.value.status == 0x0201
    mutual = await login(
        srv, chap=("alice", "alice-secret"), mutual=("tgt", "tgt-secret-1"), name="iqn.x:mutual"
    )
    with pytest.raises(LoginFailed):
        await login(
            srv, chap=("alice", "alice-secret"), mutual=("tgt", "not-it"), name="iqn.x:mutual2"
        )
    # the good sessions keep serving
    await ok.write(0, b"a" * 512)
    assert await mutual.read(0, 1) == b"a" * 512
    await ok.logout()
    await mutual.logout()


async def test_login_errors(start_server: Any) -> None:
    srv = await start_server()
    with pytest.raises(LoginFailed) as err:
        await login(srv, target="iqn.2025-01.org.ophiura:nope")
    assert err.value.status == 0x0203


async def test_discovery_send_targets(start_server: Any) -> None:
    other = "iqn.2025-01.org.ophiura:other"
    srv = await start_server({IQN: MiniDevice(), other: MiniDevice()})
    found = dict(await IscsiInitiator.discover("127.0.0.1", srv.port, INI))
    assert found == {IQN: f"127.0.0.1:{srv.port},1", other: f"127.0.0.1:{srv.port},1"}


async def test_cmdsn_outside_window_is_dropped(start_server: Any) -> None:
    srv = await start_server()
    ini = await login(srv)
    await ini.test_unit_ready()
    ini.cmdsn = (ini.maxcmdsn + 1) & 0xFFFFFFFF
    ini.maxcmdsn = ini.cmdsn  # let our side send it
    pending = await ini.start_scsi(0, bytes(6))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(pending.fut), 0.5)
    ini._pending.pop(pending.itt, None)
    ini.cmdsn = ini.expcmdsn
    ini.cmdsn = (ini.expcmdsn - 1) & 0xFFFFFFFF  # too low: dropped as well
    low = await ini.start_scsi(0, bytes(6))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(low.fut), 0.5)
    ini.cmdsn = ini.expcmdsn
    assert (await ini.test_unit_ready()).status == 0
    await ini.logout()


async def test_abort_task_and_lun_reset() -> None:
    from ophiura.iscsi import IscsiServer

    dev = MiniDevice()
    srv = IscsiServer({IQN: dev}, ("127.0.0.1", 0))
    await srv.start()
    try:
        ini = await login(srv)
        slow = await ini.start_scsi(0, bytes([0xEE]) + bytes(5))  # MiniDevice sleeps 5 s
        await asyncio.sleep(0.1)
        assert await ini.abort_task(slow) == TmfResult.COMPLETE
        await asyncio.sleep(0.2)
        assert not slow.fut.done()  # an aborted task gets no response
        done = await ini.test_unit_ready()
        assert await ini.abort_task(_FakePending(done)) == TmfResult.TASK_DOES_NOT_EXIST
        slow2 = await ini.start_scsi(0, bytes([0xEE]) + bytes(5))
        await asyncio.sleep(0.1)
        assert await ini.lun_reset() == TmfResult.COMPLETE
        assert not slow2.fut.done()
        assert (await ini.test_unit_ready()).status == 0
        await ini.logout()
    finally:
        await srv.stop()


class _FakePending:
    def __init__(self, _: object) -> None:
        self.itt, self.cmdsn = 0x7FFFFFF0, 0


async def test_connection_loss_and_logout_call_nexus_lost() -> None:
    from ophiura.iscsi import IscsiServer

    dev = MiniDevice()
    srv = IscsiServer({IQN: dev}, ("127.0.0.1", 0))
    await srv.start()
    try:
        ini = await login(srv, isid=0x800000000001)
        assert dev.added[-1].initiator_port == f"{INI},i,0x800000000001"
        assert dev.added[-1].target_port == f"{IQN},t,0x0001"
        ini._writer.transport.abort()
        await _until(lambda: len(dev.lost) == 1)
        ini2 = await login(srv)
        await ini2.logout()
        await _until(lambda: len(dev.lost) == 2)
        # session reinstatement: same initiator + ISID -> the old nexus is lost first
        a = await login(srv, isid=0x800000000002)
        b = await login(srv, isid=0x800000000002)
        await _until(lambda: len(dev.lost) == 3)
        assert dev.lost[-1] == dev.added[-1]
        assert (await b.test_unit_ready()).status == 0
        await b.logout()
        await a.close()
    finally:
        await srv.stop()


async def _until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_target_nop_keepalive(start_server: Any) -> None:
    srv = await start_server(nop_interval=0.1, nop_timeout=0.3)
    ini = await login(srv)
    await asyncio.sleep(0.6)
    assert ini.target_pings >= 2
    assert (await ini.test_unit_ready()).status in (0, 2)
    # a peer that never answers pings is dropped
    r, w = await _raw_login(srv.port)
    async with asyncio.timeout(5):
        while await r.read(4096):
            pass
    w.close()
    await ini.logout()


async def _raw_login(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    body = encode_text({"InitiatorName": "iqn.raw", "TargetName": IQN})
    w.writelines(
        P.PduEncoder().encode(0x43, 0x87, 0, (0x80 << 56) | (7 << 16), 1, 0, 1, 0, data=body)
    )
    hdr = await r.readexactly(48)
    dsl = int.from_bytes(hdr[5:8], "big")
    await r.readexactly(dsl + (-dsl & 3))
    assert hdr[0] & 0x3F == 0x23 and hdr[36] == 0, hdr.hex()
    return r, w


async def _read_pdu(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    hdr = await r.readexactly(48)
    dsl = int.from_bytes(hdr[5:8], "big")
    data = await r.readexactly(dsl + (-dsl & 3))
    return hdr, data[:dsl]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 48,  # unknown opcode: Reject, connection stays
        P.BHS.pack(0x01, 0x80, 0, 0xFFFFFF, 0, 1, 0, 0, 0, 0, 0, 0, 0),  # huge DSL
        P.BHS.pack(0x10, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0),  # SNACK at ERL 0
        P.BHS.pack(0x03, 0x87, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0),  # login in full feature
        os.urandom(4000),
    ],
)
async def test_garbage_never_hurts_other_sessions(start_server: Any, garbage: bytes) -> None:
    srv = await start_server()
    good = await login(srv)
    r, w = await _raw_login(srv.port)
    w.write(garbage)
    async with asyncio.timeout(5):
        hdr, _data = await _read_pdu(r)
        if hdr:
            assert hdr[0] & 0x3F in (0x3F, 0x21, 0x25)  # Reject (or a response to a "command")
    w.close()
    for i in range(20):
        await good.write(i, bytes([i]) * 512)
        assert await good.read(i, 1) == bytes([i]) * 512


async def test_garbage_during_login_closes(start_server: Any) -> None:
    srv = await start_server()
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    w.write(P.BHS.pack(0x01, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0))
    async with asyncio.timeout(5):
        hdr, _ = await _read_pdu(r)
        assert hdr[0] & 0x3F == 0x23 and hdr[36] == 2  # login reject, initiator error class
        assert await r.read() == b""
    w.close()


async def test_unknown_opcode_rejected_with_header(start_server: Any) -> None:
    srv = await start_server()
    r, w = await _raw_login(srv.port)
    bad = bytearray(P.BHS.pack(0x1C, 0x80, 0, 0, 0, 0x1234, 0, 0, 0, 0, 0, 0, 0))
    w.write(bytes(bad))
    hdr, data = await asyncio.wait_for(_read_pdu(r), 5)
    assert hdr[0] & 0x3F == 0x3F and hdr[2] == 0x05 and data == bytes(bad)
    # still usable: a NOP-Out ping gets its NOP-In
    w.writelines(P.PduEncoder().encode(0x40, 0x80, 0, 0, 0x55, 0xFFFFFFFF, 2, 0, data=b"hi"))
    hdr, data = await asyncio.wait_for(_read_pdu(r), 5)
    assert hdr[0] & 0x3F == 0x20 and struct.unpack(">I", hdr[16:20])[0] == 0x55
    assert data == b"hi"
    w.close()


async def test_rejected_pdu_reaches_initiator(start_server: Any) -> None:
    srv = await start_server()
    ini = await login(srv)
    fut = asyncio.get_running_loop().create_future()
    from ophiura.iscsi.initiator import _Pending

    ini._pending[0x99] = _Pending(0x99, fut)
    ini._send(0x10, 0x80, 0, 0, 0x99)  # SNACK
    with pytest.raises(Rejected):
        await asyncio.wait_for(fut, 5)
    await ini.logout()


async def test_text_send_targets_in_normal_session(start_server: Any) -> None:
    srv = await start_server()
    ini = await login(srv)
    pairs = await ini.text_request({"SendTargets": "", "X-vendor": "1"})
    assert ("TargetName", IQN) in pairs and ("X-vendor", "NotUnderstood") in pairs
    await ini.logout()
    assert parse_text(encode_text(pairs), allow_duplicates=True) == pairs


def test_parse_url() -> None:
    u = parse_url("iscsi://bob%s3cr%65t@127.0.0.1:3261/iqn.2025-01.x:y/2")
    assert (u.host, u.port, u.target, u.lun, u.user, u.password) == (
        "127.0.0.1",
        3261,
        "iqn.2025-01.x:y",
        2,
        "bob",
        "s3cret",
    )
    u = parse_url("iscsi://[::1]/iqn.a/0")
    assert (u.host, u.port, u.user) == ("::1", 3260, None)
    with pytest.raises(ValueError):
        parse_url("http://x/y")


def test_make_device_is_usable() -> None:
    assert make_device() is not None
