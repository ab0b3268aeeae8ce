"""The contract between a SCSI transport (iSCSI, later others) and the SCSI device server.

The transport knows sockets, PDUs and sessions; the device server knows CDBs, reservations and
unit attentions. They meet only here, as in tgt's split of usr/iscsi/ from usr/spc.c:
the device server sees an I_T nexus id and a CDB, never a socket.

Data-Out: the transport collects up to the initiator's expected data transfer length (EDTL,
bounded by the transport's limits) and passes it as `Command.data_out`. The device server says
how many bytes the CDB itself describes (SPDTL) in `Response.data_out_length`, so the transport
can compute residual overflow/underflow. Data-In: the device server returns the full data the
CDB asks for (already cut to the CDB's allocation length); the transport truncates it to EDTL
and reports the residual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol


class Status(IntEnum):
    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class TaskAttribute(IntEnum):
    """SAM task attributes (values as in the iSCSI SCSI Command PDU ATTR field)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class TmfFunction(IntEnum):
    """Task management functions (values as in the iSCSI Task Management Function Request)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResult(IntEnum):
    """Task management responses (values as in the iSCSI Task Management Function Response)."""

    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


@dataclass(frozen=True)
class Nexus:
    """One I_T nexus: an initiator port talking to a target port.

    For iSCSI the initiator port name is `<initiator iqn>,i,0x<ISID hex>` and the target port
    name is `<target iqn>,t,0x<TPGT hex>` (RFC 7143 §4.4.1, SPC-4 7.6.4.6). Two sessions from the
    same initiator with different ISIDs are two nexuses; a reservation holder is a nexus.
    """

    initiator_port: str
    target_port: str
    relative_target_port_id: int = 1

    @property
    def initiator_name(self) -> str:
        return self.initiator_port.split(",i,", 1)[0]

    @property
    def isid(self) -> str:
        parts = self.initiator_port.split(",i,", 1)
        return parts[1] if len(parts) == 2 else ""


class TaskAborted(Exception):
    """Raised out of `DeviceServer.execute` when the task was aborted and gets no status.

    (A task aborted by a task management function or by another nexus' PREEMPT AND ABORT with
    TAS=0 ends silently; the transport must send nothing for it.)
    """


@dataclass
class Command:
    """One SCSI command as the transport hands it over, in CmdSN order."""

    nexus: Nexus
    lun: int
    tag: int
    cdb: bytes
    attribute: TaskAttribute = TaskAttribute.SIMPLE
    data_out: bytes | bytearray | memoryview = b""
    expected_length: int = 0  # EDTL: what the initiator said it would transfer
    is_write: bool = False  # the transport's W bit
    is_read: bool = False  # the transport's R bit


@dataclass
class Response:
    status: int = Status.GOOD
    data_in: bytes | bytearray | memoryview = b""
    sense: bytes = b""
    data_out_length: int = 0  # SPDTL of a data-out command, for residuals
    extra: dict[str, object] = field(default_factory=dict)


class DeviceServer(Protocol):
    """What a transport needs from the SCSI target (all LUs behind one target name)."""

    def luns(self) -> list[int]: ...

    def nexus_added(self, nexus: Nexus) -> None:
        """A new I_T nexus logged in: it starts with a POWER ON/RESET unit attention."""
        ...

    def nexus_lost(self, nexus: Nexus) -> None:
        """I_T nexus loss (connection dropped, logout): abort its tasks, drop SPC-2 reservation."""
        ...

    async def execute(self, command: Command) -> Response:
        """Run one command. Many run concurrently; raises TaskAborted when it ends silently."""
        ...

    async def task_management(
        self, nexus: Nexus, function: TmfFunction, lun: int, referenced_tag: int | None
    ) -> TmfResult: ...
