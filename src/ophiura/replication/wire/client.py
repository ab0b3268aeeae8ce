"""The client an HE (or a recovering SE) uses to talk to one storage element.

Requests are pipelined on one TCP connection and matched to responses by id, so the HE can send
every write to every SE at once without a lock held across the round trip (StarFish §7 lost
months to one). A write costs one header `bytes`, the caller's data buffer (not copied) and a MAC,
handed to `transport.writelines` (the frames for one SE queued in one event-loop turn share
one call: fewer loopback send syscalls under load, none delayed at queue depth 1). A
watchdog, not a timer per request, notices an SE that stopped answering: one dead SE must not
cost the fast path of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from ophiura.replication.wire import frames, messages
from ophiura.replication.wire.link import DelayLine, LinkEmulation

log = logging.getLogger(__name__)

__all__ = [
    "LinkEmulation",
    "SeClient",
    "SeError",
    "SeUnavailable",
    "StaleEpoch",
    "VolumeRecovering",
    "VolumeState",
]

DEFAULT_REQUEST_TIMEOUT = 30.0
_RTT_ALPHA = 0.125  # TCP's smoothing factor


@dataclass
class VolumeState:
    """What an SE reports about one volume (the HE decides recovery from it)."""

    volume: str
    epoch: int
    applied_seq: int
    size: int
    block_size: int
    state: str  # "up" | "recovering-replay" | "recovering-full" | "gap" | "failed"
    recovery_done: int = 0
    recovery_total: int = 0
    detail: str = ""  # why a volume is in "gap"/"failed" (e.g. the peer's log is gone)
    # Oldest seq a peer can replay from this SE's log: a replay from s works iff s >= it
    # (the next seq when the log is empty). None when the SE did not say.
    log_first_seq: int | None = None
    he_id: int = 0  # the SE's ballot is (epoch, he_id)
    base_seq: int = 0  # its base once established; messages.NO_BASE while only claimed
    top_ballot: tuple[int, int] = (0, 0)  # the ballot that wrote applied_seq; (0, 0) unknown

    @property
    def ballot(self) -> tuple[int, int]:
        return (self.epoch, self.he_id)

    @classmethod
    def from_msg(cls, m: messages.VolumeStateMsg) -> VolumeState:
        return cls(
            m.volume,
            m.epoch,
            m.applied_seq,
            m.size,
            m.block_size,
            m.state,
            m.recovery_done,
            m.recovery_total,
            m.detail,
            m.log_first_seq or None,
            m.he_id,
            m.base_seq,
            (m.top_epoch, m.top_he_id),
        )


class SeError(Exception):
    """A request to an SE failed. `se` names the SE, `what` the request, the message says why."""

    def __init__(
        self, se: str, what: str, why: str, code: int = messages.ErrorCode.INTERNAL
    ) -> None:
        super().__init__(f"SE {se}: {what}: {why}")
        self.se = se
        self.what = what
        self.why = why
        self.code = code


class StaleEpoch(SeError):
    """The SE holds a newer ballot: this HE was fenced by a takeover."""

    def __init__(self, se: str, what: str, current_epoch: int, current_he_id: int = 0) -> None:
        super().__init__(
            se, what, f"stale ballot; the SE is at epoch {current_epoch} (owner {current_he_id:x})"
        )
        self.current_epoch = current_epoch
        self.current_he_id = current_he_id

    @property
    def current(self) -> tuple[int, int]:
        return (self.current_epoch, self.current_he_id)


class SeUnavailable(SeError):
    """Connection refused, lost, or the SE stopped answering within the timeout."""


class VolumeRecovering(SeError):
    """The volume is recovering on that SE, which therefore serves no reads."""


class LogGoneError(SeError):
    """The peer's replay log no longer holds the records asked for (use full recovery)."""

    def __init__(self, se: str, what: str, oldest_seq: int) -> None:
        super().__init__(se, what, f"log no longer holds them (oldest is {oldest_seq})")
        self.oldest_seq = oldest_seq


class _Protocol(asyncio.Protocol):
    def __init__(self, client: SeClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._connection_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.client._data_in(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)

    def pause_writing(self) -> None:
        self.client._writable.clear()

    def resume_writing(self) -> None:
        self.client._writable.set()


class SeClient:
    """One authenticated, pipelined connection to one SE. Use `await SeClient.connect(...)`."""

    def __init__(
        self,
        name: str,
        secret: bytes,
        link: LinkEmulation | None,
        client_name: str,
        request_timeout: float,
    ) -> None:
        self.name = name
        self.rtt = 0.0
        self.request_timeout = request_timeout
        self._conn = frames.Connection("client", client_name, secret)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], float, str]] = {}
        self._next_id = 1
        self._authed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed_exc: SeError | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._link = link if link is not None and link.active else None
        self._out: DelayLine | None = None
        self._in: DelayLine | None = None
        if self._link is not None:
            self._out = DelayLine(self._link, self._write_now)
            self._in = DelayLine(self._link, self._feed)
        self._watchdog: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._corked: list[Any] | None = None  # frames waiting for the end of this turn

    # -- connection ----------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        name: str,
        host: str,
        port: int,
        secret: bytes,
        *,
        link: LinkEmulation | None = None,
        timeout: float = 5.0,
        client_name: str = "he",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> SeClient:
        """Connect and authenticate; SeUnavailable or SeError (wrong secret) otherwise."""
        self = cls(name, secret, link, client_name, request_timeout)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: _Protocol(self), host, port)
                await self._authed
        except TimeoutError as exc:
            await self.close()
            raise SeUnavailable(
                name, "connect", f"{host}:{port} timed out after {timeout}s"
            ) from exc
        except OSError as exc:
            await self.close()
            raise SeUnavailable(name, "connect", f"{host}:{port}: {exc.strerror or exc}") from exc
        except BaseException:  # SeError (wrong secret) or cancellation: never leak the socket
            await self.close()
            raise
        self._watchdog = asyncio.create_task(self._watch(), name=f"se-client-watchdog-{name}")
        try:
            await self.ping()  # the first RTT sample, including the emulated link
        except BaseException:
            await self.close()
            raise
        return self

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        with contextlib.suppress(OSError, AttributeError):
            import socket

            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_raw(self._conn.data_to_send())

    def _send_raw(self, buffers: list[Any]) -> None:
        if not buffers:
            return
        if self._out is not None:
            self._out.push(buffers, sum(len(b) for b in buffers))
        else:
            self._write_now(buffers)

    def _write_now(self, buffers: list[Any]) -> None:
        """Every frame of an event-loop turn goes out together, in one `writelines` (one send
        syscall) when the turn ends (`call_soon`). Each frame keeps its own MAC. Sending the
        first frame of a turn at once cost a syscall more per turn whenever more followed: at
        4 KiB QD16 (N=3 Q=2, co-located) the HE spent 0.132 ms of CPU per write and 0.058-0.063
        per read that way, 0.116-0.117 and 0.053-0.057 corked, and the SEs 0.10 -> 0.085 ms per
        write; 8 KiB QD1 latency did not move beyond the noise (one loop turn of a few us,
        docs/benchmarks.md)."""
        corked = self._corked
        if corked is not None:
            corked.extend(buffers)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._corked = list(buffers)
            self._loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        out, self._corked = self._corked, None
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.writelines(out)

    def _data_in(self, data: bytes) -> None:
        if self._in is not None:
            self._in.push(data, len(data))
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._closed_exc is not None:
            return
        try:
            events = self._conn.receive_data(data)
        except frames.AuthenticationFailed as exc:
            self._fail(SeError(self.name, "authenticate", str(exc)))
            return
        except messages.ProtocolError as exc:
            log.error("SE %s sent an invalid frame, closing: %s", self.name, exc)
            self._fail(SeUnavailable(self.name, "receive", f"protocol error: {exc}"))
            return
        self._send_raw(self._conn.data_to_send())
        pending = self._pending
        for ev in events:
            entry = pending.pop(getattr(ev, "req_id", 0), None)
            if entry is not None:
                fut, sent, _ = entry
                sample = time.monotonic() - sent
                self.rtt = sample if not self.rtt else self.rtt + _RTT_ALPHA * (sample - self.rtt)
                if not fut.done():
                    fut.set_result(ev)
            elif isinstance(ev, frames.Authenticated):
                if not self._authed.done():
                    self._authed.set_result(None)
            else:
                log.warning("SE %s: unexpected %s (no request waiting)", self.name, ev)

    def _lost(self, exc: Exception | None) -> None:
        why = f"connection lost: {exc}" if exc else "connection closed by the SE"
        self._fail(SeUnavailable(self.name, "connection", why))

    def _fail(self, err: SeError) -> None:
        if self._closed_exc is None:
            self._closed_exc = err
        if not self._authed.done():
            # Nobody awaits `_authed` when the TCP connect itself failed (or after connect()
            # returned), so mark the exception retrieved: otherwise asyncio logs "Future
            # exception was never retrieved" for every refused connection. A connect() that
            # is awaiting it still gets the exception raised.
            self._authed.set_exception(err)
            self._authed.exception()
        pending, self._pending = self._pending, {}
        for fut, _, what in pending.values():
            if not fut.done():
                fut.set_exception(type(err)(self.name, what, err.why))
        if self._transport is not None:
            self._transport.close()
        for line in (self._out, self._in):
            if line is not None:
                line.close()

    async def _watch(self) -> None:
        """Fail the connection if the oldest request waits longer than request_timeout."""
        while self._closed_exc is None:
            await asyncio.sleep(min(1.0, self.request_timeout / 4))
            if not self._pending:
                continue
            _, sent, what = next(iter(self._pending.values()))
            if time.monotonic() - sent > self.request_timeout:
                log.error(
                    "SE %s did not answer %s within %ss", self.name, what, self.request_timeout
                )
                self._fail(SeUnavailable(self.name, what, f"no answer in {self.request_timeout}s"))

    @property
    def connected(self) -> bool:
        return self._closed_exc is None and self._transport is not None

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        self._fail(SeUnavailable(self.name, "close", "client closed the connection"))

    # -- requests ------------------------------------------------------------------------------

    def _request(self, msg: messages.Message, what: str) -> asyncio.Future[Any]:
        if self._closed_exc is not None:
            raise type(self._closed_exc)(self.name, what, self._closed_exc.why)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg.req_id] = (fut, time.monotonic(), what)  # type: ignore[attr-defined]
        self._send_raw(self._conn.send(msg))
        return fut

    def _id(self) -> int:
        rid = self._next_id
        self._next_id = rid + 1
        return rid

    def _raise(self, reply: Any, what: str) -> None:
        if isinstance(reply, messages.StaleEpochMsg):
            raise StaleEpoch(self.name, what, reply.current_epoch, reply.current_he_id)
        if isinstance(reply, messages.Error):
            kind = VolumeRecovering if reply.code == messages.ErrorCode.RECOVERING else SeError
            raise kind(self.name, what, reply.message, reply.code)
        raise SeError(self.name, what, f"unexpected reply {type(reply).__name__}")

    async def _call(self, msg: messages.Message, what: str, expect: type[Any]) -> Any:
        reply = await self._request(msg, what)
        if type(reply) is not expect:
            self._raise(reply, what)
        return reply

    async def ping(self) -> float:
        """One round trip (seconds), also folded into `rtt`."""
        start = time.monotonic()
        await self._call(messages.Ping(self._id()), "ping", messages.Pong)
        return time.monotonic() - start

    async def open_volume(self, volume: str, size: int, block_size: int = 512) -> VolumeState:
        """Create the volume if the SE lacks it; either way its state (size may differ)."""
        what = f"open volume {volume}"
        reply = await self._call(
            messages.OpenVolume(self._id(), volume, size, block_size), what, messages.VolumeStateMsg
        )
        return VolumeState.from_msg(reply)

    async def set_epoch(
        self, volume: str, epoch: int, *, he_id: int = 0, base: int = messages.NO_BASE
    ) -> VolumeState:
        """Claim the ballot (epoch, he_id) (`base=messages.NO_BASE`), or claim and establish it with
        its base: the SE then drops what it holds above `base` from an older ballot."""
        what = f"set ballot ({epoch}, {he_id:x}) on {volume}"
        msg = messages.SetEpoch(self._id(), volume, epoch, he_id, base)
        reply = await self._call(msg, what, messages.VolumeStateMsg)
        return VolumeState.from_msg(reply)

    async def write(
        self,
        volume: str,
        epoch: int,
        seq: int,
        offset: int,
        data: Any,
        *,
        he_id: int = 0,
        base: int = 0,
    ) -> int:
        """Returns `seq` once the SE made the write durable. `data` is sent without a copy."""
        reply = await self.write_nowait(volume, epoch, seq, offset, data, he_id=he_id, base=base)
        if type(reply) is not messages.Ack:
            self._raise(reply, f"write seq {seq} to {volume}")
        return reply.seq

    def write_nowait(
        self,
        volume: str,
        epoch: int,
        seq: int,
        offset: int,
        data: Any,
        *,
        he_id: int = 0,
        base: int = 0,
    ) -> asyncio.Future[Any]:
        """`write` without a coroutine: the request is on the wire (or in the emulated link)
        when this returns; the future gets the SE's reply, to be checked by `check_ack`."""
        msg = messages.Write(self._id(), volume, epoch, he_id, base, seq, offset, data)
        return self._request(msg, "write")

    def trim_nowait(
        self,
        volume: str,
        epoch: int,
        seq: int,
        offset: int,
        length: int,
        zero: bool = False,
        *,
        he_id: int = 0,
        base: int = 0,
    ) -> asyncio.Future[Any]:
        what = f"{'write zeroes' if zero else 'trim'} seq {seq} on {volume}"
        msg = messages.Trim(self._id(), volume, epoch, he_id, base, seq, offset, length, int(zero))
        return self._request(msg, what)

    def check_ack(self, reply: Any, op: Any) -> None:
        """Raise what `write`/`trim` would for a reply that is not an Ack."""
        if type(reply) is not messages.Ack:
            self._raise(reply, f"seq {op.seq} ({op.kind.name.lower()})")

    async def trim(
        self,
        volume: str,
        epoch: int,
        seq: int,
        offset: int,
        length: int,
        zero: bool = False,
        *,
        he_id: int = 0,
        base: int = 0,
    ) -> int:
        what = f"{'write zeroes' if zero else 'trim'} seq {seq} on {volume}"
        reply = await self.trim_nowait(
            volume, epoch, seq, offset, length, zero, he_id=he_id, base=base
        )
        if type(reply) is not messages.Ack:
            self._raise(reply, what)
        return reply.seq

    async def read(
        self, volume: str, offset: int, length: int, *, ballot: tuple[int, int] = (0, 0)
    ) -> bytes:
        return (await self.read_with_seq(volume, offset, length, ballot=ballot))[1]

    async def read_with_seq(
        self, volume: str, offset: int, length: int, *, ballot: tuple[int, int] = (0, 0)
    ) -> tuple[int, bytes]:
        """(applied_seq when read, data): lets the HE check the SE had the latest write.
        With a `ballot`, only the SE's current owner is served (a fenced HE gets StaleEpoch)."""
        what = f"read {length} bytes at {offset} of {volume}"
        msg = messages.Read(self._id(), volume, offset, length, ballot[0], ballot[1])
        reply = await self._call(msg, what, messages.Data)
        return reply.applied_seq, reply.data

    async def recover(
        self,
        volume: str,
        epoch: int,
        kind: str,
        peer: tuple[str, str, int],
        upto_seq: int,
        rate: int = 0,
        *,
        he_id: int = 0,
        upto_ballot: tuple[int, int] = (0, 0),
    ) -> None:
        """Start recovery (kind "replay" or "full") from `peer` (name, host, port);
        `upto_ballot` is the ballot that wrote `upto_seq` in the owner's history, if known."""
        name, host, port = peer
        what = f"recover {volume} ({kind} from {name} up to seq {upto_seq})"
        msg = messages.Recover(
            self._id(), volume, epoch, kind, name, host, port, upto_seq, rate, he_id, *upto_ballot
        )
        await self._call(msg, what, messages.Ok)

    async def volume_state(self, volume: str) -> VolumeState:
        reply = await self._call(
            messages.Status(self._id(), volume), f"status of {volume}", messages.VolumeStateMsg
        )
        return VolumeState.from_msg(reply)

    async def resize_volume(self, volume: str, size: int) -> VolumeState:
        what = f"resize {volume} to {size}"
        reply = await self._call(
            messages.Resize(self._id(), volume, size), what, messages.VolumeStateMsg
        )
        return VolumeState.from_msg(reply)

    async def delete_volume(self, volume: str) -> None:
        await self._call(messages.Delete(self._id(), volume), f"delete {volume}", messages.Ok)

    async def list_volumes(self) -> list[VolumeState]:
        reply = await self._call(
            messages.ListVolumes(self._id()), "list volumes", messages.VolumeList
        )
        return [VolumeState.from_msg(m) for m in messages.decode_volume_list(reply.entries)]

    # -- peer (SE-to-SE recovery) ------------------------------------------------------------

    async def log_read(
        self, volume: str, from_seq: int, upto_seq: int, max_bytes: int
    ) -> tuple[int, int, list[messages.WireLogRecord]]:
        """(peer applied_seq, remaining bytes estimate, records); LogGoneError if trimmed."""
        what = f"log read {volume} from seq {from_seq}"
        reply = await self._request(
            messages.LogRead(self._id(), volume, from_seq, upto_seq, max_bytes), what
        )
        if isinstance(reply, messages.LogGone):
            raise LogGoneError(self.name, what, reply.oldest_seq)
        if not isinstance(reply, messages.LogRecords):
            self._raise(reply, what)
        return (
            reply.applied_seq,
            reply.remaining,
            messages.unpack_log_records(reply.records, reply.count),
        )

    async def chunk_read(self, volume: str, offset: int, length: int) -> tuple[int, bytes]:
        """(peer applied_seq at the moment of the read, data)."""
        what = f"chunk read {length} at {offset} of {volume}"
        reply = await self._call(
            messages.ChunkRead(self._id(), volume, offset, length), what, messages.Chunk
        )
        return reply.applied_seq, reply.data
