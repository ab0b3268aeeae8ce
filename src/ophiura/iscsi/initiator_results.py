"""What the initiator hands back: `ScsiResult` for a SCSI command, and the exceptions it raises.

All are importable from `ophiura.iscsi.initiator` as well.
"""

from __future__ import annotations

from dataclasses import dataclass


class IscsiError(Exception):
    """Transport-level failure (connection lost, protocol violation, timeout)."""


class LoginFailed(IscsiError):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"login failed: status 0x{status:04x} {message}".strip())
        self.status = status


class Rejected(IscsiError):
    def __init__(self, reason: int) -> None:
        super().__init__(f"PDU rejected by target, reason 0x{reason:02x}")
        self.reason = reason


@dataclass
class ScsiResult:
    status: int
    data: bytes = b""
    sense: bytes = b""
    residual: int = 0
    overflow: bool = False
    underflow: bool = False
    response: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 0 and self.response == 0

    @property
    def sense_key(self) -> int | None:
        s = self.sense
        if len(s) >= 3 and (s[0] & 0x7F) in (0x70, 0x71):
            return s[2] & 0x0F
        if len(s) >= 2 and (s[0] & 0x7F) in (0x72, 0x73):
            return s[1] & 0x0F
        return None

    @property
    def asc_ascq(self) -> tuple[int, int] | None:
        s = self.sense
        if len(s) >= 14 and (s[0] & 0x7F) in (0x70, 0x71):
            return s[12], s[13]
        if len(s) >= 4 and (s[0] & 0x7F) in (0x72, 0x73):
            return s[2], s[3]
        return None


class ScsiCommandError(IscsiError):
    def __init__(self, what: str, result: ScsiResult) -> None:
        super().__init__(
            f"{what}: status 0x{result.status:02x} sense key {result.sense_key} "
            f"asc/ascq {result.asc_ascq}"
        )
        self.result = result
