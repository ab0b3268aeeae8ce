"""OCF resource agents as they are (the OCF 1.1 resource agent API).

`ocf:PROVIDER:TYPE` runs `$OCF_ROOT/resource.d/PROVIDER/TYPE ACTION` (OCF_ROOT defaults to
/usr/lib/ocf), with the environment Pacemaker gives it, so Debian's `resource-agents` (Dummy,
IPaddr2, Filesystem, ...) run unchanged:

- `OCF_RESKEY_<param>` for every resource param (except `netns`, which is ours: the action runs
  under `ip netns exec NETNS`), plus `OCF_RESKEY_CRM_meta_timeout` (ms) and, for monitor,
  `OCF_RESKEY_CRM_meta_interval` (ms; a non-zero interval tells ocf-shellfuncs this is not a
  probe) and `OCF_CHECK_LEVEL` (the monitor depth);
- `OCF_ROOT`, `OCF_RA_VERSION_MAJOR=1`, `OCF_RA_VERSION_MINOR=1`, `OCF_RESOURCE_INSTANCE` (the
  resource name), `OCF_RESOURCE_TYPE`, `OCF_RESOURCE_PROVIDER`; `OCF_TRACE_RA` is removed (a
  trace left on in our own environment would make every agent write `set -x` files);
- `HA_RSCTMP` (state files: Dummy's `Dummy-<instance>.state`, IPaddr2's send_arp pidfile) and
  `HA_VARRUN` (ocf_mkstatedir refuses paths outside it), both writable: Debian's defaults when
  root, a per-user directory otherwise (`params.state_dir`).

Exit codes are OCF codes: 0-9, 190, 191 map to `OcfCode`; any other status is ERR_GENERIC.
A stop that answers NOT_RUNNING (7) is SUCCESS: the resource is stopped, which is what stop means.
The last `ocf-exit-reason:` line the agent printed becomes `Outcome.reason`.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ophiura.cluster.agents.base import Action, OcfCode, Outcome, Resource
from ophiura.cluster.agents.ocf_metadata import Metadata, MetadataError, parse_metadata
from ophiura.cluster.agents.params import NETNS, state_dir
from ophiura.cluster.agents.process_runner import (
    netns_prefix,
    ocf_code,
    run_process,
    to_outcome,
)

DEFAULT_OCF_ROOT = "/usr/lib/ocf"
METADATA_TIMEOUT = 10.0
METADATA_LIMIT = 1 << 20  # meta-data is read whole (IPaddr2's is ~20 KiB), not as a tail
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class OcfKindError(ValueError):
    """A kind that is not `ocf:PROVIDER:TYPE`."""


@dataclass(frozen=True)
class OcfKind:
    provider: str
    type: str

    @classmethod
    def parse(cls, kind: str) -> OcfKind:
        parts = kind.split(":")
        if len(parts) != 3 or parts[0] != "ocf" or not parts[1] or not parts[2]:
            raise OcfKindError(f"not an OCF kind (ocf:PROVIDER:TYPE): {kind!r}")
        if any("/" in p or p in (".", "..") for p in parts[1:]):
            raise OcfKindError(f"bad provider or type in {kind!r}")
        return cls(parts[1], parts[2])


def ocf_root() -> Path:
    return Path(os.environ.get("OCF_ROOT") or DEFAULT_OCF_ROOT)


def installed_ocf_kinds(root: Path | None = None) -> list[str]:
    """Every `ocf:PROVIDER:TYPE` installed under OCF_ROOT/resource.d."""
    base = (root or ocf_root()) / "resource.d"
    kinds = []
    if base.is_dir():
        for provider in sorted(p for p in base.iterdir() if p.is_dir()):
            for agent in sorted(provider.iterdir()):
                if agent.is_file() and os.access(agent, os.X_OK) and not agent.name.startswith("."):
                    kinds.append(f"ocf:{provider.name}:{agent.name}")
    return kinds


class OcfAgent:
    """Runs any OCF resource agent; `resource.kind` says which."""

    def __init__(self, root: Path | str | None = None, rsctmp: Path | str | None = None) -> None:
        self.root = Path(root) if root else ocf_root()
        self._rsctmp = Path(rsctmp) if rsctmp else None
        self._metadata: dict[tuple[str, int], Metadata] = {}

    # ---- paths and environment ----------------------------------------------------------
    def path(self, kind: str) -> Path:
        k = OcfKind.parse(kind)
        return self.root / "resource.d" / k.provider / k.type

    def rsctmp(self) -> Path:
        path = self._rsctmp or state_dir()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _varrun(self, rsctmp: Path) -> Path:
        if os.geteuid() == 0 and self._rsctmp is None:
            return Path("/run")
        varrun = rsctmp / "run"
        varrun.mkdir(exist_ok=True)
        return varrun

    def environment(
        self, resource: Resource, action: str, timeout: float, kind: OcfKind | None = None
    ) -> dict[str, str]:
        """The environment for one action (see the module docstring)."""
        k = kind or OcfKind.parse(resource.kind)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OCF_", "HA_", "__OCF_"))
        }
        path = env.get("PATH", "/usr/bin:/bin").split(":")
        env["PATH"] = ":".join(path + [d for d in _SBIN if d not in path])
        rsctmp = self.rsctmp()
        env.update(
            {
                "OCF_ROOT": str(self.root),
                "OCF_RA_VERSION_MAJOR": "1",
                "OCF_RA_VERSION_MINOR": "1",
                "OCF_RESOURCE_INSTANCE": resource.name,
                "OCF_RESOURCE_TYPE": k.type,
                "OCF_RESOURCE_PROVIDER": k.provider,
                "HA_RSCTMP": str(rsctmp),
                "HA_VARRUN": str(self._varrun(rsctmp)),
                "OCF_RESKEY_CRM_meta_timeout": str(int(timeout * 1000)),
            }
        )
        if os.geteuid() != 0 or self._rsctmp is not None:
            varlib = rsctmp / "lib"
            varlib.mkdir(exist_ok=True)
            env["HA_VARLIB"] = str(varlib)
        for name, value in resource.params.items():
            if name != NETNS:
                env[f"OCF_RESKEY_{name}"] = value
        if action == Action.MONITOR:
            env["OCF_CHECK_LEVEL"] = str(resource.monitor_depth)
            env["OCF_RESKEY_CRM_meta_interval"] = str(int(resource.monitor_interval * 1000))
        return env

    # ---- running an action -------------------------------------------------------------
    async def run(self, resource: Resource, action: str, timeout: float) -> Outcome:
        """Run one OCF action and map its exit code (no meta-data involved)."""
        t0 = time.monotonic()
        try:
            kind = OcfKind.parse(resource.kind)
        except OcfKindError as exc:
            return Outcome(OcfCode.ERR_CONFIGURED, 0.0, reason=str(exc))
        path = self.path(resource.kind)
        if not path.is_file():
            return Outcome(
                OcfCode.ERR_INSTALLED,
                time.monotonic() - t0,
                reason=f"{resource.kind}: no agent at {path}",
            )
        argv = [*netns_prefix(resource.params.get(NETNS)), str(path), action]
        env = self.environment(resource, action, timeout, kind)
        result = await run_process(argv, timeout, env=env, cwd="/")
        return to_outcome(result, ocf_code, f"{resource.kind} {action}")

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        return await self.run(resource, Action.START, timeout)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        out = await self.run(resource, Action.STOP, timeout)
        if out.code == OcfCode.NOT_RUNNING and not out.timed_out:
            return Outcome(OcfCode.SUCCESS, out.elapsed, out.output, reason=out.reason)
        return out

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        return await self.run(resource, Action.MONITOR, timeout)

    # ---- meta-data and validate ---------------------------------------------------------
    async def metadata(self, kind: str, timeout: float = METADATA_TIMEOUT) -> Metadata:
        """The agent's parsed meta-data (cached until the script changes).

        Raises MetadataError when it cannot be had (not installed, failed, not XML)."""
        path = self.path(kind)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            raise MetadataError(f"{kind}: no agent at {path} ({exc.strerror})") from exc
        key = (str(path), mtime)
        cached = self._metadata.get(key)
        if cached is not None:
            return cached
        probe = Resource(name=f"meta-data-{OcfKind.parse(kind).type}", kind=kind)
        env = self.environment(probe, Action.META_DATA, timeout)
        result = await run_process(
            [str(path), Action.META_DATA], timeout, env=env, cwd="/", output_limit=METADATA_LIMIT
        )
        if result.returncode != 0:
            out = to_outcome(result, ocf_code, f"{kind} meta-data")
            raise MetadataError(out.reason or f"{kind} meta-data failed")
        md = parse_metadata(result.output)
        self._metadata = {k: v for k, v in self._metadata.items() if k[0] != str(path)}
        self._metadata[key] = md
        return md

    def metadata_blocking(self, kind: str, timeout: float = METADATA_TIMEOUT) -> Metadata:
        """metadata() for callers without an event loop (`ophiura cluster validate`), sharing
        its cache. Raises MetadataError as metadata() does."""
        path = self.path(kind)
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError as exc:
            raise MetadataError(f"{kind}: no agent at {path} ({exc.strerror})") from exc
        cached = self._metadata.get(key)
        if cached is not None:
            return cached
        probe = Resource(name=f"meta-data-{OcfKind.parse(kind).type}", kind=kind)
        env = self.environment(probe, Action.META_DATA, timeout)
        try:
            proc = subprocess.run(
                [str(path), Action.META_DATA],
                env=env,
                cwd="/",
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MetadataError(f"{kind} meta-data: {exc}") from exc
        if proc.returncode != 0:
            raise MetadataError(f"{kind} meta-data failed (exit {proc.returncode})")
        md = parse_metadata(proc.stdout[:METADATA_LIMIT].decode(errors="replace"))
        self._metadata = {k: v for k, v in self._metadata.items() if k[0] != str(path)}
        self._metadata[key] = md
        return md

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        """Installed, meta-data readable, required params present, then the agent's validate-all
        (when it advertises one)."""
        t0 = time.monotonic()
        try:
            path = self.path(resource.kind)
        except OcfKindError as exc:
            return Outcome(OcfCode.ERR_CONFIGURED, 0.0, reason=str(exc))
        if not path.is_file():
            return Outcome(
                OcfCode.ERR_INSTALLED,
                time.monotonic() - t0,
                reason=f"{resource.kind}: no agent at {path}",
            )
        try:
            md = await self.metadata(resource.kind, min(timeout, METADATA_TIMEOUT))
        except MetadataError as exc:
            return Outcome(OcfCode.ERR_INSTALLED, time.monotonic() - t0, reason=str(exc))
        missing = md.missing(resource.params)
        if missing:
            return Outcome(
                OcfCode.ERR_CONFIGURED,
                time.monotonic() - t0,
                reason=f"{resource.kind}: missing required parameter(s): {', '.join(missing)}",
            )
        unknown = md.unknown(resource.params, {NETNS})
        note = (
            f"warning: parameters unknown to {md.name}: {', '.join(unknown)}\n" if unknown else ""
        )
        if md.action(Action.VALIDATE) is None:
            return Outcome(OcfCode.SUCCESS, time.monotonic() - t0, note)
        remaining = max(0.1, timeout - (time.monotonic() - t0))
        out = await self.run(resource, Action.VALIDATE, remaining)
        return Outcome(
            out.code, time.monotonic() - t0, note + out.output, out.timed_out, out.reason
        )
