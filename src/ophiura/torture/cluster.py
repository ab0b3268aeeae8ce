"""`ophiura torture --mode cluster`: seeded cluster faults against the demo's topology, checked
from the application's ledger.

The machines are the demo's (`ophiura.demo.topology`): three SEs and three `ophiura node`s in
network namespaces, the hierarchy `replicated-volume -> ip -> app`, the record app on the
floating IP and the record client keeping the ledger of every acknowledged record. The faults
(`schedule.CLUSTER_FAULT_KINDS`) hit one node each: crash, pause, one or both heartbeat links
cut, a full partition, a clean restart. They run at their offsets in one thread, one at a time
(each action is short; a fault's heal is an action of its own, so faults overlap in time).

The checks, after every fault is healed and the cluster is whole again:
- lost / wrong: every acknowledged record is read back from the volume itself (a fresh NBD
  connection to the owner's HE, the app's own slot decoder), with its data;
- split brain from the ledger: two acknowledgements by apps on different nodes whose request
  windows overlap (each window is at most the client's 0.5 s timeout, far shorter than any
  failover, which first waits out the 0.7 s heartbeat deadline) mean two nodes wrote at once;
- split brain from the status poll: every 0.5 s each node's HE is asked for its volume's
  acked_seq; two HEs of different ballots whose acked_seq both advanced over overlapping, short
  (<= 1.2 s) intervals both acknowledged writes at once. Polls in which two nodes each said the
  hierarchy ran on themselves are counted too (reported, not a violation: a partitioned node
  may stop late, the ballot is what fences its HE).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.demo.client import Ack, RecordClient
from ophiura.demo.topology import HIERARCHY, NS_TOOLS, VOLUME, Topology, marked_pids
from ophiura.testkit import netns
from ophiura.torture.schedule import Fault, Schedule

POLL_PERIOD = 0.5
STATUS_INTERVAL_MAX = 1.2  # a status sample's interval longer than this proves nothing
STABLE_S = 3.0  # healed: whole, with one owner, for this long
CLUSTER_TOOLS = {**NS_TOOLS, "nft": "nftables"}


def unavailable() -> str | None:
    """Why the cluster mode cannot run here (None when it can): it needs root, network
    namespaces, arping (the floating IP) and nft (link cuts)."""
    why = netns.unavailable(**CLUSTER_TOOLS)
    return f"cluster mode unavailable: {why}" if why else None


@dataclass
class ClusterOptions:
    json_path: Path = Path("torture-cluster.json")
    heal_timeout: float = 90.0
    rate: float = 20.0  # records/s the client asks for (CPU-light)
    writers: int = 2
    keep: bool = False


# ---------------------------------------------------------------------- the checker (pure)


def ledger_overlaps(acked: list[Ack]) -> list[tuple[Ack, Ack]]:
    """Pairs of acknowledgements by different nodes whose [sent, done] windows overlap."""
    out: list[tuple[Ack, Ack]] = []
    open_by_node: dict[str, Ack] = {}  # per node, the ack with the latest `done` so far
    for a in sorted(acked, key=lambda a: a.sent):
        for node, b in open_by_node.items():
            if node != a.node and b.done > a.sent:
                out.append((b, a))
        cur = open_by_node.get(a.node)
        if cur is None or a.done > cur.done:
            open_by_node[a.node] = a
    return out


def status_overlaps(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From the poll's samples ({t, node, he_id, acked_seq, fenced}): intervals in which the
    HEs of two different ballots both advanced acked_seq, each interval short enough to mean
    something (see the module docstring)."""
    advances: list[tuple[float, float, str, str]] = []  # (from, to, node, he_id)
    last: dict[str, dict[str, Any]] = {}
    for s in sorted(samples, key=lambda s: s["t"]):
        prev = last.get(s["node"])
        last[s["node"]] = s
        if (
            prev is not None
            and prev["he_id"] == s["he_id"]
            and s["acked_seq"] > prev["acked_seq"]
            and s["t"] - prev["t"] <= STATUS_INTERVAL_MAX
        ):
            advances.append((prev["t"], s["t"], s["node"], s["he_id"]))
    out = []
    for i, (a0, a1, an, ah) in enumerate(advances):
        for b0, b1, bn, bh in advances[i + 1 :]:
            if an != bn and ah != bh and a0 < b1 and b0 < a1:
                out.append({"a": [an, ah, a0, a1], "b": [bn, bh, b0, b1]})
    return out


def availability(acked: list[Ack], start: float, end: float) -> float:
    """Fraction of the whole seconds of [start, end) with at least one acknowledgement."""
    n = max(1, int(end - start))
    seen = {int(a.done - start) for a in acked if start <= a.done < start + n}
    return round(len(seen) / n, 4)


def verdict(
    acked: list[Ack],
    volume: dict[str, str] | None,
    app_view: dict[str, str] | None,
    samples: list[dict[str, Any]],
    window: tuple[float, float],
) -> dict[str, Any]:
    """Everything the run is judged on, from the ledger, the volume's records, the app's
    records and the poll's samples."""
    have = volume or {}
    # an unread volume proves nothing lost: lost and wrong are then None (the run fails on it)
    lost = [a.id for a in acked if a.id not in have] if volume is not None else []
    wrong = [a.id for a in acked if a.id in have and have[a.id] != a.data]
    app_differs = [a.id for a in acked if app_view.get(a.id) != have.get(a.id)] if app_view else []
    pairs = ledger_overlaps(acked)
    st = status_overlaps(samples)
    by_node: dict[str, int] = {}
    for a in acked:
        by_node[a.node] = by_node.get(a.node, 0) + 1
    runs: list[list[Any]] = []  # [node, first ack s, last ack s, count], in time order
    for a in sorted(acked, key=lambda a: a.done):
        if runs and runs[-1][0] == a.node:
            runs[-1][2:] = [round(a.done - window[0], 3), runs[-1][3] + 1]
        else:
            runs.append([a.node, round(a.done - window[0], 3), round(a.done - window[0], 3), 1])
    return {
        "acked": len(acked),
        "acked_by_node": by_node,
        "ack_runs": runs,
        "read_back": len(have),
        "lost": len(lost) if volume is not None else None,
        "wrong": len(wrong) if volume is not None else None,
        "lost_ids": lost[:10],
        "wrong_ids": wrong[:10],
        "app_view_differs": len(app_differs),
        "split_brain_ledger": len(pairs),
        "split_brain_status": len(st),
        "split_brain": len(pairs) + len(st),
        "split_brain_examples": [
            f"{b.id} acked by {b.node} in [{b.sent - window[0]:.3f}, {b.done - window[0]:.3f}] "
            f"overlaps {a.id} acked by {a.node} in [{a.sent - window[0]:.3f}, "
            f"{a.done - window[0]:.3f}]"
            for b, a in pairs[:5]
        ]
        + [str(x) for x in st[:5]],
        "availability": availability(acked, *window),
    }


# ---------------------------------------------------------------------- the status poll


class StatusPoll:
    """Every POLL_PERIOD s, each node (from inside its namespace, in parallel) is asked for its
    hierarchy state and its HE's volume status; the samples feed the split-brain check."""

    def __init__(self, topo: Topology, t0: float) -> None:
        self.topo = topo
        self.t0 = t0
        self.samples: list[dict[str, Any]] = []
        self.polls = 0
        self.dual_running = 0  # polls in which two nodes each said "running here"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _ask(self, node: str) -> dict[str, Any]:
        from ophiura.cluster.admin import call
        from ophiura.replication.he.control import control_call

        topo = self.topo
        out: dict[str, Any] = {"node": node}
        with contextlib.suppress(Exception):
            st = await call(*topo.admin_addrs[node], self._key, {"op": "status"}, 0.8)
            out["running"] = st["hierarchies"][HIERARCHY]["states"].get(node) == "running"
        with contextlib.suppress(Exception):
            he = await control_call(*topo.control, self._secret, "status", timeout=0.8)
            vol = next(v for v in he["volumes"] if v["name"] == VOLUME)
            out.update(
                role=he["role"],
                he_id=vol["he_id"],
                epoch=vol["epoch"],
                acked_seq=vol["acked_seq"],
                fenced=vol["fenced"],
            )
        out["t"] = time.monotonic()
        return out

    def _run(self) -> None:
        from ophiura.cluster.config import load

        self._key = load(self.topo.cluster_file).key("admin")
        self._secret = self.topo.secret_file.read_text().strip().encode()
        while not self._stop.is_set():
            t = time.monotonic()
            futs: list[Future[dict[str, Any]]] = [
                self.topo.loop(n).submit(self._ask(n)) for n in self.topo.nodes
            ]
            running = 0
            for f in futs:
                with contextlib.suppress(Exception):
                    s = f.result(3)
                    running += bool(s.get("running"))
                    if "acked_seq" in s and s.get("role") == "active":
                        self.samples.append(s)
            self.polls += 1
            self.dual_running += running >= 2
            self._stop.wait(max(0.05, POLL_PERIOD - (time.monotonic() - t)))


# ---------------------------------------------------------------------- the nemesis


@dataclass
class Nemesis:
    """Runs a cluster schedule's faults at their offsets, one action at a time."""

    topo: Topology
    schedule: Schedule
    t0: float
    log: list[dict[str, Any]] = field(default_factory=list)
    impaired: dict[str, str] = field(default_factory=dict)  # node -> kind
    paused: dict[str, list[int]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)  # daemons not running (crashed, restarting)
    cut: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)  # cables pulled
    _halt: threading.Event = field(default_factory=threading.Event)

    def owner(self) -> str | None:
        for n in self.topo.nodes:
            if n in self.impaired:
                continue
            with contextlib.suppress(Exception):
                h = self.topo.admin(n, {"op": "status"}, timeout=1.0)["hierarchies"][HIERARCHY]
                if h["running_on"]:
                    return str(h["running_on"][0])
        return None

    def resolve(self, fault: Fault) -> str | None:
        """The node a fault hits: the named one or the owner, else the first healthy node;
        None when every node is impaired (the fault is skipped)."""
        want = self.owner() if fault.target == "owner" else fault.target
        if want is not None and want not in self.impaired:
            return want
        return next((n for n in self.topo.nodes if n not in self.impaired), None)

    def run(self) -> None:
        actions: list[tuple[float, int, str, Fault]] = []
        for i, f in enumerate(self.schedule.faults):
            actions.append((f.at, i, "start", f))
            actions.append((f.at + f.duration, i, "heal", f))
        actions.sort(key=lambda a: (a[0], a[2] == "start"))  # heals first at one instant
        targets: dict[int, str] = {}
        for at, i, what, f in actions:
            left = self.t0 + at - time.monotonic()
            if left > 0 and self._halt.wait(left):
                return
            if what == "start":
                node = self.resolve(f)
                entry = {"i": i, "kind": f.kind, "at": round(time.monotonic() - self.t0, 3),
                         "scheduled": f.at, "target": f.target, "node": node}  # fmt: skip
                self.log.append(entry)
                if node is None:
                    entry["skipped"] = "every node already impaired"
                    continue
                targets[i] = node
                try:
                    self.inject(f, node)
                    entry["injected"] = True
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:200]
            elif i in targets:
                node = targets.pop(i)
                try:
                    self.heal(f, node)
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    self.log.append({"i": i, "heal_error": f"{type(exc).__name__}: {exc}"[:200]})
                for e in self.log:
                    if e.get("i") == i and "kind" in e:
                        e["healed_at"] = round(time.monotonic() - self.t0, 3)

    def halt(self) -> None:
        self._halt.set()

    def inject(self, f: Fault, node: str) -> None:
        topo, lab = self.topo, self.topo.lab
        assert lab is not None
        self.impaired[node] = f.kind
        if f.kind == "node-crash":
            self.down.add(node)
            self.stopped.add(node)
            topo.crash_node(node)
        elif f.kind == "node-pause":
            pids = marked_pids(topo.run_id, node)
            self.paused[node] = pids
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
        elif f.kind in ("link-cut-one", "link-cut-both", "partition"):
            nets = {"link-cut-one": [f.params.get("net", "a")], "link-cut-both": ["a", "b"],
                    "partition": ["a", "b", "s"]}[f.kind]  # fmt: skip
            self.cut.add(node)
            lab.cut(node, nets)
        elif f.kind == "node-restart":
            self.stopped.add(node)
            self.clean_stop(node)
        elif f.kind == "clock-step":
            self.step_clock(node, float(f.params["seconds"]))
        else:
            raise RuntimeError(f"no handler for fault kind {f.kind}")

    def step_clock(self, node: str, seconds: float) -> None:
        """Step the node daemon's wall clock (admin `step-clock`, `test_hooks = true`)."""
        try:
            self.topo.admin(node, {"op": "step-clock", "seconds": seconds}, timeout=3.0)
        except Exception as exc:  # the admin client raises its own errors; report them
            raise RuntimeError(f"step-clock {seconds:+} s on {node}: {exc}") from exc

    def clean_stop(self, node: str) -> None:
        """SIGTERM to the daemon, which stops its hierarchies and leaves; bounded wait."""
        proc = self.topo.daemons[node]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(30)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{node}'s daemon did not stop within 30 s of SIGTERM") from None

    def heal(self, f: Fault, node: str) -> None:
        topo, lab = self.topo, self.topo.lab
        assert lab is not None
        if f.kind == "node-crash":
            self.down.discard(node)
            self.stopped.discard(node)
            topo.boot_node(node)
        elif f.kind == "node-pause":
            for pid in self.paused.pop(node, []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        elif f.kind in ("link-cut-one", "link-cut-both", "partition"):
            self.cut.discard(node)
            lab.heal(node)
        elif f.kind == "node-restart":
            self.stopped.discard(node)
            if topo.daemons[node].alive():  # it never stopped: end it before starting again
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(topo.daemons[node].popen.pid, signal.SIGKILL)
                topo.daemons[node].popen.wait(10)
            topo.start_node(node)
        elif f.kind == "clock-step" and topo.daemons[node].alive():
            self.step_clock(node, -float(f.params["seconds"]))  # NTP steps it back
        self.impaired.pop(node, None)

    def heal_all(self) -> None:
        """Undo whatever is still in force (the run ended, or the schedule ran long)."""
        topo, lab = self.topo, self.topo.lab
        assert lab is not None
        for pids in self.paused.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self.paused.clear()
        for node in list(self.cut):
            lab.heal(node)
        self.cut.clear()
        for node in list(self.down):
            lab.forget_addresses(node)
            lab.ports(node, up=True)
        self.down.clear()
        for node in list(self.stopped):
            if not topo.daemons[node].alive():
                shutil.rmtree(topo.tmp / "rsc" / node, ignore_errors=True)
                topo.start_node(node)
        self.stopped.clear()
        self.impaired.clear()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.log:
            if e.get("injected"):
                out[e["kind"]] = out.get(e["kind"], 0) + 1
        return out


# ---------------------------------------------------------------------- one run


def _wait(pred: Any, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return True
        time.sleep(step)
    return False


async def _read_volume(host: str, port: int) -> dict[str, str]:
    """Every record on the volume, decoded by the app's own code from a fresh NBD connection."""
    from ophiura.demo.app import RecordStore
    from ophiura.nbd.client import NbdClient

    client = await NbdClient.connect(host, port, VOLUME)
    try:
        store = RecordStore(client)
        await store.open()
        return {rid: data for rid, (_, data) in store.index.items()}
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def _whole(topo: Topology) -> str | None:
    """The owner when every node is up in some node's view and the hierarchy runs on exactly
    one node; None otherwise."""
    for n in topo.nodes:
        with contextlib.suppress(Exception):
            st = topo.admin(n, {"op": "status"}, timeout=1.5)
            h = st["hierarchies"][HIERARCHY]
            if (
                all(v["state"] in ("up", "self") for v in st["nodes"].values())
                and len(h["running_on"]) == 1
            ):
                return str(h["running_on"][0])
    return None


def run_cluster(opts: ClusterOptions, schedule: Schedule) -> dict[str, Any]:
    """Set up the demo's topology, run the client and the schedule, heal, read back, check."""
    run_id = f"t{os.getpid() % 10000:x}{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix=f"ophiura-torture-cluster-{schedule.seed}-"))
    topo = Topology(tmp, run_id, use_netns=True, dashboard=False, test_hooks=True)
    result: dict[str, Any] = {
        "mode": "cluster",
        "seed": schedule.seed,
        "run_id": run_id,
        "workdir": str(tmp),
        "error": None,
        "healed": False,
        "heal_note": "",
    }
    client: RecordClient | None = None
    poll: StatusPoll | None = None
    nemesis: Nemesis | None = None
    t_setup = time.monotonic()
    try:
        topo.start()
        first = topo.nodes[0]
        if not _wait(lambda: _whole(topo) == first, 90):
            raise RuntimeError(f"{HIERARCHY} not running on {first} within 90 s of start")
        result["setup_s"] = round(time.monotonic() - t_setup, 3)
        client = RecordClient(*topo.app, writers=opts.writers, rate=opts.rate, timeout=0.5)
        topo.loop("client").run(client.start())
        if not _wait(lambda: client is not None and client.ledger.acked, 30, 0.05):
            raise RuntimeError("no record acknowledged within 30 s of the client's start")
        t0 = time.monotonic()
        poll = StatusPoll(topo, t0)
        poll.start()
        nemesis = Nemesis(topo, schedule, t0)
        worker = threading.Thread(target=nemesis.run, name="cluster nemesis", daemon=True)
        worker.start()
        # the schedule's faults all start before `duration`; the last heals may come later
        last = max([f.at + f.duration for f in schedule.faults], default=0.0)
        worker.join(max(schedule.duration, last) + 120)
        if worker.is_alive():
            nemesis.halt()
            worker.join(60)
            result["heal_note"] = "the nemesis ran long; halted"
        t_faults_end = time.monotonic()
        nemesis.heal_all()
        t_heal = time.monotonic()
        owner = None

        stable: list[tuple[float, str]] = []  # (since, owner) while the cluster stays whole

        def healed() -> bool:
            """Whole with the same owner for STABLE_S, and that owner acknowledged a record
            since (a handover right after the heal is part of healing, not of the check)."""
            nonlocal owner
            assert client is not None
            owner = _whole(topo)
            if owner is None or not stable or stable[-1][1] != owner:
                stable[:] = [(time.monotonic(), owner)] if owner else []
                return False
            since = stable[-1][0]
            acked = any(a.done > since and a.node == owner for a in client.ledger.acked[-5:])
            return time.monotonic() - since >= STABLE_S and acked

        result["healed"] = _wait(healed, opts.heal_timeout, 0.3)
        result["heal_s"] = round(time.monotonic() - t_heal, 3)
        if not result["healed"]:
            result["heal_note"] = (
                f"not whole with an acknowledged record within {opts.heal_timeout:g} s of "
                f"healing (owner {owner})"
            )
        loop = topo.loop("client")
        loop.run(client.stop())
        poll.stop()
        app_view = None
        with contextlib.suppress(Exception):
            stored = loop.run(client.fetch_all(), 30)
            app_view = {rid: data for rid, data in stored["records"]}
        volume = None
        where = owner or _whole(topo)
        if where is not None:
            try:
                volume = topo.loop(where).run(_read_volume(*topo.nbd), 60)
            except Exception as exc:
                result["error"] = f"reading the volume on {where}: {type(exc).__name__}: {exc}"
        else:
            result["error"] = "no owner to read the volume from"
        result["read_from"] = where
        result.update(verdict(client.ledger.acked, volume, app_view, poll.samples,
                              (t0, t_faults_end)))  # fmt: skip
        result["attempts"] = client.ledger.attempts
        result["failed_requests"] = len(client.ledger.failures)
        result["polls"] = poll.polls
        result["dual_running_polls"] = poll.dual_running
        result["faults_injected"] = nemesis.counts()
        result["faults_total"] = sum(result["faults_injected"].values())
        result["fault_log"] = nemesis.log
        result["volume_read"] = volume is not None
    except Exception as exc:
        result["error"] = result["error"] or f"{type(exc).__name__}: {exc}"
    finally:
        if nemesis is not None:
            nemesis.halt()
        if poll is not None:
            with contextlib.suppress(Exception):
                poll.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                topo.loop("client").run(client.stop(), 5)
        topo.close()
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result.setdefault("faults_injected", nemesis.counts() if nemesis else {})
    result.setdefault("faults_total", sum(result["faults_injected"].values()))
    for k in ("acked", "split_brain", "availability"):
        result.setdefault(k, 0)
    for k in ("lost", "wrong"):
        result.setdefault(k, None)
    result["schedule"] = schedule.to_json()
    return result


def cluster_failed(result: dict[str, Any]) -> bool:
    return bool(
        result["lost"]
        or result["wrong"]
        or result["split_brain"]
        or not result["healed"]
        or result["error"]
        or not result.get("volume_read")
    )


def _n(v: int | None) -> str:
    return "?" if v is None else str(v)


def cluster_one_line(result: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result["faults_injected"].items()))
    return (
        f"seed={result['seed']} mode=cluster faults={result['faults_total']} ({kinds}) "
        f"acked={result['acked']} lost={_n(result['lost'])} wrong={_n(result['wrong'])} "
        f"split_brain={result['split_brain']} availability={result['availability']:.2f} "
        f"healed={'yes' if result['healed'] else 'NO'}"
        + (f" error={result['error']!r}" if result["error"] else "")
        + (" -> FAIL" if cluster_failed(result) else " -> PASS")
    )
