"""PERSISTENT RESERVE OUT as a pure function: (state, request) -> (new state, effects).

Deciding from a snapshot and acting afterwards (DESIGN.md, as Patroni's ha.py does) keeps the
SPC-4 5.12 rules testable by tables and lets the caller make the new state durable (APTPL) before
anyone can observe it. Effects are what the caller must do once the state is committed: unit
attentions to establish and, for PREEMPT AND ABORT, whose commands to abort.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ophiura.scsi.api import Nexus
from ophiura.scsi.constants import Asc, PrOut, PrType, SenseKey
from ophiura.scsi.identity import TransportIdError, normalize_port, parse_iscsi_transport_id
from ophiura.scsi.pr_state import PrState, Registration
from ophiura.scsi.sense import (
    CheckCondition,
    ReservationConflict,
    invalid_cdb,
    invalid_param,
    param_list_length_error,
)

BASIC_PARAMETER_LENGTH = 24
_SERVICE_ACTIONS = frozenset(int(sa) for sa in PrOut)


@dataclass
class PrEffects:
    """What must happen after the new state is committed."""

    # (registration as it was before the change, unit attention): every I_T nexus the
    # registration covers, except the issuing one, gets the unit attention.
    unit_attentions: list[tuple[Registration, tuple[int, int]]] = field(default_factory=list)
    # Registrations whose I_T nexuses' commands are aborted (PREEMPT AND ABORT).
    abort: list[Registration] = field(default_factory=list)
    changed: bool = False  # the state changed: persist it when APTPL is (or was) on


@dataclass(frozen=True)
class PrOutRequest:
    service_action: int
    scope: int
    type: int
    params: bytes


def _check_type(value: int) -> PrType:
    try:
        return PrType(value)
    except ValueError:
        raise invalid_cdb(2, 3) from None


def _check_scope(scope: int) -> None:
    if scope != 0:  # only LU_SCOPE exists in SPC-4
        raise invalid_cdb(2, 7)


def _new_registration(nexus: Nexus, key: int, all_tg_pt: bool) -> Registration:
    return Registration(
        key=key,
        initiator_port=normalize_port(nexus.initiator_port),
        target_port=None if all_tg_pt else normalize_port(nexus.target_port),
        relative_target_port_id=nexus.relative_target_port_id,
    )


def apply(
    state: PrState,
    nexus: Nexus,
    req: PrOutRequest,
    *,
    ptpl_capable: bool,
    known_ports: dict[int, str],
) -> tuple[PrState, PrEffects]:
    """Decide one PERSISTENT RESERVE OUT; raises CheckCondition or ReservationConflict."""
    sa = req.service_action
    if sa == PrOut.REGISTER_AND_MOVE:
        return _register_and_move(state, nexus, req, ptpl_capable, known_ports)
    if sa not in _SERVICE_ACTIONS:
        raise invalid_cdb(1, 4)
    p = req.params
    if len(p) != BASIC_PARAMETER_LENGTH:
        raise param_list_length_error()
    res_key = int.from_bytes(p[0:8])
    sa_key = int.from_bytes(p[8:16])
    flags = p[20]
    if flags & 0x08:  # SPEC_I_PT: not supported (REPORT CAPABILITIES says SIP_C=0)
        raise invalid_param(20, 3)
    aptpl = bool(flags & 0x01)
    if sa in (PrOut.REGISTER, PrOut.REGISTER_AND_IGNORE):
        if aptpl and not ptpl_capable:
            raise invalid_param(20, 0)
        return _register(state, nexus, sa, res_key, sa_key, bool(flags & 0x04), aptpl)

    reg = state.lookup(nexus)
    if reg is None or reg.key != res_key:
        raise ReservationConflict()
    if sa == PrOut.RESERVE:
        return _reserve(state, reg, req)
    if sa == PrOut.RELEASE:
        return _release(state, reg, req)
    if sa == PrOut.CLEAR:
        effects = PrEffects(changed=True)
        effects.unit_attentions = [(r, Asc.RESERVATIONS_PREEMPTED) for r in state.registrations]
        return PrState(generation=state.generation + 1, aptpl=state.aptpl), effects
    return _preempt(state, reg, req, sa_key, abort=sa == PrOut.PREEMPT_AND_ABORT)


def _without(state: PrState, gone: list[Registration]) -> tuple[Registration, ...]:
    idents = {r.ident for r in gone}
    return tuple(r for r in state.registrations if r.ident not in idents)


def _register(
    state: PrState,
    nexus: Nexus,
    sa: int,
    res_key: int,
    sa_key: int,
    all_tg_pt: bool,
    aptpl: bool,
) -> tuple[PrState, PrEffects]:
    reg = state.lookup(nexus)
    effects = PrEffects()
    if reg is None:
        if sa == PrOut.REGISTER and res_key != 0:
            raise ReservationConflict()
        if sa_key == 0:
            return state, effects  # nothing to register, nothing to do
        if all_tg_pt:
            port = normalize_port(nexus.initiator_port)
            if any(r.initiator_port == port for r in state.registrations):
                raise ReservationConflict()  # part of that initiator port is registered already
        new = _new_registration(nexus, sa_key, all_tg_pt)
        effects.changed = True
        return state.with_changes(
            generation=state.generation + 1,
            registrations=(*state.registrations, new),
            aptpl=aptpl,
        ), effects
    if sa == PrOut.REGISTER and res_key != reg.key:
        raise ReservationConflict()
    effects.changed = True
    if sa_key != 0:
        changed = Registration(
            sa_key, reg.initiator_port, reg.target_port, reg.relative_target_port_id
        )
        regs = tuple(changed if r.ident == reg.ident else r for r in state.registrations)
        return state.with_changes(
            generation=state.generation + 1, registrations=regs, aptpl=aptpl
        ), effects
    # Unregister (SPC-4 5.12.11.2.3): a holder's reservation goes with its registration, except
    # that an all-registrants reservation lasts while any registrant is left.
    regs = _without(state, [reg])
    res_type, holder = state.res_type, state.holder
    if res_type is not None:
        if res_type.all_registrants:
            if not regs:
                res_type, holder = None, None
        elif holder == reg.ident:
            if res_type.registrants_only:
                effects.unit_attentions = [(r, Asc.RESERVATIONS_RELEASED) for r in regs]
            res_type, holder = None, None
    return state.with_changes(
        generation=state.generation + 1,
        registrations=regs,
        res_type=res_type,
        holder=holder,
        aptpl=aptpl,
    ), effects


def _reserve(state: PrState, reg: Registration, req: PrOutRequest) -> tuple[PrState, PrEffects]:
    _check_scope(req.scope)
    rtype = _check_type(req.type)
    if state.res_type is not None:
        if state.is_holder(reg) and state.res_type == rtype:
            return state, PrEffects()  # the holder reserving again with the same type: no-op
        raise ReservationConflict()
    holder = None if rtype.all_registrants else reg.ident
    return state.with_changes(res_type=rtype, holder=holder), PrEffects(changed=True)


def _release(state: PrState, reg: Registration, req: PrOutRequest) -> tuple[PrState, PrEffects]:
    if state.res_type is None or not state.is_holder(reg):
        return state, PrEffects()  # SPC-4: not the holder (or nothing held): GOOD, no change
    if req.scope != 0 or req.type != state.res_type:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_RELEASE_OF_PR)
    effects = PrEffects(changed=True)
    if state.res_type not in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS):
        effects.unit_attentions = [
            (r, Asc.RESERVATIONS_RELEASED) for r in state.registrations if r.ident != reg.ident
        ]
    return state.with_changes(res_type=None, holder=None), effects


def _preempt(
    state: PrState, reg: Registration, req: PrOutRequest, sa_key: int, abort: bool
) -> tuple[PrState, PrEffects]:
    """PREEMPT and PREEMPT AND ABORT (SPC-4 5.12.11.2.4)."""
    _check_scope(req.scope)
    rtype = _check_type(req.type)
    effects = PrEffects(changed=True)
    res = state.res_type
    holder_reg = state.holder_registration()

    def preempt_registrations() -> tuple[PrState, PrEffects]:
        if sa_key == 0:
            raise invalid_param(8)
        if not any(r.key == sa_key for r in state.registrations):
            raise ReservationConflict()
        victims = [r for r in state.registrations if r.key == sa_key and r.ident != reg.ident]
        effects.unit_attentions = [(r, Asc.REGISTRATIONS_PREEMPTED) for r in victims]
        effects.abort = victims if abort else []
        regs = _without(state, victims)
        res_type, holder = state.res_type, state.holder
        if res_type is not None and res_type.all_registrants and not regs:
            res_type = holder = None
        return state.with_changes(
            generation=state.generation + 1, registrations=regs, res_type=res_type, holder=holder
        ), effects

    if res is None:
        return preempt_registrations()
    if res.all_registrants:
        if sa_key != 0:
            return preempt_registrations()
        victims = [r for r in state.registrations if r.ident != reg.ident]
    elif holder_reg is not None and holder_reg.key == sa_key:
        victims = [r for r in state.registrations if r.key == sa_key and r.ident != reg.ident]
    else:
        return preempt_registrations()
    # The reservation itself is preempted: the preempting nexus now holds one of the CDB's type.
    regs = _without(state, victims)
    effects.unit_attentions = [(r, Asc.REGISTRATIONS_PREEMPTED) for r in victims]
    if rtype != res:
        victim_ids = {v.ident for v in victims}
        effects.unit_attentions += [
            (r, Asc.RESERVATIONS_RELEASED)
            for r in regs
            if r.ident != reg.ident and r.ident not in victim_ids
        ]
    effects.abort = victims if abort else []
    holder = None if rtype.all_registrants else reg.ident
    return state.with_changes(
        generation=state.generation + 1, registrations=regs, res_type=rtype, holder=holder
    ), effects


def _register_and_move(
    state: PrState,
    nexus: Nexus,
    req: PrOutRequest,
    ptpl_capable: bool,
    known_ports: dict[int, str],
) -> tuple[PrState, PrEffects]:
    """Hand the reservation to another I_T nexus (SPC-4 5.12.9), e.g. to a failover partner."""
    p = req.params
    if len(p) < BASIC_PARAMETER_LENGTH:
        raise param_list_length_error()
    tid_len = int.from_bytes(p[20:24])
    if BASIC_PARAMETER_LENGTH + tid_len != len(p):
        raise param_list_length_error()
    res_key = int.from_bytes(p[0:8])
    sa_key = int.from_bytes(p[8:16])
    unreg = bool(p[17] & 0x02)
    aptpl = bool(p[17] & 0x01)
    rtpi = int.from_bytes(p[18:20])
    reg = state.lookup(nexus)
    if reg is None or reg.key != res_key:
        raise ReservationConflict()
    if state.res_type is None or state.res_type.all_registrants or not state.is_holder(reg):
        raise ReservationConflict()
    if sa_key == 0:
        raise invalid_param(8)
    if aptpl and not ptpl_capable:
        raise invalid_param(17, 0)
    try:
        dest_port, _ = parse_iscsi_transport_id(p[24:])
    except TransportIdError as exc:
        raise invalid_param(24 + exc.offset) from None
    if ",i,0x" not in dest_port:
        raise invalid_param(24)  # a device name alone does not name one initiator port
    target_port = known_ports.get(rtpi)
    if target_port is None:
        raise invalid_param(18)
    dest_nexus = Nexus(dest_port, target_port, rtpi)
    if reg.covers(dest_nexus):
        raise invalid_param(24)  # moving to ourselves
    dest = state.lookup(dest_nexus)
    regs = list(state.registrations)
    if dest is None:
        dest = _new_registration(dest_nexus, sa_key, all_tg_pt=False)
        regs.append(dest)
    if unreg:
        regs = [r for r in regs if r.ident != reg.ident]
    return state.with_changes(
        generation=state.generation + 1,
        registrations=tuple(regs),
        holder=dest.ident,
        aptpl=aptpl,
    ), PrEffects(changed=True)
