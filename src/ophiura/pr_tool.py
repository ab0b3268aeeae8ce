"""`ophiura pr`: what sg_persist does for a kernel device, for any iSCSI LUN.

A registration belongs to an I_T nexus (initiator name + ISID), so the tool derives its ISID
from the initiator name: `register` in one invocation and `reserve` in the next act as the same
nexus, as a kernel initiator's long-lived session would. An operator breaking a dead node's
reservation registers their own key, then PREEMPTs (or PREEMPT AND ABORTs) the dead node's key.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import asdict, dataclass
from typing import Any

from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.initiator import IscsiInitiator, ScsiResult
from ophiura.scsi.api import Status

TYPE_NAMES = {
    "write-exclusive": pr.PrType.WRITE_EXCLUSIVE,
    "exclusive-access": pr.PrType.EXCLUSIVE_ACCESS,
    "write-exclusive-registrants-only": pr.PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
    "exclusive-access-registrants-only": pr.PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
    "write-exclusive-all-registrants": pr.PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
    "exclusive-access-all-registrants": pr.PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
    "we": pr.PrType.WRITE_EXCLUSIVE,
    "ea": pr.PrType.EXCLUSIVE_ACCESS,
    "wero": pr.PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
    "earo": pr.PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
    "wear": pr.PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
    "eaar": pr.PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
}

OUT_ACTIONS = {
    "register": pr.PrOut.REGISTER,
    "register-ignore": pr.PrOut.REGISTER_AND_IGNORE_EXISTING_KEY,
    "reserve": pr.PrOut.RESERVE,
    "release": pr.PrOut.RELEASE,
    "clear": pr.PrOut.CLEAR,
    "preempt": pr.PrOut.PREEMPT,
    "preempt-abort": pr.PrOut.PREEMPT_AND_ABORT,
}
IN_ACTIONS = {
    "read-keys": pr.PrIn.READ_KEYS,
    "read-reservation": pr.PrIn.READ_RESERVATION,
    "read-full-status": pr.PrIn.READ_FULL_STATUS,
    "report-capabilities": pr.PrIn.REPORT_CAPABILITIES,
}
ACTIONS = [*IN_ACTIONS, *OUT_ACTIONS]


class PrToolError(Exception):
    """The target refused the request; the message says how (status, sense)."""


def default_initiator_name() -> str:
    return f"iqn.2026-11.io.ophiura:pr.{socket.gethostname()}"


def stable_isid(initiator_name: str) -> int:
    """A random-format ISID (type 10b) fixed by the name, so separate runs share one nexus."""
    digest = int.from_bytes(hashlib.sha256(initiator_name.encode()).digest()[:5], "big")
    return (0x80 << 40) | (digest & ((1 << 40) - 1))


def type_name(value: int | None) -> str | None:
    if value is None:
        return None
    for name, code in TYPE_NAMES.items():
        if code == value and "-" in name:
            return name
    return f"type-0x{value:x}"


@dataclass
class PrRequest:
    url: str
    action: str
    key: int = 0
    sa_key: int = 0
    pr_type: int = 0
    aptpl: bool = False
    initiator_name: str = ""
    timeout: float = 10.0


def _describe_failure(action: str, result: ScsiResult) -> str:
    if result.status == Status.RESERVATION_CONFLICT:
        return f"{action}: RESERVATION CONFLICT (key not registered, or held by another nexus)"
    if result.status == Status.CHECK_CONDITION:
        asc = result.asc_ascq
        ascs = f"{asc[0]:02x}/{asc[1]:02x}" if asc else "?"
        return f"{action}: CHECK CONDITION, sense key {result.sense_key}, asc/ascq {ascs}"
    return f"{action}: SCSI status 0x{result.status:02x}"


async def run(request: PrRequest) -> dict[str, Any]:
    """Perform one PR action; returns a JSON-able dict. Raises PrToolError on refusal."""
    name = request.initiator_name or default_initiator_name()
    ini, lun = await IscsiInitiator.from_url(
        request.url, name, isid=stable_isid(name), timeout=request.timeout
    )
    try:
        # The first command of a new nexus meets POWER ON unit attention; consume it.
        await ini.test_unit_ready(lun)
        if request.action in IN_ACTIONS:
            parsed = await ini.persistent_reserve_in(IN_ACTIONS[request.action], lun)
            return _in_result(request.action, parsed)
        result = await ini.persistent_reserve_out(
            OUT_ACTIONS[request.action],
            key=request.key,
            sa_key=request.sa_key,
            pr_type=request.pr_type,
            aptpl=request.aptpl,
            lun=lun,
        )
        if not result.ok:
            raise PrToolError(_describe_failure(request.action, result))
        return {"action": request.action, "ok": True, "key": f"0x{request.key:x}"}
    finally:
        await ini.logout()


def _in_result(action: str, parsed: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"action": action, "generation": parsed.generation}
    if isinstance(parsed, pr.Keys):
        out["keys"] = [f"0x{k:x}" for k in parsed.keys]
    elif isinstance(parsed, pr.Reservation):
        out["reservation"] = (
            None
            if parsed.key is None
            else {"key": f"0x{parsed.key:x}", "type": type_name(parsed.type), "scope": parsed.scope}
        )
    elif isinstance(parsed, pr.FullStatus):
        out["registrations"] = [
            {
                "key": f"0x{e.key:x}",
                "holder": e.holder,
                "type": type_name(e.type) if e.holder else None,
                "all_target_ports": e.all_tg_pt,
                "relative_target_port": e.relative_target_port,
                "initiator": e.initiator,
            }
            for e in parsed.entries
        ]
    elif isinstance(parsed, pr.Capabilities):
        out.update(asdict(parsed))
        out.pop("generation", None)
    return out


def render_text(result: dict[str, Any]) -> str:
    """The human form of a result, one fact per line."""
    action = result["action"]
    if "keys" in result:
        keys = result["keys"]
        lines = [f"PR generation 0x{result['generation']:x}, {len(keys)} registered key(s)"]
        lines += [f"  {k}" for k in keys]
        return "\n".join(lines)
    if "reservation" in result:
        res = result["reservation"]
        head = f"PR generation 0x{result['generation']:x}, "
        if res is None:
            return head + "no reservation held"
        return head + f"reservation held by key {res['key']}, type {res['type']}"
    if "registrations" in result:
        lines = [f"PR generation 0x{result['generation']:x}"]
        for reg in result["registrations"]:
            hold = f" HOLDER {reg['type']}" if reg["holder"] else ""
            lines.append(
                f"  key {reg['key']} {reg['initiator']} port {reg['relative_target_port']}{hold}"
            )
        return "\n".join(lines)
    if action == "report-capabilities":
        return "\n".join(f"{k}: {v}" for k, v in result.items() if k != "action")
    return f"{action}: done (key {result['key']})"
