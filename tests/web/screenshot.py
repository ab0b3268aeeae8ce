"""Stage a 3-node cluster with some history and screenshot its dashboard (docs/img/dashboard.png).

    .venv/bin/python tests/web/screenshot.py [OUT.png]

db-server crashes once on n2 (restarted locally: fail count 1), web is switched over to n3,
db is frozen, and n3 drops heartbeat link ring1; then headless Chromium loads n1's dashboard.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

from web.kit import base_url, chromium, make_cluster, token  # noqa: E402


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        c = make_cluster(tmp)
        c.start_all()
        try:
            hiers = lambda: c.status("n1")["hierarchies"]  # noqa: E731
            c.wait_for("web on n1, db on n2", lambda: hiers()["db"]["running_on"] == ["n2"]
                       and hiers()["web"]["running_on"] == ["n1"], 20)  # fmt: skip
            marker = tmp / "markers" / "db-server.n2"
            marker.unlink()
            counted = lambda: bool(c.status("n2")["hierarchies"]["db"]["fail_counts"])  # noqa: E731
            c.wait_for("db-server restarted on n2", lambda: marker.exists() and counted())
            r = c.cli("switchover", "web", "--to", "n3", "--node", "n2")
            assert r.returncode == 0, r.stderr
            c.admin("n1", {"op": "freeze", "hierarchy": "db"})
            c.admin("n3", {"op": "block-link", "link": 1, "blocked": True})
            c.wait_for("ring1 to n3 down", lambda: c.status("n1")["nodes"]["n3"]["links"]["ring1"]
                       == "down", 5)  # fmt: skip
            time.sleep(1.5)
            chromium(f"{base_url(c, 'n1')}/#token={token(c)}", tmp / "profile", screenshot=out)
            print(f"wrote {out}")
        finally:
            c.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/dashboard.png").resolve())
