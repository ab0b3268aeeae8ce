"""The demo's machines: three SEs and three cluster nodes, on 127.0.0.1 or in namespaces.

Loopback (any user): every process on 127.0.0.1. There is no floating IP without root, so the
`ip` resource is left out; the app of whichever node runs the hierarchy listens on one fixed
port (only one node runs it at a time, so that port plays the floating address), and each
node's HE uses the same control and NBD ports for the same reason. A "crash" is kill -9 of the
node's daemon and of everything it started (found by the run's marker in their environment).

Namespaces (root): each node, SE and the client is a host of its own (`netns.Lab`), the app
answers on the floating IP 198.51.100.100 that the `ip` resource moves with a gratuitous ARP,
and a crash also pulls the node's cables first, as a power loss does.

With `app="postgres"` (root, namespaces only) the hierarchy is examples/postgres.toml's,
[replicated-volume -> attach -> fs -> ip -> ocf:heartbeat:pgsql] (`ophiura.demo.postgres`),
and the database is made once through n1 after the SEs start and before the nodes do.

Every process gets OPHIURA_DEMO_RUN=<run id> in its environment and leads its own process
group; `close()` kills what we started by PID (and anything carrying the marker that outlived
its parent), deletes our namespaces and the temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ophiura
from ophiura.testkit import netns, procs
from ophiura.testkit.ports import free_ports
from ophiura.testkit.procs import Proc

NODES = ("n1", "n2", "n3")
SES = ("a", "b", "c")
QUORUM = 2  # N=3, Q=2: a majority, so no acknowledged write is lost with one SE
VOLUME = "demo"
VOLUME_SIZE = "32M"
PG_VOLUME_SIZE = "192M"  # initdb, pgbench -s 1 and the WAL of a few minutes, with room
APPS = ("record", "postgres")
HIERARCHY = "demo"
MARKER = "OPHIURA_DEMO_RUN"
NS_PREFIX = "ophd-"  # the demo's namespaces: ophd-<run id>-<host>
NS_TOOLS = {"arping": "arping"}  # besides ip: the `ip` resource's gratuitous ARP


def namespaces_unavailable() -> str | None:
    """Why the demo cannot run in network namespaces here (None when it can)."""
    return netns.unavailable(**NS_TOOLS)


def leftover_namespaces(run_id: str) -> list[str]:
    """The demo run's namespaces that still exist (none once it has ended)."""
    return netns.leftover_namespaces(run_id, NS_PREFIX)


class TopologyError(RuntimeError):
    """A part of the demo would not start (the message says which, with its log's tail)."""


def marked_pids(run_id: str, node: str | None = None) -> list[int]:
    """Processes carrying this run's marker (and OPHIURA_NODE=node, if given), except us."""
    want = f"{MARKER}={run_id}".encode()
    want_node = f"OPHIURA_NODE={node}".encode() if node else None
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in env and (want_node is None or want_node in env):
            out.append(int(d))
    return out


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, sig)


async def _connects(host: str, port: int) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
    except (OSError, TimeoutError):
        return False
    w.close()
    return True


@dataclass
class Topology:
    tmp: Path
    run_id: str
    use_netns: bool
    dashboard: bool = True
    nodes: tuple[str, ...] = NODES
    ses: tuple[str, ...] = SES
    procs: list[Proc] = field(default_factory=list)
    daemons: dict[str, Proc] = field(default_factory=dict)
    se_procs: dict[str, Proc] = field(default_factory=dict)
    loops: dict[str, netns.NsLoop] = field(default_factory=dict)
    lab: netns.Lab | None = None
    left_out: list[str] = field(default_factory=list)
    deadline: float = 0.7  # heartbeat deadline (the cluster default): a node dead after this
    test_hooks: bool = False  # the daemons' test-only admin requests (torture: step-clock)
    service: str = "record"  # the app: or "postgres" (namespaces only: loop devices, mounts)
    bootstrap_took: dict[str, float] = field(default_factory=dict)
    crash_times: dict[str, tuple[float, float]] = field(default_factory=dict)  # wall: began, done
    stale_loops: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ addresses and files

    def __post_init__(self) -> None:
        self.secret_file = self.tmp / "secret"
        self.cluster_file = self.tmp / "cluster.toml"
        self.he_file = self.tmp / "he.toml"
        self.logs = self.tmp / "logs"
        self.pg_base = self.tmp / "pg"  # user postgres reaches it: mount point, sockets, logs
        if self.service not in APPS:
            raise ValueError(f"unknown app {self.service!r} (one of {', '.join(APPS)})")
        if self.service == "postgres" and not self.use_netns:
            raise ValueError("the postgres app runs in network namespaces only (as root)")
        if self.use_netns:
            self.se_addrs = {s: (netns.se_addr(i), 7001) for i, s in enumerate(self.ses, 1)}
            self.control = ("127.0.0.1", 7600)
            self.nbd = ("127.0.0.1", 10809)
            self.app = (netns.VIP, 8080)
            self.admin_addrs = {
                n: (netns.node_addr("a", i), 7400) for i, n in enumerate(self.nodes, 1)
            }
            self.http_addrs = {
                n: (netns.node_addr("a", i), 8440) for i, n in enumerate(self.nodes, 1)
            }
            self.links = {
                ring: {n: f"{netns.node_addr(net, i)}:5405" for i, n in enumerate(self.nodes, 1)}
                for ring, net in (("ring0", "a"), ("ring1", "b"))
            }
        else:
            tcp = iter(free_ports(len(self.ses) + 3 + 2 * len(self.nodes)))
            udp = iter(free_ports(2 * len(self.nodes), socket.SOCK_DGRAM))
            self.se_addrs = {s: ("127.0.0.1", next(tcp)) for s in self.ses}
            self.control = ("127.0.0.1", next(tcp))
            self.nbd = ("127.0.0.1", next(tcp))
            self.app = ("127.0.0.1", next(tcp))
            self.admin_addrs = {n: ("127.0.0.1", next(tcp)) for n in self.nodes}
            self.http_addrs = {n: ("127.0.0.1", next(tcp)) for n in self.nodes}
            self.links = {
                ring: {n: f"127.0.0.1:{next(udp)}" for n in self.nodes}
                for ring in ("ring0", "ring1")
            }
        self.cluster_secret = secrets.token_hex(16)
        self._loops_lock = threading.Lock()

    @property
    def mode(self) -> str:
        return "netns" if self.use_netns else "loopback"

    def host_ns(self, host: str) -> str | None:
        return self.lab.ns(host) if self.lab is not None else None

    def env(self, node: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        src = str(Path(ophiura.__file__).resolve().parents[1])
        env["PYTHONPATH"] = src + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[MARKER] = self.run_id
        # whatever they put in a temp dir goes in ours, and goes with it
        env["TMPDIR"] = str(self.tmp / "tmp")
        env.pop("OPHIURA_CLUSTER_CONFIG", None)
        if node:
            env["OPHIURA_NODE"] = node
            env["OPHIURA_RSCTMP"] = str(self.tmp / "rsc" / node)
        return env

    # ------------------------------------------------------------------ processes

    def spawn(
        self, name: str, argv: list[str], host: str | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """Start `argv` (inside `host`'s namespace when there are namespaces), in its own
        process group, output to logs/NAME.log; tracked by PID for close()."""
        ns = self.host_ns(host) if host else None
        sp = procs.spawn(argv, name, self.logs / f"{name}.log", env or self.env(), self.tmp, ns)
        self.procs.append(sp)
        return sp

    def loop(self, host: str) -> netns.NsLoop:
        """The event loop that talks from inside `host` (one shared loop on loopback)."""
        key = host if self.use_netns else "local"
        with self._loops_lock:  # the poller thread and the story both ask
            if key not in self.loops:
                ns = self.host_ns(host) if self.use_netns else None
                self.loops[key] = netns.NsLoop(ns, key)
            return self.loops[key]

    def wait_listening(
        self, host: str, addr: tuple[str, int], proc: Proc, timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise TopologyError(f"{proc.name} exited {proc.popen.returncode}\n{proc.tail()}")
            if self.loop(host).run(_connects(*addr), 5):
                return
            time.sleep(0.05)
        raise TopologyError(f"{proc.name} not listening on {addr} in {timeout} s\n{proc.tail()}")

    # ------------------------------------------------------------------ bring-up

    def start(self) -> None:
        (self.tmp / "tmp").mkdir(parents=True, exist_ok=True)
        if self.use_netns:
            self.lab = netns.Lab(
                self.nodes, storage=False, ses=self.ses, run_id=self.run_id, prefix=NS_PREFIX
            )
            self.lab.create()
        else:
            self.left_out.append(
                "floating IP (`ip` resource): needs root and network namespaces; the app "
                f"answers on {self.app[0]}:{self.app[1]} on whichever node runs it"
            )
            self.left_out.append("gratuitous ARP and cable pulls: nothing to pull on 127.0.0.1")
        self.secret_file.write_text(secrets.token_hex(32) + "\n")
        self.secret_file.chmod(0o600)
        for s in self.ses:
            self.start_se(s, wait=False)
        for s in self.ses:
            self.wait_listening(f"se-{s}", self.se_addrs[s], self.se_procs[s])
        self.write_configs()
        if self.service == "postgres":
            self.make_database()
        for n in self.nodes:
            self.start_node(n)

    def make_database(self) -> None:
        """initdb and friends, once, through the first node's agents (`postgres.bootstrap`),
        as a process of the run inside its namespace: an interrupt kills it with the rest, and
        its mounts go with its mount namespace."""
        import json

        self.tmp.chmod(0o711)  # user postgres passes through to pg/ (the files stay 0600)
        self.pg_base.mkdir(mode=0o755)
        self.pg_base.chmod(0o755)
        out = self.tmp / "bootstrap.json"
        argv = [sys.executable, "-m", "ophiura.demo.postgres", str(self.tmp), str(self.pg_base),
                str(self.cluster_file), str(out)]  # fmt: skip
        node = self.nodes[0]
        sp = self.spawn("bootstrap", argv, node)
        try:
            rc = sp.popen.wait(180)
        except subprocess.TimeoutExpired:
            raise TopologyError(f"making the database took over 180 s\n{sp.tail()}") from None
        if rc != 0:
            raise TopologyError(f"making the database failed (exit {rc})\n{sp.tail()}")
        self.bootstrap_took = json.loads(out.read_text())

    def start_se(self, name: str, wait: bool = True) -> Proc:
        host, port = self.se_addrs[name]
        argv = [
            sys.executable,
            "-m",
            "ophiura.cli",
            "se",
            "--name",
            name,
            "--data-dir",
            str(self.tmp / f"se-{name}"),
            "--listen",
            f"{host}:{port}",
            "--secret-file",
            str(self.secret_file),
        ]
        sp = self.spawn(f"se-{name}", argv, f"se-{name}")
        self.se_procs[name] = sp
        if wait:
            self.wait_listening(f"se-{name}", (host, port), sp)
        return sp

    def kill_se(self, name: str) -> None:
        sp = self.se_procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sp.popen.pid, signal.SIGKILL)
        sp.popen.wait(10)

    def write_configs(self) -> None:
        ses = ", ".join(f'"{s}={h}:{p}"' for s, (h, p) in self.se_addrs.items())
        pg = self.service == "postgres"
        size, cache, queue = (PG_VOLUME_SIZE, "16M", "32M") if pg else (VOLUME_SIZE, "8M", "16M")
        self.he_file.write_text(
            f"# the HE of every node: N={len(SES)}, Q={QUORUM}\nquorum = {QUORUM}\nse = [{ses}]\n"
            f'volume = ["{VOLUME}:{size}"]\nnbd = "{self.nbd[0]}:{self.nbd[1]}"\n'
            f'cache = "{cache}"\nqueue = "{queue}"\n'
        )
        self.cluster_file.write_text(self.cluster_toml())
        self.cluster_file.chmod(0o600)  # it holds the cluster secret (config.load refuses o+r)

    def cluster_toml(self) -> str:
        t = self.tmp
        lines = [
            "[cluster]",
            f'name = "demo-{self.run_id}"',
            f'secret = "{self.cluster_secret}"',
            f'state_dir = "{t}/state/{{node}}"',
            *(["test_hooks = true"] if self.test_hooks else []),
            "",
        ]
        for n in self.nodes:
            ah, ap = self.admin_addrs[n]
            lines += ["[[nodes]]", f'name = "{n}"', f'admin = "{ah}:{ap}"']
            if self.dashboard:
                hh, hp = self.http_addrs[n]
                lines.append(f'http = "{hh}:{hp}"')
            lines.append("")
        for ring, addrs in self.links.items():
            inner = ", ".join(f'{n} = "{a}"' for n, a in addrs.items())
            lines += ["[[links]]", f'name = "{ring}"', f"addresses = {{ {inner} }}", ""]
        node_list = ", ".join(f'"{n}"' for n in self.nodes)
        he_args = f"--state-dir {t}/he-state/{{node}}"
        if self.service == "postgres":
            from ophiura.demo import postgres

            return "\n".join(lines) + postgres.hierarchy(
                HIERARCHY,
                self.nodes,
                volume=VOLUME,
                he_config=self.he_file,
                control=f"{self.control[0]}:{self.control[1]}",
                nbd_port=self.nbd[1],
                secret=self.secret_file,
                he_args=he_args,
                he_log=f"{self.logs}/he-{{node}}.log",
                base=self.pg_base,
                failback="manual",
            )
        app_cmd = shlex.join(
            [
                sys.executable,
                "-m",
                "ophiura.demo.app",
                "--listen",
                f"{self.app[0]}:{self.app[1]}",
                "--nbd",
                f"{self.nbd[0]}:{self.nbd[1]}",
                "--export",
                VOLUME,
                "--node",
                "{node}",
            ]
        )
        lines += [
            "[[hierarchies]]",
            f'name = "{HIERARCHY}"',
            f"nodes = [{node_list}]",
            'ownable = "vol"',
            "shared_data = true",
            'failback = "manual"',
            "",
            "[[hierarchies.resources]]",
            'name = "vol"',
            'kind = "replicated-volume"',
            f'params = {{ config = "{self.he_file}", control = "{self.control[0]}:'
            f'{self.control[1]}", volume = "{VOLUME}", secret_file = "{self.secret_file}", '
            f'args = "{he_args}", log = "{self.logs}/he-{{node}}.log", grace = "3" }}',
            "monitor_interval = 1.0",
            "start_timeout = 30.0",
            "",
        ]
        below = "vol"
        if self.use_netns:
            lines += [
                "[[hierarchies.resources]]",
                'name = "ip"',
                'kind = "ip"',
                f'params = {{ ip = "{netns.VIP}", cidr_netmask = "{netns.VIP_PREFIX}", '
                f'nic = "ethA", arp_count = "2" }}',
                'depends_on = ["vol"]',
                "monitor_interval = 1.0",
                "",
            ]
            below = "ip"
        lines += [
            "[[hierarchies.resources]]",
            'name = "app"',
            'kind = "process"',
            f'params = {{ command = "{app_cmd}", log = "{self.logs}/app-{{node}}.log", '
            f'grace = "3", start_wait = "0.3" }}',
            f'depends_on = ["{below}"]',
            "monitor_interval = 1.0",
            "",
        ]
        return "\n".join(lines)

    def start_node(self, node: str) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "ophiura.cli",
            "node",
            "--config",
            str(self.cluster_file),
            "--name",
            node,
        ]
        sp = self.spawn(f"node-{node}", argv, node, env=self.env(node))
        self.daemons[node] = sp
        return sp

    # ------------------------------------------------------------------ faults

    def crash_node(self, node: str) -> None:
        """Power loss: cables first (namespaces), then kill -9 of everything the node runs.
        The loop device it leaves bound (postgres) is noted for close()."""
        if self.service == "postgres":
            from ophiura.demo.postgres import loop_of

            if (dev := loop_of(self.pg_base, node)) is not None:
                self.stale_loops.append(dev)
        began = time.time()
        if self.lab is not None:
            self.lab.ports(node, up=False)
            self.lab.kill_host(node)
        else:
            kill_pids(marked_pids(self.run_id, node))
            deadline = time.monotonic() + 5
            while marked_pids(self.run_id, node) and time.monotonic() < deadline:
                time.sleep(0.02)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.daemons[node].popen.wait(5)
        self.crash_times[node] = (began, time.time())

    def boot_node(self, node: str) -> Proc:
        """The crashed node comes back: what a reboot clears is gone (/run, the floating IP)."""
        shutil.rmtree(self.tmp / "rsc" / node, ignore_errors=True)
        if self.service == "postgres":
            from ophiura.demo.postgres import LINK

            (self.pg_base / "dev" / node / LINK).unlink(missing_ok=True)
        if self.lab is not None:
            self.lab.forget_addresses(node)
            self.lab.ports(node, up=True)
        return self.start_node(node)

    # ------------------------------------------------------------------ asking

    def admin(self, node: str, req: dict[str, Any], timeout: float = 2.0) -> Any:
        from ophiura.cluster.admin import call
        from ophiura.cluster.config import load

        if not hasattr(self, "_admin_key"):
            self._admin_key = load(self.cluster_file).key("admin")
        host, port = self.admin_addrs[node]
        return self.loop(node).run(call(host, port, self._admin_key, req, timeout), timeout + 3)

    def he_status(self, node: str, timeout: float = 2.0) -> dict[str, Any]:
        from ophiura.replication.he.control import control_call

        secret = self.secret_file.read_text().strip().encode()
        coro = control_call(*self.control, secret, "status", timeout=timeout)
        return self.loop(node).run(coro, timeout + 3)

    def cli_argv(self, node: str, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "ophiura.cli", *args]
        ns = self.host_ns(node)
        return ["ip", "netns", "exec", ns, *argv] if ns else argv

    def dashboard_url(self, node: str) -> str | None:
        if not self.dashboard:
            return None
        from ophiura.cluster.config import load
        from ophiura.web.auth import cluster_token

        host, port = self.http_addrs[node]
        return f"http://{host}:{port}/#token={cluster_token(load(self.cluster_file))}"

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop everything we started (SIGTERM, then SIGKILL), delete namespaces; idempotent."""
        for sp in reversed(self.procs):
            if sp.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sp.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 4
        for sp in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sp.popen.wait(max(0.05, deadline - time.monotonic()))
        for sp in self.procs:
            if sp.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sp.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sp.popen.wait(5)
        # what the nodes started (HEs, apps, arping) leads its own group: find it by marker
        for _ in range(50):
            pids = marked_pids(self.run_id)
            if not pids:
                break
            kill_pids(pids)
            time.sleep(0.05)
        with self._loops_lock:
            for lp in self.loops.values():
                lp.close()
            self.loops.clear()
        if self.lab is not None:
            self.lab.close()
        if self.service == "postgres":
            from ophiura.demo.postgres import release_loops

            release_loops(self.pg_base, self.stale_loops)
