"""The HE<->SE link forwarder: a held direction stalls (nothing lost), release lets it through."""

from __future__ import annotations

import asyncio

import pytest

from ophiura.torture.links import LinkProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _arrives(reader: asyncio.StreamReader, n: int, within: float) -> bytes | None:
    try:
        return await asyncio.wait_for(reader.readexactly(n), within)
    except TimeoutError:
        return None


@pytest.mark.parametrize("direction", ["to-se", "to-he", "both"])
async def test_hold_stalls_and_release_delivers(direction: str) -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    link = LinkProxy("a", server.sockets[0].getsockname()[1])
    await link.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"ping")
        assert await _arrives(reader, 4, 5) == b"ping"
        link.hold(direction)
        writer.write(b"held")
        assert await _arrives(reader, 4, 0.3) is None  # a stall, not an error
        link.release()
        assert await _arrives(reader, 4, 5) == b"held"  # and nothing was lost
        writer.close()
    finally:
        await link.stop()
        server.close()


def test_bad_direction_is_refused() -> None:
    with pytest.raises(ValueError, match="one of"):
        LinkProxy("a", 1).hold("sideways")
