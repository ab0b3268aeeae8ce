"""PostgreSQL 15 on a replicated volume, failed over by the cluster (issue 10, must-shows 1-4).

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
printed split into its steps. The same with an SE killed during the load and restarted after
the failover, then a manual switchover back to the rebooted n1; and `pgbench -T 60` while a
random SE is killed every few seconds, with no error seen by any client. Root only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
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
from ophiura.testkit.procs import Proc

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
        # The loop devices crashed nodes left bound (a real crash takes the kernel with it):
        # ours only, found through the nodes' links and what `Story.crash` noted (/sys shows
        # their backing file only relative to the dead node's mount namespace).
        noted = base / "stale-loops"
        devices = {os.path.realpath(link) for link in (base / "dev").glob("*/pg")}
        if noted.exists():
            devices |= set(noted.read_text().split())
        for dev in sorted(devices):
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


class Story:
    """One run: three SEs, the database made once, three nodes, the clients, the checks."""

    def __init__(self, lab: Lab, tmp: Path, base: Path) -> None:
        self.lab, self.tmp, self.base = lab, tmp, base
        self.secret = tmp / "secret"
        self.secret.write_text(secrets.token_hex(32) + "\n")
        self.secret.chmod(0o600)
        self.toml = hierarchy(tmp, base, self.secret)
        self.c = NsCluster(lab, tmp, self.toml)
        self.ledger: Proc | None = None
        self.benches: list[Path] = []

    # -- setting up ---------------------------------------------------------------------------

    def setup(self) -> str:
        """SEs, the database (made through n1), the cluster with pg running on n1."""
        t0 = time.monotonic()
        for s in "abc":
            self.start_se(s, wait=False)
        for s in "abc":
            self.wait_se(s)
        took = self.lab.call("n1", bootstrap, self.tmp, self.base, self.secret, self.toml,
                             timeout=180)  # fmt: skip
        t_boot = time.monotonic() - t0
        self.c.start_all()
        self.c.wait_for("pg running on n1", lambda: self.c.serving("n2", "pg") == ["n1"], 90)
        assert self.c.cli("n1", "validate", str(self.c.path)).returncode == 0
        return f"bootstrap {t_boot:.1f} s (" + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                        took.items()) + ")"  # fmt: skip

    def start_se(self, name: str, wait: bool = True) -> None:
        i = "abc".index(name) + 1
        argv = [sys.executable, "-m", "ophiura.cli", "se", "--name", name, "--data-dir",
                str(self.tmp / f"se-{name}"), "--listen", f"{se_addr(i)}:{SE_PORT}",
                "--secret-file", str(self.secret)]  # fmt: skip
        self.lab.popen(f"se-{name}", argv, f"se-{name}", self.tmp / f"se-{name}.log",
                       env=self.c.env("se"), cwd=REPO)  # fmt: skip
        if wait:
            self.wait_se(name)

    def wait_se(self, name: str) -> None:
        i = "abc".index(name) + 1
        addr, host = se_addr(i), f"se-{name}"
        self.c.wait_for(f"SE {name} listening",
                        lambda: self.lab.call(host, _connects, addr, SE_PORT), 30)  # fmt: skip

    def kill_se(self, name: str) -> None:
        """kill -9 of the SE (everything in its namespace)."""
        self.lab.kill_host(f"se-{name}")

    def se_states(self, node: str) -> dict[str, str]:
        """What the HE on `node` says of each SE's replica of `pg` (`up` = in sync)."""
        from ophiura.replication.he.control import control_call

        host, port = CONTROL.split(":")
        key = self.secret.read_text().strip().encode()
        call = control_call(host, int(port), key, "status", timeout=3)
        st = self.lab.call(node, lambda: asyncio.run(call))
        (vol,) = [v for v in st["volumes"] if v["name"] == "pg"]
        return {r["name"]: r["state"] for r in vol["ses"]}

    # -- clients ------------------------------------------------------------------------------

    def start_ledger(self) -> None:
        argv = [sys.executable, "-m", "ophiura.testkit.pgwire", "ledger", "--host", VIP,
                "--out", str(self.tmp / "ledger.json"), "--until", str(self.tmp / "ledger.stop"),
                "--duration", "300", "--timeout", "3"]  # fmt: skip
        self.ledger = self.lab.popen("client", argv, "ledger client", self.tmp / "ledger.log",
                                     env=self.c.env("client"))  # fmt: skip

    def finish_ledger(self) -> dict[str, Any]:
        assert self.ledger is not None
        (self.tmp / "ledger.stop").touch()  # the client writes its results and exits
        try:
            self.ledger.popen.wait(20)
        finally:
            self.ledger.stop(timeout=5)
        return json.loads((self.tmp / "ledger.json").read_text())

    def pgbench(self, seconds: int) -> Proc:
        """`pgbench -c 4 -T seconds` against the floating IP. With TCP keepalives: a query
        the crashed node had received (and ACKed) but not answered leaves the client with
        nothing to send, and without keepalives it would wait for that answer forever."""
        log = self.tmp / f"pgbench-{len(self.benches) + 1}.log"
        self.benches.append(log)
        conninfo = (f"host={VIP} user=postgres dbname=postgres connect_timeout=2 "
                    "keepalives_idle=1 keepalives_interval=1 keepalives_count=2")  # fmt: skip
        argv = [f"{PG_BIN}/pgbench", "-c", "4", "-j", "2", "-T", str(seconds), "-n", conninfo]
        return self.lab.popen("client", argv, "pgbench", log, env=self.c.env("client"))

    @staticmethod
    def wait_bench(bench: Proc, timeout: float = 30.0) -> int:
        """pgbench's exit status; it is stopped (and the test fails) if it outlives `timeout`."""
        try:
            return bench.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            bench.stop(timeout=5)
            late = f"pgbench still running {timeout:g} s later\n{bench.tail()}"
            raise AssertionError(late) from None

    def rows_grow(self, what: str, n: int = 20, timeout: float = 30) -> None:
        start = count_rows(self.lab)
        self.c.wait_for(what, lambda: count_rows(self.lab) >= max(start, 0) + n, timeout)

    # -- faults -------------------------------------------------------------------------------

    def crash(self, node: str) -> tuple[float, float]:
        """`node` loses power; (wall clock when it began, when it was done). The loop device it
        leaves bound is noted for the teardown (its link is overwritten when it boots again)."""
        crash_wall = time.time()
        self.c.crash(node)
        crashed = time.time()
        dev = os.path.realpath(self.base / "dev" / node / "pg")
        if dev.startswith("/dev/loop"):
            with open(self.base / "stale-loops", "a") as f:
                f.write(dev + "\n")
        return crash_wall, crashed

    def boot(self, node: str) -> None:
        """The crashed node comes back: what a reboot clears is gone (/run, the floating IP)."""
        shutil.rmtree(self.tmp / "rsc" / node, ignore_errors=True)
        (self.base / "dev" / node / "pg").unlink(missing_ok=True)
        self.lab.forget_addresses(node)
        self.lab.ports(node, up=True)
        self.c.start(node)
        self.c.wait_for(f"{node} online", lambda: self.c.status(node)["state"] == "online", 30)

    # -- checking -----------------------------------------------------------------------------

    def check(self, result: dict[str, Any]) -> str:
        """Every committed ledger row is there with its digest, pgbench's invariants hold,
        pg_amcheck finds nothing; a summary line."""
        rows = {int(i): d for i, d in sql(self.lab, "SELECT id, digest FROM ledger")}  # type: ignore[arg-type]
        committed = [int(r) for r, _, _ in result["committed"]]
        missing = [r for r in committed if r not in rows]
        wrong = [r for r in committed if r in rows and rows[r] != digest(r)]
        assert not missing and not wrong, (missing[:10], wrong[:10])
        assert set(rows) <= set(committed) | set(result["in_doubt"]), "rows nobody wrote"
        inv = sql(
            self.lab,
            """SELECT
            (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
            (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
            (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),
            (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
            (SELECT count(*) FROM pgbench_history)""",
        )[0]
        accounts, tellers, branches, history, n_history = inv
        logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in self.benches)
        assert accounts == tellers == branches == history, (inv, logs)
        assert int(n_history or 0) > 0, logs
        amcheck = subprocess.run(
            ["ip", "netns", "exec", self.lab.ns("client"), f"{PG_BIN}/pg_amcheck", "-h", VIP,
             "-U", "postgres", "--all", "--install-missing", "--heapallindexed"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert amcheck.returncode == 0 and not amcheck.stdout.strip(), (
            amcheck.stdout + amcheck.stderr
        )
        return (
            f"{len(committed)} ledger rows committed ({len(result['in_doubt'])} in doubt, "
            f"{len(result['failures'])} failed attempts), pgbench history {n_history} rows, "
            "pg_amcheck clean"
        )

    def recovered(self, node: str) -> None:
        """`node` replayed ext4's journal and PostgreSQL its WAL (its predecessor crashed)."""
        starts = [e for e in self.c.events(node)
                  if e.get("resource") == "data" and e.get("task") == "start"]  # fmt: skip
        assert starts and "recovering journal" in starts[-1].get("output", ""), starts
        pg_log = (self.base / "log" / f"pg-{node}.log").read_text(errors="replace")
        assert "automatic recovery in progress" in pg_log, pg_log[-2000:]


def _connects(host: str, port: int) -> bool:
    from .netns import _connects as connects

    return connects(host, port)


def outage_split(
    c: NsCluster, crash_wall: float, crashed: float, result: dict[str, Any], node: str = "n2"
) -> list[str]:
    """The client-observed outage, step by step (seconds after the crash when each step ended,
    and how long it took), from `node`'s event log and the client's commits. `crash_wall` is
    when the crash began, `crashed` when the old owner's cables were down and its processes
    dead: a commit sent after that can only have been answered by the new owner."""
    ev = [e for e in c.events(node) if e["time"] >= crash_wall - 0.01]
    dead = next((e["time"] for e in ev if e.get("task") == "node-dead"), None)
    starts: dict[str, dict[str, Any]] = {}
    for e in ev:
        if e.get("kind") == "resource" and e.get("task") == "start" and e.get("rc") == 0:
            starts.setdefault(e["resource"], e)
    before = [a for _, _, a in result["committed"] if a < crashed]
    after = [a for _, sent, a in result["committed"] if sent > crashed]
    last, first = (max(before) if before else None), (min(after) if after else None)
    lines = []

    def line(what: str, end: float, took: float) -> None:
        lines.append(f"{what:<34} +{end - crash_wall:6.3f} s  ({took:.3f} s)")

    if dead is not None:
        line("detection (old owner dead)", dead, dead - crash_wall)
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
        lines.append(f"client-observed outage: {first - last:.3f} s (last commit before -> "
                     "first commit after)")  # fmt: skip
    return lines


@pytest.fixture
def story(lab: Lab, tmp_path: Path, pgbase: Path) -> Story:
    return Story(lab, tmp_path, pgbase)


@pytest.mark.timeout(240)
def test_postgres_survives_the_crash_of_its_node(story: Story) -> None:
    """Must-show 1 and 2: crash of the owner under pgbench and the ledger client."""
    boot = story.setup()
    story.start_ledger()
    bench = story.pgbench(8)
    try:
        story.c.wait_for("ledger rows on n1", lambda: count_rows(story.lab) >= 30, 30)
        time.sleep(0.5)  # pgbench mid-run when the power goes (not a wait for a state)
        crash_wall, crashed = story.crash("n1")
        story.c.wait_for("pg taken over by n2", lambda: story.c.serving("n3", "pg") == ["n2"],
                         90)  # fmt: skip
        story.rows_grow("ledger rows committed on n2")
    finally:
        result = story.finish_ledger()
        story.wait_bench(bench)
    assert any(sent > crashed for _, sent, _ in result["committed"]), "nothing committed on n2"
    summary = story.check(result)
    story.recovered("n2")
    split = outage_split(story.c, crash_wall, crashed, result)
    print(f"\npostgres failover: {boot}; {summary}\n  " + "\n  ".join(split) + "\n"
          + story.c.timeline("n2", crash_wall))  # fmt: skip


@pytest.mark.timeout(300)
def test_postgres_with_an_se_killed_and_a_switchover_back(story: Story) -> None:
    """Must-show 3: SE a killed during the load; n1 crashes; n2 takes over with two SEs; SE a
    comes back and is brought up to date under load; n1 boots; a manual switchover moves the
    database back to n1. Nothing committed is lost at any step."""
    boot = story.setup()
    story.start_ledger()
    bench = story.pgbench(6)
    try:
        story.rows_grow("ledger rows on n1", 30)
        story.kill_se("a")
        story.rows_grow("ledger rows on n1 without SE a")
        crash_wall, crashed = story.crash("n1")
        story.c.wait_for("pg taken over by n2", lambda: story.c.serving("n3", "pg") == ["n2"],
                         90)  # fmt: skip
        story.rows_grow("ledger rows on n2 with two SEs")
        story.wait_bench(bench)
        bench = story.pgbench(4)
        story.start_se("a")
        story.c.wait_for("SE a back in sync on n2's HE",
                         lambda: set(story.se_states("n2").values()) == {"up"}, 60)  # fmt: skip
        assert story.wait_bench(bench) == 0, bench.tail()
        story.boot("n1")
        switch_wall = time.time()
        out = story.c.cli("n3", "switchover", "pg", "--to", "n1")
        assert out.returncode == 0, out.stdout + out.stderr
        story.c.wait_for("pg switched back to n1", lambda: story.c.serving("n3", "pg") == ["n1"],
                         90)  # fmt: skip
        story.rows_grow("ledger rows on n1 again")
    finally:
        result = story.finish_ledger()
        story.wait_bench(bench)
    summary = story.check(result)
    story.recovered("n2")
    after = sorted(a for _, _, a in result["committed"] if a > switch_wall)
    assert after, "nothing committed after the switchover"
    # the switchover's outage: the longest the client waited between two commits after it
    gap = max((b - a for a, b in itertools.pairwise(after)), default=0.0)
    print(f"\npostgres, SE a killed, crash, switchover back: {boot}; {summary}\n  "
          + "\n  ".join(outage_split(story.c, crash_wall, crashed, result))
          + f"\n  switchover back to n1: the client waited {gap:.3f} s at most\n"
          + story.c.timeline("n1", switch_wall))  # fmt: skip


@pytest.mark.timeout(300)
def test_pgbench_under_random_se_kills_sees_no_error(story: Story) -> None:
    """Must-show 4: pgbench -T 60 while a random SE is killed every few seconds (and restarted,
    and brought up to date before the next): no client sees an error, nothing is lost."""
    boot = story.setup()
    rng = random.Random(10)
    story.start_ledger()
    bench = story.pgbench(60)
    kills = []
    try:
        story.rows_grow("ledger rows on n1", 10)
        while bench.popen.poll() is None:
            victim = rng.choice("abc")
            story.kill_se(victim)
            kills.append(victim)
            time.sleep(rng.uniform(1.0, 3.0))  # the fault's length: a schedule, not a wait
            story.start_se(victim)
            story.c.wait_for(f"SE {victim} back in sync",
                             lambda: set(story.se_states("n1").values()) == {"up"}, 60)  # fmt: skip
            time.sleep(rng.uniform(1.0, 3.0))  # the gap before the next kill
    finally:
        result = story.finish_ledger()
        story.wait_bench(bench)
    bench_log = story.benches[-1].read_text(errors="replace")
    assert bench.popen.returncode == 0, bench_log[-2000:]
    assert "number of failed transactions: 0 " in bench_log, bench_log[-2000:]
    assert "error" not in bench_log.lower(), bench_log[-2000:]
    assert result["failures"] == [] and result["in_doubt"] == [], result["failures"][:5]
    assert len(kills) >= 5, kills
    summary = story.check(result)
    tps = [line for line in bench_log.splitlines() if line.startswith("tps")]
    print(f"\npostgres under SE kills {kills}: {boot}; {summary}; pgbench {tps}")
