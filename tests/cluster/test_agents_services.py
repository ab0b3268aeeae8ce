"""Service agents against real processes: process (supervised), command, LSB, systemd."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.agents.command import CommandAgent
from ophiura.cluster.agents.lsb import LsbAgent, lsb_status_code
from ophiura.cluster.agents.process import ProcessAgent, read_pidfile
from ophiura.cluster.agents.systemd import ACTIVE_STATES, SystemdAgent, unit_name


def _alive(pid: int) -> bool:
    try:
        stat_ = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_[stat_.rfind(")") + 2] not in "ZX"


def _exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ---- process ---------------------------------------------------------------------------------
async def test_process_start_monitor_stop(tmp_path: Path) -> None:
    agent = ProcessAgent(tmp_path)
    res = Resource("svc", "process", {"command": "sleep 300", "grace": "2"})
    assert (await agent.validate(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.start(res, 5)).ok
    rec = read_pidfile(agent.pidfile(res))
    assert rec is not None and _alive(rec.pid)
    assert os.getpgid(rec.pid) == rec.pid, "the process leads its own group"
    assert (await agent.start(res, 5)).reason.startswith("already running")
    assert (await agent.monitor(res, 5)).ok
    out = await agent.stop(res, 5)
    assert out.ok and "SIGTERM" in out.reason
    assert not _alive(rec.pid) and not agent.pidfile(res).exists()
    assert (await agent.stop(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING


async def test_process_crash_is_a_failure_with_its_status(tmp_path: Path) -> None:
    agent = ProcessAgent(tmp_path)
    res = Resource("svc", "process", {"command": "sh -c 'sleep 0.5; exit 3'", "start_wait": "0"})
    assert (await agent.start(res, 5)).ok
    await asyncio.sleep(1.0)
    out = await agent.monitor(res, 5)
    assert out.code == OcfCode.ERR_GENERIC and "exit status 3" in out.reason
    assert (await agent.stop(res, 5)).ok


async def test_process_that_dies_at_once_fails_start(tmp_path: Path) -> None:
    agent = ProcessAgent(tmp_path)
    res = Resource("bad", "process", {"command": "sh -c 'echo boom; exit 2'", "start_wait": "0.5"})
    out = await agent.start(res, 5)
    assert out.code == OcfCode.ERR_GENERIC and "status 2" in out.reason and "boom" in out.output
    out = await agent.start(Resource("x", "process", {"command": "/no/such/program"}), 5)
    assert out.code == OcfCode.ERR_INSTALLED


async def test_process_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    agent = ProcessAgent(tmp_path)
    script = _exe(
        tmp_path / "stubborn.sh", "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.1; done\n"
    )
    res = Resource("stubborn", "process", {"command": str(script), "grace": "0.5"})
    assert (await agent.start(res, 5)).ok
    rec = read_pidfile(agent.pidfile(res))
    assert rec is not None
    t0 = time.monotonic()
    out = await agent.stop(res, 5)
    assert out.ok and "SIGKILL" in out.reason and time.monotonic() - t0 < 3
    assert not _alive(rec.pid)


async def test_process_check_command_and_survives_a_new_agent(tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    flag.touch()
    res = Resource("svc", "process", {"command": "sleep 300", "check": f"test -e {flag}"})
    agent = ProcessAgent(tmp_path)
    assert (await agent.start(res, 5)).ok
    assert (await agent.monitor(res, 5)).ok
    flag.unlink()
    out = await agent.monitor(res, 5)
    assert out.code == OcfCode.ERR_GENERIC and "check" in out.reason
    # a restarted cluster daemon (a new agent) finds the process by its pidfile
    fresh = ProcessAgent(tmp_path)
    flag.touch()
    assert (await fresh.monitor(res, 5)).ok
    assert (await fresh.stop(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING


async def test_process_pid_reuse_is_not_mistaken_for_ours(tmp_path: Path) -> None:
    agent = ProcessAgent(tmp_path)
    res = Resource("svc", "process", {"command": "sleep 300"})
    # a pidfile naming a live process with another start time (as after PID reuse)
    agent.pidfile(res).write_text(f"{os.getpid()} 1\n")
    out = await agent.monitor(res, 5)
    assert out.code == OcfCode.ERR_GENERIC and "gone" in out.reason
    assert (await agent.stop(res, 5)).ok  # and we do not signal it
    assert _alive(os.getpid())


# ---- command ---------------------------------------------------------------------------------
async def test_command_agent_runs_a_real_service(tmp_path: Path) -> None:
    pidfile = tmp_path / "srv.pid"
    params = {
        "start": f"{sys.executable} -c 'import time; time.sleep(300)' >/dev/null 2>&1 & "
        f"echo $! > {pidfile}",
        "stop": f"[ -f {pidfile} ] && kill $(cat {pidfile}); rm -f {pidfile}; exit 0",
        # PID 1 here reaps no orphans: a killed daemon stays a zombie, which kill -0 accepts
        "monitor": f"[ -f {pidfile} ] || exit 7; "
        f"grep -qs '^State:.*Z' /proc/$(cat {pidfile})/status && exit 1; "
        f"kill -0 $(cat {pidfile}) || exit 1",
    }
    agent = CommandAgent()
    res = Resource("srv", "command", params)
    assert (await agent.validate(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    t0 = time.monotonic()
    assert (await agent.start(res, 5)).ok and time.monotonic() - t0 < 2
    assert (await agent.monitor(res, 5)).ok
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert (await agent.monitor(res, 5)).code == OcfCode.ERR_GENERIC
    assert (await agent.stop(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING


async def test_command_codes_env_and_validation(tmp_path: Path) -> None:
    agent = CommandAgent()
    res = Resource(
        "c",
        "command",
        {
            "start": "exit 3",
            "stop": "exit 7",
            "monitor": '[ "$OCF_RESKEY_x" = 1 ] && [ "$OPHIURA_RESOURCE" = c ] && exit 3',
            "x": "1",
            "codes": "lsb",
        },
    )
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING  # LSB status 3
    assert (await agent.start(res, 5)).code == OcfCode.ERR_UNIMPLEMENTED
    assert (await agent.stop(res, 5)).ok
    plain = Resource(
        "p", "command", {"start": "true", "stop": "true", "monitor": "exit 7", "codes": "plain"}
    )
    assert (await agent.monitor(plain, 5)).code == OcfCode.ERR_GENERIC
    missing = Resource("m", "command", {"start": "true"})
    out = await agent.validate(missing, 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'stop'" in out.reason
    hang = Resource("h", "command", {"start": "sleep 300", "stop": "true", "monitor": "true"})
    out = await agent.start(hang, 0.3)
    assert out.timed_out


# ---- LSB -----------------------------------------------------------------------------------
INIT = """#!/bin/sh
PIDFILE={pidfile}
case "$1" in
start) [ -f $PIDFILE ] && kill -0 $(cat $PIDFILE) 2>/dev/null && exit 0
       sleep 300 >/dev/null 2>&1 & echo $! > $PIDFILE; exit 0;;
stop) [ -f $PIDFILE ] && kill $(cat $PIDFILE) 2>/dev/null; rm -f $PIDFILE; exit 0;;
status) [ -f $PIDFILE ] || exit 3
        grep -qs '^State:.*Z' /proc/$(cat $PIDFILE)/status && exit 1  # PID 1 reaps no orphans
        kill -0 $(cat $PIDFILE) 2>/dev/null && exit 0; exit 1;;
*) exit 3;;
esac
"""


async def test_lsb_init_script(tmp_path: Path) -> None:
    initd = tmp_path / "init.d"
    initd.mkdir()
    pidfile = tmp_path / "daemon.pid"
    _exe(initd / "demo", INIT.format(pidfile=pidfile))
    agent = LsbAgent(str(initd))
    res = Resource("demo", "lsb:demo")
    assert (await agent.validate(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.start(res, 5)).ok
    assert (await agent.monitor(res, 5)).ok
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    await asyncio.sleep(0.2)
    out = await agent.monitor(res, 5)
    assert out.code == OcfCode.ERR_GENERIC  # LSB 1: dead, pid file left: a failure
    assert (await agent.stop(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.validate(Resource("x", "lsb:absent"), 5)).code == OcfCode.ERR_INSTALLED
    assert [lsb_status_code(rc) for rc in range(6)] == [
        OcfCode.SUCCESS,
        OcfCode.ERR_GENERIC,
        OcfCode.ERR_GENERIC,
        OcfCode.NOT_RUNNING,
        OcfCode.ERR_GENERIC,
        OcfCode.ERR_GENERIC,
    ]


# ---- systemd ---------------------------------------------------------------------------------
FAKE_SYSTEMCTL = """#!/bin/sh
# a stand-in for systemctl: unit state in a file, to test the agent's reading of it
S={state}
cmd=$1; shift
[ "$cmd" = show ] && {{ [ "$4" = demo.service ] && echo loaded || echo not-found; exit 0; }}
unit=$1
[ "$unit" = demo.service ] || {{ echo "Unit $unit not loaded." >&2; exit 5; }}
case "$cmd" in
start) [ -f $S.broken ] && {{ echo failed > $S; exit 1; }}; echo active > $S;;
stop) echo inactive > $S;;
reset-failed) [ "$(cat $S)" = failed ] && echo inactive > $S; exit 0;;
is-active) st=$(cat $S 2>/dev/null || echo inactive); echo $st; [ $st = active ] && exit 0; exit 3;;
esac
"""


async def test_systemd_agent_reads_systemctl(tmp_path: Path) -> None:
    state = tmp_path / "state"
    fake = _exe(tmp_path / "systemctl", FAKE_SYSTEMCTL.format(state=state))
    booted = tmp_path / "run-systemd"
    booted.mkdir()
    agent = SystemdAgent(str(fake), str(booted))
    res = Resource("demo", "systemd:demo")
    assert unit_name("systemd:demo") == "demo.service"
    assert unit_name("systemd:x.socket") == "x.socket"
    assert (await agent.validate(res, 5)).ok
    assert (await agent.validate(Resource("n", "systemd:nope"), 5)).code == OcfCode.ERR_INSTALLED
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.start(res, 5)).ok
    assert (await agent.monitor(res, 5)).ok
    state.write_text("failed\n")
    out = await agent.monitor(res, 5)
    assert out.code == OcfCode.ERR_GENERIC and "failed" in out.reason
    assert (await agent.stop(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.stop(Resource("n", "systemd:nope"), 5)).ok  # not loaded = stopped
    (tmp_path / "state.broken").touch()
    assert (await agent.start(res, 5)).code == OcfCode.ERR_GENERIC
    assert ACTIVE_STATES["activating"] == OcfCode.ERR_GENERIC


async def test_systemd_not_pid1_is_reported(tmp_path: Path) -> None:
    agent = SystemdAgent(run_dir=str(tmp_path / "absent"))
    out = await agent.start(Resource("d", "systemd:demo"), 5)
    assert out.code == OcfCode.ERR_INSTALLED and "PID 1" in out.reason


async def test_real_systemd_unit() -> None:
    if not os.path.isdir("/run/systemd/system"):
        reason = "systemd is not PID 1 on this machine: real units cannot run"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    agent = SystemdAgent()
    res = Resource("t", "systemd:ophiura-agent-test-nonexistent")
    assert (await agent.validate(res, 10)).code == OcfCode.ERR_INSTALLED
    assert (await agent.stop(res, 10)).ok
