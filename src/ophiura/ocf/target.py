"""`ocf:ophiura:target`: `ophiura target` as a Pacemaker resource.

start spawns `ophiura target --backing ... --listen ...` (a daemon in its own session, pidfile
"PID STARTTIME" in `pidfile`, default `$HA_RSCTMP/ophiura-target-<instance>.pid`) and waits until
the iSCSI port accepts connections; stop is SIGTERM, then SIGKILL after `grace` (the cluster's
`process` agent). monitor: no pidfile -> NOT_RUNNING; process gone -> ERR_GENERIC; then the port
must accept a connection, and at OCF_CHECK_LEVEL >= 10 an iSCSI login to `iqn` and a TEST UNIT
READY on LUN 0 must succeed (the project's own initiator, so nothing else needs installing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from pathlib import Path

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import ParamError, Params, config_error, done, safe_name
from ophiura.cluster.agents.replicated_volume import ophiura_argv
from ophiura.ocf.runner import AgentInfo, Param
from ophiura.ocf.spawn import DaemonAgent
from ophiura.sizes import parse_size

DEFAULT_LISTEN = "127.0.0.1:3260"
DEFAULT_IQN = "iqn.2026-11.io.ophiura:disk"  # ophiura.target_daemon.DEFAULT_IQN
POLL = 0.05
UNIT_ATTENTION = 6

INFO = AgentInfo(
    name="target",
    shortdesc="ophiura SCSI-3 target over iSCSI",
    longdesc=(
        "Runs `ophiura target`: BACKING served as LUN 0 of an iSCSI target (optionally also over "
        "NBD), with SCSI-3 persistent reservations kept in state_dir. Monitor at depth 10 logs "
        "in and sends TEST UNIT READY."
    ),
    params=(
        Param("backing", "backing file or block device", required=True, unique=True),
        Param("size", "LUN size, e.g. 10G (default: the file's size)"),
        Param("listen", "iSCSI portal HOST:PORT", unique=True, default=DEFAULT_LISTEN),
        Param("iqn", "target name", default=DEFAULT_IQN),
        Param("state_dir", "where persistent reservations (APTPL) live (default BACKING.state/)"),
        Param("pidfile", "pidfile (default $HA_RSCTMP/ophiura-target-<instance>.pid)"),
        Param("thin", "thin provisioning: UNMAP punches holes", type="boolean", default="false"),
        Param("chap", "USER:SECRET required from initiators"),
        Param("mutual_chap", "USER:SECRET the target proves itself with"),
        Param("block_size", "logical block size, 512 or 4096", type="integer", default="512"),
        Param("nbd", "also serve over NBD on HOST:PORT"),
        Param("nbd_export", "NBD export name", default="disk"),
        Param("log", "file for the target's output (default next to the pidfile)"),
        Param("grace", "seconds between SIGTERM and SIGKILL on stop", type="integer", default="10"),
        Param("args", "extra `ophiura target` arguments"),
    ),
)


def _host_port(text: str, resource: str, name: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParamError(resource, name, f"is not HOST:PORT: {text!r}")
    return host.strip("[]"), int(port)


def _user_secret(text: str | None, resource: str, name: str) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, secret = text.partition(":")
    if not sep or not user or not secret:
        raise ParamError(resource, name, "is not USER:SECRET")
    return user, secret


class TargetSpec:
    """The resource's params, checked; the `ophiura target` command line they make."""

    def __init__(self, resource: Resource) -> None:
        p = Params(resource)
        name = resource.name
        self.backing = Path(p.text("backing"))
        self.size = p.opt("size")
        if self.size:
            try:
                parse_size(self.size)
            except ValueError as exc:
                raise ParamError(name, "size", str(exc)) from None
        self.listen_text = p.text("listen", DEFAULT_LISTEN)
        self.listen = _host_port(self.listen_text, name, "listen")
        self.iqn = p.text("iqn", DEFAULT_IQN)
        if not self.iqn.startswith(("iqn.", "eui.", "naa.")):
            raise ParamError(name, "iqn", f"is not an iSCSI name: {self.iqn!r}")
        self.state_dir = p.opt("state_dir")
        self.thin = p.flag("thin", False)
        self.chap = _user_secret(p.opt("chap"), name, "chap")
        self.mutual = _user_secret(p.opt("mutual_chap"), name, "mutual_chap")
        self.block_size = p.integer("block_size", 512)
        if self.block_size not in (512, 4096):
            raise ParamError(name, "block_size", f"must be 512 or 4096, not {self.block_size}")
        self.nbd = p.opt("nbd")
        if self.nbd:
            _host_port(self.nbd, name, "nbd")
        self.nbd_export = p.text("nbd_export", "disk")
        self.grace = p.number("grace", 10.0)
        self.args = p.argv("args") if p.opt("args") else []
        default_pid = f"ophiura-target-{safe_name(name)}.pid"
        self.pidfile = Path(p.opt("pidfile") or Path(_rsctmp()) / default_pid)
        self.log = p.opt("log") or str(self.pidfile.with_suffix(".log"))

    def argv(self) -> list[str]:
        cmd = [*ophiura_argv(), "target", "--backing", str(self.backing)]
        cmd += ["--listen", self.listen_text, "--iqn", self.iqn]
        cmd += ["--block-size", str(self.block_size)]
        if self.size:
            cmd += ["--size", self.size]
        if self.state_dir:
            cmd += ["--state-dir", self.state_dir]
        if self.thin:
            cmd.append("--thin")
        if self.chap:
            cmd += ["--chap", ":".join(self.chap)]
        if self.mutual:
            cmd += ["--mutual-chap", ":".join(self.mutual)]
        if self.nbd:
            cmd += ["--nbd", self.nbd, "--nbd-export", self.nbd_export]
        return cmd + self.args

    def process(self, resource: Resource) -> Resource:
        """The `process` resource (cluster agent vocabulary) that runs this target."""
        params = {"command": shlex.join(self.argv()), "grace": str(self.grace), "log": self.log}
        params["start_wait"] = "0"
        return Resource(name=resource.name, kind="process", params=params)


def _rsctmp() -> str:
    """HA_RSCTMP (Pacemaker sets it), else the cluster's own state dir."""
    from ophiura.cluster.agents.params import state_dir

    return os.environ.get("HA_RSCTMP") or str(state_dir())


async def port_answers(host: str, port: int, timeout: float) -> str | None:
    """None when HOST:PORT accepts a TCP connection, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"{host}:{port}: {exc or 'timed out'}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def login_tur(spec: TargetSpec, timeout: float) -> str | None:
    """None when an iSCSI login and TEST UNIT READY on LUN 0 succeed, else why not."""
    from ophiura.iscsi.initiator import IscsiError, IscsiInitiator

    host, port = spec.listen
    try:
        ini = await IscsiInitiator.connect(
            host,
            port,
            spec.iqn,
            "iqn.2026-11.io.ophiura:ocf-monitor",
            chap=spec.chap,
            mutual=spec.mutual,
            timeout=timeout,
        )
    except (IscsiError, OSError, TimeoutError) as exc:
        return f"iSCSI login to {spec.iqn} at {host}:{port}: {exc or 'timed out'}"
    try:
        for _ in range(3):  # a fresh I_T nexus may first report a unit attention
            r = await asyncio.wait_for(ini.test_unit_ready(0), timeout)
            if r.ok:
                return None
            if r.sense_key != UNIT_ATTENTION:
                return f"TEST UNIT READY: status {r.status:#x} sense key {r.sense_key}"
        return "TEST UNIT READY: unit attention did not clear"
    except (IscsiError, OSError, TimeoutError) as exc:
        return f"TEST UNIT READY: {exc or 'timed out'}"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ini.logout(), timeout)
        with contextlib.suppress(Exception):
            await ini.close()


class TargetAgent:
    """start/stop/monitor/validate for `ocf:ophiura:target`."""

    def _daemon(self, spec: TargetSpec) -> DaemonAgent:
        return DaemonAgent(pidfile=spec.pidfile)

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = TargetSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        problem = self._validate(spec)
        if problem is not None:
            return done(problem[0], t0, problem[1])
        daemon, proc = self._daemon(spec), spec.process(resource)
        out = await daemon.start(proc, timeout)
        if not out.ok:
            return out
        host, port = spec.listen
        while True:  # the target binds after opening the backing file: wait for the port
            gone = await daemon.monitor(proc, timeout)
            if gone.code != OcfCode.SUCCESS:
                return done(OcfCode.ERR_GENERIC, t0, f"target exited at start (log: {spec.log})")
            left = timeout - (time.monotonic() - t0)
            why = await port_answers(host, port, max(0.1, min(1.0, left)))
            if why is None:
                return done(OcfCode.SUCCESS, t0)
            if left <= 0:
                await daemon.stop(proc, max(1.0, spec.grace))
                return Outcome(
                    OcfCode.ERR_GENERIC, time.monotonic() - t0, reason=why, timed_out=True
                )
            await asyncio.sleep(POLL)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = TargetSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        return await self._daemon(spec).stop(spec.process(resource), timeout)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = TargetSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        out = await self._daemon(spec).monitor(spec.process(resource), timeout)
        if out.code != OcfCode.SUCCESS:
            return out
        left = max(0.2, timeout - (time.monotonic() - t0))
        why = await port_answers(*spec.listen, left)
        if why is None and resource.monitor_depth >= 10:
            why = await login_tur(spec, max(0.2, timeout - (time.monotonic() - t0)))
        if why is not None:
            return done(OcfCode.ERR_GENERIC, t0, why)
        return done(OcfCode.SUCCESS, t0)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = TargetSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        problem = self._validate(spec)
        if problem is not None:
            return done(problem[0], t0, problem[1])
        return done(OcfCode.SUCCESS, t0)

    @staticmethod
    def _validate(spec: TargetSpec) -> tuple[OcfCode, str] | None:
        """What the node lacks to run this target (not the params: TargetSpec checked those)."""
        if not spec.backing.exists() and not spec.backing.parent.is_dir():
            return OcfCode.ERR_INSTALLED, f"backing {spec.backing}: directory does not exist"
        if not spec.backing.exists() and not spec.size:
            return OcfCode.ERR_CONFIGURED, f"backing {spec.backing} does not exist and no size"
        return None
