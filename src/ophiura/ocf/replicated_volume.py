"""`ocf:ophiura:replicated-volume`: a replicated volume's HE as a Pacemaker resource.

The logic is the cluster's built-in `replicated-volume` agent (ophiura.cluster.agents
.replicated_volume), called as is: start in `process` mode runs `ophiura he --config CONFIG
--control CONTROL` and waits until its control API says active with the volume served and not
fenced; `takeover` mode takes over an HE already running here as a standby; monitor reads the
control API's status. Only the process spawning differs (`DaemonAgent`: the HE must outlive the
OCF action process), and the pidfile can be named.
"""

from __future__ import annotations

import os
from pathlib import Path

from ophiura.cluster.agents.base import Outcome, Resource
from ophiura.cluster.agents.params import safe_name, state_dir
from ophiura.cluster.agents.replicated_volume import ReplicatedVolumeAgent
from ophiura.ocf.runner import AgentInfo, Param
from ophiura.ocf.spawn import DaemonAgent

INFO = AgentInfo(
    name="replicated-volume",
    shortdesc="ophiura replicated volume (its HE, holding the volume's epoch)",
    longdesc=(
        "Runs or takes over an ophiura HE serving one replicated volume. Starting it raises the "
        "volume's epoch on a majority of SEs, which fences the previous HE: starting is taking "
        "ownership. Monitor asks the HE's control API: active, serving the volume, not fenced."
    ),
    params=(
        Param("control", "HOST:PORT of this node's HE control API", required=True, unique=True),
        Param("volume", "volume name", required=True),
        Param("mode", "process (run the HE) or takeover (take over a standby)", default="process"),
        Param("config", "HE configuration file (TOML; required in process mode)"),
        Param("secret_file", "shared secret file (default ophiura's)"),
        Param("args", "extra `ophiura he` arguments, e.g. --standby"),
        Param("stop_command", "command run on stop in takeover mode (restart the HE as standby)"),
        Param("grace", "seconds between SIGTERM and SIGKILL on stop", type="integer", default="10"),
        Param("log", "HE log file (default next to the pidfile)"),
        Param("cwd", "HE working directory", default="/"),
        Param("pidfile", "pidfile (default $HA_RSCTMP/ophiura-rv-<instance>.pid)"),
    ),
)


def agent_for(resource: Resource) -> ReplicatedVolumeAgent:
    rsctmp = Path(os.environ.get("HA_RSCTMP") or state_dir())
    pidfile = (
        resource.params.get("pidfile") or rsctmp / f"ophiura-rv-{safe_name(resource.name)}.pid"
    )
    return ReplicatedVolumeAgent(processes=DaemonAgent(rsctmp, Path(pidfile)))


def with_log(resource: Resource) -> Resource:
    """The HE's log next to its pidfile unless `log` says where."""
    if resource.params.get("log"):
        return resource
    pid = agent_for(resource).processes.pidfile(resource)
    return Resource(
        name=resource.name,
        kind=resource.kind,
        params={**resource.params, "log": str(pid.with_suffix(".log"))},
        monitor_depth=resource.monitor_depth,
    )


class OcfReplicatedVolume:
    """Each action: the built-in agent with this resource's pidfile."""

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        resource = with_log(resource)
        return await agent_for(resource).start(resource, timeout)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        resource = with_log(resource)
        return await agent_for(resource).stop(resource, timeout)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        resource = with_log(resource)
        return await agent_for(resource).monitor(resource, timeout)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        resource = with_log(resource)
        return await agent_for(resource).validate(resource, timeout)
