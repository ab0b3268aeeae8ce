"""The initiator's side of login (RFC 7143 §6): the keys it offers, CHAP (optionally mutual), and
the operational negotiation into `SessionParams`.

The wire is the caller's (`InitiatorSession`): `exchange(flags, pairs)` sends one Login Request
with those text keys and returns the Login Response with its keys, raising `LoginFailed` on a
non-zero status. The target's side of the same conversation is `login.LoginMachine`; the CHAP
maths both sides share is `chap`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ophiura.iscsi import chap as chap_mod
from ophiura.iscsi.initiator_results import IscsiError, LoginFailed
from ophiura.iscsi.pdu import Pdu
from ophiura.iscsi.text import SessionParams, apply_response

Exchange = Callable[[int, list[tuple[str, str]]], Awaitable[tuple[Pdu, dict[str, str]]]]

# Login Request flags: T bit, CSG << 2, NSG.
SECURITY_TO_OPERATIONAL = 0x81
SECURITY_STAY = 0x01
OPERATIONAL_TO_FULL_FEATURE = 0x87


def login_offer(
    normal: bool,
    *,
    header_digest: bool,
    data_digest: bool,
    max_recv_data_segment_length: int,
    immediate_data: bool,
    initial_r2t: bool,
    first_burst_length: int,
    max_burst_length: int,
) -> dict[str, str]:
    """The operational keys we propose (a discovery session negotiates only the first three)."""
    offer = {
        "HeaderDigest": "CRC32C,None" if header_digest else "None",
        "DataDigest": "CRC32C,None" if data_digest else "None",
        "MaxRecvDataSegmentLength": str(max_recv_data_segment_length),
    }
    if normal:
        offer.update(
            {
                "InitialR2T": "Yes" if initial_r2t else "No",
                "ImmediateData": "Yes" if immediate_data else "No",
                "MaxBurstLength": str(max_burst_length),
                "FirstBurstLength": str(first_burst_length),
                "MaxOutstandingR2T": "1",
                "MaxConnections": "1",
                "ErrorRecoveryLevel": "0",
                "DataPDUInOrder": "Yes",
                "DataSequenceInOrder": "Yes",
            }
        )
    return offer


async def negotiate(
    exchange: Exchange,
    params: SessionParams,
    initiator_name: str,
    target: str | None,
    offer: dict[str, str],
    chap: tuple[str, str] | None,
    mutual: tuple[str, str] | None,
) -> None:
    """Run the whole login up to full feature phase; the results land in `params`."""
    ident = [("InitiatorName", initiator_name)]
    if target is None:
        ident.append(("SessionType", "Discovery"))
    else:
        ident += [("TargetName", target), ("SessionType", "Normal")]
    if chap is not None:
        await _security(exchange, ident, chap, mutual)
        ident = []
    pairs = [*ident, *offer.items()]
    while True:
        rsp, keys = await exchange(OPERATIONAL_TO_FULL_FEATURE, pairs)
        apply_response(params, list(keys.items()))
        if rsp.flags & 0x80 and rsp.flags & 3 == 3:
            break
        pairs = []


async def _security(
    exchange: Exchange,
    ident: list[tuple[str, str]],
    chap: tuple[str, str],
    mutual: tuple[str, str] | None,
) -> None:
    """The security stage: CHAP_A=5 (MD5), our response, and the target's if `mutual`."""
    rsp, keys = await exchange(SECURITY_TO_OPERATIONAL, [*ident, ("AuthMethod", "CHAP,None")])
    if keys.get("AuthMethod") == "CHAP":
        rsp, keys = await exchange(SECURITY_STAY, [("CHAP_A", "5")])
        if keys.get("CHAP_A") != "5":
            raise IscsiError(f"target chose CHAP_A={keys.get('CHAP_A')}")
        ident_no = int(keys["CHAP_I"])
        challenge = chap_mod.decode_binary(keys["CHAP_C"])
        answer = [
            ("CHAP_N", chap[0]),
            ("CHAP_R", chap_mod.encode_hex(chap_mod.chap_response(ident_no, chap[1], challenge))),
        ]
        my_id, my_challenge = chap_mod.new_challenge()
        if mutual is not None:
            answer += [("CHAP_I", str(my_id)), ("CHAP_C", chap_mod.encode_hex(my_challenge))]
        rsp, keys = await exchange(SECURITY_TO_OPERATIONAL, answer)
        if mutual is not None:
            got = keys.get("CHAP_R")
            if (
                keys.get("CHAP_N") != mutual[0]
                or got is None
                or not chap_mod.verify(my_id, mutual[1], my_challenge, chap_mod.decode_binary(got))
            ):
                raise LoginFailed(0x0201, "target failed mutual CHAP")
    while not rsp.flags & 0x80:
        rsp, keys = await exchange(SECURITY_TO_OPERATIONAL, [])
