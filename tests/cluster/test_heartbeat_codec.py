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
        boot=100,
        incarnation=7,
        seq=1,
        sent=1000.0,
        state="online",
        hierarchies={"web": HierReport("running", 3, 1)},
        admin={"v": 1},
    )
    base.update(kw)
    return Heartbeat(**base)  # type: ignore[arg-type]


def guard() -> ReplayGuard:
    return ReplayGuard("c", "n1", frozenset({"n2", "n3"}), max_skew=30.0)


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
    ("fresh", [packet(seq=1), packet(seq=2)], None),
    ("replayed seq", [packet(seq=5), packet(seq=5)], "replay"),
    ("older seq", [packet(seq=5), packet(seq=4)], "replay"),
    (
        "restart: new incarnation, seq from 1",
        [packet(seq=50), packet(boot=200, incarnation=9)],
        None,
    ),
    (
        "old incarnation replayed",
        [packet(boot=200, incarnation=9), packet(seq=99)],
        "old-incarnation",
    ),
    ("links tracked apart", [packet(seq=3), packet(seq=3, link=1)], None),
    ("foreign cluster", [packet(cluster="other")], "foreign-cluster"),
    ("unknown node", [packet(node="n9")], "unknown-node"),
    ("our own name", [packet(node="n1")], "own-name"),
    ("stale stamp", [packet(sent=900.0)], "stale"),
]


@pytest.mark.parametrize(
    ("case", "packets", "reason"), GUARD_CASES, ids=[c[0] for c in GUARD_CASES]
)
def test_replay_guard(case: str, packets: list[Heartbeat], reason: str | None) -> None:
    g = guard()
    for p in packets[:-1]:
        g.check(p, p.link, 1000.0)
    last = packets[-1]
    if reason is None:
        g.check(last, last.link, 1000.0)
    else:
        with pytest.raises(HeartbeatError) as exc:
            g.check(last, last.link, 1000.0)
        assert exc.value.reason == reason


def test_packet_replayed_on_another_link_is_refused() -> None:
    with pytest.raises(HeartbeatError, match="wrong-link"):
        guard().check(packet(link=0), 1, 1000.0)


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
@given(st.dictionaries(st.sampled_from([*list("cnbistha"), "st"]), json_values, max_size=9))
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
