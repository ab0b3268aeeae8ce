"""Run one OCF action: the environment Pacemaker gives an agent in, an exit code and reason out.

OCF 1.1: parameters arrive as OCF_RESKEY_<name>, the instance name as OCF_RESOURCE_INSTANCE, the
action's timeout as OCF_RESKEY_CRM_meta_timeout (milliseconds), the monitor depth as
OCF_CHECK_LEVEL; the agent prints why it failed as `ocf-exit-reason:...` on stderr. Actions an
agent does not implement exit OCF_ERR_UNIMPLEMENTED (3), a missing action OCF_ERR_ARGS (2).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from xml.sax.saxutils import escape, quoteattr

from ophiura import __version__
from ophiura.cluster.agents.base import OcfCode, Outcome, Resource

DEFAULT_TIMEOUT = 20.0
PREFIX = "OCF_RESKEY_"


@dataclass(frozen=True)
class Param:
    name: str
    shortdesc: str
    longdesc: str = ""
    required: bool = False
    unique: bool = False
    type: str = "string"  # ra-api-1.dtd: string, integer, boolean, time
    default: str | None = None


@dataclass(frozen=True)
class AgentInfo:
    name: str
    shortdesc: str
    longdesc: str
    params: tuple[Param, ...]
    # (action, timeout, extra attributes) as advertised in meta-data
    actions: tuple[tuple[str, str, str], ...] = (
        ("start", "60s", ""),
        ("stop", "60s", ""),
        ("monitor", "20s", ' interval="10s" depth="0"'),
        ("monitor", "30s", ' interval="60s" depth="10"'),
        ("validate-all", "20s", ""),
        ("meta-data", "5s", ""),
    )


def metadata_xml(info: AgentInfo) -> str:
    """The agent's meta-data, valid against resource-agents' ra-api-1.dtd."""
    out = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">',
        f'<resource-agent name="{info.name}" version="{__version__}">',
        "<version>1.0</version>",
        f'<longdesc lang="en">{escape(info.longdesc)}</longdesc>',
        f'<shortdesc lang="en">{escape(info.shortdesc)}</shortdesc>',
        "<parameters>",
    ]
    for p in info.params:
        default = f" default={quoteattr(p.default)}" if p.default is not None else ""
        out += [
            f'<parameter name="{p.name}" unique="{int(p.unique)}" required="{int(p.required)}">',
            f'<longdesc lang="en">{escape(p.longdesc or p.shortdesc)}</longdesc>',
            f'<shortdesc lang="en">{escape(p.shortdesc)}</shortdesc>',
            f'<content type="{p.type}"{default}/>',
            "</parameter>",
        ]
    out.append("</parameters>")
    out.append("<actions>")
    out += [f'<action name="{a}" timeout="{t}"{extra}/>' for a, t, extra in info.actions]
    out += ["</actions>", "</resource-agent>", ""]
    return "\n".join(out)


class Agent(Protocol):
    async def start(self, resource: Resource, timeout: float) -> Outcome: ...
    async def stop(self, resource: Resource, timeout: float) -> Outcome: ...
    async def monitor(self, resource: Resource, timeout: float) -> Outcome: ...
    async def validate(self, resource: Resource, timeout: float) -> Outcome: ...


def resource_from_env(info: AgentInfo, env: Mapping[str, str]) -> Resource:
    """The resource Pacemaker describes: our declared params (unset ones fall to defaults)."""
    params = {}
    for p in info.params:
        value = env.get(PREFIX + p.name)
        if value is not None:
            params[p.name] = value
    depth = env.get("OCF_CHECK_LEVEL", "0")
    return Resource(
        name=env.get("OCF_RESOURCE_INSTANCE") or info.name,
        kind=f"ocf:ophiura:{info.name}",
        params=params,
        monitor_depth=int(depth) if depth.isdigit() else 0,
    )


def action_timeout(env: Mapping[str, str]) -> float:
    raw = env.get(PREFIX + "CRM_meta_timeout", "")
    try:
        ms = int(raw)
    except ValueError:
        return DEFAULT_TIMEOUT
    # Leave a margin: our answer must reach Pacemaker before it kills us.
    return max(1.0, ms / 1000.0 * 0.9) if ms > 0 else DEFAULT_TIMEOUT


USAGE = "usage: {name} {{start|stop|monitor|validate-all|meta-data}}"


def run(
    info: AgentInfo, agent: Agent, argv: list[str], env: Mapping[str, str] | None = None
) -> int:
    """Run `argv[0]` (the action) and return the OCF exit code."""
    env = os.environ if env is None else env
    if not argv:
        print(USAGE.format(name=info.name), file=sys.stderr)
        return OcfCode.ERR_ARGS
    action = argv[0]
    if action == "meta-data":
        sys.stdout.write(metadata_xml(info))
        return OcfCode.SUCCESS
    if action in ("usage", "help"):
        print(USAGE.format(name=info.name))
        return OcfCode.SUCCESS
    calls = {
        "start": agent.start,
        "stop": agent.stop,
        "monitor": agent.monitor,
        "status": agent.monitor,
        "validate-all": agent.validate,
    }
    call = calls.get(action)
    if call is None:
        return OcfCode.ERR_UNIMPLEMENTED
    resource = resource_from_env(info, env)
    timeout = action_timeout(env)
    try:
        outcome = asyncio.run(call(resource, timeout))
    except Exception as exc:  # the one line Pacemaker shows, never a traceback
        print(f"ocf-exit-reason:{action}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return OcfCode.ERR_GENERIC
    if outcome.reason and outcome.code != OcfCode.SUCCESS:
        print(f"ocf-exit-reason:{outcome.reason}", file=sys.stderr)
    elif outcome.reason:
        print(outcome.reason, file=sys.stderr)
    code = outcome.code
    if outcome.timed_out and code == OcfCode.SUCCESS:
        code = OcfCode.ERR_GENERIC
    # OCF 1.1 degraded codes (190/191) are newer than many Pacemakers: report success.
    if code == OcfCode.DEGRADED:
        code = OcfCode.SUCCESS
    return int(code)
