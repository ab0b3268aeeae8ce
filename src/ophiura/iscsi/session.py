"""Session state that outlives a single PDU: the CmdSN window and the session record.

The CmdSN window (RFC 7143 §4.2.2.1) is a pure object. Non-immediate commands carry CmdSN;
one equal to ExpCmdSN is delivered and advances ExpCmdSN (and releases any queued successors),
one inside (ExpCmdSN, MaxCmdSN] waits for the gap to fill, anything outside is silently
dropped (what libiscsi's iSCSICmdSnTooHigh/TooLow expect). MaxCmdSN = ExpCmdSN - 1 + depth -
in-flight: the window closes while commands run, so outstanding work per session is bounded,
and it never moves backwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ophiura.iscsi.text import SessionParams
from ophiura.scsi.api import DeviceServer, Nexus

MASK = 0xFFFFFFFF
HALF = 0x80000000


def sn_diff(a: int, b: int) -> int:
    """Signed serial-number distance a - b (RFC 1982, 32 bits)."""
    d = (a - b) & MASK
    return d - 0x100000000 if d >= HALF else d


DELIVER, QUEUED, DROP = "deliver", "queued", "drop"


class CmdWindow:
    def __init__(self, initial_cmdsn: int, depth: int = 128) -> None:
        self.exp = initial_cmdsn & MASK
        self.depth = depth
        self.inflight = 0
        self._max = (self.exp - 1 + depth) & MASK
        self.pending: dict[int, Any] = {}

    @property
    def max_cmdsn(self) -> int:
        computed = (self.exp - 1 + self.depth - self.inflight) & MASK
        if sn_diff(computed, self._max) > 0:
            self._max = computed
        return self._max

    def accept(self, cmdsn: int, item: Any) -> tuple[str, list[Any]]:
        """Classify a non-immediate PDU; returns (verdict, items now deliverable in order)."""
        d = sn_diff(cmdsn, self.exp)
        if d == 0:
            self.exp = (self.exp + 1) & MASK
            ready = [item]
            pending = self.pending
            while pending and self.exp in pending:
                ready.append(pending.pop(self.exp))
                self.exp = (self.exp + 1) & MASK
            return DELIVER, ready
        if d < 0 or sn_diff(cmdsn, self.max_cmdsn) > 0 or cmdsn in self.pending:
            return DROP, []
        self.pending[cmdsn] = item
        return QUEUED, []

    def in_window(self, cmdsn: int) -> bool:
        return sn_diff(cmdsn, self.exp) >= 0 and sn_diff(cmdsn, self.max_cmdsn) <= 0


@dataclass
class Session:
    """One logged-in normal or discovery session (MaxConnections=1: one connection)."""

    tsih: int
    isid: int
    initiator_name: str
    target_name: str | None
    tpgt: int
    discovery: bool
    params: SessionParams
    device_server: DeviceServer | None = None
    connection: Any = None
    nexus: Nexus | None = None
    stats: dict[str, int] = field(default_factory=dict)
    since: float = field(default_factory=time.time)  # wall clock of the login (`target show`)

    @property
    def key(self) -> tuple[str, int, str | None]:
        return (self.initiator_name, self.isid, self.target_name)


def make_nexus(initiator_name: str, isid: int, target_name: str, tpgt: int) -> Nexus:
    return Nexus(
        initiator_port=f"{initiator_name},i,0x{isid:012x}",
        target_port=f"{target_name},t,0x{tpgt:04x}",
        relative_target_port_id=tpgt,
    )
