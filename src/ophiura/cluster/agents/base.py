"""The contract between the cluster and a resource agent.

The cluster core never runs a command itself: it asks an `Agent` to start, stop, monitor or
validate one `Resource`, with a timeout, and gets an `Outcome` whose code is an OCF exit code
(OCF 1.1 §"Return codes": the same numbers whatever kind the agent is — OCF script, LSB init
script, systemd unit, plain command or a built-in), so one recovery policy serves every kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Protocol


class OcfCode(IntEnum):
    SUCCESS = 0
    ERR_GENERIC = 1
    ERR_ARGS = 2
    ERR_UNIMPLEMENTED = 3
    ERR_PERM = 4
    ERR_INSTALLED = 5
    ERR_CONFIGURED = 6
    NOT_RUNNING = 7
    RUNNING_PROMOTED = 8
    FAILED_PROMOTED = 9
    DEGRADED = 190
    DEGRADED_PROMOTED = 191


class Action(StrEnum):
    """Action names as OCF spells them."""

    START = "start"
    STOP = "stop"
    MONITOR = "monitor"
    VALIDATE = "validate-all"
    META_DATA = "meta-data"


@dataclass(frozen=True)
class Resource:
    """One resource as configured: `kind` picks the agent, `params` become OCF_RESKEY_*."""

    name: str
    kind: str  # "ocf:heartbeat:IPaddr2", "lsb:nginx", "systemd:nginx", "command", "ip", "fs", ...
    params: dict[str, str] = field(default_factory=dict)
    hierarchy: str = ""
    monitor_interval: float = 2.0
    monitor_timeout: float = 10.0
    monitor_depth: int = 0  # OCF_CHECK_LEVEL
    start_timeout: float = 30.0
    stop_timeout: float = 30.0


@dataclass(frozen=True)
class Outcome:
    """What one action did. `timed_out` is separate from the code: the agent was killed."""

    code: OcfCode
    elapsed: float
    output: str = ""  # the tail of stdout/stderr, for the event log and notifications
    timed_out: bool = False
    # One line saying why, for people: the OCF agent's `ocf-exit-reason`, or what a built-in
    # found (e.g. "reservation preempted by key 0x..."). Empty when there is nothing to say.
    reason: str = ""
    # Monitor of an own-able resource only: another node holds it now (our reservation was
    # preempted, our epoch is stale). Not a broken path: the hierarchy was recovered elsewhere,
    # so this side of a partition must not recover it a second time (see decide.py).
    taken: bool = False

    @property
    def ok(self) -> bool:
        return self.code == OcfCode.SUCCESS and not self.timed_out


class Agent(Protocol):
    """Starts, stops and monitors one kind of resource. Each call is bounded by `timeout`."""

    async def start(self, resource: Resource, timeout: float) -> Outcome: ...

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        """Stopping a stopped resource is SUCCESS (OCF: stop must be idempotent)."""
        ...

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        """SUCCESS = running, NOT_RUNNING = cleanly stopped, anything else = failed."""
        ...

    async def validate(self, resource: Resource, timeout: float) -> Outcome: ...
