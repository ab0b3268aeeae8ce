"""The iSCSI + NBD wiring shared by `ophiura target` and the HE: exports added and removed while
the servers run reach new logins and connections; a failed start leaves nothing listening."""

from __future__ import annotations

import socket

import pytest

from ophiura.block.memory import MemoryBlockDevice
from ophiura.frontends import Export, Frontends
from ophiura.iscsi.initiator import IscsiInitiator
from ophiura.iscsi.initiator_results import LoginFailed
from ophiura.nbd.client import NbdClient, NbdOptionError
from ophiura.scsi.target import ScsiTarget

MiB = 1 << 20
LOOPBACK = ("127.0.0.1", 0)


def _export(name: str, tmp_path) -> Export:  # type: ignore[no-untyped-def]
    device = MemoryBlockDevice(MiB)
    iqn = f"iqn.2026-12.io.test:{name}"
    return Export(name, iqn, ScsiTarget(iqn, {0: device}, state_dir=tmp_path / name), device)


async def test_exports_follow_add_and_remove_while_running(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fe = Frontends(LOOPBACK, LOOPBACK)
    first = _export("first", tmp_path)
    fe.add(first)
    await fe.start()
    try:
        assert fe.iscsi is not None and fe.nbd is not None
        iport, nport = fe.iscsi.port, fe.nbd.port
        assert fe.listening() == {"iscsi": f"127.0.0.1:{iport}", "nbd": f"127.0.0.1:{nport}"}

        second = _export("second", tmp_path)
        await second.device.write(0, b"2" * 512)
        fe.add(second)
        assert sorted(await NbdClient.list_exports("127.0.0.1", nport)) == ["first", "second"]
        nbd = await NbdClient.connect("127.0.0.1", nport, "second")
        try:
            assert await nbd.read(0, 512) == b"2" * 512
        finally:
            await nbd.close()
        found = await IscsiInitiator.discover("127.0.0.1", iport)
        assert {name for name, _ in found} == {first.iqn, second.iqn}
        ini = await IscsiInitiator.connect("127.0.0.1", iport, second.iqn)
        try:
            await ini.test_unit_ready()  # takes the power-on unit attention
            assert await ini.read(0, 1) == b"2" * 512
        finally:
            await ini.logout()

        fe.remove("second")
        fe.remove("never-added")  # ignored
        assert await NbdClient.list_exports("127.0.0.1", nport) == ["first"]
        with pytest.raises(NbdOptionError):
            await NbdClient.connect("127.0.0.1", nport, "second")
        with pytest.raises(LoginFailed):
            await IscsiInitiator.connect("127.0.0.1", iport, second.iqn)
        assert [n for n, _ in await IscsiInitiator.discover("127.0.0.1", iport)] == [first.iqn]
    finally:
        await fe.stop()
    assert not fe.running and fe.listening() == {"iscsi": None, "nbd": None}


async def test_a_failed_start_leaves_no_portal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """NBD cannot bind (the port is taken): the iSCSI portal started just before is stopped."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        fe = Frontends(LOOPBACK, ("127.0.0.1", taken.getsockname()[1]))
        fe.add(_export("only", tmp_path))
        with pytest.raises(OSError):
            await fe.start()
        assert fe.iscsi is None and fe.nbd is None and not fe.running
    finally:
        taken.close()
