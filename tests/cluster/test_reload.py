"""reload.plan(): what a configuration reload applies, and what it refuses (nothing changes)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ophiura.cluster import heartbeat as hb
from ophiura.cluster import reload
from ophiura.cluster.config import parse

from .kit import config_dict

BASE = config_dict(
    hierarchies=[
        {
            "name": "web",
            "nodes": ["n1", "n2", "n3"],
            "resources": [
                {"name": "ip", "kind": "ip", "params": {"ip": "198.51.100.10/24", "nic": "lo"}},
                {"name": "app", "kind": "command", "depends_on": ["ip"], "params": {"start": "x"}},
            ],
        }
    ]
)


def changed(edit: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    edit(d)
    return d


def web(d: dict[str, Any]) -> dict[str, Any]:
    return d["hierarchies"][0]


def res(d: dict[str, Any], i: int) -> dict[str, Any]:
    return web(d)["resources"][i]


RUNNING = {"web": frozenset({"n1"})}
CASES = [
    # (name, edit, held, ok, a word that must appear)
    (
        "timings",
        lambda d: d.update(timings={"interval": 0.2, "deadline": 1.4}),
        RUNNING,
        True,
        "timings",
    ),
    (
        "monitor interval of a running resource",
        lambda d: res(d, 1).update(monitor_interval=9.0),
        RUNNING,
        True,
        "app.monitor_interval 2 -> 9",
    ),
    ("priorities", lambda d: web(d).update(nodes=["n1", "n3", "n2"]), RUNNING, True, "nodes"),
    (
        "failback and restart policy",
        lambda d: web(d).update(failback="auto", max_restarts=5),
        RUNNING,
        True,
        "failback",
    ),
    (
        "notifications",
        lambda d: d.update(notify=[{"kind": "command", "command": ["/bin/true"]}]),
        RUNNING,
        True,
        "notifiers",
    ),
    (
        "new hierarchy",
        lambda d: d["hierarchies"].append(
            {
                "name": "db",
                "nodes": ["n2"],
                "resources": [{"name": "x", "kind": "command", "params": {"start": "y"}}],
            }
        ),
        RUNNING,
        True,
        "db added",
    ),
    (
        "params of a running resource",
        lambda d: res(d, 0)["params"].update(ip="198.51.100.11/24"),
        RUNNING,
        False,
        "ip: params changed (ip)",
    ),
    (
        "params of a hierarchy that runs nowhere",
        lambda d: res(d, 0)["params"].update(ip="198.51.100.11/24"),
        {},
        True,
        "runs nowhere",
    ),
    (
        "kind of a running resource",
        lambda d: res(d, 1).update(kind="process"),
        RUNNING,
        False,
        "kind command -> process",
    ),
    (
        "dependencies of a running resource",
        lambda d: res(d, 1).update(depends_on=[]),
        RUNNING,
        False,
        "depends_on",
    ),
    (
        "resource added to a running hierarchy",
        lambda d: web(d)["resources"].append(
            {"name": "z", "kind": "command", "params": {"start": "z"}}
        ),
        RUNNING,
        False,
        "resources added: z",
    ),
    (
        "running hierarchy removed",
        lambda d: d["hierarchies"].clear(),
        RUNNING,
        False,
        "removed while it runs",
    ),
    ("stopped hierarchy removed", lambda d: d["hierarchies"].clear(), {}, True, "web removed"),
    (
        "owner dropped from the node list",
        lambda d: web(d).update(nodes=["n2", "n3"]),
        RUNNING,
        False,
        "no longer lists n1",
    ),
    (
        "links",
        lambda d: d["links"].pop(),
        {},
        False,
        "'links' changed: needs a restart of every daemon",
    ),
    (
        "secret",
        lambda d: d["cluster"].update(secret="another-secret-0123456789abcdef"),
        {},
        False,
        "'secret'",
    ),
]


@pytest.mark.parametrize(("case", "edit", "held", "ok", "word"), CASES, ids=[c[0] for c in CASES])
def test_plan(case: str, edit: Any, held: dict[str, frozenset[str]], ok: bool, word: str) -> None:
    p = reload.plan(parse(BASE), parse(changed(edit)), held)
    assert p.ok is ok, p
    assert any(word in line for line in (p.changes if ok else p.refused)), p


def test_every_refusal_in_one_pass() -> None:
    def two(d: dict[str, Any]) -> None:
        res(d, 0)["params"].update(ip="198.51.100.11/24")
        d["cluster"].update(quorum="quorate")

    p = reload.plan(parse(BASE), parse(changed(two)), RUNNING)
    assert len(p.refused) == 2, p


def test_digest_ignores_layout_not_meaning() -> None:
    a = parse(BASE)
    b = parse(copy.deepcopy(BASE))
    c = parse(changed(lambda d: d.update(timings={"interval": 0.2})))
    assert a.digest == b.digest != c.digest and len(a.digest) == 16


def test_heartbeat_carries_the_digest_and_old_packets_still_decode() -> None:
    key = b"k" * 32
    pkt = hb.Heartbeat("c", "n1", 0, 1, 1, "online", config="0123456789abcdef")
    assert hb.decode(hb.encode(pkt, key), key).config == "0123456789abcdef"
    old = hb.Heartbeat("c", "n1", 0, 1, 1, "online")
    assert b'"cf"' not in hb.encode(old, key)
    assert hb.decode(hb.encode(old, key), key).config == ""
