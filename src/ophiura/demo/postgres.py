"""PostgreSQL 15 on a replicated volume: the pieces `ophiura demo --app postgres` and the
multi-host PostgreSQL tests (tests/cluster/test_multihost_postgres.py) share.

The hierarchy is examples/postgres.toml's: [replicated-volume -> attach -> fs -> ip ->
ocf:heartbeat:pgsql] with the resources named vol, disk, data, vip and db (the outage split
reads their start events by those names). The database is made once, before the cluster
starts, through the very agents the cluster uses (`bootstrap`): initdb -k (data checksums),
fsync and synchronous_commit on, pgbench's tables and the ledger table. The checks afterwards
(`verify_ledger`, `pgbench_invariants`) and the client-observed outage split (`outage_steps`)
only read: they never decide anything about the run but what they report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ophiura.testkit.netns import VIP, VIP_PREFIX, missing_tools, unavailable
from ophiura.testkit.pgwire import LEDGER_DDL, PgConn, digest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGSQL_AGENT = Path("/usr/lib/ocf/resource.d/heartbeat/pgsql")
TOOLS = {"nbdfuse": "nbdfuse", "losetup": "mount", "arping": "arping"}  # command -> package
LINK = "pg"  # the attach agent's symlink under BASE/dev/<node>/


def unusable() -> str | None:
    """Why PostgreSQL cannot run on a replicated volume here, with what to install (None when
    it can): namespaces (root), nbdfuse + loop devices, PostgreSQL 15, the stock pgsql agent."""
    why = unavailable() or missing_tools(**TOOLS)
    if why:
        return why
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN}: apt-get install postgresql-15)"
    if not PGSQL_AGENT.exists():
        return f"no stock pgsql agent ({PGSQL_AGENT}: apt-get install resource-agents)"
    if not os.path.exists("/dev/fuse") or shutil.which("runuser") is None:
        return "no /dev/fuse or no runuser (nbdfuse needs FUSE; runuser is in util-linux)"
    return None


def hierarchy(
    name: str,
    nodes: tuple[str, ...],
    *,
    volume: str,
    he_config: Path,
    control: str,
    nbd_port: int,
    secret: Path,
    he_args: str,
    he_log: str,
    base: Path,
    failback: str | None = None,
) -> str:
    """The [[hierarchies]] TOML of [vol -> disk -> data -> vip -> db]. `base` is a directory
    user postgres can reach (mode 0755 up to it): the mount point, sockets and logs live in
    it; `{node}` in paths is filled in by the cluster."""
    sock = f"{base}/sock/{{node}}"
    node_list = ", ".join(f'"{n}"' for n in nodes)
    fb = f'failback = "{failback}"\n' if failback else ""
    return f"""
[[hierarchies]]
name = "{name}"
nodes = [{node_list}]
ownable = "vol"
shared_data = true
{fb}
[[hierarchies.resources]]
name = "vol"
kind = "replicated-volume"
params = {{ config = "{he_config}", control = "{control}", volume = "{volume}", secret_file = "{secret}", args = "{he_args}", log = "{he_log}", grace = "3" }}
monitor_interval = 1.0
start_timeout = 60.0

[[hierarchies.resources]]
name = "disk"
kind = "attach"
params = {{ address = "127.0.0.1", port = "{nbd_port}", export = "{volume}", link = "{base}/dev/{{node}}/{LINK}" }}
depends_on = ["vol"]
monitor_interval = 1.0

[[hierarchies.resources]]
name = "data"
kind = "fs"
params = {{ device = "{base}/dev/{{node}}/{LINK}", directory = "{base}/mnt", fstype = "ext4", mkfs = "ext4" }}
depends_on = ["disk"]
monitor_interval = 1.0
start_timeout = 60.0

[[hierarchies.resources]]
name = "vip"
kind = "ip"
params = {{ ip = "{VIP}", cidr_netmask = "{VIP_PREFIX}", nic = "ethA", arp_count = "2" }}
depends_on = ["data"]
monitor_interval = 1.0

[[hierarchies.resources]]
name = "db"
kind = "ocf:heartbeat:pgsql"
params = {{ pgctl = "{PG_BIN}/pg_ctl", psql = "{PG_BIN}/psql", pgdata = "{base}/mnt/data", pgdb = "postgres", socketdir = "{sock}", start_opt = "-c unix_socket_directories={sock}", logfile = "{base}/log/pg-{{node}}.log", stop_escalate = "5" }}
depends_on = ["vip"]
monitor_interval = 2.0
start_timeout = 60.0
stop_timeout = 30.0
"""  # noqa: E501


def _run(argv: list[str], timeout: float = 120.0) -> str:
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res.stdout


def bootstrap(tmp: Path, base: Path, toml: str) -> dict[str, float]:
    """Make the database once, on the first node (run it in that node's network namespace,
    `Lab.call`): the HE, attach, fs (mkfs), initdb -k, pgbench -i and the ledger table, then
    everything stopped again; the seconds each part took. The agents are the ones the cluster
    uses; the mounts are in this process's mount namespace, and gone at the end."""
    import asyncio
    import tomllib

    from ophiura.cluster.agents.attach import AttachAgent
    from ophiura.cluster.agents.base import Resource
    from ophiura.cluster.agents.fs import FsAgent
    from ophiura.cluster.agents.process import ProcessAgent
    from ophiura.cluster.agents.replicated_volume import ReplicatedVolumeAgent

    spec = {r["name"]: r for r in tomllib.loads(toml)["hierarchies"][0]["resources"]}

    def res(name: str) -> Resource:
        params = {k: v.replace("{node}", "boot") for k, v in spec[name]["params"].items()}
        return Resource(name, spec[name]["kind"], params)

    procs = ProcessAgent(tmp / "boot-rsc")
    rv, att, fs = ReplicatedVolumeAgent(procs), AttachAgent(procs), FsAgent()
    data, sock = base / "mnt" / "data", base / "sock" / "boot"
    took: dict[str, float] = {}

    async def boot() -> None:
        started: list[tuple[Any, str]] = []
        failed: BaseException | None = None
        try:
            for agent, name in ((rv, "vol"), (att, "disk"), (fs, "data")):
                out = await agent.start(res(name), 120)
                if not out.ok:
                    raise RuntimeError(f"bootstrap: {name} did not start: {out.reason}")
                started.append((agent, name))
                took[name] = out.elapsed
            t0 = time.monotonic()
            _initdb(base, data, sock)
            took["initdb"] = time.monotonic() - t0
        except BaseException as exc:
            failed = exc
            raise
        finally:
            # undo what started; after a failure, best effort (the first error is the news)
            for agent, name in reversed(started):
                out = await agent.stop(res(name), 60)
                if not out.ok and failed is None:
                    raise RuntimeError(f"bootstrap: {name} did not stop: {out.reason}")

    asyncio.run(boot())
    return took


def _initdb(base: Path, data: Path, sock: Path) -> None:
    sock.mkdir(parents=True)
    (base / "log").mkdir(exist_ok=True)
    for d in (sock, base / "log"):
        shutil.chown(d, "postgres", "postgres")
    _run(["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", str(data)])
    pg = ["runuser", "-u", "postgres", "--"]
    _run([*pg, f"{PG_BIN}/initdb", "-k", "-A", "trust", "-U", "postgres", "-D", str(data)])
    with open(data / "postgresql.conf", "a") as f:
        f.write(
            "listen_addresses = '*'\nfsync = on\nsynchronous_commit = on\n"
            "full_page_writes = on\nmax_connections = 30\nshared_buffers = 32MB\n"
        )
    with open(data / "pg_hba.conf", "a") as f:
        f.write("host all all 198.51.100.0/24 trust\n")
    opts = f"-c listen_addresses='' -c unix_socket_directories={sock}"
    _run([*pg, f"{PG_BIN}/pg_ctl", "-D", str(data), "-o", opts, "-w", "start",
          "-l", str(base / "log" / "pg-boot.log")])  # fmt: skip
    try:
        _run([*pg, f"{PG_BIN}/pgbench", "-i", "-s", "1", "-q", "-h", str(sock), "postgres"])
        _run([*pg, f"{PG_BIN}/psql", "-X", "-h", str(sock), "-d", "postgres", "-c", LEDGER_DDL])
    finally:
        _run([*pg, f"{PG_BIN}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"])


def release_loops(base: Path, noted: Iterable[str] = ()) -> None:
    """Detach the loop devices crashed nodes left bound (a real crash takes the kernel with
    it): ours only, found through the nodes' links under `base`/dev and the devices `noted`
    at the crash (/sys shows a loop's backing file only relative to the dead node's mount
    namespace, so a link overwritten since is not enough)."""
    devices = {os.path.realpath(link) for link in (base / "dev").glob(f"*/{LINK}")}
    devices |= set(noted)
    for dev in sorted(devices):
        name = os.path.basename(dev)
        try:
            backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
        except OSError:
            continue
        if name.startswith("loop") and backing.endswith("/volume"):
            subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


def loop_of(base: Path, node: str) -> str | None:
    """The loop device `node`'s attach agent published (to note before it crashes)."""
    dev = os.path.realpath(base / "dev" / node / LINK)
    return dev if dev.startswith("/dev/loop") else None


# --------------------------------------------------------------------------- the clients


def ledger_argv(out: Path, until: Path, duration: float = 300.0) -> list[str]:
    """The ledger client (`ophiura.testkit.pgwire ledger`) against the floating IP: one row per
    transaction, an id recorded only after its COMMIT answered; results to `out` once `until`
    exists."""
    return [sys.executable, "-m", "ophiura.testkit.pgwire", "ledger", "--host", VIP,
            "--out", str(out), "--until", str(until), "--duration", str(duration),
            "--timeout", "3"]  # fmt: skip


def pgbench_argv(seconds: float) -> list[str]:
    """`pgbench -c 4 -T seconds` against the floating IP. With TCP keepalives: a query the
    crashed node had received (and ACKed) but not answered leaves the client with nothing to
    send, and without keepalives it would wait for that answer forever."""
    conninfo = (f"host={VIP} user=postgres dbname=postgres connect_timeout=2 "
                "keepalives_idle=1 keepalives_interval=1 keepalives_count=2")  # fmt: skip
    return [f"{PG_BIN}/pgbench", "-c", "4", "-j", "2", "-T", f"{seconds:g}", "-n", conninfo]


def pgbench_summary(log: str) -> dict[str, Any]:
    """What a pgbench run's output says: transactions processed and failed, tps, aborted."""
    out: dict[str, Any] = {"processed": None, "failed": None, "tps": None, "aborted": False}
    for line in log.splitlines():
        if line.startswith("number of transactions actually processed:"):
            out["processed"] = int(line.split(":")[1].split()[0])
        elif line.startswith("number of failed transactions:"):
            out["failed"] = int(line.split(":")[1].split()[0])
        elif line.startswith("tps = ") and out["tps"] is None:
            out["tps"] = float(line.split()[2])
        elif "aborted" in line.lower():
            out["aborted"] = True
    return out


# --------------------------------------------------------------------------- the checks

Sql = Callable[[str], list[list[str | None]]]


def ask(host: str, query: str, timeout: float = 5.0) -> list[list[str | None]]:
    """`query` against PostgreSQL at `host`:5432 on one fresh connection (run it in the
    client's namespace)."""
    conn = PgConn(host, 5432, "postgres", "postgres", timeout)
    try:
        return conn.query(query)
    finally:
        conn.close()


def verify_ledger(sql: Sql, result: dict[str, Any]) -> dict[str, Any]:
    """Every committed ledger row is there with its digest; rows nobody wrote (neither
    committed nor in doubt) are an error too. `result` is the ledger client's JSON."""
    rows = {int(i): d for i, d in sql("SELECT id, digest FROM ledger")}  # type: ignore[arg-type]
    committed = [int(r) for r, _, _ in result["committed"]]
    missing = [r for r in committed if r not in rows]
    wrong = [r for r in committed if r in rows and rows[r] != digest(r)]
    unexpected = sorted(set(rows) - set(committed) - set(result["in_doubt"]))
    return {
        "committed": len(committed),
        "present": len(committed) - len(missing) - len(wrong),
        "missing": missing[:20],
        "wrong_digest": wrong[:20],
        "lost": len(missing) + len(wrong),
        "unexpected": unexpected[:20],
        "in_doubt": len(result["in_doubt"]),
        "in_doubt_present": sum(1 for r in result["in_doubt"] if r in rows),
        "failed_attempts": len(result["failures"]),
        "rows": len(rows),
    }


INVARIANTS_SQL = """SELECT
    (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),
    (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
    (SELECT count(*) FROM pgbench_history)"""


def pgbench_invariants(sql: Sql) -> dict[str, Any]:
    """pgbench's own consistency rule: every transaction adds the same delta to an account, a
    teller, a branch and one history row, so the four sums are equal."""
    accounts, tellers, branches, history, n = (int(v or 0) for v in sql(INVARIANTS_SQL)[0])
    return {
        "sum_accounts_abalance": accounts,
        "sum_tellers_tbalance": tellers,
        "sum_branches_bbalance": branches,
        "sum_history_delta": history,
        "history_rows": n,
        "hold": accounts == tellers == branches == history,
    }


# --------------------------------------------------------------------------- the outage split

STEPS = {
    "vol": "epoch (HE up, epoch raised)",
    "disk": "attach (nbdfuse + loop)",
    "data": "fsck + mount (journal replay)",
    "vip": "floating IP + ARP",
}


def outage_steps(
    events: list[dict[str, Any]], crash_wall: float, crashed: float, result: dict[str, Any]
) -> dict[str, Any]:
    """The client-observed outage of a crash, step by step: for each step, when it ended
    (seconds after the crash began) and how long it took, from the new owner's `events` and the
    ledger client's commits (`result`). `crash_wall` is when the crash began, `crashed` when
    the old owner's cables were down and its processes dead: a commit sent after that can only
    have been answered by the new owner."""
    ev = [e for e in events if e["time"] >= crash_wall - 0.01]
    dead = next((e["time"] for e in ev if e.get("task") == "node-dead"), None)
    starts: dict[str, dict[str, Any]] = {}
    for e in ev:
        if e.get("kind") == "resource" and e.get("task") == "start" and e.get("rc") == 0:
            starts.setdefault(e["resource"], e)
    before = [a for _, _, a in result["committed"] if a < crashed]
    after = [a for _, sent, a in result["committed"] if sent > crashed]
    last, first = (max(before) if before else None), (min(after) if after else None)
    steps: list[dict[str, Any]] = []

    def step(key: str, what: str, end: float, took: float) -> None:
        steps.append({"step": key, "what": what, "end_s": round(end - crash_wall, 3),
                      "took_s": round(took, 3)})  # fmt: skip

    if dead is not None:
        step("detection", "detection (old owner dead)", dead, dead - crash_wall)
    for r, what in STEPS.items():
        if r in starts:
            step(r, what, starts[r]["time"], starts[r]["elapsed"])
    if first is not None and "vip" in starts:
        step("first-answer", "db recovery -> first answer", first, first - starts["vip"]["time"])
    if "db" in starts:
        step("db-started", "(pgsql agent reports started)", starts["db"]["time"],
             starts["db"]["elapsed"])  # fmt: skip
    outage = None if last is None or first is None else round(first - last, 3)
    return {"steps": steps, "outage_s": outage}


def outage_lines(split: dict[str, Any]) -> list[str]:
    """`outage_steps` as the lines the tests and the demo print."""
    lines = [f"{s['what']:<34} +{s['end_s']:6.3f} s  ({s['took_s']:.3f} s)" for s in split["steps"]]
    if split["outage_s"] is not None:
        lines.append(f"client-observed outage: {split['outage_s']:.3f} s (last commit before -> "
                     "first commit after)")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m ophiura.demo.postgres TMP BASE CLUSTER_TOML OUT`: `bootstrap` as a process of
    its own (the demo runs it inside n1's namespace, so that an interrupt kills it, and its
    mounts and the PostgreSQL it starts, like any other process of the run); the seconds each
    part took go to OUT as JSON. Exit 1 with the reason on stderr if a part failed."""
    import json

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print("usage: python -m ophiura.demo.postgres TMP BASE CLUSTER_TOML OUT", file=sys.stderr)
        return 2
    tmp, base, toml, out = (Path(a) for a in args)
    try:
        took = bootstrap(tmp, base, toml.read_text())
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"making the database failed: {exc}", file=sys.stderr)
        return 1
    out.write_text(json.dumps(took))
    return 0


if __name__ == "__main__":
    sys.exit(main())
