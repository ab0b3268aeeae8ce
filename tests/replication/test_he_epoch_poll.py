"""The SE session's periodic poll (idle fencing) and reconnect backoff, with a fake SE client.

The live counterpart is `test_takeover_live.py::test_idle_old_he_is_fenced_without_writing`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from ophiura.replication.he.quorum import Fenced, QuorumLost
from ophiura.replication.he.se_session import SeSession, SeSpec, SessionState
from ophiura.replication.he.volume import HostElementVolume, VolumeConfig
from ophiura.replication.wire.client import SeUnavailable, VolumeState


@dataclass
class FakeClient:
    """Answers pings and LIST_VOLUMES from `epochs`; counts requests."""

    epochs: dict[str, tuple[int, int]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    rtt: float = 0.001
    fail: bool = False

    async def ping(self) -> float:
        self.calls.append("ping")
        if self.fail:
            raise SeUnavailable("x", "ping", "down")
        return 0.001

    async def list_volumes(self) -> list[VolumeState]:
        self.calls.append("list")
        if self.fail:
            raise SeUnavailable("x", "list volumes", "down")
        return [
            VolumeState(v, e[0], 0, 1 << 20, 512, "up", he_id=e[1]) for v, e in self.epochs.items()
        ]

    async def close(self) -> None:
        pass


def _connected(name: str, client: FakeClient, interval: float) -> SeSession:
    s = SeSession(SeSpec(name, "127.0.0.1", 1), b"k" * 32, ping_interval=interval)
    s.client, s.state, s.generation = client, SessionState.CONNECTED, 1
    return s


async def _ping_for(session: SeSession, seconds: float) -> None:
    task = asyncio.create_task(session._ping_until_lost())
    await asyncio.sleep(seconds)
    session.state = SessionState.CLOSED
    session._wake.set()
    await asyncio.wait_for(task, 2.0)


async def test_plain_ping_without_epoch_listeners() -> None:
    client = FakeClient({"vol": (1, 0)})
    session = _connected("a", client, 0.02)
    await _ping_for(session, 0.2)
    assert client.calls and set(client.calls) == {"ping"} and session.polls == 0


async def test_poll_is_one_request_per_interval_and_reports_epochs() -> None:
    client = FakeClient({"vol": (3, 0), "vol.scsi": (3, 0), "other": (9, 0)})
    session = _connected("a", client, 0.02)
    seen: list[dict[str, int]] = []

    class Owner:
        def listener(self, s: SeSession, epochs: dict[str, tuple[int, int]]) -> None:
            seen.append(epochs)

        def broken(self, s: SeSession, epochs: dict[str, tuple[int, int]]) -> None:
            raise RuntimeError("a buggy volume must not stop the pings")

    owner = Owner()
    session.on_epochs(owner.broken)
    session.on_epochs(owner.listener)
    await _ping_for(session, 0.2)
    # the poll replaces the ping: one request per interval, whatever the number of volumes
    assert set(client.calls) == {"list"}
    assert 2 <= len(client.calls) <= 0.2 / 0.02 + 2
    assert len(seen) == session.polls == len(client.calls)
    assert seen[0] == {"vol": (3, 0), "vol.scsi": (3, 0), "other": (9, 0)}
    session.remove_listeners(owner)  # a closed volume: back to plain pings
    client.calls.clear()
    session.state = SessionState.CONNECTED
    await _ping_for(session, 0.1)
    assert set(client.calls) == {"ping"}


async def test_failed_poll_drops_the_connection() -> None:
    client = FakeClient({"vol": (1, 0)}, fail=True)
    session = _connected("a", client, 0.02)
    session.on_epochs(lambda s, e: None)
    await asyncio.wait_for(session._ping_until_lost(), 2.0)
    assert session.state is SessionState.CONNECTING and session.client is None
    assert session.last_error is not None and session.last_error.startswith("poll:")
    await asyncio.sleep(0)  # let the spawned close run


def _volume(sessions: list[SeSession], epoch: int) -> HostElementVolume:
    return HostElementVolume(VolumeConfig("vol", 1 << 20, 2), sessions, epoch=epoch)


async def test_newer_epoch_on_any_se_fences_an_idle_volume() -> None:
    clients = [FakeClient({"vol": (4, 0), "vol.scsi": (4, 0)}) for _ in range(3)]
    sessions = [_connected(n, c, 0.02) for n, c in zip("abc", clients, strict=True)]
    vol = _volume(sessions, epoch=4)
    for r in vol.replicas.values():  # only the poll listener: no attach, no I/O
        r.session.on_epochs(vol._epochs_polled)
    changes: list[bool] = []
    vol.on_state_change = lambda v: changes.append(v.fenced)
    # our own epoch (or an older one, or another volume's newer one): nothing happens
    for s in sessions:
        s._epochs_seen({"vol": (4, 0), "vol.scsi": (7, 0), "x": (99, 0)})
    sessions[0]._epochs_seen({"vol": (3, 0)})
    sessions[1]._epochs_seen({})
    assert not vol.fenced and changes == []
    # one SE (not a majority) at a newer epoch is enough: only a claim raises it
    clients[2].epochs["vol"] = (5, 0)
    task = asyncio.create_task(sessions[2]._ping_until_lost())
    t0 = time.monotonic()
    while not vol.fenced and time.monotonic() - t0 < 2.0:
        await asyncio.sleep(0.005)
    sessions[2].state = SessionState.CLOSED
    sessions[2]._wake.set()
    await asyncio.wait_for(task, 2.0)
    assert vol.fenced and changes == [True]
    assert vol.fence_reason == "SE c holds ballot (5, 0) > ours (4, 0)"
    assert vol.read_only and vol.status()["fenced"]
    with pytest.raises(Fenced):
        await vol.write(0, b"x" * 512)
    assert vol.latest_seq == 0  # refused before a sequence number was taken
    sessions[0]._epochs_seen({"vol": (6, 0)})  # fenced once; the first reason stays
    assert changes == [True] and "(5, 0)" in (vol.fence_reason or "")
    await vol.close()
    assert all(not s._epoch_listeners for s in sessions)


async def test_closed_volume_ignores_polls() -> None:
    sessions = [_connected(n, FakeClient(), 0.02) for n in "ab"]
    vol = _volume(sessions, epoch=2)
    vol.closed = True
    vol._epochs_polled(sessions[0], {"vol": (3, 0)})
    assert not vol.fenced


async def test_reconnect_backoff_is_capped_and_bounded() -> None:
    """A down SE is retried 0.05, 0.1, 0.2, then every 0.25 s (was up to 1 s): a restarted
    SE is re-attached within ~0.25 s of listening again, at <= ~4 attempts per second."""
    session = SeSession(SeSpec("a", "127.0.0.1", 1), b"k" * 32, ping_interval=60.0)
    attempts: list[float] = []
    up_at: list[float] = []

    async def connect() -> Any:
        attempts.append(time.monotonic())
        if not up_at:
            raise OSError("refused")
        return FakeClient()

    session._connect = connect  # type: ignore[method-assign]
    session.start()
    try:
        await asyncio.sleep(1.5)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert 4 <= len(attempts) <= 1.5 / 0.25 + 4, attempts
        assert max(gaps) < 0.25 + 0.1, gaps
        assert min(gaps[3:]) >= 0.25 - 0.02, gaps  # capped, not hammering
        up_at.append(time.monotonic())  # the SE listens again
        t0 = time.monotonic()
        while not session.connected and time.monotonic() - t0 < 2.0:
            await asyncio.sleep(0.005)
        assert session.connected
        assert time.monotonic() - up_at[0] < 0.25 + 0.1
    finally:
        await session.close()


class AttachingClient(FakeClient):
    """Enough of an SE for a volume to attach (caught up) and write; `hang` never answers."""

    def __init__(self, hang: bool = False) -> None:
        super().__init__({"vol": (1, 0)})
        self.hang = hang
        self.writes: list[int] = []

    async def open_volume(self, volume: str, size: int, block_size: int) -> VolumeState:
        return VolumeState(volume, 1, 0, size, block_size, "up")

    async def write(
        self, volume: str, epoch: int, seq: int, offset: int, data: Any, **ballot: int
    ) -> int:
        self.writes.append(seq)
        if self.hang:
            await asyncio.get_running_loop().create_future()  # an SE that stopped answering
        await asyncio.sleep(0)
        return seq


async def _attached(quorum: int, op_timeout: float) -> tuple[HostElementVolume, list[Any]]:
    clients = [AttachingClient(hang=n == "c") for n in "abc"]
    sessions = [_connected(n, c, 60.0) for n, c in zip("abc", clients, strict=True)]
    vol = HostElementVolume(
        VolumeConfig("vol", 1 << 20, quorum, op_timeout=op_timeout), sessions, epoch=1
    )
    vol.start()
    assert await vol.wait_ready(2.0)
    return vol, clients


async def test_unanswered_send_fails_its_replica_after_op_timeout() -> None:
    """The op timeout (now the volume's send watchdog, not a timer per send) still fails a
    replica whose SE accepted the connection but never answers a write."""
    vol, clients = await _attached(quorum=2, op_timeout=0.4)
    try:
        t0 = time.monotonic()
        await vol.write(0, b"a" * 512)  # a and b ack at once: Q=2
        assert time.monotonic() - t0 < 0.2
        c = vol.replicas["c"]
        assert c.state.value == "up" and len(c.inflight) == 1
        while c.state.value == "up" and time.monotonic() - t0 < 3.0:
            await asyncio.sleep(0.01)
        waited = time.monotonic() - t0
        assert c.state.value == "failed" and c.last_error == "write seq 1: no answer in 0.4s"
        assert 0.4 <= waited < 0.4 + 0.3, waited
        assert c.failures == {"lost": 1} and not c.inflight
        assert [cl.writes for cl in clients] == [[1], [1], [1]]  # c got it, never answered
        assert vol.replicas["c"].session.state is SessionState.CONNECTING  # reconnecting
        assert all(len(r.inflight) <= 1 for r in vol.replicas.values())
    finally:
        await vol.close()


async def test_unanswered_send_nacks_the_write_when_quorum_needs_it() -> None:
    vol, clients = await _attached(quorum=3, op_timeout=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(QuorumLost, match=r"c: write seq 1: no answer in 0.3s"):
            await vol.write(0, b"b" * 512)
        assert 0.3 <= time.monotonic() - t0 < 0.3 + 0.3
        assert vol.acked_seq == 0 and vol.read_only
        assert clients[2].writes == [1]
    finally:
        await vol.close()
    assert all(not r.inflight for r in vol.replicas.values())
