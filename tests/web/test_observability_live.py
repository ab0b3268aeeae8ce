"""/metrics and the health probes of three live `ophiura node` daemons, scraped over HTTP.

One scenario feeds every test: web runs on n1; its stop is made to fail, a switchover to n2
follows, n2 fences n1 (a script that kills n1's daemon) and takes web over. Scrapes before and
after are parsed with prometheus_client's parser and with the strict one of promtext.py, and
their values must tell that story.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.live import LiveCluster
from cluster.test_live_fencing import config as fencing_config
from cluster.test_live_local import running
from ophiura.metrics import CONTENT_TYPE
from ophiura.web.auth import token_sha256

from .kit import base_url, http, token, web_toml
from .promtext import parse

NODES = ["n1", "n2", "n3"]
VIEWER = "viewer-token-for-metrics-0123"
USERS = f'api_users = {{ viewer = {{ token_sha256 = "{token_sha256(VIEWER)}", role = "read" }} }}'
DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "ophiura-cluster.json"


def scrape(c: LiveCluster, node: str) -> str:
    status, body, headers = http("GET", base_url(c, node) + "/metrics", VIEWER)
    assert status == 200, body
    assert headers["Content-Type"] == CONTENT_TYPE
    assert isinstance(body, str)
    return body


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a scrape (prometheus_client's parser), None if absent."""
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("observe")
    markers = tmp / "markers"
    markers.mkdir()
    (tmp / "pids").mkdir()
    c = LiveCluster(tmp, web_toml(tmp, NODES, fencing_config(tmp, markers), USERS))
    c.start_all()
    for n, p in c.procs.items():
        (tmp / "pids" / n).write_text(str(p.pid))
    out: dict[str, Any] = {"cluster": c}
    try:
        c.wait_for("web on n1", lambda: running(markers) == ["app.n1"], 20)

        def settled() -> bool:
            """Every node sees web on one node, and n1 has an RTT on every link."""
            texts = {n: scrape(c, n) for n in NODES}
            seen = all(
                (value(texts["n1"], "ophiura_heartbeat_rtt_seconds_count", peer=p, link=ln) or 0)
                > 0
                for p in ("n2", "n3")
                for ln in ("ring0", "ring1")
            )
            one = all(
                value(t, "ophiura_hierarchy_running_nodes", hierarchy="web") == 1
                for t in texts.values()
            )
            return seen and one

        c.wait_for("every node sees web on n1; RTT on every link", settled, 10)
        out["before"] = {n: scrape(c, n) for n in NODES}
        out["probes_before"] = probes(c)
        (markers / "stuck.n1").touch()  # n1 cannot stop web, even forced: n2 fences it
        r = c.cli("switchover", "web", "--to", "n2", "--timeout", "20")
        assert r.returncode == 0, r.stdout + r.stderr + c.tails()
        assert c.procs["n1"].wait(10) == -9

        def moved() -> bool:
            """n2 and n3 see n1 dead, and web running on one node (n2)."""
            texts = [scrape(c, n) for n in ("n2", "n3")]
            return all(
                value(t, "ophiura_peer_up", peer="n1") == 0
                and value(t, "ophiura_hierarchy_running_nodes", hierarchy="web") == 1
                for t in texts
            )

        c.wait_for("n2 and n3 see n1 dead and web on n2", moved, 10)
        out["after"] = {n: scrape(c, n) for n in ("n2", "n3")}
        out["probes_after"] = probes(c, ("n2", "n3"))
        yield out
    finally:
        c.stop()


def probes(c: LiveCluster, nodes: tuple[str, ...] = tuple(NODES)) -> dict[str, Any]:
    """Every probe on every node, without a token: {(node, path): (status, body)}."""
    out = {}
    for n in nodes:
        for path in ("/health", "/hierarchy/web", "/hierarchy/no-such-thing"):
            status, body, _ = http("GET", base_url(c, n) + path)
            out[(n, path)] = (status, body)
    return out


# -- the format ---------------------------------------------------------------------------------


def test_every_scrape_parses_strictly(story: dict[str, Any]) -> None:
    for text in [*story["before"].values(), *story["after"].values()]:
        fams = parse(text)  # raises on anything a strict scraper would refuse
        ref = list(text_string_to_metric_families(text))
        assert len(ref) == len(fams) > 20
        for fam in fams.values():
            assert fam.help, f"{fam.name} has no HELP"
            assert fam.type != "untyped", f"{fam.name} has no TYPE"


def test_curl_scrape_parses(story: dict[str, Any]) -> None:
    """As an operator checks it: curl with the read token, prometheus_client's parser."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    c = story["cluster"]
    r = subprocess.run(
        [curl, "-sSf", "-H", f"Authorization: Bearer {VIEWER}", base_url(c, "n2") + "/metrics"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = {f.name for f in text_string_to_metric_families(r.stdout)}
    assert {
        "ophiura_node_state",
        "ophiura_heartbeat_rtt_seconds",
        "ophiura_fencing_actions",
    } <= names
    assert parse(r.stdout)


# -- what the values say ------------------------------------------------------------------------


def test_membership_links_and_hierarchy_states(story: dict[str, Any]) -> None:
    n1, n2 = story["before"]["n1"], story["before"]["n2"]
    assert value(n1, "ophiura_node_state", state="online") == 1
    assert value(n1, "ophiura_node_state", state="starting") == 0
    assert value(n1, "ophiura_node_info", node="n1", cluster="live") == 1
    for p in ("n2", "n3"):
        assert value(n1, "ophiura_peer_up", peer=p) == 1
        for ln in ("ring0", "ring1"):
            assert value(n1, "ophiura_link_up", peer=p, link=ln) == 1
            assert value(n1, "ophiura_heartbeat_received_total", peer=p, link=ln) > 0
            assert value(n1, "ophiura_heartbeat_lost_total", peer=p, link=ln) is not None
            # 127.0.0.1 and a heartbeat thread: well under the deadline
            total = value(n1, "ophiura_heartbeat_rtt_seconds_sum", peer=p, link=ln)
            count = value(n1, "ophiura_heartbeat_rtt_seconds_count", peer=p, link=ln)
            assert count > 0 and 0 < total / count < 0.5
    assert value(n1, "ophiura_hierarchy_running_here", hierarchy="web") == 1
    assert value(n2, "ophiura_hierarchy_running_here", hierarchy="web") == 0
    assert value(n1, "ophiura_hierarchy_state", hierarchy="web", state="running") == 1
    assert value(n2, "ophiura_hierarchy_state", hierarchy="web", state="stopped") == 1
    assert value(n2, "ophiura_hierarchy_running_nodes", hierarchy="web") == 1
    assert (
        value(n1, "ophiura_resource_state", hierarchy="web", resource="app", state="running") == 1
    )
    assert value(n1, "ophiura_resource_fail_count", hierarchy="web", resource="app") == 0
    assert value(n1, "ophiura_quorate") == 1
    assert value(n1, "ophiura_maintenance") == 0
    ok = value(n1, "ophiura_resource_operations_total", hierarchy="web", resource="app",
               op="start", result="ok")  # fmt: skip
    assert ok == 1


def test_fencing_and_failover_are_counted_and_timed(story: dict[str, Any]) -> None:
    n2, n3 = story["after"]["n2"], story["after"]["n3"]
    assert value(n2, "ophiura_fencing_actions_total", peer="n1", result="fenced") == 1
    assert value(n2, "ophiura_fencing_actions_total", peer="n1", result="failed") == 0
    assert value(n2, "ophiura_fencing_duration_seconds_count", peer="n1") == 1
    assert value(n2, "ophiura_failover_duration_seconds_count", hierarchy="web") == 1
    took = value(n2, "ophiura_failover_duration_seconds_sum", hierarchy="web")
    assert took is not None and 0 < took < 30
    assert value(n3, "ophiura_failover_duration_seconds_count", hierarchy="web") == 0
    assert value(n2, "ophiura_hierarchy_running_here", hierarchy="web") == 1
    assert value(n3, "ophiura_hierarchy_running_nodes", hierarchy="web") == 1
    assert value(n2, "ophiura_peer_up", peer="n1") == 0
    assert value(n2, "ophiura_peer_fenced", peer="n1") == 1
    assert value(n2, "ophiura_events_total", kind="fencing") >= 2
    failed_stop = value(story["before"]["n1"], "ophiura_resource_operations_total",
                        hierarchy="web", resource="app", op="stop", result="failed")  # fmt: skip
    assert failed_stop is None  # before the stuck stop, none


# -- health probes ------------------------------------------------------------------------------


def test_probes_answer_without_a_token(story: dict[str, Any]) -> None:
    before, after = story["probes_before"], story["probes_after"]
    for n in NODES:
        assert before[(n, "/health")] == (200, "online\n")
    assert before[("n1", "/hierarchy/web")] == (200, "running\n")
    for n in ("n2", "n3"):
        assert before[(n, "/hierarchy/web")] == (503, "not running here\n")
    # an unknown name is indistinguishable from one not running here: no listing by probing
    for n in NODES:
        assert before[(n, "/hierarchy/no-such-thing")] == (503, "not running here\n")
    assert after[("n2", "/hierarchy/web")] == (200, "running\n")
    assert after[("n3", "/hierarchy/web")] == (503, "not running here\n")


def test_everything_else_still_needs_a_token(story: dict[str, Any]) -> None:
    c = story["cluster"]
    url = base_url(c, "n2")
    for method, path in (
        ("GET", "/metrics"),
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/maintenance"),
    ):
        status, body, headers = http(method, url + path, body={} if method == "POST" else None)
        assert status == 401, (path, body)
        assert headers.get("WWW-Authenticate") == 'Bearer realm="ophiura"'
    status, _, _ = http("GET", url + "/metrics", "wrong-token")
    assert status == 401
    for variant in ("/metrics/", "//metrics", "/METRICS", "/metrics/../metrics", "/%6Detrics"):
        status, body, _ = http("GET", url + variant)
        assert status in (401, 404), (variant, status)
        assert "ophiura_" not in str(body), variant
    assert http("GET", url + "/metrics", token(c))[0] == 200  # the cluster token works too
    # the probes are read-only: any other method is refused
    for path in ("/health", "/hierarchy/web"):
        for method in ("POST", "PUT", "DELETE"):
            assert http(method, url + path, body={})[0] == 405, (method, path)
    status, body, headers = http("HEAD", url + "/health")
    assert status == 200 and body == ""
    assert headers["Cache-Control"] == "no-store"
    status, doc, _ = http("GET", url + "/api/v1/openapi.json")
    assert status == 200 and {"/metrics", "/health", "/hierarchy/{name}"} <= set(doc["paths"])
    assert doc["paths"]["/health"]["get"]["security"] == []  # documented as public
    # a probe body says one word, nothing about nodes, resources or configuration
    status, body, _ = http("GET", url + "/health")
    assert status == 200 and body.split() == ["online"]


# -- the Grafana dashboard ----------------------------------------------------------------------


def test_dashboard_uses_only_exported_metrics(story: dict[str, Any]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    assert len(exprs) >= 20
    exported: set[str] = set()  # families (HELP/TYPE, even with no sample yet) and samples
    for text in [*story["before"].values(), *story["after"].values()]:
        for fam in parse(text).values():
            exported.add(fam.name)
            exported.update(s[0] for s in fam.samples)
    used = {n for e in exprs for n in re.findall(r"\b(ophiura_[a-z0-9_]+)", e)}
    missing = sorted(used - exported)
    assert not missing, f"the dashboard uses metrics /metrics does not export: {missing}"
    # and it shows every family the node exports but the informational start time
    families = {n for n in exported if n in {f for t in story["before"].values() for f in parse(t)}}
    unshown = sorted(
        f
        for f in families - {"ophiura_node_start_time_seconds"}
        if not any(u == f or u.startswith(f + "_") for u in used)
    )
    assert not unshown, f"exported but not on the dashboard: {unshown}"
