"""The RESERVATION CONFLICT tables, table-driven: every persistent reservation type against
every command class, from the holder, a registered non-holder and a non-registered nexus
(SPC-4 5.12.3 table "SPC commands that are allowed in the presence of various reservations",
SBC-3 table "SBC commands that are allowed ..."); and the SPC-2 RESERVE column."""

from __future__ import annotations

import pytest

from ophiura.scsi.api import Status
from ophiura.scsi.constants import PrIn, PrOut, PrType
from ophiura.scsi.modepages import _DEFAULTS, CONTROL

from . import cdbs
from .conftest import BS, MakeTarget, login

A, C = True, False  # allowed, conflict

# Columns: WE, EA, WE-RO, EA-RO, WE-AR, EA-AR for (registered non-holder, not registered).
# In the all-registrants types every registrant is a holder, hence always allowed.
READ_ROW = {
    PrType.WRITE_EXCLUSIVE: (A, A),
    PrType.EXCLUSIVE_ACCESS: (C, C),
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: (A, A),
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: (A, C),
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: (A, A),
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: (A, C),
}
WRITE_ROW = {
    PrType.WRITE_EXCLUSIVE: (C, C),
    PrType.EXCLUSIVE_ACCESS: (C, C),
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: (A, C),
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: (A, C),
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: (A, C),
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: (A, C),
}
ALWAYS_ROW = {t: (A, A) for t in PrType}

_SELECT = bytes(4) + _DEFAULTS[CONTROL]

# (name, CDB, Data-Out, row)
COMMANDS = [
    ("READ(10)", cdbs.read(10, 0, 1), b"", READ_ROW),
    ("READ(16)", cdbs.read(16, 0, 1), b"", READ_ROW),
    ("VERIFY(10)", cdbs.verify(10, 0, 1), bytes(BS), READ_ROW),
    ("PRE-FETCH(10)", cdbs.prefetch(10, 0, 1), b"", READ_ROW),
    ("GET LBA STATUS", cdbs.get_lba_status(0), b"", READ_ROW),
    ("MODE SENSE(6)", cdbs.mode_sense6(), b"", READ_ROW),
    ("MODE SENSE(10)", cdbs.mode_sense10(), b"", READ_ROW),
    ("REPORT SUPPORTED OPCODES", cdbs.report_opcodes(), b"", READ_ROW),
    ("READ DEFECT DATA(10)", cdbs.read_defect_data10(), b"", READ_ROW),
    ("WRITE(10)", cdbs.write(10, 0, 1), bytes(BS), WRITE_ROW),
    ("WRITE(16)", cdbs.write(16, 0, 1), bytes(BS), WRITE_ROW),
    ("WRITE AND VERIFY(10)", cdbs.write_verify(10, 0, 1), bytes(BS), WRITE_ROW),
    ("WRITE SAME(16)", cdbs.write_same(16, 0, 2), bytes(BS), WRITE_ROW),
    ("COMPARE AND WRITE", cdbs.compare_and_write(0, 1), bytes(2 * BS), WRITE_ROW),
    ("ORWRITE", cdbs.orwrite(0, 1), bytes(BS), WRITE_ROW),
    ("SYNCHRONIZE CACHE(10)", cdbs.sync_cache(10), b"", WRITE_ROW),
    ("MODE SELECT(6)", cdbs.mode_select6(len(_SELECT)), _SELECT, WRITE_ROW),
    ("PREVENT ALLOW (PREVENT=1)", cdbs.prevent_allow(1), b"", WRITE_ROW),
    ("START STOP UNIT (stop)", cdbs.start_stop(False), b"", WRITE_ROW),
    ("TEST UNIT READY", cdbs.tur(), b"", ALWAYS_ROW),
    ("INQUIRY", cdbs.inquiry(), b"", ALWAYS_ROW),
    ("REPORT LUNS", cdbs.report_luns(), b"", ALWAYS_ROW),
    ("REQUEST SENSE", cdbs.request_sense(), b"", ALWAYS_ROW),
    ("READ CAPACITY(10)", cdbs.read_capacity10(), b"", ALWAYS_ROW),
    ("READ CAPACITY(16)", cdbs.read_capacity16(), b"", ALWAYS_ROW),
    ("PERSISTENT RESERVE IN", cdbs.pr_in(PrIn.READ_KEYS), b"", ALWAYS_ROW),
    ("PREVENT ALLOW (PREVENT=0)", cdbs.prevent_allow(0), b"", ALWAYS_ROW),
    ("START STOP UNIT (start)", cdbs.start_stop(True), b"", ALWAYS_ROW),
]


@pytest.mark.parametrize("pr_type", list(PrType), ids=lambda t: t.name)
@pytest.mark.parametrize("role", ["holder", "registrant", "stranger"])
@pytest.mark.parametrize(("name", "cdb", "data", "row"), COMMANDS, ids=[c[0] for c in COMMANDS])
async def test_pr_conflict_table(
    make_target: MakeTarget,
    pr_type: PrType,
    role: str,
    name: str,
    cdb: bytes,
    data: bytes,
    row: dict[PrType, tuple[bool, bool]],
) -> None:
    target = make_target()
    holder = await login(target, "holder")
    registrant = await login(target, "registrant")
    stranger = await login(target, "stranger")
    await holder.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 1))
    await registrant.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 2))
    await holder.good(cdbs.pr_out(PrOut.RESERVE, pr_type), cdbs.pr_params(1))
    ini = {"holder": holder, "registrant": registrant, "stranger": stranger}[role]
    allowed = role == "holder" or row[pr_type][0 if role == "registrant" else 1]
    status = await ini.status(cdb, data)
    if allowed:
        assert status != Status.RESERVATION_CONFLICT, f"{name} should be allowed"
        assert status in (Status.GOOD, Status.CONDITION_MET), status
    else:
        assert status == Status.RESERVATION_CONFLICT, f"{name} should conflict"


@pytest.mark.parametrize("pr_type", list(PrType), ids=lambda t: t.name)
async def test_pr_out_rules_for_non_holders(make_target: MakeTarget, pr_type: PrType) -> None:
    """PERSISTENT RESERVE OUT follows its own table: registering is always allowed, RESERVE
    conflicts, and an unregistered nexus may do nothing but register."""
    target = make_target()
    holder, reg, stranger = [await login(target, n) for n in ("h", "r", "s")]
    await holder.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 1))
    await reg.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 2))
    await holder.good(cdbs.pr_out(PrOut.RESERVE, pr_type), cdbs.pr_params(1))
    other = (
        PrType.EXCLUSIVE_ACCESS if pr_type != PrType.EXCLUSIVE_ACCESS else PrType.WRITE_EXCLUSIVE
    )
    if not pr_type.all_registrants:
        assert await reg.status(cdbs.pr_out(PrOut.RESERVE, pr_type), cdbs.pr_params(2)) == (
            Status.RESERVATION_CONFLICT
        )
    assert await reg.status(cdbs.pr_out(PrOut.RESERVE, other), cdbs.pr_params(2)) == (
        Status.RESERVATION_CONFLICT
    )
    for sa in (PrOut.RESERVE, PrOut.RELEASE, PrOut.CLEAR, PrOut.PREEMPT):
        rsp = await stranger.status(cdbs.pr_out(sa, pr_type), cdbs.pr_params(0, 1))
        assert rsp == Status.RESERVATION_CONFLICT
    await stranger.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 3))


SPC2_ALLOWED = {"INQUIRY", "REPORT LUNS", "REQUEST SENSE"}


@pytest.mark.parametrize(("name", "cdb", "data", "row"), COMMANDS, ids=[c[0] for c in COMMANDS])
async def test_spc2_reservation_table(
    make_target: MakeTarget, name: str, cdb: bytes, data: bytes, row: object
) -> None:
    target = make_target()
    holder, other = await login(target, "holder"), await login(target, "other")
    await holder.good(cdbs.reserve(6))
    status = await other.status(cdb, data)
    if name in SPC2_ALLOWED:
        assert status == Status.GOOD
    else:
        assert status == Status.RESERVATION_CONFLICT
    if name == "PERSISTENT RESERVE IN":  # SPC-3 5.5.1: regardless of initiator
        assert await holder.status(cdb, data) == Status.RESERVATION_CONFLICT
    else:
        assert (await holder.status(cdb, data)) in (Status.GOOD, Status.CONDITION_MET)


async def test_no_reservation_no_conflict(make_target: MakeTarget) -> None:
    target = make_target()
    ini = await login(target, "x")
    await ini.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 1))
    stranger = await login(target, "y")
    for name, cdb, data, _ in COMMANDS:
        assert await stranger.status(cdb, data) != Status.RESERVATION_CONFLICT, name
