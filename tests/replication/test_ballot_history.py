"""A divergent tail *below* a later owner's base (found while fixing issue 9's failure 5).

SE c holds writes 101..105 of owner A that nobody acknowledged (A died with them in flight to
c only). B takes over without c (base 100) and writes its own 101..120; then C takes over
(base 120). When c comes back, its tail is not above C's base, so truncating above the base
does not remove it: C must find that c's write 105 is not the 105 of the history it owns (the
ballot that wrote it differs) and copy the whole volume to c. Before, c replayed 106..120 on top
of A's 101..105 and served A's data for blocks whose acknowledged contents were B's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ophiura.replication.wire.client import SeClient

from .he_harness import (
    SECRET,
    SeHandle,
    assert_identical,
    he_config,
    start_he,
    wait_all_up,
    wait_for,
)

BS = 4096


def block(tag: bytes, seq: int) -> bytes:
    return (tag + seq.to_bytes(7, "little")) * (BS // 8)


async def test_divergent_tail_below_a_later_base_is_copied_over(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    cfg = he_config(ses)
    a_he = await start_he(replace(cfg, state_dir=tmp_path / "A"), tmp_path / "A")
    try:
        await wait_all_up(a_he)
        vol = a_he.volumes["vol"].data
        for s in range(1, 101):
            await vol.write((s - 1) * BS, block(b"A", s))
        ballot = (vol.epoch, vol.he_id, vol.base)
        assert vol.latest_seq == 100
    finally:
        await a_he.stop()
    # A's last writes reached c only: forged with A's ballot, as its in-flight sends would be
    c = await SeClient.connect("c", "127.0.0.1", ses[2].port, SECRET, client_name="A")
    try:
        for s in range(101, 106):
            await c.write(
                "vol", ballot[0], s, (s - 1) * BS, block(b"A", s), he_id=ballot[1], base=ballot[2]
            )
    finally:
        await c.close()
    ses[2].kill9()

    b_he = await start_he(replace(cfg, state_dir=tmp_path / "B"), tmp_path / "B")
    try:
        vol = b_he.volumes["vol"].data
        assert vol.base == 100, vol.base  # claimed on a and b
        for s in range(101, 121):
            await vol.write((s - 1) * BS, block(b"B", s))
    finally:
        await b_he.stop()

    c_he = await start_he(replace(cfg, state_dir=tmp_path / "C"), tmp_path / "C")
    try:
        vol = c_he.volumes["vol"].data
        assert vol.base == 120, vol.base
        ses[2].spawn()
        await ses[2].wait_listening()
        await wait_all_up(c_he, timeout=30)
        await wait_for(lambda: vol.replicas["c"].last_recovery == "full", 5, "c copied in full")
        await assert_identical(c_he, ["a", "b", "c"])
        for s in (101, 105, 106, 120):
            assert await vol.read((s - 1) * BS, BS) == block(b"B", s)
    finally:
        await c_he.stop()
