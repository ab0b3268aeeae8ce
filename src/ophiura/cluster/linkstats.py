"""Heartbeat round-trip time and loss per (peer, link), sans I/O.

Heartbeats are one-way datagrams, so a round trip needs an echo: every heartbeat we send on a
link carries, for each peer, the newest sequence number we heard from it on that link and how
long ago (microseconds, our monotonic clock). When the peer gets it, RTT = now - when it sent
that sequence on that link - the time we held it (as NTP does): no clock is compared across
machines, and the hold, up to a heartbeat interval, is not counted as network time. The first
echo of a sequence is used only once (later heartbeats may repeat it while nothing newer came).

Loss: the sequence number grows by one per send (the same number on every link), so on one link
a jump from s to s+k means k-1 heartbeats lost on the way (or a blocked link on the sender,
which is a loss as far as this link is concerned). A new incarnation restarts the count.

Owned by the heartbeat thread, read by a scrape on the main thread: one lock, held for a few
dictionary operations.
"""

from __future__ import annotations

import threading
from collections import deque

from ophiura import metrics

# Round trips on a LAN are tens to hundreds of microseconds; a loaded machine or a WAN link
# hundreds of milliseconds; past a second the heartbeat deadline is what matters.
RTT_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
KEEP_SENT = 64  # sequences remembered per link for matching echoes (64 intervals)


class LinkStats:
    def __init__(self, peers: list[str], links: list[str]) -> None:
        self.peers = sorted(peers)
        self.links = links
        self._lock = threading.Lock()
        self._sent: list[dict[int, float]] = [{} for _ in links]  # link -> seq -> monotonic
        self._order: list[deque[int]] = [deque() for _ in links]
        self._heard: dict[tuple[str, int], tuple[int, int, float]] = {}  # (inc, seq, at)
        self._echoed: dict[tuple[str, int], int] = {}  # newest of our seqs used for an RTT
        self.rtt = metrics.Histogram(
            "ophiura_heartbeat_rtt_seconds",
            "Heartbeat round-trip time per peer and link (from echoed sequence numbers).",
            ["peer", "link"],
            RTT_BUCKETS,
        )
        self.rtt_last = metrics.Gauge(
            "ophiura_heartbeat_rtt_last_seconds",
            "The latest heartbeat round-trip time per peer and link.",
            ["peer", "link"],
        )
        self.received = metrics.Counter(
            "ophiura_heartbeat_received_total",
            "Heartbeats accepted per peer and link.",
            ["peer", "link"],
        )
        self.lost = metrics.Counter(
            "ophiura_heartbeat_lost_total",
            "Heartbeats missing per peer and link (gaps in the sequence numbers).",
            ["peer", "link"],
        )
        for p in self.peers:  # every series exists from the start: rate() needs a first point
            for ln in links:
                self.received.labels(p, ln)
                self.lost.labels(p, ln)
                self.rtt.labels(p, ln)

    def on_send(self, link: int, seq: int, now: float) -> None:
        with self._lock:
            sent, order = self._sent[link], self._order[link]
            sent[seq] = now
            order.append(seq)
            while len(order) > KEEP_SENT:
                sent.pop(order.popleft(), None)

    def echo(self, link: int, now: float) -> dict[str, tuple[int, int]]:
        """What to echo on `link`: peer -> (its newest seq heard here, microseconds held)."""
        with self._lock:
            return {
                p: (seq, max(0, round((now - at) * 1e6)))
                for (p, ln), (_, seq, at) in self._heard.items()
                if ln == link
            }

    def on_receive(
        self,
        peer: str,
        link: int,
        incarnation: int,
        seq: int,
        echo: tuple[int, int] | None,
        now: float,
    ) -> float | None:
        """Count one accepted heartbeat; the round-trip time it gave, if any."""
        name = self.links[link]
        rtt = None
        with self._lock:
            prev = self._heard.get((peer, link))
            if prev is not None and prev[0] == incarnation and seq > prev[1] + 1:
                self.lost.labels(peer, name).inc(seq - prev[1] - 1)
            self._heard[(peer, link)] = (incarnation, seq, now)
            self.received.labels(peer, name).inc()
            if echo is not None:
                our_seq, held_us = echo
                sent_at = self._sent[link].get(our_seq)
                if sent_at is not None and our_seq > self._echoed.get((peer, link), -1):
                    self._echoed[(peer, link)] = our_seq
                    rtt = max(0.0, now - sent_at - held_us / 1e6)
                    self.rtt.labels(peer, name).observe(rtt)
                    self.rtt_last.labels(peer, name).set(rtt)
        return rtt

    def families(self) -> list[metrics.Family]:
        with self._lock:
            return [m.family() for m in (self.rtt, self.rtt_last, self.received, self.lost)]
