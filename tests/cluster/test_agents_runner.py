"""process_runner (timeouts kill the group, output bounded), registry, OCF meta-data parsing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ophiura.cluster.agents.base import OcfCode, Outcome
from ophiura.cluster.agents.ocf_metadata import MetadataError, parse_duration, parse_metadata
from ophiura.cluster.agents.process_runner import (
    TailBuffer,
    exit_reason,
    run_action,
    run_process,
)
from ophiura.cluster.agents.registry import BUILTIN_KINDS, UnknownAgent, agent_for, known_kinds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] != "Z"


async def test_success_output_and_exit_codes() -> None:
    out = await run_action(["/bin/sh", "-c", "echo hello; echo oops >&2; exit 0"], 5)
    assert out.ok and "hello" in out.output and "oops" in out.output
    for rc, code in [
        (7, OcfCode.NOT_RUNNING),
        (6, OcfCode.ERR_CONFIGURED),
        (190, OcfCode.DEGRADED),
        (191, OcfCode.DEGRADED_PROMOTED),
        (42, OcfCode.ERR_GENERIC),
    ]:
        out = await run_action(["/bin/sh", "-c", f"exit {rc}"], 5)
        assert out.code == code and not out.timed_out, rc
        assert f"exit status {rc}" in out.reason


async def test_hanging_action_is_killed_at_its_timeout_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The action forks a child that ignores nothing special, then hangs itself.
    script = f"sleep 300 & echo $! > {pidfile}; echo started; sleep 300"
    t0 = time.monotonic()
    out = await run_action(["/bin/sh", "-c", script], 0.5, kill_grace=0.5)
    elapsed = time.monotonic() - t0
    assert out.timed_out and out.code == OcfCode.ERR_GENERIC and not out.ok
    assert "timed out" in out.reason and "started" in out.output
    assert elapsed < 2.5, elapsed
    child = int(pidfile.read_text())
    await asyncio.sleep(0.1)
    assert not _alive(child), "the action's child survived the timeout"


async def test_sigterm_ignored_gets_sigkill() -> None:
    t0 = time.monotonic()
    out = await run_action(["/bin/sh", "-c", "trap '' TERM; sleep 300"], 0.3, kill_grace=0.3)
    assert out.timed_out and time.monotonic() - t0 < 2.0


async def test_output_is_bounded_to_a_tail() -> None:
    script = (
        "i=0; while [ $i -lt 5000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    )
    res = await run_process(["/bin/sh", "-c", script], 10, output_limit=1000)
    assert res.returncode == 0
    assert "line-4999-" in res.output and "line-0-" not in res.output
    assert "bytes of output dropped" in res.output
    assert len(res.output) < 1100
    buf = TailBuffer(4)
    buf.feed(b"abcdef")
    assert buf.text().endswith("cdef") and buf.dropped == 2


async def test_daemon_holding_the_pipe_does_not_hang_the_action(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    t0 = time.monotonic()
    out = await run_action(["/bin/sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo ok"], 5)
    assert out.ok and "ok" in out.output
    assert time.monotonic() - t0 < 2.0
    daemon = int(pidfile.read_text())
    assert _alive(daemon), "a daemon left by a successful action must survive"
    os.kill(daemon, 9)
    await asyncio.sleep(0.3)  # its pipe closes; the discarding reader ends


async def test_missing_program_and_signals() -> None:
    out = await run_action(["/nonexistent/agent"], 5)
    assert out.code == OcfCode.ERR_INSTALLED and "not found" in out.reason
    out = await run_action(["/bin/sh", "-c", "kill -9 $$"], 5)
    assert out.code == OcfCode.ERR_GENERIC and "SIGKILL" in out.reason


async def test_cancelling_the_caller_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "p"
    task = asyncio.create_task(
        run_process(["/bin/sh", "-c", f"echo $$ > {pidfile}; sleep 300"], 60, kill_grace=0.5)
    )
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.02)
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert not _alive(pid)


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.005, 0.02])
async def test_cancel_at_any_moment_leaves_no_orphan(delay: float) -> None:
    marker = f"300.{os.getpid()}{int(delay * 1000)}"  # sleep takes fractions: a unique argv
    task = asyncio.create_task(
        run_process(["/bin/sh", "-c", f"sleep {marker} & sleep {marker}"], 60, kill_grace=0.5)
    )
    await asyncio.sleep(delay)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    pids = [int(p) for p in left.stdout.split()]
    assert not [p for p in pids if _alive(p)], f"orphans after a cancel at {delay}s"


async def test_environment_is_passed() -> None:
    out = await run_action(["/bin/sh", "-c", "echo $FOO"], 5, env={"FOO": "bar", "PATH": "/bin"})
    assert out.output.strip() == "bar"


def test_exit_reason_and_outcome_reason_default() -> None:
    assert exit_reason("x\nocf-exit-reason:first\nocf-exit-reason: second \n") == "second"
    assert Outcome(OcfCode.SUCCESS, 0.0).reason == ""


# ---- registry -----------------------------------------------------------------------------
def test_registry_builtins_are_singletons() -> None:
    for kind in BUILTIN_KINDS:
        agent = agent_for(kind)
        assert agent is agent_for(kind)
        for method in ("start", "stop", "monitor", "validate"):
            assert asyncio.iscoroutinefunction(getattr(agent, method)), (kind, method)
    assert agent_for("systemd:nginx") is agent_for("systemd:other.service")


def test_registry_unknown_kinds_are_named() -> None:
    for kind in ("nope", "ocf:heartbeat", "ocf:nobody:Nothing", "lsb:no-such-script", "systemd:"):
        with pytest.raises(UnknownAgent) as info:
            agent_for(kind)
        assert info.value.kind == kind and kind in str(info.value)


def test_known_kinds() -> None:
    kinds = known_kinds()
    assert kinds[: len(BUILTIN_KINDS)] == list(BUILTIN_KINDS)
    if Path("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists():
        assert "ocf:heartbeat:Dummy" in kinds
        assert agent_for("ocf:heartbeat:Dummy") is agent_for("ocf:heartbeat:IPaddr2")
    else:
        print("resource-agents not installed: ocf kinds not listed")


# ---- meta-data ----------------------------------------------------------------------------
META = """<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Thing" version="1.1">
<version>1.1</version>
<parameters>
 <parameter name="ip" unique="1" required="1"><shortdesc lang="en">the address</shortdesc>
  <content type="string"/></parameter>
 <parameter name="count" required="0"><content type="integer" default="3"/></parameter>
</parameters>
<actions>
 <action name="start" timeout="20s"/>
 <action name="monitor" timeout="500ms" interval="10s" depth="10"/>
 <action name="stop" timeout="2m"/>
 <action name="validate-all" timeout="20"/>
</actions>
</resource-agent>
"""


def test_metadata_parse() -> None:
    md = parse_metadata("some noise\n" + META)
    assert md.name == "Thing" and md.required == ["ip"]
    assert md.parameters["count"].default == "3" and md.parameters["count"].type == "integer"
    assert md.parameters["ip"].unique and md.parameters["ip"].shortdesc == "the address"
    assert md.timeout("start") == 20 and md.timeout("stop") == 120 and md.timeout("nope") is None
    mon = md.action("monitor")
    assert mon is not None and mon.timeout == 0.5 and mon.interval == 10 and mon.depth == 10
    assert md.missing({"count": "1"}) == ["ip"] and md.missing({"ip": "x"}) == []
    assert md.unknown({"ip": "x", "bogus": "1", "netns": "n"}, {"netns"}) == ["bogus"]
    assert parse_duration("1.5min") == 90 and parse_duration("junk") is None
    with pytest.raises(MetadataError):
        parse_metadata("not xml at all")
    with pytest.raises(MetadataError):
        parse_metadata("<resource-agent name='x'><parameters>")


def test_python_is_311() -> None:
    assert sys.version_info >= (3, 11)
