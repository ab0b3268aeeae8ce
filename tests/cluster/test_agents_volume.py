"""`volume` against a real `ophiura target`: two nodes, SCSI-3 PR, PREEMPT AND ABORT fences the
old owner (its monitor fails, its writes meet RESERVATION CONFLICT); fence_scsi's lost-key pain."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is a top-level package next to `src/` and `tests/`
    sys.path.insert(0, str(ROOT))

from bench.servers import Server, make_sparse, ophiura_target_unavailable, start_ophiura  # noqa: E402

from ophiura.cluster.agents.base import OcfCode, Resource  # noqa: E402
from ophiura.cluster.agents.volume import VolumeAgent, VolumeSpec  # noqa: E402
from ophiura.iscsi import pr_client as pr  # noqa: E402
from ophiura.iscsi.initiator import IscsiInitiator  # noqa: E402
from ophiura.scsi.api import Status  # noqa: E402


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Server]:
    why = ophiura_target_unavailable()
    if why:
        pytest.xfail(f"ophiura target not usable: {why}")
    backing = make_sparse(tmp_path / "lun.img", 16 << 20)
    server = start_ophiura(backing, "16M", tmp_path / "target.log", state_dir=tmp_path / "state")
    try:
        yield server
    finally:
        server.stop()


def _res(server: Server, node: str, **extra: str) -> Resource:
    return Resource(f"vol-{node}", "volume", {"url": server.url(), "node": node, **extra})


async def _write_as(res: Resource, data: bytes = b"x" * 512) -> int:
    """A write through the node's own nexus (the data path); its SCSI status."""
    spec = VolumeSpec.of(res)
    ini, lun = await IscsiInitiator.from_url(spec.url, spec.initiator, isid=spec.isid)
    try:
        for _ in range(4):  # consume unit attentions
            if (await ini.test_unit_ready(lun)).status == Status.GOOD:
                break
        cdb = bytes([0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
        return (await ini.scsi(lun, cdb, data_out=data)).status
    finally:
        await ini.logout()


async def test_two_nodes_preempt_and_abort(target: Server) -> None:
    agent = VolumeAgent()
    a, b = _res(target, "n1"), _res(target, "n2")
    assert (await agent.validate(a, 5)).ok
    assert (await agent.monitor(a, 10)).code == OcfCode.NOT_RUNNING
    out = await agent.start(a, 10)
    assert out.ok, out
    assert (await agent.monitor(a, 10)).ok
    assert (await agent.start(a, 10)).ok  # idempotent
    assert await _write_as(a) == Status.GOOD
    assert await _write_as(b) == Status.RESERVATION_CONFLICT  # write exclusive: only the holder
    # n1 "dies"; n2 takes over: PREEMPT AND ABORT of n1's key
    out = await agent.start(b, 10)
    assert out.ok and "PREEMPT AND ABORT" in out.reason, out
    assert (await agent.monitor(b, 10)).ok
    out = await agent.monitor(a, 10)
    assert out.code == OcfCode.ERR_GENERIC and "preempted" in out.reason, out
    assert out.taken  # taken by another node, not a broken path (decide: no second recovery)
    assert await _write_as(a) == Status.RESERVATION_CONFLICT  # the rogue node is fenced
    assert await _write_as(b) == Status.GOOD
    # the fenced node's stop succeeds (it holds nothing) and does not disturb the owner
    assert (await agent.stop(a, 10)).ok
    assert (await agent.monitor(b, 10)).ok
    # clean switchover back: n2 releases, n1 reserves without preempting
    assert (await agent.stop(b, 10)).ok
    assert (await agent.monitor(b, 10)).code == OcfCode.NOT_RUNNING
    assert not (await agent.monitor(b, 10)).taken
    out = await agent.start(a, 10)
    assert out.ok and "PREEMPT" not in out.reason
    assert (await agent.stop(a, 10)).ok


async def test_key_on_an_old_nexus_is_reregistered(target: Server) -> None:
    """fence_scsi's pain: the session id (ISID) changed, the key stayed on the old nexus."""
    agent = VolumeAgent()
    a = _res(target, "n1")
    spec = VolumeSpec.of(a)
    old = await IscsiInitiator.from_url(spec.url, spec.initiator, isid=spec.isid ^ 0x1234)
    ini, lun = old
    try:
        await ini.test_unit_ready(lun)
        await ini.persistent_reserve_out(pr.PrOut.REGISTER, sa_key=spec.key, lun=lun)
        r = await ini.persistent_reserve_out(
            pr.PrOut.RESERVE, key=spec.key, pr_type=spec.pr_type, lun=lun
        )
        assert r.ok
    finally:
        await ini.logout()
    out = await agent.monitor(a, 10)
    assert out.ok and "re-registered" in out.reason, out
    assert (await agent.monitor(a, 10)).ok and out.reason
    assert await _write_as(a) == Status.GOOD
    assert (await agent.stop(a, 10)).ok


async def test_unreachable_target_and_params() -> None:
    agent = VolumeAgent()
    dead = Resource("v", "volume", {"url": "iscsi://127.0.0.1:1/iqn.x:y/0", "node": "n1"})
    out = await agent.monitor(dead, 2)
    assert out.code == OcfCode.ERR_GENERIC and "127.0.0.1" in out.reason
    bad = Resource("v", "volume", {"url": "http://x", "node": "n1"})
    assert (await agent.validate(bad, 2)).code == OcfCode.ERR_CONFIGURED
    badkey = Resource("v", "volume", {"url": "iscsi://h/iqn.x:y/0", "key": "zz"})
    assert (await agent.validate(badkey, 2)).code == OcfCode.ERR_CONFIGURED
    badtype = Resource("v", "volume", {"url": "iscsi://h/iqn.x:y/0", "type": "nope"})
    assert (await agent.validate(badtype, 2)).code == OcfCode.ERR_CONFIGURED
    s1, s2 = (
        VolumeSpec.of(Resource("v", "volume", {"url": "iscsi://h/i/0", "node": "n1"})),
        VolumeSpec.of(Resource("v", "volume", {"url": "iscsi://h/i/0", "node": "n2"})),
    )
    assert s1.key != s2.key and s1.isid != s2.isid and s1.key != 0


async def test_secrets_stay_out_of_reasons_and_chap_file_logs_in(tmp_path: Path) -> None:
    """A `user%secret@` URL is never quoted (failure reasons carry `***`), and `chap_file` is
    how a CHAP-protected LUN is reached: the agent takes the reservation through it."""
    agent = VolumeAgent()
    dead = Resource(
        "v", "volume", {"url": "iscsi://admin%TopSecret123@127.0.0.1:1/iqn.x:y/0", "node": "n1"}
    )
    out = await agent.monitor(dead, 2)
    assert out.code == OcfCode.ERR_GENERIC and "TopSecret123" not in out.reason, out.reason
    assert "admin%***@127.0.0.1" in out.reason
    bad = Resource("v", "volume", {"url": "iscsi://admin%TopSecret123@/0", "node": "n1"})
    out = await agent.validate(bad, 2)
    assert out.code == OcfCode.ERR_CONFIGURED and "TopSecret123" not in out.reason
    assert "TopSecret123" not in repr(VolumeSpec.of(dead))

    why = ophiura_target_unavailable()
    if why:
        pytest.xfail(f"ophiura target not usable: {why}")
    secret = "chap-secret-0123"
    cred = tmp_path / "vol.chap"
    cred.write_text(f'user = "cluster"\nsecret = "{secret}"\n')
    cred.chmod(0o600)
    backing = make_sparse(tmp_path / "lun.img", 16 << 20)
    server = start_ophiura(
        backing, "16M", tmp_path / "target.log", state_dir=tmp_path / "s", chap=("cluster", secret)
    )
    try:
        without = _res(server, "n1")
        assert (await agent.start(without, 10)).code == OcfCode.ERR_GENERIC  # CHAP required
        res = _res(server, "n1", chap_file=str(cred))
        assert (await agent.start(res, 10)).ok
        assert (await agent.monitor(res, 10)).ok
        assert (await agent.stop(res, 10)).ok
        cred.chmod(0o644)
        out = await agent.validate(res, 5)
        assert out.code == OcfCode.ERR_CONFIGURED and "chmod 600" in out.reason, out.reason
    finally:
        server.stop()
