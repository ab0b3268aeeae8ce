"""An SE as the HE sees it: the life of each replica as a table, and the connection to the SE.

Everything that affects a replica's state lives in `TRANSITIONS` (the h11 `_state.py` shape the
design asks for): `TRANSITIONS[state][event] -> new state`; an event without an entry raises
`SessionStateError` instead of being ignored. docs/replication.md draws this table.

A *replica* is one volume on one SE. The *session* is the TCP connection to that SE, shared by
all its volumes; it reconnects in the background and tells the volumes when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ophiura.causes import describe

log = logging.getLogger(__name__)


class ReplicaState(StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    RECOVERING_QUICK = "recovering-quick"
    RECOVERING_REPLAY = "recovering-replay"
    RECOVERING_FULL = "recovering-full"
    FAILED = "failed"
    FENCED = "fenced"
    CLOSED = "closed"


class ReplicaEvent(StrEnum):
    CAUGHT_UP = "caught-up"  # connected and already holds the newest write
    BEHIND_QUICK = "behind-quick"  # missed writes are all in the HE write queue
    BEHIND_REPLAY = "behind-replay"  # pull missed writes from a peer's log
    BEHIND_FULL = "behind-full"  # whole-volume copy from a peer
    RECOVERED = "recovered"
    LOST = "lost"  # connection or I/O error
    LAGGING = "lagging"  # blocked write-queue eviction too long (StarFish §3)
    RETRY = "retry"  # try to attach again
    FENCED = "fenced"  # the SE holds a newer epoch: another HE owns the volume
    CLOSE = "close"


S, E = ReplicaState, ReplicaEvent
_RECOVERING_EXITS = {
    E.RECOVERED: S.UP,
    E.LOST: S.FAILED,
    E.LAGGING: S.FAILED,
    E.FENCED: S.FENCED,
    E.CLOSE: S.CLOSED,
}
TRANSITIONS: dict[ReplicaState, dict[ReplicaEvent, ReplicaState]] = {
    S.CONNECTING: {
        E.CAUGHT_UP: S.UP,
        E.BEHIND_QUICK: S.RECOVERING_QUICK,
        E.BEHIND_REPLAY: S.RECOVERING_REPLAY,
        E.BEHIND_FULL: S.RECOVERING_FULL,
        E.LOST: S.FAILED,
        E.FENCED: S.FENCED,
        E.CLOSE: S.CLOSED,
    },
    S.UP: {E.LOST: S.FAILED, E.LAGGING: S.FAILED, E.FENCED: S.FENCED, E.CLOSE: S.CLOSED},
    S.RECOVERING_QUICK: dict(_RECOVERING_EXITS),
    # an interrupted replay may fall back to a full copy (the peer's log no longer covers it)
    S.RECOVERING_REPLAY: {**_RECOVERING_EXITS, E.BEHIND_FULL: S.RECOVERING_FULL},
    S.RECOVERING_FULL: dict(_RECOVERING_EXITS),
    S.FAILED: {E.RETRY: S.CONNECTING, E.LOST: S.FAILED, E.CLOSE: S.CLOSED},
    S.FENCED: {E.CLOSE: S.CLOSED, E.LOST: S.FENCED},
    S.CLOSED: {},
}
del S, E

# Replicas in these states receive every new write.
SENDING = frozenset(
    {
        ReplicaState.UP,
        ReplicaState.RECOVERING_QUICK,
        ReplicaState.RECOVERING_REPLAY,
        ReplicaState.RECOVERING_FULL,
    }
)
# Their acks count toward Q: they receive writes strictly in order with no gap, so an ack of
# seq s means they hold every write <= s. A replay/full replica has a gap until it finishes.
COUNTING = frozenset({ReplicaState.UP, ReplicaState.RECOVERING_QUICK})
# Only these serve reads (StarFish §3: never a recovering SE).
READABLE = frozenset({ReplicaState.UP})


class SessionStateError(Exception):
    """An event that the replica table does not allow in the current state (a bug, loudly)."""


def next_state(state: ReplicaState, event: ReplicaEvent) -> ReplicaState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise SessionStateError(f"replica event {event} not allowed in state {state}") from None


def se_errors() -> tuple[type[BaseException], type[BaseException], tuple[type[BaseException], ...]]:
    """(StaleEpoch, SeError, transport errors) from the SE client, imported late: what an
    operation on a session's client raises, as the volume and its replicas tell them apart."""
    from ophiura.replication.wire.client import SeError, StaleEpoch

    return StaleEpoch, SeError, (SeError, OSError, TimeoutError, ConnectionError)


@dataclass(frozen=True)
class SeSpec:
    """One `--se NAME=HOST:PORT[,delay=MS][,rate=MBIT]`."""

    name: str
    host: str
    port: int
    delay_ms: float = 0.0
    rate_mbit: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "delay_ms": self.delay_ms,
            "rate_mbit": self.rate_mbit,
        }


class SessionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


Listener = Callable[["SeSession"], Awaitable[None]]
LostListener = Callable[["SeSession"], None]
# `listener(session, {volume: (epoch, he_id)})` after every poll of the SE's volumes (see `_poll`)
EpochListener = Callable[["SeSession", dict[str, tuple[int, int]]], None]


class SeSession:
    """The connection to one SE: connect, ping for RTT and liveness, reconnect with backoff.

    Volumes subscribe with `on_connected`; on every (re)connection each listener runs in its own
    task so a slow volume never delays another. `lost()` is what any operation error calls.

    With `on_epochs` listeners (the volumes this HE owns), the periodic ping is a LIST_VOLUMES
    instead: still one request per SE per `ping_interval` whatever the number of volumes, and
    it tells every volume the SE's epoch, so an idle HE learns within one interval that another
    HE raised the epoch (a takeover) instead of at its next write.

    Reconnection backs off from `backoff[0]` doubling up to `backoff[1]`: a restarted SE is
    re-attached at most ~0.25 s after it listens again; a refused connect costs one SYN/RST
    on 127.0.0.1 or the LAN, and an unreachable one waits `connect_timeout` per attempt, so
    the attempts stay bounded (at most 1/backoff[1] per second per SE).
    """

    def __init__(
        self,
        spec: SeSpec,
        secret: bytes,
        *,
        connect_timeout: float = 2.0,
        ping_interval: float = 0.5,
        backoff: tuple[float, float] = (0.05, 0.25),
    ) -> None:
        self.spec = spec
        self.secret = secret
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.backoff = backoff
        self.client: Any = None  # SeClient while connected
        self.state = SessionState.CONNECTING
        self.generation = 0  # bumped on every new connection
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self._listeners: list[Listener] = []
        self._lost_listeners: list[LostListener] = []
        self._epoch_listeners: list[EpochListener] = []
        self.polls = 0  # answered volume polls (status/tests)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rtt(self) -> float:
        """Smoothed round trip (s); infinite while disconnected so routing never picks it."""
        if self.client is None:
            return float("inf")
        return float(getattr(self.client, "rtt", 0.0) or 0.0)

    @property
    def connected(self) -> bool:
        return self.state is SessionState.CONNECTED and self.client is not None

    def on_connected(self, listener: Listener) -> None:
        self._listeners.append(listener)
        if self.connected:
            self._spawn(listener(self))

    def on_lost(self, listener: LostListener) -> None:
        """`listener(session)` runs synchronously when the connection is dropped."""
        self._lost_listeners.append(listener)

    def on_epochs(self, listener: EpochListener) -> None:
        """`listener(session, {volume: (epoch, he_id)})` runs synchronously after each poll."""
        self._epoch_listeners.append(listener)

    def remove_listeners(self, owner: object) -> None:
        """Drop the listeners bound to `owner` (a closed volume)."""

        def keep(fs: list[Any]) -> list[Any]:
            return [f for f in fs if getattr(f, "__self__", None) is not owner]

        self._listeners = keep(self._listeners)
        self._lost_listeners = keep(self._lost_listeners)
        self._epoch_listeners = keep(self._epoch_listeners)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"se-session-{self.name}"
            )

    def lost(self, why: str, generation: int | None = None) -> None:
        """An operation on this connection failed: drop it and reconnect (once per connection)."""
        if generation is not None and generation != self.generation:
            return
        if self.state is not SessionState.CONNECTED:
            return
        log.warning("SE %s: connection lost: %s", self.name, why)
        self.last_error = why
        self.state = SessionState.CONNECTING
        client, self.client = self.client, None
        if client is not None:
            self._spawn(_close_quietly(client))
        self._wake.set()
        for listener in list(self._lost_listeners):
            listener(self)

    async def close(self) -> None:
        self.state = SessionState.CLOSED
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        client, self.client = self.client, None
        if client is not None:
            await _close_quietly(client)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> Any:
        from ophiura.replication.wire.client import LinkEmulation, SeClient

        spec = self.spec
        link = None
        if spec.delay_ms or spec.rate_mbit:
            link = LinkEmulation(
                one_way_delay=spec.delay_ms / 1000.0,
                rate_bits_per_s=spec.rate_mbit * 1e6 if spec.rate_mbit else None,
            )
        return await SeClient.connect(
            spec.name, spec.host, spec.port, self.secret, link=link, timeout=self.connect_timeout
        )

    async def _run(self) -> None:
        """Connect, then ping until lost, then back off and connect again; until closed."""
        from ophiura.replication.wire.client import SeError

        delay = self.backoff[0]
        while self.state is not SessionState.CLOSED:
            try:
                client = await asyncio.wait_for(self._connect(), self.connect_timeout + 1)
            except (SeError, OSError, TimeoutError) as exc:
                self.last_error = f"connect: {describe(exc, self.connect_timeout + 1)}"
                log.debug("SE %s: %s", self.name, self.last_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            if self.state is SessionState.CLOSED:
                await _close_quietly(client)
                return
            delay = self.backoff[0]
            self.client = client
            self.generation += 1
            self.state = SessionState.CONNECTED
            self.connected_since = time.monotonic()
            self.last_error = None
            log.info("SE %s: connected to %s:%d", self.name, self.spec.host, self.spec.port)
            for listener in list(self._listeners):
                self._spawn(listener(self))
            await self._ping_until_lost()

    async def _ping_until_lost(self) -> None:
        from ophiura.replication.wire.client import SeError

        gen = self.generation
        while self.state is SessionState.CONNECTED and gen == self.generation:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.ping_interval)
            if self.state is not SessionState.CONNECTED or gen != self.generation:
                return
            client = self.client
            poll = bool(self._epoch_listeners)
            limit = max(2.0, self.ping_interval * 4)
            try:
                async with asyncio.timeout(limit):
                    states = await client.list_volumes() if poll else await client.ping()
            except (SeError, OSError, TimeoutError) as exc:
                self.lost(f"{'poll' if poll else 'ping'}: {describe(exc, limit)}", gen)
                return
            if poll and gen == self.generation:
                self._epochs_seen({vs.volume: vs.ballot for vs in states})

    def _epochs_seen(self, epochs: dict[str, tuple[int, int]]) -> None:
        self.polls += 1
        for listener in list(self._epoch_listeners):
            try:
                listener(self, epochs)
            except Exception:  # one volume's bug must not stop the pings of the others
                log.exception("SE %s: epoch listener %r failed", self.name, listener)


async def _close_quietly(client: Any) -> None:
    try:
        await asyncio.wait_for(client.close(), 2.0)
    except (OSError, TimeoutError) as exc:  # SeClient.close itself raises nothing typed
        log.debug("closing SE client: %s", exc)
