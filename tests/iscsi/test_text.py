from __future__ import annotations

import pytest

from ophiura.iscsi.text import (
    Negotiator,
    SessionParams,
    TargetPolicy,
    TextError,
    apply_response,
    encode_text,
    parse_text,
)


def test_parse_and_encode() -> None:
    raw = encode_text([("A", "1"), ("B", "x=y")])
    assert raw == b"A=1\0B=x=y\0"
    assert parse_text(raw) == [("A", "1"), ("B", "x=y")]


@pytest.mark.parametrize("bad", [b"novalue\0", b"A=1\0A=2\0", b"\xff\xfe=1\0", b"=x\0"])
def test_parse_rejects(bad: bytes) -> None:
    with pytest.raises(TextError):
        parse_text(bad)


def answer(offer: dict[str, str], discovery: bool = False, **policy: object) -> dict[str, str]:
    neg = Negotiator(TargetPolicy(**policy), discovery)  # type: ignore[arg-type]
    return dict(neg.respond(list(offer.items())))


def test_list_min_max_boolean_rules() -> None:
    a = answer(
        {
            "HeaderDigest": "CRC32C,None",
            "DataDigest": "None",
            "MaxBurstLength": "1048576",
            "FirstBurstLength": "262144",
            "DefaultTime2Wait": "0",
            "DefaultTime2Retain": "60",
            "InitialR2T": "No",
            "ImmediateData": "Yes",
            "ErrorRecoveryLevel": "2",
            "DataSequenceInOrder": "No",
            "MaxConnections": "8",
            "MaxOutstandingR2T": "64",
        }
    )
    assert a["HeaderDigest"] == "CRC32C" and a["DataDigest"] == "None"
    assert a["MaxBurstLength"] == "1048576"  # min(offer, 16 MiB)
    assert a["DefaultTime2Wait"] == "2"  # max
    assert a["DefaultTime2Retain"] == "0"  # min
    assert a["InitialR2T"] == "No" and a["ImmediateData"] == "Yes"
    assert a["ErrorRecoveryLevel"] == "0" and a["MaxConnections"] == "1"
    assert a["DataSequenceInOrder"] == "Yes"  # OR with our Yes
    assert a["MaxOutstandingR2T"] == "16"
    assert "MaxRecvDataSegmentLength" in a  # declared once


def test_policy_limits_and_and_or() -> None:
    a = answer({"ImmediateData": "Yes", "InitialR2T": "No"}, immediate_data=False, initial_r2t=True)
    assert a["ImmediateData"] == "No" and a["InitialR2T"] == "Yes"


def test_unknown_bad_and_irrelevant() -> None:
    a = answer(
        {
            "X-foo": "1",
            "MaxBurstLength": "12",
            "HeaderDigest": "MD5",
            "IFMarkInt": "1-2",
            "InitialR2T": "Maybe",
        }
    )
    assert a["X-foo"] == "NotUnderstood"
    assert a["MaxBurstLength"] == "Reject" and a["HeaderDigest"] == "Reject"
    assert a["IFMarkInt"] == "Irrelevant" and a["InitialR2T"] == "Reject"
    assert answer({"MaxBurstLength": "4096"}, discovery=True)["MaxBurstLength"] == "Irrelevant"


def test_declarative_mrdsl_and_first_burst_clamp() -> None:
    neg = Negotiator(TargetPolicy(max_recv_data_segment_length=65536))
    out = dict(
        neg.respond(
            [
                ("MaxRecvDataSegmentLength", "4096"),
                ("MaxBurstLength", "1024"),
                ("FirstBurstLength", "8192"),
            ]
        )
    )
    assert out["MaxRecvDataSegmentLength"] == "65536"
    p = neg.finish()
    assert p.initiator_mrdsl == 4096 and p.target_mrdsl == 65536
    assert p.first_burst == 1024 == p.max_burst


def test_apply_response_initiator_side() -> None:
    p = apply_response(
        SessionParams(),
        [
            ("MaxRecvDataSegmentLength", "512"),
            ("HeaderDigest", "CRC32C"),
            ("InitialR2T", "No"),
            ("X", "NotUnderstood"),
        ],
    )
    assert p.target_mrdsl == 512 and p.header_digest == "CRC32C" and not p.initial_r2t
