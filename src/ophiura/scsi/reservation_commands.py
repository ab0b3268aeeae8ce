"""RESERVE / RELEASE (SPC-2) and PERSISTENT RESERVE IN / OUT (SPC-4) commands.

PERSISTENT RESERVE OUT runs in three steps under the LU's PR lock: decide (pr_out.apply on the
current state), make durable (APTPL: the state file is replaced and fsynced before we answer),
commit (swap the state in, establish unit attentions, abort preempted commands). The three run
shielded from cancellation, so an aborted PR OUT either happened completely or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ophiura.scsi import pr_out, pr_state
from ophiura.scsi.api import Command, Response
from ophiura.scsi.constants import Asc, Op, SenseKey
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.pr_in import pr_in
from ophiura.scsi.sense import (
    CheckCondition,
    ReservationConflict,
    invalid_cdb,
    param_list_length_error,
)

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget

log = logging.getLogger(__name__)


def _check_spc2_cdb(cdb: bytes) -> None:
    """Third-party reservations (3RDPTY, LONGID) and extents are not supported."""
    flags = cdb[1]
    if cdb[0] in (Op.RESERVE_6, Op.RELEASE_6):
        if flags & 0x10:
            raise invalid_cdb(1, 4)
        if flags & 0x0F:
            raise invalid_cdb(1, 3 if flags & 0x0E else 0)
        return
    if flags & 0x10:
        raise invalid_cdb(1, 4)
    if flags & 0x02:
        raise invalid_cdb(1, 1)
    if flags & 0x01:
        raise invalid_cdb(1, 0)


async def reserve(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    _check_spc2_cdb(cmd.cdb)
    if lu.pr.registrations or lu.pr.res_type is not None:
        # SPC-4 5.12.3 with CRH=0: RESERVE conflicts while persistent reservations are in use.
        raise ReservationConflict()
    me = lu.nexus_ident(cmd.nexus)
    if lu.spc2_holder is not None and lu.spc2_holder != me:
        raise ReservationConflict()
    lu.spc2_holder = me
    return Response()


async def release(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    _check_spc2_cdb(cmd.cdb)
    if lu.pr.registrations or lu.pr.res_type is not None:
        raise ReservationConflict()
    # Only the holder's RELEASE releases; anyone else's is a no-op with GOOD (SPC-2 7.17).
    if lu.spc2_holder == lu.nexus_ident(cmd.nexus):
        lu.spc2_holder = None
    return Response()


async def persistent_reserve_in(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    alloc = (c[7] << 8) | c[8]
    data = pr_in(lu.pr, c[1] & 0x1F, lu.ptpl_capable)
    return Response(data_in=data[:alloc])


async def persistent_reserve_out(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    length = int.from_bytes(c[5:9])
    params = bytes(cmd.data_out[:length])
    if len(params) < length:
        raise param_list_length_error()
    request = pr_out.PrOutRequest(c[1] & 0x1F, c[2] >> 4, c[2] & 0x0F, params)
    work = asyncio.ensure_future(_decide_persist_commit(t, lu, cmd, request))
    # If this command is aborted meanwhile, the work still completes; nobody awaits its result.
    work.add_done_callback(lambda f: f.cancelled() or f.exception())
    await asyncio.shield(work)
    return Response(data_out_length=length)


async def _decide_persist_commit(
    t: ScsiTarget, lu: LogicalUnit, cmd: Command, request: pr_out.PrOutRequest
) -> None:
    async with lu.pr_lock:
        old = lu.pr
        new, effects = pr_out.apply(
            old,
            cmd.nexus,
            request,
            ptpl_capable=lu.ptpl_capable,
            known_ports=t.known_ports(),
        )
        if not effects.changed:
            return
        if lu.pr_store is not None:
            try:
                await lu.pr_store(new)
            except Exception as exc:  # the old state stays; the initiator may retry
                log.error("LUN %d: cannot replicate reservations: %s", lu.lun, exc)
                raise CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE) from exc
        elif lu.pr_path is not None and (new.aptpl or old.aptpl):
            try:
                await asyncio.to_thread(pr_state.save, lu.pr_path, new)
            except OSError as exc:
                log.error("LUN %d: cannot persist reservations to %s: %s", lu.lun, lu.pr_path, exc)
                raise CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE) from exc
        lu.pr = new
        await t.apply_pr_effects(lu, cmd.nexus, effects)
