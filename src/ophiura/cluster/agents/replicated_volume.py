"""`replicated-volume`: an ophiura HE serving a volume, holding its epoch — the own-able resource
for replicated storage (DESIGN.md: "the epoch of a replicated volume").

An HE becomes active by raising the volume's epoch on a majority of SEs; the previous HE is then
fenced (its next write meets StaleEpoch, it acknowledges nothing more). So starting this resource
*is* taking ownership, and no second node can own the volume at the same time.

Params: `control` (required, HOST:PORT of this node's HE control API), `volume` (required, the
volume name), `secret_file` (the shared secret, default ophiura's), `mode`:

- `process` (default): the cluster runs the HE. start spawns `ophiura he --config CONFIG
  --control CONTROL [--secret-file F]` (params `config`, required, and `args`, extra flags) as a
  supervised process (pidfile, own process group, like the `process` agent; `grace` and `log`
  as there) and waits until its control API says active with the volume served and not fenced;
  stop terminates it (SIGTERM, then SIGKILL after `grace`).
- `takeover`: an HE already runs on this node as a standby (started by systemd or a `process`
  resource below this one); start is `ophiura takeover` (the control API's `takeover`), stop runs
  the `stop_command` param (an HE cannot surrender; restarting it as a standby is the way, e.g.
  `systemctl restart ophiura-he`); without one, stop succeeds only when the HE is not active.

monitor (both modes): the control API's status (what `ophiura status --json` prints): role
active, the volume present, not fenced -> SUCCESS; fenced -> ERR_GENERIC "fenced" (another node
took the epoch: self-fence); read-only (fewer than Q SEs) -> DEGRADED; no HE answering ->
NOT_RUNNING when we never started it (process mode: no pidfile), else ERR_GENERIC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import ParamError, Params, config_error, done
from ophiura.cluster.agents.process import ProcessAgent, read_pidfile
from ophiura.cluster.agents.process_runner import run_process, to_outcome
from ophiura.replication.he.config import ConfigError, parse_host_port
from ophiura.replication.he.control import ControlError, control_call
from ophiura.replication.wire.secret import SecretError, load_secret

POLL = 0.1


def ophiura_argv() -> list[str]:
    """The `ophiura` next to this interpreter (a venv's), else on PATH, else `-m ophiura.cli`."""
    script = Path(sys.executable).with_name("ophiura")
    if script.exists():
        return [str(script)]
    found = shutil.which("ophiura")
    return [found] if found else [sys.executable, "-m", "ophiura.cli"]


class RvSpec:
    def __init__(self, resource: Resource) -> None:
        p = Params(resource)
        self.mode = p.choice("mode", ("process", "takeover"), "process")
        self.control_text = p.text("control")
        try:
            self.control = parse_host_port(self.control_text, "control")
        except ConfigError as exc:
            raise ParamError(resource.name, "control", str(exc)) from None
        self.volume = p.text("volume")
        secret = p.opt("secret_file")
        self.secret_file = Path(secret) if secret else None
        self.config = p.text("config") if self.mode == "process" else p.opt("config")
        self.args = shlex.split(p.text("args", ""))
        self.stop_command = p.opt("stop_command")
        self.grace = p.number("grace", 10.0)

    def secret(self) -> bytes:
        return load_secret(self.secret_file)

    def he_resource(self, resource: Resource) -> Resource:
        """The `process` resource that runs this HE (process mode)."""
        cmd = [*ophiura_argv(), "he", "--config", str(self.config), "--control", self.control_text]
        if self.secret_file:
            cmd += ["--secret-file", str(self.secret_file)]
        params = {"command": shlex.join(cmd + self.args), "grace": str(self.grace)}
        for key in ("log", "cwd", "netns"):
            if key in resource.params:
                params[key] = resource.params[key]
        return Resource(name=f"{resource.name}.he", kind="process", params=params)


def judge(status: dict[str, Any], volume: str) -> tuple[OcfCode, str]:
    """Read an HE status (the control API's `status`) for one volume."""
    if status.get("role") != "active":
        return OcfCode.NOT_RUNNING, f"HE is {status.get('role')}"
    for v in status.get("volumes", []):
        if v.get("name") == volume:
            if v.get("fenced"):
                return OcfCode.ERR_GENERIC, f"volume {volume} fenced (epoch {v.get('epoch')})"
            if v.get("read_only"):
                return OcfCode.DEGRADED, f"volume {volume} read-only (fewer than Q SEs)"
            return OcfCode.SUCCESS, ""
    return OcfCode.ERR_GENERIC, f"HE is active but does not serve volume {volume}"


class ReplicatedVolumeAgent:
    def __init__(self, processes: ProcessAgent | None = None) -> None:
        self.processes = processes or ProcessAgent()

    async def _status(self, spec: RvSpec, timeout: float) -> dict[str, Any]:
        host, port = spec.control
        return await control_call(host, port, spec.secret(), "status", timeout=timeout)

    async def _wait_active(self, spec: RvSpec, t0: float, timeout: float) -> tuple[OcfCode, str]:
        last = "no answer yet"
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                return OcfCode.ERR_GENERIC, f"HE not active within {timeout:g}s: {last}"
            try:
                code, reason = judge(await self._status(spec, max(0.2, left)), spec.volume)
                if code in (OcfCode.SUCCESS, OcfCode.DEGRADED):
                    return OcfCode.SUCCESS, reason
                last = reason
            except ControlError as exc:
                last = str(exc)
            await asyncio.sleep(POLL)

    def _spec(self, resource: Resource) -> RvSpec:
        spec = RvSpec(resource)
        try:
            spec.secret()
        except (SecretError, OSError) as exc:
            raise ParamError(resource.name, "secret_file", f"unusable: {exc}") from None
        return spec

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = self._spec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        if spec.mode == "process":
            out = await self.processes.start(spec.he_resource(resource), timeout)
            if not out.ok:
                return out
        else:
            host, port = spec.control
            try:
                st = await self._status(spec, timeout)
                if st.get("role") != "active":
                    left = max(0.5, timeout - (time.monotonic() - t0))
                    await control_call(host, port, spec.secret(), "takeover", timeout=left)
            except ControlError as exc:
                return done(OcfCode.ERR_GENERIC, t0, f"takeover: {exc}")
        code, reason = await self._wait_active(spec, t0, timeout)
        if code != OcfCode.SUCCESS:
            return Outcome(code, time.monotonic() - t0, reason=reason, timed_out=True)
        return done(code, t0, reason)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = self._spec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        if spec.mode == "process":
            return await self.processes.stop(spec.he_resource(resource), timeout)
        if spec.stop_command:
            res = await run_process(["/bin/sh", "-c", spec.stop_command], timeout)
            return to_outcome(
                res, lambda rc: OcfCode.SUCCESS if rc == 0 else OcfCode.ERR_GENERIC, "stop_command"
            )
        try:
            code, reason = judge(await self._status(spec, timeout), spec.volume)
        except ControlError:
            return done(OcfCode.SUCCESS, t0, "no HE answering")
        if code == OcfCode.SUCCESS:
            return done(
                OcfCode.ERR_UNIMPLEMENTED,
                t0,
                "the HE is active and cannot surrender: set stop_command (restart it as standby)",
            )
        return done(OcfCode.SUCCESS, t0, reason)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = self._spec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        he = spec.he_resource(resource) if spec.mode == "process" else None
        if he is not None:
            proc = await self.processes.monitor(he, timeout)
            if proc.code != OcfCode.SUCCESS:
                return proc
        try:
            status = await self._status(spec, max(0.2, timeout - (time.monotonic() - t0)))
        except ControlError as exc:
            return done(OcfCode.ERR_GENERIC, t0, f"HE control API: {exc}")
        code, reason = judge(status, spec.volume)
        if code == OcfCode.NOT_RUNNING and he is not None:
            code = OcfCode.ERR_GENERIC  # our HE runs but is not active: not a clean stop
        # A stale epoch means a newer HE took the volume over: taken, not broken.
        taken = status.get("role") == "active" and any(
            v.get("name") == spec.volume and v.get("fenced") for v in status.get("volumes", [])
        )
        return dataclasses.replace(done(code, t0, reason), taken=taken)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = self._spec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        if spec.mode == "process" and spec.config and not Path(spec.config).is_file():
            return done(OcfCode.ERR_CONFIGURED, t0, f"config {spec.config} not found")
        return done(OcfCode.SUCCESS, t0)

    def pid(self, resource: Resource) -> int | None:
        """The HE's pid in process mode (tests, status)."""
        spec = RvSpec(resource)
        rec = read_pidfile(self.processes.pidfile(spec.he_resource(resource)))
        return rec.pid if rec else None
