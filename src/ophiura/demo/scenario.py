"""The demo's story: normal running, an SE killed, the active node killed, the node back, a
manual switchover, and a check that every acknowledged record is still there.

Every wait is bounded; a step that does not happen in time ends the story with a StoryError
that says which step and what was seen, and the report carries it. Times are measured by the
client (outages) and read from the HE's and the cluster's own status (recovery kinds and
durations, takeover, detection).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ophiura.demo.client import Ledger, RecordClient, outage, typical_gap, verify
from ophiura.demo.poller import Poller
from ophiura.demo.topology import HIERARCHY, VOLUME, Topology
from ophiura.demo.view import PlainNarrator
from ophiura.testkit.waiting import poll


class StoryError(RuntimeError):
    """A step of the story did not happen in time (the message says what was expected)."""


@dataclass
class Pace:
    """Seconds spent watching each phase (scaled down for tests, never below what is needed to
    see the effect)."""

    warmup: float = 6.0
    se_down: float = 4.0
    settle: float = 3.0
    no_failback: float = 5.0

    def scaled(self, k: float) -> Pace:
        return Pace(self.warmup * k, self.se_down * k, self.settle * k, self.no_failback * k)


@dataclass
class Story:
    topo: Topology
    narrator: PlainNarrator
    poller: Poller
    pace: Pace = field(default_factory=Pace)
    se_victim: str = "b"
    events: list[dict[str, Any]] = field(default_factory=list)
    client: RecordClient | None = None
    t0: float = field(default_factory=time.monotonic)
    wall0: float = field(default_factory=time.time)
    quiet: tuple[float, float] | None = None
    client_stopped: float = 0.0

    # ------------------------------------------------------------------ helpers

    @property
    def ledger(self) -> Ledger | None:
        """What the client saw (acknowledgements, failures), for the outages and availability."""
        return self.client.ledger if self.client is not None else None

    def has_results(self) -> bool:
        """Whether the client got far enough for `finish` to have something to check."""
        return self.client is not None and bool(self.client.ledger.acked)

    def wait(self, what: str, pred: Callable[[], Any], timeout: float) -> Any:
        """`pred`'s first true value; errors count as "not yet" (a node mid-restart)."""
        return poll(pred, timeout, what, step=0.05, error=StoryError)

    def hier(self, node: str) -> dict[str, Any]:
        return self.topo.admin(node, {"op": "status"}, timeout=1.5)["hierarchies"][HIERARCHY]

    def running_on(self, node: str, asked: str) -> bool:
        return self.hier(asked)["running_on"] == [node]

    def volume(self, node: str) -> dict[str, Any]:
        he = self.topo.he_status(node)
        return next(v for v in he["volumes"] if v["name"] == VOLUME)

    def acked_by(self, node: str, after: float) -> bool:
        assert self.client is not None
        acks = self.client.ledger.acked
        return any(a.node == node and a.sent > after for a in acks[-50:])

    def rel(self, t: float) -> float:
        return round(t - self.t0, 3)

    def cluster_events(self, node: str, since_wall: float) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.topo.tmp / "state" / node / "events").glob("events-*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    e = json.loads(line)
                    if e.get("time", 0) >= since_wall:
                        out.append(e)
        return out

    def he_activation(self, node: str, since_wall: float) -> dict[str, Any] | None:
        """The HE's own account of its start on `node` after `since_wall`, from its log: how
        long the epoch claim and the frontends took, and what each SE held. (`ophiura status`
        reports takeover timings only for a standby HE, and the cluster starts a fresh one.)"""
        log = self.topo.logs / f"he-{node}.log"
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return None
        out: dict[str, Any] = {}
        for line in lines:
            try:
                when = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                when += int(line[20:23]) / 1000
            except ValueError:
                continue
            if when < since_wall - 1:
                continue
            if m := re.search(r"claimed (\S+) with ballot \((\d+), [0-9a-f]+\): (.*)$", line):
                if m.group(1) == VOLUME:
                    out["claim"] = f"epoch {m.group(2)}: {m.group(3)}"
            elif m := re.search(r"HE active in ([\d.]+)s", line):
                out["activated_s"] = float(m.group(1))
        return out or None

    def say(self, text: str, style: str = "") -> None:
        self.narrator.say(text, style)

    # ------------------------------------------------------------------ the story

    def run(self) -> None:
        self.bring_up()
        self.se_crash()
        self.node_crash()
        self.node_return()
        self.switchover()

    def bring_up(self) -> None:
        topo = self.topo
        self.narrator.step("1/6 bring-up: 3 SEs (N=3, Q=2), 3 cluster nodes")
        for why in topo.left_out:
            self.say(f"left out: {why}", "yellow")
        topo.start()
        chain = "replicated-volume -> ip -> app" if topo.use_netns else "replicated-volume -> app"
        self.say(f"SEs {', '.join(f'{s}={h}:{p}' for s, (h, p) in topo.se_addrs.items())}")
        self.say(
            f"nodes {', '.join(topo.nodes)} (priority in that order), hierarchy "
            f"{HIERARCHY}: [{chain}]"
        )
        self.say("the app keeps its records on the volume, through NBD (no FUSE needed)")
        first = topo.nodes[0]
        took = self.wait(
            f"{HIERARCHY} running on {first}",
            lambda: self.running_on(first, first) and time.monotonic(),
            60,
        )
        self.say(
            f"{HIERARCHY} running on {first} after {took - self.t0:.1f} s: its HE took "
            f"epoch {self.volume(first)['epoch']}; app on {topo.app[0]}:{topo.app[1]}"
        )
        url = topo.dashboard_url(first)
        if url:
            where = f" (inside namespace {topo.host_ns(first)})" if topo.use_netns else ""
            self.say(f"dashboard: {url}{where}")
        self.client = RecordClient(*topo.app)
        if hasattr(self.narrator, "client"):
            self.narrator.client = self.client
        topo.loop("client").run(self.client.start())
        self.wait(
            "the first acknowledged record", lambda: self.client and self.client.ledger.acked, 30
        )
        q0 = time.monotonic()
        self.narrator.step("2/6 normal running: the client writes records")
        time.sleep(self.pace.warmup)
        self.quiet = (q0, time.monotonic())
        self.say(
            f"{len(self.client.ledger.acked)} records acknowledged so far "
            f"(each on 2 of 3 SEs before the answer)"
        )

    def se_crash(self) -> None:
        topo, victim = self.topo, self.se_victim
        owner = self.hier(topo.nodes[0])["owner"]
        self.narrator.step(f"3/6 kill -9 of storage element {victim}")
        start, wall = time.monotonic(), time.time()
        topo.kill_se(victim)
        rest = " and ".join(s for s in topo.ses if s != victim)
        self.say(f"SE {victim} killed; writes go on with a quorum of 2 ({rest})", "red")
        time.sleep(self.pace.se_down)
        seq_missed = self.volume(owner)["latest_seq"]
        restart = time.monotonic()
        topo.start_se(victim)
        self.say(f"SE {victim} restarted after {restart - start:.1f} s (same data dir)")

        def recovered() -> dict[str, Any] | None:
            r = next(s for s in self.volume(owner)["ses"] if s["name"] == victim)
            hist = [h for h in r["history"] if h["at"] >= wall]
            kinds = [h for h in hist if h["state"].startswith("recovering")]
            ups = [h for h in hist if h["state"] == "up"]
            if r["state"] == "up" and kinds and ups and ups[-1]["at"] >= kinds[-1]["at"]:
                return {
                    "history": hist,
                    "kind": kinds[-1]["state"].split("-", 1)[1],
                    "began": kinds[0]["at"],
                    "up": ups[-1]["at"],
                }
            return None

        rec = self.wait(f"SE {victim} recovered", recovered, 60)
        dur = rec["up"] - rec["began"]
        self.say(
            f"SE {victim}: {rec['kind']} recovery in {dur:.3f} s, up again "
            f"(HE seq when it came back ~{seq_missed})",
            "green",
        )
        time.sleep(self.pace.settle)
        self.events.append(
            {
                "name": "se-crash",
                "what": f"kill -9 of SE {victim}, restarted after {restart - start:.1f} s",
                "at_s": self.rel(start),
                "se": victim,
                "recovery": {
                    "kind": rec["kind"],
                    "duration_s": round(dur, 3),
                    "down_s": round(restart - start, 3),
                    "history": rec["history"],
                },
                "_start": start,
            }
        )

    def node_crash(self) -> None:
        topo = self.topo
        old = self.hier(topo.nodes[0])["owner"]
        epoch0 = self.volume(old)["epoch"]
        others = [n for n in topo.nodes if n != old]
        expect = others[0]  # the next by priority
        self.narrator.step(f"4/6 kill -9 of the active node {old}")
        start, wall = time.monotonic(), time.time()
        topo.crash_node(old)
        self.poller.down.add(old)
        if topo.use_netns:
            how = "cables pulled, then every process killed"
        else:
            how = "daemon, HE and app killed"

        self.say(f"{old} crashed ({how})", "red")

        def moved() -> str | None:
            where = self.hier(expect)["running_on"]
            return where[0] if len(where) == 1 and where[0] != old else None

        took = self.wait(f"{HIERARCHY} running on another node", moved, 60)
        t_running = time.monotonic()
        self.wait(f"the client acknowledged by {took}", lambda: self.acked_by(took, start), 30)
        t_client = time.monotonic()
        vol = self.volume(took)
        he = self.topo.he_status(took).get("takeover") or self.he_activation(took, wall)
        evs = self.cluster_events(took, wall)
        dead = next(
            (
                e["time"] - wall
                for e in evs
                if e.get("kind") == "node"
                and e.get("peer") == old
                and "dead" in str(e.get("task", ""))
            ),
            None,
        )
        if he and he.get("claim"):
            self.say(f"{took}'s HE claimed the volume at {he['claim']}")
        self.say(
            f"{took} took over: HE epoch {epoch0} -> {vol['epoch']} (fences {old}'s HE), "
            f"hierarchy running after {t_running - start:.2f} s, app answering after "
            f"{t_client - start:.2f} s",
            "green",
        )
        if took == expect:
            self.say(f"failover went to {took}, the next node by priority")
        time.sleep(self.pace.settle)
        self.events.append(
            {
                "name": "node-crash",
                "what": f"kill -9 of active node {old}",
                "at_s": self.rel(start),
                "from": old,
                "to": took,
                "expected_to": expect,
                "detected_s": None if dead is None else round(dead, 3),
                "hierarchy_running_s": round(t_running - start, 3),
                "app_answering_s": round(t_client - start, 3),
                "takeover": {
                    "epoch_before": epoch0,
                    "epoch_after": vol["epoch"],
                    "he": he,
                    "recoveries": {s["name"]: s["recovery"] for s in vol["ses"]},
                },
                "_start": start,
            }
        )

    def node_return(self) -> None:
        topo = self.topo
        crashed = next(e["from"] for e in self.events if e["name"] == "node-crash")
        owner = next(e["to"] for e in self.events if e["name"] == "node-crash")
        self.narrator.step(f"5/6 {crashed} comes back (no automatic failback)")
        start = time.monotonic()
        topo.boot_node(crashed)
        self.poller.down.discard(crashed)
        self.wait(
            f"{crashed} online and seen by {owner}",
            lambda: (
                self.topo.admin(owner, {"op": "status"})["nodes"][crashed]["state"] == "up"
                and self.hier(crashed)["states"].get(crashed) == "stopped"
            ),
            60,
        )
        self.say(f"{crashed} is back online; {HIERARCHY} stays on {owner} (failback = manual)")
        time.sleep(self.pace.no_failback)
        where = self.hier(owner)["running_on"]
        self.events.append(
            {
                "name": "node-return",
                "what": f"{crashed} restarted (a reboot: /run and the floating IP cleared)",
                "at_s": self.rel(start),
                "node": crashed,
                "running_on_after_s": round(time.monotonic() - start, 3),
                "running_on": where,
                "failback": where != [owner],
                "_start": start,
            }
        )
        if where != [owner]:
            raise StoryError(f"{HIERARCHY} moved to {where} without being asked (failback)")
        self.say(f"after {time.monotonic() - start:.1f} s {HIERARCHY} still runs on {owner}")

    def switchover(self) -> None:
        topo = self.topo
        target = topo.nodes[0]
        owner = self.hier(target)["owner"]
        self.narrator.step(f"6/6 manual switchover back to {target}")
        argv = topo.cli_argv(
            owner,
            "cluster",
            "switchover",
            HIERARCHY,
            "--to",
            target,
            "--config",
            str(topo.cluster_file),
            "--node",
            owner,
            "--timeout",
            "60",
        )
        self.say(f"$ ophiura cluster switchover {HIERARCHY} --to {target}")
        start, wall = time.monotonic(), time.time()
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=90, env=topo.env(), check=False
        )
        if res.returncode != 0:
            raise StoryError(f"switchover failed ({res.returncode}): {res.stdout}{res.stderr}")
        self.wait(f"{HIERARCHY} running on {target}", lambda: self.running_on(target, target), 30)
        t_running = time.monotonic()
        self.wait(f"the client acknowledged by {target}", lambda: self.acked_by(target, start), 30)
        t_client = time.monotonic()
        vol = self.volume(target)
        self.say(
            f"{HIERARCHY} on {target} after {t_running - start:.2f} s (epoch "
            f"{vol['epoch']}), app answering after {t_client - start:.2f} s",
            "green",
        )
        time.sleep(self.pace.settle)
        self.events.append(
            {
                "name": "switchover",
                "what": f"ophiura cluster switchover {HIERARCHY} --to {target}",
                "at_s": self.rel(start),
                "from": owner,
                "to": target,
                "hierarchy_running_s": round(t_running - start, 3),
                "app_answering_s": round(t_client - start, 3),
                "epoch_after": vol["epoch"],
                "he": self.he_activation(target, wall),
                "_start": start,
            }
        )

    def finish(self) -> dict[str, Any]:
        """Stop the client, read every record back through the app, measure outages."""
        assert self.client is not None
        self.narrator.step("check: every acknowledged record read back through the app")
        loop = self.topo.loop("client")
        loop.run(self.client.stop())
        end = self.client_stopped = time.monotonic()
        stored = loop.run(self.client.fetch_all(), 30)
        result = verify(self.client.ledger, stored)
        ends = [e["_start"] for e in self.events[1:]] + [end]
        for ev, until in zip(self.events, ends, strict=True):
            ev.update(outage(self.client.ledger, ev.pop("_start"), until))
        style = "green" if result["lost"] == 0 else "bold red"
        self.say(
            f"{result['acknowledged']} acknowledged, {result['verified']} read back, "
            f"{result['lost']} lost",
            style,
        )
        if self.quiet:
            result["typical_gap_s"] = typical_gap(self.client.ledger, *self.quiet)
        result["client_window_s"] = (
            round(end - self.client.ledger.acked[0].sent, 3) if (self.client.ledger.acked) else None
        )
        return result
