"""An agent for tests, loadable by `ophiura node` as kind python:tests.cluster.fake_agent:FakeAgent.

It "runs" a resource by creating a marker file `<dir>/<resource>.<node>` (params `dir`, `node`
come from the resource; `node` defaults to $OPHIURA_NODE), so a test sees exactly where each
resource runs and that a stop leaves no residue. `fail_start`/`slow_start` params inject faults;
a file `<dir>/stuck.<node>` makes stop fail.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource


def _marker(resource: Resource) -> Path:
    node = resource.params.get("node") or os.environ.get("OPHIURA_NODE", "local")
    return Path(resource.params.get("dir", "/tmp")) / f"{resource.name}.{node}"


class FakeAgent:
    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        await asyncio.sleep(float(resource.params.get("slow_start", "0")))
        if resource.params.get("fail_start"):
            return Outcome(OcfCode.ERR_GENERIC, time.monotonic() - t0, "fail_start set")
        _marker(resource).write_text(f"{os.getpid()}\n")
        return Outcome(OcfCode.SUCCESS, time.monotonic() - t0)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        stuck = _marker(resource).with_name(f"stuck.{_marker(resource).name.rsplit('.', 1)[1]}")
        if stuck.exists():  # a test made this node's stop fail (graceful and forced alike)
            return Outcome(OcfCode.ERR_GENERIC, time.monotonic() - t0, f"{stuck} exists")
        _marker(resource).unlink(missing_ok=True)
        return Outcome(OcfCode.SUCCESS, time.monotonic() - t0)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        code = OcfCode.SUCCESS if _marker(resource).exists() else OcfCode.NOT_RUNNING
        return Outcome(code, 0.0)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        return Outcome(OcfCode.SUCCESS, 0.0)
