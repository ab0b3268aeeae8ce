"""A minimal DeviceServer for transport-only tests (no SCSI semantics beyond the basics).

Tests that depend on SCSI behaviour use the real `ophiura.scsi.target.ScsiTarget` when it is
importable (see `make_device` in conftest); this stays for what only the transport decides:
delays to provoke aborts, recording nexus events, counting calls.
"""

from __future__ import annotations

import asyncio
import struct

from ophiura.scsi.api import Command, Nexus, Response, TaskAborted, TmfFunction, TmfResult

BS = 512


def _sense(key: int, asc: int, ascq: int = 0) -> bytes:
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


class MiniDevice:
    def __init__(self, blocks: int = 2048, delay: float = 0.0) -> None:
        self.blocks = blocks
        self.data = bytearray(blocks * BS)
        self.delay = delay
        self.added: list[Nexus] = []
        self.lost: list[Nexus] = []
        self.commands = 0
        self.tmfs: list[tuple[TmfFunction, int, int | None]] = []
        self._running: dict[tuple[Nexus, int], asyncio.Task[Response]] = {}

    def luns(self) -> list[int]:
        return [0]

    def nexus_added(self, nexus: Nexus) -> None:
        self.added.append(nexus)

    def nexus_lost(self, nexus: Nexus) -> None:
        self.lost.append(nexus)
        for (nx, _tag), task in list(self._running.items()):
            if nx == nexus:
                task.cancel()

    async def execute(self, command: Command) -> Response:
        self.commands += 1
        if not self.delay and command.cdb[0] != 0xEE:
            return self._run(command)
        task = asyncio.current_task()
        assert task is not None
        key = (command.nexus, command.tag)
        self._running[key] = task  # type: ignore[assignment]
        try:
            await asyncio.sleep(self.delay if command.cdb[0] != 0xEE else 5.0)
        except asyncio.CancelledError:
            raise TaskAborted() from None
        finally:
            self._running.pop(key, None)
        return self._run(command)

    async def task_management(
        self, nexus: Nexus, function: TmfFunction, lun: int, referenced_tag: int | None
    ) -> TmfResult:
        self.tmfs.append((function, lun, referenced_tag))
        if function == TmfFunction.ABORT_TASK:
            task = self._running.get((nexus, referenced_tag or 0))
            if task is None:
                return TmfResult.TASK_DOES_NOT_EXIST
            task.cancel()
            return TmfResult.COMPLETE
        for (_nx, _tag), task in list(self._running.items()):
            task.cancel()
        return TmfResult.COMPLETE

    def _run(self, c: Command) -> Response:
        cdb = bytes(c.cdb)
        op = cdb[0]
        if c.lun != 0:
            return Response(0x02, sense=_sense(0x05, 0x25))
        if op == 0x00 or op == 0xEE:
            return Response()
        if op == 0x12:
            alloc = struct.unpack(">H", cdb[3:5])[0]
            if cdb[1] & 1:
                page = cdb[2]
                if page == 0x00:
                    data = bytes([0, 0, 0, 3, 0x00, 0x80, 0x83])
                elif page == 0x80:
                    data = bytes([0, 0x80, 0, 8]) + b"MINI0001"
                elif page == 0x83:
                    desc = bytes([0x01, 0x03, 0, 8]) + bytes.fromhex("6001405000000001")
                    data = bytes([0, 0x83, 0, len(desc)]) + desc
                else:
                    return Response(0x02, sense=_sense(0x05, 0x24))
            else:
                data = bytes([0, 0, 6, 2, 31, 0, 0, 2]) + b"OPHIURA " + b"MINI".ljust(16) + b"0001"
            return Response(data_in=data[:alloc])
        if op == 0x25:
            return Response(data_in=struct.pack(">II", self.blocks - 1, BS))
        if op == 0x9E and cdb[1] & 0x1F == 0x10:
            alloc = struct.unpack(">I", cdb[10:14])[0]
            data = struct.pack(">QI", self.blocks - 1, BS).ljust(32, b"\0")
            return Response(data_in=data[:alloc])
        if op == 0xA0:
            return Response(data_in=struct.pack(">I4xQ", 8, 0))
        if op in (0x28, 0x88, 0x2A, 0x8A):
            if op in (0x28, 0x2A):
                lba, n = struct.unpack(">I", cdb[2:6])[0], struct.unpack(">H", cdb[7:9])[0]
            else:
                lba, n = struct.unpack(">Q", cdb[2:10])[0], struct.unpack(">I", cdb[10:14])[0]
            if lba + n > self.blocks:
                return Response(0x02, sense=_sense(0x05, 0x21))
            start, length = lba * BS, n * BS
            if op in (0x28, 0x88):
                return Response(data_in=bytes(self.data[start : start + length]))
            data = bytes(c.data_out)[:length]
            usable = len(data) // BS * BS
            self.data[start : start + usable] = data[:usable]
            return Response(data_out_length=length)
        return Response(0x02, sense=_sense(0x05, 0x20))
