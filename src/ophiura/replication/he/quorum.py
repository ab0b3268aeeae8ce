"""Quorum arithmetic and per-SE acknowledgement accounting, free of I/O.

Why a module of its own: the safety argument of StarFish (§3, §4.2) is all here. A write is
acknowledged after Q SEs made it durable; a taking-over HE must reach a majority (to fence the
old HE) and at least Q SEs (so that one of them holds the last acknowledged write). Both rules
only work when 2Q > N, which is why `config_warning` exists.
"""

from __future__ import annotations

import asyncio

from ophiura.block.device import ReadOnlyError


def majority(n: int) -> int:
    """Smallest number of SEs that intersects every other majority."""
    return n // 2 + 1


def takeover_quorum(n: int, q: int) -> int:
    """SEs a new HE must hold at the new epoch before serving.

    A majority fences the old HE (it can no longer find Q SEs at its epoch when 2Q > N), and at
    least Q of them guarantees that one holds every acknowledged write.
    """
    return max(majority(n), q)


def config_warning(n: int, q: int) -> str | None:
    """A loud message when this N/Q can lose acknowledged writes, else None."""
    if not 1 <= q <= n:
        raise ValueError(f"quorum {q} must be between 1 and the number of SEs ({n})")
    if 2 * q <= n:
        return (
            f"quorum Q={q} with N={n} SEs: 2Q <= N, so a takeover or the loss of the HE plus "
            f"{q} SE(s) can lose acknowledged writes (StarFish §4.2); use Q > N/2 (e.g. N=3 Q=2)"
        )
    return None


class AckTracker:
    """Highest sequence number below which an SE has acknowledged everything.

    SEs apply in sequence order, but acks may arrive out of order (replies of separate
    requests), and during replay/full recovery the HE sends only writes above the recovery
    point. So we keep a contiguous watermark and a small set of acks ahead of it; the set holds
    at most the writes in flight, which the write queue bounds.
    """

    __slots__ = ("_ahead", "contiguous", "highest")

    def __init__(self, base: int) -> None:
        self.contiguous = base
        self.highest = base
        self._ahead: set[int] = set()

    def ack(self, seq: int) -> None:
        if seq > self.highest:
            self.highest = seq
        if seq <= self.contiguous:
            return
        self._ahead.add(seq)
        self._advance()

    def raise_to(self, seq: int) -> None:
        """The SE told us it applied everything up to `seq` (e.g. recovery finished)."""
        if seq > self.contiguous:
            self.contiguous = seq
            self._ahead = {s for s in self._ahead if s > seq}
            self._advance()
        if seq > self.highest:
            self.highest = seq

    def _advance(self) -> None:
        nxt = self.contiguous + 1
        while nxt in self._ahead:
            self._ahead.discard(nxt)
            nxt += 1
        self.contiguous = nxt - 1

    @property
    def pending(self) -> int:
        return len(self._ahead)


class QuorumLost(ReadOnlyError):
    """Fewer than Q SEs can acknowledge this write: the volume is read-only until SEs return."""


class Fenced(ReadOnlyError):
    """Another HE raised the epoch: this HE must not acknowledge writes any more."""


class QuorumWaiter:
    """Resolves when `need` counting SEs acked, or fails as soon as that became impossible.

    Why not `asyncio.gather`: the host must be answered after the Q-th ack, not the N-th, and a
    write must fail fast (read-only) when too many SEs failed, without waiting for timeouts of
    the others. One per write, hence a slotted class rather than a dataclass.
    """

    __slots__ = ("acks", "errors", "future", "need", "outstanding", "seq")

    def __init__(
        self,
        seq: int,
        need: int,
        outstanding: int,
        acks: int = 0,
        errors: list[str] | None = None,
    ) -> None:
        self.seq = seq
        self.need = need
        self.outstanding = outstanding
        self.acks = acks
        self.errors: list[str] = [] if errors is None else errors
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._check()

    def __repr__(self) -> str:
        return (
            f"QuorumWaiter(seq={self.seq}, need={self.need}, outstanding={self.outstanding}, "
            f"acks={self.acks}, errors={self.errors!r})"
        )

    def ack(self) -> None:
        self.outstanding -= 1
        self.acks += 1
        self._check()

    def nack(self, why: str) -> None:
        self.outstanding -= 1
        self.errors.append(why)
        self._check()

    def fence(self, why: str) -> None:
        if not self.future.done():
            self.future.set_exception(Fenced(f"write seq {self.seq}: {why}"))

    def _check(self) -> None:
        if self.future.done():
            return
        if self.acks >= self.need:
            self.future.set_result(None)
        elif self.acks + self.outstanding < self.need:
            detail = "; ".join(self.errors) or "not enough SEs up"
            self.future.set_exception(
                QuorumLost(
                    f"write seq {self.seq}: {self.acks} of {self.need} required SE acks ({detail})"
                )
            )
