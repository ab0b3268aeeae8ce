"""The storage element server: volumes on local disk, served to HEs and peer SEs over TCP.

Each connection first proves the shared secret (protocol.Connection); a peer that fails is
logged once and dropped while every other connection carries on. Requests are handled as they
arrive and answered as they finish, so answers may be out of order: a slow chunk read for a
recovering peer never holds up the HE's write acknowledgements. Writes take a fast path (no task
per write): the volume's future gets a callback that sends the ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
from pathlib import Path
from typing import Any

from ophiura.block.io_threads import IoThreads
from ophiura.replication.se.lifecycle import VolState
from ophiura.replication.se.recovery import RecoveryManager
from ophiura.replication.se.store import (
    VOLUME_NAME,
    Op,
    StaleEpochError,
    Volume,
    VolumeError,
)
from ophiura.replication.wire import frames, messages

log = logging.getLogger(__name__)

DEFAULT_LOG_SIZE = 256 << 20
# The `NAME.scsi` companion volumes (scsi_state: two 128 KiB slots) get a small log: a few
# dozen slot writes to replay from, and nothing to scan at start. An existing log keeps its size.
SCSI_LOG_SIZE = 4 << 20
SCSI_SUFFIX = ".scsi"
MAX_IN_FLIGHT = 4096  # requests per connection before the SE stops reading from it


class _ServerConnection(asyncio.Protocol):
    def __init__(self, se: StorageElement) -> None:
        self.se = se
        self.conn = frames.Connection("server", se.name, se.secret)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0  # requests received and not yet answered
        self.paused = False
        self.corked: list[Any] | None = None  # responses waiting for the end of this turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        addr = transport.get_extra_info("peername")
        self.peer = f"{addr[0]}:{addr[1]}" if addr else "?"
        with contextlib.suppress(OSError, AttributeError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.se._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.se._connections.discard(self)
        for task in self.tasks:
            task.cancel()

    def send(self, msg: messages.Message) -> None:
        """Send a response (every request gets exactly one).

        The first response of an event-loop turn goes out at once; the ones after it in the
        same turn (the ACKs of one group commit) share one `writelines` at the end of the turn.
        """
        self.in_flight -= 1
        if self.transport is None or self.transport.is_closing():
            return
        frame = self.conn.send(msg)
        if self.corked is not None:
            self.corked.extend(frame)
        else:
            self.transport.writelines(frame)
            self.corked = []
            asyncio.get_running_loop().call_soon(self._uncork)
        if self.paused and self.in_flight < MAX_IN_FLIGHT // 2:
            self.paused = False
            self.transport.resume_reading()

    def _uncork(self) -> None:
        out, self.corked = self.corked, None
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except frames.AuthenticationFailed as exc:
            log.warning("SE %s: rejected connection from %s: %s", self.se.name, self.peer, exc)
            self._flush_handshake()
            self._close()
            return
        except messages.ProtocolError as exc:
            log.error(
                "SE %s: protocol error from %s (%s), closing: %s",
                self.se.name,
                self.peer,
                self.conn.peer_name,
                exc,
            )
            self._close()
            return
        self._flush_handshake()
        for ev in events:
            if isinstance(ev, frames.Authenticated):
                log.info("SE %s: %s authenticated from %s", self.se.name, ev.peer_name, self.peer)
                continue
            self.in_flight += 1
            if type(ev) is messages.Write:
                self._write(ev)
            elif type(ev) is messages.Read and self._read_cached(ev):
                pass
            else:
                task = asyncio.create_task(self._handle(ev))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        if self.in_flight > MAX_IN_FLIGHT and not self.paused and self.transport is not None:
            # Bounded: a client that pipelines without limit stops being read until we catch up.
            self.paused = True
            self.transport.pause_reading()

    def _flush_handshake(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.writelines(out)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- writes: no task per write --------------------------------------------------------

    def _write(self, msg: messages.Write) -> None:
        rid = msg.req_id
        if msg.volume in self.se._opening:  # the SE is starting: wait for the volume
            task = asyncio.create_task(self._write_when_open(msg))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        try:
            vol = self.se.volume(msg.volume)
            op = Op(
                messages.KIND_WRITE,
                msg.seq,
                msg.epoch,
                msg.offset,
                len(msg.data),
                msg.data,  # type: ignore[arg-type]
                None,
                msg.he_id,
                msg.base_seq,
            )
            fut = vol.submit(op)
        except VolumeError as exc:
            self.send(self._error(rid, exc))
            return
        fut.add_done_callback(lambda f: self._acked(rid, f))

    async def _write_when_open(self, msg: messages.Write) -> None:
        with contextlib.suppress(Exception):  # a failed open: `_write` answers NO_VOLUME
            await self.se.ready_volume(msg.volume)
        self._write(msg)

    def _acked(self, rid: int, fut: asyncio.Future[int]) -> None:
        if fut.cancelled():
            self.send(
                messages.Error(rid, messages.ErrorCode.INTERNAL, "write cancelled (SE stopping)")
            )
            return
        exc = fut.exception()
        if exc is None:
            self.send(messages.Ack(rid, fut.result()))
        elif isinstance(exc, VolumeError):
            self.send(self._error(rid, exc))
        else:
            log.error("SE %s: write failed: %s", self.se.name, exc)
            self.send(messages.Error(rid, messages.ErrorCode.IO_ERROR, str(exc)))

    # -- reads: answered inline when the page cache has them --------------------------------

    def _read_cached(self, msg: messages.Read) -> bool:
        """Answer a READ now if its data is in the page cache (no task, no thread hop);
        False leaves it to `_handle` (a miss, a volume still opening, any error)."""
        vol = self.se.volumes.get(msg.volume)
        if vol is None or msg.length > frames.MAX_DATA:
            return False
        try:
            seq, buf, done = vol.read_cached(msg.offset, msg.length, (msg.epoch, msg.he_id))
        except VolumeError:
            return False  # `_handle` answers it, with the same error
        if done < msg.length:
            return False
        self.send(messages.Data(msg.req_id, seq, buf))
        return True

    @staticmethod
    def _error(rid: int, exc: VolumeError) -> messages.Message:
        if isinstance(exc, StaleEpochError):
            return messages.StaleEpochMsg(rid, exc.current[0], exc.current[1])
        return messages.Error(rid, exc.code, str(exc))

    # -- everything else -----------------------------------------------------------------

    async def _handle(self, msg: Any) -> None:
        rid = msg.req_id
        try:
            reply = await self.se.handle(msg)
        except VolumeError as exc:
            reply = self._error(rid, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("SE %s: %s failed", self.se.name, type(msg).__name__)
            reply = messages.Error(rid, messages.ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        self.send(reply)


class StorageElement:
    """`await se.start()`, then serve until `await se.stop()`; `.port` is the bound port."""

    def __init__(
        self,
        name: str,
        data_dir: Path | str,
        host: str,
        port: int,
        secret: bytes,
        log_dir: Path | str | None = None,
        log_size: int = DEFAULT_LOG_SIZE,
        recovery_rate: int = 0,
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir / "logs"
        self.host = host
        self.port = port
        self.secret = secret
        self.log_size = log_size
        self.recovery_rate = recovery_rate
        self.volumes: dict[str, Volume] = {}
        self._opening: dict[str, asyncio.Future[Volume]] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._reads: IoThreads | None = None
        self.recovery = RecoveryManager(self)

    async def start(self) -> None:
        """Listen first, then open the existing volumes concurrently (each on its own thread).

        Connections are accepted and authenticated meanwhile; a request for a volume still
        being opened waits for it (never "no such volume": an HE would create it afresh).
        Returns once every volume is open; a volume that cannot be opened fails the start.
        """
        (self.data_dir / "volumes").mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._reads = IoThreads(4, name=f"se-{self.name}-read")
        loop = asyncio.get_running_loop()
        names = [
            vdir.name
            for vdir in sorted((self.data_dir / "volumes").iterdir())
            if vdir.is_dir() and VOLUME_NAME.match(vdir.name) and (vdir / "meta").exists()
        ]
        for name in names:
            self._opening[name] = loop.create_future()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        results = await asyncio.gather(
            *[self._open_existing(name) for name in names], return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        log.info(
            "SE %s serving %d volumes on %s:%d", self.name, len(self.volumes), self.host, self.port
        )

    async def _open_existing(self, name: str) -> None:
        fut = self._opening[name]
        try:
            assert self._reads is not None
            vol = await Volume.open(
                name,
                self.data_dir / "volumes" / name,
                self._log_path(name),
                self._log_size(name),
                self._reads,
            )
            self.volumes[name] = vol
            await self.recovery.reload(vol)
            fut.set_result(vol)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved here; waiting requests get it too
            raise
        finally:
            del self._opening[name]

    async def _reopen(self, name: str, vol: Volume) -> Volume:
        """A volume that failed on disk (ENOSPC, EIO) is re-derived from its files, as a restart
        of the SE would, when its owner attaches again: the space may be back. What it then
        reports (the log recovered forward from the synced point) is what it durably holds."""
        if name in self._opening:
            return await asyncio.shield(self._opening[name])
        log.warning("SE %s: reopening volume %s from disk after: %s", self.name, name, vol.detail)
        fut = self._opening[name] = asyncio.get_running_loop().create_future()
        try:
            await self.recovery.forget(vol)
            await vol.close()
            await self._open_existing(name)  # resolves and removes `fut`
        except Exception as exc:  # still failing: keep the closed volume, failed, for later
            vol.failed_again(f"volume {name} failed on disk and cannot be reopened yet: {exc}")
            self.volumes[name] = vol
            log.error("SE %s: %s", self.name, vol.detail)
            return vol
        finally:
            # Requests that waited for this reopen get what it gave (the failed volume if it
            # failed), never a future nobody resolves: that would wedge the volume for good.
            if not fut.done():
                fut.set_result(self.volumes[name])
            if self._opening.get(name) is fut:
                del self._opening[name]
        return self.volumes[name]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                conn._close()
            await self._server.wait_closed()
            self._server = None
        await self.recovery.stop()
        for vol in list(self.volumes.values()):
            await vol.close()
        self.volumes.clear()
        if self._reads is not None:
            self._reads.shutdown()
            self._reads = None

    def _log_path(self, volume: str) -> Path:
        return self.log_dir / f"{volume}.log"

    def _log_size(self, volume: str) -> int:
        if volume.endswith(SCSI_SUFFIX):
            return min(self.log_size, SCSI_LOG_SIZE)
        return self.log_size

    def volume(self, name: str) -> Volume:
        vol = self.volumes.get(name)
        if vol is None:
            raise VolumeError(
                f"SE {self.name} has no volume {name!r}", messages.ErrorCode.NO_VOLUME
            )
        return vol

    async def ready_volume(self, name: str) -> Volume:
        """`volume(name)`, after waiting for it if it is still being opened."""
        opening = self._opening.get(name)
        if opening is not None:
            await asyncio.shield(opening)
        return self.volume(name)

    # -- request dispatch ------------------------------------------------------------------

    async def handle(self, msg: Any) -> messages.Message:
        rid = msg.req_id
        if isinstance(msg, messages.Ping):
            return messages.Pong(rid, msg.note)
        if isinstance(msg, messages.OpenVolume):
            return self._state(rid, await self.open_volume(msg.volume, msg.size, msg.block_size))
        if isinstance(msg, messages.ListVolumes):
            for fut in list(self._opening.values()):  # the whole list, never half of it
                with contextlib.suppress(Exception):
                    await asyncio.shield(fut)
            states = [self._state(0, v) for v in self.volumes.values()]
            return messages.VolumeList(rid, messages.encode_volume_list(states))  # type: ignore[arg-type]
        vol = await self.ready_volume(msg.volume)
        if isinstance(msg, messages.Trim):
            kind = messages.KIND_ZERO if msg.zero else messages.KIND_TRIM
            op = Op(kind, msg.seq, msg.epoch, msg.offset, msg.length, b"", None, msg.he_id)
            op.base = msg.base_seq
            seq = await vol.submit(op)
            return messages.Ack(rid, seq)
        if isinstance(msg, messages.Read):
            if msg.length > frames.MAX_DATA:
                raise VolumeError(
                    f"read of {msg.length} bytes too large", messages.ErrorCode.BAD_REQUEST
                )
            seq, data = await vol.read(msg.offset, msg.length, (msg.epoch, msg.he_id))
            return messages.Data(rid, seq, data)
        if isinstance(msg, messages.SetEpoch):
            await vol.set_epoch(msg.epoch, msg.he_id, msg.base_seq)
            return self._state(rid, vol)
        if isinstance(msg, messages.Status):
            return self._state(rid, vol)
        if isinstance(msg, messages.Recover):
            await self.recovery.start(vol, msg)
            return messages.Ok(rid)
        if isinstance(msg, messages.LogRead):
            found = await vol.log_read(
                msg.from_seq, msg.upto_seq, min(msg.max_bytes, frames.MAX_DATA)
            )
            if found is None:
                return messages.LogGone(rid, vol.log_oldest())
            applied, remaining, records = found
            wire = [
                messages.WireLogRecord(r.seq, r.epoch, r.offset, r.length, r.kind, r.data, r.he_id)
                for r in records
            ]
            return messages.LogRecords(
                rid, applied, len(wire), remaining, messages.pack_log_records(wire)
            )
        if isinstance(msg, messages.ChunkRead):
            if msg.length > frames.MAX_DATA:
                raise VolumeError(
                    f"chunk of {msg.length} bytes too large", messages.ErrorCode.BAD_REQUEST
                )
            seq, data = await vol.chunk_read(msg.offset, msg.length)
            return messages.Chunk(rid, seq, data)
        if isinstance(msg, messages.Resize):
            await vol.resize(msg.size)
            return self._state(rid, vol)
        if isinstance(msg, messages.Delete):
            await self.delete_volume(msg.volume)
            return messages.Ok(rid)
        raise VolumeError(f"{type(msg).__name__} is not a request", messages.ErrorCode.BAD_REQUEST)

    @staticmethod
    def _state(rid: int, vol: Volume) -> messages.VolumeStateMsg:
        s = vol.status()
        return messages.VolumeStateMsg(
            rid,
            s["epoch"],
            s["applied_seq"],
            s["size"],
            s["block_size"],
            s["recovery_done"],
            s["recovery_total"],
            s["volume"],
            s["state"],
            s["detail"],
            s["log_first_seq"],
            s["he_id"],
            s["base_seq"],
            s["top_ballot"][0],
            s["top_ballot"][1],
        )

    async def open_volume(self, name: str, size: int, block_size: int) -> Volume:
        """The existing volume (whatever its size: the HE resizes), or a new empty one."""
        if not VOLUME_NAME.match(name):
            raise VolumeError(f"bad volume name {name!r}", messages.ErrorCode.BAD_REQUEST)
        vol = self.volumes.get(name)
        if vol is not None and vol.life is VolState.FAILED and vol.may_reopen():
            vol = await self._reopen(name, vol)
        if vol is not None:
            if vol.block_size != block_size:
                raise VolumeError(
                    f"volume {name} has block size {vol.block_size}, not {block_size}",
                    messages.ErrorCode.BAD_REQUEST,
                )
            return vol
        if name in self._opening:
            return await asyncio.shield(self._opening[name])
        if block_size <= 0 or block_size & (block_size - 1) or size <= 0 or size % block_size:
            raise VolumeError(
                f"bad size {size} / block size {block_size}", messages.ErrorCode.BAD_REQUEST
            )
        fut: asyncio.Future[Volume] = asyncio.get_running_loop().create_future()
        self._opening[name] = fut
        try:
            assert self._reads is not None
            vol = await Volume.open(
                name,
                self.data_dir / "volumes" / name,
                self._log_path(name),
                self._log_size(name),
                self._reads,
                create=(size, block_size),
            )
            self.volumes[name] = vol
            fut.set_result(vol)
            log.info("SE %s: created volume %s (%d bytes)", self.name, name, size)
            return vol
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved here; the awaiting openers get it too
            raise
        finally:
            del self._opening[name]

    async def delete_volume(self, name: str) -> None:
        vol = await self.ready_volume(name)
        del self.volumes[name]
        await self.recovery.forget(vol)
        await vol.close()
        await asyncio.to_thread(shutil.rmtree, vol.dir, True)
        with contextlib.suppress(FileNotFoundError):
            self._log_path(name).unlink()
        log.info("SE %s: deleted volume %s", self.name, name)
