"""Heartbeat I/O: UDP on every link to every peer, on a thread with its own event loop.

Heartbeats must never queue behind resource work: a slow agent, a busy main loop, a CPU hog or an
I/O burst on the main thread cannot delay sending or receiving, because this thread has its own
asyncio loop and touches nothing but its sockets, the codec, and a small lock-protected table.
(The GIL still switches threads every 5 ms, far below any deadline.)

The main loop reads `snapshot()` (last-heard times, latest report per peer, rejection counts)
and writes `set_payload()` (our node state and hierarchy states). `resumed_at` records when this
thread itself last stalled (SIGSTOP, a VM pause) past half a deadline, so membership gives every
peer a fresh deadline instead of declaring them all dead the moment we wake up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ophiura.cluster import heartbeat as hb
from ophiura.cluster.config import ClusterConfig
from ophiura.cluster.events import RateLimiter
from ophiura.cluster.linkstats import LinkStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeartbeatSnapshot:
    last_heard: dict[tuple[str, str], float]  # (peer, link name) -> monotonic
    reports: dict[str, hb.Heartbeat]  # peer -> newest accepted heartbeat
    resumed_at: float
    rejected: dict[str, int]  # reason -> count
    sent: int
    blocked_links: frozenset[int]


@dataclass
class _Payload:
    state: str = "starting"
    hierarchies: dict[str, hb.HierReport] = field(default_factory=dict)
    admin: dict[str, Any] = field(default_factory=dict)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, service: HeartbeatService, link: int) -> None:
        self.service = service
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service._received(data, addr, self.link)

    def error_received(self, exc: Exception) -> None:
        self.service._io_error(self.link, exc)


class HeartbeatService:
    def __init__(
        self,
        cfg: ClusterConfig,
        me: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_tick = on_tick  # after each send, on this thread (the watchdog kick)
        self.me = me
        self.key = cfg.key("heartbeat")
        self.on_event = on_event  # called on this thread: must only enqueue
        # A new random id per start, never a time: a restart is a new incarnation whatever the
        # wall clock says, and peers accept it once it echoes their challenge (heartbeat.py).
        self.incarnation = secrets.randbits(63)
        self.seq = 0
        self.peers = frozenset(n for n in cfg.nodes if n != me)
        self.guard = hb.ReplayGuard(cfg.name, me, self.peers)  # touched under self._lock only
        self.stats = LinkStats(list(self.peers), [ln.name for ln in cfg.links])  # RTT, loss
        self._lock = threading.Lock()
        self._payload = _Payload()
        self._last_heard: dict[tuple[str, str], float] = {}
        self._reports: dict[str, hb.Heartbeat] = {}
        self._rejected: collections.Counter[str] = collections.Counter()
        self._resumed_at = 0.0
        self._sent = 0
        self._blocked: set[int] = set()
        self._limit = RateLimiter(5.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._transports: list[asyncio.DatagramTransport] = []

    # -- main-thread API ----------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> None:
        """Bind every link and begin; raises OSError if a socket cannot be bound."""
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("heartbeat thread did not start")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 2.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def set_payload(
        self, state: str, hierarchies: dict[str, hb.HierReport], admin: dict[str, Any]
    ) -> None:
        with self._lock:
            self._payload = _Payload(state, dict(hierarchies), dict(admin))

    def snapshot(self) -> HeartbeatSnapshot:
        with self._lock:
            return HeartbeatSnapshot(
                dict(self._last_heard),
                dict(self._reports),
                self._resumed_at,
                dict(self._rejected),
                self._sent,
                frozenset(self._blocked),
            )

    def block_link(self, link: int, blocked: bool) -> None:
        """Test hook: drop everything sent or received on one link, as if its cable were cut."""
        with self._lock:
            (self._blocked.add if blocked else self._blocked.discard)(link)

    def note_stall(self, at: float) -> None:
        """The main loop saw itself stall: give peers a fresh deadline too."""
        with self._lock:
            self._resumed_at = max(self._resumed_at, at)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # report to start(), then end the thread
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            for i, link in enumerate(self.cfg.links):
                addr = link.addresses[self.me]
                sock = socket.socket(
                    socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_DGRAM
                )
                with contextlib.suppress(OSError):  # best effort: ahead of bulk traffic in qdiscs
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 6)
                # No SO_REUSEADDR: on UDP it would let a second daemon for this node bind the same
                # port and silently take half the heartbeats.
                try:
                    sock.bind(addr)
                except OSError as exc:
                    sock.close()
                    raise OSError(
                        exc.errno, f"{link.name} {addr[0]}:{addr[1]}: {exc.strerror}"
                    ) from exc
                sock.setblocking(False)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda i=i: _Protocol(self, i), sock=sock
                )
                self._transports.append(transport)  # type: ignore[arg-type]
        except OSError as exc:
            for t in self._transports:
                t.close()
            raise OSError(exc.errno, f"cannot bind heartbeat link {exc.strerror}") from exc
        self._ready.set()
        sender = asyncio.create_task(self._sender())
        await self._stop.wait()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        for t in self._transports:
            t.close()

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        last_tick = time.monotonic()
        while True:
            # read each round: a configuration reload (daemon.py) may change the timings
            interval = self.cfg.timings.interval
            half_deadline = self.cfg.timings.deadline / 2
            now = time.monotonic()
            if now - last_tick > half_deadline:
                with self._lock:
                    self._resumed_at = max(self._resumed_at, now)
                log.warning(
                    "heartbeat thread stalled %.2f s; peers get a fresh deadline", now - last_tick
                )
            last_tick = now
            self._send_all()
            if self.on_tick is not None:
                self.on_tick()
            next_at += interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (stall): do not burst to catch up
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    def _send_all(self) -> None:
        with self._lock:
            payload = self._payload
            blocked = set(self._blocked)
            challenges, echoes = self.guard.challenges(), self.guard.echoes()
        self.seq += 1
        packet = hb.Heartbeat(
            cluster=self.cfg.name,
            node=self.me,
            link=0,
            incarnation=self.incarnation,
            seq=self.seq,
            state=payload.state,
            hierarchies=payload.hierarchies,
            admin=payload.admin,
            challenges=challenges,
            echoes=echoes,
            config=self.cfg.digest,
        )
        for i, link in enumerate(self.cfg.links):
            if i in blocked or i >= len(self._transports):
                continue
            now = time.monotonic()
            try:
                data = hb.encode(replace(packet, link=i, echo=self.stats.echo(i, now)), self.key)
            except hb.HeartbeatError as exc:
                if self._limit.allow("encode"):
                    log.error("cannot encode heartbeat: %s", exc)
                return
            for peer in self.peers:
                addr = link.addresses.get(peer)
                if addr is not None:
                    self._transports[i].sendto(data, addr)
            self.stats.on_send(i, packet.seq, now)
            with self._lock:
                self._sent += 1

    def _received(self, data: bytes, addr: tuple[str, int], link: int) -> None:
        now = time.monotonic()
        with self._lock:
            if link in self._blocked:
                return
        try:
            packet = hb.decode(data, self.key)
            with self._lock:
                self.guard.check(packet, link)
        except hb.HeartbeatError as exc:
            with self._lock:
                self._rejected[exc.reason] += 1
            if exc.reason == "unechoed":  # the normal first packet of a (re)started peer
                return
            key = f"{exc.reason}:{addr[0]}"
            if self._limit.allow(key):
                suppressed = self._limit.suppressed.pop(key, 0)
                log.warning(
                    "rejected heartbeat from %s:%d on link %s: %s%s",
                    addr[0],
                    addr[1],
                    self.cfg.links[link].name,
                    exc,
                    f" ({suppressed} more since last report)" if suppressed else "",
                )
                if self.on_event is not None:
                    self.on_event(
                        {
                            "kind": "security",
                            "task": "heartbeat-rejected",
                            "desc": str(exc),
                            "peer": f"{addr[0]}:{addr[1]}",
                            "link": self.cfg.links[link].name,
                        }
                    )
            return
        echo = packet.echo.get(self.me)
        self.stats.on_receive(packet.node, link, packet.incarnation, packet.seq, echo, now)
        link_name = self.cfg.links[link].name
        with self._lock:
            self._last_heard[(packet.node, link_name)] = now
            old = self._reports.get(packet.node)
            # The guard accepts only the current incarnation: another one here is the new one.
            if old is None or packet.incarnation != old.incarnation or packet.seq > old.seq:
                self._reports[packet.node] = packet

    def _io_error(self, link: int, exc: Exception) -> None:
        if self._limit.allow(f"io:{link}"):
            log.warning("heartbeat link %s: %s", self.cfg.links[link].name, exc)
