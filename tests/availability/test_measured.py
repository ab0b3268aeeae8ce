"""Measured availability from event logs written by the real daemon code (logkit.py)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.availability.logkit import Cluster

from ophiura.availability.measured import LogError, from_logs
from ophiura.availability.units import iso
from ophiura.cli import main

MIDNIGHT = 1_700_006_400  # 2023-11-15T00:00:00Z: the logs rotate here
T0 = MIDNIGHT - 7200
END = T0 + 12_000


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """Two nodes, hierarchies web and db, four known outages of web and two of db.

    web: down at boot until 12.5 s; local restart 1000 -> 1003.25; failover a -> b across
    midnight 7195 -> 7205; b crashes at 10000 (declared dead by a at 10005), a runs web from
    10008 and db from 10009.
    """
    c = Cluster(tmp_path, ["a", "b"], T0, monkeypatch)
    a, b = c["a"], c["b"]
    c.at(0)
    a.daemon_start()
    b.daemon_start()
    c.at(10)
    a.set("web", "start")
    b.set("db", "start")
    c.at(11)
    b.set("db", "started")
    c.at(12.5)
    a.set("web", "started")
    c.at(1000)
    a.set("web", "restart")
    c.at(1003.25)
    a.set("web", "restarted")
    c.at(7195)
    a.set("web", "failover")
    c.at(7197)
    a.set("web", "exhausted")
    c.at(7199)
    b.set("web", "start")
    c.at(7205)
    b.set("web", "started")
    # b crashes at 10000: it logs nothing more
    c.at(10005)
    a.peer_dead("b")
    a.set("web", "expire")  # its failure here has expired (ClearFailures): eligible again
    c.at(10006)
    a.set("web", "start")
    a.set("db", "start")
    c.at(10008)
    a.set("web", "started")
    c.at(10009)
    a.set("db", "started")
    c.close()
    return c


def logs(c: Cluster) -> list[Path]:
    return [c.dirs["a"], c.dirs["b"]]


def test_the_log_is_what_the_daemon_writes(cluster: Cluster) -> None:
    files = sorted(p.name for p in cluster.dirs["a"].iterdir())
    assert files == ["events-2023-11-14.jsonl", "events-2023-11-15.jsonl"]
    first = json.loads((cluster.dirs["a"] / files[0]).read_text().splitlines()[1])
    assert first == {"time": T0 + 10, "node": "a", "kind": "hierarchy", "hierarchy": "web",
                     "task": "start", "state": "starting", "previous": "stopped"}  # fmt: skip


def test_known_outages_with_deadline(cluster: Cluster) -> None:
    r = from_logs(logs(cluster), T0, END, deadline=5)
    web = r.hierarchies["web"]
    got = [(float(o.start) - T0, float(o.end) - T0) for o in web.outages]
    assert got == [(0, 12.5), (1000, 1003.25), (7195, 7205), (10000, 10008)]
    assert web.down == Fraction("33.75") and web.up == Fraction("11966.25")
    assert web.availability.value == Fraction("11966.25") / 12000
    assert web.availability.nines == 2
    assert web.mttr == Fraction("33.75") / 4
    assert web.mtbf == Fraction("11966.25") / 4
    assert web.concurrent == 0 and web.unknown == 0
    causes = [(o.cause["node"], o.cause["task"]) for o in web.outages]
    assert causes == [(None, None), ("a", "restart"), ("a", "failover"), ("a", "node-dead")]
    assert web.outages[3].cause["peer"] == "b"
    assert [o.restored_by["task"] for o in web.outages] == ["started", "restarted"] + [
        "started"
    ] * 2
    db = r.hierarchies["db"]
    assert [(float(o.start) - T0, float(o.end) - T0) for o in db.outages] == [
        (0, 11),
        (10000, 10009),
    ]
    assert db.availability.value == Fraction(11980, 12000)
    assert r.nodes == ("a", "b") and r.files == 4 and not r.warnings
    # the up intervals name the node that ran it
    ups = [(float(s.start) - T0, s.nodes) for s in web.spans if s.state == "up"]
    assert ups == [(12.5, ("a",)), (1003.25, ("a",)), (7205, ("b",)), (10008, ("a",))]


def test_without_deadline_the_outage_starts_when_detected(cluster: Cluster) -> None:
    web = from_logs(logs(cluster), T0, END).hierarchies["web"]
    assert (float(web.outages[-1].start) - T0, float(web.outages[-1].end) - T0) == (10005, 10008)
    assert web.down == Fraction("28.75")


def test_period_clips_outages(cluster: Cluster) -> None:
    r = from_logs(logs(cluster), MIDNIGHT, END, deadline=5)
    web = r.hierarchies["web"]
    assert [float(o.seconds) for o in web.outages] == [5, 8]  # 7200..7205 and 10000..10008
    assert web.outages[0].cause["task"] == "failover"  # the cause is kept though it was earlier
    assert web.observed == 12000 - 7200
    # until before the crash
    r = from_logs(logs(cluster), T0 + 100, T0 + 9000)
    assert [float(o.seconds) for o in r.hierarchies["web"].outages] == [3.25, 10]
    assert not r.hierarchies["db"].outages


def test_open_outage_at_the_end(cluster: Cluster) -> None:
    web = from_logs(logs(cluster), T0, T0 + 10_007, deadline=5).hierarchies["web"]
    last = web.outages[-1]
    assert last.open and float(last.seconds) == 7 and last.restored_by is None


def test_logs_that_begin_mid_run(cluster: Cluster) -> None:
    """Day one rotated away: `previous` says what ran; what no log tells is left out."""
    for d in cluster.dirs.values():
        (d / "events-2023-11-14.jsonl").unlink()
    r = from_logs(logs(cluster), None, END, deadline=5)
    assert float(r.since) == T0 + 7205
    web = r.hierarchies["web"]
    assert [(float(o.start) - T0, float(o.end) - T0) for o in web.outages] == [(10000, 10008)]
    assert web.availability.value == Fraction(4795 - 8, 4795)
    db = r.hierarchies["db"]  # b never mentioned db in day two: unknown until b is declared dead
    assert db.unknown == 10000 - 7205
    assert db.down == 9 and db.up == 12000 - 10009
    assert db.availability.value == Fraction(1991, 2000)
    assert any("db" in w and "left out" in w for w in r.warnings)


def test_one_node_log_missing_is_named(cluster: Cluster) -> None:
    r = from_logs([cluster.dirs["a"]], T0, END)
    assert any("b" in w and "no log from node" in w for w in r.warnings)


def test_files_torn_lines_and_concurrency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cluster(tmp_path, ["a", "b"], T0, monkeypatch)
    c.at(0)
    c["a"].daemon_start()
    c["b"].daemon_start()
    for node, t in (("a", 1), ("b", 3)):
        c.at(t)
        c[node].set("web", "start")
        c.at(t + 1)
        c[node].set("web", "started")
    c.at(9)
    c["b"].set("web", "stop")
    c.at(9.5)
    c["b"].set("web", "stopped")
    c.close()
    fa = next(c.dirs["a"].glob("*.jsonl"))
    with fa.open("a") as f:
        f.write('{"time": 17000')  # a torn last line
    r = from_logs([fa, next(c.dirs["b"].glob("*.jsonl"))], T0, T0 + 20)
    web = r.hierarchies["web"]
    assert web.concurrent == 5  # b ran it too from 4 until it began stopping at 9
    assert web.down == 2  # 0..2 until a started it
    assert any("1 unreadable line" in w for w in r.warnings)


def test_errors(tmp_path: Path, cluster: Cluster) -> None:
    with pytest.raises(LogError, match="no such file"):
        from_logs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogError, match="no event log files"):
        from_logs([tmp_path / "empty"])
    with pytest.raises(LogError, match="empty period"):
        from_logs(logs(cluster), END, T0)
    with pytest.raises(LogError, match="no events for hierarchy mail"):
        from_logs(logs(cluster), hierarchies=["mail"])


def test_cli_measured_json(cluster: Cluster) -> None:
    args = ["avail", "--measured", "--log", str(cluster.dirs["a"]), "--log",
            str(cluster.dirs["b"]), "--since", iso(T0), "--until", f"@{END}",
            "--deadline", "5s", "--json"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["mode"] == "measured" and d["period"]["seconds"] == 12000
    web = d["hierarchies"]["web"]
    assert web["outage_count"] == 4 and web["down_s"] == 33.75 and web["nines"] == 2
    assert web["mttr_s"] == 8.4375 and web["longest_outage_s"] == 12.5
    assert web["percent"] == "99.718%"
    assert web["outages"][2]["start"] == "2023-11-14T23:59:55.000Z"
    assert {s["state"] for s in web["intervals"]} == {"up", "down"}
    # human output names the outages and their causes
    res = CliRunner().invoke(main, [*args[:-1], "--intervals"])
    assert res.exit_code == 0, res.output
    assert "outages of web" in res.output and "failover" in res.output
    assert "99.718%" in res.output


def test_cli_relative_since(cluster: Cluster) -> None:
    """`--since 1h`: the last hour; these logs end years ago, so the state is carried over."""
    res = CliRunner().invoke(main, ["avail", "--measured", "--log", str(cluster.dirs["a"]),
                                    "--since", "1h", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["period"]["seconds"] == pytest.approx(3600, abs=5)
    assert d["hierarchies"]["web"]["availability"] == 1.0  # a runs it at the last event
    assert any("the last event is from" in w for w in d["warnings"])
    res = CliRunner().invoke(main, ["avail", "--log", str(cluster.dirs["a"]), "--since", "soon"])
    assert res.exit_code == 2 and "--since" in res.output and "not a time" in res.output
    res = CliRunner().invoke(main, ["avail", "--log", str(cluster.dirs["a"]), "--until", "2d",
                                    "--since", "1d"])  # fmt: skip
    assert res.exit_code == 2 and "empty period" in res.output


def test_a_watchdog_event_before_the_daemon_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a watchdog, `watchdog-open` is logged before `start`: still a known beginning."""
    c = Cluster(tmp_path, ["a"], T0, monkeypatch)
    c.at(0)
    c["a"].emit("node", task="watchdog-open", desc="/dev/watchdog: timeout 10 s")
    c.at(0.01)
    c["a"].daemon_start()
    c.at(1)
    c["a"].set("web", "start")
    c.at(2)
    c["a"].set("web", "started")
    c.close()
    r = from_logs([c.dirs["a"]], None, T0 + 10)
    web = r.hierarchies["web"]
    assert web.unknown == 0 and web.down == 2 and not r.warnings
