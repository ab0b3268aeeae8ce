"""The namespace lab: hosts in network namespaces on 198.51.100.0/24 (root only).

One lab = one bridge namespace holding a bridge per network, node namespaces (n1..n3 by
default) with one veth pair per network into the bridge namespace, a client namespace on link A,
optionally a storage host (`target`, an iSCSI target) and SE hosts (`se-a`, ...) on network S:

    network   bridge   node i                  client          target           SE x (1..)
    A (ring0) brA      198.51.100.1i/25 ethA   198.51.100.50   -                -
    B (ring1) brB      198.51.100.14i/26 ethB  -               -                -
    S (data)  brS      198.51.100.21i/26 ethS  -               198.51.100.200   198.51.100.20x
    VIP 198.51.100.100/25 on link A (moved by the cluster's `ip` resource)

The bridges live in a namespace of their own, so nothing is added to the root namespace and no
packet can leave the machine (whose own network, 192.0.2.0/24, is never touched). On the bridge
side the ports are named `<host><net>` (`n1a`, `cla`, `tgs`, `seas`). Every namespace's name
carries the lab's prefix and run id (`oph-<id>-...`); `Lab.close()` stops the processes it
started by PID, kills what is still inside its namespaces (only ours: we created them, and
`ip netns pids` lists them) and deletes them. `cleanup_stale(run_id)` deletes leftovers of one
run id only, never anybody else's.

For a test that needs only a namespace or two (an agent's address, a daemon's sockets):
`namespace(tag)` is one throwaway namespace, `veth` and `add_address` wire it.

Faults: pull a host's cables (bridge ports down), cut some of its networks with nftables in the
bridge namespace, kill -9 everything inside a host. Code runs inside a namespace either as a
process (`Lab.popen`, `Lab.run`), as one call on a thread that `setns()`s into it (`in_netns`),
or as coroutines on an event loop living there (`NsLoop`): their sockets live in that namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ophiura.testkit.procs import Proc, spawn

T = TypeVar("T")

PREFIX = "oph-"
NET = "198.51.100"
VIP = f"{NET}.100"
VIP_PREFIX = 25
CLIENT_ADDR = f"{NET}.50"
TARGET_ADDR = f"{NET}.200"
NETWORKS = {  # network -> (node address(i), prefix length, device inside a host)
    "a": (lambda i: f"{NET}.{10 + i}", 25, "ethA"),
    "b": (lambda i: f"{NET}.{140 + i}", 26, "ethB"),
    "s": (lambda i: f"{NET}.{210 + i}", 26, "ethS"),
}
CLONE_NEWNET = 0x40000000
CMD_TIMEOUT = 20.0

_libc = ctypes.CDLL(None, use_errno=True)


def node_addr(net: str, i: int) -> str:
    """Node `i`'s (1-based) address on network `net`."""
    return NETWORKS[net][0](i)


def se_addr(i: int) -> str:
    """SE host `i`'s (1-based) address on network S."""
    return f"{NET}.{200 + i}"


# --------------------------------------------------------------------------- tools


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


def unavailable(**tools: str) -> str | None:
    """Why namespaces (and `tools`, {program: Debian package}) cannot be used here; None when
    they can. Nothing is installed: see `missing_tools` for that."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for prog, pkg in {"ip": "iproute2", **tools}.items():
        if shutil.which(prog) is None:
            return f"{prog} is not installed (apt-get install -y {pkg})"
    if not hasattr(_libc, "setns"):
        return "libc has no setns()"
    return None


# --------------------------------------------------------------------------- primitives


def sh(*argv: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> str:
    """Run a command; its stdout, or RuntimeError with its stderr when it fails."""
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def list_netns() -> list[str]:
    if shutil.which("ip") is None:
        return []
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    return [int(w) for w in sh("ip", "netns", "pids", ns, check=False).split() if w.isdigit()]


def kill_netns_processes(ns: str, timeout: float = 3.0) -> None:
    """SIGKILL every process inside `ns` (all ours: we created the namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in netns_pids(ns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def delete_netns(ns: str) -> None:
    """Kill what runs inside `ns` and delete it (quietly if it is gone already)."""
    with contextlib.suppress(Exception):
        kill_netns_processes(ns)
    sh("ip", "netns", "del", ns, check=False)


def leftover_namespaces(run_id: str, prefix: str = PREFIX) -> list[str]:
    """The namespaces of run `run_id` that still exist."""
    return [ns for ns in list_netns() if ns.startswith(f"{prefix}{run_id}-")]


def cleanup_stale(run_id: str, prefix: str = PREFIX) -> None:
    """Delete the namespaces of one run id (an earlier, interrupted use of the same id)."""
    for ns in leftover_namespaces(run_id, prefix):
        delete_netns(ns)


def enter_netns(ns: str) -> None:
    """Move the calling thread into network namespace `ns` (sockets it opens then live there)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


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


class NsLoop:
    """An event loop on its own thread, inside network namespace `ns` (None: where we are).

    Sockets opened by coroutines run here live in that namespace, so a caller can talk to a
    node's admin API on its address *inside* the node, or be a client in the client namespace,
    without spawning a process per call."""

    def __init__(self, ns: str | None, name: str = "") -> None:
        self.ns = ns
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"loop {name or ns}", daemon=True)
        self.thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            if self.ns is not None:
                enter_netns(self.ns)
        except BaseException as exc:  # handed to the constructor
            self._error = exc
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()
        with contextlib.suppress(Exception):
            pending = asyncio.all_tasks(self.loop)
            for t in pending:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@contextlib.contextmanager
def namespace(tag: str, prefix: str = PREFIX) -> Iterator[str]:
    """One throwaway network namespace `<prefix><tag>-<random>` with `lo` up, for a test that
    needs a host of its own but no lab; on exit whatever runs inside is killed and it is
    deleted."""
    ns = f"{prefix}{tag}-{os.getpid() % 100000:x}{secrets.token_hex(2)}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        delete_netns(ns)


def veth(ns: str, dev: str, peer: str, peer_ns: str | None = None) -> None:
    """A veth pair `dev`-`peer`, both up: created inside `ns` (never in the root namespace),
    `peer` then moved into `peer_ns` if given."""
    sh("ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer)
    if peer_ns is not None:
        sh("ip", "-n", ns, "link", "set", peer, "netns", peer_ns)
    sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", peer_ns or ns, "link", "set", peer, "up")


def add_address(ns: str, dev: str, cidr: str) -> None:
    """Put `cidr` (e.g. 198.51.100.1/24) on `dev` inside `ns`."""
    sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)


# --------------------------------------------------------------------------- the lab


@dataclass
class Host:
    name: str  # n1, client, target, se-a
    ns: str
    addrs: dict[str, str]  # network -> address

    @property
    def nets(self) -> tuple[str, ...]:
        return tuple(self.addrs)

    def addr(self, net: str) -> str:
        return self.addrs[net]


def _run_id() -> str:
    return f"{os.getpid() % 100000:x}{secrets.token_hex(2)}"


@dataclass
class Lab:
    """The namespaces of one test, benchmark or demo run (see the module docstring); use as a
    context manager, or call `create()` and `close()`.

    `storage` adds the `target` host; `ses` add one host per SE (`se-<name>`); either puts the
    nodes on network S as well."""

    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    storage: bool = True
    ses: tuple[str, ...] = ()
    run_id: str = field(default_factory=_run_id)
    prefix: str = PREFIX
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return self.ns_name("br")

    @property
    def nets(self) -> tuple[str, ...]:
        return ("a", "b", "s") if self.storage or self.ses else ("a", "b")

    def ns_name(self, host: str) -> str:
        return f"{self.prefix}{self.run_id}-{host}"

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
        ns = self.ns_name(name)
        sh("ip", "netns", "add", ns)
        self.created.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _add_host(self, name: str, addrs: dict[str, str]) -> None:
        self.hosts[name] = Host(name, self._add_ns(name), addrs)

    def create(self) -> None:
        cleanup_stale(self.run_id, self.prefix)
        br = self._add_ns("br")
        for net in self.nets:
            sh("ip", "-n", br, "link", "add", f"br{net.upper()}", "type", "bridge",
               "forward_delay", "0", "stp_state", "0")  # fmt: skip
            sh("ip", "-n", br, "link", "set", f"br{net.upper()}", "up")
        for i, n in enumerate(self.nodes, start=1):
            self._add_host(n, {net: node_addr(net, i) for net in self.nets})
        self._add_host("client", {"a": CLIENT_ADDR})
        if self.storage:
            self._add_host("target", {"s": TARGET_ADDR})
        for i, se in enumerate(self.ses, start=1):
            self._add_host(f"se-{se}", {"s": se_addr(i)})
        for host in self.hosts.values():
            for net in host.nets:
                self._plug(host, net)

    def port(self, host: str, net: str) -> str:
        """The bridge-side device of `host` on `net` (in the bridge namespace; device names
        have at most 15 characters)."""
        short = {"client": "cl", "target": "tg"}.get(host, host.replace("-", "")[:8])
        return f"{short}{net}"

    def _plug(self, host: Host, net: str) -> None:
        br, port = self.bridge_ns, self.port(host.name, net)
        prefix, dev = NETWORKS[net][1], NETWORKS[net][2]
        # created inside the bridge namespace, the host end moved straight into the host's
        sh("ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", dev,
           "netns", host.ns)  # fmt: skip
        sh("ip", "-n", br, "link", "set", port, "master", f"br{net.upper()}", "up")
        sh("ip", "-n", host.ns, "addr", "add", f"{host.addr(net)}/{prefix}", "dev", dev)
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

    def kill_host(self, host: str) -> None:
        """kill -9 every process inside `host`'s namespace, and reap the ones we started (a
        zombie keeps its PID: keepalived would think its pidfile still names a live daemon)."""
        ns = self.ns(host)
        kill_netns_processes(ns)
        for proc in self.procs:
            if proc.ns == ns:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(2)

    def forget_addresses(self, host: str, vip: str = VIP, prefix: int = VIP_PREFIX) -> None:
        """What a reboot does to a node's runtime addresses: the floating IP is gone."""
        sh("ip", "-n", self.ns(host), "addr", "del", f"{vip}/{prefix}", "dev", "ethA",
           check=False)  # fmt: skip

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
        """Start `argv` inside `host`'s namespace (tracked: `close()` stops it by PID)."""
        proc = spawn(argv, name or f"{host}:{Path(argv[0]).name}", log, env, cwd, self.ns(host))
        self.procs.append(proc)
        return proc

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
            delete_netns(ns)
        self.created.clear()
