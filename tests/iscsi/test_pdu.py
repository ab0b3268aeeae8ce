from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ophiura.iscsi import pdu as P


def _scsi_cmd(data: bytes = b"", hd: bool = False, dd: bool = False) -> bytes:
    enc = P.PduEncoder(hd, dd)
    cdb = bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0])
    return b"".join(
        bytes(b)
        for b in enc.encode(0x01, 0xC1, 0, P.encode_lun(3), 7, 4096, 10, 20, data=data, cdb=cdb)
    )


@pytest.mark.parametrize(("hd", "dd"), [(False, False), (True, False), (True, True)])
def test_roundtrip_with_digests_and_padding(hd: bool, dd: bool) -> None:
    wire = _scsi_cmd(b"abcde", hd, dd)
    assert len(wire) == 48 + (4 if hd else 0) + 8 + (4 if dd else 0)
    pdu = P.decode_pdu(wire, header_digest=hd, data_digest=dd)
    assert pdu.opcode == P.Opcode.SCSI_COMMAND
    assert pdu.itt == 7 and pdu.w20 == 4096 and pdu.cmdsn == 10 and pdu.expstatsn == 20
    assert pdu.lun == 3 and pdu.data == b"abcde" and pdu.cdb[:2] == b"\x28\x00"


def test_incremental_feed_byte_by_byte() -> None:
    wire = _scsi_cmd(b"xy") * 2
    dec = P.PduDecoder()
    got = []
    for i in range(len(wire)):
        dec.feed(wire[i : i + 1])
        pdu = dec.next_pdu()
        if pdu:
            got.append(pdu)
    assert [p.data for p in got] == [b"xy", b"xy"]


def test_data_segment_checked_before_buffering() -> None:
    header = bytearray(_scsi_cmd())
    header[5:8] = (0xFFFFFF).to_bytes(3, "big")
    dec = P.PduDecoder(max_data_segment=8192)
    dec.feed(bytes(header))
    with pytest.raises(P.DataSegmentTooLong) as err:
        dec.next_pdu()
    assert err.value.fatal and len(err.value.header) == 48


def test_digest_errors() -> None:
    wire = bytearray(_scsi_cmd(b"data", True, True))
    bad_header = bytearray(wire)
    bad_header[20] ^= 1
    with pytest.raises(P.HeaderDigestError):
        P.decode_pdu(bytes(bad_header), header_digest=True, data_digest=True)
    wire[-5] ^= 1  # inside the data segment
    with pytest.raises(P.DataDigestError) as err:
        P.decode_pdu(bytes(wire), header_digest=True, data_digest=True)
    assert not err.value.fatal


def test_unknown_opcode_is_skipped_not_fatal() -> None:
    wire = bytearray(_scsi_cmd(b"zz"))
    wire[0] = 0x1F
    dec = P.PduDecoder()
    dec.feed(bytes(wire) + _scsi_cmd(b"ok"))
    with pytest.raises(P.UnknownOpcode) as err:
        dec.next_pdu()
    assert not err.value.fatal
    assert dec.next_pdu().data == b"ok"  # type: ignore[union-attr]


def test_target_opcodes_rejected_by_target_decoder() -> None:
    wire = bytearray(_scsi_cmd())
    wire[0] = 0x21
    with pytest.raises(P.UnknownOpcode):
        P.decode_pdu(bytes(wire))


def test_truncated() -> None:
    with pytest.raises(P.TruncatedPdu):
        P.decode_pdu(_scsi_cmd(b"abc")[:50])


@pytest.mark.parametrize("lun", [0, 1, 255, 256, 1000, 16383])
def test_lun_roundtrip(lun: int) -> None:
    assert P.decode_lun(P.encode_lun(lun)) == lun


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.booleans())
def test_fuzz_random_bytes_only_typed_errors(data: bytes, hd: bool, dd: bool) -> None:
    dec = P.PduDecoder("target", 256, hd, dd)
    dec.feed(data)
    for _ in range(20):
        try:
            if dec.next_pdu() is None:
                break
        except P.PduError as exc:
            if exc.fatal:
                break


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFFFF),
    st.integers(0, 255),
    st.binary(max_size=64),
)
def test_fuzz_headers(op: int, flags: int, dsl: int, ahs: int, tail: bytes) -> None:
    header = bytearray(_scsi_cmd())
    header[0], header[1], header[4] = op, flags, ahs
    header[5:8] = dsl.to_bytes(3, "big")
    try:
        pdu = P.decode_pdu(bytes(header[:48]) + tail, max_data_segment=8192)
    except P.PduError:
        return
    assert len(pdu.data) == dsl <= 8192


def test_negotiated_codec_switches_both_directions() -> None:
    dec = P.PduDecoder("target")
    enc = P.negotiated_codec(dec, True, True, 65536)
    assert (dec.header_digest, dec.data_digest, dec.max_data_segment) == (True, True, 65536)
    wire = b"".join(bytes(b) for b in enc.encode(0x01, 0x80, 0, 0, 9, 0, 1, 0, data=b"abc"))
    dec.feed(wire)
    pdu = dec.next_pdu()
    assert pdu is not None and pdu.itt == 9 and pdu.data == b"abc"


@pytest.mark.parametrize("sense", [b"", bytes(18), bytes(range(1, 30))])
def test_sense_segment_roundtrip(sense: bytes) -> None:
    # what the target writes into a SCSI Response is what the initiator reads back
    assert P.parse_sense_segment(P.sense_segment(sense)) == sense
    assert P.parse_sense_segment(b"") == b"" and P.parse_sense_segment(b"\x00") == b""


def test_rejected_itt_from_reject_data() -> None:
    header = P.BHS.pack(0x01, 0x80, 0, 0, 0, 0x1234, 0, 0, 0, 0, 0, 0, 0)
    assert P.rejected_itt(P.reject_header_data(header)) == 0x1234
    assert P.rejected_itt(P.reject_header_data(header[:16])) == 0
    assert P.rejected_itt(b"short") == P.NO_TAG


def test_extended_cdb_from_ahs() -> None:
    extra = bytes(range(16, 32))  # CDB bytes 16..31 of a 32-byte CDB
    ahs = (len(extra) + 1).to_bytes(2, "big") + b"\x01\x00" + extra
    ahs += b"\0" * (-len(ahs) & 3)
    other = (5).to_bytes(2, "big") + b"\x02\x00" + bytes(4)  # bidi read length AHS
    other += b"\0" * (-len(other) & 3)
    assert P.extended_cdb(ahs) == extra
    assert P.extended_cdb(other + ahs) == extra
    assert P.extended_cdb(other) == b""
