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

from ophiura.demo import postgres
from ophiura.demo.postgres import PG_BIN, ask, outage_lines, outage_steps
from ophiura.testkit.netns import Lab, se_addr
from ophiura.testkit.procs import Proc

from .netns import REPO, VIP, NsCluster

SE_PORT = 7001
NBD = "127.0.0.1:10809"
CONTROL = "127.0.0.1:7600"
SIZE = "192M"


@pytest.fixture
def lab(pgbase: Path) -> Iterator[Lab]:
    why = postgres.unusable()
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
        # the loop devices crashed nodes left bound, and those `Story.crash` noted
        noted = base / "stale-loops"
        postgres.release_loops(base, noted.read_text().split() if noted.exists() else [])
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
    return postgres.hierarchy(
        "pg",
        ("n1", "n2", "n3"),
        volume="pg",
        he_config=he_toml(tmp),
        control=CONTROL,
        nbd_port=int(NBD.split(":")[1]),
        secret=secret,
        he_args=f"--state-dir {tmp}/he-state/{{node}}",
        he_log=f"{tmp}/he-{{node}}.log",
        base=base,
    )


def sql(lab: Lab, query: str, timeout: float = 5.0) -> list[list[str | None]]:
    """`query` against the floating IP, from the client's namespace."""
    return lab.call("client", ask, VIP, query, timeout, timeout=timeout + 5)


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
        took = self.lab.call("n1", postgres.bootstrap, self.tmp, self.base, self.toml,
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
        argv = postgres.ledger_argv(self.tmp / "ledger.json", self.tmp / "ledger.stop")
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
        """`pgbench -c 4 -T seconds` against the floating IP (`postgres.pgbench_argv`)."""
        log = self.tmp / f"pgbench-{len(self.benches) + 1}.log"
        self.benches.append(log)
        argv = postgres.pgbench_argv(seconds)
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
        dev = postgres.loop_of(self.base, node)
        if dev is not None:
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
        ledger = postgres.verify_ledger(lambda q: sql(self.lab, q), result)
        assert ledger["lost"] == 0, (ledger["missing"], ledger["wrong_digest"])
        assert not ledger["unexpected"], ("rows nobody wrote", ledger["unexpected"])
        inv = postgres.pgbench_invariants(lambda q: sql(self.lab, q))
        logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in self.benches)
        assert inv["hold"], (inv, logs)
        assert inv["history_rows"] > 0, logs
        committed, n_history = result["committed"], inv["history_rows"]
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
    """The client-observed outage, step by step (`postgres.outage_steps`), from `node`'s event
    log and the client's commits."""
    return outage_lines(outage_steps(c.events(node), crash_wall, crashed, result))


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
