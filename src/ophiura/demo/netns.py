"""Hosts in network namespaces for the demo (root only): the pattern of tests/cluster/netns.py.

    network   bridge  node i (n1..n3)          client          SE a..c
    A ring0   brA     198.51.100.1i/25 ethA    198.51.100.50   -          VIP 198.51.100.100
    B ring1   brB     198.51.100.14i/26 ethB   -               -
    S data    brS     198.51.100.21i/26 ethS   -               198.51.100.20x/26 ethS

The bridges live in a namespace of their own, so nothing is added to the root namespace and no
packet can leave the machine (whose own network is 192.0.2.0/24, never touched). Every name
carries the run id (`ophd-<id>-...`); `close()` kills what is left inside our namespaces (only
ours: we created them) and deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

PREFIX = "ophd-"
NET = "198.51.100"
VIP = f"{NET}.100"
VIP_PREFIX = 25
CLIENT_ADDR = f"{NET}.50"
NETWORKS = {"a": (25, "ethA"), "b": (26, "ethB"), "s": (26, "ethS")}
CLONE_NEWNET = 0x40000000
CMD_TIMEOUT = 20.0


def node_addr(net: str, i: int) -> str:
    return {"a": f"{NET}.{10 + i}", "b": f"{NET}.{140 + i}", "s": f"{NET}.{210 + i}"}[net]


def se_addr(i: int) -> str:
    return f"{NET}.{200 + i}"


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "they need root"
    for tool in ("ip", "arping"):
        if shutil.which(tool) is None:
            pkg = "iproute2" if tool == "ip" else "arping"
            return f"{tool} is not installed (apt-get install {pkg})"
    if not hasattr(_libc, "setns"):
        return "libc has no setns()"
    return None


def sh(*argv: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> str:
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


_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(ns: str) -> None:
    """Move the calling thread into network namespace `ns` (sockets it opens then live there)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NsLoop:
    """An event loop on its own thread, inside network namespace `ns` (None: where we are).

    Sockets opened by coroutines run here live in that namespace, so the demo can talk to a
    node's admin API or its HE's control API on 127.0.0.1 *inside* the node, or be a client in
    the client namespace, without spawning a process per call."""

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


@dataclass
class Lab:
    """The demo's namespaces: bridge, nodes, client, one per SE."""

    run_id: str
    nodes: tuple[str, ...]
    ses: tuple[str, ...]
    created: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"{PREFIX}{self.run_id}-br"

    def ns(self, host: str) -> str:
        return f"{PREFIX}{self.run_id}-{host}"

    def _add_ns(self, host: str) -> str:
        ns = self.ns(host)
        sh("ip", "netns", "add", ns)
        self.created.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def create(self) -> None:
        br = self._add_ns("br")
        for net in NETWORKS:
            bridge = f"br{net.upper()}"
            sh(
                "ip",
                "-n",
                br,
                "link",
                "add",
                bridge,
                "type",
                "bridge",
                "forward_delay",
                "0",
                "stp_state",
                "0",
            )
            sh("ip", "-n", br, "link", "set", bridge, "up")
        for i, n in enumerate(self.nodes, start=1):
            self._add_ns(n)
            for net in ("a", "b", "s"):
                self._plug(n, net, node_addr(net, i))
        self._add_ns("client")
        self._plug("client", "a", CLIENT_ADDR)
        for i, se in enumerate(self.ses, start=1):
            self._add_ns(f"se-{se}")
            self._plug(f"se-{se}", "s", se_addr(i))

    def port(self, host: str, net: str) -> str:
        """The bridge-side device of `host` on `net` (a short name: devices have 15 chars)."""
        return f"{host.replace('-', '')[:8]}{net}"

    def _plug(self, host: str, net: str, addr: str) -> None:
        prefix, dev = NETWORKS[net]
        port = self.port(host, net)
        sh(
            "ip",
            "-n",
            self.bridge_ns,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            dev,
            "netns",
            self.ns(host),
        )
        sh("ip", "-n", self.bridge_ns, "link", "set", port, "master", f"br{net.upper()}", "up")
        sh("ip", "-n", self.ns(host), "addr", "add", f"{addr}/{prefix}", "dev", dev)
        sh("ip", "-n", self.ns(host), "link", "set", dev, "up")

    def ports(self, host: str, up: bool) -> None:
        """`host`'s cables: all pulled (a dead machine says nothing more) or plugged back."""
        for net in ("a", "b", "s"):
            sh(
                "ip",
                "-n",
                self.bridge_ns,
                "link",
                "set",
                self.port(host, net),
                "up" if up else "down",
            )

    def kill_host(self, host: str) -> None:
        kill_netns_processes(self.ns(host))

    def forget_addresses(self, host: str) -> None:
        """What a reboot does to a node's runtime addresses: the floating IP is gone."""
        sh(
            "ip",
            "-n",
            self.ns(host),
            "addr",
            "del",
            f"{VIP}/{VIP_PREFIX}",
            "dev",
            "ethA",
            check=False,
        )

    def close(self) -> None:
        for ns in reversed(self.created):
            with contextlib.suppress(Exception):
                kill_netns_processes(ns)
            sh("ip", "netns", "del", ns, check=False)
        self.created.clear()


def leftover_namespaces(run_id: str) -> list[str]:
    return [ns for ns in list_netns() if ns.startswith(f"{PREFIX}{run_id}-")]
