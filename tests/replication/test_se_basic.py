"""A live storage element on 127.0.0.1: volumes, ordered writes, epochs, auth, link emulation."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path

import pytest

from ophiura.replication.se import disk as se_disk
from ophiura.replication.se.disk import VolumeDisk
from ophiura.replication.se.storage_element import StorageElement
from ophiura.replication.wire.client import (
    LinkEmulation,
    SeClient,
    SeError,
    SeUnavailable,
    StaleEpoch,
)

from .test_se_support import SECRET, MiB, block, client_for, running_se

KiB = 1024


async def test_open_write_read_and_state(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        st = await c.open_volume("v1", 1 << 20)
        assert (st.epoch, st.applied_seq, st.size, st.block_size, st.state) == (
            0,
            0,
            1 << 20,
            512,
            "up",
        )
        await c.set_epoch("v1", 1)
        assert await c.write("v1", 1, 1, 8192, block(1)) == 1
        assert await c.read("v1", 8192, 4096) == block(1)
        seq, data = await c.read_with_seq("v1", 0, 8192)
        assert seq == 1 and data == bytes(8192)
        assert (await c.volume_state("v1")).applied_seq == 1
        # reopening keeps what is there, whatever size the HE asks for
        assert (await c.open_volume("v1", 2 << 20)).size == 1 << 20


async def test_writes_sent_out_of_order_are_applied_in_order(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", 1 << 20)
        # every write hits the same block: only in-order application leaves the last one there
        order = [5, 3, 4, 2, 1]
        results = await asyncio.gather(*[c.write("v", 1, s, 0, block(s)) for s in order])
        assert results == order
        assert await c.read("v", 0, 4096) == block(5)
        assert (await c.volume_state("v")).applied_seq == 5


async def test_gap_is_reported_and_duplicates_are_acked(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", 1 << 20)
        await c.write("v", 1, 1, 0, block(1))
        waiting = asyncio.ensure_future(c.write("v", 1, 3, 4096, block(3)))
        await asyncio.sleep(0.05)
        st = await c.volume_state("v")
        assert st.state == "gap" and "waiting for seq 2" in st.detail and st.applied_seq == 1
        assert not waiting.done()
        await c.write("v", 1, 2, 0, block(2))
        assert await waiting == 3
        assert await c.write("v", 1, 2, 0, block(2)) == 2  # retransmission: acked, not re-applied
        assert (await c.volume_state("v")).state == "up"


async def test_stale_epoch_rejected_after_set_epoch(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as old, client_for(se) as new:
        await old.open_volume("v", 1 << 20)
        await old.set_epoch("v", 1)
        await old.write("v", 1, 1, 0, block(1))
        assert (await new.set_epoch("v", 2)).epoch == 2  # the takeover fences the old HE
        with pytest.raises(StaleEpoch) as err:
            await old.write("v", 1, 2, 0, block(2))
        assert err.value.current_epoch == 2 and err.value.se == "se1"
        with pytest.raises(StaleEpoch):
            await old.set_epoch("v", 1)
        with pytest.raises(StaleEpoch):
            await old.trim("v", 1, 2, 0, 4096)
        assert await new.write("v", 2, 2, 0, block(2), base=1) == 2
        # a write presenting a newer ballot adopts it too, with the base it carries
        assert await new.write("v", 3, 3, 0, block(3), base=2) == 3
        assert (await new.volume_state("v")).epoch == 3


async def test_epoch_and_seq_survive_restart(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", 1 << 20)
        await c.set_epoch("v", 7)
        for s in range(1, 11):
            await c.write("v", 7, s, s * 4096, block(s))
    async with running_se(tmp_path) as se, client_for(se) as c:
        st = await c.volume_state("v")
        assert (st.epoch, st.applied_seq, st.state) == (7, 10, "up")
        assert await c.read("v", 10 * 4096, 4096) == block(10)


async def test_trim_and_write_zeroes_are_sequenced(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", 1 << 20)
        await c.write("v", 1, 1, 0, block(1, 16 * KiB))
        trim = asyncio.ensure_future(c.trim("v", 1, 3, 0, 4096, zero=True))
        await c.write("v", 1, 2, 0, block(2, 8 * KiB))
        assert await trim == 3
        await c.trim("v", 1, 4, 12 * KiB, 4 * KiB)
        data = await c.read("v", 0, 16 * KiB)
        assert data[:4096] == bytes(4096)
        assert data[4096 : 8 * KiB] == block(2, 8 * KiB)[4096:]
        assert data[8 * KiB : 12 * KiB] == block(1, 16 * KiB)[8 * KiB : 12 * KiB]
        assert data[12 * KiB :] == bytes(4096)


async def test_errors_are_typed_and_name_the_se(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        with pytest.raises(SeError, match=r"SE se1: .*no volume 'nope'"):
            await c.read("nope", 0, 512)
        await c.open_volume("v", 1 << 20)
        with pytest.raises(SeError, match="outside size"):
            await c.write("v", 1, 1, (1 << 20) - 512, block(1))
        with pytest.raises(SeError, match="bad volume name"):
            await c.open_volume("../etc", 1 << 20)
        assert await c.read("v", 0, 512) == bytes(512)  # the connection survives errors


async def test_resize_list_delete(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("a", 1 << 20)
        await c.open_volume("b", 2 << 20, 4096)
        assert (await c.resize_volume("a", 4 << 20)).size == 4 << 20
        await c.write("a", 1, 1, 3 << 20, block(1))
        names = {v.volume: v for v in await c.list_volumes()}
        assert set(names) == {"a", "b"} and names["b"].block_size == 4096
        await c.delete_volume("b")
        assert [v.volume for v in await c.list_volumes()] == ["a"]
        assert not (tmp_path / "se1" / "volumes" / "b").exists()


async def test_wrong_secret_rejected_logged_and_others_keep_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_se(tmp_path) as se, client_for(se) as good:
        await good.open_volume("v", 1 << 20)
        with pytest.raises(SeError, match="rejected our proof"):
            await SeClient.connect("se1", "127.0.0.1", se.port, b"wrong-secret-0123456789")
        assert any("failed to prove the shared secret" in r.message for r in caplog.records)
        assert await good.write("v", 1, 1, 0, block(1)) == 1


async def test_unreachable_se_is_unavailable(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se:
        port = se.port
    with pytest.raises(SeUnavailable, match="SE x: connect"):
        await SeClient.connect("x", "127.0.0.1", port, SECRET, timeout=2)


async def test_failed_connect_leaves_no_unretrieved_future(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connect must not make asyncio log "Future exception was never retrieved"
    (the HE reconnects every fraction of a second while an SE is down: one line each)."""
    async with running_se(tmp_path) as se:
        port = se.port
    caplog.set_level(logging.ERROR, logger="asyncio")
    for _ in range(3):
        try:
            await SeClient.connect("x", "127.0.0.1", port, SECRET, timeout=2)
        except SeUnavailable:
            pass  # not pytest.raises: its traceback would keep the futures alive
        else:
            raise AssertionError("connect to a closed port succeeded")
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_connection_loss_fails_pending_requests(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se:
        c = await SeClient.connect("se1", "127.0.0.1", se.port, SECRET)
        await c.open_volume("v", 1 << 20)
        pending = asyncio.ensure_future(c.write("v", 1, 5, 0, block(5)))  # waits for seq 1..4
        await asyncio.sleep(0.05)
    with pytest.raises(SeUnavailable):
        await pending
    with pytest.raises(SeUnavailable):
        await c.ping()
    await c.close()


async def test_link_emulation_adds_delay_and_caps_rate(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se:
        async with client_for(se) as plain:
            base = min([await plain.ping() for _ in range(5)])
        link = LinkEmulation(one_way_delay=0.02)
        async with client_for(se, link=link) as far:
            rtts = [await far.ping() for _ in range(5)]
            assert min(rtts) >= 0.04 and min(rtts) < 0.04 + base + 0.03
            assert far.rtt >= 0.04
            # pipelined: five pings in flight take one delayed round trip, not five. Five
            # serialised round trips take >= 0.2 s (the delay is a timer, never early), so
            # anything below proves the overlap without betting on scheduling on a busy machine.
            start = time.monotonic()
            await asyncio.gather(*[far.ping() for _ in range(5)])
            assert time.monotonic() - start < 0.19
        slow = LinkEmulation(rate_bits_per_s=8 * 2 * (1 << 20))  # 2 MiB/s
        async with client_for(se, link=slow) as c:
            await c.open_volume("v", 4 << 20)
            start = time.monotonic()
            await asyncio.gather(
                *[c.write("v", 1, s, (s - 1) * 65536, block(s, 65536)) for s in range(1, 17)]
            )  # 1 MiB
            elapsed = time.monotonic() - start
            assert 0.4 < elapsed < 1.5, elapsed


async def test_requests_during_start_wait_for_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SE listens before its volumes are open: a request for one still opening waits for
    it — it must never be told "no such volume" (an HE would create it afresh)."""
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", MiB)
        await c.write("v", 1, 1, 0, block(1))
    real_open = VolumeDisk.open

    def slow_open(self: VolumeDisk, create: object) -> object:
        time.sleep(0.5)
        return real_open(self, create)  # type: ignore[arg-type]

    monkeypatch.setattr(VolumeDisk, "open", slow_open)
    se = StorageElement("se1", tmp_path / "se1", "127.0.0.1", 0, SECRET)
    starting = asyncio.ensure_future(se.start())
    while not se.port:
        await asyncio.sleep(0.01)
    try:
        async with client_for(se.port) as c:
            assert not starting.done()
            ack, st, vols = await asyncio.gather(
                c.write("v", 1, 2, 4096, block(2)), c.volume_state("v"), c.list_volumes()
            )
            assert ack == 2 and st.applied_seq >= 1 and [v.volume for v in vols] == ["v"]
            await starting
            assert await c.read("v", 4096, 4096) == block(2)
    finally:
        await starting
        await se.stop()


@pytest.mark.parametrize("nowait", [True, False])
async def test_reads_from_the_page_cache_and_from_the_thread_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nowait: bool
) -> None:
    """READs are answered inline from the page cache (`RWF_NOWAIT`), else on a read thread."""
    monkeypatch.setattr(se_disk, "_NOWAIT", nowait and se_disk._NOWAIT)
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", MiB)
        for s in range(1, 9):
            await c.write("v", 1, s, s * 8192, block(s, 8192))
        got = await asyncio.gather(*[c.read_with_seq("v", s * 8192, 8192) for s in range(1, 9)])
        assert [d for _, d in got] == [block(s, 8192) for s in range(1, 9)]
        assert all(seq == 8 for seq, _ in got)
        assert await c.read("v", MiB - 4096, 4096) == bytes(4096)  # never written: a hole
        with pytest.raises(SeError, match="outside size"):
            await c.read("v", MiB, 4096)


async def test_frames_queued_in_one_turn_share_one_send(tmp_path: Path) -> None:
    """Pipelined writes to one SE leave in one `writelines` per event-loop turn, the first
    included (sending it at once cost a syscall more per turn); the SE's ACKs of one group
    commit likewise."""
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", MiB)
        transport = c._transport
        assert transport is not None
        calls: list[int] = []
        real = transport.writelines

        def counting(buffers: list[bytes]) -> None:
            calls.append(len(buffers))
            real(buffers)

        transport.writelines = counting  # type: ignore[method-assign]
        acks = await asyncio.gather(*[c.write("v", 1, s, s * 4096, block(s)) for s in range(1, 65)])
        assert acks == list(range(1, 65))
        assert calls == [64 * 3], calls  # all 64 frames (head, data, MAC each) together
