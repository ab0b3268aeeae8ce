"""agents/schema.py declares what each built-in agent reads; validate checks params against it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ophiura.cluster.agents import schema
from ophiura.cluster.agents.ocf_metadata import check_params
from ophiura.cluster.agents.params import NETNS

AGENTS = Path(schema.__file__).parent
READ = re.compile(r'\bp\.(text|opt|number|integer|flag|choice|argv)\(\s*"(\w+)"(\s*\))?')
MODULES = {
    "command": "command.py",
    "ip": "ip.py",
    "fs": "fs.py",
    "process": "process.py",
    "volume": "volume.py",
    "replicated-volume": "replicated_volume.py",
    "disk-watchdog": "disk_watchdog.py",
    "attach": "attach.py",
}


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_every_parameter_an_agent_reads_is_declared(kind: str) -> None:
    source = (AGENTS / MODULES[kind]).read_text()
    declared = schema.BUILTIN[kind].parameters
    reads = READ.findall(source)
    assert reads, f"{MODULES[kind]}: no Params reads found (the pattern is stale)"
    for _method, name, _ in reads:
        assert name in declared, f"{kind}: reads param {name!r}, not declared in schema.py"
    if "p.netns" in source or "netns_prefix(p.netns" in source:
        assert NETNS in declared


def test_built_in_kinds_all_declared() -> None:
    from ophiura.cluster.agents.registry import BUILTIN_KINDS

    assert set(BUILTIN_KINDS) == set(schema.BUILTIN)


def test_check_params_names_every_problem() -> None:
    md = schema.BUILTIN["ip"]
    out = check_params(md, {"ip": "198.51.100.9", "arp_count": "two", "nick": "eth0"}, {NETNS})
    assert out == [
        "required parameter 'nic' is missing (interface to add it to, e.g. eth0)",
        "unknown parameter(s) 'nick' (known: arp_count, arping, cidr_netmask, ip, label, "
        "netns, nic)",
        "parameter 'arp_count' is not an integer: 'two'",
    ]
    assert check_params(md, {"ip": "{node}", "nic": "eth0", "cidr_netmask": "{node}"}, set()) == []
    fs = schema.BUILTIN["fs"]
    assert check_params(fs, {"device": "/d", "directory": "/m", "fsck": "maybe"}, set()) == [
        "parameter 'fsck' is 'maybe', not one of auto, yes, no"
    ]
    cmd = schema.BUILTIN["command"]  # open: any extra param reaches the program
    assert check_params(cmd, {"start": "a", "stop": "b", "monitor": "c", "port": "80"}, set()) == []


def test_ocf_meta_data_is_what_ocf_params_are_checked_against() -> None:
    if not Path("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").exists():
        pytest.skip("resource-agents not installed")
    md = schema.metadata_for("ocf:heartbeat:IPaddr2")
    assert md is not None and "ip" in md.required
    out = check_params(md, {"address": "198.51.100.9"}, {NETNS})
    assert out[0].startswith("required parameter 'ip' is missing")
    assert out[1].startswith("unknown parameter(s) 'address'")
    assert schema.metadata_for("ocf:heartbeat:NoSuchAgent") is None
    assert schema.metadata_for("python:tests.cluster.fake_agent:FakeAgent") is None
