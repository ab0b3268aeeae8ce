"""STONITH through Debian's fence-agents, run unchanged (`fencing.py`).

fence_dummy (type=file: the node's "power" is a status file) and fence_heuristics_ping (pings on
loopback here; `test_multihost_fence_agents.py` pings real lab addresses) are real agents from
the `fence-agents` package that need no hardware. Skips, saying why, when they are not installed
(`make tools` installs them as root).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ophiura.cluster import fencing
from ophiura.cluster.config import parse
from ophiura.cluster.validation import validate

from .kit import config_dict
from .netns import missing_tools


@pytest.fixture(autouse=True)
def agents() -> None:
    why = missing_tools(fence_dummy="fence-agents", ping="iputils-ping")
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)


def cfg(devices: list[dict[str, object]], levels: list[list[str]]):  # type: ignore[no-untyped-def]
    d = config_dict()
    d["fencing"] = {
        "devices": devices,
        "levels": [{"node": "n1", "level": i, "devices": lv} for i, lv in enumerate(levels, 1)],
    }
    return parse(d)


BROKEN = {
    "name": "broken",
    "agent": "fence_dummy",
    "params": {"type": "fail", "power_timeout": "1"},
}
PING_LO = {
    "ping_targets": "127.0.0.1",
    "ping_count": "1",
    "ping_good_count": "1",
    "ping_timeout": "1",
}


def power(path: Path, state: str = "on") -> Path:
    path.write_text(state)  # fence_dummy reads it verbatim: no newline
    return path


async def test_metadata_is_read_and_plug_sent_only_where_the_agent_has_one() -> None:
    dummy = await fencing.agent_parameters("fence_dummy")
    assert dummy is not None and "status_file" in dummy and not {"plug", "port"} & dummy
    ipmi = await fencing.agent_parameters(shutil.which("fence_ipmilan") or "fence_ipmilan")
    assert ipmi is not None and "plug" in ipmi and "ipaddr" in ipmi
    assert await fencing.agent_parameters("/nonexistent/fence_x") is None


def test_validate_checks_devices_against_their_metadata() -> None:
    c = cfg(
        [
            {"name": "ok", "agent": "fence_dummy", "params": {"status_file": "/tmp/x"}},
            {"name": "typo", "agent": "fence_dummy", "params": {"statusfile": "/tmp/x"}},
            {"name": "gone", "agent": "fence_nonexistent_agent"},
        ],
        [["ok", "typo", "gone"]],
    )
    problems = validate(c)
    assert "fence device typo: fence_dummy has no parameter 'statusfile'" in problems
    assert any(
        p.startswith("fence device gone: agent fence_nonexistent_agent not found") for p in problems
    )
    assert not any("device ok" in p for p in problems), problems


async def test_levels_in_order_devices_in_order_with_reasons(tmp_path: Path) -> None:
    """Level 1: a device that fails (fence_dummy's failure mode: the power never goes off), then
    a power device that must therefore not run. Level 2: a ping heuristic that passes, then the
    power device."""
    ipmi, pdu = power(tmp_path / "ipmi"), power(tmp_path / "pdu")
    c = cfg(
        [
            BROKEN,
            {"name": "ipmi", "agent": "fence_dummy", "params": {"status_file": str(ipmi)}},
            {"name": "lo-ping", "agent": "fence_heuristics_ping", "params": PING_LO},
            {"name": "pdu", "agent": "fence_dummy", "params": {"status_file": str(pdu)}},
        ],
        [["broken", "ipmi"], ["lo-ping", "pdu"]],
    )
    r = await fencing.fence(c, "n1")
    assert r.ok, r.detail
    assert ipmi.read_text() == "on"  # level 1 stopped at its failing device
    assert pdu.read_text() == "off"  # level 2 powered n1 off
    level1, level2 = r.detail.split(" | ")
    assert level1.startswith("level 1: broken: exit 1"), level1
    assert "Timed out waiting to power OFF" in level1
    assert "ipmi: skipped (an earlier device of this level failed)" in level1
    assert (
        level2
        == "level 2: lo-ping: exit 0: Success: Powered OFF; pdu: exit 0: Success: Powered OFF"
    )
    assert "Parse error" not in r.detail  # no plug= sent to agents that have no ports


async def test_every_level_failing_says_why(tmp_path: Path) -> None:
    c = cfg([BROKEN], [["broken"]])
    r = await fencing.fence(c, "n1")
    assert not r.ok and r.detail.startswith("level 1: broken: exit 1"), r.detail
    r = await fencing.fence(c, "n2")
    assert not r.ok and r.detail == "no fencing levels configured"
