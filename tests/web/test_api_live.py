"""The REST API against three real `ophiura node` daemons on 127.0.0.1 (urllib as the client)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.live import LiveCluster
from ophiura.web.auth import token_sha256

from .kit import base_url, http, make_cluster, token

VIEWER, ALICE = "viewer-token-0123456789", "alice-token-0123456789"
USERS = (
    f'api_users = {{ viewer = {{ token_sha256 = "{token_sha256(VIEWER)}", role = "read" }}, '
    f'alice = {{ token_sha256 = "{token_sha256(ALICE)}" }} }}'
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    c = make_cluster(tmp_path_factory.mktemp("web"), extra=USERS)
    c.start_all()
    try:
        c.wait_for("web on n1, db on n2", lambda: settled(c), 20)
        yield c
    finally:
        c.stop()


def settled(c: LiveCluster) -> bool:
    h = c.status("n3")["hierarchies"]
    return h["web"]["running_on"] == ["n1"] and h["db"]["running_on"] == ["n2"]


def url(c: LiveCluster, path: str, node: str = "n1") -> str:
    return base_url(c, node) + path


def get(c: LiveCluster, path: str, node: str = "n1", tok: str | None = "") -> Any:
    status, body, _ = http("GET", url(c, path, node), token(c) if tok == "" else tok)
    assert status == 200, body
    return body


def post(c: LiveCluster, path: str, body: Any = None, node: str = "n1") -> tuple[int, Any]:
    status, data, _ = http("POST", url(c, path, node), token(c), body if body is not None else {})
    return status, data


VOLATILE = ("events", "heartbeat")


def stable(st: dict[str, Any]) -> dict[str, Any]:
    """Status without what changes from one call to the next (times, counters)."""
    out = {k: v for k, v in st.items() if k not in VOLATILE}
    out["nodes"] = {
        n: {k: v for k, v in info.items() if k != "last_heard"} for n, info in st["nodes"].items()
    }
    return out


@pytest.mark.timeout(90)
def test_status_is_the_cli_json(live: LiveCluster) -> None:
    c = live
    for _ in range(20):  # both answers must come from the same settled moment
        rest = get(c, "/api/v1/status")
        r = c.cli("status", "--json", "--node", "n1")
        assert r.returncode == 0, r.stderr
        cli = json.loads(r.stdout)
        if stable(rest) == stable(cli):
            break
        time.sleep(0.2)
    assert stable(rest) == stable(cli)
    assert set(rest) == set(cli)
    assert rest["heartbeat"].keys() == cli["heartbeat"].keys()
    assert rest["node"] == "n1" and rest["hierarchies"]["web"]["owner"] == "n1"
    assert set(rest["nodes"]["n2"]["last_heard"]) == {"ring0", "ring1"}
    assert all(0 <= t < 1 for t in rest["nodes"]["n2"]["last_heard"].values())


@pytest.mark.timeout(60)
def test_unauthenticated_is_refused_and_logged(live: LiveCluster) -> None:
    c = live
    for tok, why in ((None, "no token"), ("wrong-token", "bad token"), (" ", "bad token")):
        status, body, headers = http("GET", url(c, "/api/v1/status"), tok)
        assert status == 401, body
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert f"authentication required ({why})" in body["error"]
    status, body, _ = http("POST", url(c, "/api/v1/maintenance"), "nope", {"on": True})
    assert status == 401
    status, body, _ = http("GET", url(c, "/api/v1/status"), token(c).upper())
    assert status == 401  # tokens are compared exactly
    # Refused, logged and recorded; the daemon carries on and nothing changed.
    st = get(c, "/api/v1/status")
    assert st["admin"]["m"] is False
    assert any(e["task"] == "api-refused" and e["kind"] == "security" for e in st["events"])
    assert "refused: no token" in c.logs["n1"].read_text()
    assert c.procs["n1"].poll() is None


@pytest.mark.timeout(60)
def test_user_tokens_and_roles(live: LiveCluster) -> None:
    c = live
    assert get(c, "/api/v1/whoami", tok=VIEWER) == {"name": "viewer", "role": "read", "node": "n1"}
    assert get(c, "/api/v1/status", tok=VIEWER)["node"] == "n1"
    status, body, _ = http("POST", url(c, "/api/v1/hierarchies/web/freeze"), VIEWER, {})
    assert status == 403 and "read role" in body["error"]
    assert get(c, "/api/v1/whoami", tok=ALICE)["role"] == "admin"
    assert get(c, "/api/v1/whoami")["name"] == "cluster"


@pytest.mark.timeout(60)
def test_bad_input_400_and_unknown_404(live: LiveCluster) -> None:
    c = live
    sw = "/api/v1/hierarchies/web/switchover"
    cases: list[tuple[str, Any, int, str]] = [
        (sw, {}, 400, "'to' is missing"),
        (sw, {"to": 3}, 400, "must be a node name"),
        (sw, {"to": "n9"}, 400, "unknown node 'n9'"),
        (sw, [1, 2], 400, "must be a JSON object"),
        ("/api/v1/maintenance", {"on": "yes"}, 400, "'on' must be true or false"),
        ("/api/v1/maintenance", {}, 400, "'on' must be true or false"),
        ("/api/v1/hierarchies/nope/switchover", {"to": "n2"}, 404, "unknown hierarchy 'nope'"),
        ("/api/v1/hierarchies/nope/freeze", {}, 404, "unknown hierarchy 'nope'"),
        ("/api/v1/hierarchies/nope/cleanup", {}, 404, "unknown hierarchy 'nope'"),
        ("/api/v1/nodes/n9/standby", {}, 404, "unknown node 'n9'"),
        ("/api/v1/nodes/n9/online", {}, 404, "unknown node 'n9'"),
        ("/api/v1/no-such-thing", {}, 404, "no /api/v1/no-such-thing"),
    ]
    for path, body, want, words in cases:
        status, data = post(c, path, body)
        assert (status, words in data.get("error", "")) == (want, True), (path, body, data)
    status, data, _ = http("POST", url(c, sw), token(c), raw=b"{not json")
    assert status == 400 and "the body is not JSON" in data["error"]
    status, data, _ = http("POST", url(c, sw), token(c), raw=b"x" * 100_000)
    assert status == 413, data
    for query, words in (("since=abc", "not a number"), ("limit=0", "outside 1..1000"),
                         ("limit=2.5", "not a whole number"), ("since=-1", "outside")):  # fmt: skip
        status, data, _ = http("GET", url(c, f"/api/v1/events?{query}"), token(c))
        assert status == 400 and words in data["error"], (query, data)
    status, data, headers = http("GET", url(c, sw), token(c))
    assert status == 405 and "POST" in headers.get("Allow", "")
    # None of it changed anything.
    st = get(c, "/api/v1/status")
    assert st["admin"]["w"] == {} and st["admin"]["m"] is False


def admin_on(c: LiveCluster, node: str) -> dict[str, Any]:
    return c.status(node)["admin"]


@pytest.mark.timeout(120)
def test_actions_show_in_status_everywhere(live: LiveCluster) -> None:
    c = live
    # freeze (asked via n1's REST API; seen in n3's status through gossip)
    status, body = post(c, "/api/v1/hierarchies/web/freeze")
    assert status == 200 and body["ok"] and body["by"] == "cluster" and "web" in body["admin"]["f"]
    c.wait_for("n3 sees web frozen", lambda: c.status("n3")["hierarchies"]["web"]["frozen"], 5)
    status, body = post(c, "/api/v1/hierarchies/web/switchover", {"to": "n2"})
    assert status == 409 and "frozen" in body["error"]
    status, body = post(c, "/api/v1/hierarchies/web/unfreeze", node="n2")
    assert status == 200
    # n3 is asked next, so wait until n3 itself has the unfreeze (it arrives by gossip)
    c.wait_for(
        "web unfrozen on n1 and n3",
        lambda: not any(c.status(n)["hierarchies"]["web"]["frozen"] for n in ("n1", "n3")),
        5,
    )

    # switchover web n1 -> n2 (asked of n3): done and nothing left behind
    status, body = post(c, "/api/v1/hierarchies/web/switchover", {"to": "n2"}, node="n3")
    assert status == 200 and body["to"] == "n2"

    def moved() -> bool:
        h = get(c, "/api/v1/status", node="n1")["hierarchies"]["web"]
        return h["running_on"] == ["n2"] and h["switchover"] is None

    c.wait_for("web runs on n2, request cleared", moved, 15)
    assert (c.tmp / "markers" / "app.n2").exists() and not (c.tmp / "markers" / "app.n1").exists()

    # standby / online
    status, _ = post(c, "/api/v1/nodes/n3/standby")
    assert status == 200
    c.wait_for("n2 sees n3 standby", lambda: "n3" in admin_on(c, "n2")["s"], 5)
    c.wait_for("n3 is standby", lambda: c.status("n3")["state"] == "standby", 5)
    status, _ = post(c, "/api/v1/nodes/n3/online")
    assert status == 200
    c.wait_for("n3 online again", lambda: c.status("n3")["state"] == "online", 5)

    # maintenance on / off
    assert post(c, "/api/v1/maintenance", {"on": True})[0] == 200
    c.wait_for("maintenance on n3", lambda: admin_on(c, "n3")["m"] is True, 5)
    assert post(c, "/api/v1/maintenance", {"on": False})[0] == 200
    c.wait_for("maintenance off n3", lambda: admin_on(c, "n3")["m"] is False, 5)

    # cleanup: a counted request every node applies
    before = admin_on(c, "n1")["c"].get("db", 0)
    status, body = post(c, "/api/v1/hierarchies/db/cleanup")
    assert status == 200 and body["admin"]["c"]["db"] == before + 1
    c.wait_for("n2 got the cleanup", lambda: admin_on(c, "n2")["c"].get("db") == before + 1, 5)

    # every action is audited, with who asked, in the event log of the node that was asked
    tasks = [
        (e["task"], e.get("desc", "").split(" from ")[0])
        for node in ("n1", "n2", "n3")
        for e in get(c, "/api/v1/events?limit=1000", node=node)["events"]
    ]
    for op in ("freeze", "switchover", "standby", "online", "maintenance", "cleanup"):
        assert (f"api-{op}", "by cluster") in tasks, op


@pytest.mark.timeout(60)
def test_events_since_and_limit(live: LiveCluster) -> None:
    c = live
    everything = get(c, "/api/v1/events?since=0&limit=1000")
    events = everything["events"]
    assert events and all(e["node"] == "n1" for e in events)
    times = [e["time"] for e in events]
    assert times == sorted(times)
    assert any(e["task"] == "start" and e["kind"] == "node" for e in events)  # from the file
    two = get(c, "/api/v1/events?limit=2")
    assert len(two["events"]) == 2 and two["truncated"] is True
    assert two["events"] == events[-2:] or two["events"][0]["time"] >= events[-2]["time"]
    cut = times[len(times) // 2]
    after = get(c, f"/api/v1/events?since={cut}&limit=1000")["events"]
    assert after and all(e["time"] > cut for e in after)
    assert get(c, f"/api/v1/events?since={time.time() + 3600}")["events"] == []


@pytest.mark.timeout(30)
def test_dashboard_and_openapi_are_served(live: LiveCluster) -> None:
    c = live
    status, page, headers = http("GET", url(c, "/"))
    assert status == 200 and "/static/app.js" in page and "<title>ophiura" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "http://" not in page and "https://" not in page  # no CDN: the machine may be offline
    status, js, _ = http("GET", url(c, "/static/app.js"))
    assert status == 200 and "/api/v1/status" in js and "/api/v1/events" in js
    assert "sessionStorage" in js and "setTimeout(refresh, REFRESH_MS)" in js
    assert "const REFRESH_MS = 1000;" in js
    status, css, _ = http("GET", url(c, "/static/style.css"))
    assert status == 200 and "https://" not in css
    assert http("GET", url(c, "/static/../api.py"))[0] == 404
    status, doc, _ = http("GET", url(c, "/api/v1/openapi.json"))
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {
        "/api/v1/status",
        "/api/v1/events",
        "/api/v1/hierarchies/{name}/switchover",
        "/api/v1/hierarchies/{name}/freeze",
        "/api/v1/hierarchies/{name}/unfreeze",
        "/api/v1/hierarchies/{name}/cleanup",
        "/api/v1/nodes/{name}/standby",
        "/api/v1/nodes/{name}/online",
        "/api/v1/maintenance",
    } <= set(doc["paths"])


@pytest.mark.timeout(60)
def test_http_port_taken_daemon_carries_on(tmp_path: Path) -> None:
    import socket

    c = make_cluster(tmp_path, ["n1", "n2"])
    host, port = c.cfg.http_address("n1") or ("", 0)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, port))
        squatter.listen()
        c.start("n1")
        try:
            c.wait_for("n1 answers its admin API", lambda: c.status("n1")["node"] == "n1", 10)
            events = c.status("n1")["events"]
            assert any(e["task"] == "http-failed" and str(port) in e["desc"] for e in events)
            assert c.procs["n1"].poll() is None
        finally:
            c.stop()
