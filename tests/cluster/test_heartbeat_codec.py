"""Heartbeat codec and replay guard: round trips, refusals, and a fuzzed decoder."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ophiura.cluster import heartbeat as hb
from ophiura.cluster.heartbeat import Heartbeat, HeartbeatError, HierReport, ReplayGuard

KEY = b"k" * 32


def packet(**kw: object) -> Heartbeat:
    base = dict(
        cluster="c",
        node="n2",
        link=0,
        incarnation=7,
        seq=1,
        state="online",
        hierarchies={"web": HierReport("running", 3, 1)},
        admin={"v": 1},
        challenges={"n1": 11, "n3": 13},
        echoes={"n1": 21},
    )
    base.update(kw)
    return Heartbeat(**base)  # type: ignore[arg-type]


def guard() -> ReplayGuard:
    return ReplayGuard("c", "n1", frozenset({"n2", "n3"}))


ECHO = -1  # in a test packet: "echo the guard's current challenge to this node"


def check(g: ReplayGuard, p: Heartbeat) -> None:
    """Check `p`, filling an ECHO placeholder with the challenge `g` holds for its sender now."""
    if p.echoes.get("n1") == ECHO:
        p = dataclasses.replace(p, echoes={"n1": g.challenges()[p.node]})
    g.check(p, p.link)


def proven(**kw: object) -> Heartbeat:
    """A packet of a (new) incarnation that echoes the receiver's current challenge."""
    return packet(echoes={"n1": ECHO}, **kw)


def test_round_trip() -> None:
    p = packet()
    assert hb.decode(hb.encode(p, KEY), KEY) == p


def test_round_trip_taken() -> None:
    """The taken flag (own-able resource lost to another node) survives the wire."""
    p = packet(hierarchies={"web": HierReport("failed", 3, 1, "fs", taken=True)})
    assert hb.decode(hb.encode(p, KEY), KEY).hierarchies["web"].taken


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:10], "short"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x09" + b[5:], "version"),
        (lambda b: b + b"x", "length"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "bad-mac"),
        (lambda b: b[:12] + bytes([b[12] ^ 1]) + b[13:], "bad-mac"),
    ],
    ids=["short", "magic", "version", "length", "mac-bit", "payload-bit"],
)
def test_refusals(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HeartbeatError) as exc:
        hb.decode(mutate(hb.encode(packet(), KEY)), KEY)
    assert exc.value.reason == reason


def test_wrong_key_is_bad_mac() -> None:
    with pytest.raises(HeartbeatError, match="bad-mac"):
        hb.decode(hb.encode(packet(), KEY), b"other-key")


GUARD_CASES = [
    ("fresh", [proven(seq=1), packet(seq=2)], None),
    ("replayed seq", [proven(seq=5), packet(seq=5)], "replay"),
    ("older seq", [proven(seq=5), packet(seq=4)], "replay"),
    ("first packet has not heard us", [packet(echoes={})], "unechoed"),
    ("echo of another start of ours: not heard us yet", [packet(echoes={"n1": 5})], "unechoed"),
    (
        "echo of a challenge we never issued",
        [proven(seq=1), packet(incarnation=9, echoes={"n1": 12345})],
        "stale-echo",
    ),
    (
        "restart: new incarnation, seq from 1",
        [proven(seq=50), proven(incarnation=9)],
        None,
    ),
    (
        "restart with a smaller random id is just as new",
        [proven(incarnation=9, seq=50), proven(incarnation=3)],
        None,
    ),
    (
        "old incarnation replayed: its echo is retired",
        [proven(seq=1), proven(incarnation=9), packet(seq=99)],
        "stale-echo",
    ),
    (
        "the same send on the other link is accepted after the proof",
        [proven(seq=8), packet(seq=8, link=1)],
        None,
    ),
    (
        "a packet sent before the proof is refused on every link",
        [proven(seq=8), packet(seq=7, link=1)],
        "replay",
    ),
    ("links tracked apart", [proven(seq=3), packet(seq=4, link=1), packet(seq=4)], None),
    ("foreign cluster", [packet(cluster="other")], "foreign-cluster"),
    ("unknown node", [packet(node="n9")], "unknown-node"),
    ("our own name", [packet(node="n1")], "own-name"),
]


@pytest.mark.parametrize(
    ("case", "packets", "reason"), GUARD_CASES, ids=[c[0] for c in GUARD_CASES]
)
def test_replay_guard(case: str, packets: list[Heartbeat], reason: str | None) -> None:
    g = guard()
    for p in packets[:-1]:
        check(g, p)
    last = packets[-1]
    if reason is None:
        check(g, last)
    else:
        with pytest.raises(HeartbeatError) as exc:
            check(g, last)
        assert exc.value.reason == reason


def test_old_proof_is_retired_by_any_newer_incarnation() -> None:
    """Incarnation 7's packet carried the challenge that proved it; after 9 is accepted, that very
    packet (captured, replayed) is refused, as is one of 7 that echoed the challenge 9 consumed."""
    g = guard()
    c0 = g.challenges()["n2"]
    old = packet(echoes={"n1": c0}, seq=1)
    g.check(old, 0)
    c1 = g.challenges()["n2"]
    assert c1 != c0
    old_later = packet(echoes={"n1": c1}, seq=2)  # 7 learned c1 and kept echoing it
    g.check(old_later, 0)
    g.check(packet(incarnation=9, echoes={"n1": c1}, seq=1), 0)  # restart, proven with c1
    for replay in (old, old_later, dataclasses.replace(old_later, seq=10**6)):
        with pytest.raises(HeartbeatError) as exc:
            g.check(replay, 0)
        assert exc.value.reason == "stale-echo"
    assert g.incarnation("n2") == 9


def test_guard_learns_the_challenge_to_echo() -> None:
    g = guard()
    with pytest.raises(HeartbeatError, match="unechoed"):
        g.check(packet(echoes={}, challenges={"n1": 77}), 0)
    assert g.echoes() == {"n2": 77}  # learned before the peer is proven: both sides start so
    g.check(packet(echoes={"n1": g.challenges()["n2"]}, challenges={"n1": 78}), 0)
    assert g.echoes() == {"n2": 78}
    with pytest.raises(HeartbeatError, match="replay"):  # a replay teaches nothing
        g.check(packet(seq=1, challenges={"n1": 79}), 0)
    assert g.echoes() == {"n2": 78}


def test_a_replaced_incarnation_teaches_no_stale_challenge() -> None:
    g = guard()
    g.check(packet(echoes={"n1": g.challenges()["n2"]}), 0)  # incarnation 7, proven
    g.check(packet(incarnation=9, echoes={"n1": g.challenges()["n2"]}, challenges={"n1": 90}), 0)
    with pytest.raises(HeartbeatError, match="stale-echo"):  # 7, replayed with its old challenge
        g.check(packet(seq=50, challenges={"n1": 70}), 0)
    assert g.echoes() == {"n2": 90}


def test_a_restarted_receiver_refuses_every_captured_packet() -> None:
    """New guard, new challenges: nothing captured before it existed echoes them."""
    first = guard()
    captured = [packet(echoes={"n1": first.challenges()["n2"]}, seq=s) for s in (1, 2, 3)]
    first.check(captured[0], 0)
    again = guard()
    for p in captured:
        with pytest.raises(HeartbeatError) as exc:
            again.check(p, 0)
        assert exc.value.reason == "unechoed"  # as a peer that has not heard it yet
    assert again.incarnation("n2") is None


def test_packet_replayed_on_another_link_is_refused() -> None:
    with pytest.raises(HeartbeatError, match="wrong-link"):
        guard().check(packet(link=0), 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_garbage_never_crashes(data: bytes) -> None:
    with contextlib.suppress(HeartbeatError):
        hb.decode(data, KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 255))
def test_fuzz_authenticated_garbage_never_crashes(payload: bytes, link: int) -> None:
    """Even a correctly MAC'd packet (a buggy peer with the secret) only raises HeartbeatError."""
    import hashlib
    import hmac

    head = hb.HEADER.pack(hb.MAGIC, hb.VERSION, link, len(payload))
    data = head + payload + hmac.new(KEY, head + payload, hashlib.sha256).digest()
    with contextlib.suppress(HeartbeatError):
        hb.decode(data, KEY)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*list("cnishae"), "st", "ch"]), json_values, max_size=9))
def test_fuzz_authenticated_json_never_crashes(body: dict) -> None:  # type: ignore[type-arg]
    import hashlib
    import hmac
    import json

    payload = json.dumps(body).encode()
    head = hb.HEADER.pack(hb.MAGIC, hb.VERSION, 0, len(payload))
    data = head + payload + hmac.new(KEY, head + payload, hashlib.sha256).digest()
    with contextlib.suppress(HeartbeatError):
        hb.decode(data, KEY)


def test_too_big_state_is_refused_at_encode() -> None:
    big = {f"h{i}": HierReport("running" * 20, i) for i in range(1000)}
    with pytest.raises(HeartbeatError, match="too-big"):
        hb.encode(dataclasses.replace(packet(), hierarchies=big), KEY)
