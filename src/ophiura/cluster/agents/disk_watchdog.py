"""`disk-watchdog`: read/modify/write a reserved block periodically (linux-ha-shared-storage §7.5:
"a disk watchdog which attempts to read/modify/write specific data blocks on the disks in short
intervals to make sure they are still alive ... adapters, cables and bus termination").

Params: `device` (required: block device or file), `offset` (required: byte offset of the block
reserved for this node, a multiple of `block_size` — never a block a filesystem uses), `block_size`
(default 4096), `interval` (seconds between checks, default the resource's monitor interval),
`deadline` (seconds one read/modify/write may take, default 5), `direct` (`auto` (default): O_DIRECT
so the disk is read, not the page cache — the seed's "otherwise we'll always read the buffer
cache" — falling back to O_DSYNC + drop-cache where O_DIRECT is refused (tmpfs); `yes`; `no`).

The block holds `OPHIURA-WD1 | node | counter | time | crc32`; each round reads it, checks it
(a torn or foreign block is just rewritten), writes counter+1 with O_DSYNC, and reads it back.

- start: one round in the foreground (must succeed within `deadline`), then a dedicated thread
  repeats it every `interval`. A thread, not the event loop: I/O to a dying disk blocks in the
  kernel, and must block neither heartbeats nor other monitors.
- monitor never does I/O itself, so it cannot hang: it reads the thread's record. The last round
  failed, or took longer than `deadline`, or a round has been in flight longer than `deadline`
  (the disk hangs), or no round completed within `interval + deadline` -> ERR_GENERIC with the
  reason; not started -> NOT_RUNNING.
- stop: stops the thread (a round stuck in the kernel is abandoned, the thread is a daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import ParamError, Params, config_error, done

MAGIC = b"OPHIURA-WD1\0"
_HEADER = struct.Struct(">12s64sQdI")  # magic, node, counter, unix time, crc32 of the rest


class WatchdogIOError(Exception):
    """One read/modify/write round failed; the message says which step."""


@dataclass(frozen=True)
class WdSpec:
    device: str
    offset: int
    block_size: int
    interval: float
    deadline: float
    direct: str
    node: str

    @classmethod
    def of(cls, resource: Resource) -> WdSpec:
        p = Params(resource)
        block = p.integer("block_size", 4096, minimum=512)
        if block & (block - 1) or block < _HEADER.size:
            raise ParamError(resource.name, "block_size", "must be a power of two >= 512")
        offset = p.integer("offset", -1, minimum=-1)
        if offset < 0:
            raise ParamError(resource.name, "offset", "is required (a block reserved for this)")
        if offset % block:
            raise ParamError(resource.name, "offset", f"must be a multiple of {block}")
        return cls(
            device=p.text("device"),
            offset=offset,
            block_size=block,
            interval=p.number("interval", resource.monitor_interval, minimum=0.01),
            deadline=p.number("deadline", 5.0, minimum=0.0),
            direct=p.choice("direct", ("auto", "yes", "no"), "auto"),
            node=p.text("node", os.uname().nodename),
        )


def encode_block(node: str, counter: int, size: int) -> bytes:
    body = _HEADER.pack(MAGIC, node.encode()[:64], counter, time.time(), 0)
    crc = zlib.crc32(body[:-4])
    return body[:-4] + struct.pack(">I", crc) + bytes(size - _HEADER.size)


def decode_counter(block: bytes) -> int | None:
    """The counter of a valid block, None for a blank, torn or foreign one."""
    magic, _node, counter, _t, crc = _HEADER.unpack_from(block)
    if magic != MAGIC or zlib.crc32(block[: _HEADER.size - 4]) != crc:
        return None
    return counter


def rmw_once(spec: WdSpec, counter: int) -> tuple[int, float]:
    """One read/modify/write/read-back round; (new counter, seconds). Raises WatchdogIOError."""
    t0 = time.monotonic()
    flags = os.O_RDWR | os.O_DSYNC | os.O_CLOEXEC
    direct = spec.direct != "no"
    try:
        try:
            fd = os.open(spec.device, flags | (os.O_DIRECT if direct else 0))
        except OSError as exc:
            if not (direct and spec.direct == "auto" and exc.errno == 22):  # EINVAL: no O_DIRECT
                raise
            direct = False
            fd = os.open(spec.device, flags)
    except OSError as exc:
        raise WatchdogIOError(f"open {spec.device}: {exc.strerror}") from exc
    buf = mmap.mmap(-1, spec.block_size)  # page-aligned, as O_DIRECT needs
    try:
        step = "read"
        try:
            if not direct:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, spec.offset, spec.block_size, os.POSIX_FADV_DONTNEED)
            n = os.preadv(fd, [buf], spec.offset)
            old = decode_counter(bytes(buf)) if n == spec.block_size else None
            new = max(counter, old or 0) + 1
            buf.seek(0)
            buf.write(encode_block(spec.node, new, spec.block_size))
            step = "write"
            if os.pwritev(fd, [buf], spec.offset) != spec.block_size:
                raise WatchdogIOError(f"short write at {spec.offset} of {spec.device}")
            step = "read back"
            if not direct:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, spec.offset, spec.block_size, os.POSIX_FADV_DONTNEED)
            back = mmap.mmap(-1, spec.block_size)
            try:
                os.preadv(fd, [back], spec.offset)
                if decode_counter(bytes(back)) != new:
                    raise WatchdogIOError(f"read back of {spec.device}@{spec.offset} differs")
            finally:
                back.close()
        except OSError as exc:
            raise WatchdogIOError(f"{step} {spec.device}@{spec.offset}: {exc.strerror}") from exc
    finally:
        buf.close()
        os.close(fd)
    return new, time.monotonic() - t0


@dataclass
class WdState:
    spec: WdSpec
    stop: threading.Event = field(default_factory=threading.Event)
    counter: int = 0
    rounds: int = 0
    in_flight_since: float | None = None
    last_ok_at: float | None = None
    last_latency: float = 0.0
    last_error: str | None = None
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def round(self) -> None:
        with self.lock:
            self.in_flight_since = time.monotonic()
        try:
            counter, latency = rmw_once(self.spec, self.counter)
        except WatchdogIOError as exc:
            with self.lock:
                self.last_error, self.in_flight_since = str(exc), None
                self.rounds += 1
            return
        with self.lock:
            self.counter, self.last_latency = counter, latency
            self.last_ok_at, self.in_flight_since, self.last_error = time.monotonic(), None, None
            self.rounds += 1

    def loop(self) -> None:
        while not self.stop.wait(self.spec.interval):
            self.round()

    def verdict(self) -> tuple[OcfCode, str]:
        now, s = time.monotonic(), self.spec
        with self.lock:
            if self.in_flight_since is not None and now - self.in_flight_since > s.deadline:
                return OcfCode.ERR_GENERIC, (
                    f"I/O to {s.device} hung for {now - self.in_flight_since:.1f}s "
                    f"(deadline {s.deadline:g}s)"
                )
            if self.last_error:
                return OcfCode.ERR_GENERIC, self.last_error
            if self.last_latency > s.deadline:
                return OcfCode.ERR_GENERIC, (
                    f"read/modify/write of {s.device} took {self.last_latency:.3f}s "
                    f"(deadline {s.deadline:g}s)"
                )
            if self.last_ok_at is None or now - self.last_ok_at > s.interval + s.deadline + 1:
                return OcfCode.ERR_GENERIC, f"no completed round on {s.device} recently"
            return OcfCode.SUCCESS, ""


class DiskWatchdogAgent:
    def __init__(self) -> None:
        self._running: dict[str, WdState] = {}

    def state(self, resource: Resource) -> WdState | None:
        return self._running.get(resource.name)

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = WdSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        current = self._running.get(resource.name)
        if (
            current is not None
            and current.spec == spec
            and current.thread is not None
            and current.thread.is_alive()
        ):
            return done(OcfCode.SUCCESS, t0, "already running")
        await self.stop(resource, timeout)
        st = WdState(spec)
        name = f"disk-watchdog-{resource.name}"
        first = threading.Thread(target=st.round, name=name, daemon=True)
        first.start()
        limit = min(timeout, spec.deadline) if spec.deadline > 0 else timeout
        while first.is_alive() and time.monotonic() - t0 < limit:
            await asyncio.sleep(0.01)
        code, reason = st.verdict()
        if first.is_alive() or code != OcfCode.SUCCESS:
            st.stop.set()
            return done(OcfCode.ERR_GENERIC, t0, reason or f"first round on {spec.device} hung")
        st.thread = threading.Thread(target=st.loop, name=name, daemon=True)
        st.thread.start()
        self._running[resource.name] = st
        return done(OcfCode.SUCCESS, t0, f"round took {st.last_latency * 1e3:.2f} ms")

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        st = self._running.pop(resource.name, None)
        if st is not None:
            st.stop.set()
            if st.thread is not None:
                deadline = time.monotonic() + min(timeout, 1.0)
                while st.thread.is_alive() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
        return done(OcfCode.SUCCESS, t0)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        st = self._running.get(resource.name)
        if st is None:
            return done(OcfCode.NOT_RUNNING, t0)
        code, reason = st.verdict()
        if code == OcfCode.SUCCESS and st.thread is not None and not st.thread.is_alive():
            code, reason = OcfCode.ERR_GENERIC, "watchdog thread ended"
        return done(code, t0, reason)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            WdSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        return done(OcfCode.SUCCESS, t0)
