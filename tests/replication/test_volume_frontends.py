"""Replicated volumes behind the real frontends: iSCSI (DATA PROTECT when read-only), NBD
(EPERM), and persistent SCSI state (every registration and reservation) replicated through the
SEs across takeover."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest

from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.initiator import IscsiInitiator, ScsiCommandError
from ophiura.nbd.client import NbdClient, NbdError
from ophiura.nbd.constants import Errno

from .he_harness import (
    HeProcess,
    SeHandle,
    he_config,
    start_he,
    wait_all_up,
    wait_for,
)

IQN = "iqn.2026-11.org.ophiura:vol"
DATA_PROTECT = 0x7
WRITE_PROTECTED = (0x27, 0x00)


async def test_read_only_over_iscsi_and_nbd(ses: list[SeHandle], tmp_path: Path) -> None:
    cfg = he_config(ses, iscsi=("127.0.0.1", 0), nbd=("127.0.0.1", 0))
    he = await start_he(cfg, tmp_path)
    ini = nbd = None
    try:
        await wait_all_up(he)
        ini = await IscsiInitiator.connect("127.0.0.1", he.frontends.iscsi.port, IQN)
        await ini.test_unit_ready()  # consumes the power-on unit attention
        nbd = await NbdClient.connect("127.0.0.1", he.frontends.nbd.port, "vol")
        await ini.write(0, b"i" * 4096)
        await nbd.write(4096, b"n" * 4096)
        ses[1].kill9()
        ses[2].kill9()
        vol = he.volumes["vol"].data
        await wait_for(lambda: vol.read_only, 5, "read-only")
        with pytest.raises(ScsiCommandError) as info:
            await ini.write(16, b"x" * 4096)
        assert info.value.result.sense_key == DATA_PROTECT
        assert info.value.result.asc_ascq == WRITE_PROTECTED
        with pytest.raises(NbdError) as nerr:
            await nbd.write(8192, b"x" * 4096)
        assert nerr.value.errno == Errno.EPERM
        # reads keep working (read-only consistency)
        assert await ini.read(8, 8) == b"n" * 4096
        assert await nbd.read(0, 4096) == b"i" * 4096
        ses[1].spawn()
        await wait_for(lambda: not vol.read_only, 15, "writes resume")
        await ini.write(16, b"y" * 4096)
        await nbd.write(8192, b"z" * 4096)
        assert await nbd.read(8192, 8192) == b"z" * 4096 + b"\0" * 4096
    finally:
        if ini is not None:
            await ini.logout()
        if nbd is not None:
            await nbd.disconnect()
        await he.stop()


async def test_pr_state_survives_takeover(ses: list[SeHandle], tmp_path: Path) -> None:
    cfg = he_config(ses, iscsi=("127.0.0.1", 0))
    old = await start_he(cfg, tmp_path / "old")
    new = await start_he(replace(cfg, standby=True, state_dir=tmp_path / "new"), tmp_path)
    try:
        await wait_all_up(old)
        ini = await IscsiInitiator.connect(
            "127.0.0.1", old.frontends.iscsi.port, IQN, "iqn.2026-11.t:h1"
        )
        await ini.test_unit_ready()
        r = await ini.persistent_reserve_out(pr.PrOut.REGISTER, sa_key=0xABC, aptpl=True)
        assert r.ok
        r = await ini.persistent_reserve_out(
            pr.PrOut.RESERVE, key=0xABC, pr_type=pr.PrType.WRITE_EXCLUSIVE
        )
        assert r.ok
        mirror = old.volumes["vol"].mirror
        await wait_for(lambda: "lun0.pr.json" in mirror.synced, 5, "PR state replicated")
        await ini.logout()
        await new.takeover()
        assert (tmp_path / "new" / "vol" / "lun0.pr.json").exists()
        ini2 = await IscsiInitiator.connect(
            "127.0.0.1", new.frontends.iscsi.port, IQN, "iqn.2026-11.t:h2"
        )
        await ini2.test_unit_ready()
        try:
            keys = await ini2.persistent_reserve_in(pr.PrIn.READ_KEYS)
            assert keys.keys == [0xABC]
            res = await ini2.persistent_reserve_in(pr.PrIn.READ_RESERVATION)
            assert res.key == 0xABC
        finally:
            await ini2.logout()
    finally:
        await old.stop()
        await new.stop()


async def test_pr_change_is_on_the_ses_before_good(ses: list[SeHandle], tmp_path: Path) -> None:
    """Issue 9, failure 6: registrations without APTPL, and a PREEMPT AND ABORT answered GOOD
    just before the HE is killed (-9, no clean stop), are what the next HE enforces: the
    preempted host stays fenced. Before, only APTPL state was replicated, by a 0.1 s poll
    after GOOD, so the new HE knew no registration at all and let the preempted host write."""
    for d in ("old", "new"):
        (tmp_path / d).mkdir()
    old = HeProcess(ses, tmp_path / "old", volumes=("vol:8M",))
    new = HeProcess(ses, tmp_path / "new", volumes=("vol:8M",))
    h1 = h2 = None
    try:
        await old.start()
        h1 = await IscsiInitiator.connect("127.0.0.1", old.iscsi, IQN, "iqn.2026-11.t:h1")
        h2 = await IscsiInitiator.connect("127.0.0.1", old.iscsi, IQN, "iqn.2026-11.t:h2")
        for ini in (h1, h2):
            await ini.test_unit_ready()
        assert (await h1.persistent_reserve_out(pr.PrOut.REGISTER, sa_key=0xA)).ok
        assert (await h2.persistent_reserve_out(pr.PrOut.REGISTER, sa_key=0xB)).ok
        we = pr.PrType.WRITE_EXCLUSIVE
        assert (await h1.persistent_reserve_out(pr.PrOut.RESERVE, key=0xA, pr_type=we)).ok
        r = await h2.persistent_reserve_out(
            pr.PrOut.PREEMPT_AND_ABORT, key=0xB, sa_key=0xA, pr_type=we
        )
        assert r.ok
        assert old.proc is not None
        old.proc.kill()  # at once: no poll, no clean stop gets to run
        old.proc.wait(5)
        await new.start()
        h1 = await IscsiInitiator.connect("127.0.0.1", new.iscsi, IQN, "iqn.2026-11.t:h1")
        with contextlib.suppress(ScsiCommandError):  # the new nexus' unit attention
            await h1.test_unit_ready()
        keys = await h1.persistent_reserve_in(pr.PrIn.READ_KEYS)
        assert keys.keys == [0xB]
        res = await h1.persistent_reserve_in(pr.PrIn.READ_RESERVATION)
        assert res.key == 0xB
        with pytest.raises(ScsiCommandError) as err:
            await h1.write(0, b"x" * 512)
        assert err.value.result.status == 0x18  # RESERVATION CONFLICT: still fenced
    finally:
        for ini in (h1, h2):
            if ini is not None:
                with contextlib.suppress(Exception):  # the old HE is gone, its sessions too
                    await ini.logout()
        old.terminate()
        new.terminate()
