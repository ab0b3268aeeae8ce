"""ScsiTarget: the SCSI device server behind one target name (api.DeviceServer).

execute() is the hot path: find the LU, deliver a pending unit attention, look the opcode up in
a dict, check reservations (O(1) when none exist), track the task for task management, run the
handler. Handlers raise typed conditions; only here do they become status and sense bytes, so no
exception from a handler or a backend ever reaches the transport (except TaskAborted).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import ophiura
from ophiura.block.device import BlockDevice
from ophiura.scsi import atomic, mode_commands, provisioning, reservation_commands, sbc, spc
from ophiura.scsi import sbc_control as ctl
from ophiura.scsi.api import Command, Nexus, Response, Status, TaskAborted, TmfFunction, TmfResult
from ophiura.scsi.conflicts import Access, pr_allows
from ophiura.scsi.constants import Asc, Op, SenseKey
from ophiura.scsi.identity import normalize_port
from ophiura.scsi.inquiry import TargetInfo
from ophiura.scsi.inquiry import inquiry as inquiry_data
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.opcodes import CDB_LENGTH, SPC2_ALLOWED, access_class
from ophiura.scsi.pr_out import PrEffects
from ophiura.scsi.pr_state import PrState
from ophiura.scsi.sense import (
    CheckCondition,
    ReservationConflict,
    encode_sense,
    invalid_cdb,
    invalid_opcode,
    unit_attention,
)
from ophiura.scsi.taskset import TaskRecord, wait_ended

log = logging.getLogger(__name__)

Handler = Callable[["ScsiTarget", LogicalUnit, Command], Awaitable[Response]]


# Unit attention codes for resets. SAM-5 lets every reset be reported with 29/00 too; libiscsi's
# RESERVE(6) helpers retry on any unit attention, so the specific codes are safe to use.
UA_NEW_NEXUS = Asc.POWER_ON_RESET
UA_LU_RESET = Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED
UA_WARM_RESET = Asc.SCSI_BUS_RESET_OCCURRED
UA_COLD_RESET = Asc.POWER_ON_OCCURRED

# Commands that neither report nor clear a unit attention (SPC-4 5.14; REQUEST SENSE reports it
# as its data instead).
_NO_UA = frozenset((Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE))
_LOST_MEMORY = 1024  # nexuses remembered as lost, for I_T NEXUS LOSS OCCURRED on return


@dataclass(frozen=True, slots=True)
class OpSpec:
    handler: Handler
    access: Access | Callable[[bytes], Access]
    cdb_length: int
    spc2_allowed: bool
    thin_only: bool
    persistent: bool  # PERSISTENT RESERVE IN/OUT


_HANDLERS: dict[int, Handler] = {
    Op.TEST_UNIT_READY: spc.test_unit_ready,
    Op.REQUEST_SENSE: spc.request_sense,
    Op.INQUIRY: spc.inquiry,
    Op.REPORT_LUNS: spc.report_luns,
    Op.SERVICE_ACTION_IN_16: spc.service_action_in,
    Op.MAINTENANCE_IN: spc.maintenance_in,
    Op.MODE_SENSE_6: mode_commands.mode_sense,
    Op.MODE_SENSE_10: mode_commands.mode_sense,
    Op.MODE_SELECT_6: mode_commands.mode_select,
    Op.MODE_SELECT_10: mode_commands.mode_select,
    Op.RESERVE_6: reservation_commands.reserve,
    Op.RESERVE_10: reservation_commands.reserve,
    Op.RELEASE_6: reservation_commands.release,
    Op.RELEASE_10: reservation_commands.release,
    Op.PERSISTENT_RESERVE_IN: reservation_commands.persistent_reserve_in,
    Op.PERSISTENT_RESERVE_OUT: reservation_commands.persistent_reserve_out,
    Op.READ_6: sbc.read6,
    Op.READ_10: sbc.read10,
    Op.READ_12: sbc.read12,
    Op.READ_16: sbc.read16,
    Op.WRITE_6: sbc.write6,
    Op.WRITE_10: sbc.write10,
    Op.WRITE_12: sbc.write12,
    Op.WRITE_16: sbc.write16,
    Op.WRITE_VERIFY_10: sbc.write_verify10,
    Op.WRITE_VERIFY_12: sbc.write_verify12,
    Op.WRITE_VERIFY_16: sbc.write_verify16,
    Op.VERIFY_10: sbc.verify10,
    Op.VERIFY_12: sbc.verify12,
    Op.VERIFY_16: sbc.verify16,
    Op.PRE_FETCH_10: sbc.prefetch10,
    Op.PRE_FETCH_16: sbc.prefetch16,
    Op.SYNCHRONIZE_CACHE_10: sbc.sync_cache10,
    Op.SYNCHRONIZE_CACHE_16: sbc.sync_cache16,
    Op.COMPARE_AND_WRITE: atomic.compare_and_write,
    Op.ORWRITE_16: atomic.orwrite16,
    Op.WRITE_ATOMIC_16: atomic.write_atomic16,
    Op.WRITE_SAME_10: provisioning.write_same10,
    Op.WRITE_SAME_16: provisioning.write_same16,
    Op.UNMAP: provisioning.unmap,
    Op.READ_CAPACITY_10: ctl.read_capacity10,
    Op.START_STOP_UNIT: ctl.start_stop_unit,
    Op.PREVENT_ALLOW: ctl.prevent_allow,
    Op.READ_DEFECT_DATA_10: ctl.read_defect_data10,
    Op.READ_DEFECT_DATA_12: ctl.read_defect_data12,
}

DISPATCH: dict[int, OpSpec] = {
    op: OpSpec(
        handler=handler,
        access=access_class(op),
        cdb_length=CDB_LENGTH[op],
        spc2_allowed=op in SPC2_ALLOWED,
        thin_only=op == Op.UNMAP,
        persistent=op in (Op.PERSISTENT_RESERVE_IN, Op.PERSISTENT_RESERVE_OUT),
    )
    for op, handler in _HANDLERS.items()
}


class ScsiTarget:
    """All logical units behind one target name, shared by every I_T nexus."""

    def __init__(
        self,
        target_name: str,
        luns: Mapping[int, BlockDevice],
        state_dir: Path | None = None,
        vendor: str = "OPHIURA",
        product: str = "ophiura disk",
        report_physical_block: bool = False,
    ) -> None:
        """`report_physical_block` advertises each device's physical block (LBPPBE: 3 for
        512-byte blocks on a 4 KiB filesystem). Off by default because libiscsi 1.19.0's
        GetLBAStatus.UnmapSingle asks for LBA i+1 and then requires the answer to start at
        i+LBPPB, which no correct target (nor QEMU, which checks the opposite) can give; on, the
        five "LBPPB >= 2" tests run instead of skipping (docs/conformance.md)."""
        if not luns:
            raise ValueError("a SCSI target needs at least one logical unit")
        if state_dir is not None:
            state_dir = Path(state_dir)
            state_dir.mkdir(parents=True, exist_ok=True)
        revision = ophiura.__version__.replace(".", "")[:4]
        self.info = TargetInfo(target_name, vendor, product, revision)
        self.state_dir = state_dir
        self._lus: dict[int, LogicalUnit] = {
            lun: LogicalUnit(lun, dev, target_name, state_dir, report_physical_block)
            for lun, dev in luns.items()
        }
        self._nexuses: set[Nexus] = set()
        self._lost: OrderedDict[Nexus, None] = OrderedDict()
        self._ports: dict[int, str] = {}

    # -- DeviceServer --------------------------------------------------------------------------

    def luns(self) -> list[int]:
        return sorted(self._lus)

    def logical_unit(self, lun: int) -> LogicalUnit:
        return self._lus[lun]

    def nexuses(self) -> set[Nexus]:
        return self._nexuses

    def known_ports(self) -> dict[int, str]:
        """Relative target port identifier -> target port name, as seen on I_T nexuses."""
        return self._ports

    def _see(self, nexus: Nexus) -> None:
        self._nexuses.add(nexus)
        self._ports[nexus.relative_target_port_id] = normalize_port(nexus.target_port)

    def nexus_added(self, nexus: Nexus) -> None:
        """A new I_T nexus: every LU reports a reset (29/00, or 29/07 if it was lost) first."""
        self._see(nexus)
        was_lost = nexus in self._lost
        self._lost.pop(nexus, None)
        condition = Asc.I_T_NEXUS_LOSS_OCCURRED if was_lost else UA_NEW_NEXUS
        for lu in self._lus.values():
            lu.ua.clear(nexus)
            lu.ua.establish(nexus, condition)

    def nexus_lost(self, nexus: Nexus) -> None:
        """I_T nexus loss: its commands are aborted and its SPC-2 reservation released."""
        self._nexuses.discard(nexus)
        self._lost[nexus] = None
        while len(self._lost) > _LOST_MEMORY:
            self._lost.popitem(last=False)
        ident = LogicalUnit.nexus_ident(nexus)
        for lu in self._lus.values():
            lu.tasks.abort(lu.tasks.select(nexus), by=None, tas=False)
            if lu.spc2_holder == ident:
                lu.spc2_holder = None
            lu.ua.clear(nexus)

    def capacity_changed(self, lun: int) -> None:
        """Call after the device behind `lun` grew: 2A/09 CAPACITY DATA HAS CHANGED to all."""
        lu = self._lus[lun]
        if lu.refresh_capacity():
            lu.ua.establish_all(self._nexuses, Asc.CAPACITY_DATA_HAS_CHANGED)

    async def execute(self, command: Command) -> Response:
        nexus = command.nexus
        if nexus not in self._nexuses:
            self._see(nexus)  # a transport that skipped nexus_added: no UA invented for it
        cdb = command.cdb
        lu = self._lus.get(command.lun)
        if lu is None:
            return self._no_such_lun(command)
        if not cdb:
            return _check(lu, invalid_opcode())
        op = cdb[0]
        if lu.ua.pending and op not in _NO_UA:
            condition = lu.ua.take(nexus)
            if condition is not None:
                return _check(lu, unit_attention(condition))
        spec = DISPATCH.get(op)
        if spec is None or (spec.thin_only and not lu.thin):
            return _check(lu, invalid_opcode())
        if len(cdb) < spec.cdb_length:
            return _check(lu, invalid_cdb(len(cdb)))
        if cdb[spec.cdb_length - 1] & 0x04:  # NACA: NormACA is not supported
            return _check(lu, invalid_cdb(spec.cdb_length - 1, 2))
        if lu.spc2_holder is not None and _spc2_conflict(lu, spec, nexus):
            return Response(status=Status.RESERVATION_CONFLICT)
        pr = lu.pr
        if pr.res_type is not None:
            access = spec.access if isinstance(spec.access, Access) else spec.access(cdb)
            if not pr_allows(pr, pr.lookup(nexus), access):
                return Response(status=Status.RESERVATION_CONFLICT)
        return await self._run(lu, spec.handler, command)

    async def _run(self, lu: LogicalUnit, handler: Handler, command: Command) -> Response:
        """Run a handler as a tracked task of the LU's task set."""
        key = (command.nexus, command.tag)
        running = lu.tasks.running
        task = asyncio.current_task()
        record = TaskRecord(task, command.nexus, command.tag)
        if running.setdefault(key, record) is not record:
            overlapped = CheckCondition(SenseKey.ABORTED_COMMAND, Asc.OVERLAPPED_COMMANDS_ATTEMPTED)
            return _check(lu, overlapped)
        try:
            return await handler(self, lu, command)
        except CheckCondition as exc:
            return _check(lu, exc)
        except ReservationConflict:
            return Response(status=Status.RESERVATION_CONFLICT)
        except asyncio.CancelledError:
            if not record.aborted:
                raise
            if task is not None:
                task.uncancel()
            if record.report_aborted:
                return Response(status=Status.TASK_ABORTED)
            raise TaskAborted() from None
        except Exception:
            log.exception(
                "LUN %d: internal error on CDB %s from %s",
                lu.lun,
                bytes(command.cdb).hex(),
                command.nexus.initiator_port,
            )
            return _check(lu, CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE))
        finally:
            running.pop(key, None)  # only this command can have registered this key
            record.finish()

    def _no_such_lun(self, command: Command) -> Response:
        """SPC-4: INQUIRY answers with qualifier 011b, REPORT LUNS works, the rest get 25/00."""
        cdb = command.cdb
        op = cdb[0] if cdb else -1
        try:
            if op == Op.INQUIRY:
                return Response(data_in=inquiry_data(None, self.info, command.nexus, cdb))
            if op == Op.REPORT_LUNS:
                return Response(data_in=spc.report_luns_data(self.luns(), cdb))
            if op == Op.REQUEST_SENSE:
                sense = encode_sense(SenseKey.ILLEGAL_REQUEST, *Asc.LOGICAL_UNIT_NOT_SUPPORTED)
                return Response(data_in=sense[: cdb[4]])
        except CheckCondition as exc:
            return Response(status=Status.CHECK_CONDITION, sense=exc.encode(False))
        return Response(status=Status.CHECK_CONDITION, sense=spc.no_such_lun().encode(False))

    # -- persistent reservation effects (called by reservation_commands) ----------------------

    async def apply_pr_effects(self, lu: LogicalUnit, issuer: Nexus, effects: PrEffects) -> None:
        for reg, condition in effects.unit_attentions:
            for nexus in self._nexuses:
                if nexus != issuer and reg.covers(nexus):
                    lu.ua.establish(nexus, condition)
        if effects.abort:
            victims = [
                r
                for r in lu.tasks.select()
                if r.nexus != issuer and any(v.covers(r.nexus) for v in effects.abort)
            ]
            await wait_ended(lu.tasks.abort(victims, by=issuer, tas=lu.modes.tas))

    # -- task management ----------------------------------------------------------------------

    async def task_management(
        self, nexus: Nexus, function: TmfFunction, lun: int, referenced_tag: int | None
    ) -> TmfResult:
        if function in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
            cold = function == TmfFunction.TARGET_COLD_RESET
            condition = UA_COLD_RESET if cold else UA_WARM_RESET
            aborted: list[TaskRecord] = []
            for unit in self._lus.values():
                aborted += self._reset_lu(unit, nexus, condition, power_on=cold)
            await wait_ended(aborted)
            return TmfResult.COMPLETE
        if function == TmfFunction.CLEAR_ACA:
            return TmfResult.NOT_SUPPORTED  # NormACA is not supported, so there is never an ACA
        if function == TmfFunction.TASK_REASSIGN:
            return TmfResult.REASSIGNMENT_NOT_SUPPORTED
        lu = self._lus.get(lun)
        if lu is None:
            return TmfResult.LUN_DOES_NOT_EXIST
        tasks = lu.tasks
        if function == TmfFunction.ABORT_TASK:
            record = None if referenced_tag is None else tasks.find(nexus, referenced_tag)
            if record is None:
                return TmfResult.TASK_DOES_NOT_EXIST
            await wait_ended(tasks.abort([record], by=nexus, tas=lu.modes.tas))
            return TmfResult.COMPLETE
        if function == TmfFunction.ABORT_TASK_SET:
            await wait_ended(tasks.abort(tasks.select(nexus), by=nexus, tas=lu.modes.tas))
            return TmfResult.COMPLETE
        if function == TmfFunction.CLEAR_TASK_SET:
            aborted = tasks.abort(tasks.select(), by=nexus, tas=lu.modes.tas)
            if not lu.modes.tas:
                others = {r.nexus for r in aborted if r.nexus != nexus}
                lu.ua.establish_all(others, Asc.COMMANDS_CLEARED_BY_ANOTHER_INITIATOR)
            await wait_ended(aborted)
            return TmfResult.COMPLETE
        if function == TmfFunction.LOGICAL_UNIT_RESET:
            await wait_ended(self._reset_lu(lu, nexus, UA_LU_RESET, power_on=False))
            return TmfResult.COMPLETE
        return TmfResult.NOT_SUPPORTED

    def _reset_lu(
        self, lu: LogicalUnit, by: Nexus, condition: tuple[int, int], power_on: bool
    ) -> list[TaskRecord]:
        """SAM-5 logical unit reset: abort every task, drop the SPC-2 reservation, mode pages back
        to saved values, and a unit attention for every I_T nexus (the issuer's too: libiscsi's
        MultipathIO.Reset expects one on every path)."""
        aborted = lu.tasks.abort(lu.tasks.select(), by=by, tas=lu.modes.tas)
        lu.spc2_holder = None
        lu.modes.reset_to_saved()
        if power_on:
            # A cold reset is a power cycle: only APTPL reservations survive it (SPC-4 5.12.4).
            if not lu.pr.aptpl:
                lu.pr = PrState()
            lu.stopped = False
        lu.ua.establish_all(self._nexuses, condition)
        return aborted


def _spc2_conflict(lu: LogicalUnit, spec: OpSpec, nexus: Nexus) -> bool:
    """SPC-2 5.5.1 plus SPC-3 5.5.1: while an SPC-2 reservation exists, PERSISTENT RESERVE IN
    and OUT conflict "regardless of initiator"; other commands only from other nexuses."""
    if spec.spc2_allowed:
        return False
    return spec.persistent or lu.spc2_holder != lu.nexus_ident(nexus)


def _check(lu: LogicalUnit, exc: CheckCondition) -> Response:
    return Response(status=Status.CHECK_CONDITION, sense=exc.encode(lu.modes.d_sense))
