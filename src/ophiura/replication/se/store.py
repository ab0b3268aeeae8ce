"""One volume on a storage element: in-order apply, fencing, and the state it reports.

Why it is built this way:
- Writes are applied strictly in sequence order (StarFish §3): an out-of-order arrival waits in
  a bounded buffer; a full buffer is an error the HE answers with recovery, never unbounded growth.
- Every disk action of a volume runs on one dedicated thread, in the order the event loop queued
  it (`disk`). That single order is what makes "recovered data never overwrites a newer
  current write" checkable on the loop: whatever the loop queued first reaches the disk first.
- Group commit: all writes that arrived while the previous batch was on disk go down together
  (bounded in bytes, so a batch never laps the replay log it is written to), then every write of
  the batch is acknowledged.
- After a disk error nothing more is committed: a later batch could otherwise succeed and
  acknowledge writes above a hole (an ack of seq s promises every write <= s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.block.io_threads import IoThreads
from ophiura.replication.se import disk as se_disk
from ophiura.replication.se.disk import Op, VolumeDisk
from ophiura.replication.se.lifecycle import (
    NOT_READABLE,
    VolEvent,
    VolState,
    loaded_event,
    next_state,
)
from ophiura.replication.se.replay_log import LogRecord
from ophiura.replication.wire.messages import NO_BASE, ErrorCode

__all__ = [
    "MAX_BUFFERED_BYTES",
    "MAX_BUFFERED_OPS",
    "VOLUME_NAME",
    "Op",
    "Recovery",
    "StaleEpochError",
    "Volume",
    "VolumeError",
]

log = logging.getLogger(__name__)

VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_BUFFERED_OPS = 4096
MAX_BUFFERED_BYTES = 64 << 20
CLOSE_DRAIN_TIMEOUT = 10.0  # seconds a clean stop waits for queued writes to reach the disk
REOPEN_INTERVAL = 2.0  # seconds between attempts to re-derive a volume that failed on disk


class VolumeError(Exception):
    """A volume operation failed; `code` is the protocol ErrorCode sent back to the client."""

    def __init__(self, message: str, code: int = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


class StaleEpochError(VolumeError):
    """The request's ballot `(epoch, he_id)` is older than the volume's: its sender is fenced."""

    def __init__(self, volume: str, presented: tuple[int, int], current: tuple[int, int]) -> None:
        super().__init__(f"volume {volume}: ballot {_fmt(presented)} is older than {_fmt(current)}")
        self.current = current


def _fmt(ballot: tuple[int, int]) -> str:
    return f"({ballot[0]}, {ballot[1]:x})"


@dataclass
class Recovery:
    """In-memory state of a running or interrupted recovery (see recovery)."""

    kind: str  # "replay" | "full"
    upto: int
    peer: tuple[str, str, int]
    rate: int
    cursor: int  # replay: highest seq recovered; full: bytes copied
    done: int = 0
    total: int = 0
    touched: dict[int, int] = field(default_factory=dict)  # block -> seq of newest current write
    upto_ballot: tuple[int, int] = (0, 0)  # the ballot that wrote `upto` ((0, 0): unknown)
    prefix_ballot: tuple[int, int] = (0, 0)  # replay: the ballot that wrote the durable prefix
    cursor_ballot: tuple[int, int] = (0, 0)  # replay: the ballot that wrote seq `cursor`
    task: asyncio.Task[None] | None = None
    error: str = ""


class Volume:
    """One volume. Create with `await Volume.open(...)`; `close()` when done."""

    def __init__(self, name: str, vdir: Path, log_path: Path, log_size: int, reads: IoThreads):
        self.name = name
        self.dir = vdir
        self._reads = reads
        self._thread = IoThreads(1, name=f"vol-{name}")
        self.disk = VolumeDisk(name, vdir, log_path, log_size)
        # A batch never holds more log bytes than a quarter of the log: a larger one could
        # overwrite its own first records before the data file holds them.
        self._batch_bytes = max(1, self.disk.log.capacity // 4)
        self.size = 0
        self.block_size = 512
        # The ballot (epoch, he_id) this SE obeys, and its base: every seq <= base predates
        # the ballot; every seq above it held here was written under it (`adopt` truncates
        # the rest). NO_BASE: claimed by a new owner that has not fixed its base yet.
        self.epoch = 0
        self.he_id = 0
        self.base = 0
        self.next_seq = 1  # the next current write this volume can apply
        self.durable_seq = 0  # highest current write that is durable
        self.top_ballot: tuple[int, int] = (0, 0)  # the ballot that wrote durable_seq
        self.prefix_seq = 0  # every write <= this is admitted here (== next_seq - 1 when up)
        self.life = VolState.UP  # lifecycle.TRANSITIONS: changed by `transition` only
        self.detail = ""
        self.recovery: Recovery | None = None
        self._buffer: dict[int, Op] = {}
        self._buffer_bytes = 0
        self._queue: list[Any] = []
        self._wake = asyncio.Event()
        self._dup_waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._prefix_waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._meta_dirty = False
        self._checkpoint: asyncio.TimerHandle | None = None
        self.recovery_meta: dict[str, Any] | None = None
        self.recovery_lock = asyncio.Lock()  # serialises RECOVER handling (recovery.start)
        self._failed_at = 0.0  # monotonic time of the disk error (see may_reopen)
        self._closed = False
        self.commit_batches = 0  # disk commits (each one log write and sync), for /metrics

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        name: str,
        vdir: Path,
        log_path: Path,
        log_size: int,
        reads: IoThreads,
        create: tuple[int, int] | None = None,
    ) -> Volume:
        """Load the volume in `vdir` or, with `create=(size, block_size)`, make a new one."""
        self = cls(name, vdir, log_path, log_size, reads)
        try:
            loaded = await self._thread.run(self.disk.open, create)
        except BaseException:
            self._thread.shutdown()
            self.disk.shutdown()
            raise
        meta = loaded.meta
        self.size, self.block_size = meta.size, meta.block_size
        self.epoch, self.he_id, self.base = meta.epoch, meta.he_id, meta.base_seq
        applied = loaded.applied
        self.prefix_seq = applied
        top = loaded.current_top
        self.next_seq = top + 1 if top > applied else applied + 1
        self.durable_seq = max(top, applied)
        self.top_ballot = loaded.top_ballot
        if meta.recovery:
            self.transition(loaded_event(str(meta.recovery.get("kind", "full"))))
            self.recovery_meta = meta.recovery
            self.detail = f"{meta.recovery['kind']} recovery was interrupted by a restart"
        self._committer = asyncio.create_task(self._commit_loop(), name=f"commit-{name}")
        return self

    # -- commit loop (event loop side) -------------------------------------------------------

    def _meta_updates(self) -> dict[str, Any]:
        updates: dict[str, Any] = {
            "epoch": self.epoch,
            "he_id": self.he_id,
            "base_seq": self.base,
            "size": self.size,
        }
        if self.recovery is None and self.life is VolState.UP:
            updates["applied_seq"] = self.next_seq - 1
        return updates

    def _take_batch(self) -> list[Any]:
        """The next batch: queued items in order, at most `_batch_bytes` of log records."""
        queue = self._queue
        total = count = 0
        for it in queue:
            size = len(it.data) if type(it) is Op else 0
            if count and total + size > self._batch_bytes:
                break
            total += size
            count += 1
        if count == len(queue):
            self._queue = []
            return queue
        batch = queue[:count]
        del queue[:count]
        return batch

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue or self._meta_dirty:
                batch = self._take_batch()
                self._meta_dirty = False
                if self.life is VolState.FAILED:
                    self._fail(batch, VolumeError(self.detail, ErrorCode.VOLUME_FAILED))
                    continue
                updates = self._meta_updates()
                try:
                    results = await self._thread.run(self.disk.commit, batch, updates)
                except Exception as exc:
                    self._fail(batch, exc)
                    continue
                self.commit_batches += 1
                top = 0
                for it in batch:
                    if type(it) is Op:
                        top = it.seq
                        top_ballot = (it.epoch, it.he_id)
                        if it.fut is not None and not it.fut.done():
                            it.fut.set_result(it.seq)
                for fut, value, exc in results:
                    if fut.done():
                        continue
                    if exc is None:
                        fut.set_result(value)
                    else:
                        fut.set_exception(exc)
                if top:
                    self.durable_seq = top
                    self.top_ballot = top_ballot
                    if self._dup_waiters:
                        self._dup_waiters = self._release(self._dup_waiters, top)
                if self.disk.meta_pending and self._checkpoint is None:
                    # writes stopped before a checkpoint: take it once the volume is idle
                    self._checkpoint = asyncio.get_running_loop().call_later(
                        se_disk.CHECKPOINT_INTERVAL, self._checkpoint_due
                    )

    def _checkpoint_due(self) -> None:
        self._checkpoint = None
        if self.disk.meta_pending:
            self.mark_meta_dirty()

    @staticmethod
    def _release(waiters: list[tuple[int, asyncio.Future[int]]], upto: int) -> list[Any]:
        keep = []
        for seq, fut in waiters:
            if seq <= upto:
                if not fut.done():
                    fut.set_result(seq)
            else:
                keep.append((seq, fut))
        return keep

    def _fail(self, batch: list[Any], exc: Exception) -> None:
        """A disk error: this SE can no longer vouch for the volume. Restart re-derives it.

        Everything still queued fails with the batch: committing it later would acknowledge
        writes above the ones this batch lost.
        """
        if self.life is not VolState.FAILED:
            why = f"volume {self.name} failed on disk: {exc}"
            log.error("%s", why)
            self.transition(VolEvent.DISK_ERROR)
            self.detail = why
            self._failed_at = time.monotonic()
        err = VolumeError(self.detail, ErrorCode.VOLUME_FAILED)
        queued, self._queue = self._queue, []
        items = batch + queued
        waiters = [it.fut for it in items if type(it) is Op]
        waiters += [it[2] for it in items if type(it) is not Op and it[0] == "call"]
        waiters += [f for _, f in self._dup_waiters + self._prefix_waiters]
        waiters += [op.fut for op in self._buffer.values()]
        self._dup_waiters, self._prefix_waiters = [], []
        self._buffer.clear()
        self._buffer_bytes = 0
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_exception(err)

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on the volume thread after everything queued so far."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:  # a failed volume kept after a failed reopen
            fut.set_exception(VolumeError(self.detail or "volume closed", ErrorCode.VOLUME_FAILED))
            return fut
        self._queue.append(("call", fn, fut))
        self._wake.set()
        return fut

    def queue_recovered(self, kind: int, offset: int, length: int, data: bytes) -> None:
        """Recovered data: to the data file only (not logged), in queue order."""
        self._queue.append(("rec", kind, offset, length, data))
        self._wake.set()

    def mark_meta_dirty(self) -> None:
        self._meta_dirty = True
        self._wake.set()

    # -- sequenced writes --------------------------------------------------------------------

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VolumeError(
                f"volume {self.name}: range {offset}+{length} outside size {self.size}",
                ErrorCode.OUT_OF_RANGE,
            )

    @property
    def ballot(self) -> tuple[int, int]:
        return (self.epoch, self.he_id)

    def adopt(self, epoch: int, he_id: int, base: int) -> bool:
        """Take the ballot (epoch, he_id) if it is strictly greater, and fix its base.

        Adopted durably by the commit that answers the request (the slot is written before
        the reply). Equal ballots come from one owner only: an SE never adopts an equal one
        from "someone else", because the he_id is part of the ballot. A base fixed once is
        final for the ballot; fixing it truncates what this SE holds above it (`_establish`).
        True when it just did (the volume now waits for a full copy).
        """
        ballot = (epoch, he_id)
        if ballot < self.ballot:
            raise StaleEpochError(self.name, ballot, self.ballot)
        if ballot > self.ballot:
            self.epoch, self.he_id, self.base = epoch, he_id, NO_BASE
            self._meta_dirty = True
            self._fence_buffer()
        if base == NO_BASE:
            return False
        if self.base == NO_BASE:
            return self._establish(base)
        if base != self.base:
            raise VolumeError(
                f"volume {self.name}: ballot {_fmt(ballot)} has base {self.base}, not {base}",
                ErrorCode.NOT_OWNER,
            )
        return False

    def check_owner(self, epoch: int, he_id: int) -> None:
        """A request only the current owner may make (RECOVER, a fenced READ)."""
        ballot = (epoch, he_id)
        if ballot < self.ballot:
            raise StaleEpochError(self.name, ballot, self.ballot)
        if ballot > self.ballot:
            raise VolumeError(
                f"volume {self.name}: ballot {_fmt(ballot)} is not adopted here "
                f"(current {_fmt(self.ballot)}): claim it first",
                ErrorCode.NOT_OWNER,
            )

    def _establish(self, base: int) -> bool:
        """Fix the new ballot's base. Everything admitted here above it came from an older
        ballot and was never re-issued by the new owner: it must go. Those writes are already
        in the data file, so the volume cannot keep its prefix either: it waits for a full
        copy (recovery state persisted before the reply, like the ballot)."""
        self.base = base
        self._meta_dirty = True
        top = self.next_seq - 1
        if top <= base or self.life is VolState.FAILED:
            return False
        why = (
            f"diverged: seqs {base + 1}..{top} came from an older ballot; "
            f"the owner's base is {base}: full recovery needed"
        )
        log.warning("volume %s: %s", self.name, why)
        rec = self.recovery
        if rec is not None and rec.task is not None:
            rec.task.cancel()
        self.recovery = None
        stale = StaleEpochError(self.name, (0, 0), self.ballot)
        for op in self._buffer.values():
            if op.fut is not None and not op.fut.done():
                op.fut.set_exception(stale)
        self._buffer.clear()
        self._buffer_bytes = 0
        queued = [it.fut for it in self._queue if type(it) is Op and it.seq > base]
        for _, fut in self._dup_waiters + self._prefix_waiters:
            queued.append(fut)
        for fut in queued:  # never acknowledged: the truncation below drops them
            if fut is not None and not fut.done():
                fut.set_exception(VolumeError(why, ErrorCode.NOT_HELD))
        self._dup_waiters, self._prefix_waiters = [], []
        self.next_seq = base + 1
        self.durable_seq = min(self.durable_seq, base)
        self.prefix_seq = 0
        self.transition(VolEvent.DIVERGED)
        self.detail = why
        self.recovery_meta = {"kind": "full", "upto": base, "peer": ["", "", 0], "cursor": 0}
        state = dict(self.recovery_meta)
        disk = self.disk

        def truncate() -> None:
            disk.reset_log()  # the old ballot's records are never replayed or served
            disk.write_meta(recovery=state, applied_seq=0)

        self.call(truncate)
        return True

    def _holds(self, seq: int) -> bool | None:
        """For a resent seq below `next_seq`: True if this SE holds it (durable or on its way),
        False if it never will without a recovery, None if a running recovery brings it."""
        if seq <= self.prefix_seq:
            return True
        rec = self.recovery
        if rec is not None:
            return None if seq <= rec.upto else True
        if self.recovery_meta is not None:
            return seq > int(self.recovery_meta.get("upto", 0))
        return True

    def submit(self, op: Op) -> asyncio.Future[int]:
        """Queue a write; the future resolves with its seq once durable here."""
        if self.life is VolState.FAILED:
            raise VolumeError(self.detail, ErrorCode.VOLUME_FAILED)
        if op.base == NO_BASE:
            raise VolumeError("a write needs an established base", ErrorCode.BAD_REQUEST)
        if self.adopt(op.epoch, op.he_id, op.base):
            raise VolumeError(self.detail, ErrorCode.NOT_HELD)
        self._check(op.offset, op.length)
        seq = op.seq
        if seq <= self.base:
            raise VolumeError(
                f"volume {self.name}: seq {seq} is not above the ballot's base {self.base}",
                ErrorCode.BAD_REQUEST,
            )
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        op.fut = fut
        if seq == self.next_seq:
            self._admit(op)
            if self._buffer:
                self._drain_buffer()
        elif seq < self.next_seq:
            # A resend (the HE re-attached, or retried). Above the base every seq held here was
            # written under this ballot (`_establish`), and one owner never gives a seq two
            # contents: acknowledge it again iff it is really here.
            held = self._holds(seq)
            if held is None:
                self._prefix_waiters.append((seq, fut))
            elif not held:
                raise VolumeError(
                    f"volume {self.name}: seq {seq} is not held here ({self.detail or 'gap'}); "
                    "it needs recovery",
                    ErrorCode.NOT_HELD,
                )
            elif seq <= self.durable_seq:
                fut.set_result(seq)
            else:
                self._dup_waiters.append((seq, fut))
        else:
            if seq in self._buffer:
                self._dup_waiters.append((seq, fut))
                return fut
            if (
                len(self._buffer) >= MAX_BUFFERED_OPS
                or self._buffer_bytes + len(op.data) > MAX_BUFFERED_BYTES
            ):
                raise VolumeError(
                    f"volume {self.name}: waiting for seq {self.next_seq}, buffer full "
                    f"({len(self._buffer)} writes); it needs recovery",
                    ErrorCode.BUSY,
                )
            self._buffer[seq] = op
            self._buffer_bytes += len(op.data)
        return fut

    def _admit(self, op: Op) -> None:
        self._queue.append(op)
        self.next_seq = op.seq + 1
        rec = self.recovery
        if rec is not None:
            bs = self.block_size
            first, last = op.offset // bs, (op.offset + max(op.length, 1) - 1) // bs
            touched = rec.touched
            for block in range(first, last + 1):
                touched[block] = op.seq
        elif self.life is VolState.UP:
            self.prefix_seq = op.seq
        self._wake.set()

    def _drain_buffer(self) -> None:
        buf = self._buffer
        while self.next_seq in buf:
            op = buf.pop(self.next_seq)
            self._buffer_bytes -= len(op.data)
            self._admit(op)

    def _fence_buffer(self) -> None:
        """A newer ballot arrived: buffered writes of older ones must never be applied."""
        for seq, op in list(self._buffer.items()):
            if (op.epoch, op.he_id) < self.ballot:
                del self._buffer[seq]
                self._buffer_bytes -= len(op.data)
                if op.fut is not None and not op.fut.done():
                    op.fut.set_exception(
                        StaleEpochError(self.name, (op.epoch, op.he_id), self.ballot)
                    )

    def jump_stream(self, upto: int) -> None:
        """Recovery will bring everything <= upto: current writes continue at upto + 1.

        The caller resets the log first when this moves `next_seq` (`will_jump`): the log's
        records must stay seq-contiguous, or a peer replaying from it gets the wrong records.
        """
        if self.next_seq <= upto:
            for seq in sorted(s for s in self._buffer if s <= upto):
                op = self._buffer.pop(seq)
                self._buffer_bytes -= len(op.data)
                if op.fut is not None:
                    self._prefix_waiters.append((seq, op.fut))
            self.next_seq = upto + 1
            self._drain_buffer()

    def will_jump(self, upto: int) -> bool:
        return self.next_seq <= upto

    def advance_prefix(self, seq: int) -> None:
        """Recovered writes up to `seq` are durable here (after a data-file sync)."""
        self.prefix_seq = max(self.prefix_seq, seq)
        if self._prefix_waiters:
            self._prefix_waiters = self._release(self._prefix_waiters, self.prefix_seq)

    def may_reopen(self) -> bool:
        """A failed volume is re-derived from its files at most every REOPEN_INTERVAL."""
        return time.monotonic() - self._failed_at >= REOPEN_INTERVAL

    def failed_again(self, why: str) -> None:
        self.detail, self._failed_at = why, time.monotonic()

    async def set_epoch(self, epoch: int, he_id: int = 0, base: int = NO_BASE) -> None:
        if self.life is VolState.FAILED:
            raise VolumeError(self.detail, ErrorCode.VOLUME_FAILED)
        self.adopt(epoch, he_id, base)
        await self.call(lambda: None)  # the commit carrying the new ballot is durable

    # -- reads and peer service --------------------------------------------------------------

    def read_cached(
        self, offset: int, length: int, ballot: tuple[int, int] = (0, 0)
    ) -> tuple[int, bytearray, int]:
        """(seq, buffer, bytes filled): a read from the page cache, on the event loop, with
        no thread hop; `read` finishes it (on a thread) when not all of it was cached.
        With a ballot (epoch > 0) only the current owner is served: a fenced HE is told."""
        if ballot[0]:
            self.check_owner(*ballot)
        if self.life in NOT_READABLE or self.recovery is not None:
            raise VolumeError(
                f"volume {self.name} is {self.state_name()} here and serves no reads",
                ErrorCode.RECOVERING,
            )
        self._check(offset, length)
        seq = self.durable_seq
        buf = bytearray(length)
        return seq, buf, self.disk.read_nowait(buf, offset) if length else 0

    async def read(
        self, offset: int, length: int, ballot: tuple[int, int] = (0, 0)
    ) -> tuple[int, bytearray]:
        seq, buf, done = self.read_cached(offset, length, ballot)
        if done < length:
            await self._reads.run(self.disk.read_into, buf, offset, done)
        return seq, buf

    async def chunk_read(self, offset: int, length: int) -> tuple[int, bytearray]:
        """Read ordered with the writes: the data holds exactly the writes <= the seq given."""
        self._not_recovering("a full-copy source")
        self._check(offset, length)
        seq = self.next_seq - 1
        buf = bytearray(length)
        await self.call(lambda: self.disk.read_into(buf, offset))
        return seq, buf

    async def log_read(self, from_seq: int, upto: int, max_bytes: int) -> Any:
        """(applied, remaining bytes, records) or None if the log lost `from_seq`."""
        self._not_recovering("a replay source")
        applied = self.next_seq - 1
        if from_seq > applied:
            return applied, 0, []
        rlog = self.disk.log

        def work() -> Any:
            records = rlog.read_from(from_seq, max_bytes)
            if records is None:
                return None
            upto_ = upto or applied
            remaining = rlog.bytes_between(from_seq, upto_)
            return applied, remaining, records

        return await self.call(work)

    def log_oldest(self) -> int:
        return self.disk.log.oldest_seq()

    def log_first_seq(self) -> int:
        """The oldest seq a peer can replay from this log: with s >= it, LOG_READ(s) works.

        The log is seq-contiguous up to the newest admitted write (see `jump_stream`), so this
        is its oldest record, or the next seq when it is empty (nothing older is replayable).
        """
        return self.disk.log.oldest_seq() or self.next_seq

    def _not_recovering(self, what: str) -> None:
        if self.life in NOT_READABLE or self.recovery is not None:
            raise VolumeError(
                f"volume {self.name} is {self.state_name()} here, not usable as {what}",
                ErrorCode.RECOVERING,
            )

    # -- state ----------------------------------------------------------------------------

    def transition(self, event: VolEvent) -> None:
        """Move along `lifecycle.TRANSITIONS`; an event it does not allow is a bug."""
        old, self.life = self.life, next_state(self.life, event)
        if old is not self.life:
            log.info("volume %s: %s -> %s (%s)", self.name, old, self.life, event)

    def state_name(self) -> str:
        """What STATUS reports (see `lifecycle`): the life state, or `gap` for an up volume
        waiting for a resend to fill a hole (writes buffered out of order)."""
        if self.life is VolState.UP and self._buffer:
            return "gap"
        return self.life.value

    def applied_seq(self) -> int:
        """Every write <= this is durable *and* in the data file here: what STATUS reports.

        Not `prefix_seq` alone, which counts writes admitted but still queued for the disk: an
        HE re-attaching after a dropped connection took that number as acknowledged, marked
        the SE readable, and could read a block before its write reached the data file.
        """
        if self.recovery is not None:
            return self.prefix_seq  # the recovered prefix, advanced only after a data sync
        return min(self.prefix_seq, self.durable_seq)

    def _applied_ballot(self) -> tuple[int, int]:
        """The ballot that wrote `applied_seq()`, where this SE knows it, else (0, 0)."""
        if self.life is VolState.UP:
            return self.top_ballot
        rec = self.recovery
        if rec is not None and rec.kind == "replay":
            return rec.prefix_ballot
        return (0, 0)

    def status(self) -> dict[str, Any]:
        detail = self.detail
        if self._buffer and not detail:
            detail = f"waiting for seq {self.next_seq}; {len(self._buffer)} later writes buffered"
        rec = self.recovery
        if rec is not None and rec.error:
            detail = rec.error
        return {
            "volume": self.name,
            "epoch": self.epoch,
            "he_id": self.he_id,
            "base_seq": self.base,
            "top_ballot": self._applied_ballot(),
            "applied_seq": self.applied_seq(),
            "size": self.size,
            "block_size": self.block_size,
            "state": self.state_name(),
            "recovery_done": rec.done if rec else 0,
            "recovery_total": rec.total if rec else 0,
            "detail": detail,
            "log_first_seq": self.log_first_seq(),
        }

    # -- admin ----------------------------------------------------------------------------

    async def resize(self, size: int) -> None:
        if size <= 0 or size % self.block_size:
            raise VolumeError(
                f"size {size} is not a positive multiple of {self.block_size}",
                ErrorCode.BAD_REQUEST,
            )
        await self.call(lambda: self.disk.truncate(size))
        self.size = size
        await self.call(lambda: None)

    def run_blocking(self, fn: Callable[[], Any]) -> Any:
        """For recovery: `fn` gets the data fd / log on the volume thread."""
        return self.call(fn)

    # Blocking steps recovery queues with `call` (they run on the volume thread).

    def sync_data_blocking(self) -> None:
        self.disk.sync_data()

    def reset_log_blocking(self) -> None:
        self.disk.reset_log()

    def write_meta_blocking(self, **changes: Any) -> None:
        self.disk.write_meta(**changes)

    def log_records_blocking(self) -> list[LogRecord]:
        return self.disk.log_records()

    async def close(self) -> None:
        """Idempotent: a failed volume kept after a failed reopen is already closed."""
        if self._closed:
            return
        self._closed = True
        if self.recovery is not None and self.recovery.task is not None:
            self.recovery.task.cancel()
        if self._checkpoint is not None:
            self._checkpoint.cancel()  # the close writes the slot anyway
            self._checkpoint = None
        if self._committer is not None:
            deadline = asyncio.get_running_loop().time() + CLOSE_DRAIN_TIMEOUT
            while self._queue and asyncio.get_running_loop().time() < deadline:
                self._wake.set()
                await asyncio.sleep(0.001)
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        try:
            await self._thread.run(self.disk.close, self.life is VolState.FAILED)
        finally:
            self._thread.shutdown()
            self.disk.shutdown()
