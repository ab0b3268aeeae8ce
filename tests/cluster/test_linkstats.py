"""Heartbeat RTT (echoed sequence numbers) and loss (sequence gaps) per peer and link."""

from __future__ import annotations

import pytest

from ophiura.cluster import heartbeat as hb
from ophiura.cluster.linkstats import KEEP_SENT, LinkStats

KEY = b"k" * 32


def stats() -> LinkStats:
    return LinkStats(["n2", "n3"], ["ring0", "ring1"])


def value(metric: object, *labels: str) -> float:
    return metric.labels(*labels).value  # type: ignore[attr-defined]


def test_rtt_subtracts_the_time_the_peer_held_our_sequence() -> None:
    s = stats()
    s.on_send(0, 41, now=100.000)
    # n2 heard seq 41 at its own 50.0002 and sent its heartbeat 0.3 s later: held 300000 us
    rtt = s.on_receive("n2", 0, incarnation=7, seq=5, echo=(41, 300_000), now=100.3005)
    assert rtt == pytest.approx(0.0005)
    assert s.rtt_last.labels("n2", "ring0").value == pytest.approx(0.0005)
    h = s.rtt.labels("n2", "ring0")
    assert sum(h.counts) == 1 and h.sum == pytest.approx(0.0005)
    # the same echo again (no newer seq reached n2 yet) is not a second sample
    assert s.on_receive("n2", 0, 7, 6, (41, 600_000), now=100.6005) is None
    assert sum(h.counts) == 1
    # another link's and another peer's series are untouched
    assert sum(s.rtt.labels("n2", "ring1").counts) == 0
    assert sum(s.rtt.labels("n3", "ring0").counts) == 0


def test_unknown_or_forgotten_sequences_give_no_rtt() -> None:
    s = stats()
    s.on_send(0, 1, 0.0)
    assert s.on_receive("n2", 0, 7, 1, (99, 0), 1.0) is None  # never sent
    for seq in range(2, KEEP_SENT + 3):
        s.on_send(0, seq, float(seq))
    assert s.on_receive("n2", 0, 7, 2, (1, 0), 99.0) is None  # too old, forgotten


def test_loss_is_the_sequence_gap_on_one_link() -> None:
    s = stats()
    for seq in (1, 2, 3, 7, 8, 20):
        s.on_receive("n2", 1, 7, seq, None, float(seq))
    assert value(s.lost, "n2", "ring1") == 3 + 11
    assert value(s.received, "n2", "ring1") == 6
    assert value(s.lost, "n2", "ring0") == 0
    # a restarted peer (new incarnation) starts again at 1: no loss
    s.on_receive("n2", 1, 8, 1, None, 30.0)
    assert value(s.lost, "n2", "ring1") == 14


def test_echo_names_the_newest_sequence_heard_per_link() -> None:
    s = stats()
    s.on_receive("n2", 0, 7, 10, None, now=5.0)
    s.on_receive("n3", 0, 9, 4, None, now=5.5)
    s.on_receive("n2", 1, 7, 11, None, now=5.9)
    assert s.echo(0, now=6.0) == {"n2": (10, 1_000_000), "n3": (4, 500_000)}
    assert s.echo(1, now=6.0) == {"n2": (11, 100_000)}


def test_codec_carries_the_echo_and_older_peers_send_none() -> None:
    p = hb.Heartbeat("c", "n2", 0, 7, 3, "online", echo={"n1": (41, 1234)})
    assert hb.decode(hb.encode(p, KEY), KEY).echo == {"n1": (41, 1234)}
    old = hb.Heartbeat("c", "n2", 0, 7, 3, "online")
    assert b'"rt"' not in hb.encode(old, KEY)  # no echo, no field: same bytes as before
    assert hb.decode(hb.encode(old, KEY), KEY).echo == {}


@pytest.mark.parametrize("bad", [[1], "x", [-1, 0], [1, "2"]])
def test_codec_refuses_a_malformed_echo(bad: object) -> None:
    import hashlib
    import hmac
    import json

    body = {"c": "c", "n": "n2", "i": 7, "s": 3, "st": "x", "rt": {"n1": bad}}
    payload = json.dumps(body).encode()
    head = hb.HEADER.pack(hb.MAGIC, hb.VERSION, 0, len(payload))
    data = head + payload + hmac.new(KEY, head + payload, hashlib.sha256).digest()
    with pytest.raises(hb.HeartbeatError, match="echo"):
        hb.decode(data, KEY)
