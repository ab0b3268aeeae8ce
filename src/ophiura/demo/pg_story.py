"""The demo's story with PostgreSQL (`ophiura demo --app postgres`): the same steps as the
record app's (`scenario.Story`: bring-up, an SE killed under load, the active node killed, the
node back, a manual switchover), with PostgreSQL 15 on the replicated volume instead of the
record app, and two clients in the client's namespace against the floating IP: the ledger
client (`ophiura.testkit.pgwire ledger`: one row per transaction, an id recorded only after
its COMMIT answered) all along, and `pgbench -c 4` through the SE kill and again through the
node crash.

At the end: every committed ledger row is there with its digest, pgbench's invariants hold,
and the crash's client-observed outage is split into its steps (`postgres.outage_steps`).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.demo import postgres
from ophiura.demo.client import Ack, Ledger, outage, typical_gap
from ophiura.demo.scenario import Story, StoryError
from ophiura.demo.topology import HIERARCHY
from ophiura.testkit.netns import VIP
from ophiura.testkit.procs import Proc

CHAIN = "replicated-volume -> attach -> fs -> ip -> ocf:heartbeat:pgsql"


@dataclass
class PgStory(Story):
    ledger_proc: Proc | None = None
    benches: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    pg_ledger: Ledger | None = None
    _seen: tuple[float, int] | None = None
    _history: int | None = None

    # ------------------------------------------------------------------ helpers

    @property
    def ledger(self) -> Ledger | None:
        return self.pg_ledger

    def has_results(self) -> bool:
        return self.ledger_proc is not None

    def sql(self, query: str, timeout: float = 5.0) -> list[list[str | None]]:
        assert self.topo.lab is not None
        return self.topo.lab.call("client", postgres.ask, VIP, query, timeout, timeout=timeout + 5)

    def rows(self) -> int:
        """Ledger rows committed so far (-1: the database does not answer now)."""
        try:
            return int(self.sql("SELECT count(*) FROM ledger", 1.0)[0][0] or 0)
        except Exception:  # no answer (yet): the database is away
            return -1

    def acked_by(self, node: str, after: float) -> bool:
        """The ledger client's commits are landing: two counts in a row, both after `after`
        and the second higher. The story asks only once the hierarchy runs on `node` alone
        (the old owner dead or stopped), so whoever answers is `node`."""
        n = self.rows()
        prev, self._seen = self._seen, (after, n)
        return n >= 0 and prev is not None and prev[0] == after and 0 <= prev[1] < n

    def pgbench(self, seconds: float) -> Proc:
        i = len(self.benches) + 1
        log = self.topo.logs / f"pgbench-{i}.log"
        sp = self.topo.spawn(f"pgbench-{i}", postgres.pgbench_argv(seconds), "client")
        self.benches.append({"run": i, "seconds": seconds, "log": log, "proc": sp})
        return sp

    def wait_bench(self, timeout: float = 30.0) -> dict[str, Any]:
        """The last pgbench's end: its exit status and what its output says."""
        b = self.benches[-1]
        sp: Proc = b["proc"]
        try:
            rc = sp.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            sp.stop(timeout=5)
            raise StoryError(f"pgbench still running {timeout:g} s after its end") from None
        text = Path(b["log"]).read_text(errors="replace")
        b.update(returncode=rc, **postgres.pgbench_summary(text))
        return b

    # ------------------------------------------------------------------ the story

    def bring_up(self) -> None:
        topo = self.topo
        self.narrator.step("1/6 bring-up: 3 SEs (N=3, Q=2), PostgreSQL 15 made once, 3 nodes")
        topo.start()
        took = topo.bootstrap_took
        self.say(f"SEs {', '.join(f'{s}={h}:{p}' for s, (h, p) in topo.se_addrs.items())}")
        self.say(
            "database made through n1's agents: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in took.items())
            + " (initdb -k: data checksums; fsync and synchronous_commit on)"
        )
        self.say(
            f"nodes {', '.join(topo.nodes)} (priority in that order), hierarchy "
            f"{HIERARCHY}: [{CHAIN}]"
        )
        first = topo.nodes[0]
        at = self.wait(
            f"{HIERARCHY} running on {first}",
            lambda: self.running_on(first, first) and time.monotonic(),
            90,
        )
        self.say(
            f"{HIERARCHY} running on {first} after {at - self.t0:.1f} s: its HE took epoch "
            f"{self.volume(first)['epoch']}; PostgreSQL on {VIP}:5432"
        )
        tmp = topo.tmp
        self.ledger_proc = topo.spawn(
            "ledger", postgres.ledger_argv(tmp / "ledger.json", tmp / "ledger.stop"), "client"
        )
        self.wait("the first committed ledger row", lambda: self.rows() > 0, 30)
        # through normal running and the SE kill, until just after the SE is back
        bench = self.pace.warmup + self.pace.se_down + 2
        self.pgbench(bench)
        q0 = time.monotonic()
        self.narrator.step(
            f"2/6 normal running: ledger rows one per transaction, pgbench -c 4 -T {bench:g}"
        )
        time.sleep(self.pace.warmup)
        self.quiet = (q0, time.monotonic())
        self.say(f"{self.rows()} ledger rows committed so far (each on 2 of 3 SEs first)")

    def se_crash(self) -> None:
        super().se_crash()
        b = self.wait_bench(60)
        style = "green" if b["returncode"] == 0 and not b["failed"] else "bold red"
        self.say(
            f"pgbench through the SE kill: exit {b['returncode']}, {b['processed']} "
            f"transactions, {b['failed']} failed, {b['tps']} tps",
            style,
        )
        self.events[-1]["pgbench"] = _public(b)

    def node_crash(self) -> None:
        self.pgbench(self.pace.settle + 8)
        self.wait("pgbench's transactions under way", self._bench_running, 20)
        super().node_crash()
        b = self.wait_bench(60)
        aborted = "its clients lost their connections to the crashed node, as they must; "
        self.say(
            f"pgbench through the crash: {aborted if b['aborted'] else ''}"
            f"{b['processed']} transactions, exit {b['returncode']}"
        )
        self.events[-1]["pgbench"] = _public(b)

    def _bench_running(self) -> bool:
        """pgbench's history grew since the last time we asked: it is mid-run when the power
        goes."""
        n = int(self.sql("SELECT count(*) FROM pgbench_history")[0][0] or 0)
        prev, self._history = self._history, n
        return prev is not None and n > prev

    def finish(self) -> dict[str, Any]:
        """Stop the ledger client, check every committed row, pgbench's invariants, and split
        the crash's outage into its steps."""
        assert self.ledger_proc is not None
        topo = self.topo
        self.narrator.step("check: every committed ledger row, pgbench's invariants")
        (topo.tmp / "ledger.stop").touch()  # the client writes its results and exits
        try:
            self.ledger_proc.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.ledger_proc.stop(timeout=5)
        end = self.client_stopped = time.monotonic()
        result = self.result = json.loads((topo.tmp / "ledger.json").read_text())
        self.pg_ledger = _to_ledger(result)
        ledger = postgres.verify_ledger(self.sql, result)
        inv = postgres.pgbench_invariants(self.sql)
        ends = [e["_start"] for e in self.events[1:]] + [end]
        for ev, until in zip(self.events, ends, strict=True):
            ev.update(outage(self.pg_ledger, ev.pop("_start"), until))
        crash = next((e for e in self.events if e["name"] == "node-crash"), None)
        split = None
        if crash is not None and crash["from"] in topo.crash_times:
            began, done = topo.crash_times[crash["from"]]
            evs = self.cluster_events(crash["to"], 0.0)
            split = postgres.outage_steps(evs, began, done, result)
        style = "green" if ledger["lost"] == 0 and not ledger["unexpected"] else "bold red"
        self.say(
            f"{ledger['committed']} ledger rows committed, {ledger['present']} present with "
            f"their digest, {ledger['lost']} lost ({ledger['in_doubt']} in doubt: no answer)",
            style,
        )
        self.say(
            f"pgbench: sum(abalance) {inv['sum_accounts_abalance']} = sum(tbalance) "
            f"{inv['sum_tellers_tbalance']} = sum(bbalance) {inv['sum_branches_bbalance']} = "
            f"sum(delta) {inv['sum_history_delta']}: {'hold' if inv['hold'] else 'BROKEN'}",
            "green" if inv["hold"] else "bold red",
        )
        out: dict[str, Any] = {
            "lost": ledger["lost"] + len(ledger["unexpected"]),
            "ledger": ledger,
            "invariants": inv,
            "invariants_hold": inv["hold"],
            "pgbench": [_public(b) for b in self.benches],
            "outage_split": split,
            "typical_gap_s": typical_gap(self.pg_ledger, *self.quiet) if self.quiet else None,
            "client_window_s": (
                round(end - self.pg_ledger.acked[0].sent, 3) if self.pg_ledger.acked else None
            ),
        }
        return out


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if k == "log" else v) for k, v in b.items() if k != "proc"}


def _to_ledger(result: dict[str, Any]) -> Ledger:
    """The ledger client's results (wall clock) as the demo's Ledger (monotonic), so that the
    outages and the availability are measured as for the record app."""
    shift = time.monotonic() - time.time()
    ledger = Ledger(attempts=len(result["committed"]) + len(result["in_doubt"]))
    for rid, sent, done in result["committed"]:
        r = int(rid)
        ledger.acked.append(Ack(str(r), postgres.digest(r), sent + shift, done + shift, ""))
    ledger.failures = [(t + shift, str(what)) for t, what in result["failures"]]
    return ledger
