"""A LiveCluster (tests/cluster/live.py) whose nodes also serve the REST API, and an HTTP client.

The client is urllib on purpose: the tests see the API as any script would, with no aiohttp
client helping on the other side.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cluster.live import LiveCluster, cluster_toml
from cluster.test_live_local import hierarchy
from ophiura.testkit.ports import free_ports
from ophiura.web.auth import cluster_token

NODES = ["n1", "n2", "n3"]


def db_hierarchy(markers: Path) -> str:
    """A second hierarchy (two resources, a dependency, n2 first) so the dashboard has more."""
    agent = "python:tests.cluster.fake_agent:FakeAgent"
    return f"""
[[hierarchies]]
name = "db"
nodes = ["n2", "n3", "n1"]
[[hierarchies.resources]]
name = "db-volume"
kind = "{agent}"
params = {{ dir = "{markers}" }}
monitor_interval = 0.5
[[hierarchies.resources]]
name = "db-server"
kind = "{agent}"
params = {{ dir = "{markers}" }}
depends_on = ["db-volume"]
monitor_interval = 0.5
"""


def web_toml(tmp: Path, nodes: list[str], hierarchies: str, extra_cluster: str = "") -> str:
    """cluster_toml plus `http = "127.0.0.1:PORT"` for every node (free ports)."""
    toml = cluster_toml(tmp, nodes, hierarchies, extra_cluster)
    for n, port in zip(nodes, free_ports(len(nodes), socket.SOCK_STREAM), strict=True):
        head = f'[[nodes]]\nname = "{n}"\n'
        assert head in toml
        toml = toml.replace(head, f'{head}http = "127.0.0.1:{port}"\n')
    return toml


def make_cluster(tmp: Path, nodes: list[str] = NODES, extra: str = "") -> LiveCluster:
    markers = tmp / "markers"
    markers.mkdir(exist_ok=True)
    hiers = hierarchy(markers).replace('nodes = ["n1", "n2", "n3"]', f"nodes = {nodes!r}")
    if len(nodes) == 3:
        hiers += db_hierarchy(markers)
    return LiveCluster(tmp, web_toml(tmp, nodes, hiers.replace("'", '"'), extra))


def base_url(c: LiveCluster, node: str) -> str:
    addr = c.cfg.http_address(node)
    assert addr is not None
    return f"http://{addr[0]}:{addr[1]}"


def token(c: LiveCluster) -> str:
    return cluster_token(c.cfg)


def http(
    method: str,
    url: str,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded JSON or text, headers) for one request; HTTP errors are returned too."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, payload, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, payload, headers = exc.code, exc.read(), dict(exc.headers)
    text = payload.decode()
    try:
        return status, json.loads(text), headers
    except ValueError:
        return status, text, headers


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(
    url: str,
    profile: Path,
    *,
    screenshot: Path | None = None,
    budget_ms: int = 4000,
    size: tuple[int, int] = (1280, 900),
    timeout: float = 60.0,
) -> str:
    """Load `url` in headless Chromium for `budget_ms` of virtual time; the DOM (or a PNG).

    Chromium runs in its own session so that a hang is ended by killing exactly its process
    group, which this function started.
    """
    exe = chromium_path()
    assert exe is not None
    args = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}"]  # fmt: skip
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.Popen(
        [*args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return out.decode(errors="replace")
