"""The fault kinds (a table, so more can be added) and a seeded, replayable fault schedule.

A schedule is data: the seed, the run's knobs (cache on or off, a static link delay) and a list
of faults, each with its start time, kind, target and parameters. The nemesis only executes it,
so a saved schedule (`--replay FILE`) reruns exactly the same faults at the same offsets.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SE_NAMES = ("a", "b", "c")


@dataclass(frozen=True)
class FaultKind:
    """One row of the fault table: what it does, what it targets, how long it lasts."""

    name: str
    target: str  # "se" (one SE), "he" (the HEs), "none"
    min_s: float  # duration range of the fault before it heals
    max_s: float
    weight: float  # relative frequency in generated schedules
    needs: str = ""  # a run-time capability ("powerloss", "root"); "" = always available
    doc: str = ""


FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind("se-kill", "se", 0.3, 4.0, 3, doc="kill -9 one SE, restart it after a while"),
        FaultKind("se-pause", "se", 0.3, 3.0, 2, doc="SIGSTOP one SE, SIGCONT after a while"),
        FaultKind(
            "se-restart-recovering",
            "se",
            0.2,
            2.0,
            2,
            doc="kill -9 one SE, restart it, kill -9 again as soon as the HE says it is "
            "recovering, restart it again",
        ),
        FaultKind(
            "se-slow",
            "se",
            1.0,
            4.0,
            1,
            doc="one SE runs slowly: SIGSTOP 30 ms out of every 100 ms (the HE's link delay is "
            "fixed per run in its config, so the dynamic slowness is made at the process)",
        ),
        FaultKind(
            "se-powerloss",
            "se",
            0.3,
            2.0,
            2,
            needs="powerloss",
            doc="kill -9 one SE, then lose or tear (512-byte granularity) every write not covered "
            "by a completed fdatasync (python -m ophiura.replication.se.powerloss), restart it",
        ),
        FaultKind(
            "se-disk-full",
            "se",
            0.5,
            3.0,
            1,
            needs="root",
            doc="SE c's data dir is a small tmpfs; a ballast file fills it (ENOSPC), removed "
            "after a while",
        ),
        FaultKind(
            "se-eio",
            "se",
            0.5,
            3.0,
            1,
            needs="eio",
            doc="the SE's disk fails: every write, truncate and sync returns EIO while the fault "
            "lasts (modelled at the SE's disk-I/O seam, replication/se/disk_io.py: this kernel "
            "has no device-mapper error target); the SE fails the volume and re-derives it from "
            "its files when the HE re-attaches after the fault",
        ),
        FaultKind(
            "he-se-partition",
            "se",
            0.5,
            4.0,
            2,
            needs="links",
            doc="the HEs' link to one SE is held one way (requests or answers) or both ways "
            "(a TCP forwarder stops reading: the sender stalls as over a real partition)",
        ),
        FaultKind(
            "he-kill-takeover",
            "he",
            0.0,
            0.0,
            2,
            doc="kill -9 the active HE; a standby takes over; the killed one restarts as standby",
        ),
        FaultKind(
            "concurrent-takeover",
            "he",
            1.0,
            3.0,
            1,
            doc="two standbys run `takeover` at the same moment (the active HE killed -9 first "
            "or left running, by a coin toss); clients spread over every HE that says active",
        ),
        FaultKind(
            "resize-se-down",
            "se",
            0.5,
            3.0,
            1,
            doc="kill -9 one SE, grow the volume by 1 MiB through the active HE, restart the SE",
        ),
    )
}

# The cluster mode's faults (`ophiura torture --mode cluster`, torture/cluster.py): each hits one
# cluster node of the demo's topology ("owner" = whichever node runs the hierarchy then).
NODE_NAMES = ("n1", "n2", "n3")
CLUSTER_FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind(
            "node-crash",
            "node",
            2.0,
            8.0,
            3,
            doc="power loss: the node's cables pulled, kill -9 of everything it runs; it boots "
            "again (cables back, /run and the floating IP cleared, daemon started) after a while",
        ),
        FaultKind(
            "node-pause",
            "node",
            1.5,
            4.0,
            2,
            doc="SIGSTOP of the node's daemon, HE and app (longer than the 0.7 s heartbeat "
            "deadline), then SIGCONT",
        ),
        FaultKind(
            "link-cut-one",
            "node",
            1.0,
            5.0,
            2,
            doc="one heartbeat link (ring0 on net A or ring1 on net B) of the node cut "
            "(nftables drop on its bridge port), healed after a while",
        ),
        FaultKind(
            "link-cut-both",
            "node",
            1.5,
            5.0,
            2,
            doc="both heartbeat links of the node cut (its storage network S stays up: its HE "
            "can still reach the SEs, only the ballot fences it)",
        ),
        FaultKind(
            "partition",
            "node",
            1.5,
            5.0,
            2,
            doc="the node cut off every network (A, B and S) while its processes keep running",
        ),
        FaultKind(
            "node-restart",
            "node",
            0.5,
            3.0,
            2,
            doc="clean stop (SIGTERM: the daemon stops its hierarchies and leaves), started "
            "again after a while",
        ),
        FaultKind(
            "clock-step",
            "node",
            2.0,
            8.0,
            2,
            doc="the node daemon's wall clock stepped by up to an hour either way (the "
            "`step-clock` test hook, as `date -s` or an NTP step), stepped back after a while; "
            "membership must not notice",
        ),
    )
}
# seconds a node needs after a fault heals before it counts as healthy again (a booted
# daemon's start-up, a rejoin), in the schedule's quorum bookkeeping
CLUSTER_SETTLE_S = {"node-crash": 5.0, "node-restart": 5.0}
CLUSTER_OVERLAP_P = 0.15  # how often a fault may start while another node is still impaired


def kind_table(mode: str) -> dict[str, FaultKind]:
    """The fault table of a mode ("storage" or "cluster")."""
    return CLUSTER_FAULT_KINDS if mode == "cluster" else FAULT_KINDS


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the workload started
    kind: str
    target: str  # SE name, or "he"
    duration: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Schedule:
    seed: int
    duration: float  # seconds of faults (the workload runs as long, then healing and checks)
    cache: bool  # HE read cache on
    se_delay_ms: dict[str, float]  # static link delay per SE in the HE config
    faults: list[Fault]
    kinds: list[str]
    mode: str = "storage"  # "cluster": the faults are CLUSTER_FAULT_KINDS on nodes

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "duration": self.duration,
            "cache": self.cache,
            "se_delay_ms": self.se_delay_ms,
            "kinds": self.kinds,
            "faults": [asdict(f) for f in self.faults],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        try:
            faults = [Fault(**f) for f in data["faults"]]
            mode = str(data.get("mode", "storage"))
            if mode not in ("storage", "cluster"):
                raise ValueError(f"unknown mode {mode!r}")
            unknown = sorted({f.kind for f in faults} - set(kind_table(mode)))
            if unknown:
                raise ValueError(f"unknown fault kinds {unknown}")
            return cls(
                seed=int(data["seed"]),
                duration=float(data["duration"]),
                cache=bool(data["cache"]),
                se_delay_ms={str(k): float(v) for k, v in data.get("se_delay_ms", {}).items()},
                faults=faults,
                kinds=list(data.get("kinds", sorted({f.kind for f in faults}))),
                mode=mode,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a torture schedule: {exc}") from exc

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Schedule:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
        # a run's result file embeds its schedule: accept either
        return cls.from_json(data.get("schedule", data))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.faults:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out


def make_schedule(
    seed: int,
    duration: float,
    kinds: list[str],
    mean_gap: float = 1.5,
    cache: bool | None = None,
) -> Schedule:
    """Faults with exponential gaps (mean `mean_gap` s), so several overlap; everything drawn
    from one `random.Random(seed)`, so the same arguments give the same schedule."""
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad:
        raise ValueError(f"unknown fault kinds {bad} (known: {', '.join(FAULT_KINDS)})")
    rng = random.Random(seed)
    use_cache = rng.random() < 0.75 if cache is None else cache
    slow = rng.choice(SE_NAMES)
    se_delay = {slow: rng.choice((0.0, 1.0, 3.0))}
    weighted = [FAULT_KINDS[k] for k in kinds if FAULT_KINDS[k].weight > 0]
    faults: list[Fault] = []
    t = rng.uniform(0.5, 1.5)
    while weighted and t < duration:
        kind = rng.choices(weighted, [k.weight for k in weighted])[0]
        dur = round(rng.uniform(kind.min_s, kind.max_s), 3)
        target = rng.choice(SE_NAMES) if kind.target == "se" else kind.target
        params: dict[str, Any] = {}
        if kind.name == "se-disk-full":
            target = "c"  # the one SE whose data dir is a small filesystem
        if kind.name == "se-powerloss":
            params = {"mode": rng.choice(("lose", "tear")), "seed": rng.randrange(1 << 30)}
        if kind.name == "he-se-partition":
            params = {"direction": rng.choice(("to-se", "to-he", "both"))}
        if kind.name == "concurrent-takeover":
            params = {"kill_active": rng.random() < 0.5}
        faults.append(Fault(round(t, 3), kind.name, target, dur, params))
        t += rng.expovariate(1.0 / mean_gap)
    return Schedule(seed, duration, use_cache, se_delay, faults, list(kinds))


def default_kinds() -> list[str]:
    return [k.name for k in FAULT_KINDS.values() if k.weight > 0]


def default_cluster_kinds() -> list[str]:
    return [k.name for k in CLUSTER_FAULT_KINDS.values() if k.weight > 0]


def make_cluster_schedule(
    seed: int, duration: float, kinds: list[str], mean_gap: float = 5.0
) -> Schedule:
    """Cluster faults with exponential gaps, each on one node. A quorum (two of three nodes)
    stays healthy most of the time: a fault starts while another node is still impaired (its
    fault plus the settling time after it) only with probability CLUSTER_OVERLAP_P, and never
    with two impaired already; otherwise it waits for the impaired node to settle. The target
    is a named node or "owner" (resolved when the fault starts; never an impaired node)."""
    bad = [k for k in kinds if k not in CLUSTER_FAULT_KINDS]
    if bad:
        raise ValueError(f"unknown fault kinds {bad} (known: {', '.join(CLUSTER_FAULT_KINDS)})")
    rng = random.Random(seed)
    weighted = [CLUSTER_FAULT_KINDS[k] for k in kinds if CLUSTER_FAULT_KINDS[k].weight > 0]
    faults: list[Fault] = []
    impaired: list[float] = []  # when each still-impaired node is healthy again
    t = rng.uniform(1.0, 3.0)
    while weighted and t < duration:
        impaired = [end for end in impaired if end > t]
        if len(impaired) >= 2 or (impaired and rng.random() >= CLUSTER_OVERLAP_P):
            t = min(impaired) + rng.uniform(0.2, 1.0)
            continue
        kind = rng.choices(weighted, [k.weight for k in weighted])[0]
        dur = round(rng.uniform(kind.min_s, kind.max_s), 3)
        target = "owner" if rng.random() < 0.5 else rng.choice(NODE_NAMES)
        params: dict[str, Any] = {}
        if kind.name == "link-cut-one":
            params = {"net": rng.choice(("a", "b"))}
        elif kind.name == "clock-step":
            size = rng.choice((1.0, 31.0, 61.0, 3600.0)) * rng.uniform(1.0, 1.2)
            params = {"seconds": round(rng.choice((-1, 1)) * size, 3)}
        faults.append(Fault(round(t, 3), kind.name, target, dur, params))
        impaired.append(t + dur + CLUSTER_SETTLE_S.get(kind.name, 2.0))
        t += rng.expovariate(1.0 / mean_gap)
    return Schedule(seed, duration, False, {}, faults, list(kinds), mode="cluster")
