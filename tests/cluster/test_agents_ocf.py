"""OCF agents as they are: Debian's stock Dummy and IPaddr2 run unchanged (issue 4, Must show 4),
plus a test agent that records its environment and answers any exit code."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.agents.ocf import OcfAgent, installed_ocf_kinds
from ophiura.cluster.agents.registry import agent_for
from ophiura.testkit.netns import add_address, namespace, veth

STOCK = Path("/usr/lib/ocf/resource.d/heartbeat")
IS_ROOT = os.geteuid() == 0


def _ensure_resource_agents() -> str | None:
    """Why the stock agents cannot be used (None when they can); installs them as root."""
    if (STOCK / "Dummy").exists() and (STOCK / "IPaddr2").exists():
        return None
    if not IS_ROOT:
        return "resource-agents is not installed and we are not root to apt-get install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "resource-agents"],
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    if not (STOCK / "Dummy").exists():
        return "apt-get install resource-agents failed"
    return None


@pytest.fixture(scope="module")
def stock() -> None:
    why = _ensure_resource_agents()
    if why:
        print(f"SKIP stock OCF agents: {why}")
        pytest.skip(why)


PROBE = r"""#!/bin/sh
# test OCF agent: records the environment of each action, exits as told
env | grep -E '^(OCF_|HA_RSCTMP|HA_VARRUN)' | sort > "$OCF_RESKEY_envdir/$1.env"
case "$1" in
meta-data) cat <<'XML'
<?xml version="1.0"?>
<resource-agent name="Probe" version="1.0">
<parameters>
<parameter name="envdir" required="1"><content type="string"/></parameter>
<parameter name="rc" required="0"><content type="integer" default="0"/></parameter>
<parameter name="needed" required="1"><content type="string"/></parameter>
</parameters>
<actions><action name="start" timeout="20s"/><action name="stop" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s"/><action name="validate-all" timeout="5s"/>
<action name="meta-data" timeout="5s"/></actions>
</resource-agent>
XML
exit 0;;
monitor) [ -n "$OCF_RESKEY_hang" ] && sleep 300
  echo "monitor says hi"; exit "${OCF_RESKEY_rc:-0}";;
validate-all) [ "$OCF_RESKEY_needed" = bad ] && {
  echo "ocf-exit-reason:needed is bad" >&2; exit 6; }; exit 0;;
*) exit "${OCF_RESKEY_rc:-0}";;
esac
"""


@pytest.fixture
def probe_root(tmp_path: Path) -> Path:
    root = tmp_path / "ocf"
    agent = root / "resource.d" / "test" / "Probe"
    agent.parent.mkdir(parents=True)
    agent.write_text(PROBE)
    agent.chmod(agent.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (tmp_path / "env").mkdir()
    return root


def _env(tmp_path: Path, action: str) -> dict[str, str]:
    lines = (tmp_path / "env" / f"{action}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


async def test_environment_is_pacemakers(
    tmp_path: Path, probe_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCF_TRACE_RA", "1")
    monkeypatch.setenv("OCF_RESKEY_leak", "from-our-env")
    agent = OcfAgent(probe_root, tmp_path / "rsctmp")
    res = Resource(
        "db-1",
        "ocf:test:Probe",
        {"envdir": str(tmp_path / "env"), "needed": "x"},
        monitor_depth=10,
        monitor_interval=3.0,
    )
    assert (await agent.start(res, 5)).ok
    env = _env(tmp_path, "start")
    assert env["OCF_ROOT"] == str(probe_root)
    assert env["OCF_RESOURCE_INSTANCE"] == "db-1"
    assert env["OCF_RESOURCE_TYPE"] == "Probe" and env["OCF_RESOURCE_PROVIDER"] == "test"
    assert env["OCF_RA_VERSION_MAJOR"] == "1" and env["OCF_RA_VERSION_MINOR"] == "1"
    assert env["OCF_RESKEY_needed"] == "x" and env["OCF_RESKEY_CRM_meta_timeout"] == "5000"
    assert "OCF_TRACE_RA" not in env and "OCF_RESKEY_leak" not in env
    assert "OCF_CHECK_LEVEL" not in env
    assert Path(env["HA_RSCTMP"]).is_dir() and os.access(env["HA_RSCTMP"], os.W_OK)
    assert Path(env["HA_VARRUN"]).is_dir()
    out = await agent.monitor(res, 5)
    assert out.ok and "monitor says hi" in out.output
    env = _env(tmp_path, "monitor")
    assert env["OCF_CHECK_LEVEL"] == "10" and env["OCF_RESKEY_CRM_meta_interval"] == "3000"


@pytest.mark.parametrize("rc", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 190, 191, 12, 255])
async def test_exit_codes_map_to_ocf(tmp_path: Path, probe_root: Path, rc: int) -> None:
    agent = OcfAgent(probe_root, tmp_path / "rsctmp")
    res = Resource("r", "ocf:test:Probe", {"envdir": str(tmp_path / "env"), "rc": str(rc)})
    expected = OcfCode(rc) if rc in {c.value for c in OcfCode} else OcfCode.ERR_GENERIC
    assert (await agent.monitor(res, 5)).code == expected
    stop = await agent.stop(res, 5)
    assert stop.code == (OcfCode.SUCCESS if rc == 7 else expected)  # stop of stopped is success


async def test_validate_uses_metadata_then_validate_all(tmp_path: Path, probe_root: Path) -> None:
    agent = OcfAgent(probe_root, tmp_path / "rsctmp")
    envdir = str(tmp_path / "env")
    out = await agent.validate(Resource("r", "ocf:test:Probe", {"envdir": envdir}), 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "needed" in out.reason
    assert not (tmp_path / "env" / "validate-all.env").exists()  # refused before running it
    out = await agent.validate(
        Resource("r", "ocf:test:Probe", {"envdir": envdir, "needed": "bad", "zzz": "1"}), 5
    )
    assert out.code == OcfCode.ERR_CONFIGURED and out.reason.endswith("needed is bad")
    assert "unknown to Probe: zzz" in out.output
    out = await agent.validate(
        Resource("r", "ocf:test:Probe", {"envdir": envdir, "needed": "ok"}), 5
    )
    assert out.ok
    md = await agent.metadata("ocf:test:Probe")
    assert md.required == ["envdir", "needed"] and md.timeout("validate-all") == 5
    out = await agent.validate(Resource("r", "ocf:test:Missing", {}), 5)
    assert out.code == OcfCode.ERR_INSTALLED


async def test_hanging_agent_is_killed_at_its_timeout(tmp_path: Path, probe_root: Path) -> None:
    agent = OcfAgent(probe_root, tmp_path / "rsctmp")
    res = Resource("r", "ocf:test:Probe", {"envdir": str(tmp_path / "env"), "hang": "1"})
    t0 = time.monotonic()
    out = await agent.monitor(res, 0.5)
    assert out.timed_out and not out.ok and time.monotonic() - t0 < 4
    await asyncio.sleep(0.1)
    ps = subprocess.run(["pgrep", "-f", str(probe_root)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "the hung agent or its sleep survived"


# ---- stock agents ----------------------------------------------------------------------------
async def test_stock_dummy_runs_unchanged(stock: None, tmp_path: Path) -> None:
    agent = OcfAgent(rsctmp=tmp_path / "rsctmp")
    res = Resource("dummy-1", "ocf:heartbeat:Dummy")
    assert (await agent.validate(res, 10)).ok
    out = await agent.monitor(res, 10)
    assert out.code == OcfCode.NOT_RUNNING and "state file" in out.reason
    assert (await agent.start(res, 10)).ok
    assert (tmp_path / "rsctmp" / "Dummy-dummy-1.state").exists()
    assert (await agent.monitor(res, 10)).ok
    assert (await agent.stop(res, 10)).ok
    assert (await agent.monitor(res, 10)).code == OcfCode.NOT_RUNNING
    assert (await agent.stop(res, 10)).ok  # idempotent
    md = await agent.metadata("ocf:heartbeat:Dummy")
    assert "state" in md.parameters and md.timeout("start") == 20
    # the registry's shared OCF agent runs it too (state in the default HA_RSCTMP)
    shared = agent_for("ocf:heartbeat:Dummy")
    res2 = Resource(
        f"dummy-reg-{secrets.token_hex(3)}",
        "ocf:heartbeat:Dummy",
        {"state": str(tmp_path / "reg.state")},
    )
    assert (await shared.start(res2, 10)).ok and (await shared.monitor(res2, 10)).ok
    assert (await shared.stop(res2, 10)).ok
    assert "ocf:heartbeat:Dummy" in installed_ocf_kinds()


@pytest.fixture
def netns() -> Iterator[str]:
    if not IS_ROOT:
        print("SKIP: network namespaces need root")
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 missing")
    with namespace("ocf") as name:
        veth(name, "d0", "d1")  # no dummy module here: a veth pair, both ends inside
        add_address(name, "d0", "198.51.100.1/24")
        yield name


def _addrs(ns: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, "-o", "addr", "show", "dev", "d0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def test_stock_ipaddr2_runs_unchanged_in_a_namespace(
    stock: None, netns: str, tmp_path: Path
) -> None:
    agent = OcfAgent(rsctmp=tmp_path / "rsctmp")
    res = Resource(
        "vip",
        "ocf:heartbeat:IPaddr2",
        {"ip": "198.51.100.50", "cidr_netmask": "24", "nic": "d0", "netns": netns},
    )
    assert (await agent.validate(res, 20)).ok
    assert (await agent.monitor(res, 20)).code == OcfCode.NOT_RUNNING
    out = await agent.start(res, 20)
    assert out.ok, out
    assert "198.51.100.50/24" in _addrs(netns)
    assert (await agent.monitor(res, 20)).ok
    out = await agent.stop(res, 20)
    assert out.ok, out
    assert "198.51.100.50" not in _addrs(netns)
    assert (await agent.monitor(res, 20)).code == OcfCode.NOT_RUNNING
    bad = Resource("vip2", "ocf:heartbeat:IPaddr2", {"cidr_netmask": "24", "netns": netns})
    assert (await agent.validate(bad, 20)).code == OcfCode.ERR_CONFIGURED
