"""STONITH: power a node off through fence devices, level by level.

Devices follow the fence-agents convention so Debian's `fence-agents` (fence_ipmilan, fence_apc,
fence_virsh, ...) work as they are: the program reads `key=value` lines on stdin (`action=off`,
`plug=...`, then the device's params) and exits 0 on success. The built-in `exec` device runs a
command with OPHIURA_FENCE_NODE / OPHIURA_FENCE_ACTION / OPHIURA_FENCE_PLUG in its environment.
A level succeeds when every device in it succeeds; levels are tried in order (Pacemaker's
fencing topology), and the result says what each device said, so a fence never goes unexplained.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
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
        lines = [f"action={action}", f"plug={plug}", *(f"{k}={v}" for k, v in dev.params.items())]
        rc, out = await _run([dev.agent], ("\n".join(lines) + "\n").encode(), env, dev.timeout)
    return rc == 0, f"{dev.name}: exit {rc}" + (f": {out}" if out else "")


async def fence(cfg: ClusterConfig, node: str) -> FenceResult:
    """Try each fencing level for `node` in order until one succeeds completely."""
    t0 = time.monotonic()
    details = []
    for i, level in enumerate(cfg.fence_levels.get(node, ()), 1):
        results = await asyncio.gather(*(fence_with(cfg.fence_devices[d], node) for d in level))
        details.append(f"level {i}: " + "; ".join(d for _, d in results))
        if all(ok for ok, _ in results):
            return FenceResult(node, True, " | ".join(details), time.monotonic() - t0)
    if not details:
        details.append("no fencing levels configured")
    return FenceResult(node, False, " | ".join(details), time.monotonic() - t0)
