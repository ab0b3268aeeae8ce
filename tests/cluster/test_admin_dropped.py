"""A node that dies while answering an admin request (fenced, killed) is "cannot reach", so the
CLI asks the next node instead of failing (seen in `test_live_fencing.py`: `switchover --wait`
polled the node that was being fenced and stopped with "Expecting value: line 1 column 1")."""

from __future__ import annotations

import asyncio
import json

import pytest

from ophiura.cluster.admin import AdminError, call


async def test_connection_closed_mid_exchange_is_cannot_reach() -> None:
    async def hello_then_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps({"challenge": "00" * 16, "node": "n1"}).encode() + b"\n")
        await writer.drain()
        await reader.readline()
        writer.close()  # killed before it answers

    server = await asyncio.start_server(hello_then_die, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(AdminError, match=r"cannot reach.*connection closed"):
            await call("127.0.0.1", port, b"k" * 32, {"op": "status"}, timeout=2.0)
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_is_a_protocol_error_not_cannot_reach() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"not json\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(AdminError) as err:
            await call("127.0.0.1", port, b"k" * 32, {"op": "status"}, timeout=2.0)
        assert "cannot reach" not in str(err.value)
    finally:
        server.close()
        await server.wait_closed()
