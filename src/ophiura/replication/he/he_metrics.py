"""What `ophiura he --metrics` exposes: per-volume I/O, write queue, cache, and per-SE replicas.

Only `IoStats` does per-I/O work: the host-visible latency of each read and write (one histogram
observe, a bisect and two additions) and its bytes. Every other number is read at scrape time
from what the volume keeps anyway (sequence numbers, the ack trackers, queue and cache
accounting, replica states and recovery progress), so nothing is stored twice and the I/O path
does no more than before. Operation counts are the histograms' counts (a completed op is timed
exactly once), exported also as `ophiura_he_volume_ops_total` for rate() panels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura import __version__, metrics
from ophiura.replication.he.se_session import ReplicaState

if TYPE_CHECKING:
    from ophiura.replication.he.host_element import HostElement

# Host-visible latency: a cached read (~20 us) to a write stuck behind a slow SE (seconds).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
ROLES = ("starting", "standby", "active")


class IoStats:
    """Per-volume host I/O: completed reads and writes, their bytes and latencies (one loop)."""

    __slots__ = ("read_bytes", "read_lat", "write_bytes", "write_lat")

    def __init__(self) -> None:
        self.read_lat = metrics._Hist(LATENCY_BUCKETS)
        self.write_lat = metrics._Hist(LATENCY_BUCKETS)
        self.read_bytes = 0
        self.write_bytes = 0


def collect(he: HostElement) -> list[metrics.Family]:
    F = metrics.Family
    info = F("ophiura_he_info", "This HE's version (always 1).", "gauge")
    info.add(1, version=__version__)
    role = F("ophiura_he_role", "1 for this HE's current role.", "gauge")
    for r in ROLES:
        role.add(1 if he.role == r else 0, role=r)
    connected = F("ophiura_he_se_connected", "1 if the session to this SE is connected.", "gauge")
    rtt = F("ophiura_he_se_rtt_seconds", "Last measured round trip to this SE.", "gauge")
    for s in he.sessions:
        connected.add(1 if s.connected else 0, se=s.name)
        if s.connected and s.rtt != float("inf"):
            rtt.add(s.rtt, se=s.name)
    ops = F("ophiura_he_volume_ops_total", "Completed host reads and writes.", "counter")
    nbytes = F("ophiura_he_volume_bytes_total", "Bytes of completed host I/O.", "counter")
    lat = F(
        "ophiura_he_volume_latency_seconds",
        "Host-visible latency of completed reads and writes (a write: until Q SEs made it "
        "durable).",
        "histogram",
    )
    seq = F(
        "ophiura_he_volume_seq",
        "Sequence numbers: latest (assigned) and acked (acknowledged to the host).",
        "gauge",
    )
    ro = F(
        "ophiura_he_volume_read_only", "1 if writes are refused (quorum lost or fenced).", "gauge"
    )
    fenced = F("ophiura_he_volume_fenced", "1 if another HE took the volume over.", "gauge")
    q_used = F("ophiura_he_write_queue_bytes", "Bytes held in the write queue.", "gauge")
    q_cap = F("ophiura_he_write_queue_capacity_bytes", "Write queue capacity.", "gauge")
    q_fill = F("ophiura_he_write_queue_fill_ratio", "Write queue used / capacity.", "gauge")
    c_hits = F("ophiura_he_cache_hits_total", "Reads served from the read cache.", "counter")
    c_miss = F("ophiura_he_cache_misses_total", "Reads the cache could not serve.", "counter")
    c_used = F("ophiura_he_cache_bytes", "Bytes held in the read cache.", "gauge")
    state = F("ophiura_he_replica_state", "1 for each replica's current state.", "gauge")
    acked = F("ophiura_he_replica_acked_seq", "Every write <= this is acked by this SE.", "gauge")
    lag = F(
        "ophiura_he_replica_lag_writes",
        "The volume's latest seq minus this SE's acked seq (0: caught up).",
        "gauge",
    )
    rdone = F(
        "ophiura_he_replica_recovery_done",
        "Progress of the current or last recovery (writes for quick/replay, bytes for full).",
        "gauge",
    )
    rtotal = F("ophiura_he_replica_recovery_total", "Size of that recovery (same unit).", "gauge")
    recs = F("ophiura_he_replica_recoveries_total", "Recoveries started, per kind.", "counter")
    fails = F("ophiura_he_replica_failures_total", "Replica failures, per event.", "counter")
    for name, ev in he.volumes.items():
        v, io = ev.data, ev.data.io
        for op, h, b in (
            ("read", io.read_lat, io.read_bytes),
            ("write", io.write_lat, io.write_bytes),
        ):
            counts = list(h.counts)
            ops.add(sum(counts), volume=name, op=op)
            nbytes.add(b, volume=name, op=op)
            lat.add_histogram(LATENCY_BUCKETS, counts, h.sum, volume=name, op=op)
        latest = v.latest_seq
        seq.add(latest, volume=name, kind="latest")
        seq.add(v.acked_seq, volume=name, kind="acked")
        ro.add(1 if v.read_only else 0, volume=name)
        fenced.add(1 if v.fenced else 0, volume=name)
        q_used.add(v.queue.used, volume=name)
        q_cap.add(v.queue.capacity, volume=name)
        q_fill.add(v.queue.fill, volume=name)
        c_hits.add(v.cache.stats.hits, volume=name)
        c_miss.add(v.cache.stats.misses, volume=name)
        c_used.add(v.cache.used, volume=name)
        for r in v.replicas.values():
            labels = {"volume": name, "se": r.name}
            for st in ReplicaState:
                state.add(1 if r.state is st else 0, **labels, state=st.value)
            acked.add(r.tracker.contiguous, **labels)
            lag.add(max(0, latest - r.tracker.contiguous), **labels)
            done, total = r.progress
            if r.state is ReplicaState.RECOVERING_QUICK:
                done = max(0, r.tracker.contiguous - r.recovery_start)
            rdone.add(done, **labels)
            rtotal.add(total, **labels)
            for kind, n in sorted(r.recoveries.items()):
                recs.add(n, **labels, kind=kind)
            for event, n in sorted(r.failures.items()):
                fails.add(n, **labels, event=event)
    return [
        *(info, role, connected, rtt, ops, nbytes, lat, seq, ro, fenced, q_used, q_cap, q_fill),
        *(c_hits, c_miss, c_used, state, acked, lag, rdone, rtotal, recs, fails),
    ]


def render(he: HostElement) -> str:
    return metrics.render(collect(he))
