"""A live cluster of `ophiura node` processes on 127.0.0.1 for tests (namespaces: netns.py).

Ports, waits and stops come from `ophiura.testkit`.

Every node gets two heartbeat ports (two links) and an admin port, all picked free at start;
every wait is bounded; stop() kills only the processes this harness started, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ophiura.cluster.admin import call
from ophiura.cluster.config import ClusterConfig, load
from ophiura.testkit.ports import free_ports
from ophiura.testkit.procs import stop_all
from ophiura.testkit.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
OPHIURA = [sys.executable, "-m", "ophiura.cli"]
SECRET = "live-test-secret-0123456789abcdef"


def cluster_toml(tmp: Path, nodes: list[str], hierarchies: str, extra_cluster: str = "") -> str:
    hb = free_ports(2 * len(nodes), socket.SOCK_DGRAM)
    admin = free_ports(len(nodes), socket.SOCK_STREAM)
    lines = [
        "[cluster]",
        'name = "live"',
        f'secret = "{SECRET}"',
        f'state_dir = "{tmp}/state/{{node}}"',
        "test_hooks = true",
        extra_cluster,
        "",
    ]
    for i, n in enumerate(nodes):
        lines += ["[[nodes]]", f'name = "{n}"', f'admin = "127.0.0.1:{admin[i]}"', ""]
    for link in range(2):
        addrs = ", ".join(f'{n} = "127.0.0.1:{hb[2 * i + link]}"' for i, n in enumerate(nodes))
        lines += ["[[links]]", f'name = "ring{link}"', f"addresses = {{ {addrs} }}", ""]
    return "\n".join(lines) + "\n" + hierarchies


class LiveCluster:
    def __init__(self, tmp: Path, toml: str) -> None:
        self.tmp = tmp
        self.path = tmp / "cluster.toml"
        self.path.write_text(toml)
        self.path.chmod(0o600)  # it holds the cluster secret (config.load refuses o+r)
        self.cfg: ClusterConfig = load(self.path)
        self.paths: dict[str, Path] = {}  # a node's own file, if not the shared one
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{REPO}:{REPO / 'src'}:" + env.get("PYTHONPATH", "")
        env["OPHIURA_RSCTMP"] = str(self.tmp / "rsc" / name)
        env["OPHIURA_NODE"] = name
        return env

    def start(self, name: str, *args: str) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as f:
            self.procs[name] = subprocess.Popen(
                [*OPHIURA, "-v", "node", "--config", str(self.paths.get(name, self.path)),
                 "--name", name, *args],
                stdout=f, stderr=subprocess.STDOUT, env=self.env(name), cwd=REPO,
            )  # fmt: skip

    def start_all(self) -> None:
        for n in self.cfg.nodes:
            self.start(n)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def stop(self) -> None:
        stop_all(list(self.procs.values()), timeout=10)

    def admin(self, name: str, req: dict[str, Any], timeout: float = 3.0) -> Any:
        host, port = self.cfg.nodes[name].admin
        return asyncio.run(call(host, port, self.cfg.key("admin"), req, timeout))

    def status(self, name: str) -> dict[str, Any]:
        return self.admin(name, {"op": "status"})

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OPHIURA, "cluster", *args], capture_output=True, text=True, timeout=timeout,
            env={**self.env("cli"), "OPHIURA_CLUSTER_CONFIG": str(self.path)}, cwd=REPO,
        )  # fmt: skip

    def wait_for(self, what: str, pred: Callable[[], bool], timeout: float = 10.0) -> float:
        """Poll `pred` every 20 ms; the seconds it took, or AssertionError with the logs' tails."""
        return wait_for(pred, timeout, what, details=self.tails)

    def tails(self, lines: int = 25) -> str:
        out = []
        for n, p in self.logs.items():
            text = p.read_text(errors="replace").splitlines()[-lines:] if p.exists() else []
            out.append(f"--- {n} ---\n" + "\n".join(text))
        return "\n".join(out)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.tmp / "state" / name / "events").glob("events-*.jsonl")):
            out += [json.loads(line) for line in f.read_text().splitlines() if line]
        return out
