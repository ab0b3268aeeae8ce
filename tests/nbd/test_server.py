"""The live server over real sockets, driven by our own client and by raw bytes: commands,
error mapping, concurrency, backpressure, graceful disconnect, hostile connections."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ophiura.block.device import MediumError, NoSpaceError, ReadOnlyError
from ophiura.block.file import FileBlockDevice
from ophiura.block.memory import MemoryBlockDevice
from ophiura.nbd.client import (
    NbdClient,
    NbdClientError,
    NbdError,
    NbdOptionError,
    _go_data,
    _handshake,
    _option,
)
from ophiura.nbd.constants import (
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    Command,
    CommandFlag,
    Errno,
    Option,
    Reply,
    TransmissionFlag,
)

MiB = 1 << 20
Starter = Callable[..., Any]


async def connect(server: Any, export: str = "disk") -> NbdClient:
    return await NbdClient.connect("127.0.0.1", server.port, export, timeout=5)


async def raw_session(port: int, export: str = "disk") -> tuple[Any, Any]:
    """A connection in the transmission phase, for sending hand-made bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _handshake(reader, writer)
    await _option(reader, writer, Option.GO, _go_data(export))
    return reader, writer


async def test_read_write_flush_round_trip(start_server: Starter) -> None:
    device = MemoryBlockDevice(8 * MiB)
    server = await start_server({"disk": device})
    client = await connect(server)
    assert client.size == 8 * MiB
    assert client.flags & TransmissionFlag.CAN_MULTI_CONN and not client.read_only
    data = os.urandom(64 * 1024)
    await client.write(4096, data)
    await client.write(MiB, data, fua=True)
    assert await client.read(4096, len(data)) == data
    assert await client.read(MiB, len(data)) == data
    flushes = device.flushes
    await client.flush()
    assert device.flushes == flushes + 1
    assert await client.read(4096 + 3, 10) == data[3:13]  # unaligned reads are served
    await client.disconnect()


async def test_trim_and_write_zeroes_read_back_zeros(start_server: Starter) -> None:
    server = await start_server({"disk": MemoryBlockDevice(MiB, thin=True)})
    client = await connect(server)
    await client.write(0, b"\xab" * 65536)
    await client.trim(0, 8192, fua=True)
    await client.write_zeroes(8192, 8192)
    await client.write_zeroes(16384, 4096, no_hole=True, fua=True)
    got = await client.read(0, 65536)
    assert got[:20480] == bytes(20480) and got[20480:] == b"\xab" * (65536 - 20480)
    await client.disconnect()


@pytest.mark.parametrize(
    ("command", "offset", "length", "errno"),
    [
        (Command.READ, MiB - 512, 1024, Errno.EINVAL),
        (Command.READ, 2**63, 512, Errno.EINVAL),
        (Command.WRITE, MiB - 512, 1024, Errno.ENOSPC),
        (Command.TRIM, MiB, 512, Errno.EINVAL),
        (Command.WRITE_ZEROES, MiB - 512, 1024, Errno.ENOSPC),
        (Command.WRITE, 100, 512, Errno.EINVAL),  # unaligned write: no read-modify-write
        (Command.WRITE_ZEROES, 0, 100, Errno.EINVAL),
        (Command.CACHE, 0, 512, Errno.EINVAL),
        (Command.BLOCK_STATUS, 0, 512, Errno.EINVAL),
        (99, 0, 0, Errno.EINVAL),
    ],
)
async def test_bad_requests_get_errors_and_the_connection_lives(
    start_server: Starter, command: int, offset: int, length: int, errno: int
) -> None:
    server = await start_server({"disk": MemoryBlockDevice(MiB)})
    client = await connect(server)
    data = bytes(length) if command == Command.WRITE else None
    with pytest.raises(NbdError) as info:
        await client.request(command, offset, length, data=data)
    assert info.value.errno == errno
    await client.write(0, b"\x01" * 512)
    assert await client.read(0, 512) == b"\x01" * 512
    await client.disconnect()


async def test_flags_not_meant_for_a_command_are_einval(start_server: Starter) -> None:
    server = await start_server({"disk": MemoryBlockDevice(MiB)})
    client = await connect(server)
    for command, flags in [
        (Command.WRITE, CommandFlag.NO_HOLE),
        (Command.READ, CommandFlag.DF),
        (Command.WRITE_ZEROES, CommandFlag.FAST_ZERO),
        (Command.FLUSH, 0x8000),
    ]:
        data = bytes(512) if command == Command.WRITE else None
        length = 512 if command != Command.FLUSH else 0
        with pytest.raises(NbdError) as info:
            await client.request(command, 0, length, flags, data)
        assert info.value.errno == Errno.EINVAL
    await client.request(Command.READ, 0, 512, CommandFlag.FUA)  # FUA is valid everywhere
    await client.disconnect()


async def test_read_only_export_refuses_writes_with_eperm(start_server: Starter) -> None:
    server = await start_server({"ro": MemoryBlockDevice(MiB, read_only=True)})
    client = await connect(server, "ro")
    assert client.read_only
    for call in (
        client.write(0, bytes(512)),
        client.trim(0, 512),
        client.write_zeroes(0, 512),
    ):
        with pytest.raises(NbdError) as info:
            await call
        assert info.value.errno == Errno.EPERM
    assert await client.read(0, 512) == bytes(512)
    await client.flush()
    await client.disconnect()


class FailingDevice(MemoryBlockDevice):
    """Raises a chosen typed error on writes (StarFish read-only mode, a full or broken disk)."""

    error: Exception | None = None

    async def write(self, offset: int, data: Any, fua: bool = False) -> None:
        if self.error is not None:
            raise self.error
        await super().write(offset, data, fua)

    async def read(self, offset: int, length: int) -> bytes:
        if isinstance(self.error, MediumError):
            raise self.error
        return await super().read(offset, length)


@pytest.mark.parametrize(
    ("error", "errno"),
    [
        (ReadOnlyError("fewer than Q storage elements"), Errno.EPERM),
        (NoSpaceError("thin pool full"), Errno.ENOSPC),
        (MediumError("bad sector"), Errno.EIO),
        (RuntimeError("backend bug"), Errno.EIO),
    ],
)
async def test_device_errors_map_to_wire_errors(
    start_server: Starter, error: Exception, errno: int
) -> None:
    device = FailingDevice(MiB)
    server = await start_server({"disk": device})
    client = await connect(server)
    assert not client.read_only  # read-only at run time: not advertised, still refused
    device.error = error
    with pytest.raises(NbdError) as info:
        await client.write(0, bytes(512))
    assert info.value.errno == errno
    if isinstance(error, MediumError):
        with pytest.raises(NbdError) as info:
            await client.read(0, 512)
        assert info.value.errno == Errno.EIO
    device.error = None
    await client.write(0, b"\x02" * 512)
    assert await client.read(0, 512) == b"\x02" * 512
    await client.disconnect()


async def test_full_disk_is_enospc(start_server: Starter) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    device = FileBlockDevice("/dev/full", size=MiB)
    server = await start_server({"full": device})
    client = await connect(server, "full")
    with pytest.raises(NbdError) as info:
        await client.write(0, bytes(4096))  # (RWF_DSYNC is EOPNOTSUPP on /dev/full)
    assert info.value.errno == Errno.ENOSPC
    await client.disconnect()
    await device.close()


class GatedDevice(MemoryBlockDevice):
    """Operations at offset 0 wait for `gate`: a slow request next to fast ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def read(self, offset: int, length: int) -> bytes:
        if offset == 0:
            self.waiting += 1
            await self.gate.wait()
        return await super().read(offset, length)

    async def write(self, offset: int, data: Any, fua: bool = False) -> None:
        if offset == 0:
            self.waiting += 1
            await self.gate.wait()
        await super().write(offset, data, fua)


async def test_requests_run_concurrently_and_reply_out_of_order(start_server: Starter) -> None:
    device = GatedDevice(MiB)
    server = await start_server({"disk": device})
    client = await connect(server)
    async with asyncio.timeout(10):
        slow = asyncio.ensure_future(client.read(0, 512))
        for i in range(1, 20):  # all answered while the first is still stuck
            await client.write(i * 4096, bytes([i]) * 4096)
            assert await client.read(i * 4096, 4096) == bytes([i]) * 4096
        assert not slow.done()
        device.gate.set()
        assert await slow == bytes(512)
    await client.disconnect()


async def test_in_flight_requests_are_bounded(start_server: Starter) -> None:
    device = GatedDevice(MiB)
    server = await start_server({"disk": device}, max_in_flight=4)
    client = await NbdClient.connect("127.0.0.1", server.port, "disk", max_in_flight=64)
    async with asyncio.timeout(10):
        writes = [asyncio.ensure_future(client.write(0, bytes(4096))) for _ in range(40)]
        while device.waiting < 4:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        (conn,) = server.connections
        assert len(conn.tasks) == 4  # the rest waits in the socket, not in our memory
        device.gate.set()
        await asyncio.gather(*writes)
        assert conn.peak_in_flight == 4
    await client.disconnect()


async def test_disc_finishes_in_flight_requests_then_closes(start_server: Starter) -> None:
    device = GatedDevice(MiB)
    server = await start_server({"disk": device})
    reader, writer = await raw_session(server.port)
    async with asyncio.timeout(10):
        writer.write(REQUEST.pack(REQUEST_MAGIC, 0, Command.WRITE, 5, 0, 512) + b"\x07" * 512)
        writer.write(REQUEST.pack(REQUEST_MAGIC, 0, Command.DISC, 6, 0, 0))
        await writer.drain()
        while device.waiting < 1:
            await asyncio.sleep(0.01)
        device.gate.set()
        reply = await reader.readexactly(SIMPLE_REPLY.size)
        assert SIMPLE_REPLY.unpack(reply) == (SIMPLE_REPLY_MAGIC, 0, 5)
        assert await reader.read() == b""  # then the server closes; no reply to DISC
    writer.close()
    assert await device.read(0, 512) == b"\x07" * 512


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # before the handshake: bad client flags
        b"\x00\x00\x00\x03" + os.urandom(200),  # valid flags, then no option magic
        b"\x00\x00\x00\x03" + b"IHAVEOPT" + b"\x00\x00\x00\x07\xff\xff\xff\xff",  # 4 GiB option
    ],
)
async def test_garbage_connection_closes_alone(start_server: Starter, garbage: bytes) -> None:
    server = await start_server({"disk": MemoryBlockDevice(MiB)})
    client = await connect(server)
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.readexactly(18)
        writer.write(garbage)
        await writer.drain()
        with pytest.raises(ConnectionError):
            while await reader.read(4096):
                pass
            raise ConnectionResetError  # a clean close counts as closed as well
        writer.close()
        for i in range(50):
            await client.write(i * 512, bytes([i]) * 512)
            assert await client.read(i * 512, 512) == bytes([i]) * 512
    await client.disconnect()


async def test_bad_request_magic_and_oversized_write_close_the_connection(
    start_server: Starter,
) -> None:
    server = await start_server({"disk": MemoryBlockDevice(MiB)}, max_in_flight_bytes=64 * MiB)
    for bad in (
        REQUEST.pack(0x12345678, 0, Command.READ, 1, 0, 512),
        REQUEST.pack(REQUEST_MAGIC, 0, Command.WRITE, 1, 0, 64 * MiB),
    ):
        reader, writer = await raw_session(server.port)
        writer.write(bad)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
    client = await connect(server)
    assert await client.read(0, 512) == bytes(512)
    await client.disconnect()


async def test_exports_list_and_unknown_export(start_server: Starter) -> None:
    server = await start_server(
        {"a": MemoryBlockDevice(MiB), "b": MemoryBlockDevice(2 * MiB)},
        descriptions={"a": "first"},
        default_export="b",
    )
    assert await NbdClient.list_exports("127.0.0.1", server.port) == ["a", "b"]
    client = await connect(server, "a")
    assert client.details.description == "first" and client.details.min_block == 512
    await client.disconnect()
    client = await connect(server, "")
    assert client.size == 2 * MiB
    await client.disconnect()
    with pytest.raises(NbdOptionError) as info:
        await connect(server, "c")
    assert info.value.reply == Reply.ERR_UNKNOWN


async def test_idle_handshake_times_out(start_server: Starter) -> None:
    server = await start_server({"disk": MemoryBlockDevice(MiB)}, handshake_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    async with asyncio.timeout(5):
        assert len(await reader.readexactly(18)) == 18
        assert await reader.read() == b""
    writer.close()


async def test_stop_with_clients_connected(tmp_path: Path, start_server: Starter) -> None:
    device = FileBlockDevice(tmp_path / "disk.img", size=4 * MiB)
    server = await start_server({"disk": device})
    client = await connect(server)
    await client.write(0, b"\x09" * 4096, fua=True)
    await asyncio.wait_for(server.stop(), 10)
    with pytest.raises(NbdClientError):
        async with asyncio.timeout(5):
            await client.read(0, 512)
    await client.close()
    await device.close()
    assert (tmp_path / "disk.img").read_bytes()[:4096] == b"\x09" * 4096


async def test_many_connections_share_one_device(start_server: Starter) -> None:
    server = await start_server({"disk": MemoryBlockDevice(4 * MiB)})
    clients = [await connect(server) for _ in range(4)]

    async def worker(i: int, client: NbdClient) -> None:
        for j in range(25):
            off = (i * 25 + j) * 4096
            await client.write(off, bytes([i + 1]) * 4096, fua=True)

    async with asyncio.timeout(20):
        await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
        for i in range(4):  # visible on every connection (CAN_MULTI_CONN)
            off = (i * 25 + 24) * 4096
            assert await clients[(i + 1) % 4].read(off, 4096) == bytes([i + 1]) * 4096
    for client in clients:
        await client.disconnect()
