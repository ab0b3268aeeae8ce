"""The dashboard as a person sees it: headless Chromium against three live nodes.

Skipped, with the reason printed, when Chromium is not installed (apt-get install chromium).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.live import LiveCluster

from .kit import base_url, chromium, chromium_path, make_cluster, token


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveCluster]:
    if chromium_path() is None:
        reason = "chromium not installed (apt-get install -y chromium): dashboard not rendered"
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    c = make_cluster(tmp_path)
    c.start_all()
    try:
        c.wait_for(
            "web on n1, db on n2",
            lambda: (
                c.status("n1")["hierarchies"]["db"]["running_on"] == ["n2"]
                and c.status("n1")["hierarchies"]["web"]["running_on"] == ["n1"]
            ),
            20,
        )
        yield c
    finally:
        c.stop()


@pytest.mark.timeout(120)
def test_dashboard_renders_the_cluster(live: LiveCluster, tmp_path: Path) -> None:
    c = live
    url = f"{base_url(c, 'n1')}/#token={token(c)}"
    dom = chromium(url, tmp_path / "profile")
    # Signed in from the fragment, then rendered from /api/v1/status and /api/v1/events.
    assert '<main id="main">' in dom and '<section id="login" class="login" hidden="">' in dom
    assert '<div id="banner" class="banner" hidden="">' in dom  # every fetch succeeded
    seen = ["owner n1", "owner n2", "db-volume", "db-server", "ring0", "ring1", "cluster (admin)"]
    for text in [*seen, "Switch over", "Freeze", "Standby", "Maintenance mode"]:
        assert text in dom, text
    assert "settled" in dom  # an event from the log

    # Without a token the page asks for one and shows no cluster data.
    dom = chromium(base_url(c, "n1") + "/", tmp_path / "profile2")
    assert '<section id="login" class="login">' in dom and "owner n1" not in dom

    png = tmp_path / "dashboard.png"
    chromium(url, tmp_path / "profile3", screenshot=png)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 900)
