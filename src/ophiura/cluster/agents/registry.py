"""Which agent runs a resource kind: `agent_for(kind)`, and `known_kinds()`.

| kind               | agent                                  | module               |
|--------------------|----------------------------------------|----------------------|
| `ocf:PROVIDER:TYPE`| an OCF 1.1 resource agent, as it is    | ocf.py               |
| `lsb:NAME`         | /etc/init.d/NAME                       | lsb.py               |
| `systemd:UNIT`     | a systemd unit                         | systemd.py           |
| `command`          | start/stop/monitor command lines       | command.py           |
| `ip`               | floating address + gratuitous ARP      | ip.py                |
| `fs`               | fsck, mount, unmount with cleanup      | fs.py                |
| `process`          | a supervised process                   | process.py           |
| `volume`           | iSCSI LUN + SCSI-3 PR (own-able)       | volume.py            |
| `replicated-volume`| an ophiura HE holding the epoch        | replicated_volume.py |
| `disk-watchdog`    | periodic read/modify/write of a block  | disk_watchdog.py     |
| `attach`           | an HE's volume as a local block device | attach.py            |

Agents are singletons per kind (one per process): `process` and `disk-watchdog` remember what
they started (children to reap, watchdog threads), so asking twice must give the same agent.
An `ocf:` or `lsb:` kind whose script is not installed on this node is an `UnknownAgent` (that
is what `ophiura cluster validate` reports as "missing agent"); `systemd:` units are not looked
up (a unit may be installed later; validate says so per resource).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ophiura.cluster.agents.base import Agent

BUILTIN_KINDS = (
    "command",
    "ip",
    "fs",
    "process",
    "volume",
    "replicated-volume",
    "disk-watchdog",
    "attach",
)


class UnknownAgent(LookupError):
    """No agent for this kind here; `kind` names it, the message says why."""

    def __init__(self, kind: str, why: str = "") -> None:
        super().__init__(f"no agent for kind {kind!r}" + (f": {why}" if why else ""))
        self.kind = kind


_lock = threading.RLock()  # replicated-volume makes the process agent inside
_agents: dict[str, Agent] = {}


def _make_builtin(kind: str) -> Agent:
    # Imported on demand: a kind's dependencies (iSCSI, replication) load only when used.
    factories: dict[str, Callable[[], Agent]] = {}
    if kind == "command":
        from ophiura.cluster.agents.command import CommandAgent

        factories[kind] = CommandAgent
    elif kind == "ip":
        from ophiura.cluster.agents.ip import IpAgent

        factories[kind] = IpAgent
    elif kind == "fs":
        from ophiura.cluster.agents.fs import FsAgent

        factories[kind] = FsAgent
    elif kind == "process":
        from ophiura.cluster.agents.process import ProcessAgent

        factories[kind] = ProcessAgent
    elif kind == "volume":
        from ophiura.cluster.agents.volume import VolumeAgent

        factories[kind] = VolumeAgent
    elif kind == "replicated-volume":
        from ophiura.cluster.agents.replicated_volume import ReplicatedVolumeAgent

        # shares the `process` agent: it knows the HE's pid and reaps it
        return ReplicatedVolumeAgent(_get("process", lambda: _make_builtin("process")))  # type: ignore[arg-type]
    elif kind == "attach":
        from ophiura.cluster.agents.attach import AttachAgent

        # shares the `process` agent: it runs nbdfuse (the fallback method) and reaps it
        return AttachAgent(_get("process", lambda: _make_builtin("process")))  # type: ignore[arg-type]
    elif kind == "disk-watchdog":
        from ophiura.cluster.agents.disk_watchdog import DiskWatchdogAgent

        factories[kind] = DiskWatchdogAgent
    return factories[kind]()


def _get(key: str, make: Callable[[], Agent]) -> Agent:
    with _lock:
        agent = _agents.get(key)
        if agent is None:
            agent = _agents[key] = make()
        return agent


def agent_for(kind: str) -> Agent:
    """The agent for `kind`; raises UnknownAgent naming the kind when there is none here."""
    if kind in BUILTIN_KINDS:
        return _get(kind, lambda: _make_builtin(kind))
    prefix, sep, _ = kind.partition(":")
    if sep and prefix == "ocf":
        from ophiura.cluster.agents.ocf import OcfAgent, OcfKind, OcfKindError

        try:
            OcfKind.parse(kind)
        except OcfKindError as exc:
            raise UnknownAgent(kind, str(exc)) from None
        agent = _get("ocf", OcfAgent)
        path = agent.path(kind)  # type: ignore[attr-defined]
        if not path.is_file():
            raise UnknownAgent(kind, f"no OCF agent at {path}")
        return agent
    if sep and prefix == "lsb":
        from ophiura.cluster.agents.lsb import LsbAgent

        agent = _get("lsb", LsbAgent)
        try:
            path = agent.path(kind)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise UnknownAgent(kind, str(exc)) from None
        if not path.is_file():
            raise UnknownAgent(kind, f"no init script {path}")
        return agent
    if sep and prefix == "systemd":
        from ophiura.cluster.agents.systemd import SystemdAgent, unit_name

        try:
            unit_name(kind)
        except ValueError as exc:
            raise UnknownAgent(kind, str(exc)) from None
        return _get("systemd", SystemdAgent)
    raise UnknownAgent(
        kind, f"known kinds: {', '.join(BUILTIN_KINDS)}, ocf:PROVIDER:TYPE, lsb:NAME, systemd:UNIT"
    )


def known_kinds() -> list[str]:
    """The built-in kinds, then every OCF agent and init script installed on this node.

    `systemd:UNIT` is accepted for any unit name and so is not listed one by one."""
    from ophiura.cluster.agents.lsb import installed_lsb_kinds
    from ophiura.cluster.agents.ocf import installed_ocf_kinds

    return [*BUILTIN_KINDS, *installed_ocf_kinds(), *installed_lsb_kinds()]
