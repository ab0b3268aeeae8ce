"""Which SE serves a read (StarFish §4: "local SEs can divide the load of read requests").

Two questions, kept apart because only the first is about safety:

- **Eligible**: an SE may serve a read of a range only if it is `up` (READABLE: not attaching,
  not recovering, not failed or fenced), attached (has a client), and has acknowledged every
  acknowledged write to every block of the range. The volume's `BlockSeqMap` gives `required`,
  the highest acknowledged seq still queued for any chunk of the range (anything evicted was
  acknowledged by every live SE); an SE qualifies iff its contiguous ack watermark reaches it.
  Its answer is checked again (`DATA.applied_seq >= required`, volume.py), so a wrong
  watermark costs a retry, never a stale read.
- **Best**: among the eligible, the smallest expected wait, `(outstanding + 1) x RTT`: with
  equal RTTs (co-located SEs) that is the least outstanding reads, ties to the nearest; a far SE
  gets reads only once the near ones have proportionally more queued (an 8 ms SE never takes
  a read from an idle 0.1 ms one). Pure least-outstanding would send a QD16 load's reads to a
  distant SE as soon as the near one has one read in flight.

Pure functions over the replicas, free of I/O, so a test drives them with fake SEs.
"""

from __future__ import annotations

from collections.abc import Iterable

from ophiura.replication.he.replica import Replica
from ophiura.replication.he.se_session import READABLE

RTT_FLOOR = 20e-6  # s: an RTT never measured (0) or below the clock's use still weighs


def eligible(replicas: Iterable[Replica], required: int) -> list[Replica]:
    """The replicas that may serve a read whose range needs every write <= `required`."""
    return [
        r
        for r in replicas
        if r.state in READABLE and r.client is not None and r.tracker.contiguous >= required
    ]


def cost(r: Replica) -> tuple[float, float, str]:
    """Sort key: expected wait, then RTT, then name (a stable order at rest)."""
    rtt = r.session.rtt
    return ((r.reading + 1) * max(rtt, RTT_FLOOR), rtt, r.name)


def best(candidates: Iterable[Replica]) -> Replica | None:
    """The eligible replica to ask now (None when there is none)."""
    return min(candidates, key=cost, default=None)
