"""Heartbeat packets, sans I/O: bytes in, `Heartbeat` out, and the reverse.

A packet carries what HATS's did (the sender's name, its state and the state of every job on
it) plus what a hostile or merely confused network needs: the cluster name, the link it was sent
on, an incarnation (random per daemon start, with the start time so a newer daemon wins) and a
sequence number that only grows, all under HMAC-SHA256 with a key derived from the cluster
secret. `ReplayGuard` refuses an old incarnation, a sequence already seen on that link, a packet
stamped too far from our clock, and a packet that arrived on a link other than the one it names.

Wire format (network order):  b"OPHB" | version u8 | link u8 | length u16 | JSON | HMAC[32]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"OPHB"
VERSION = 1
HEADER = struct.Struct(">4sBBH")
MAC_LEN = 32
MAX_PAYLOAD = 60_000


class HeartbeatError(Exception):
    """A packet was refused; `reason` is a short stable word for counters and rate limits."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class HierReport:
    """One hierarchy as a node reports it: its state there, ownership generation, fail count."""

    state: str
    gen: int = 0
    failures: int = 0
    resources: str = ""  # one RESOURCE_CODES letter per resource, in configuration order
    taken: bool = False  # its own-able resource was taken by another node (sent only when set)


# Resource states in one letter each, so a heartbeat carries every resource's state (as HATS's
# did) and stays within one datagram for dozens of hierarchies.
RESOURCE_CODES = {
    "stopped": "s",
    "starting": "b",
    "running": "r",
    "failed": "f",
    "stopping": "e",
    "stop-failed": "x",
}
CODE_RESOURCES = {v: k for k, v in RESOURCE_CODES.items()}


@dataclass(frozen=True)
class Heartbeat:
    cluster: str
    node: str
    link: int
    boot: int  # daemon start, wall-clock ns: a restarted daemon outranks its old self
    incarnation: int  # random per daemon start
    seq: int
    sent: float  # wall clock, for the skew/replay window
    state: str
    hierarchies: Mapping[str, HierReport] = field(default_factory=dict)
    admin: Mapping[str, Any] = field(default_factory=dict)  # gossiped admin state (daemon.py)
    config: str = ""  # the sender's configuration digest (optional on the wire: "cf")


def encode(hb: Heartbeat, key: bytes) -> bytes:
    body = {
        "c": hb.cluster,
        "n": hb.node,
        "b": hb.boot,
        "i": hb.incarnation,
        "s": hb.seq,
        "t": hb.sent,
        "st": hb.state,
        "h": {
            k: [v.state, v.gen, v.failures, v.resources] + ([1] if v.taken else [])
            for k, v in hb.hierarchies.items()
        },
        "a": dict(hb.admin),
    }
    if hb.config:
        body["cf"] = hb.config
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    if len(payload) > MAX_PAYLOAD:
        raise HeartbeatError("too-big", f"{len(payload)} bytes of state")
    head = HEADER.pack(MAGIC, VERSION, hb.link, len(payload))
    mac = hmac.new(key, head + payload, hashlib.sha256).digest()
    return head + payload + mac


def _int(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 64:
        raise HeartbeatError("malformed", f"{name} is not an unsigned 64-bit integer")
    return v


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str) or len(v) > 256:
        raise HeartbeatError("malformed", f"{name} is not a short string")
    return v


def decode(data: bytes, key: bytes) -> Heartbeat:
    """Authenticate and parse one datagram; HeartbeatError for anything else."""
    if len(data) < HEADER.size + MAC_LEN:
        raise HeartbeatError("short", f"{len(data)} bytes")
    magic, version, link, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HeartbeatError("magic")
    if version != VERSION:
        raise HeartbeatError("version", str(version))
    if len(data) != HEADER.size + length + MAC_LEN:
        raise HeartbeatError("length", f"header says {length}, datagram has {len(data)}")
    signed, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), mac):
        raise HeartbeatError("bad-mac")
    # Authenticated from here on; still never trust the shape (a peer of another version).
    try:
        body = json.loads(signed[HEADER.size :])
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeartbeatError("malformed", f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HeartbeatError("malformed", "not an object")
    sent = body.get("t")
    if not isinstance(sent, int | float) or isinstance(sent, bool):
        raise HeartbeatError("malformed", "no send time")
    hiers: dict[str, HierReport] = {}
    raw_h = body.get("h", {})
    if not isinstance(raw_h, dict):
        raise HeartbeatError("malformed", "hierarchies is not an object")
    for name, v in raw_h.items():
        if not isinstance(v, list) or len(v) not in (3, 4, 5):
            raise HeartbeatError("malformed", f"hierarchy {name!r}")
        hiers[_str(name, "hierarchy")] = HierReport(
            _str(v[0], "state"),
            _int(v[1], "gen"),
            _int(v[2], "failures"),
            _str(v[3], "resources") if len(v) >= 4 else "",
            _int(v[4], "taken") == 1 if len(v) == 5 else False,
        )
    admin = body.get("a", {})
    if not isinstance(admin, dict):
        raise HeartbeatError("malformed", "admin is not an object")
    return Heartbeat(
        cluster=_str(body.get("c"), "cluster"),
        node=_str(body.get("n"), "node"),
        link=link,
        boot=_int(body.get("b"), "boot"),
        incarnation=_int(body.get("i"), "incarnation"),
        seq=_int(body.get("s"), "seq"),
        sent=float(sent),
        state=_str(body.get("st"), "state"),
        hierarchies=hiers,
        admin=admin,
        config=_str(body.get("cf", ""), "config"),
    )


@dataclass
class _Track:
    boot: int
    incarnation: int
    seq: int


class ReplayGuard:
    """Refuses stale, replayed, misrouted or foreign heartbeats. Not thread-safe: one owner."""

    def __init__(self, cluster: str, me: str, peers: frozenset[str], max_skew: float) -> None:
        self.cluster = cluster
        self.me = me
        self.peers = peers
        self.max_skew = max_skew
        self._tracks: dict[tuple[str, int], _Track] = {}

    def check(self, hb: Heartbeat, arrived_on: int, now_wall: float) -> None:
        """Raise HeartbeatError unless `hb` is fresh; on success remember it."""
        if hb.cluster != self.cluster:
            raise HeartbeatError("foreign-cluster", hb.cluster)
        if hb.node == self.me:
            raise HeartbeatError("own-name", "a packet claims to come from us")
        if hb.node not in self.peers:
            raise HeartbeatError("unknown-node", hb.node)
        if hb.link != arrived_on:
            raise HeartbeatError("wrong-link", f"names link {hb.link}, arrived on {arrived_on}")
        if self.max_skew > 0 and abs(now_wall - hb.sent) > self.max_skew:
            raise HeartbeatError("stale", f"stamped {now_wall - hb.sent:+.1f} s off our clock")
        key = (hb.node, hb.link)
        track = self._tracks.get(key)
        if track is not None:
            if hb.incarnation == track.incarnation:
                if hb.seq <= track.seq:
                    raise HeartbeatError("replay", f"seq {hb.seq} <= {track.seq}")
            elif (hb.boot, hb.incarnation) < (track.boot, track.incarnation):
                raise HeartbeatError("old-incarnation", f"boot {hb.boot} < {track.boot}")
        self._tracks[key] = _Track(hb.boot, hb.incarnation, hb.seq)
