"""What a connection offers the objects it holds (`CommandPath`, `TaskManagement`).

They receive PDUs from the connection and answer on it, but do not own it: every PDU the target
sends takes the connection's StatSN (or shows the current one), Target Transfer Tags must not
collide between R2T, NOP-In and Text, and only the connection may close itself. `Link` is that
narrow interface; `Limits` are the server's per-connection bounds they enforce. Both are
structural (`typing.Protocol`): `IscsiConnection` and `IscsiServer` satisfy them as they are.
"""

from __future__ import annotations

import collections
from collections.abc import Coroutine
from typing import Any, Protocol


class Link(Protocol):
    peer: str  # for log lines
    closed: bool  # torn down: nothing more is sent, no task starts
    statsn: int  # the next StatSN (R2T shows it without taking it)

    def send(self, bufs: list[Any]) -> None:
        """Write encoded PDUs (dropped once closed)."""
        ...

    def take_statsn(self) -> int:
        """The StatSN for a status-bearing PDU; advances the counter."""
        ...

    def next_ttt(self) -> int:
        """A fresh Target Transfer Tag, unique on the connection."""
        ...

    def reply(
        self,
        opcode: int,
        flags: int,
        b2: int,
        lun_raw: int,
        itt: int,
        ttt: int,
        w36: int = 0,
        data: bytes = b"",
    ) -> None:
        """Send a response that takes a StatSN (NOP-In, Text, Logout, TMF, Reject)."""
        ...

    def reject(self, reason: int, header: bytes) -> None:
        """Send a Reject PDU carrying the offending header."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine for this connection (kept referenced until it ends)."""
        ...

    def close(self, why: str) -> None:
        """Close after what was sent is flushed, and tear the connection down."""
        ...


class Limits(Protocol):
    """The server's bounds on what one connection may make the target hold."""

    max_edtl: int  # largest write accepted
    write_budget: int  # write bytes promised to tasks (unsolicited + R2T'd)
    max_immediate: int  # outstanding immediate commands; also running TMFs
    unsolicited_budget: int  # unsolicited bytes held for unfinished tasks
    tmf_wait: float  # how long a TMF waits for the tasks it ends
    counters: collections.Counter[str]  # refusals, by kind
