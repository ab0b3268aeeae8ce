"""`python -m ophiura.ocf AGENT ACTION`: what the installed OCF agents run."""

from __future__ import annotations

import sys

from ophiura.ocf.runner import Agent, AgentInfo, run


def main(argv: list[str]) -> int:
    from ophiura.ocf import replicated_volume, target

    agents: dict[str, tuple[AgentInfo, Agent]] = {
        "target": (target.INFO, target.TargetAgent()),
        "replicated-volume": (replicated_volume.INFO, replicated_volume.OcfReplicatedVolume()),
    }
    if not argv or argv[0] not in agents:
        print(f"usage: python -m ophiura.ocf {{{'|'.join(agents)}}} ACTION", file=sys.stderr)
        return 2  # OCF_ERR_ARGS
    info, agent = agents[argv[0]]
    return run(info, agent, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
