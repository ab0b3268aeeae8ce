"""systemd units: `systemd:UNIT` (".service" is added when UNIT has no type suffix).

    start    systemctl start UNIT      waits for the start job; then is-active must say active
    stop     systemctl stop UNIT       then reset-failed, so a unit that had failed reads as
                                       stopped (monitor: NOT_RUNNING), not failed, after a stop
    monitor  systemctl is-active UNIT  active/reloading -> SUCCESS, inactive -> NOT_RUNNING,
                                       failed, activating (a Restart= loop), deactivating (a
                                       stop we did not ask for) -> ERR_GENERIC
    validate systemctl show -p LoadState UNIT: loaded -> SUCCESS, not-found -> ERR_INSTALLED,
                                       masked -> ERR_CONFIGURED, anything else -> ERR_GENERIC

A unit that does not exist is stopped: stop succeeds (systemctl's rc 5, "not loaded").
systemd must be PID 1 (`/run/systemd/system` exists, as sd_booted() checks); otherwise every
action answers ERR_INSTALLED saying so, rather than systemctl's own message.
"""

from __future__ import annotations

import os
import time

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.process_runner import run_process, to_outcome

SYSTEMD_RUN_DIR = "/run/systemd/system"
_UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".target",
    ".mount",
    ".timer",
    ".path",
    ".swap",
    ".slice",
    ".scope",
    ".device",
    ".automount",
)

ACTIVE_STATES: dict[str, OcfCode] = {
    "active": OcfCode.SUCCESS,
    "reloading": OcfCode.SUCCESS,
    "inactive": OcfCode.NOT_RUNNING,
    "failed": OcfCode.ERR_GENERIC,
    "activating": OcfCode.ERR_GENERIC,
    "deactivating": OcfCode.ERR_GENERIC,
}
LOAD_STATES: dict[str, OcfCode] = {
    "loaded": OcfCode.SUCCESS,
    "not-found": OcfCode.ERR_INSTALLED,
    "masked": OcfCode.ERR_CONFIGURED,
}
_NOT_LOADED = 5  # systemctl: "Unit ... not loaded."


def unit_name(kind: str) -> str:
    prefix, _, unit = kind.partition(":")
    if prefix != "systemd" or not unit or "/" in unit:
        raise ValueError(f"not a systemd kind (systemd:UNIT): {kind!r}")
    return unit if unit.endswith(_UNIT_SUFFIXES) else unit + ".service"


def systemd_booted(run_dir: str = SYSTEMD_RUN_DIR) -> bool:
    return os.path.isdir(run_dir)


class SystemdAgent:
    def __init__(self, systemctl: str = "systemctl", run_dir: str = SYSTEMD_RUN_DIR) -> None:
        self.systemctl = systemctl
        self.run_dir = run_dir

    def _precheck(self, resource: Resource) -> Outcome | str:
        try:
            unit = unit_name(resource.kind)
        except ValueError as exc:
            return Outcome(OcfCode.ERR_CONFIGURED, 0.0, reason=str(exc))
        if not systemd_booted(self.run_dir):
            return Outcome(
                OcfCode.ERR_INSTALLED,
                0.0,
                reason=f"{unit}: systemd is not running as PID 1 here ({self.run_dir} missing)",
            )
        return unit

    async def _state(self, unit: str, timeout: float) -> tuple[str, Outcome]:
        res = await run_process([self.systemctl, "is-active", unit], timeout)
        out = to_outcome(res, lambda rc: OcfCode.SUCCESS, f"systemctl is-active {unit}")
        state = res.output.strip().splitlines()[-1] if res.output.strip() else ""
        return state, out

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        unit = self._precheck(resource)
        if isinstance(unit, Outcome):
            return unit
        res = await run_process([self.systemctl, "start", unit], timeout)
        out = to_outcome(res, lambda rc: OcfCode.SUCCESS if rc == 0 else OcfCode.ERR_GENERIC)
        if not out.ok:
            return Outcome(
                out.code, time.monotonic() - t0, out.output, out.timed_out, f"{unit}: {out.reason}"
            )
        return await self._monitor(unit, t0, timeout, "start")

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        unit = self._precheck(resource)
        if isinstance(unit, Outcome):
            return unit
        res = await run_process([self.systemctl, "stop", unit], timeout)
        ok = {0, _NOT_LOADED}
        out = to_outcome(res, lambda rc: OcfCode.SUCCESS if rc in ok else OcfCode.ERR_GENERIC)
        if not out.ok:
            return Outcome(
                out.code, time.monotonic() - t0, out.output, out.timed_out, f"{unit}: {out.reason}"
            )
        left = max(0.5, timeout - (time.monotonic() - t0))
        await run_process([self.systemctl, "reset-failed", unit], left)  # best effort
        return Outcome(OcfCode.SUCCESS, time.monotonic() - t0, out.output)

    async def _monitor(self, unit: str, t0: float, timeout: float, what: str) -> Outcome:
        left = max(0.5, timeout - (time.monotonic() - t0))
        state, out = await self._state(unit, left)
        if out.timed_out or (out.code != OcfCode.SUCCESS):
            return Outcome(out.code, time.monotonic() - t0, out.output, out.timed_out, out.reason)
        code = ACTIVE_STATES.get(state, OcfCode.ERR_GENERIC)
        if what == "start" and code != OcfCode.SUCCESS:
            code = OcfCode.ERR_GENERIC
        reason = "" if code == OcfCode.SUCCESS else f"{unit} is {state or 'unknown'}"
        return Outcome(code, time.monotonic() - t0, out.output, reason=reason)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        unit = self._precheck(resource)
        if isinstance(unit, Outcome):
            return unit
        return await self._monitor(unit, t0, timeout, "monitor")

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        unit = self._precheck(resource)
        if isinstance(unit, Outcome):
            return unit
        res = await run_process(
            [self.systemctl, "show", "-p", "LoadState", "--value", unit], timeout
        )
        out = to_outcome(res, lambda rc: OcfCode.SUCCESS if rc == 0 else OcfCode.ERR_GENERIC)
        if not out.ok:
            return out
        state = res.output.strip()
        code = LOAD_STATES.get(state, OcfCode.ERR_GENERIC)
        reason = "" if code == OcfCode.SUCCESS else f"{unit}: LoadState={state or 'unknown'}"
        return Outcome(code, time.monotonic() - t0, res.output, reason=reason)
