"""PostgreSQL 15 on a replicated volume, failed over by the cluster (issue 10, must-show 1-2).

Three nodes, three SEs (N=3, Q=2) in network namespaces; the hierarchy of
examples/postgres.toml: [replicated-volume -> attach -> fs -> ip -> ocf:heartbeat:pgsql], the
stock OCF agent from Debian's resource-agents running the database unchanged. The database is
made once (`initdb -k`: data checksums; fsync and synchronous_commit on, the defaults) through
the same agents. A client in its own namespace commits ledger rows one per transaction
(recording an id only after its COMMIT answered) while pgbench -c 4 runs; then n1 loses power
(cables, then kill -9 of everything it runs). n2 takes the epoch, attaches the volume
(nbdfuse + loop here), fscks (journal replay) and mounts it, raises the floating IP and starts
PostgreSQL (crash recovery). Then: every committed ledger row is there with its digest,
pgbench's invariants hold, `pg_amcheck --all` finds nothing, and the client-observed outage is
printed split into its steps. Root only.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ophiura.testkit.netns import Lab, missing_tools, se_addr, unavailable
from ophiura.testkit.pgwire import LEDGER_DDL, PgConn, digest

from .netns import REPO, VIP, NsCluster

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGSQL_AGENT = Path("/usr/lib/ocf/resource.d/heartbeat/pgsql")
SE_PORT = 7001
NBD = "127.0.0.1:10809"
CONTROL = "127.0.0.1:7600"
SIZE = "192M"


def _unusable() -> str | None:
    why = unavailable() or missing_tools(nbdfuse="nbdfuse", losetup="mount", arping="arping")
    if why:
        return why
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN}: apt-get install postgresql)"
    if not PGSQL_AGENT.exists():
        return f"no stock pgsql agent ({PGSQL_AGENT}: apt-get install resource-agents)"
    if not os.path.exists("/dev/fuse") or shutil.which("runuser") is None:
        return "no /dev/fuse or no runuser"
    return None


@pytest.fixture
def lab(pgbase: Path) -> Iterator[Lab]:
    why = _unusable()
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    with Lab(storage=False, ses=("a", "b", "c")) as lab:
        yield lab


@pytest.fixture
def pgbase() -> Iterator[Path]:
    """A directory PostgreSQL (user postgres) can reach: pytest's tmp_path is root's 0700.
    Torn down after the lab (which `lab` depends on it for)."""
    base = Path(tempfile.mkdtemp(prefix="ophiura-pg-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        # The loop device the crashed node left bound (a real crash takes the kernel with it):
        # ours only, found through the nodes' links (/sys shows its backing file only
        # relative to the dead node's mount namespace).
        for link in (base / "dev").glob("*/pg"):
            dev = os.path.realpath(link)
            name = os.path.basename(dev)
            try:
                backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
            except OSError:
                continue
            if name.startswith("loop") and backing.endswith("/volume"):
                subprocess.run(["losetup", "-d", dev], check=False)
        shutil.rmtree(base, ignore_errors=True)


def he_toml(tmp: Path) -> Path:
    ses = ", ".join(f'"{s}={se_addr(i)}:{SE_PORT}"' for i, s in enumerate("abc", 1))
    path = tmp / "he.toml"
    path.write_text(
        f'quorum = 2\nse = [{ses}]\nvolume = ["pg:{SIZE}"]\nnbd = "{NBD}"\n'
        'cache = "16M"\nqueue = "32M"\n'
    )
    return path


def hierarchy(tmp: Path, base: Path, secret: Path) -> str:
    he_args = f"--state-dir {tmp}/he-state/{{node}}"
    sock = f"{base}/sock/{{node}}"
    return f"""
[[hierarchies]]
name = "pg"
nodes = ["n1", "n2", "n3"]
ownable = "vol"
shared_data = true

[[hierarchies.resources]]
name = "vol"
kind = "replicated-volume"
params = {{ config = "{he_toml(tmp)}", control = "{CONTROL}", volume = "pg", secret_file = "{secret}", args = "{he_args}", log = "{tmp}/he-{{node}}.log", grace = "3" }}
monitor_interval = 1.0
start_timeout = 60.0

[[hierarchies.resources]]
name = "disk"
kind = "attach"
params = {{ address = "127.0.0.1", port = "10809", export = "pg", link = "{base}/dev/{{node}}/pg" }}
depends_on = ["vol"]
monitor_interval = 1.0

[[hierarchies.resources]]
name = "data"
kind = "fs"
params = {{ device = "{base}/dev/{{node}}/pg", directory = "{base}/mnt", fstype = "ext4", mkfs = "ext4" }}
depends_on = ["disk"]
monitor_interval = 1.0
start_timeout = 60.0

[[hierarchies.resources]]
name = "vip"
kind = "ip"
params = {{ ip = "{VIP}", cidr_netmask = "25", nic = "ethA", arp_count = "2" }}
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
        raise AssertionError(f"{' '.join(argv)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res.stdout


def bootstrap(tmp: Path, base: Path, secret: Path, toml: str) -> dict[str, float]:
    """In n1's network namespace (run by `lab.call`): the HE, attach, fs (mkfs), initdb -k,
    pgbench -i and the ledger table, then everything stopped again. The agents are the ones
    the cluster uses; the mounts are in this process's mount namespace, and gone at the end."""
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
        for agent, name in ((rv, "vol"), (att, "disk"), (fs, "data")):
            out = await agent.start(res(name), 120)
            assert out.ok, (name, out)
            took[name] = out.elapsed
        t0 = time.monotonic()
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
        took["initdb"] = time.monotonic() - t0
        for agent, name in ((fs, "data"), (att, "disk"), (rv, "vol")):
            out = await agent.stop(res(name), 60)
            assert out.ok, (name, out)

    asyncio.run(boot())
    return took


def sql(lab: Lab, query: str, timeout: float = 5.0) -> list[list[str | None]]:
    """`query` against the floating IP, from the client's namespace."""

    def ask() -> list[list[str | None]]:
        conn = PgConn(VIP, 5432, "postgres", "postgres", timeout)
        try:
            return conn.query(query)
        finally:
            conn.close()

    return lab.call("client", ask, timeout=timeout + 5)


def count_rows(lab: Lab) -> int:
    try:
        return int(sql(lab, "SELECT count(*) FROM ledger", 1.0)[0][0] or 0)
    except Exception:  # no answer (yet): the database is away
        return -1


def start_ses(lab: Lab, tmp: Path, secret: Path, env: dict[str, str]) -> None:
    for i, s in enumerate("abc", 1):
        argv = [sys.executable, "-m", "ophiura.cli", "se", "--name", s, "--data-dir",
                str(tmp / f"se-{s}"), "--listen", f"{se_addr(i)}:{SE_PORT}",
                "--secret-file", str(secret)]  # fmt: skip
        lab.popen(f"se-{s}", argv, f"se-{s}", tmp / f"se-{s}.log", env=env, cwd=REPO)
    from ophiura.testkit.waiting import wait_for

    from .netns import _connects

    for i, s in enumerate("abc", 1):
        wait_for(lambda i=i, s=s: lab.call(f"se-{s}", _connects, se_addr(i), SE_PORT), 30,
                 f"SE {s} listening")  # fmt: skip


def outage_split(
    c: NsCluster, crash_wall: float, crashed: float, result: dict[str, Any]
) -> list[str]:
    """The client-observed outage, step by step (seconds after the crash when each step ended,
    and how long it took), from n2's event log and the client's commits. `crash_wall` is when
    the crash began, `crashed` when n1's cables were down and its processes dead: a commit
    sent after that can only have been answered by n2."""
    ev = [e for e in c.events("n2") if e["time"] >= crash_wall - 0.01]
    dead = next((e["time"] for e in ev if e.get("task") == "node-dead" and e.get("peer") == "n1"),
                None)  # fmt: skip
    starts = {e["resource"]: e for e in ev if e.get("kind") == "resource" and e.get("task") ==
              "start" and e.get("rc") == 0}  # fmt: skip
    before = [a for _, _, a in result["committed"] if a < crashed]
    after = [a for _, sent, a in result["committed"] if sent > crashed]
    last, first = (max(before) if before else None), (min(after) if after else None)
    lines = []

    def line(what: str, end: float, took: float) -> None:
        lines.append(f"{what:<34} +{end - crash_wall:6.3f} s  ({took:.3f} s)")

    if dead is not None:
        line("detection (n1 dead on n2)", dead, dead - crash_wall)
    names = {"vol": "epoch (HE up, epoch raised)", "disk": "attach (nbdfuse + loop)",
             "data": "fsck + mount (journal replay)", "vip": "floating IP + ARP"}  # fmt: skip
    for r, what in names.items():
        if r in starts:
            line(what, starts[r]["time"], starts[r]["elapsed"])
    if first is not None and "vip" in starts:
        line("db recovery -> first answer", first, first - starts["vip"]["time"])
    if "db" in starts:
        line("(pgsql agent reports started)", starts["db"]["time"], starts["db"]["elapsed"])
    if last is not None and first is not None:
        lines.append(f"client-observed outage: {first - last:.3f} s (last commit before the "
                     f"crash -> first commit after)")  # fmt: skip
    return lines


@pytest.mark.timeout(240)
def test_postgres_survives_the_crash_of_its_node(lab: Lab, tmp_path: Path, pgbase: Path) -> None:
    t_begin = time.monotonic()
    secret = tmp_path / "secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    secret.chmod(0o600)
    toml = hierarchy(tmp_path, pgbase, secret)
    c = NsCluster(lab, tmp_path, toml)
    start_ses(lab, tmp_path, secret, c.env("se"))
    took = lab.call("n1", bootstrap, tmp_path, pgbase, secret, toml, timeout=180)
    t_boot = time.monotonic() - t_begin
    c.start_all()
    c.wait_for("pg running on n1", lambda: c.serving("n2", "pg") == ["n1"], 90)
    assert c.cli("n1", "validate", str(c.path)).returncode == 0

    env = c.env("client")
    ledger_out, stop = tmp_path / "ledger.json", tmp_path / "ledger.stop"
    client = lab.popen("client", [sys.executable, "-m", "ophiura.testkit.pgwire", "ledger",
                                  "--host", VIP, "--out", str(ledger_out), "--until", str(stop),
                                  "--duration", "150", "--timeout", "3"],
                       "ledger client", tmp_path / "ledger.log", env=env)  # fmt: skip
    bench = lab.popen("client", [f"{PG_BIN}/pgbench", "-h", VIP, "-U", "postgres", "-c", "4",
                                 "-j", "2", "-T", "8", "-n", "postgres"],
                      "pgbench", tmp_path / "pgbench.log", env=env)  # fmt: skip
    try:
        c.wait_for("ledger rows committed on n1", lambda: count_rows(lab) >= 30, 30)
        time.sleep(0.5)  # pgbench mid-run when the power goes (not a wait for a state)
        crash_wall = time.time()
        c.crash("n1")
        crashed = time.time()
        c.wait_for("pg taken over by n2", lambda: c.serving("n3", "pg") == ["n2"], 90)
        n_after = count_rows(lab)
        c.wait_for("ledger rows committed on n2", lambda: count_rows(lab) >= n_after + 20, 30)
    finally:
        stop.touch()  # the client writes its results and exits
        try:
            client.popen.wait(20)
        finally:
            client.stop(timeout=5)
        bench.popen.wait(30)
    result = json.loads(ledger_out.read_text())
    bench_log = (tmp_path / "pgbench.log").read_text(errors="replace")

    # Every committed row is there with its digest (rows in doubt may or may not be).
    rows = {int(i): d for i, d in sql(lab, "SELECT id, digest FROM ledger")}
    committed = [int(r) for r, _, _ in result["committed"]]
    missing = [r for r in committed if r not in rows]
    wrong = [r for r in committed if r in rows and rows[r] != digest(r)]
    assert not missing and not wrong, (missing[:10], wrong[:10])
    assert any(sent > crashed for _, sent, _ in result["committed"]), "nothing committed on n2"
    assert set(rows) <= set(committed) | set(result["in_doubt"]), "rows nobody wrote"

    # pgbench's invariants: every transaction is whole or absent.
    inv = sql(
        lab,
        """SELECT
        (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
        (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
        (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),
        (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
        (SELECT count(*) FROM pgbench_history)""",
    )[0]
    accounts, tellers, branches, history, n_history = inv
    assert accounts == tellers == branches == history, (inv, bench_log[-2000:])
    assert int(n_history or 0) > 0, bench_log[-2000:]

    # pg_amcheck (B-tree and heap checks of every database) finds nothing.
    amcheck = subprocess.run(
        ["ip", "netns", "exec", lab.ns("client"), f"{PG_BIN}/pg_amcheck", "-h", VIP, "-U",
         "postgres", "--all", "--install-missing", "--heapallindexed"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert amcheck.returncode == 0 and not amcheck.stdout.strip(), amcheck.stdout + amcheck.stderr

    # n2 replayed ext4's journal (n1 died with it mounted) and PostgreSQL its WAL.
    fsck = [e for e in c.events("n2") if e.get("resource") == "data" and e.get("task") == "start"]
    assert fsck and "recovering journal" in fsck[-1].get("output", ""), fsck
    pg_log = (pgbase / "log" / "pg-n2.log").read_text(errors="replace")
    assert "automatic recovery in progress" in pg_log, pg_log[-2000:]

    split = outage_split(c, crash_wall, crashed, result)
    print(
        f"\npostgres failover: bootstrap {t_boot:.1f} s ({', '.join(f'{k} {v:.2f} s' for k, v in took.items())}); "  # noqa: E501
        f"{len(committed)} ledger rows committed ({len(result['in_doubt'])} in doubt), "
        f"pgbench history {n_history} rows; {len(result['failures'])} failed attempts\n  "
        + "\n  ".join(split)
        + "\n"
        + c.timeline("n2", crash_wall)
    )
