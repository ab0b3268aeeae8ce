"""Hosts in network namespaces for the multi-host cluster tests and the failover benchmark.

One lab = one bridge namespace holding a bridge per network, node namespaces (n1..n3 by default)
with one veth pair per network into the bridge namespace, a client namespace on link A and,
optionally, a storage namespace (an iSCSI target) on a third network. Everything is on
198.51.100.0/24, nothing is added to the root namespace, and no packet can leave the machine:

    network   bridge   node i                 client           storage / target
    A (ring0) brA      198.51.100.1i/25 ethA  198.51.100.50    -            VIP 198.51.100.100
    B (ring1) brB      198.51.100.14i/26 ethB -                -
    S (data)  brS      198.51.100.21i/26 ethS -                198.51.100.200

On the bridge side the ports are named `<host><net>` (`n1a`, `n1b`, `n1s`, `cla`, `tgs`).
Names carry a per-run id (`oph-<id>-...`); `Lab.close()` kills every process still inside our
namespaces (by PID, from `ip netns pids`: only what this run started) and deletes them all.
`cleanup_stale(run_id)` deletes leftovers of one run id only, never anybody else's.

Helpers: crash a node (bridge ports down, then kill -9 of everything in its namespace), cut one
network for a node with nftables in the bridge namespace (or a port down), run processes inside a
namespace (`ip netns exec`, tracked), call a Python function inside a namespace (a thread that
`setns()`s into it: its sockets live there, so a node's admin API is reachable from inside the
node without spawning a process). `NsCluster` runs `ophiura node` daemons on top; `HttpClient`
polls the floating IP from the client namespace; `pr_holder`/`write_as` look at the shared LUN.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ophiura.demo.netns import (  # the primitives the demo's namespace topology shares
    CMD_TIMEOUT,
    enter_netns,
    kill_netns_processes,
    list_netns,
    sh,
)

T = TypeVar("T")

PREFIX = "oph-"
NET = "198.51.100"
VIP = f"{NET}.100"
CLIENT_ADDR = f"{NET}.50"
TARGET_ADDR = f"{NET}.200"
NETWORKS = {  # network -> (node address(i), prefix length, device inside a host)
    "a": (lambda i: f"{NET}.{10 + i}", 25, "ethA"),
    "b": (lambda i: f"{NET}.{140 + i}", 26, "ethB"),
    "s": (lambda i: f"{NET}.{210 + i}", 26, "ethS"),
}


def unavailable() -> str | None:
    """Why the namespace lab cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip",):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y iproute2)"
    if not hasattr(ctypes.CDLL(None, use_errno=True), "setns"):
        return "libc has no setns()"
    return None


def ensure_tools(*packages: str) -> None:
    """apt-get install the Debian packages that are missing (root; best effort, bounded)."""
    missing = [
        p
        for p in packages
        if subprocess.run(["dpkg", "-s", p], capture_output=True, check=False).returncode != 0
    ]
    if missing and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            timeout=600,
            check=False,
        )


def missing_tools(**tools: str) -> str | None:
    """Install what is missing ({program: Debian package}, as root); why not, if still missing."""
    absent = {prog: pkg for prog, pkg in tools.items() if shutil.which(prog) is None}
    if absent:
        ensure_tools(*absent.values())
    still = [f"{prog} ({pkg})" for prog, pkg in absent.items() if shutil.which(prog) is None]
    return f"not installed: {', '.join(still)}" if still else None


def open_lab(storage: bool = True, **tools: str) -> Iterator[Lab]:
    """A `lab` fixture's body: skip (and say why) unless namespaces and `tools` are usable."""
    import pytest  # here, not at the top: bench/failover.py imports this module too

    why = unavailable() or missing_tools(**tools)
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    with Lab(storage=storage) as lab:
        yield lab


def cleanup_stale(run_id: str) -> None:
    """Delete the namespaces of one run id (an earlier, interrupted use of the same id)."""
    for ns in list_netns():
        if ns.startswith(f"{PREFIX}{run_id}-"):
            kill_netns_processes(ns)
            sh("ip", "netns", "del", ns, check=False)


def in_netns(ns: str, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
    """Run `fn(*args)` on a fresh thread that entered network namespace `ns` (sockets it opens
    live there); the thread ends with the call, so nothing else ever runs in `ns`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            enter_netns(ns)
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, name=f"netns {ns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"call in {ns} did not return within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Host:
    name: str  # n1, client, target
    ns: str
    index: int  # node address suffix; 0 for client/target
    nets: tuple[str, ...]

    def addr(self, net: str) -> str:
        if self.name == "client":
            return CLIENT_ADDR
        if self.name == "target":
            return TARGET_ADDR
        return NETWORKS[net][0](self.index)


@dataclass
class Proc:
    """A process we started inside a namespace; stopped by PID only."""

    name: str
    ns: str
    popen: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.popen.poll()

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Lab:
    """The namespaces of one test (see the module docstring); use as a context manager."""

    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    storage: bool = True
    run_id: str = field(default_factory=lambda: f"{os.getpid() % 100000:x}{secrets.token_hex(2)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"{PREFIX}{self.run_id}-br"

    @property
    def nets(self) -> tuple[str, ...]:
        return ("a", "b", "s") if self.storage else ("a", "b")

    def ns(self, host: str) -> str:
        return self.hosts[host].ns

    def __enter__(self) -> Lab:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building -----------------------------------------------------------------------------

    def _add_ns(self, name: str) -> str:
        ns = f"{PREFIX}{self.run_id}-{name}"
        sh("ip", "netns", "add", ns)
        self.created.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def create(self) -> None:
        cleanup_stale(self.run_id)
        br = self._add_ns("br")
        for net in self.nets:
            sh("ip", "-n", br, "link", "add", f"br{net.upper()}", "type", "bridge",
               "forward_delay", "0", "stp_state", "0")  # fmt: skip
            sh("ip", "-n", br, "link", "set", f"br{net.upper()}", "up")
        for i, n in enumerate(self.nodes, start=1):
            self.hosts[n] = Host(n, self._add_ns(n), i, self.nets)
        self.hosts["client"] = Host("client", self._add_ns("client"), 0, ("a",))
        if self.storage:
            self.hosts["target"] = Host("target", self._add_ns("target"), 0, ("s",))
        for host in self.hosts.values():
            for net in host.nets:
                self._plug(host, net)

    def port(self, host: str, net: str) -> str:
        """The bridge-side device of `host` on `net` (in the bridge namespace)."""
        short = {"client": "cl", "target": "tg"}.get(host, host)
        return f"{short}{net}"

    def _plug(self, host: Host, net: str) -> None:
        br, port = self.bridge_ns, self.port(host.name, net)
        dev = NETWORKS[net][2]
        # created inside the bridge namespace, the host end moved straight into the host's
        sh("ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", dev,
           "netns", host.ns)  # fmt: skip
        sh("ip", "-n", br, "link", "set", port, "master", f"br{net.upper()}", "up")
        sh("ip", "-n", host.ns, "addr", "add", f"{host.addr(net)}/{NETWORKS[net][1]}", "dev", dev)
        sh("ip", "-n", host.ns, "link", "set", dev, "up")

    # -- faults -------------------------------------------------------------------------------

    def ports(self, host: str, up: bool, nets: Iterable[str] | None = None) -> None:
        """Take `host`'s bridge ports down (a dead machine, a pulled cable) or up again."""
        for net in nets or self.hosts[host].nets:
            sh("ip", "-n", self.bridge_ns, "link", "set", self.port(host, net),
               "up" if up else "down")  # fmt: skip

    def cut(self, host: str, nets: Iterable[str]) -> None:
        """Cut `host`'s cables on `nets`: nftables in the bridge namespace drops every frame
        to and from its ports there. The host's links stay up and its sends succeed (as with a
        cable cut behind a switch); only the other side never hears them."""
        table = f"ophcut_{host}"
        rules = [f"table bridge {table} {{",
                 " chain cut { type filter hook forward priority -100; }", "}"]  # fmt: skip
        for net in nets:
            port = self.port(host, net)
            rules += [f'add rule bridge {table} cut iifname "{port}" drop',
                      f'add rule bridge {table} cut oifname "{port}" drop']  # fmt: skip
        self.heal(host)
        subprocess.run(["ip", "netns", "exec", self.bridge_ns, "nft", "-f", "-"],
                       input="\n".join(rules) + "\n", text=True, check=True,
                       capture_output=True, timeout=CMD_TIMEOUT)  # fmt: skip

    def heal(self, host: str) -> None:
        """Undo `cut` for `host`."""
        sh("ip", "netns", "exec", self.bridge_ns, "nft", "delete", "table", "bridge",
           f"ophcut_{host}", check=False)  # fmt: skip

    # -- processes ----------------------------------------------------------------------------

    def popen(
        self,
        host: str,
        argv: list[str],
        name: str = "",
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> Proc:
        """Start `argv` inside `host`'s namespace (`ip netns exec` execs it: same PID)."""
        out: Any = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = log.open("ab")
        try:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,
            )  # fmt: skip
        finally:
            if log is not None:
                out.close()
        proc = Proc(name or f"{host}:{Path(argv[0]).name}", self.ns(host), popen, log)
        self.procs.append(proc)
        return proc

    def kill_host(self, host: str) -> None:
        """kill -9 every process inside `host`'s namespace, and reap the ones we started (a
        zombie keeps its PID: keepalived would think its pidfile still names a live daemon)."""
        ns = self.ns(host)
        kill_netns_processes(ns)
        for proc in self.procs:
            if proc.ns == ns:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(2)

    def run(self, host: str, *argv: str, timeout: float = CMD_TIMEOUT) -> str:
        return sh("ip", "netns", "exec", self.ns(host), *argv, timeout=timeout)

    def call(self, host: str, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        return in_netns(self.ns(host), fn, *args, timeout=timeout)

    def addresses(self, host: str, dev: str = "ethA") -> list[str]:
        out = sh("ip", "-n", self.ns(host), "-o", "-4", "addr", "show", "dev", dev, check=False)
        return [line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line]

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5.0)
        for ns in reversed(self.created):
            with contextlib.suppress(Exception):
                kill_netns_processes(ns)
            sh("ip", "netns", "del", ns, check=False)
        self.created.clear()


# --------------------------------------------------------------------------- the HTTP client

CLIENT_CODE = r"""
import asyncio, json, signal, sys, time
host, port, out, duration, period, timeout = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
    float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
ok, fails = [], 0
stop = None

async def probe(t0):
    global fails
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            w.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(r.read(), timeout)
        finally:
            w.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"):
            ok.append((t0, time.monotonic(), body.decode(errors="replace").strip()))
        else:
            fails += 1
    except Exception:
        fails += 1

async def main():
    global stop
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    end = time.monotonic() + duration
    tasks = set()
    print("ready", flush=True)
    while time.monotonic() < end and not stop.is_set():
        t = loop.create_task(probe(time.monotonic()))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        try:
            await asyncio.wait_for(stop.wait(), period)
        except asyncio.TimeoutError:
            pass
    if tasks:
        await asyncio.wait(tasks, timeout=timeout * 2 + 1)
    with open(out, "w") as f:
        json.dump({"ok": ok, "fails": fails}, f)

asyncio.run(main())
"""


@dataclass
class Outage:
    """What the client saw around one failover (monotonic seconds)."""

    last_before: float | None  # end of the last good answer from `old`
    first_after: float | None  # end of the first good answer from `new`
    crash: float
    answered_by: dict[str, int]
    fails: int

    @property
    def seconds(self) -> float | None:
        """Client-observed outage: from the last good answer of the old node to the first of
        the new one (the gap a user saw)."""
        if self.last_before is None or self.first_after is None:
            return None
        return self.first_after - self.last_before

    @property
    def since_crash(self) -> float | None:
        return None if self.first_after is None else self.first_after - self.crash


class HttpClient:
    """A poller in the client namespace: GET http://VIP:port/ every `period` seconds, each with
    its own `timeout`, for at most `duration` seconds; results to a JSON file."""

    def __init__(
        self,
        lab: Lab,
        out: Path,
        port: int,
        duration: float = 30.0,
        period: float = 0.01,
        timeout: float = 0.3,
        host: str = VIP,
    ) -> None:
        self.out = out
        self.duration = duration
        argv = [sys.executable, "-S", "-c", CLIENT_CODE, host, str(port), str(out),
                str(duration), str(period), str(timeout)]  # fmt: skip
        out.unlink(missing_ok=True)
        self.proc = lab.popen("client", argv, "client", log=out.with_suffix(".log"))

    def finish(self) -> dict[str, Any]:
        self.proc.stop(timeout=self.duration + 5)
        deadline = time.monotonic() + 5
        while not self.out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.out.exists():
            raise AssertionError(f"client wrote no results\n{self.proc.tail()}")
        import json

        return json.loads(self.out.read_text())

    @staticmethod
    def outage(result: dict[str, Any], crash: float, old: str, new: str) -> Outage:
        ok = sorted(result["ok"], key=lambda r: r[1])
        before = [done for _, done, who in ok if who == old]
        after = [done for _, done, who in ok if who == new and done > crash]
        counts: dict[str, int] = {}
        for _, _, who in ok:
            counts[who] = counts.get(who, 0) + 1
        return Outage(
            max(before) if before else None,
            min(after) if after else None,
            crash,
            counts,
            result["fails"],
        )


def crash_host(lab: Lab, host: str) -> None:
    """A power loss: `host`'s bridge ports go down first, so nothing it does while dying gets
    out (keepalived's VRRP child, told by the kernel that its parent died, would otherwise send
    a priority-0 "I am leaving" advert and make the takeover look faster than a crash allows),
    then every process in its namespace gets SIGKILL."""
    lab.ports(host, up=False)
    lab.kill_host(host)


# --------------------------------------------------------------------------- ophiura nodes

REPO = Path(__file__).resolve().parents[2]
SECRET = "netns-test-secret-0123456789abcdef"
ADMIN_PORT = 7400  # on each node's link-A address; the tests call it from inside the node
HB_PORT = 5405
HTTP_PORT = 8080
TARGET_PORT = 3260
TARGET_IQN = "iqn.2026-11.io.ophiura:disk"


def lun_url(port: int = TARGET_PORT) -> str:
    return f"iscsi://{TARGET_ADDR}:{port}/{TARGET_IQN}/0"


def web_hierarchy(
    www: Path,
    name: str = "web",
    nodes: tuple[str, ...] = ("n1", "n2", "n3"),
    bottom: str = "volume",
    vip: str = VIP,
    port: int = HTTP_PORT,
    extra: str = "",
    monitor: float = 0.5,
    target_port: int = TARGET_PORT,
) -> str:
    """[volume (or a `process`) -> ip (VIP on link A) -> http.server on the VIP (`process`)].

    Every node serves `www/<node>/index.html`, which says the node's name, so the client knows
    who answered. The resources are `vol`, `vip` and `http` for `web`, else `<name>-vol`, ..."""
    for n in nodes:
        (www / n).mkdir(parents=True, exist_ok=True)
        (www / n / "index.html").write_text(f"{n}\n")
    node_list = ", ".join(f'"{n}"' for n in nodes)
    p = "" if name == "web" else f"{name}-"
    if bottom == "volume":
        own = f"""ownable = "{p}vol"
shared_data = true
{extra}
[[hierarchies.resources]]
name = "{p}vol"
kind = "volume"
params = {{ url = "{lun_url(target_port)}", node = "{{node}}" }}
monitor_interval = {monitor}
"""
    else:  # a plain supervised process at the bottom (no own-able resource, no shared data)
        own = f"""{extra}
[[hierarchies.resources]]
name = "{p}vol"
kind = "process"
params = {{ command = "sleep 100000", start_wait = "0" }}
monitor_interval = {monitor}
"""
    http = f"{sys.executable} -S -m http.server {port} --bind {vip} --directory {www}/{{node}}"
    return f"""
[[hierarchies]]
name = "{name}"
nodes = [{node_list}]
{own}
[[hierarchies.resources]]
name = "{p}vip"
kind = "ip"
params = {{ ip = "{vip}", cidr_netmask = "25", nic = "ethA" }}
depends_on = ["{p}vol"]
monitor_interval = {monitor}

[[hierarchies.resources]]
name = "{p}http"
kind = "process"
params = {{ command = "{http}", start_wait = "0.05", grace = "2" }}
depends_on = ["{p}vip"]
monitor_interval = {monitor}
"""


class NsCluster:
    """`ophiura node` daemons, one per node namespace of `lab`, on one TOML file: link ring0 on
    network A, ring1 on network B, each admin API on the node's network-A address (called from
    inside the node's namespace, so it answers even while the node's cables are cut)."""

    def __init__(
        self, lab: Lab, tmp: Path, hierarchies: str, timings: str = "", cluster: str = ""
    ) -> None:
        from ophiura.cluster.config import load

        self.lab = lab
        self.tmp = tmp
        self.path = tmp / "cluster.toml"
        lines = ["[cluster]", 'name = "ns"', f'secret = "{SECRET}"',
                 f'state_dir = "{tmp}/state/{{node}}"', cluster, ""]  # fmt: skip
        if timings:
            lines += ["[timings]", timings, ""]
        for n in lab.nodes:
            admin = f"{lab.hosts[n].addr('a')}:{ADMIN_PORT}"
            lines += ["[[nodes]]", f'name = "{n}"', f'admin = "{admin}"', ""]
        for ring, net in (("ring0", "a"), ("ring1", "b")):
            addrs = ", ".join(f'{n} = "{lab.hosts[n].addr(net)}"' for n in lab.nodes)
            lines += ["[[links]]", f'name = "{ring}"', f"port = {HB_PORT}",
                      f"addresses = {{ {addrs} }}", ""]  # fmt: skip
        self.path.write_text("\n".join(lines) + "\n" + hierarchies)
        self.cfg = load(self.path)
        self.daemons: dict[str, Proc] = {}
        self.targets: dict[int, Proc] = {}
        self.crashed_at = 0.0

    def env(self, node: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{REPO}:{REPO / 'src'}:" + env.get("PYTHONPATH", "")
        env["OPHIURA_RSCTMP"] = str(self.tmp / "rsc" / node)
        env["OPHIURA_NODE"] = node
        return env

    def log(self, node: str) -> Path:
        return self.tmp / f"{node}.log"

    def start(self, node: str, *args: str) -> Proc:
        argv = [sys.executable, "-m", "ophiura.cli", "-v", "node", "--config", str(self.path),
                "--name", node, *args]  # fmt: skip
        proc = self.lab.popen(node, argv, f"{node}:ophiura node", self.log(node),
                              env=self.env(node), cwd=REPO)  # fmt: skip
        self.daemons[node] = proc
        return proc

    def start_all(self) -> None:
        for n in self.lab.nodes:
            self.start(n)

    def start_target(self, port: int = TARGET_PORT, size: str = "16M") -> Proc:
        """`ophiura target` in the storage namespace, on network S only: LUN 0 of its own file
        (one target per port for hierarchies that need a LUN each)."""
        argv = [sys.executable, "-m", "ophiura.cli", "target",
                "--backing", str(self.tmp / f"lun-{port}.img"), "--size", size,
                "--listen", f"{TARGET_ADDR}:{port}",
                "--state-dir", str(self.tmp / f"target-state-{port}")]  # fmt: skip
        proc = self.lab.popen("target", argv, f"ophiura target :{port}",
                              self.tmp / f"target-{port}.log", env=self.env("target"),
                              cwd=REPO)  # fmt: skip
        self.targets[port] = proc

        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"ophiura target exited\n{proc.tail()}")
            return self.lab.call("target", _connects, TARGET_ADDR, port)

        self.wait_for(f"target listening on {port}", up, 30)
        return proc

    # -- admin --------------------------------------------------------------------------------

    def admin(self, node: str, req: dict[str, Any], timeout: float = 3.0) -> Any:
        import asyncio

        from ophiura.cluster.admin import call

        key = self.cfg.key("admin")
        host, port = self.cfg.nodes[node].admin
        return self.lab.call(
            node, lambda: asyncio.run(call(host, port, key, req, timeout)),
            timeout=timeout + 5,
        )  # fmt: skip

    def status(self, node: str) -> dict[str, Any]:
        return self.admin(node, {"op": "status"})

    def hier(self, node: str, h: str = "web") -> dict[str, Any]:
        return self.status(node)["hierarchies"][h]

    def cli(self, node: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`ophiura cluster ARGS` run inside `node`'s namespace (its admin API is local)."""
        env = {**self.env("cli"), "OPHIURA_CLUSTER_CONFIG": str(self.path)}
        return subprocess.run(
            ["ip", "netns", "exec", self.lab.ns(node), sys.executable, "-m", "ophiura.cli",
             "cluster", *args],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
        )  # fmt: skip

    # -- faults -------------------------------------------------------------------------------

    def crash(self, node: str) -> float:
        """`node` loses power (`crash_host`); the monotonic time just before."""
        t0 = time.monotonic()
        self.crashed_at = time.time()
        crash_host(self.lab, node)
        return t0

    def service_pid(self, node: str, resource: str = "http") -> int | None:
        try:
            return int((self.tmp / "rsc" / node / f"process-{resource}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- observing ----------------------------------------------------------------------------

    def wait_for(self, what: str, pred: Callable[[], Any], timeout: float = 10.0) -> float:
        """Poll `pred` every 20 ms; the seconds it took, or AssertionError with the logs' tails."""
        t0 = time.monotonic()
        last: BaseException | None = None
        while time.monotonic() - t0 < timeout:
            try:
                if pred():
                    return time.monotonic() - t0
            except Exception as exc:
                last = exc
            time.sleep(0.02)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what} (last error: {last!r})\n"
            + self.tails()
        )

    def tails(self, lines: int = 25) -> str:
        out = []
        for n in self.daemons:
            text = self.log(n).read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {n} ---\n" + "\n".join(text))
        return "\n".join(out)

    def events(self, node: str) -> list[dict[str, Any]]:
        import json

        out: list[dict[str, Any]] = []
        for f in sorted((self.tmp / "state" / node / "events").glob("events-*.jsonl")):
            out += [json.loads(line) for line in f.read_text().splitlines() if line]
        return out

    def timeline(self, node: str, since: float, kinds: tuple[str, ...] = ("node", "hierarchy",
                 "resource", "fencing")) -> str:  # fmt: skip
        """`node`'s events since wall-clock `since`, one per line, in seconds after it."""
        lines = []
        for e in self.events(node):
            if e["time"] >= since - 0.01 and e["kind"] in kinds:
                what = " ".join(str(e[k]) for k in ("task", "peer", "hierarchy", "resource",
                                "desc", "elapsed") if e.get(k) not in (None, ""))  # fmt: skip
                lines.append(f"  {node} +{e['time'] - since:6.3f} {e['kind']}: {what[:110]}")
        return "\n".join(lines)

    def serving(self, via: str, h: str = "web") -> list[str]:
        return list(self.hier(via, h)["running_on"])


def _connects(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the shared LUN


def _volume_resource(node: str, port: int) -> Any:
    from ophiura.cluster.agents.base import Resource

    return Resource(f"vol-{node}", "volume", {"url": lun_url(port), "node": node})


def pr_holder(lab: Lab, port: int = TARGET_PORT) -> str | None:
    """Which node's key holds the LUN's reservation (asked on an observer's own nexus, from the
    storage namespace, so no node's session is disturbed); None when nobody holds it."""
    import asyncio

    from ophiura.cluster.agents.volume import VolumeSpec, _Session, derive_key

    async def ask() -> int | None:
        async with _Session(VolumeSpec.of(_volume_resource("observer", port)), 5.0) as s:
            return (await s.view()).holder_key

    key = lab.call("target", lambda: asyncio.run(ask()))
    if key is None:
        return None
    names = {derive_key(n): n for n in lab.nodes}
    return names.get(key, f"key {key:016x}")


def write_as(lab: Lab, node: str, port: int = TARGET_PORT) -> int:
    """One WRITE(16) of a block through `node`'s own I_T nexus (its data path), from inside its
    namespace; the SCSI status (0 GOOD, 0x18 RESERVATION CONFLICT). Use it only while `node`'s
    daemon is not using its nexus (stopped, or after it stopped its copy): a second session on
    the same nexus replaces the first."""
    import asyncio

    from ophiura.cluster.agents.volume import VolumeSpec
    from ophiura.iscsi.initiator import IscsiInitiator
    from ophiura.scsi.api import Status

    async def write() -> int:
        spec = VolumeSpec.of(_volume_resource(node, port))
        ini, lun = await IscsiInitiator.from_url(spec.url, spec.initiator, isid=spec.isid)
        try:
            for _ in range(8):  # consume unit attentions (registrations preempted, ...)
                if (await ini.test_unit_ready(lun)).status == Status.GOOD:
                    break
            cdb = bytes([0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
            return int((await ini.scsi(lun, cdb, data_out=node.encode().ljust(512, b"."))).status)
        finally:
            await ini.logout()

    return lab.call(node, lambda: asyncio.run(write()))
