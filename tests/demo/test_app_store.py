"""The demo app's record store over a real NBD server: what a node that takes over finds on the
volume is exactly what was acknowledged before (and a refused write leaves no lasting hole)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ophiura.block.device import ReadOnlyError
from ophiura.block.memory import MemoryBlockDevice
from ophiura.demo.app import (
    HEADER_SIZE,
    SCAN_GAP,
    SLOT,
    RecordError,
    RecordStore,
    decode_slot,
    encode_slot,
    slot_offset,
)
from ophiura.nbd.client import NbdClient, NbdError
from ophiura.nbd.server import NbdServer


class Refusing(MemoryBlockDevice):
    """A volume that can turn read-only, as an HE does with fewer than Q SEs."""

    refuse = False

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> None:
        if self.refuse:
            raise ReadOnlyError("fewer than Q SEs")
        await super().write(offset, data, fua)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Refusing, int]]:
    dev = Refusing(4 * 1024 * 1024)
    server = NbdServer({"demo": dev}, "127.0.0.1", 0)
    await server.start()
    try:
        yield dev, server.port
    finally:
        await server.stop()


async def _open(port: int) -> RecordStore:
    store = RecordStore(await NbdClient.connect("127.0.0.1", port, "demo"))
    await store.open()
    return store


def test_slot_round_trip_and_damage() -> None:
    raw = encode_slot(7, {"id": "x", "data": "y"})
    assert len(raw) == SLOT and decode_slot(7, raw) == {"id": "x", "data": "y"}
    assert decode_slot(8, raw) is None  # a slot copied to the wrong place
    torn = raw[:20] + bytes([raw[20] ^ 1]) + raw[21:]
    assert decode_slot(7, torn) is None
    assert decode_slot(0, bytes(SLOT)) is None
    with pytest.raises(RecordError):
        encode_slot(0, {"id": "x", "data": "z" * SLOT})


async def test_a_new_owner_recovers_every_record(served: tuple[Refusing, int]) -> None:
    _, port = served
    first = await _open(port)
    assert first.recovered == 0
    for i in range(300):
        await first.put(f"r{i}", f"data-{i}")
    await first.client.disconnect()
    second = await _open(port)  # another node, after a failover
    assert second.recovered == 300
    assert second.index["r123"] == (123, "data-123")
    assert second.next_slot == 300
    assert await second.put("r300", "more") == 300
    await second.client.disconnect()


async def test_refused_write_slot_is_reused_and_holes_are_scanned_past(
    served: tuple[Refusing, int],
) -> None:
    dev, port = served
    store = await _open(port)
    for i in range(5):
        await store.put(f"r{i}", "d")
    dev.refuse = True
    with pytest.raises(NbdError):
        await store.put("lost", "d")  # never acknowledged
    dev.refuse = False
    assert await store.put("r5", "d") == 5  # the refused slot, not a hole
    # a hole shorter than the scan gap (writes in flight when a node died) is skipped
    await store.client.write(slot_offset(2), bytes(SLOT), fua=True)
    far = 6 + SCAN_GAP - 1
    await store.client.write(slot_offset(far), encode_slot(far, {"id": "far", "data": "d"}))
    await store.client.disconnect()
    again = await _open(port)
    assert set(again.index) == {"r0", "r1", "r3", "r4", "r5", "far"}
    await again.client.disconnect()


async def test_foreign_volume_is_refused(served: tuple[Refusing, int]) -> None:
    dev, port = served
    await dev.write(0, b"not ours".ljust(512, b"\0"))
    with pytest.raises(RecordError):
        await _open(port)
    assert HEADER_SIZE % 512 == 0
