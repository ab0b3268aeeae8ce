from __future__ import annotations

import struct

from ophiura.iscsi import pr_client as pr


def test_cdbs() -> None:
    cdb = pr.pr_in_cdb(pr.PrIn.READ_KEYS, 4096)
    assert len(cdb) == 10 and cdb[0] == 0x5E and cdb[1] == 0 and cdb[7:9] == b"\x10\x00"
    cdb = pr.pr_out_cdb(pr.PrOut.RESERVE, pr.PrType.WRITE_EXCLUSIVE, 0, 24)
    assert len(cdb) == 10 and cdb[:3] == b"\x5f\x01\x01" and cdb[5:9] == b"\0\0\0\x18"
    params = pr.pr_out_parameters(0x1122, 0x3344, aptpl=True)
    assert len(params) == 24 and params[20] == 1
    assert struct.unpack(">QQ", params[:16]) == (0x1122, 0x3344)


def test_transport_id_and_register_and_move() -> None:
    tid = pr.iscsi_transport_id("iqn.a", 0x23D000000001)
    assert tid[0] == 0x45 and len(tid) % 4 == 0 and b"iqn.a,i,0x23d000000001\0" in tid
    body = pr.register_and_move_parameters(1, 2, 1, tid, unreg=True)
    assert len(body) == 24 + len(tid) and body[17] == 2


def test_parsers() -> None:
    keys = pr.parse_read_keys(struct.pack(">IIQQ", 5, 16, 1, 2))
    assert keys.generation == 5 and keys.keys == [1, 2]
    res = pr.parse_read_reservation(struct.pack(">IIQ4xBBH", 6, 16, 9, 0, 0x03, 0))
    assert (res.key, res.type, res.scope) == (9, 3, 0)
    assert pr.parse_read_reservation(struct.pack(">II", 6, 0)).key is None
    tid = pr.iscsi_transport_id("iqn.b")
    entry = struct.pack(">Q4xBB4xHI", 7, 1, 0x05, 1, len(tid)) + tid
    full = pr.parse_full_status(struct.pack(">II", 8, len(entry)) + entry)
    e = full.entries[0]
    assert (e.key, e.holder, e.type, e.relative_target_port, e.initiator) == (
        7,
        True,
        5,
        1,
        "iqn.b",
    )
    caps = pr.parse_capabilities(bytes([0, 8, 0x11, 0x81, 0xEA, 0x01, 0, 0]))
    assert caps.crh and caps.ptpl_c and caps.tmv and caps.ptpl_a and caps.type_mask == 0xEA01
