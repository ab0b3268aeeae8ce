"""STONITH: power a node off through fence devices, level by level.

Devices follow the fence-agents convention so Debian's `fence-agents` (fence_ipmilan, fence_apc,
fence_virsh, ...) work as they are: the program reads `key=value` lines on stdin (`action=off`,
`plug=...`, then the device's params) and exits 0 on success. As Pacemaker does, `plug` is sent
only to agents whose `-o metadata` lists a `plug` or `port` parameter (or when the device maps
the node to a plug): an agent without ports (fence_heuristics_ping, fence_dummy) would only log
a parse error for it. The built-in `exec` device runs a command with OPHIURA_FENCE_NODE /
OPHIURA_FENCE_ACTION / OPHIURA_FENCE_PLUG in its environment.

Levels are Pacemaker's fencing topology: tried in order until one succeeds; inside a level the
devices run one after another and the level stops at the first that fails. Order matters:
fence_heuristics_ping exists to veto the device after it on the same level (do not power off a
peer from a node that is itself cut off). The result says what each device said, or that it was
skipped, so a fence never goes unexplained.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ophiura.cluster.config import ClusterConfig, FenceDevice


@dataclass(frozen=True)
class FenceResult:
    node: str
    ok: bool
    detail: str
    elapsed: float


async def _run(
    argv: list[str], stdin: bytes, env: dict[str, str], timeout: float
) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc.strerror or exc}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        return 124, f"timed out after {timeout:g} s"
    return proc.returncode or 0, out.decode(errors="replace")[-500:].strip()


async def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run a helper (the tie-breaker) with no input: (exit code, output tail)."""
    return await _run(argv, b"", dict(os.environ), timeout)


_METADATA: dict[str, frozenset[str] | None] = {}


def agent_path(agent: str) -> str | None:
    """Where a fence agent is: $PATH, then the sbin directories Debian installs them in (an
    ordinary user's PATH, e.g. for `ophiura cluster validate`, often lacks /usr/sbin)."""
    search = os.pathsep.join(filter(None, (os.environ.get("PATH"), "/usr/sbin", "/sbin")))
    return shutil.which(agent, path=search)


def metadata_parameters(agent: str, timeout: float = 10.0) -> frozenset[str] | None:
    """The parameter names an agent's `-o metadata` lists (cached); None if it cannot say (not
    installed, or not a fence-agents program)."""
    if agent not in _METADATA:
        names: frozenset[str] | None = None
        try:
            res = subprocess.run(
                [agent_path(agent) or agent, "-o", "metadata"],
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if res.returncode == 0:
                root = ET.fromstring(res.stdout)
                names = frozenset(p.get("name", "") for p in root.iter("parameter"))
        except (OSError, subprocess.TimeoutExpired, ET.ParseError):
            names = None
        _METADATA[agent] = names
    return _METADATA[agent]


async def agent_parameters(agent: str) -> frozenset[str] | None:
    """`metadata_parameters` off the event loop (asked once per agent per daemon)."""
    if agent in _METADATA:
        return _METADATA[agent]
    return await asyncio.to_thread(metadata_parameters, agent)


def check_device(dev: FenceDevice) -> list[str]:
    """What validate() says about a fence-agents device: not runnable, or params its metadata
    does not list (a typo would otherwise surface only when a node must be fenced)."""
    if dev.agent == "exec":
        return []
    if agent_path(dev.agent) is None:
        return [f"fence device {dev.name}: agent {dev.agent} not found (Debian: fence-agents)"]
    names = metadata_parameters(dev.agent)
    if names is None:
        return [f"fence device {dev.name}: {dev.agent} -o metadata gave no parameter list"]
    return [
        f"fence device {dev.name}: {dev.agent} has no parameter {k!r}"
        for k in dev.params
        if k not in names
    ]


async def fence_with(dev: FenceDevice, node: str, action: str = "off") -> tuple[bool, str]:
    plug = dev.plugs.get(node, node)
    env = {
        **os.environ,
        "OPHIURA_FENCE_NODE": node,
        "OPHIURA_FENCE_ACTION": action,
        "OPHIURA_FENCE_PLUG": plug,
    }
    if dev.agent == "exec":
        rc, out = await _run(list(dev.command), b"", env, dev.timeout)
    else:
        lines = [f"action={action}"]
        params = await agent_parameters(dev.agent)
        if node in dev.plugs or params is None or {"plug", "port"} & params:
            lines.append(f"plug={plug}")
        lines += [f"{k}={v}" for k, v in dev.params.items()]
        argv = [agent_path(dev.agent) or dev.agent]
        rc, out = await _run(argv, ("\n".join(lines) + "\n").encode(), env, dev.timeout)
    return rc == 0, f"{dev.name}: exit {rc}" + (f": {out}" if out else "")


async def fence(cfg: ClusterConfig, node: str) -> FenceResult:
    """Try each fencing level for `node` in order until one succeeds completely."""
    t0 = time.monotonic()
    details = []
    for i, level in enumerate(cfg.fence_levels.get(node, ()), 1):
        said: list[str] = []
        ok = True
        for d in level:
            if not ok:
                said.append(f"{d}: skipped (an earlier device of this level failed)")
                continue
            ok, detail = await fence_with(cfg.fence_devices[d], node)
            said.append(detail)
        details.append(f"level {i}: " + "; ".join(said))
        if ok:
            return FenceResult(node, True, " | ".join(details), time.monotonic() - t0)
    if not details:
        details.append("no fencing levels configured")
    return FenceResult(node, False, " | ".join(details), time.monotonic() - t0)
