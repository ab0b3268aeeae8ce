"""One volume on a storage element: data file, metadata slots, replay log, in-order apply.

Why it is built this way:
- Writes are applied strictly in sequence order (StarFish §3): an out-of-order arrival waits in
  a bounded buffer; a full buffer is an error the HE answers with recovery, never unbounded growth.
- Every disk action of a volume runs on one dedicated thread, in the order the event loop queued
  it. That single order is what makes "recovered data never overwrites a newer current write"
  checkable on the loop: whatever the loop queued first reaches the disk first.
- Group commit: all writes that arrived while the previous batch was on disk go down together:
  log records written, data file written (not synced), log fdatasync, metadata slot fdatasync,
  then every write of the batch is acknowledged. The data file is synced once per log lap.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.block.file import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, _fallocate
from ophiura.block.io_threads import IoThreads
from ophiura.replication.metadata import MetadataFile, VolumeMeta
from ophiura.replication.protocol import KIND_WRITE, ErrorCode
from ophiura.replication.replay_log import LogRecord, ReplayLog

log = logging.getLogger(__name__)

VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_BUFFERED_OPS = 4096
MAX_BUFFERED_BYTES = 64 << 20
CLOSE_DRAIN_TIMEOUT = 10.0  # seconds a clean stop waits for queued writes to reach the disk


class VolumeError(Exception):
    """A volume operation failed; `code` is the protocol ErrorCode sent back to the client."""

    def __init__(self, message: str, code: int = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


class StaleEpochError(VolumeError):
    def __init__(self, volume: str, presented: int, current: int) -> None:
        super().__init__(f"volume {volume}: epoch {presented} is older than {current}")
        self.current = current


@dataclass(slots=True)
class Op:
    """A sequenced write, trim or write-zeroes from the HE (or replayed from the log)."""

    kind: int
    seq: int
    epoch: int
    offset: int
    length: int
    data: bytes
    fut: asyncio.Future[int] | None = None


@dataclass
class Recovery:
    """In-memory state of a running or interrupted recovery (see se_recovery)."""

    kind: str  # "replay" | "full"
    upto: int
    peer: tuple[str, str, int]
    rate: int
    cursor: int  # replay: highest seq recovered; full: bytes copied
    done: int = 0
    total: int = 0
    touched: dict[int, int] = field(default_factory=dict)  # block -> seq of newest current write
    task: asyncio.Task[None] | None = None
    error: str = ""


class Volume:
    """One volume. Create with `await Volume.open(...)`; `close()` when done."""

    def __init__(self, name: str, vdir: Path, log_path: Path, log_size: int, reads: IoThreads):
        self.name = name
        self.dir = vdir
        self._reads = reads
        self._thread = IoThreads(1, name=f"vol-{name}")
        self._meta_pool = ThreadPoolExecutor(1, thread_name_prefix=f"meta-{name}")
        self._log = ReplayLog(log_path, log_size)
        self._meta_file: MetadataFile | None = None
        self._fd = -1
        self.size = 0
        self.block_size = 512
        self.epoch = 0
        self.next_seq = 1  # the next current write this volume can apply
        self.durable_seq = 0  # highest current write that is durable
        self.prefix_seq = 0  # every write <= this is here (== next_seq - 1 when up)
        self.state = "up"
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
        self.recovery_meta: dict[str, Any] | None = None

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
            await self._thread.run(self._open_blocking, create)
        except BaseException:
            self._thread.shutdown()
            self._meta_pool.shutdown()
            raise
        self._committer = asyncio.create_task(self._commit_loop(), name=f"commit-{name}")
        return self

    def _open_blocking(self, create: tuple[int, int] | None) -> None:
        meta_path = self.dir / "meta"
        if create is not None:
            size, bs = create
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.dir / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(self._fd, size)
            self._meta_file = MetadataFile.create(meta_path, VolumeMeta(size, bs))
            self._log.open()
            self._log.reset()
        else:
            self._meta_file = MetadataFile.load(meta_path)
            self._fd = os.open(self.dir / "data", os.O_RDWR | os.O_CLOEXEC)
        meta = self._meta_file.current
        self.size, self.block_size, self.epoch = meta.size, meta.block_size, meta.epoch
        applied = meta.applied_seq
        if create is None:
            applied = self._replay_local_log(meta)
        self.prefix_seq = applied
        self.next_seq = self.durable_seq + 1 if self.durable_seq > applied else applied + 1
        self.durable_seq = max(self.durable_seq, applied)
        if meta.recovery:
            self.state = "gap"
            self.recovery_meta = meta.recovery
            self.detail = f"{meta.recovery['kind']} recovery was interrupted by a restart"

    def _replay_local_log(self, meta: VolumeMeta) -> int:
        """Re-apply log records newer than the data file; returns the applied sequence.

        The truth is the data file (durable up to data_synced_seq) plus the valid log chain
        that continues it; metadata claiming more than that means records were lost (a
        replaced log disk) and the SE reports the lower number so the HE recovers it.
        """
        records = self._log.open()
        synced = meta.data_synced_seq
        redo = [r for r in records if r.seq > synced]
        if meta.recovery is None:
            if redo and redo[0].seq != synced + 1:
                log.error(
                    "volume %s: the log starts at seq %d but the data file holds only %d; "
                    "the writes between are lost here (log device replaced?)",
                    self.name,
                    redo[0].seq,
                    synced,
                )
                redo = []
            applied = redo[-1].seq if redo else synced
            if meta.applied_seq > applied:
                log.error(
                    "volume %s: metadata says seq %d is applied but only %d can be found; "
                    "reporting %d so the HE recovers the rest",
                    self.name,
                    meta.applied_seq,
                    applied,
                    applied,
                )
        else:
            applied = meta.applied_seq  # the recovered prefix; the log holds current writes
        for rec in redo:
            self._apply_blocking(rec.kind, rec.offset, rec.length, rec.data)
        if redo:
            os.fdatasync(self._fd)
            top = redo[-1].seq
            self._written_seq = top
            if meta.recovery is not None:
                self.durable_seq = top  # current writes received during the recovery
            log.info("volume %s: re-applied %d log records up to seq %d", self.name, len(redo), top)
        if applied != meta.applied_seq or redo:
            meta.applied_seq = applied
            meta.data_synced_seq = max(synced, redo[-1].seq if redo else 0)
            self._meta_file.write(meta)  # type: ignore[union-attr]
        return applied

    # -- disk actions (volume thread only) -----------------------------------------------------

    def _apply_blocking(self, kind: int, offset: int, length: int, data: bytes) -> None:
        if kind == KIND_WRITE:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwritev(self._fd, [view[done:]], offset + done)
        else:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            try:
                _fallocate(self._fd, mode, offset, length)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                os.pwrite(self._fd, bytes(length), offset)

    def _commit_blocking(self, items: list[Any], updates: dict[str, Any]) -> list[Any]:
        """Run one batch in queue order; returns per-item results for the "call" items."""
        meta = self._meta_file.current  # type: ignore[union-attr]
        records = [
            LogRecord(it.seq, it.epoch, it.offset, it.length, it.kind, it.data)
            for it in items
            if type(it) is Op
        ]
        if records:
            victim = self._log.would_evict_above(records)
            if victim > meta.data_synced_seq:
                # The log is about to lose records the data file may not hold durably yet.
                os.fdatasync(self._fd)
                meta.data_synced_seq = self._written_seq
                self._meta_dirty_thread = True
            self._log.append(records)
        results: list[Any] = []
        for it in items:
            if type(it) is Op:
                self._apply_blocking(it.kind, it.offset, it.length, it.data)
                self._written_seq = it.seq
            elif it[0] == "rec":
                self._apply_blocking(it[1], it[2], it[3], it[4])
            else:  # ("call", fn, fut)
                try:
                    results.append((it[2], it[1](), None))
                except Exception as exc:  # handed back to the awaiting coroutine
                    results.append((it[2], None, exc))
        changed = self._meta_dirty_thread
        for key, value in updates.items():
            if getattr(meta, key) != value:
                setattr(meta, key, value)
                changed = True
        # The two fdatasyncs (log, metadata slot) run in parallel: both finish before any ack,
        # and a metadata slot ahead of the log is harmless (the log chain is the truth).
        meta_done = self._meta_pool.submit(self._meta_file.write, meta) if changed else None  # type: ignore[union-attr]
        try:
            if records:
                self._log.sync()
        finally:
            if meta_done is not None:
                meta_done.result()
                self._meta_dirty_thread = False
        return results

    _written_seq = 0
    _meta_dirty_thread = False

    # -- commit loop (event loop side) -------------------------------------------------------

    def _meta_updates(self) -> dict[str, Any]:
        updates: dict[str, Any] = {"epoch": self.epoch, "size": self.size}
        if self.recovery is None and self.state != "gap":
            updates["applied_seq"] = self.next_seq - 1
        return updates

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue or self._meta_dirty:
                batch, self._queue = self._queue, []
                self._meta_dirty = False
                updates = self._meta_updates()
                try:
                    results = await self._thread.run(self._commit_blocking, batch, updates)
                except Exception as exc:
                    self._fail(batch, exc)
                    continue
                top = 0
                for it in batch:
                    if type(it) is Op:
                        top = it.seq
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
                    if self._dup_waiters:
                        self._dup_waiters = self._release(self._dup_waiters, top)

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
        """A disk error: this SE can no longer vouch for the volume. Restart re-derives it."""
        why = f"volume {self.name} failed on disk: {exc}"
        log.error("%s", why)
        self.state, self.detail = "failed", why
        err = VolumeError(why, ErrorCode.VOLUME_FAILED)
        waiters = [it.fut for it in batch if type(it) is Op]
        waiters += [it[2] for it in batch if type(it) is not Op and it[0] == "call"]
        waiters += [f for _, f in self._dup_waiters + self._prefix_waiters]
        waiters += [op.fut for op in self._buffer.values()]
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_exception(err)

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on the volume thread after everything queued so far."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
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

    def check_epoch(self, epoch: int) -> None:
        if epoch < self.epoch:
            raise StaleEpochError(self.name, epoch, self.epoch)
        if epoch > self.epoch:
            self.epoch = epoch  # adopted durably by the commit that acknowledges this op
            self._meta_dirty = True
            self._fence_buffer()

    def submit(self, op: Op) -> asyncio.Future[int]:
        """Queue a write; the future resolves with its seq once durable here."""
        if self.state == "failed":
            raise VolumeError(self.detail, ErrorCode.VOLUME_FAILED)
        self.check_epoch(op.epoch)
        self._check(op.offset, op.length)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        op.fut = fut
        seq = op.seq
        if seq == self.next_seq:
            self._admit(op)
            if self._buffer:
                self._drain_buffer()
        elif seq < self.next_seq:
            rec = self.recovery
            if rec is not None and self.prefix_seq < seq <= rec.upto:
                self._prefix_waiters.append((seq, fut))
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
        elif self.state != "gap":
            self.prefix_seq = op.seq
        self._wake.set()

    def _drain_buffer(self) -> None:
        buf = self._buffer
        while self.next_seq in buf:
            op = buf.pop(self.next_seq)
            self._buffer_bytes -= len(op.data)
            self._admit(op)

    def _fence_buffer(self) -> None:
        """A newer epoch arrived: buffered writes of older epochs must never be applied."""
        for seq, op in list(self._buffer.items()):
            if op.epoch < self.epoch:
                del self._buffer[seq]
                self._buffer_bytes -= len(op.data)
                if op.fut is not None and not op.fut.done():
                    op.fut.set_exception(StaleEpochError(self.name, op.epoch, self.epoch))

    def jump_stream(self, upto: int) -> None:
        """Recovery will bring everything <= upto: current writes continue at upto + 1."""
        if self.next_seq <= upto:
            for seq in sorted(s for s in self._buffer if s <= upto):
                op = self._buffer.pop(seq)
                self._buffer_bytes -= len(op.data)
                if op.fut is not None:
                    self._prefix_waiters.append((seq, op.fut))
            self.next_seq = upto + 1
            self._drain_buffer()

    def advance_prefix(self, seq: int) -> None:
        """Recovered writes up to `seq` are durable here (after a data-file sync)."""
        self.prefix_seq = max(self.prefix_seq, seq)
        if self._prefix_waiters:
            self._prefix_waiters = self._release(self._prefix_waiters, self.prefix_seq)

    async def set_epoch(self, epoch: int) -> None:
        self.check_epoch(epoch)
        await self.call(lambda: None)  # the commit carrying the new epoch is durable

    # -- reads and peer service --------------------------------------------------------------

    async def read(self, offset: int, length: int) -> tuple[int, bytearray]:
        if self.recovery is not None or self.state in ("failed", "gap"):
            raise VolumeError(
                f"volume {self.name} is {self.state_name()} here and serves no reads",
                ErrorCode.RECOVERING,
            )
        self._check(offset, length)
        seq = self.durable_seq
        buf = bytearray(length)
        await self._reads.run(self._read_blocking, buf, offset)
        return seq, buf

    def _read_blocking(self, buf: bytearray, offset: int) -> None:
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                return
            done += n

    async def chunk_read(self, offset: int, length: int) -> tuple[int, bytearray]:
        """Read ordered with the writes: the data holds exactly the writes <= the seq given."""
        self._not_recovering("a full-copy source")
        self._check(offset, length)
        seq = self.next_seq - 1
        buf = bytearray(length)
        await self.call(lambda: self._read_blocking(buf, offset))
        return seq, buf

    async def log_read(self, from_seq: int, upto: int, max_bytes: int) -> Any:
        """(applied, remaining bytes, records) or None if the log lost `from_seq`."""
        self._not_recovering("a replay source")
        applied = self.next_seq - 1
        if from_seq > applied:
            return applied, 0, []

        def work() -> Any:
            records = self._log.read_from(from_seq, max_bytes)
            if records is None:
                return None
            upto_ = upto or applied
            remaining = self._log.bytes_between(from_seq, upto_)
            return applied, remaining, records

        return await self.call(work)

    def log_oldest(self) -> int:
        return self._log.oldest_seq()

    def _not_recovering(self, what: str) -> None:
        if self.recovery is not None or self.state in ("gap", "failed"):
            raise VolumeError(
                f"volume {self.name} is {self.state_name()} here, not usable as {what}",
                ErrorCode.RECOVERING,
            )

    # -- state ----------------------------------------------------------------------------

    def state_name(self) -> str:
        if self.state == "failed":
            return "failed"
        if self.recovery is not None and self.recovery.task is not None:
            return f"recovering-{self.recovery.kind}"
        if self.state == "gap" or self.recovery is not None or self._buffer:
            return "gap"
        return "up"

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
            "applied_seq": self.prefix_seq,
            "size": self.size,
            "block_size": self.block_size,
            "state": self.state_name(),
            "recovery_done": rec.done if rec else 0,
            "recovery_total": rec.total if rec else 0,
            "detail": detail,
        }

    # -- admin ----------------------------------------------------------------------------

    async def resize(self, size: int) -> None:
        if size <= 0 or size % self.block_size:
            raise VolumeError(
                f"size {size} is not a positive multiple of {self.block_size}",
                ErrorCode.BAD_REQUEST,
            )
        await self.call(lambda: os.ftruncate(self._fd, size))
        self.size = size
        await self.call(lambda: None)

    def run_blocking(self, fn: Callable[[], Any]) -> Any:
        """For se_recovery: `fn` gets the data fd / log on the volume thread."""
        return self.call(fn)

    def sync_data_blocking(self) -> None:
        os.fdatasync(self._fd)

    def reset_log_blocking(self) -> None:
        os.fdatasync(self._fd)
        meta = self._meta_file.current  # type: ignore[union-attr]
        meta.data_synced_seq = self._written_seq
        self._log.reset()

    def write_meta_blocking(self, **changes: Any) -> None:
        meta = self._meta_file.current  # type: ignore[union-attr]
        for key, value in changes.items():
            setattr(meta, key, value)
        self._meta_file.write(meta)  # type: ignore[union-attr]

    def log_records_blocking(self) -> list[LogRecord]:
        """Everything in the local log (to rebuild the touched map after a restart)."""
        if not self._log.entries:
            return []
        return self._log.read_from(self._log.oldest_seq(), 1 << 62) or []

    async def close(self) -> None:
        if self.recovery is not None and self.recovery.task is not None:
            self.recovery.task.cancel()
        if self._committer is not None:
            deadline = asyncio.get_running_loop().time() + CLOSE_DRAIN_TIMEOUT
            while self._queue and asyncio.get_running_loop().time() < deadline:
                self._wake.set()
                await asyncio.sleep(0.001)
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        await self._thread.run(self._close_blocking)
        self._thread.shutdown()
        self._meta_pool.shutdown()

    def _close_blocking(self) -> None:
        if self._fd >= 0:
            os.fdatasync(self._fd)
            meta = self._meta_file.current if self._meta_file is not None else None
            if (
                meta is not None
                and self.state != "failed"
                and meta.data_synced_seq < self._written_seq
            ):
                # a clean stop leaves nothing for the log to re-apply
                meta.data_synced_seq = self._written_seq
                self._meta_file.write(meta)  # type: ignore[union-attr]
            os.close(self._fd)
            self._fd = -1
        self._log.close()
        if self._meta_file is not None:
            self._meta_file.close()
