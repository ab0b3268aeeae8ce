"""Tokens, the config keys of the REST API, and reading the event log: no sockets."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ophiura.cluster.config import ConfigError, parse
from ophiura.cluster.validation import validate
from ophiura.web import eventlog
from ophiura.web.auth import Authenticator, cluster_token, new_token, token_sha256


def config(cluster_extra: dict | None = None, node_extra: dict | None = None):  # type: ignore[no-untyped-def]
    data = {
        "cluster": {"name": "c", "secret": "s" * 32, **(cluster_extra or {})},
        "nodes": [
            {"name": "n1", "admin": "127.0.0.1:7401", **(node_extra or {})},
            {"name": "n2", "admin": "127.0.0.1:7402"},
        ],
        "links": [
            {"name": "a", "addresses": {"n1": "10.0.0.1", "n2": "10.0.0.2"}},
            {"name": "b", "addresses": {"n1": "10.1.0.1", "n2": "10.1.0.2"}},
        ],
    }
    return parse(data)


def test_http_is_off_unless_configured() -> None:
    cfg = config()
    assert cfg.http_address("n1") is None and cfg.http_address("n2") is None
    assert validate(cfg) == []


def test_cluster_http_is_the_default_and_nodes_override_it() -> None:
    cfg = config({"http": "0.0.0.0:8440"}, {"http": "127.0.0.1:9000"})
    assert cfg.http_address("n1") == ("127.0.0.1", 9000)
    assert cfg.http_address("n2") == ("0.0.0.0", 8440)
    assert config({"http": "10.0.0.5"}).http_address("n1") == ("10.0.0.5", 8440)
    assert validate(cfg) == []


def test_http_config_problems_are_named() -> None:
    with pytest.raises(ConfigError, match=r"nodes\[0\].http: bad port"):
        config(node_extra={"http": "127.0.0.1:99999"})
    with pytest.raises(ConfigError, match=r"cluster\.api_users: expected a table"):
        config({"api_users": ["alice"]})
    cfg = config(
        {"api_users": {"bob": {"token_sha256": "abc", "role": "root"}}},
        {"http": "127.0.0.1:7401"},
    )
    problems = validate(cfg)
    assert "node n1: http address 127.0.0.1:7401 is its admin address" in problems
    assert "api user bob: token_sha256 must be 64 hex digits (a SHA-256)" in problems
    assert "api user bob: role 'root' is not one of admin, read" in problems
    assert "unknown key cluster.htp (a typo?)" in validate(config({"htp": "x"}))


def test_tokens() -> None:
    alice, bob = new_token(), new_token()
    assert alice != bob and len(alice) >= 43
    cfg = config(
        {
            "api_users": {
                "alice": {"token_sha256": token_sha256(alice).upper()},
                "bob": {"token_sha256": token_sha256(bob), "role": "read"},
            }
        }
    )
    auth = Authenticator(cfg)
    cluster = auth.check(f"Bearer {cluster_token(cfg)}")
    assert cluster is not None and (cluster.name, cluster.role) == ("cluster", "admin")
    a, b = auth.check(f"Bearer {alice}"), auth.check(f"bearer  {bob}")
    assert a is not None and (a.name, a.may_act) == ("alice", True)
    assert b is not None and (b.name, b.may_act) == ("bob", False)
    for bad in (None, "", "Bearer", "Bearer ", f"Basic {alice}", "Bearer x" * 100, "Bearer no"):
        assert auth.check(bad) is None, bad
    # The cluster token is bound to the secret and the cluster name, and is not the admin key.
    other = config({"secret": "t" * 32})
    assert cluster_token(other) != cluster_token(cfg)
    assert cluster_token(cfg) != cfg.key("admin").hex()


def write_log(directory: Path, events: list[dict]) -> None:  # type: ignore[type-arg]
    """Daily files named as EventLog names them (UTC day), the last one with a torn line."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory
    for e in events:
        day = dt.datetime.fromtimestamp(e["time"], dt.UTC).strftime("%Y-%m-%d")
        path = directory / f"events-{day}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps(e) + "\n")
    with path.open("a") as f:
        f.write('{"torn": ')  # a line the writer thread is still appending


def test_event_log_selection(tmp_path: Path) -> None:
    t0 = 1795100000.0  # 2026-11-19 14:53 UTC; the events span three daily files
    events = [
        {"time": t0 + i * 20000, "node": "n1", "kind": "k", "task": str(i)} for i in range(10)
    ]
    write_log(tmp_path, events[:7])
    ring = events[5:]  # the ring overlaps the files: file events at or after ring[0] are skipped
    assert eventlog.ring_covers(ring, events[6]["time"])
    assert not eventlog.ring_covers(ring, 0.0) and not eventlog.ring_covers([], 1.0)
    files = eventlog.from_files(tmp_path, 0.0, ring[0]["time"], 100)
    assert [e["task"] for e in files] == ["0", "1", "2", "3", "4"]
    chosen, truncated = eventlog.select(ring, files, 0.0, 100)
    assert [e["task"] for e in chosen] == [str(i) for i in range(10)] and not truncated
    chosen, truncated = eventlog.select(ring, files, events[2]["time"], 4)
    assert [e["task"] for e in chosen] == ["6", "7", "8", "9"] and truncated
    # A `since` on the second day skips the first day's file; limit keeps the newest.
    late = eventlog.from_files(tmp_path, events[5]["time"] - 1, float("inf"), 1)
    assert [e["task"] for e in late] == ["6"]
    assert eventlog.from_files(tmp_path / "missing", 0.0, float("inf"), 10) == []
