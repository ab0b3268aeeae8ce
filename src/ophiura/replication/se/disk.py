"""The disk side of one volume on a storage element: data file, metadata slots, replay log.

Split from `store` (the in-order apply and the volume's state): everything here blocks and
runs on the volume's one thread, in the order the event loop queued it, so this module is only
about what reaches the disk and in which order it becomes durable:

- A write is durable once its log record is fdatasync'd: the record carries seq and epoch,
  and on restart the applied seq is the end of the valid log chain (or `data_synced_seq`), the
  epoch the newer of the slot's and the log's. So the metadata slot is *not* synced per batch
  (that was a second fdatasync on every write's path): it is written, in parallel with the log
  sync and before the ack, when anything but `applied_seq` changes (epoch, size: an epoch
  raised by SET_EPOCH has no log record), and as a checkpoint of `applied_seq` at most every
  `CHECKPOINT_INTERVAL` (piggybacked on a batch, or on its own once the volume is idle).
  Recovery boundaries and log resets/overwrites write it synchronously (below, recovery).
  The data file is written lazily.
- Group commit: one batch = log records appended, log fdatasync, then the data file written
  (not synced). Records are appended in queue order *relative to the other items*: a log reset
  queued between two writes happens between them on disk too; a "call" item first syncs the
  log and writes the data of everything before it. The data file is written only *after* the
  records are durable so that after a power cut it holds nothing of a write the log lost: such
  a write is beyond the log chain's first hole (see `replay_log`), the SE does not report it,
  and a sector of it surviving in the data file would be a replica holding a write no owner
  acknowledged (diverged from its peers). Data the log holds is re-applied over the data
  file on start, so whatever of it the data file lost or tore is rewritten.
- Anything that makes log records unreadable (overwriting them on a new lap, resetting the log
  for a recovery) first syncs the data file and makes the metadata that says so
  (`data_synced_seq`) durable. The other order left a kill -9 window in which a restart found
  neither the records nor a metadata slot covering them, and reported a lower applied seq than
  the writes it had acknowledged.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophiura.block.file import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from ophiura.replication.se import disk_io
from ophiura.replication.se.metadata import MetadataFile, VolumeMeta
from ophiura.replication.se.replay_log import LogRecord, ReplayLog, ReplayLogError
from ophiura.replication.wire.messages import KIND_WRITE, NO_BASE

log = logging.getLogger("ophiura.replication.se.store")

_NOWAIT = hasattr(os, "RWF_NOWAIT")

# Seconds between metadata checkpoints of `applied_seq` while writes flow (see above).
CHECKPOINT_INTERVAL = 0.1


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
    he_id: int = 0  # with `epoch`, the owner ballot that sent it (kept in its log record)
    base: int = 0  # that ballot's base (see store.Volume.adopt)


@dataclass(slots=True)
class Loaded:
    """What `VolumeDisk.open` found: the metadata and how far the volume really got."""

    meta: VolumeMeta
    applied: int  # every write <= this is here (the recovered prefix during a recovery)
    current_top: int  # during a recovery: newest current write re-applied from the log, else 0
    top_ballot: tuple[int, int] = (0, 0)  # the ballot that wrote `applied` ((0, 0): unknown)


class VolumeDisk:
    """One volume's files. Every method blocks: call them on the volume thread only."""

    def __init__(self, name: str, vdir: Path, log_path: Path, log_size: int) -> None:
        self.name = name
        self.dir = vdir
        self.log = ReplayLog(log_path, log_size)
        self.meta_file: MetadataFile | None = None
        self._meta_pool = ThreadPoolExecutor(1, thread_name_prefix=f"meta-{name}")
        self.fd = -1
        self.written_seq = 0  # highest sequenced op written to the data file (maybe not synced)
        self.written_ballot: tuple[int, int] = (0, 0)  # the ballot that wrote written_seq
        # `meta.applied_seq` moved on in memory but is not in a durable slot yet (that is
        # fine: the log holds those writes); `_meta_written_at` is when a slot last was.
        self.meta_pending = False
        self._meta_written_at = 0.0
        # Within `commit`: current writes whose log records are appended but not yet synced
        # (their data-file writes wait behind the sync), and recovered data queued after them.
        self._pending: list[Any] = []
        self._log_unsynced = False

    @property
    def meta(self) -> VolumeMeta:
        assert self.meta_file is not None
        return self.meta_file.current

    # -- opening -------------------------------------------------------------------------------

    def open(self, create: tuple[int, int] | None) -> Loaded:
        """Load the volume or, with `create=(size, block_size)`, make a new empty one."""
        meta_path = self.dir / "meta"
        if create is not None:
            size, bs = create
            self.dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.dir / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            disk_io.ftruncate(self.fd, size)
            self.meta_file = MetadataFile.create(meta_path, VolumeMeta(size, bs))
            self.log.open()
            self.log.reset()
            return Loaded(self.meta, 0, 0)
        self.meta_file = MetadataFile.load(meta_path)
        self.fd = os.open(self.dir / "data", os.O_RDWR | os.O_CLOEXEC)
        self.written_seq = self.meta.data_synced_seq
        self.written_ballot = _ballot(self.meta.synced_ballot)
        return self._replay_local_log(self.meta)

    def _replay_local_log(self, meta: VolumeMeta) -> Loaded:
        """Re-apply log records newer than the data file.

        The truth is the data file (durable up to data_synced_seq) plus the log chain that
        continues it, recovered forward from there (`ReplayLog.open`): a hole ends it, and what
        lies beyond was never acknowledged. During a recovery the log was reset when it
        started and holds only current writes > `upto`, so the chain starts after the later of
        the two. Metadata claiming more than that means records were lost (a replaced log
        disk) and the SE reports the lower number so the HE recovers it.
        """
        synced = meta.data_synced_seq
        anchor = synced
        if meta.recovery is not None:
            anchor = max(synced, int(meta.recovery.get("upto", 0)))
        records = self.log.open(anchor)
        # The log records carry the ballot they were written under: if the newest slot was
        # torn and an older one won, the log still fences the HEs the lost slot had fenced.
        # Its base is unknown then (NO_BASE): the owner establishes it again, and whatever
        # this SE holds above that base is truncated and copied back (costly, never unsafe).
        log_ballot = max(((r.epoch, r.he_id) for r in records), default=(0, 0))
        if log_ballot > (meta.epoch, meta.he_id):
            log.warning(
                "volume %s: the log holds ballot %s, the metadata (%d, %x); using the log's",
                self.name,
                log_ballot,
                meta.epoch,
                meta.he_id,
            )
            meta.epoch, meta.he_id = log_ballot
            meta.base_seq = NO_BASE
            self._write_meta_slot(meta)
        redo = [r for r in records if r.seq > synced]
        if meta.recovery is None:
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
        current_top = 0
        if redo:  # the scan keeps headers only: read the data back in bounded batches
            seq, top = redo[0].seq, redo[-1].seq
            while seq <= top:
                batch = self.log.read_from(seq, 8 << 20)
                if not batch:
                    raise ReplayLogError(f"{self.log.path}: record seq {seq} vanished")
                for rec in batch:
                    if rec.seq > top:
                        break
                    self.apply(rec.kind, rec.offset, rec.length, rec.data)
                seq = batch[-1].seq + 1
        if redo:
            disk_io.fdatasync(self.fd)
            top = redo[-1].seq
            self.written_seq = top
            self.written_ballot = (redo[-1].epoch, redo[-1].he_id)
            if meta.recovery is not None:
                current_top = top  # current writes received during the recovery
            log.info("volume %s: re-applied %d log records up to seq %d", self.name, len(redo), top)
        if applied != meta.applied_seq or redo:
            meta.applied_seq = applied
            if redo and redo[-1].seq >= synced:
                meta.data_synced_seq = redo[-1].seq
                meta.synced_ballot = list(self.written_ballot)
            self._write_meta_slot(meta)
        top_ballot = (0, 0)
        if meta.recovery is None:  # `applied` is the last redo record, or data_synced_seq
            top_ballot = self.written_ballot if redo else _ballot(meta.synced_ballot)
        return Loaded(meta, applied, current_top, top_ballot)

    # -- writing -------------------------------------------------------------------------------

    def apply(self, kind: int, offset: int, length: int, data: bytes) -> None:
        """Write (or punch / zero) one range of the data file; not synced."""
        if kind == KIND_WRITE:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += disk_io.pwritev(self.fd, [view[done:]], offset + done)
        else:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            try:
                disk_io.punch(self.fd, mode, offset, length)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                disk_io.pwrite(self.fd, bytes(length), offset)

    def _log(self, ops: list[Op]) -> None:
        """Append a run of ops to the log; their data-file writes wait in `_pending` until
        the records are durable (`_flush`)."""
        records = [
            LogRecord(o.seq, o.epoch, o.offset, o.length, o.kind, o.data, o.he_id) for o in ops
        ]
        victim = self.log.would_evict_above(records)
        if victim > self.meta.data_synced_seq:
            # The log is about to lose records the data file may not hold durably yet.
            self._flush()
            self._mark_data_synced()
        self.log.append(records)
        self._log_unsynced = True
        self._pending.extend(ops)

    def _flush(self) -> None:
        """Sync the log records appended so far, then write their data, and the recovered data
        queued behind them, to the data file in queue order."""
        if self._log_unsynced:
            self.log.sync()
            self._log_unsynced = False
        for it in self._pending:
            if type(it) is Op:
                self.apply(it.kind, it.offset, it.length, it.data)
                self.written_seq = it.seq
                self.written_ballot = (it.epoch, it.he_id)
            else:  # ("rec", kind, offset, length, data)
                self.apply(it[1], it[2], it[3], it[4])
        self._pending.clear()

    def _mark_data_synced(self) -> None:
        """Sync the data file and make that durable *before* any log record is dropped."""
        disk_io.fdatasync(self.fd)
        meta = self.meta
        if self.written_seq >= meta.data_synced_seq:
            meta.data_synced_seq = self.written_seq
            meta.synced_ballot = list(self.written_ballot)
        self._write_meta_slot(meta)

    def commit(self, items: list[Any], updates: dict[str, Any]) -> list[Any]:
        """Run one batch in queue order; returns (future, result, exception) per "call" item.

        Items: `Op` (logged and applied), ("rec", kind, offset, length, data) (recovered data:
        data file only), ("call", fn, future) (`fn()` on this thread, in order).
        """
        meta = self.meta
        results: list[Any] = []
        run: list[Op] = []
        logged = False
        self._pending, self._log_unsynced = [], False
        for it in items:
            if type(it) is Op:
                run.append(it)
                continue
            if run:
                self._log(run)
                run, logged = [], True
            if it[0] == "rec":
                if self._pending:
                    self._pending.append(it)  # behind current writes not yet in the data file
                else:
                    self.apply(it[1], it[2], it[3], it[4])
            else:  # ("call", fn, fut): it sees every item before it, durable and applied
                self._flush()
                try:
                    results.append((it[2], it[1](), None))
                except Exception as exc:  # handed back to the awaiting coroutine
                    results.append((it[2], None, exc))
        if run:
            self._log(run)
            logged = True
        must = False
        for key, value in updates.items():
            if getattr(meta, key) != value:
                setattr(meta, key, value)
                if key == "applied_seq":
                    self.meta_pending = True
                else:
                    must = True  # epoch, size: not (only) in the log, the slot must hold them
        write_meta = must or (
            self.meta_pending
            and (not logged or time.monotonic() - self._meta_written_at >= CHECKPOINT_INTERVAL)
        )
        # The two fdatasyncs (log, metadata slot) run in parallel: both finish before any ack,
        # and a metadata slot ahead of the log is harmless (the log chain is the truth).
        meta_done = self._meta_pool.submit(self._write_meta_slot, meta) if write_meta else None
        try:
            self._flush()
        finally:
            if meta_done is not None:
                meta_done.result()
        return results

    def _write_meta_slot(self, meta: Any) -> None:
        """Every slot write carries the in-memory `applied_seq`: it ends a pending checkpoint."""
        self.meta_file.write(meta)  # type: ignore[union-attr]
        self.meta_pending = False
        self._meta_written_at = time.monotonic()

    # -- recovery support ------------------------------------------------------------------------

    def sync_data(self) -> None:
        disk_io.fdatasync(self.fd)

    def reset_log(self) -> None:
        """Forget the log (a recovery starts); what it held is made durable in the data file."""
        self._mark_data_synced()
        self.log.reset()

    def write_meta(self, **changes: Any) -> None:
        meta = self.meta
        for key, value in changes.items():
            setattr(meta, key, value)
        self._write_meta_slot(meta)

    def log_records(self) -> list[LogRecord]:
        """Everything in the local log (to rebuild the touched map after a restart)."""
        if not self.log.entries:
            return []
        return self.log.read_from(self.log.oldest_seq(), 1 << 62) or []

    # -- reading ---------------------------------------------------------------------------------

    def read_nowait(self, buf: bytearray, offset: int) -> int:
        """Bytes of `buf` filled from the page cache without blocking (for the event loop);
        0 when nothing was cached or the kernel cannot say (then use `read_into`)."""
        if not _NOWAIT:
            return 0
        try:
            return os.preadv(self.fd, [buf], offset, os.RWF_NOWAIT)
        except OSError:  # EAGAIN (not cached), EOPNOTSUPP: the thread does it
            return 0

    def read_into(self, buf: bytearray, offset: int, done: int = 0) -> None:
        view = memoryview(buf)
        while done < len(buf):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                return
            done += n

    def truncate(self, size: int) -> None:
        disk_io.ftruncate(self.fd, size)

    # -- closing ---------------------------------------------------------------------------------

    def close(self, failed: bool) -> None:
        """Sync everything: a clean stop leaves nothing for the log to re-apply.

        A failed volume's files are only closed: it vouches for nothing (its disk may still be
        failing, a sync would only fail again), and the reopen re-derives it from what an
        earlier sync made durable. Whatever happens, every file is closed."""
        try:
            if self.fd >= 0 and not failed:
                disk_io.fdatasync(self.fd)
                meta = self.meta_file.current if self.meta_file is not None else None
                if meta is not None and (
                    meta.data_synced_seq < self.written_seq or self.meta_pending
                ):
                    meta.data_synced_seq = self.written_seq
                    meta.synced_ballot = list(self.written_ballot)
                    self._write_meta_slot(meta)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            self.log.close()
            if self.meta_file is not None:
                self.meta_file.close()

    def shutdown(self) -> None:
        self._meta_pool.shutdown()


def _ballot(value: Any) -> tuple[int, int]:
    """A ballot from the metadata's JSON ([epoch, he_id]); (0, 0) for anything else."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    return (0, 0)
