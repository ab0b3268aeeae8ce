"""LSB init scripts: `lsb:NAME` runs `/etc/init.d/NAME start|stop|status`.

Exit codes follow the LSB (Core spec, "Init Script Actions"). start and stop use the general
codes, which are the OCF ones (0 success, 1 generic, 2 args, 3 unimplemented, 4 privilege,
5 not installed, 6 not configured, 7 not running), so they map one to one. status has its own:

| status rc | LSB meaning                          | OcfCode       |
|-----------|--------------------------------------|---------------|
| 0         | running                              | SUCCESS       |
| 1         | dead, but a /var/run pid file exists | ERR_GENERIC   |
| 2         | dead, but a /var/lock lock exists    | ERR_GENERIC   |
| 3         | not running                          | NOT_RUNNING   |
| 4         | status unknown                       | ERR_GENERIC   |
| other     | reserved / application specific      | ERR_GENERIC   |

Pacemaker reads 1 and 2 as "not running"; we read them as *failed*: the service died without
being stopped and left its pid/lock behind, which needs a stop (cleanup) before a restart and
counts as a failure. A stop of a stopped service must succeed (LSB says so too); a stop that
answers 7 is read as SUCCESS. Params are exported as OCF_RESKEY_* (harmless to init scripts);
`netns` runs the script in that network namespace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import NETNS
from ophiura.cluster.agents.process_runner import netns_prefix, ocf_code, run_process, to_outcome

INIT_DIR = "/etc/init.d"

STATUS_CODES: dict[int, OcfCode] = {
    0: OcfCode.SUCCESS,
    1: OcfCode.ERR_GENERIC,
    2: OcfCode.ERR_GENERIC,
    3: OcfCode.NOT_RUNNING,
    4: OcfCode.ERR_GENERIC,
}


def lsb_status_code(rc: int) -> OcfCode:
    return STATUS_CODES.get(rc, OcfCode.ERR_GENERIC)


def lsb_action_code(rc: int) -> OcfCode:
    """start/stop: LSB 0-7 are the OCF codes; anything else (LSB 8-199) is generic."""
    return ocf_code(rc) if 0 <= rc <= 7 else OcfCode.ERR_GENERIC


def script_name(kind: str) -> str:
    prefix, _, name = kind.partition(":")
    if prefix != "lsb" or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not an LSB kind (lsb:NAME): {kind!r}")
    return name


def installed_lsb_kinds(init_dir: str = INIT_DIR) -> list[str]:
    base = Path(init_dir)
    if not base.is_dir():
        return []
    return [
        f"lsb:{p.name}"
        for p in sorted(base.iterdir())
        if p.is_file() and os.access(p, os.X_OK) and not p.name.startswith(".")
    ]


class LsbAgent:
    def __init__(self, init_dir: str = INIT_DIR) -> None:
        self.init_dir = Path(init_dir)

    def path(self, kind: str) -> Path:
        return self.init_dir / script_name(kind)

    def _env(self, resource: Resource) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCF_RESKEY_")}
        env.update({f"OCF_RESKEY_{k}": v for k, v in resource.params.items() if k != NETNS})
        return env

    def _script(self, resource: Resource, t0: float) -> Path | Outcome:
        """The resource's init script, or why there is none (ERR_CONFIGURED, ERR_INSTALLED)."""
        try:
            path = self.path(resource.kind)
        except ValueError as exc:
            return Outcome(OcfCode.ERR_CONFIGURED, 0.0, reason=str(exc))
        if not path.is_file():
            return Outcome(
                OcfCode.ERR_INSTALLED, time.monotonic() - t0, reason=f"no init script {path}"
            )
        return path

    async def _run(
        self, resource: Resource, action: str, timeout: float, mapper: Callable[[int], OcfCode]
    ) -> Outcome:
        t0 = time.monotonic()
        path = self._script(resource, t0)
        if isinstance(path, Outcome):
            return path
        argv = [*netns_prefix(resource.params.get(NETNS)), str(path), action]
        result = await run_process(argv, timeout, env=self._env(resource), cwd="/")
        return to_outcome(result, mapper, f"{path} {action}")

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        return await self._run(resource, "start", timeout, lsb_action_code)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        out = await self._run(resource, "stop", timeout, lsb_action_code)
        if out.code == OcfCode.NOT_RUNNING and not out.timed_out:
            return Outcome(OcfCode.SUCCESS, out.elapsed, out.output, reason=out.reason)
        return out

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        return await self._run(resource, "status", timeout, lsb_status_code)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        path = self._script(resource, t0)
        if isinstance(path, Outcome):
            return path
        if not os.access(path, os.X_OK):
            return Outcome(
                OcfCode.ERR_PERM, time.monotonic() - t0, reason=f"{path} is not executable"
            )
        return Outcome(OcfCode.SUCCESS, time.monotonic() - t0)
