"""The demo's client: keeps POSTing records to the app and remembers which were acknowledged.

The ledger is the ground truth of the demo's promise: a record counts only once the app said
200, and at the end every one of them must be read back. Outages are what this client saw
(gaps between acknowledgements), not what the cluster reports about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Ack:
    id: str
    data: str
    sent: float  # monotonic
    done: float  # monotonic, when the 200 arrived
    node: str


@dataclass
class Ledger:
    acked: list[Ack] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, what)
    attempts: int = 0

    def ack_times(self) -> list[float]:
        return sorted(a.done for a in self.acked)


class RecordClient:
    """`writers` concurrent loops, together about `rate` records/s, each request bounded by
    `timeout` (a dead node must not stall a writer for long); runs on an `NsLoop`."""

    def __init__(
        self, host: str, port: int, writers: int = 4, rate: float = 80.0, timeout: float = 0.5
    ) -> None:
        self.base = f"http://{host}:{port}"
        self.writers = writers
        self.period = writers / rate
        self.timeout = timeout
        self.ledger = Ledger()
        self.run_tag = secrets.token_hex(3)
        self._seq = 0
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.last_node: str | None = None
        self.last_error: str | None = None

    def _next_id(self) -> str:
        self._seq += 1
        return f"r{self.run_tag}-{self._seq:06d}"

    async def start(self) -> None:
        self._stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=self.writers * 2, force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        self._tasks = [asyncio.create_task(self._writer(i)) for i in range(self.writers)]

    async def _writer(self, i: int) -> None:
        assert self._stop is not None
        await asyncio.sleep(self.period * i / self.writers)  # spread the writers out
        while not self._stop.is_set():
            t0 = time.monotonic()
            await self._post_one()
            left = self.period - (time.monotonic() - t0)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), left)

    async def _post_one(self) -> None:
        rid, data = self._next_id(), secrets.token_hex(16)
        sent = time.monotonic()
        self.ledger.attempts += 1
        assert self._session is not None
        try:
            async with self._session.post(
                f"{self.base}/records", json={"id": rid, "data": data}
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 200 and body.get("id") == rid:
                    self.ledger.acked.append(Ack(rid, data, sent, time.monotonic(), body["node"]))
                    self.last_node = body["node"]
                    return
                what = f"HTTP {resp.status}: {body.get('error', '')}"[:120]
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            what = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"[:120]
        self.ledger.failures.append((time.monotonic(), what))
        self.last_error = what

    async def stop(self) -> None:
        """Stop writing (idempotent); writes in flight finish or time out first."""
        if self._stop is not None:
            self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def fetch_all(self, timeout: float = 15.0) -> dict[str, Any]:
        """Every record the app can read back (its index, rebuilt from the volume at start)."""
        timeouts = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=timeouts) as s,
            s.get(f"{self.base}/records") as resp,
        ):
            resp.raise_for_status()
            return json.loads(await resp.text())


def verify(ledger: Ledger, stored: dict[str, Any]) -> dict[str, Any]:
    """Acknowledged records against what the app reads back: lost = acked but absent or with
    other data. Stored-but-unacknowledged records are allowed (the answer was lost)."""
    have = {rid: data for rid, data in stored["records"]}
    lost = [a.id for a in ledger.acked if have.get(a.id) != a.data]
    acked_ids = {a.id for a in ledger.acked}
    return {
        "acknowledged": len(ledger.acked),
        "verified": len(ledger.acked) - len(lost),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "stored": len(have),
        "stored_unacknowledged": sum(1 for rid in have if rid not in acked_ids),
        "attempts": ledger.attempts,
        "failed_requests": len(ledger.failures),
        "read_back_from": stored.get("node"),
    }


def outage(ledger: Ledger, start: float, end: float) -> dict[str, Any]:
    """What the client saw around an event that began at `start` (monotonic) and whose effects
    are over by `end`: the longest time without an acknowledgement, counted from the last
    acknowledgement before the event; plus the requests that failed meanwhile."""
    times = ledger.ack_times()
    before = [t for t in times if t <= start]
    during = [t for t in times if start < t <= end]
    fails = [f for t, f in ledger.failures if start <= t <= end]
    if not before or not during:
        return {"outage_s": None, "failed_requests": len(fails), "errors": _kinds(fails)}
    gaps = [during[0] - before[-1]] + [b - a for a, b in itertools.pairwise(during)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    began = before[-1] if worst == 0 else during[worst - 1]
    return {
        "outage_s": round(gaps[worst], 3),
        "outage_began_s": round(began - start, 3),  # relative to the event
        "failed_requests": len(fails),
        "errors": _kinds(fails),
    }


def _kinds(fails: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in fails:
        key = f.split(":")[0]
        out[key] = out.get(key, 0) + 1
    return out


def typical_gap(ledger: Ledger, start: float, end: float) -> float | None:
    """The median gap between acknowledgements in quiet running: what 'no outage' looks like."""
    times = [t for t in ledger.ack_times() if start <= t <= end]
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    return round(gaps[len(gaps) // 2], 4) if gaps else None
