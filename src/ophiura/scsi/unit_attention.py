"""Unit attention conditions, kept per I_T nexus for one logical unit (SAM-5 5.14, SPC-4 5.14).

The HA profile's first multi-host rule: a host must learn about a reset, a preemption or a mode
change that another host caused, and each host learns it exactly once. Conditions are queued per
nexus, reported highest priority first, and a nexus with nothing pending costs one dict test.
"""

from __future__ import annotations

from collections.abc import Iterable

from ophiura.scsi.api import Nexus

# The queue is bounded (DESIGN.md: bounded everything). When full, the lowest-priority, oldest
# condition is dropped; a reset (29h) is never the one dropped.
MAX_PENDING = 8


def _priority(asc_ascq: tuple[int, int]) -> int:
    """Lower reports first: resets, then commands cleared, then parameter changes."""
    asc = asc_ascq[0]
    if asc == 0x29:
        return 0
    if asc == 0x2F:
        return 1
    if asc == 0x2A:
        return 2
    return 3


class UnitAttentions:
    """Pending unit attention conditions of every I_T nexus of one logical unit."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        # Only nexuses with something pending have an entry: `if ua.pending` is the fast path.
        self.pending: dict[Nexus, list[tuple[int, int]]] = {}

    def establish(self, nexus: Nexus, asc_ascq: tuple[int, int]) -> None:
        queue = self.pending.setdefault(nexus, [])
        if asc_ascq[0] == 0x29:
            # One reset report says it all: a newer reset replaces an older one.
            queue[:] = [c for c in queue if c[0] != 0x29]
        elif asc_ascq in queue:
            return
        queue.append(asc_ascq)
        queue.sort(key=_priority)  # stable: equal priorities stay in arrival order
        if len(queue) > MAX_PENDING:
            del queue[-1]

    def establish_all(self, nexuses: Iterable[Nexus], asc_ascq: tuple[int, int]) -> None:
        for nexus in nexuses:
            self.establish(nexus, asc_ascq)

    def take(self, nexus: Nexus) -> tuple[int, int] | None:
        """Report (and clear) the highest-priority condition of this nexus, if any."""
        queue = self.pending.get(nexus)
        if not queue:
            return None
        condition = queue.pop(0)
        if not queue:
            del self.pending[nexus]
        return condition

    def peek(self, nexus: Nexus) -> tuple[int, int] | None:
        queue = self.pending.get(nexus)
        return queue[0] if queue else None

    def clear(self, nexus: Nexus) -> None:
        self.pending.pop(nexus, None)
