"""HostElementVolume: one replicated volume, a BlockDevice whose writes go to N SEs (StarFish §3).

The write path, which is the point of the whole design:
1. wait (bounded) for room in the write queue — backpressure; a laggard that keeps the oldest
   write from being evicted is declared failed after `evict_wait`;
2. with no await in between: take the next sequence number, append to the write queue, update
   the read cache, and create one send task per SE — so every SE sees writes in sequence order
   and no lock is held across the fan-out (StarFish §7);
3. answer the host once Q SEs in COUNTING states made the write durable (`QuorumWaiter`), or
   fail with `ReadOnlyError` as soon as Q acks became impossible, or `Fenced` when an SE
   reports a newer epoch (another HE took over).

Reads: the cache, else an SE that is up and has acknowledged the newest acknowledged write
touching the range (`BlockSeqMap`), divided over every such SE by outstanding reads weighted by
the smoothed RTT (`read_route`). Recovering SEs never serve reads.

Replica life (see `se_session.TRANSITIONS`) is the `ReplicaSet` the volume holds as
`replicas` (replica_set.py): on every (re)connection it asks the SE for its applied sequence
number and epoch, decides with `recovery.choose_recovery` over a snapshot, and then acts:
resend from the queue (quick) or ask the SE to pull from a peer (replay/full) while new writes
keep flowing to it. The volume keeps what concerns the volume as a whole: fencing (`_fence`,
and the epoch poll that triggers it) and the sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from ophiura.block.device import BlockDeviceError, Extent, MediumError
from ophiura.causes import describe
from ophiura.replication.he import read_route
from ophiura.replication.he.he_metrics import IoStats
from ophiura.replication.he.plant import Plant
from ophiura.replication.he.quorum import Fenced, QuorumLost, QuorumWaiter
from ophiura.replication.he.read_cache import ReadCache
from ophiura.replication.he.replica import Replica
from ophiura.replication.he.replica_set import ReplicaSet
from ophiura.replication.he.se_session import (
    COUNTING,
    SENDING,
    ReplicaEvent,
    ReplicaState,
    SeSession,
    se_errors,
)
from ophiura.replication.he.write_queue import (
    ENTRY_OVERHEAD,
    BlockSeqMap,
    OpKind,
    WriteOp,
    WriteQueue,
)

log = logging.getLogger(__name__)


class QueueFull(MediumError):
    """The write queue stayed full past the backpressure timeout (all SEs too slow)."""


class NoReadableReplica(MediumError):
    """No up SE holds the newest acknowledged data for the range."""


@dataclass(frozen=True)
class VolumeConfig:
    name: str
    size: int
    quorum: int
    block_size: int = 512
    queue_bytes: int = 64 << 20
    cache_bytes: int = 64 << 20
    cache_page: int = 4096
    max_op_bytes: int = 1 << 20  # larger host writes become several sequenced ops
    evict_wait: float = 0.5  # StarFish's "short time" before a laggard is declared failed
    backpressure_timeout: float = 30.0
    read_wait: float = 2.0
    attach_wait: float = 2.0  # a write waits this long for attaching SEs before read-only
    op_timeout: float = 10.0
    recovery_poll: float = 0.05
    recovery_stall: float = 60.0  # no progress this long: the recovery is retried
    reattach_delay: float = 0.5  # a lagging SE is re-attached after this


class Signal:
    """Wake every waiter on the next `notify()`: acks and state changes, for bounded waits."""

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    def notify(self) -> None:
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, timeout: float) -> None:
        if self._fut is None:
            self._fut = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._fut), timeout)


class HostElementVolume:
    """A replicated volume as a BlockDevice (issue 3)."""

    def __init__(
        self,
        config: VolumeConfig,
        sessions: Sequence[SeSession],
        *,
        epoch: int,
        he_id: int = 0,
        base_ballot: tuple[int, int] = (0, 0),
        next_seq: int = 1,
        epoch_base: int | None = None,
    ) -> None:
        bs = config.block_size
        if bs <= 0 or bs & (bs - 1):
            raise ValueError(f"block size {bs} is not a power of two")
        if config.size <= 0 or config.size % bs:
            raise ValueError(f"size {config.size} is not a positive multiple of {bs}")
        if not 1 <= config.quorum <= len(sessions):
            raise ValueError(f"quorum {config.quorum} needs 1..{len(sessions)} SEs")
        self.config = config
        self.name = config.name
        self._size = config.size
        self.quorum = config.quorum
        # The ballot this HE owns the volume by, and its base: every SE it attaches is told
        # both (`ReplicaSet.attach`), every write and owner read carries them.
        self.epoch = epoch
        self.he_id = he_id
        self.base = next_seq - 1
        self.base_ballot = base_ballot  # the ballot that wrote seq `base` in our history
        self.epoch_base = epoch_base
        self.queue = WriteQueue(config.queue_bytes, next_seq)
        self.seqmap = BlockSeqMap()
        self.cache = ReadCache(config.cache_bytes, max(config.cache_page, bs))
        self._next_seq = next_seq
        self.acked_seq = next_seq - 1  # highest seq acknowledged to the host
        self._pending: dict[int, QuorumWaiter] = {}
        self._signal = Signal()
        self.replicas = ReplicaSet(
            self,
            sessions,
            self._signal,
            fence=self._fence,
            resend=self._resend,
            spawn=self._spawn,
            changed=self._state_changed,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # set by the first send
        self._tick = 0  # advanced by `_send_watchdog`; stamps each send
        self.fenced = False
        self.fence_reason: str | None = None
        self.closed = False
        self.first_io_at: float | None = None
        self.writes = 0
        self.reads = 0
        self.io = IoStats()  # host-visible latency and bytes (he_metrics.py)
        self.on_state_change: Callable[[HostElementVolume], None] | None = None
        self.plant: Plant | None = None  # test only (he/plant.py): set by the HostElement
        self._stale, self._se_error, self._transport = se_errors()

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe to the sessions: each connected SE is attached (and recovered) now."""
        for r in self.replicas.values():
            r.session.on_lost(self.replicas.session_lost)
            r.session.on_epochs(self._epochs_polled)
            r.session.on_connected(self.replicas.attach)

    async def wait_ready(self, timeout: float) -> bool:
        """Until Q SEs can take writes (True), or no SE is still attaching, or timeout."""
        deadline = time.monotonic() + timeout
        while self.counting() < self.quorum:
            left = deadline - time.monotonic()
            settled = not any(
                r.state is ReplicaState.CONNECTING and r.session.connected
                for r in self.replicas.values()
            )
            if left <= 0 or (settled and not self._recovering()):
                break
            await self._signal.wait(min(left, 0.05))
        return self.counting() >= self.quorum

    def _recovering(self) -> bool:
        return any(
            r.state in SENDING and r.state is not ReplicaState.UP for r in self.replicas.values()
        )

    async def close(self) -> None:
        self.closed = True
        for r in self.replicas.values():
            r.session.remove_listeners(self)  # the epoch poll
            r.session.remove_listeners(self.replicas)  # attach and loss
            if r.state is not ReplicaState.CLOSED:
                self.replicas.transition(r, ReplicaEvent.CLOSE)
        tasks = list(self._tasks)
        for r in self.replicas.values():
            tasks.extend(entry[1] for entry in r.inflight)
            r.inflight.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.cache.clear()
        self._signal.notify()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _state_changed(self) -> None:
        if self.on_state_change is not None:
            self.on_state_change(self)

    # ---- fencing: another HE owns the volume ---------------------------------------------
    def _fence(self, why: str) -> None:
        if self.fenced:
            return
        self.fenced = True
        self.fence_reason = why
        self.cache.clear()  # never served again: the new owner may already have written
        log.error("%s: FENCED, no more writes or reads will be served: %s", self.name, why)
        for waiter in list(self._pending.values()):
            waiter.fence(why)
        self._signal.notify()
        self._state_changed()

    def _epochs_polled(self, session: SeSession, ballots: dict[str, tuple[int, int]]) -> None:
        """The session's periodic poll: a newer ballot on ANY SE proves another HE claimed
        this volume (`takeover.claim_volume` raises it before anything else), so fence at once;
        an idle HE would otherwise learn it only when its next write is refused."""
        ballot = ballots.get(self.name)
        if ballot is None or ballot <= (self.epoch, self.he_id) or self.fenced or self.closed:
            return
        self._fence(f"SE {session.name} holds ballot {ballot} > ours {(self.epoch, self.he_id)}")

    # ---- BlockDevice ---------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def thin(self) -> bool:
        return True

    @property
    def read_only(self) -> bool:
        return self.fenced or self.counting() < self.quorum

    @property
    def latest_seq(self) -> int:
        return self._next_seq - 1

    def counting(self) -> int:
        n = 0
        for r in self.replicas.values():
            if r.state in COUNTING:
                n += 1
        return n

    def _check(self, offset: int, length: int) -> None:
        bs = self.config.block_size
        if offset < 0 or length < 0 or offset % bs or length % bs or offset + length > self._size:
            raise BlockDeviceError(
                f"{self.name}: bad range offset={offset} length={length} size={self._size}"
            )

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> None:
        """Durable on Q SEs when this returns, so `fua` needs nothing more."""
        self._check(offset, len(data))
        t0 = perf_counter()
        step = self.config.max_op_bytes
        if len(data) <= step:
            # bytes are immutable: queued and sent as they are; a mutable buffer is copied
            # (the caller may reuse it once this returns, while a laggard still needs it)
            op_data = data if type(data) is bytes else bytes(data)
            await self._submit(OpKind.WRITE, offset, len(op_data), op_data)
            self.io.write_lat.observe(perf_counter() - t0)
            self.io.write_bytes += len(op_data)
            return
        view = memoryview(data)
        await asyncio.gather(
            *(
                self._submit(
                    OpKind.WRITE, offset + i, len(view[i : i + step]), bytes(view[i : i + step])
                )
                for i in range(0, len(view), step)
            )
        )
        self.io.write_lat.observe(perf_counter() - t0)
        self.io.write_bytes += len(view)

    async def flush(self) -> None:
        """Nothing to do: a write completes only once Q SEs made it durable."""

    async def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)
        await self._submit(OpKind.TRIM, offset, length, None)

    async def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        await self._submit(OpKind.ZERO, offset, length, None)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        """The HE keeps no allocation map: report the range mapped (always correct to say)."""
        self._check(offset, length)
        return [Extent(offset, length, True)] if length else []

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        if self.fenced:  # another HE owns the volume: what we hold may be stale
            self.cache.clear()
            raise Fenced(f"{self.name}: fenced, reads refused: {self.fence_reason}")
        if length == 0:
            return b""
        t0 = perf_counter()
        cache = self.cache
        hit = cache.lookup(offset, length)
        if hit is not None:
            self._served()
            self.io.read_lat.observe(perf_counter() - t0)
            self.io.read_bytes += length
            return hit
        if cache.enabled and length <= self.config.max_op_bytes:
            fetch_off, fetch_len = cache.page_range(offset, length, self._size)
            live = [r.tracker.contiguous for r in self.replicas.values() if r.state in SENDING]
            cache.settle(max(self.queue.evicted_upto, min(live, default=0)))
        else:
            fetch_off, fetch_len = offset, length
        pending = cache.begin_read(fetch_off, fetch_len)
        try:
            applied, data = await self._read_from_se(fetch_off, fetch_len)
        except BaseException:
            cache.abandon(pending)
            raise
        if self.fenced:  # fenced while the read was at the SE
            cache.abandon(pending)
            cache.clear()
            raise Fenced(f"{self.name}: fenced, reads refused: {self.fence_reason}")
        cache.fill(pending, fetch_off, data, applied)
        self._served()
        self.io.read_lat.observe(perf_counter() - t0)
        self.io.read_bytes += length
        start = offset - fetch_off
        return bytes(data[start : start + length])

    def _served(self) -> None:
        if self.first_io_at is None:
            self.first_io_at = time.monotonic()

    # ---- reads ---------------------------------------------------------------------------
    def read_candidates(self, required: int) -> list[Replica]:
        """Up SEs holding every acknowledged write <= required, best first (`read_route`)."""
        return sorted(read_route.eligible(self.replicas.values(), required), key=read_route.cost)

    async def _read_from_se(self, offset: int, length: int) -> tuple[int, bytes]:
        """(the SE's applied seq when it read, data) from an SE holding every acknowledged
        write to the range (`read_route`: reads are divided over every such SE); one whose
        answer says otherwise is not asked again."""
        required = self.seqmap.required(offset, length)
        deadline = time.monotonic() + self.config.read_wait
        failures: list[str] = []
        behind: set[str] = set()
        for _ in range(4 * len(self.replicas) + 4):
            r = read_route.best(
                c
                for c in read_route.eligible(self.replicas.values(), required)
                if c.name not in behind
            )
            if r is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await self._signal.wait(min(left, 0.05))
                continue
            inc, client = r.incarnation, r.client
            assert client is not None  # eligible: attached
            r.reading += 1
            try:
                self.reads += 1
                applied, data = await client.read_with_seq(
                    self.name, offset, length, ballot=(self.epoch, self.he_id)
                )
            except self._stale as exc:
                self._fence(f"SE {r.name}: {exc}")
                raise Fenced(f"{self.name}: fenced, reads refused: {self.fence_reason}") from exc
            except self._transport as exc:
                why = f"read {offset}+{length}: {describe(exc)}"
                failures.append(f"{r.name}: {why}")
                self.replicas.replica_lost(r, inc, why)
                continue
            finally:
                r.reading -= 1
            if len(data) != length:
                why = f"short read {len(data)} of {length} bytes"
                failures.append(f"{r.name}: {why}")
                self.replicas.replica_lost(r, inc, why)
                continue
            if applied < required:
                failures.append(f"{r.name}: applied seq {applied} < {required}")
                behind.add(r.name)
                continue
            r.reads += 1
            return applied, bytes(data)
        raise NoReadableReplica(
            f"{self.name}: no up SE holds seq {required} for {offset}+{length}"
            + (f" ({'; '.join(failures)})" if failures else "")
        )

    # ---- writes --------------------------------------------------------------------------
    async def _submit(self, kind: OpKind, offset: int, length: int, data: bytes | None) -> None:
        if self.closed:
            raise BlockDeviceError(f"{self.name}: volume is closed")
        if self.fenced or self.counting() < self.quorum:
            await self._wait_writable()  # returns only when writable
        cost = (len(data) if data is not None else 0) + ENTRY_OVERHEAD  # == WriteOp.cost
        if not self.queue.fits(cost):
            await self._make_room(cost)
        # ---- no await from here to the sends: sequence order == send order on every SE ----
        n = self._raise_if_unwritable()
        seq = self._next_seq
        self._next_seq += 1
        op = WriteOp(seq, kind, offset, length, data)
        cache_it = True
        if self.plant is not None:  # test only: he/plant.py
            if kind is OpKind.WRITE and self.plant.drop_data():
                op = WriteOp(seq, OpKind.ZERO, offset, length, None)
                data = None
            sub_page = length < self.cache.page_size
            cache_it = not self.plant.skip_cache(sub_page, self.cache.holds(offset, length))
        self.queue.append(op)
        if cache_it:
            self.cache.write(seq, offset, data, length)
        waiter = QuorumWaiter(seq, self.quorum, outstanding=n)
        self._pending[seq] = waiter
        for r in self.replicas.values():
            state = r.state
            if state in SENDING:
                self._send(r, op, waiter if state in COUNTING else None)
        try:
            await waiter.future
        except BaseException:  # failed, fenced, or cancelled (ABORT TASK, LUN RESET)
            if cache_it:
                self.cache.failed(seq, offset, length)
            raise
        finally:
            self._pending.pop(seq, None)
            self._signal.notify()
        self.seqmap.record(offset, length, seq)
        if cache_it:
            self.cache.acked(seq)  # with the seqmap: from here a read can only fetch it
        if seq > self.acked_seq:
            self.acked_seq = seq
        self.writes += 1
        self._served()

    def _raise_if_unwritable(self) -> int:
        """The number of COUNTING replicas, if writable; else Fenced or QuorumLost."""
        if self.fenced:
            raise Fenced(f"{self.name}: fenced: {self.fence_reason}")
        n = self.counting()
        if n < self.quorum:
            raise QuorumLost(
                f"{self.name}: read-only: {n} of {len(self.replicas)} SEs up, quorum is "
                f"{self.quorum}"
            )
        return n

    async def _wait_writable(self) -> None:
        """Fail fast when read-only, except while SEs are still attaching (just connected)."""
        deadline = time.monotonic() + self.config.attach_wait
        while self.counting() < self.quorum and not self.fenced:
            attaching = any(
                r.state is ReplicaState.CONNECTING and r.client is not None
                for r in self.replicas.values()
            )
            left = deadline - time.monotonic()
            if not attaching or left <= 0:
                break
            await self._signal.wait(min(left, 0.05))
        self._raise_if_unwritable()

    async def _make_room(self, cost: int) -> None:
        """Backpressure (StarFish §3): evict what every live SE acked; throttle; fail laggards."""
        queue = self.queue
        deadline = time.monotonic() + self.config.backpressure_timeout
        blocked_since: float | None = None
        while not queue.fits(cost):
            live = {
                r.name: r.tracker.contiguous for r in self.replicas.values() if r.state in SENDING
            }
            if not live:
                self._raise_if_unwritable()
                raise QuorumLost(f"{self.name}: no live SE")
            evicted = queue.evict(min(live.values()))
            if evicted:
                self.seqmap.forget(evicted)
                blocked_since = None
                continue
            now = time.monotonic()
            if now >= deadline:
                raise QueueFull(
                    f"{self.name}: write queue full ({queue.used}/{queue.capacity} bytes) for "
                    f"{self.config.backpressure_timeout:.0f}s; blocked by {queue.blockers(live)}"
                )
            oldest = queue.oldest()
            assert oldest is not None
            complete = oldest.seq not in self._pending  # acknowledged (or failed) to the host
            if complete:
                if blocked_since is None:
                    blocked_since = now
                elif now - blocked_since >= self.config.evict_wait:
                    for name in queue.blockers(live):
                        r = self.replicas[name]
                        why = (
                            f"lagging: seq {oldest.seq} unacknowledged for "
                            f"{self.config.evict_wait:.2f}s with the write queue full"
                        )
                        log.warning("%s/%s: declared failed: %s", self.name, name, why)
                        self.replicas.fail(r, ReplicaEvent.LAGGING, why)
                        self._spawn(
                            self.replicas.reattach_later(r, r.incarnation), f"reattach-{name}"
                        )
                    blocked_since = None
                    continue
            await self._signal.wait(0.02)

    def _send(
        self, r: Replica, op: WriteOp, waiter: QuorumWaiter | None, *, defer: bool = False
    ) -> None:
        """Put one op on the wire to one SE now, in the caller's turn: sends made in seq order
        reach each SE in seq order. No task per SE and op (three tasks and a loop turn per
        host write before any request left): the reply future gets a done callback (`_sent`).

        `defer=True` (recovery: the recover command, sent by a task's first step, must reach
        the SE first) queues the send with `call_soon`, behind that step; while a replica has
        deferred sends queued, later sends to it are queued too, so the order holds.

        The op timeout is not an `asyncio.timeout` per send (a timer armed and cancelled per
        SE per write: a fifth of the HE's own CPU per write) but `r.inflight`, checked by
        `_send_watchdog`.
        """
        if self._loop is None:
            self._start_send_watchdog()
        if defer or r.deferred:
            r.deferred += 1
            self._loop.call_soon(  # type: ignore[union-attr]
                self._send_deferred, r, r.incarnation, r.client, op, waiter
            )
            return
        self._send_now(r, r.incarnation, r.client, op, waiter)

    def _resend(self, r: Replica, op: WriteOp) -> None:
        """A recovery's resend of a queued op: counted by no waiter, queued behind the recover
        command (`ReplicaSet`'s `resend`)."""
        self._send(r, op, None, defer=True)

    def _send_deferred(
        self, r: Replica, inc: int, client: Any, op: WriteOp, waiter: QuorumWaiter | None
    ) -> None:
        r.deferred -= 1
        if self.closed:
            return
        self._send_now(r, inc, client, op, waiter)

    def _send_now(
        self, r: Replica, inc: int, client: Any, op: WriteOp, waiter: QuorumWaiter | None
    ) -> None:
        inflight = r.inflight
        while inflight and inflight[0][1].done():
            inflight.popleft()
        try:
            if not hasattr(client, "write_nowait"):  # a client with only the coroutines
                fut = asyncio.ensure_future(self._send_coro(client, op))
            elif op.kind is OpKind.WRITE:
                fut = client.write_nowait(
                    self.name,
                    self.epoch,
                    op.seq,
                    op.offset,
                    op.data,
                    he_id=self.he_id,
                    base=self.base,
                )
            else:
                fut = client.trim_nowait(
                    self.name,
                    self.epoch,
                    op.seq,
                    op.offset,
                    op.length,
                    op.kind is OpKind.ZERO,
                    he_id=self.he_id,
                    base=self.base,
                )
        except self._transport as exc:  # the connection is gone: handled in a later turn
            fut = self._loop.create_future()  # type: ignore[union-attr]
            fut.set_exception(exc)
        fut.add_done_callback(functools.partial(self._sent, r, inc, client, op, waiter))
        inflight.append((self._tick, fut, inc, op.seq, waiter))

    def _start_send_watchdog(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn(self._send_watchdog(), "send-watchdog")

    async def _send_watchdog(self) -> None:
        """Fail a send that got no answer within `op_timeout` as the per-send timeout did:
        the task is cancelled, its waiter nacked, the replica lost (and reconnected). Sends
        are stamped with a tick counter, so one fires between op_timeout and op_timeout plus
        one tick (10 s: 10.0 to ~10.25 s) after it started; never earlier."""
        tick = min(0.25, self.config.op_timeout / 8)
        limit = math.ceil(self.config.op_timeout / tick)
        while not self.closed:
            await asyncio.sleep(tick)
            self._tick += 1
            for r in self.replicas.values():
                inflight = r.inflight
                while inflight:
                    sent_tick, task, inc, seq, waiter = inflight[0]
                    if not task.done():
                        if self._tick - sent_tick - 1 < limit:
                            break
                        inflight.popleft()
                        task.cancel()
                        why = f"write seq {seq}: no answer in {self.config.op_timeout:g}s"
                        try:
                            if waiter is not None:
                                waiter.nack(f"{r.name}: {why}")
                            self.replicas.replica_lost(r, inc, why)
                        except Exception:  # the watchdog must outlive a bug in one replica
                            log.exception("%s/%s: failing a timed-out send", self.name, r.name)
                        continue
                    inflight.popleft()

    async def _send_coro(self, client: Any, op: WriteOp) -> None:
        ballot = {"he_id": self.he_id, "base": self.base}
        if op.kind is OpKind.WRITE:
            await client.write(self.name, self.epoch, op.seq, op.offset, op.data, **ballot)
        else:
            zero = op.kind is OpKind.ZERO
            await client.trim(
                self.name, self.epoch, op.seq, op.offset, op.length, zero=zero, **ballot
            )

    def _sent(
        self,
        r: Replica,
        inc: int,
        client: Any,
        op: WriteOp,
        waiter: QuorumWaiter | None,
        fut: asyncio.Future[Any],
    ) -> None:
        """The SE answered one send (or the send failed): count the ack, or fail the replica."""
        if fut.cancelled():  # timed out (`_send_watchdog` handled it) or the volume closed
            return
        try:
            exc = fut.exception()
            if exc is None and hasattr(client, "check_ack"):
                client.check_ack(fut.result(), op)
        except BaseException as err:  # the reply was an error: raised by check_ack
            exc = err
        if exc is not None:
            if isinstance(exc, self._stale):
                why = f"SE {r.name} holds a newer epoch ({getattr(exc, 'current_epoch', '?')})"
                if waiter is not None:
                    waiter.fence(why)
                self._fence(why)
                return
            if isinstance(exc, self._transport):
                why = f"write seq {op.seq}: {describe(exc)}"
                if waiter is not None:
                    waiter.nack(f"{r.name}: {why}")
                self.replicas.replica_lost(r, inc, why)
                return
            log.error("%s/%s: send of seq %s failed", self.name, r.name, op.seq, exc_info=exc)
            if waiter is not None:
                waiter.nack(f"{r.name}: {exc}")
            return
        if waiter is not None:
            waiter.ack()
        if r.incarnation == inc:
            r.tracker.ack(op.seq)
            if r.state is ReplicaState.RECOVERING_QUICK and r.tracker.contiguous >= r.target:
                self.replicas.recovered(r)
        self._signal.notify()

    # ---- admin ---------------------------------------------------------------------------
    async def resize(self, new_size: int) -> None:
        """Grow (or shrink) on every connected SE; the SCSI layer announces 2A/09."""
        bs = self.config.block_size
        if new_size <= 0 or new_size % bs:
            raise ValueError(f"size {new_size} is not a positive multiple of {bs}")
        shrink = new_size < self._size
        if shrink:
            self.cache.clear()
        targets = [r for r in self.replicas.values() if r.state in SENDING and r.client]
        if len(targets) < self.quorum:
            raise QuorumLost(f"{self.name}: resize needs {self.quorum} SEs up")
        results = await asyncio.gather(
            *(r.client.resize_volume(self.name, new_size) for r in targets), return_exceptions=True
        )
        errors = [
            f"{r.name}: {e}"
            for r, e in zip(targets, results, strict=True)
            if isinstance(e, BaseException)
        ]
        if len(errors) > len(targets) - self.quorum:
            raise MediumError(f"{self.name}: resize failed on {errors}")
        self._size = new_size
        self.config = _replace_size(self.config, new_size)
        if shrink:  # again: reads during the resize may have filled pages now beyond the end
            self.cache.clear()

    def status(self) -> dict[str, Any]:
        ses = []
        for r in self.replicas.values():
            done, total = r.progress
            if r.state is ReplicaState.RECOVERING_QUICK:
                done = max(0, r.tracker.contiguous - r.recovery_start)
            ses.append(
                {
                    "name": r.name,
                    "state": r.state.value,
                    "acked_seq": r.tracker.contiguous,
                    "se_applied_seq": r.se_applied,
                    "se_epoch": r.se_epoch,
                    "recovery": r.last_recovery,
                    "recovery_target": r.target,
                    "progress": [done, total],
                    "recoveries": dict(r.recoveries),
                    "failures": dict(r.failures),
                    "history": list(r.history),
                    "rtt_ms": None if r.session.rtt == float("inf") else r.session.rtt * 1e3,
                    "reads": r.reads,
                    "last_error": r.last_error,
                }
            )
        return {
            "name": self.name,
            "size": self._size,
            "block_size": self.config.block_size,
            "quorum": self.quorum,
            "epoch": self.epoch,
            "he_id": f"{self.he_id:x}",
            "base_seq": self.base,
            "latest_seq": self.latest_seq,
            "acked_seq": self.acked_seq,
            "read_only": self.read_only,
            "fenced": self.fenced,
            "fence_reason": self.fence_reason,
            "queue": {
                "used": self.queue.used,
                "capacity": self.queue.capacity,
                "fill": round(self.queue.fill, 4),
                "entries": len(self.queue),
                "first_seq": self.queue.first_seq,
            },
            "cache": {
                "capacity": self.cache.max_pages * self.cache.page_size,
                "used": self.cache.used,
                "hits": self.cache.stats.hits,
                "misses": self.cache.stats.misses,
                "hit_ratio": round(self.cache.stats.hit_ratio, 4),
            },
            "ses": ses,
        }


def _replace_size(config: VolumeConfig, size: int) -> VolumeConfig:
    from dataclasses import replace

    return replace(config, size=size)
