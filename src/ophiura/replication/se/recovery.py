"""Recovery run by a storage element when its HE says so: replay (a peer's log) or full (copy).

The HE decides *which* recovery from the sequence the SE reports (StarFish §3); this module
does it. While it runs, current writes from the HE (seq > upto) keep being applied and logged as
usual; `Recovery.touched` maps every block they wrote to the newest seq that wrote it, and
recovered data for a block is dropped when that block holds a newer write: a replayed record of
seq r is skipped where touched > r, a chunk read at peer seq S where touched > S. Because the
recovered data and the current writes reach the disk through the volume's one ordered queue,
the check on the event loop and the write on disk cannot be overtaken by each other.

Progress is counted in bytes; the cursor (replay: last seq, full: bytes copied) is made durable
with an fdatasync of the data file at checkpoints so an interrupted recovery resumes, and the
recovered prefix is never claimed before it is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ophiura.replication.se.lifecycle import VolEvent, VolState, recover_event
from ophiura.replication.se.store import Recovery, Volume, VolumeError
from ophiura.replication.wire import messages
from ophiura.replication.wire.client import LogGoneError, SeClient, SeError

if TYPE_CHECKING:
    from ophiura.replication.se.storage_element import StorageElement

log = logging.getLogger(__name__)

CHUNK = 1 << 20
LOG_BATCH = 4 << 20
CHECKPOINT_BYTES = 16 << 20
PEER_BEHIND_TIMEOUT = 30.0


class RateLimiter:
    """A token bucket in bytes/s (0 = unlimited) with a 100 ms burst."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._next = time.monotonic()

    async def consume(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._next = max(self._next, now - 0.1) + nbytes / self.rate
        if self._next > now:
            await asyncio.sleep(self._next - now)


def _untouched_runs(
    rec: Recovery, bs: int, offset: int, length: int, newer_than: int
) -> list[tuple[int, int]]:
    """Byte runs of [offset, offset+length) whose blocks hold no current write newer than
    `newer_than`. Block-aligned inside the range; recovered data is always block-aligned."""
    touched = rec.touched
    if not touched:
        return [(offset, length)]
    end = offset + length
    runs: list[tuple[int, int]] = []
    start = None
    pos = offset
    while pos < end:
        block = pos // bs
        nxt = min(end, (block + 1) * bs)
        if touched.get(block, 0) > newer_than:
            if start is not None:
                runs.append((start, pos - start))
                start = None
        elif start is None:
            start = pos
        pos = nxt
    if start is not None:
        runs.append((start, end - start))
    return runs


class RecoveryManager:
    """Starts, resumes and reports the recoveries of one SE's volumes."""

    def __init__(self, se: StorageElement) -> None:
        self.se = se

    async def reload(self, vol: Volume) -> None:
        if vol.recovery_meta:
            log.warning(
                "SE %s: volume %s: %s; waiting for the HE to restart it",
                self.se.name,
                vol.name,
                vol.detail,
            )

    async def forget(self, vol: Volume) -> None:
        await self._cancel(vol)

    async def stop(self) -> None:
        for vol in list(self.se.volumes.values()):
            await self._cancel(vol)

    @staticmethod
    async def _cancel(vol: Volume) -> None:
        rec = vol.recovery
        if rec is not None and rec.task is not None:
            rec.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rec.task
            rec.task = None

    # -- starting --------------------------------------------------------------------------

    async def start(self, vol: Volume, msg: messages.Recover) -> None:
        """Start (or resume) the recovery RECOVER asks for; returns once it is under way."""
        # Two RECOVERs for one volume (an HE re-attaching) must not interleave across the
        # awaits below: both would start a copy task on the same Recovery.
        async with vol.recovery_lock:
            await self._start(vol, msg)

    async def _start(self, vol: Volume, msg: messages.Recover) -> None:
        if msg.kind not in ("replay", "full"):
            raise VolumeError(
                f"recovery kind {msg.kind!r} is not replay or full", messages.ErrorCode.BAD_REQUEST
            )
        if vol.life is VolState.FAILED:
            raise VolumeError(vol.detail, messages.ErrorCode.VOLUME_FAILED)
        # Only the owner, after establishing its ballot's base (the attach does): a recovery
        # jumps the stream, and a base fixed after that would take the jump for a diverged tail.
        vol.check_owner(msg.epoch, msg.he_id)
        if vol.base == messages.NO_BASE:
            raise VolumeError(
                f"volume {vol.name}: establish the ballot's base before RECOVER",
                messages.ErrorCode.NOT_OWNER,
            )
        peer = (msg.peer_name, msg.peer_host, msg.peer_port)
        rate = msg.rate or self.se.recovery_rate
        upto = msg.upto_seq
        fresh = False
        rec = vol.recovery
        if rec is not None and rec.task is not None:
            if rec.kind == msg.kind and rec.peer == peer and upto <= rec.upto:
                return  # already doing exactly this
            await self._cancel(vol)
        up = vol.life is VolState.UP
        if msg.kind == "replay" and rec is None and up and vol.prefix_seq >= upto:
            log.info(
                "SE %s: %s already has seq %d >= %d; nothing to replay",
                self.se.name,
                vol.name,
                vol.prefix_seq,
                upto,
            )
            return
        if rec is not None and rec.kind == msg.kind:
            self._resume_in_process(vol, rec, upto)
        elif vol.recovery_meta is not None and vol.recovery_meta.get("kind") == msg.kind:
            rec = await self._resume_after_restart(vol, msg.kind, upto)
        else:
            if rec is not None:
                log.info(
                    "SE %s: %s: switching recovery from %s to %s",
                    self.se.name,
                    vol.name,
                    rec.kind,
                    msg.kind,
                )
            rec = Recovery(
                msg.kind, upto, peer, rate, vol.prefix_seq if msg.kind == "replay" else 0
            )
            if msg.kind == "replay":  # the replay continues this SE's own prefix
                rec.prefix_ballot = rec.cursor_ballot = vol.top_ballot
            vol.recovery = rec
            if msg.kind == "full":
                vol.prefix_seq = 0  # nothing here is trustworthy until the copy completes
            fresh = True
        rec.peer, rec.rate, rec.error = peer, rate, ""
        if upto >= rec.upto:
            rec.upto_ballot = (msg.upto_epoch, msg.upto_he_id)
        rec.upto = max(rec.upto, upto)
        if rec.kind == "full":
            rec.total, rec.done = vol.size, rec.cursor
        vol.recovery = rec
        vol.recovery_meta = None
        vol.transition(recover_event(rec.kind))
        vol.detail = ""
        # Queue the disk steps *before* the jump lets the buffered writes after `upto` in, and
        # do not await in between: the writes that raced ahead of this RECOVER are admitted at
        # once instead of filling the reorder buffer (BUSY) during an fsync, and the volume
        # thread still resets the log and records the recovery before it logs any of them.
        # The log is reset whenever the stream jumps, so it stays seq-contiguous (a peer
        # replaying from it after this recovery gets exactly the records it asks for).
        steps: list[asyncio.Future[Any]] = []
        if fresh or vol.will_jump(rec.upto):
            steps.append(vol.call(vol.reset_log_blocking))  # the log: only current writes
        applied = vol.prefix_seq if rec.kind == "replay" else 0
        state = self._persisted(rec)
        steps.append(vol.call(lambda: vol.write_meta_blocking(recovery=state, applied_seq=applied)))
        vol.jump_stream(rec.upto)
        for outcome in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        rec.task = asyncio.create_task(self._run(vol, rec), name=f"recover-{vol.name}")
        log.info(
            "SE %s: %s: %s recovery from %s up to seq %d started (cursor %d)",
            self.se.name,
            vol.name,
            rec.kind,
            peer[0],
            rec.upto,
            rec.cursor,
        )

    def _resume_in_process(self, vol: Volume, rec: Recovery, upto: int) -> None:
        """Same process, same kind: keep the touched map; full restarts if writes were missed."""
        if rec.kind == "replay":
            rec.cursor, rec.cursor_ballot = vol.prefix_seq, rec.prefix_ballot
        elif upto >= vol.next_seq:
            log.info(
                "SE %s: %s missed current writes %d..%d: full copy restarts at 0",
                self.se.name,
                vol.name,
                vol.next_seq,
                upto,
            )
            rec.cursor = 0

    async def _resume_after_restart(self, vol: Volume, kind: str, upto: int) -> Recovery:
        """Rebuild the touched map from the local log (it holds only this recovery's writes)."""
        meta = vol.recovery_meta or {}
        old_upto = int(meta.get("upto", 0))
        records = await vol.call(vol.log_records_blocking)
        rec = Recovery(kind, old_upto, tuple(meta.get("peer", ("", "", 0))), 0, 0)  # type: ignore[arg-type]
        bs = vol.block_size
        for r in records:
            for block in range(r.offset // bs, (r.offset + max(r.length, 1) - 1) // bs + 1):
                rec.touched[block] = r.seq
        complete = (not records and vol.next_seq == old_upto + 1) or (
            records and records[0].seq == old_upto + 1
        )
        if kind == "replay":
            rec.cursor = vol.prefix_seq
        elif complete and upto < vol.next_seq:
            rec.cursor = int(meta.get("cursor", 0))
        else:
            log.info(
                "SE %s: %s: cannot resume the full copy at byte %s (writes missed); "
                "restarting at 0",
                self.se.name,
                vol.name,
                meta.get("cursor"),
            )
        if vol.next_seq <= old_upto:
            vol.next_seq = old_upto + 1
        vol.recovery = rec
        return rec

    @staticmethod
    def _persisted(rec: Recovery) -> dict[str, Any]:
        return {"kind": rec.kind, "upto": rec.upto, "peer": list(rec.peer), "cursor": rec.cursor}

    # -- running ---------------------------------------------------------------------------

    async def _run(self, vol: Volume, rec: Recovery) -> None:
        name, host, port = rec.peer
        client: SeClient | None = None
        try:
            client = await SeClient.connect(
                name, host, port, self.se.secret, client_name=f"se:{self.se.name}"
            )
            if rec.kind == "replay":
                await self._replay(vol, rec, client)
            else:
                await self._full(vol, rec, client)
            await self._finish(vol, rec)
        except LogGoneError as exc:
            rec.error = f"log-gone: {exc}"
            log.warning("SE %s: %s: replay impossible, %s", self.se.name, vol.name, exc)
            self._stopped(vol, rec)
        except (SeError, VolumeError, OSError) as exc:
            rec.error = f"{rec.kind} recovery from {name} interrupted: {exc}"
            log.error("SE %s: %s: %s", self.se.name, vol.name, rec.error)
            self._stopped(vol, rec)
        except Exception as exc:  # reported to the HE through STATUS, not lost in a task
            rec.error = f"{rec.kind} recovery from {name} failed: {type(exc).__name__}: {exc}"
            log.exception("SE %s: %s: %s", self.se.name, vol.name, rec.error)
            self._stopped(vol, rec)
        finally:
            rec.task = None
            if client is not None:
                await client.close()

    @staticmethod
    def _stopped(vol: Volume, rec: Recovery) -> None:
        """The pull ended unfinished: interrupted, unless something else moved the volume on
        meanwhile (a diverged tail truncated it, a disk error failed it)."""
        if vol.recovery is rec and vol.life in (
            VolState.RECOVERING_REPLAY,
            VolState.RECOVERING_FULL,
        ):
            vol.transition(VolEvent.STOPPED)

    async def _checkpoint(self, vol: Volume, rec: Recovery) -> None:
        """Make recovered data durable, then record how far it got."""
        state = self._persisted(rec)
        applied = rec.cursor if rec.kind == "replay" else 0

        def work() -> None:
            vol.sync_data_blocking()
            vol.write_meta_blocking(recovery=state, applied_seq=applied)

        ballot = rec.cursor_ballot
        await vol.call(work)
        if rec.kind == "replay":
            vol.advance_prefix(rec.cursor)
            rec.prefix_ballot = ballot

    async def _replay(self, vol: Volume, rec: Recovery, client: SeClient) -> None:
        bucket = RateLimiter(rec.rate)
        bs = vol.block_size
        behind_since: float | None = None
        while rec.cursor < rec.upto:
            applied, remaining, records = await client.log_read(
                vol.name, rec.cursor + 1, rec.upto, LOG_BATCH
            )
            if not records:
                behind_since = behind_since or time.monotonic()
                if time.monotonic() - behind_since > PEER_BEHIND_TIMEOUT:
                    raise SeError(
                        client.name, "replay", f"peer stuck at seq {applied} < {rec.upto}"
                    )
                await asyncio.sleep(0.02)
                continue
            behind_since = None
            nbytes = 0
            for r in records:
                if r.seq > rec.upto:
                    break
                if r.seq != rec.cursor + 1:
                    raise SeError(
                        client.name, "replay", f"sent seq {r.seq}, wanted {rec.cursor + 1}"
                    )
                for off, n in _untouched_runs(rec, bs, r.offset, r.length, r.seq):
                    if r.kind == messages.KIND_WRITE:
                        vol.queue_recovered(
                            messages.KIND_WRITE, off, n, r.data[off - r.offset : off - r.offset + n]
                        )
                    else:
                        vol.queue_recovered(r.kind, off, n, b"")
                rec.cursor = r.seq
                rec.cursor_ballot = (r.epoch, r.he_id)
                if r.seq == rec.upto:
                    rec.upto_ballot = (r.epoch, r.he_id)
                nbytes += len(r.data)
            rec.done += nbytes
            rec.total = rec.done + max(0, remaining - nbytes)
            await self._checkpoint(vol, rec)
            await bucket.consume(nbytes)

    async def _full(self, vol: Volume, rec: Recovery, client: SeClient) -> None:
        bucket = RateLimiter(rec.rate)
        bs = vol.block_size
        rec.total = vol.size
        rec.done = rec.cursor
        zeros = bytes(CHUNK)
        since_checkpoint = 0
        while rec.cursor < vol.size:
            n = min(CHUNK, vol.size - rec.cursor)
            deadline = time.monotonic() + PEER_BEHIND_TIMEOUT
            while True:
                peer_seq, data = await client.chunk_read(vol.name, rec.cursor, n)
                if peer_seq >= rec.upto:
                    break
                if time.monotonic() > deadline:
                    raise SeError(
                        client.name, "full copy", f"peer stuck at seq {peer_seq} < {rec.upto}"
                    )
                await asyncio.sleep(0.02)
            sparse = data == zeros[:n]
            for off, length in _untouched_runs(rec, bs, rec.cursor, n, peer_seq):
                if sparse:
                    vol.queue_recovered(messages.KIND_TRIM, off, length, b"")
                else:
                    rel = off - rec.cursor
                    vol.queue_recovered(
                        messages.KIND_WRITE, off, length, bytes(data[rel : rel + length])
                    )
            rec.cursor += n
            rec.done = rec.cursor
            since_checkpoint += n
            if since_checkpoint >= CHECKPOINT_BYTES:
                since_checkpoint = 0
                await self._checkpoint(vol, rec)
            await bucket.consume(n)
        await self._checkpoint(vol, rec)

    async def _finish(self, vol: Volume, rec: Recovery) -> None:
        """Everything <= upto is on disk and the current writes follow it without a gap.

        The volume stays `recovering` until the metadata saying so is durable, and only then
        turns `up` with `applied_seq` = the newest admitted write. The other order (up first,
        then `prefix_seq = top` after the await) had two races: a STATUS in between saw `up`
        with the old prefix (0 after a full copy), and a write admitted during the await
        raised `prefix_seq` past `top`, which the assignment then moved *backwards* (a test
        saw applied_seq 2144 after seq 2145 was acknowledged).
        """
        top = vol.next_seq - 1
        # above upto only the owner's current writes; at upto, what the pull or RECOVER said
        ballot = vol.ballot if top > rec.upto else rec.upto_ballot

        def work() -> None:
            vol.sync_data_blocking()
            vol.write_meta_blocking(
                recovery=None, applied_seq=top, data_synced_seq=top, synced_ballot=list(ballot)
            )

        await vol.call(work)
        # Writes admitted during the await (seq > top) went into `touched` and are in the log;
        # from here on `_admit` advances the prefix itself, as on any up volume.
        if top >= vol.durable_seq:
            vol.durable_seq, vol.top_ballot = top, ballot
        vol.recovery = None
        vol.transition(VolEvent.DONE)
        vol.detail = ""
        vol.advance_prefix(vol.next_seq - 1)
        log.info(
            "SE %s: %s: %s recovery finished at seq %d (%d bytes)",
            self.se.name,
            vol.name,
            rec.kind,
            top,
            rec.done,
        )
