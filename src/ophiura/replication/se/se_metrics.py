"""What `ophiura se --metrics` exposes: per volume state, seqs, ballot, recovery, commit batches.

All read at scrape time from the volumes' own status (the same numbers STATUS answers an HE),
so the SE's I/O path does no per-write metrics work; the one counter added for this,
`commit_batches`, is one addition per disk commit (a batch of writes and one sync).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura import __version__, metrics
from ophiura.replication.se.lifecycle import VolState

if TYPE_CHECKING:
    from ophiura.replication.se.storage_element import StorageElement

STATES = (*(s.value for s in VolState), "gap")


def collect(se: StorageElement) -> list[metrics.Family]:
    F = metrics.Family
    info = F("ophiura_se_info", "This SE: name and version (always 1).", "gauge")
    info.add(1, se=se.name, version=__version__)
    conns = F("ophiura_se_connections", "Open connections (HEs and peer SEs).", "gauge")
    conns.add(len(se._connections))
    state = F(
        "ophiura_se_volume_state",
        "1 for each volume's current state (gap: up, waiting for a resend to fill a hole).",
        "gauge",
    )
    applied = F(
        "ophiura_se_volume_applied_seq", "Every write <= this is durable in the data file.", "gauge"
    )
    epoch = F(
        "ophiura_se_volume_epoch", "Epoch of the ballot this SE obeys for the volume.", "gauge"
    )
    size = F("ophiura_se_volume_size_bytes", "Volume size.", "gauge")
    rdone = F("ophiura_se_volume_recovery_done_bytes", "Current recovery: bytes done.", "gauge")
    rtotal = F("ophiura_se_volume_recovery_total_bytes", "Current recovery: bytes in all.", "gauge")
    batches = F(
        "ophiura_se_volume_commit_batches_total",
        "Disk commits (one log write and one sync each, for a batch of writes).",
        "counter",
    )
    for name, vol in sorted(se.volumes.items()):
        s = vol.status()
        current = str(s["state"])
        for st in STATES:
            state.add(1 if st == current else 0, volume=name, state=st)
        applied.add(s["applied_seq"], volume=name)
        epoch.add(s["epoch"], volume=name)
        size.add(s["size"], volume=name)
        rdone.add(s["recovery_done"], volume=name)
        rtotal.add(s["recovery_total"], volume=name)
        batches.add(vol.commit_batches, volume=name)
    return [info, conns, state, applied, epoch, size, rdone, rtotal, batches]


def render(se: StorageElement) -> str:
    return metrics.render(collect(se))
