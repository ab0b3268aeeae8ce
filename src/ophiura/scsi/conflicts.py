"""Which commands a reservation lets through, as tables (SPC-4 5.12.3 / SBC-3 4.17).

Every command has an access class (see opcodes.py); the persistent reservation tables then only
need three classes, because SPC-4 table "SPC commands that are allowed in the presence of various
reservations" and its SBC-3 counterpart reduce to:
- ALWAYS: allowed in every column (INQUIRY, REPORT LUNS, REQUEST SENSE, PERSISTENT RESERVE IN,
  READ CAPACITY, TEST UNIT READY, PREVENT ALLOW with PREVENT=0, START STOP UNIT START=1 ...),
- READ: reads and read-like commands (READ, VERIFY, PRE-FETCH, GET LBA STATUS, MODE SENSE,
  REPORT SUPPORTED OPERATION CODES ...): Allowed, Conflict, Allowed, Allowed, Allowed, Conflict,
- WRITE: anything that changes the medium or the LU (WRITE*, WRITE SAME, UNMAP, COMPARE AND WRITE,
  SYNCHRONIZE CACHE, MODE SELECT, PREVENT=1, START STOP stop ...): Conflict, Conflict, Allowed,
  Conflict, Allowed, Conflict,
for the columns WE, EA, {WE-RO, WE-AR} registered / not registered, {EA-RO, EA-AR} registered /
not registered. PERSISTENT RESERVE OUT follows its own rules (pr_out.py), and SPC-2 RESERVE and
RELEASE are decided by their handlers.
"""

from __future__ import annotations

from enum import IntEnum

from ophiura.scsi.constants import PrType
from ophiura.scsi.pr_state import PrState, Registration


class Access(IntEnum):
    ALWAYS = 0
    READ = 1
    WRITE = 2
    PR_OUT = 3  # PERSISTENT RESERVE OUT: decided by pr_out.apply
    SPC2 = 4  # RESERVE / RELEASE (6/10): decided by their handlers


# (type, access) -> (allowed from a registered non-holder, allowed from a non-registered nexus)
PR_TABLE: dict[tuple[PrType, Access], tuple[bool, bool]] = {
    (PrType.WRITE_EXCLUSIVE, Access.READ): (True, True),
    (PrType.WRITE_EXCLUSIVE, Access.WRITE): (False, False),
    (PrType.EXCLUSIVE_ACCESS, Access.READ): (False, False),
    (PrType.EXCLUSIVE_ACCESS, Access.WRITE): (False, False),
    (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, Access.READ): (True, True),
    (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, Access.WRITE): (True, False),
    (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, Access.READ): (True, False),
    (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, Access.WRITE): (True, False),
    # All-registrants: every registrant is a holder, so only the second value is ever used.
    (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, Access.READ): (True, True),
    (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, Access.WRITE): (True, False),
    (PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, Access.READ): (True, False),
    (PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, Access.WRITE): (True, False),
}


def pr_allows(state: PrState, reg: Registration | None, access: Access) -> bool:
    """May a command of this access class from this (maybe unregistered) nexus run?"""
    if state.res_type is None or access in (Access.ALWAYS, Access.PR_OUT, Access.SPC2):
        return True
    if state.is_holder(reg):
        return True
    registered_ok, unregistered_ok = PR_TABLE[(state.res_type, access)]
    return registered_ok if reg is not None else unregistered_ok
