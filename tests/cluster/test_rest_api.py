"""The authenticated REST API the issue asks for (besides the line-JSON admin API)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.testkit.ports import free_port
from ophiura.web.auth import cluster_token

from .live import LiveCluster, cluster_toml
from .test_live_local import hierarchy


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[LiveCluster]:
    markers = tmp_path / "markers"
    markers.mkdir()
    port = free_port()
    c = LiveCluster(tmp_path, cluster_toml(tmp_path, ["n1", "n2"], hierarchy(markers).replace(
        'nodes = ["n1", "n2", "n3"]', 'nodes = ["n1", "n2"]'),
        extra_cluster=f'http = "127.0.0.1:{port}"'))  # fmt: skip
    c.start("n1")
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.timeout(30)
def test_rest_status(one_node: LiveCluster) -> None:
    c = one_node
    c.wait_for("n1 answers", lambda: c.status("n1")["node"] == "n1", 10)
    addr = c.cfg.http_address("n1")  # [cluster] http (docs/web.md)
    assert addr is not None
    host, port = addr
    url = f"http://{host}:{port}/api/v1/status"
    with pytest.raises(urllib.error.HTTPError) as refused:  # authenticated: no token, no status
        urllib.request.urlopen(url, timeout=3)
    assert refused.value.code == 401
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster_token(c.cfg)}"})
    with urllib.request.urlopen(req, timeout=3) as resp:
        body = json.loads(resp.read())
    assert body["node"] == "n1"
