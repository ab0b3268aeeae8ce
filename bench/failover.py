"""`python -m bench failover`: failover time of ophiura's cluster against keepalived (issue 4, 7).

Both run in the same network namespaces (`tests/cluster/netns.py`: three nodes on two bridged
heartbeat networks, a client on network A, an `ophiura target` on a storage network; everything
on 198.51.100.0/24, nothing in the root namespace), in the same run, and each run crashes the
node that serves the floating IP 198.51.100.100 as a power loss would: its bridge ports down,
then kill -9 of every process of that node (in that order: nothing a dying process sends gets
out, such as the priority-0 advert keepalived's VRRP child sends when its parent is killed).
A client in its own namespace sends an HTTP GET to the VIP every 10 ms (each with a 0.3 s
timeout) and records who answered and when.

  ophiura      `ophiura node` x3, default timings (heartbeat 0.1 s, deadline 0.7 s), hierarchy
               [volume (SCSI-3 PR on the LUN, PREEMPT AND ABORT) -> ip -> http.server (process)]
  keepalived   VRRPv3 (`version 3`), advert 0.1 s and 1 s, priorities 150/100/50, the VIP only;
               http.server already runs on every node (bound to 0.0.0.0): keepalived moves an
               address, ophiura also takes the LUN over and starts the service

Per run:
  detection    ophiura: the new owner's `node-dead` event; keepalived: the VIP appears on the
               new master (keepalived adds it on the MASTER transition), both from the crash
  VIP up       the VIP is configured on the new owner (a thread polls it there every 5 ms)
  outage       client-observed: last answer from the old node -> first answer from the new one
  first answer from the crash to the new node's first answer (equal to the outage unless the
               client already went unanswered before the crash)

Each crash comes at a random phase of the heartbeat (0.1 s) or advert interval (seeded), so the
runs sample the whole detection range (keepalived: 3 adverts + skew minus the time since the
last advert). Between runs the crashed node comes back as after a reboot (its VIP removed,
ports up, daemons started again). ophiura's failback is manual, so the next run crashes the new
owner; keepalived preempts, so every run crashes n1 again. Root only (prints why and exits 0
otherwise). `--quick` does 3 runs, `--json`/`--markdown` for machines and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.cluster.netns import (  # noqa: E402
    HTTP_PORT,
    HttpClient,
    NsCluster,
    crash_host,
    web_hierarchy,
)

from ophiura.testkit.netns import (  # noqa: E402
    VIP,
    Lab,
    ensure_tools,
    in_netns,
    sh,
    unavailable,
)
from ophiura.testkit.waiting import wait_for  # noqa: E402

NODES = ("n1", "n2", "n3")
KA_PRIORITY = {"n1": 150, "n2": 100, "n3": 50}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    system: str
    old: str
    new: str | None
    detect: float | None
    vip_up: float | None
    outage: float | None
    first_answer: float | None
    answers: dict[str, int] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)  # ophiura: new owner's events
    error: str = ""


class VipWatch:
    """Threads inside the candidate nodes' namespaces, each polling every 5 ms whether the VIP
    is a local address there (bind() succeeds only then); the monotonic time it first is."""

    def __init__(self, lab: Lab, nodes: list[str], timeout: float = 15.0) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(lab.ns(n), n, timeout), daemon=True)
            for n in nodes
        ]
        for t in self._threads:
            t.start()

    def _watch(self, ns: str, node: str, timeout: float) -> None:
        def poll() -> None:
            end = time.monotonic() + timeout
            while not self._stop.is_set() and time.monotonic() < end:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    try:
                        s.bind((VIP, 0))
                    except OSError:
                        pass
                    else:
                        self.seen[node] = time.monotonic()
                        return
                time.sleep(0.005)

        with contextlib.suppress(Exception):
            in_netns(ns, poll, timeout=timeout + 5)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


def remove_vip(lab: Lab, node: str) -> None:
    """A rebooted machine comes back without its floating address."""
    sh("ip", "-n", lab.ns(node), "addr", "del", f"{VIP}/25", "dev", "ethA", check=False)


# --------------------------------------------------------------------------- ophiura


def bench_ophiura(runs: int, work: Path, rng: random.Random) -> list[Run]:
    out: list[Run] = []
    with Lab() as lab:
        c = NsCluster(lab, work, web_hierarchy(work / "www"))
        c.start_target()
        c.start_all()
        c.wait_for("web on n1", lambda: c.serving("n2") == ["n1"], 30)
        for i in range(runs):
            owner = c.serving(next(n for n in NODES if n in c.daemons and c.daemons[n].alive()))
            assert len(owner) == 1, owner
            old = owner[0]
            others = [n for n in NODES if n != old]
            watch = VipWatch(lab, others)
            client = HttpClient(lab, work / f"client-{i}.json", HTTP_PORT, duration=20.0)
            try:
                time.sleep(0.7 + rng.uniform(0, 0.1))  # any phase of the 0.1 s heartbeat
                crash = c.crash(old)
                crashed_wall = c.crashed_at
                # wait on the VIP watch, not on status calls: they would compete for the CPU
                end = time.monotonic() + 15
                while not watch.seen and time.monotonic() < end:
                    time.sleep(0.02)
                time.sleep(0.5)
                c.wait_for(
                    f"run {i}: a new owner",
                    lambda o=others[0], old=old: len(c.serving(o)) == 1 and c.serving(o)[0] != old,
                    15,
                )
            finally:
                result = client.finish()
                watch.close()
            new = c.serving(others[0])[0]
            dead = [
                e["time"]
                for e in c.events(new)
                if e.get("task") == "node-dead"
                and e.get("peer") == old
                and e["time"] >= crashed_wall
            ]
            o = HttpClient.outage(result, crash, old, new)
            steps = {
                f"{e.get('resource') or e['kind']} {e['task']}": round(e["time"] - crashed_wall, 3)
                for e in c.events(new)
                if e["time"] >= crashed_wall and e["kind"] in ("node", "hierarchy", "resource")
            }
            run = Run(
                "ophiura",
                old,
                new,
                min(dead) - crashed_wall if dead else None,
                watch.seen[new] - crash if new in watch.seen else None,
                o.seconds,
                o.since_crash,
                o.answered_by,
                steps,
            )
            out.append(run)
            say(f"ophiura run {i + 1}/{runs}: {old} -> {new}: {_fmt_run(run)}")
            # the crashed node reboots: no VIP, ports up, daemon started, settled
            remove_vip(lab, old)
            lab.ports(old, up=True)
            c.start(old)
            c.wait_for(
                f"{old} back",
                lambda old=old: _settled(c.status(old), old),
                30,
            )
            time.sleep(0.3)
    return out


def _settled(status: dict[str, Any], me: str) -> bool:
    nodes = status["nodes"]
    return nodes[me]["node_state"] == "online" and all(
        v["state"] in ("self", "up") for v in nodes.values()
    )


# --------------------------------------------------------------------------- keepalived


KA_CONF = """global_defs {{
    router_id {node}
    script_user root
    enable_script_security
}}
vrrp_instance web {{
    version 3
    state BACKUP
    interface ethA
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {vip}/25 dev ethA
    }}
}}
"""


def keepalived_version() -> str:
    try:
        res = subprocess.run(["keepalived", "--version"], capture_output=True, text=True,
                             timeout=10, check=False)  # fmt: skip
    except OSError:
        return "not installed"
    return (res.stdout + res.stderr).strip().splitlines()[0] if res.stdout + res.stderr else "?"


def bench_keepalived(runs: int, advert: float, work: Path, rng: random.Random) -> list[Run]:
    out: list[Run] = []
    www = work / "www"
    with Lab(storage=False) as lab:

        def start(node: str) -> None:
            (www / node).mkdir(parents=True, exist_ok=True)
            (www / node / "index.html").write_text(f"{node}\n")
            conf = work / f"keepalived-{node}.conf"
            conf.write_text(
                KA_CONF.format(node=node, priority=KA_PRIORITY[node], advert=advert, vip=VIP)
            )
            lab.popen(node, [sys.executable, "-S", "-m", "http.server", str(HTTP_PORT),
                             "--bind", "0.0.0.0", "--directory", str(www / node)],
                      f"{node}:http", work / f"http-{node}.log")  # fmt: skip
            for pid in (work / f"ka-{node}.pid", work / f"ka-{node}-vrrp.pid"):
                pid.unlink(missing_ok=True)  # a rebooted machine has an empty /run
            lab.popen(node, ["keepalived", "-n", "-l", "-D", "-P", "-f", str(conf),
                             "-p", str(work / f"ka-{node}.pid"),
                             "-r", str(work / f"ka-{node}-vrrp.pid")],
                      f"{node}:keepalived", work / f"keepalived-{node}.log")  # fmt: skip

        def master() -> list[str]:
            return [n for n in NODES if VIP in lab.addresses(n)]

        def logs() -> str:
            return "\n".join(
                (work / f"keepalived-{n}.log").read_text(errors="replace")[-1500:] for n in NODES
            )

        def wait(what: str, pred: Any, timeout: float) -> None:
            wait_for(pred, timeout, f"keepalived: {what}", ignore=(), details=logs,
                     error=RuntimeError)  # fmt: skip

        for n in NODES:
            start(n)
        wait("n1 master", lambda: master() == ["n1"], 30)
        time.sleep(1.0 + 3 * advert)
        for i in range(runs):
            old = "n1"
            others = ["n2", "n3"]
            watch = VipWatch(lab, others)
            client = HttpClient(lab, work / f"client-{advert}-{i}.json", HTTP_PORT, duration=20.0)
            try:
                time.sleep(0.7 + rng.uniform(0, advert))  # any phase of the advert interval
                crash = time.monotonic()
                crash_host(lab, old)
                wait("a new master", lambda: bool(set(master()) - {"n1"}), 15)
                time.sleep(0.4)
            finally:
                result = client.finish()
                watch.close()
            news = [n for n in master() if n != old]
            new = news[0] if news else None
            o = HttpClient.outage(result, crash, old, new or "?")
            vip_up = watch.seen[new] - crash if new in watch.seen else None
            run = Run(f"keepalived {advert:g} s", old, new, vip_up, vip_up, o.seconds,
                      o.since_crash, o.answered_by)  # fmt: skip
            out.append(run)
            say(f"keepalived advert {advert:g} s run {i + 1}/{runs}: {old} -> {new}: "
                f"{_fmt_run(run)}")  # fmt: skip
            remove_vip(lab, old)
            lab.ports(old, up=True)
            start(old)
            wait("n1 master again", lambda: master() == ["n1"], 30)
            time.sleep(1.0 + 3 * advert)  # the backups' master-down timers run from n1's adverts
    return out


# --------------------------------------------------------------------------- report


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _fmt_run(r: Run) -> str:
    return (
        f"detect {_fmt(r.detect)} s, VIP up {_fmt(r.vip_up)} s, client outage "
        f"{_fmt(r.outage)} s (first answer {_fmt(r.first_answer)} s after the crash)"
    )


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for system in dict.fromkeys(r.system for r in runs):
        rs = [r for r in runs if r.system == system]
        row: dict[str, Any] = {"system": system, "runs": len(rs)}
        for key in ("detect", "vip_up", "outage", "first_answer"):
            vals = [getattr(r, key) for r in rs if getattr(r, key) is not None]
            row[key] = (
                {"mean": statistics.mean(vals), "median": statistics.median(vals),
                 "max": max(vals), "n": len(vals)}
                if vals else None
            )  # fmt: skip
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    head = ["system", "runs", "detection mean / median / max (s)",
            "client outage mean / median / max (s)",
            "first answer after the crash mean / median / max (s)"]  # fmt: skip

    def cell(s: dict[str, float] | None) -> str:
        if not s:
            return "-"
        return f"{s['mean']:.3f} / {s['median']:.3f} / {s['max']:.3f}"

    lines = [[r["system"], str(r["runs"]), cell(r["detect"]), cell(r["outage"]),
              cell(r["first_answer"])] for r in rows]  # fmt: skip
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line) for line in [head, *lines])


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "keepalived": keepalived_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench failover", description=__doc__.splitlines()[0]
    )
    p.add_argument("--runs", type=int, default=None, help="runs per system (default 10)")
    p.add_argument("--quick", action="store_true", help="3 runs per system")
    p.add_argument("--systems", default="ophiura,keepalived-0.1,keepalived-1",
                   help="comma-separated: ophiura, keepalived-0.1, keepalived-1")  # fmt: skip
    p.add_argument("--workdir", type=Path, default=None, help="logs and results.json")
    p.add_argument("--seed", type=int, default=1, help="for the crash phase (default 1)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = p.parse_args(argv)
    args.runs = args.runs or (3 if args.quick else 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    why = unavailable()
    if why:
        say(f"failover benchmark not run: {why}")
        return 0
    ensure_tools("keepalived", "arping", "nftables")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ophiura-failover-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    runs: list[Run] = []
    errors: dict[str, str] = {}
    rng = random.Random(args.seed)
    for system in [s.strip() for s in args.systems.split(",") if s.strip()]:
        sub = work / system
        sub.mkdir(parents=True, exist_ok=True)
        say(f"== {system}: {args.runs} runs (logs in {sub})")
        try:
            if system == "ophiura":
                runs += bench_ophiura(args.runs, sub, rng)
            elif system.startswith("keepalived-"):
                if subprocess.run(["which", "keepalived"], capture_output=True).returncode:
                    errors[system] = "keepalived is not installed (apt-get install -y keepalived)"
                    say(f"== {system}: {errors[system]}")
                    continue
                runs += bench_keepalived(args.runs, float(system.split("-", 1)[1]), sub, rng)
            else:
                errors[system] = "unknown system"
        except Exception as exc:  # report what we have; the log says what broke
            errors[system] = f"{type(exc).__name__}: {exc}"
            say(f"== {system} failed: {errors[system]}")
    rows = summarize(runs)
    report = {
        "machine": info,
        "command": " ".join(["python -m bench failover", *(argv or sys.argv[1:])]),
        "runs": [asdict(r) for r in runs],
        "summary": rows,
        "errors": errors,
    }
    (work / "results.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(rows, markdown=args.markdown))
        for k, v in errors.items():
            print(f"{k}: {v}")
        print(f"results: {work / 'results.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
