"""The multi-host cluster harness on the namespace lab (`ophiura.testkit.netns`), shared by the
multi-host cluster tests and the failover benchmark.

The lab (bridge namespace, nodes n1..n3, client, storage host `target` on 198.51.100.0/24,
nothing in the root namespace) and its faults live in `ophiura.testkit.netns`; this module adds
what runs on it: `NsCluster` runs `ophiura node` daemons, `HttpClient` polls the floating IP
from the client namespace, `pr_holder`/`write_as` look at the shared LUN, `crash_host` is a
power loss.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophiura.testkit.netns import (  # re-exported: the tests import the lab from here
    CLIENT_ADDR,
    CMD_TIMEOUT,
    NET,
    NETWORKS,
    TARGET_ADDR,
    VIP,
    Lab,
    cleanup_stale,
    ensure_tools,
    in_netns,
    kill_netns_processes,
    list_netns,
    missing_tools,
    sh,
    unavailable,
)
from ophiura.testkit.procs import Proc
from ophiura.testkit.waiting import wait_for

__all__ = [
    "CLIENT_ADDR", "CMD_TIMEOUT", "NET", "NETWORKS", "TARGET_ADDR", "VIP", "Lab", "Proc",
    "cleanup_stale", "ensure_tools", "in_netns", "kill_netns_processes", "list_netns",
    "missing_tools", "sh", "unavailable",
]  # fmt: skip


def open_lab(storage: bool = True, **tools: str) -> Iterator[Lab]:
    """A `lab` fixture's body: skip (and say why) unless namespaces and `tools` are usable."""
    import pytest  # here, not at the top: bench/failover.py imports this module too

    why = unavailable() or missing_tools(**tools)
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    with Lab(storage=storage) as lab:
        yield lab


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
        wait_for(self.out.exists, 5, "the client's results", details=self.proc.tail)
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
        self.path.chmod(0o600)  # it holds the cluster secret (config.load refuses o+r)
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
        return wait_for(pred, timeout, what, details=self.tails)

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
