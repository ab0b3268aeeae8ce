"""PERSISTENT RESERVE IN parameter data (SPC-4 6.15): what a fencing agent reads back."""

from __future__ import annotations

from ophiura.scsi.constants import PrIn
from ophiura.scsi.identity import iscsi_transport_id
from ophiura.scsi.pr_state import PrState
from ophiura.scsi.sense import invalid_cdb

# Types we support, as the PERSISTENT RESERVATION TYPE MASK of REPORT CAPABILITIES:
# WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX in byte 4 and EX_AC_AR in byte 5.
TYPE_MASK = bytes((0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01))


def read_keys(state: PrState) -> bytes:
    keys = b"".join(r.key.to_bytes(8) for r in state.registrations)
    return state.generation.to_bytes(4) + len(keys).to_bytes(4) + keys


def read_reservation(state: PrState) -> bytes:
    head = state.generation.to_bytes(4)
    if state.res_type is None:
        return head + bytes(4)
    holder = state.holder_registration()
    # All-registrants reservations have no single holder: the key is reported as zero.
    key = 0 if holder is None else holder.key
    body = key.to_bytes(8) + bytes(4) + bytes((0, int(state.res_type) & 0x0F)) + bytes(2)
    return head + len(body).to_bytes(4) + body


def report_capabilities(state: PrState, ptpl_capable: bool) -> bytes:
    # CRH=0, SIP_C=0 (no SPEC_I_PT), ATP_C=1 (ALL_TG_PT), PTPL_C when we have a state dir.
    byte2 = 0x04 | (0x01 if ptpl_capable else 0)
    # TMV=1: the type mask is valid; ALLOW COMMANDS=000b; PTPL_A: APTPL is active now.
    byte3 = 0x80 | (0x01 if state.aptpl else 0)
    return bytes((0, 8, byte2, byte3)) + TYPE_MASK + bytes(2)


def read_full_status(state: PrState) -> bytes:
    """One full status descriptor per registration, each naming its initiator port."""
    out = bytearray()
    for reg in state.registrations:
        holder = state.is_holder(reg)
        tid = iscsi_transport_id(reg.initiator_port)
        flags = (0x02 if reg.target_port is None else 0) | (0x01 if holder else 0)
        scope_type = int(state.res_type) & 0x0F if holder and state.res_type else 0
        out += reg.key.to_bytes(8) + bytes(4) + bytes((flags, scope_type)) + bytes(4)
        out += reg.relative_target_port_id.to_bytes(2) + len(tid).to_bytes(4) + tid
    return state.generation.to_bytes(4) + len(out).to_bytes(4) + bytes(out)


def pr_in(state: PrState, service_action: int, ptpl_capable: bool) -> bytes:
    if service_action == PrIn.READ_KEYS:
        return read_keys(state)
    if service_action == PrIn.READ_RESERVATION:
        return read_reservation(state)
    if service_action == PrIn.REPORT_CAPABILITIES:
        return report_capabilities(state, ptpl_capable)
    if service_action == PrIn.READ_FULL_STATUS:
        return read_full_status(state)
    raise invalid_cdb(1, 4)
