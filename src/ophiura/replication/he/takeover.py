"""Claiming a volume: how an HE becomes its owner (at start, or as a standby taking over).

StarFish §3: "the standby HE can find the last acknowledged write request by receiving the
highest update sequence number of each volume from Q SEs". ophiura adds the epoch as the
own-able resource (DESIGN.md): the new HE first raises the volume's epoch on a majority of SEs.
From that moment every SE of that majority refuses the old HE's writes (StaleEpoch), and since
any Q SEs intersect that majority when 2Q > N, the old HE can never again collect Q acks. The
applied sequence numbers the SEs report *in their answer to set_epoch* are therefore final for
the old epoch: their maximum is at least the last acknowledged write.

The epoch alone is not enough: two standbys that overlap both read E and both propose E+1.
The claim is therefore a *ballot* `(epoch, he_id)`, ordered lexicographically, with a he_id
random per HE process (63 bits): an SE adopts only a strictly greater ballot, so of two
claimants with the same epoch at most one holds any given SE, and the one that loses a majority
is fenced at its first write (or sooner, by the epoch poll). A claimant refused with the SE's
current ballot retries above it.

The claim fixes no base: `HostElementVolume` establishes `(ballot, base_seq)` on every SE it
attaches, and an SE holding writes above the base from an older ballot truncates them then
(`se.store.Volume.adopt`).

The plan is pure (`plan_claim`), the I/O is `claim_volume`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ophiura.causes import describe
from ophiura.replication.he.quorum import takeover_quorum
from ophiura.replication.he.se_session import SeSession

log = logging.getLogger(__name__)

MAX_EPOCH_RACES = 5


class TakeoverError(Exception):
    """Too few SEs answered (or another HE kept raising the epoch): the volume is not ours."""


@dataclass(frozen=True)
class Claim:
    volume: str
    epoch: int
    he_id: int
    base_seq: int  # where the newest history among the claiming SEs ends: new writes follow it
    base_ballot: tuple[int, int]  # the ballot that wrote base_seq in that history
    size: int
    block_size: int
    accepted: tuple[str, ...]
    applied: dict[str, int]
    missing: tuple[str, ...]  # SEs we could not reach or that refused


def plan_claim(
    applied: dict[str, tuple[tuple[int, int], int]], n: int, q: int, volume: str, epoch: int
) -> tuple[int, tuple[int, int], tuple[str, ...]]:
    """(base_seq, base_ballot, SEs holding that history) once every claiming SE reported
    (the ballot that wrote its applied seq, its applied seq).

    The newest history wins, as in Raft's log comparison: the highest (ballot, seq), not the
    highest seq. An SE's stream only ever gains writes of greater ballots (it obeys one ballot
    at a time and adopts only greater ones), so the SE whose last write has the greatest ballot
    holds what every later owner kept; a longer stream of an older ballot may be a tail no owner
    acknowledged (an SE away for a whole reign), and taking it would drop writes the owner of
    the greater ballot acknowledged.
    """
    need = takeover_quorum(n, q)
    if len(applied) < need:
        raise TakeoverError(
            f"{volume}: only {len(applied)} SE(s) ({', '.join(sorted(applied)) or 'none'}) "
            f"accepted epoch {epoch}; need {need} of {n} (majority and quorum {q})"
        )
    ballot, base = max(applied.values())
    holders = tuple(sorted(name for name, top in applied.items() if top == (ballot, base)))
    return base, ballot, holders


async def claim_volume(
    sessions: Sequence[SeSession],
    volume: str,
    size: int,
    block_size: int,
    quorum: int,
    *,
    he_id: int,
    timeout: float = 5.0,
) -> Claim:
    """Open the volume on every connected SE, claim a new ballot, read the highest seq."""
    from ophiura.replication.wire.client import SeError, StaleEpoch
    from ophiura.replication.wire.messages import NO_BASE

    n = len(sessions)
    live = [s for s in sessions if s.connected]
    need = takeover_quorum(n, quorum)
    if len(live) < need:
        raise TakeoverError(f"{volume}: {len(live)} of {n} SEs connected, need {need} to claim it")

    async def call(s: SeSession, coro: Any) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except (SeError, OSError, TimeoutError) as exc:
            if not isinstance(exc, StaleEpoch):
                s.lost(f"claim {volume}: {describe(exc, timeout)}", s.generation)
            return exc

    opened = await asyncio.gather(
        *(call(s, s.client.open_volume(volume, size, block_size)) for s in live)
    )
    states = {
        s.name: st for s, st in zip(live, opened, strict=True) if not isinstance(st, Exception)
    }
    for s, st in zip(live, opened, strict=True):
        if isinstance(st, Exception):
            log.warning("claim %s: SE %s: %s", volume, s.name, st)
    if not states:
        raise TakeoverError(f"{volume}: no SE could open it")
    epoch = max(st.epoch for st in states.values()) + 1
    accepted: dict[str, Any] = {}
    for _ in range(MAX_EPOCH_RACES):
        targets = [s for s in live if s.name in states and s.connected]
        results = await asyncio.gather(
            *(
                call(s, s.client.set_epoch(volume, epoch, he_id=he_id, base=NO_BASE))
                for s in targets
            )
        )
        stale = [r.current_epoch for r in results if isinstance(r, StaleEpoch)]
        if stale:  # another HE claimed meanwhile: go above it (and let the SEs decide)
            epoch = max(stale) + 1
            continue
        accepted = {
            s.name: r for s, r in zip(targets, results, strict=True) if not isinstance(r, Exception)
        }
        break
    else:
        raise TakeoverError(f"{volume}: the epoch kept moving ({MAX_EPOCH_RACES} races)")
    applied = {name: st.applied_seq for name, st in accepted.items()}
    tops = {name: (st.top_ballot, st.applied_seq) for name, st in accepted.items()}
    base, base_ballot, _ = plan_claim(tops, n, quorum, volume, epoch)
    vol_size = max(st.size for st in accepted.values())
    bs = next(iter(accepted.values())).block_size or block_size
    claim = Claim(
        volume=volume,
        epoch=epoch,
        he_id=he_id,
        base_seq=base,
        base_ballot=base_ballot,
        size=vol_size,
        block_size=bs,
        accepted=tuple(sorted(accepted)),
        applied=applied,
        missing=tuple(sorted(s.name for s in sessions if s.name not in accepted)),
    )
    log.info(
        "claimed %s with ballot (%d, %x): last seq %d (SEs %s%s)",
        volume,
        epoch,
        he_id,
        base,
        ", ".join(f"{k}={v}" for k, v in sorted(applied.items())),
        f"; unreachable {', '.join(claim.missing)}" if claim.missing else "",
    )
    return claim
