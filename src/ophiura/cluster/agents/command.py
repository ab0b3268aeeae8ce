"""Plain commands: `command` with `start`, `stop` and `monitor` command lines as params.

HATS's "agents that start, stop and test any application" without writing an agent:

    [resource.web]
    kind = "command"
    params = { start = "systemd-run --unit web python3 -m http.server 8080",
               stop = "systemctl stop web", monitor = "curl -fsS http://127.0.0.1:8080/" }

Each line runs with `/bin/sh -c` (so pipes and `&&` work) in its own process group, bounded by
the action's timeout; params are also exported as OCF_RESKEY_<name>, and OPHIURA_RESOURCE is
the resource name. `codes` says how exit statuses read:

- `ocf` (default): as OCF codes (0 ok, 7 not running, 1-6/8/9/190/191 as OCF, others generic);
- `lsb`: start/stop as LSB general codes, monitor as LSB status (3 = not running);
- `plain`: 0 is success, anything else a failure (a monitor cannot say "cleanly stopped").

A start line that leaves a daemon behind should redirect its output (`>log 2>&1 &`): we stop
reading once the start line exits, and discard the rest.
Optional: `validate` (a command line run by validate), `cwd`, `netns`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.lsb import lsb_action_code, lsb_status_code
from ophiura.cluster.agents.params import NETNS, ParamError, Params, config_error
from ophiura.cluster.agents.process_runner import netns_prefix, ocf_code, run_process, to_outcome

CODES = ("ocf", "lsb", "plain")


def _plain(rc: int) -> OcfCode:
    return OcfCode.SUCCESS if rc == 0 else OcfCode.ERR_GENERIC


def mapper_for(codes: str, action: str) -> Callable[[int], OcfCode]:
    if codes == "plain":
        return _plain
    if codes == "lsb":
        return lsb_status_code if action == "monitor" else lsb_action_code
    return ocf_code


class CommandAgent:
    def _env(self, resource: Resource) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCF_RESKEY_")}
        env.update({f"OCF_RESKEY_{k}": v for k, v in resource.params.items() if k != NETNS})
        env["OPHIURA_RESOURCE"] = resource.name
        return env

    async def _run(self, resource: Resource, action: str, timeout: float) -> Outcome:
        t0 = time.monotonic()
        p = Params(resource)
        try:
            line = p.text(action)
            codes = p.choice("codes", CODES, "ocf")
            cwd = p.text("cwd", "/")
        except ParamError as exc:
            return config_error(exc, t0)
        argv = [*netns_prefix(p.netns), "/bin/sh", "-c", line]
        result = await run_process(argv, timeout, env=self._env(resource), cwd=cwd)
        return to_outcome(result, mapper_for(codes, action), f"{resource.name} {action}")

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        return await self._run(resource, "start", timeout)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        out = await self._run(resource, "stop", timeout)
        if out.code == OcfCode.NOT_RUNNING and not out.timed_out:
            return Outcome(OcfCode.SUCCESS, out.elapsed, out.output, reason=out.reason)
        return out

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        return await self._run(resource, "monitor", timeout)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        p = Params(resource)
        try:
            for action in ("start", "stop", "monitor"):
                p.text(action)
            p.choice("codes", CODES, "ocf")
            cwd = p.text("cwd", "/")
        except ParamError as exc:
            return config_error(exc, t0)
        if not os.path.isdir(cwd):
            return Outcome(OcfCode.ERR_CONFIGURED, 0.0, reason=f"cwd {cwd!r} is not a directory")
        if p.opt("validate"):
            return await self._run(resource, "validate", timeout)
        return Outcome(OcfCode.SUCCESS, time.monotonic() - t0)
