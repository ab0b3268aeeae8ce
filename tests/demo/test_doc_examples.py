"""Every cluster TOML example in docs/ and examples/ is validated, and started as far as this
machine allows (issue 12: an example that passed `validate` failed at start with
`param 'ip' is required`).

- Whole configurations (`[cluster]` ...) must validate, apart from what only the environment
  lacks (a fence agent that is not installed); `[[hierarchies.resources]]` snippets are put into
  a minimal cluster around them and must validate too.
- Then every resource of every example is started: floating addresses (`ip`, `IPaddr2`) for
  real, in a network namespace this test creates with a veth device named as the example's
  `nic`; the others through their agent's `validate`, which is what `start` checks first and
  where a wrong parameter fails: it must never say ERR_CONFIGURED (the example's fault), only,
  when this machine lacks the program, ERR_INSTALLED.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ophiura.cluster.agentload import agent_for
from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.config import parse
from ophiura.cluster.validation import validate
from ophiura.testkit.netns import namespace

REPO = Path(__file__).resolve().parents[2]
SECRET = "0123456789abcdef0123456789abcdef"
# TOML blocks that are not cluster configurations, and why.
NOT_CLUSTER = {
    "docs/replication.md#1": "an HE configuration (tests/demo/test_examples.py loads he.toml)",
    "docs/replication.md#2": "the HE's NBD keys (tests/replication/test_he_nbd_tls.py loads it)",
    "docs/replication.md#3": "the HE's iSCSI keys (tests/replication/test_he_iscsi_access.py)",
    "docs/web.md#1": "a fragment with elided token hashes ('…64 hex…')",
    "docs/web.md#2": "a fragment: the HTTPS keys (tests/web/test_https_live.py runs them)",
}
BASE = {
    "cluster": {"name": "ex", "secret": SECRET},
    "nodes": [
        {"name": "n1", "admin": "127.0.0.1:17401"},
        {"name": "n2", "admin": "127.0.0.1:17402"},
    ],
    "links": [
        {"name": "r0", "addresses": {"n1": "127.0.0.1:17410", "n2": "127.0.0.1:17411"}},
        {"name": "r1", "addresses": {"n1": "127.0.0.1:17412", "n2": "127.0.0.1:17413"}},
    ],
}


def examples() -> Iterator[tuple[str, str]]:
    docs = sorted((REPO / "docs").glob("*.md"))
    for md in [*docs, REPO / "README.md", REPO / "examples" / "README.md"]:
        blocks = re.findall(r"```toml\n(.*?)```", md.read_text(), re.S)
        for i, text in enumerate(blocks, 1):
            yield f"{md.relative_to(REPO)}#{i}", text
    yield "examples/cluster.toml", (REPO / "examples" / "cluster.toml").read_text()
    yield "examples/postgres.toml", (REPO / "examples" / "postgres.toml").read_text()


def as_cluster(data: dict[str, Any]) -> dict[str, Any]:
    """A whole configuration with a secret this test has; a snippet inside a minimal cluster."""
    if "cluster" in data:
        c = {k: v for k, v in data["cluster"].items() if k != "secret_file"}
        return {**data, "cluster": {**c, "secret": SECRET}}
    resources = data["hierarchies"]["resources"]
    return {**BASE, "hierarchies": [{"name": "h", "nodes": ["n1", "n2"], "resources": resources}]}


CLUSTER_EXAMPLES = [(w, t) for w, t in examples() if w not in NOT_CLUSTER]


def test_every_toml_block_is_accounted_for() -> None:
    found = dict(examples())
    assert set(NOT_CLUSTER) <= set(found), "a skipped example is gone: update NOT_CLUSTER"
    for where, text in CLUSTER_EXAMPLES:
        data = tomllib.loads(text)
        assert "cluster" in data or "hierarchies" in data, f"{where}: what is this example?"


def environment_only(problem: str) -> bool:
    """A problem this machine causes, not the example: a fence agent not installed here."""
    m = re.search(r"agent (\S+) not found", problem)
    return (
        bool(m)
        and shutil.which(m.group(1), path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None
    )


@pytest.mark.parametrize(("where", "text"), CLUSTER_EXAMPLES, ids=[w for w, _ in CLUSTER_EXAMPLES])
def test_example_validates(where: str, text: str) -> None:
    cfg = parse(as_cluster(tomllib.loads(text)))
    problems = [p for p in validate(cfg) if not environment_only(p)]
    assert problems == [], f"{where}:\n  " + "\n  ".join(problems)


def test_validate_catches_what_start_would_refuse() -> None:
    """The old docs/cluster.md example, and a few more mistakes: all named in one pass."""
    snippet = """
[[hierarchies.resources]]
name = "ip"
kind = "ip"
params = { address = "198.51.100.100/24", interface = "eth0" }
[[hierarchies.resources]]
name = "app"
kind = "process"
params = { command = "sleep 1", grace = "soon" }
[[hierarchies.resources]]
name = "vol"
kind = "volume"
params = { url = "iscsi://198.51.100.10/iqn.2026-11.io.ophiura:disk/0", aptpl = "maybe" }
"""
    problems = validate(parse(as_cluster(tomllib.loads(snippet))))
    text = "\n".join(problems)
    assert "resource ip (ip): required parameter 'ip' is missing" in text, text
    assert "resource ip (ip): required parameter 'nic' is missing" in text, text
    assert "unknown parameter(s) 'address', 'interface'" in text, text
    assert "resource app (process): parameter 'grace' is not a number: 'soon'" in text, text
    assert "resource vol (volume): parameter 'aptpl' is not a boolean" in text, text
    assert len(problems) == 5, text


def resources() -> Iterator[tuple[str, Resource]]:
    for where, text in CLUSTER_EXAMPLES:
        cfg = parse(as_cluster(tomllib.loads(text)))
        for h in cfg.hierarchies.values():
            for name, spec in h.resources.items():
                yield f"{where}:{h.name}/{name}", spec.resource


RESOURCES = list(resources())
ADDRESS_KINDS = ("ip", "ocf:heartbeat:IPaddr2")


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    with namespace("ex") as ns:
        yield ns


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize(("where", "res"), RESOURCES, ids=[w for w, _ in RESOURCES])
def test_example_starts(
    where: str, res: Resource, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Files a node gets at install time (examples/README.md): the secret and the HE's file.
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    installed = {
        "/etc/ophiura/secret": str(secret),
        "/etc/ophiura/he.toml": str(REPO / "examples" / "he.toml"),
        "/etc/ophiura/he-postgres.toml": str(REPO / "examples" / "he-postgres.toml"),
    }
    res = Resource(res.name, res.kind, {k: installed.get(v, v) for k, v in res.params.items()})
    res = Resource(
        res.name, res.kind, {k: v.replace("{node}", "n1") for k, v in res.params.items()}
    )
    agent = (
        agent_for(res.kind)
        if res.kind != "ocf:heartbeat:apache" or shutil.which("apache2")
        else None
    )
    if res.kind in ADDRESS_KINDS:
        ns = request.getfixturevalue("netns")
        nic = res.params["nic"]
        # a veth pair inside the namespace (no dummy module on every kernel); both ends up
        subprocess.run(
            ["ip", "-n", ns, "link", "add", nic, "type", "veth", "peer", "name", "peer0"],
            check=True,
        )
        for dev in (nic, "peer0"):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        live = Resource(
            res.name,
            res.kind,
            {**res.params, "netns": ns, "arp_count": "1"}
            if res.kind == "ip"
            else {**res.params, "netns": ns},
        )
        assert agent is not None

        async def cycle() -> list[tuple[str, OcfCode, str]]:
            """start, monitor, (addresses), stop, monitor; the background arping drained."""
            from ophiura.cluster.agents.ip import drain_background

            steps = []
            out = await agent.start(live, 30)
            steps.append(("start", out.code, out.reason))
            try:
                steps.append(("monitor", (await agent.monitor(live, 10)).code, ""))
                shown = subprocess.run(
                    ["ip", "-n", ns, "addr", "show", nic], capture_output=True, text=True
                ).stdout
                steps.append(("address", OcfCode.SUCCESS, shown))
            finally:
                steps.append(("stop", (await agent.stop(live, 30)).code, ""))
                steps.append(("monitor", (await agent.monitor(live, 10)).code, ""))
                await drain_background()
            return steps

        steps = run(cycle())
        codes = [(name, code) for name, code, _ in steps]
        assert codes == [
            ("start", OcfCode.SUCCESS),
            ("monitor", OcfCode.SUCCESS),
            ("address", OcfCode.SUCCESS),
            ("stop", OcfCode.SUCCESS),
            ("monitor", OcfCode.NOT_RUNNING),
        ], f"{where}: {steps}"
        assert res.params["ip"] in steps[2][2], steps[2][2]
        return
    if agent is None:
        pytest.skip(f"{where}: {res.kind} needs apache2, not installed here")
    out = run(agent.validate(res, 30))
    assert out.code != OcfCode.ERR_CONFIGURED, f"{where}: {out}"
    if out.code == OcfCode.ERR_INSTALLED:
        pytest.skip(f"{where}: not installed here: {out.reason or out.output}")
    assert out.ok, f"{where}: {out}"
