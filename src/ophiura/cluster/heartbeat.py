"""Heartbeat packets, sans I/O: bytes in, `Heartbeat` out, and the reverse.

A packet carries what HATS's did (the sender's name, its state and the state of every job on
it) plus what a hostile or merely confused network needs: the cluster name, the link it was sent
on, an incarnation (random per daemon start), a sequence number that only grows, a challenge for
each peer and the echo of each peer's challenge, all under HMAC-SHA256 with a key derived from the
cluster secret.

No wall-clock time is on the wire or in any check: a node whose clock steps (NTP, a VM resumed,
an operator's `date -s`) or that restarts with its clock set back is heard exactly as before.

Why a replayed packet is never accepted (`ReplayGuard`). An attacker on a heartbeat link can
capture authenticated packets and send them again later, but cannot forge new ones. The receiver
R keeps, for each peer P, the incarnation it has accepted, the highest sequence seen on each link,
and a challenge `c` (63 random bits) that R sends to P in every heartbeat of its own. P echoes in
every heartbeat the last challenge it received from R.
1. Same incarnation: only a sequence higher than any seen on that link is accepted. A captured
   packet of the current incarnation is therefore older than what R already holds: refused.
2. Another incarnation (a restarted daemon, or a replay of an older one): accepted only if it
   echoes R's *current* challenge for P; accepting it replaces `c` with a fresh random value and
   sets every link's sequence mark of P to just below the accepted one. Any packet echoing `c`
   was built after R issued `c`, that is after R accepted P's previous incarnation; a node runs
   one daemon at a time, so that packet comes from the incarnation now accepted or a later one,
   never an older one. Once `c` is replaced, every packet carrying it (captured or not) fails
   this check forever, so an old incarnation can never come back, however many restarts ago.
3. A restarted receiver draws new challenges: no packet captured before it started echoes them,
   so a replay cannot make a dead peer look alive to a freshly started daemon either.
The challenge P echoes is learned from R's authenticated packets before R's incarnation is itself
accepted (both sides start this way). A replayed packet of an old incarnation of R can make P echo
a stale value for a moment: that delays P's acceptance by R until R's next genuine heartbeat
(liveness, which an attacker who can inject can also deny by flooding), but never makes a stale
packet accepted. Replays of the accepted incarnation teach nothing (refused by seq first), nor do
those of the last few it replaced (`retired`, bounded: safety never depends on it).
A restarted peer is accepted one heartbeat after it first hears from us.

Wire format (network order):  b"OPHB" | version u8 | link u8 | length u16 | JSON | HMAC[32]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"OPHB"
VERSION = 2  # 2: no wall-clock fields; challenge/echo instead of boot/sent
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
    incarnation: int  # random per daemon start
    seq: int  # grows by one per send, the same on every link
    state: str
    hierarchies: Mapping[str, HierReport] = field(default_factory=dict)
    admin: Mapping[str, Any] = field(default_factory=dict)  # gossiped admin state (daemon.py)
    challenges: Mapping[str, int] = field(default_factory=dict)  # peer -> our challenge to it
    echoes: Mapping[str, int] = field(default_factory=dict)  # peer -> its challenge we last heard
    # peer -> (newest seq heard from it on this link, microseconds held since): RTT (linkstats.py)
    echo: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    config: str = ""  # the sender's configuration digest (optional on the wire: "cf")


def encode(hb: Heartbeat, key: bytes) -> bytes:
    body = {
        "c": hb.cluster,
        "n": hb.node,
        "i": hb.incarnation,
        "s": hb.seq,
        "ch": dict(hb.challenges),
        "e": dict(hb.echoes),
        "st": hb.state,
        "h": {
            k: [v.state, v.gen, v.failures, v.resources] + ([1] if v.taken else [])
            for k, v in hb.hierarchies.items()
        },
        "a": dict(hb.admin),
    }
    if hb.echo:
        body["rt"] = {k: list(v) for k, v in hb.echo.items()}
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
    raw_e = body.get("rt", {})  # absent from older peers: no RTT from them
    if not isinstance(raw_e, dict) or not all(
        isinstance(v, list) and len(v) == 2 for v in raw_e.values()
    ):
        raise HeartbeatError("malformed", "echo is not an object of [seq, held] pairs")
    echo = {
        _str(k, "echo"): (_int(v[0], "echo seq"), _int(v[1], "echo held")) for k, v in raw_e.items()
    }
    return Heartbeat(
        cluster=_str(body.get("c"), "cluster"),
        node=_str(body.get("n"), "node"),
        link=link,
        incarnation=_int(body.get("i"), "incarnation"),
        seq=_int(body.get("s"), "seq"),
        state=_str(body.get("st"), "state"),
        hierarchies=hiers,
        admin=admin,
        challenges=_node_ints(body.get("ch", {}), "challenges"),
        echoes=_node_ints(body.get("e", {}), "echoes"),
        echo=echo,
        config=_str(body.get("cf", ""), "config"),
    )


def _node_ints(raw: Any, name: str) -> dict[str, int]:
    if not isinstance(raw, dict) or len(raw) > 256:
        raise HeartbeatError("malformed", f"{name} is not a small object")
    return {_str(k, name): _int(v, name) for k, v in raw.items()}


def new_challenge() -> int:
    """63 random bits, never 0 (0 on the wire would be "nothing heard yet")."""
    return secrets.randbits(63) | 1


RETIRED_KEPT = 8


@dataclass
class _Peer:
    """What we accept from one peer: its incarnation, the last seq per link, our challenge."""

    challenge: int = field(default_factory=new_challenge)
    incarnation: int | None = None
    seqs: dict[int, int] = field(default_factory=dict)  # link -> highest seq accepted
    floor: int = -1  # seqs at or below this are older than the packet that proved the incarnation
    heard: int = 0  # its challenge to us, as last learned (echoed in our heartbeats)
    # Incarnations it had before, newest last: their replays are refused before they can teach
    # us a stale challenge to echo (liveness only; the echo check alone keeps them out).
    retired: deque[int] = field(default_factory=lambda: deque(maxlen=RETIRED_KEPT))


class ReplayGuard:
    """Refuses replayed, misrouted or foreign heartbeats (see the module docstring for why a
    replay cannot pass). Not thread-safe: one owner. Uses no clock at all."""

    def __init__(self, cluster: str, me: str, peers: frozenset[str]) -> None:
        self.cluster = cluster
        self.me = me
        self.peers = peers
        self._peers: dict[str, _Peer] = {p: _Peer() for p in peers}

    def challenges(self) -> dict[str, int]:
        """Our current challenge to each peer: every heartbeat we send carries them."""
        return {p: s.challenge for p, s in self._peers.items()}

    def echoes(self) -> dict[str, int]:
        """Each peer's challenge to us as we last heard it: every heartbeat we send echoes them."""
        return {p: s.heard for p, s in self._peers.items() if s.heard}

    def check(self, hb: Heartbeat, arrived_on: int) -> None:
        """Raise HeartbeatError unless `hb` is fresh; on success remember it."""
        if hb.cluster != self.cluster:
            raise HeartbeatError("foreign-cluster", hb.cluster)
        if hb.node == self.me:
            raise HeartbeatError("own-name", "a packet claims to come from us")
        if hb.node not in self.peers:
            raise HeartbeatError("unknown-node", hb.node)
        if hb.link != arrived_on:
            raise HeartbeatError("wrong-link", f"names link {hb.link}, arrived on {arrived_on}")
        peer = self._peers[hb.node]
        offered = hb.challenges.get(self.me, 0)
        if hb.incarnation == peer.incarnation:
            last = peer.seqs.get(hb.link, peer.floor)
            if hb.seq <= last:
                raise HeartbeatError("replay", f"seq {hb.seq} <= {last}")
            peer.seqs[hb.link] = hb.seq
            if offered:
                peer.heard = offered
            return
        if hb.incarnation in peer.retired:
            raise HeartbeatError("stale-echo", f"incarnation {hb.incarnation:x} was replaced")
        # Another incarnation: learn its challenge first (it may be a peer that has not heard
        # us yet, whose next packet echoes ours), then ask for proof that it is not a replay.
        if offered:
            peer.heard = offered
        echo = hb.echoes.get(self.me, 0)
        if echo == 0 or (echo != peer.challenge and peer.incarnation is None):
            # Normal after either side starts: the peer has not heard this daemon yet (an echo
            # of our previous start looks the same, and so does a replay: refused either way).
            raise HeartbeatError("unechoed", f"incarnation {hb.incarnation:x} has not heard us yet")
        if echo != peer.challenge:
            raise HeartbeatError(
                "stale-echo", f"incarnation {hb.incarnation:x} echoes a retired challenge"
            )
        if peer.incarnation is not None:
            peer.retired.append(peer.incarnation)
        peer.incarnation = hb.incarnation
        peer.challenge = new_challenge()
        peer.floor = hb.seq - 1  # the same send on another link (same seq) is still accepted
        peer.seqs = {hb.link: hb.seq}

    def incarnation(self, node: str) -> int | None:
        """The incarnation of `node` we accept now (None before the first)."""
        return self._peers[node].incarnation
