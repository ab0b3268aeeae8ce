"""`fs`: a filesystem mounted from the configuration (linux-ha-shared-storage §7), built in.

Params: `device` (required: block device or image file; an image is loop-mounted), `directory`
(required: the mount point, created if missing), `fstype` (default: let mount/fsck probe),
`options` (mount -o), `fsck` (`auto` (default): `fsck -p` before mounting; `no` skips it),
`grace` (seconds between SIGTERM and SIGKILL of processes holding the mount on stop, default 5),
`mkfs` (a filesystem type: make one when the device holds none, e.g. a fresh replicated volume
attached by `attach`), `mkfs_options` (extra mkfs arguments, e.g. `-E nodiscard`).

- start: device present (else ERR_INSTALLED: it is not visible on this node); with `mkfs`, when
  `blkid -p` finds no filesystem (its exit status 2 — never on any other answer, so an I/O error
  cannot get a volume reformatted) `mkfs.TYPE -q [mkfs_options] DEVICE`; `fsck -p` (preen:
  replays an ext3/4 journal and fixes what is safe; exit 0-3 is fine, 4 and up -> ERR_GENERIC,
  not mounted: a filesystem with errors left is not served), `mount`. Already mounted there ->
  SUCCESS; something else mounted there -> ERR_GENERIC.
- stop: `umount`; when it is busy, every process holding the mount (cwd, root, exe, open files,
  mapped files on that device, found by walking /proc like `fuser -m`) gets SIGTERM, then SIGKILL
  after `grace`, and umount is retried. Never a lazy unmount: a process left writing to shared
  storage after we said "stopped" is the split brain this resource exists to prevent. The reason
  names the processes that would not die.
- monitor: mounted (/proc/self/mountinfo) and a read of the directory in a child process (a hung
  device hangs the child, not us: the timeout then fails the monitor); depth >= 10 writes a check
  file with O_SYNC and reads it back with O_DIRECT (from the disk, not the page cache).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import ParamError, Params, config_error, done
from ophiura.cluster.agents.process_runner import run_process

CHECK_FILE = ".ophiura-fs-check"
_UMOUNT_BUSY = 32


@dataclass(frozen=True)
class Mount:
    major: int
    minor: int
    target: str
    fstype: str
    source: str

    @property
    def dev(self) -> int:
        return os.makedev(self.major, self.minor)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    result = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            a, b = left.split(), right.split()
            major, minor = (int(x) for x in a[2].split(":"))
            result.append(Mount(major, minor, _unescape(a[4]), b[0], _unescape(b[1])))
    return result


def mount_at(directory: str) -> Mount | None:
    """The topmost mount on `directory`, if any."""
    real = os.path.realpath(directory)
    found = None
    for m in mounts():
        if m.target == real:
            found = m
    return found


def backing_dev(device: str) -> int | None:
    """The device number a mount of `device` would show (block device or loop-backed image)."""
    try:
        st = os.stat(device)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return st.st_rdev
    real = os.path.realpath(device)
    for loop in Path("/sys/block").glob("loop*"):
        try:
            backing = (loop / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing == real:
            major, minor = (loop / "dev").read_text().strip().split(":")
            return os.makedev(int(major), int(minor))
    return None


def holders(dev: int) -> dict[int, str]:
    """Processes using the filesystem on device `dev`: {pid: how}, like `fuser -m`."""
    me = os.getpid()
    found: dict[int, str] = {}
    major, minor = os.major(dev), os.minor(dev)
    mapkey = f"{major:02x}:{minor:02x}"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid, base = int(entry.name), entry.path
        for what in ("cwd", "root", "exe"):
            try:
                if os.stat(f"{base}/{what}").st_dev == dev:
                    found[pid] = what
                    break
            except OSError:
                continue
        if pid in found:
            continue
        try:
            for fd in os.scandir(f"{base}/fd"):
                try:
                    if os.stat(fd.path).st_dev == dev:
                        found[pid] = f"fd {fd.name} -> {os.readlink(fd.path)}"
                        break
                except OSError:
                    continue
        except OSError:
            continue
        if pid in found:
            continue
        try:
            with open(f"{base}/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) > 4 and parts[3] == mapkey and parts[4] != "0":
                        found[pid] = "mapped " + (parts[5].strip() if len(parts) > 5 else "")
                        break
        except OSError:
            continue
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class FsSpec:
    def __init__(self, resource: Resource) -> None:
        p = Params(resource)
        self.device = p.text("device")
        self.directory = p.text("directory")
        self.fstype = p.opt("fstype")
        self.options = p.opt("options")
        self.fsck = p.choice("fsck", ("auto", "yes", "no"), "auto")
        self.grace = p.number("grace", 5.0)
        self.mkfs = p.opt("mkfs")
        self.mkfs_options = p.text("mkfs_options", "")
        if self.mkfs is not None and not self.mkfs.replace("_", "").isalnum():
            raise ParamError(resource.name, "mkfs", f"is not a filesystem type: {self.mkfs!r}")


class FsAgent:
    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = FsSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)

        def left() -> float:
            return max(0.5, timeout - (time.monotonic() - t0))

        if not os.path.exists(spec.device):
            return done(OcfCode.ERR_INSTALLED, t0, f"{spec.device} is not present on this node")
        current = mount_at(spec.directory)
        if current is not None:
            if current.dev == backing_dev(spec.device):
                return done(OcfCode.SUCCESS, t0, "already mounted")
            return done(
                OcfCode.ERR_GENERIC,
                t0,
                f"{spec.directory} already has {current.source} ({current.fstype}) mounted",
            )
        os.makedirs(spec.directory, exist_ok=True)
        output = note = ""
        if spec.mkfs:
            res = await run_process(["blkid", "-p", "-o", "value", "-s", "TYPE", spec.device],
                                    left())  # fmt: skip
            if res.returncode == 2:  # "no identifiable filesystem": blank, make one
                cmd = [f"mkfs.{spec.mkfs}", "-q", *shlex.split(spec.mkfs_options), spec.device]
                made = await run_process(cmd, left())
                output += made.output
                if made.returncode != 0:
                    return done(
                        OcfCode.ERR_GENERIC,
                        t0,
                        f"{shlex.join(cmd)} failed: {(made.output or made.error).strip()[-200:]}",
                        output,
                    )
                note = f"made {spec.mkfs} on the blank {spec.device} ({shlex.join(cmd)})"
            elif res.returncode != 0:
                return done(
                    OcfCode.ERR_GENERIC,
                    t0,
                    f"blkid -p {spec.device} exited {res.returncode}: cannot tell whether it "
                    f"holds a filesystem, not making one: {res.output.strip()[-200:]}",
                )
        if spec.fsck != "no":
            cmd = ["fsck", "-p", "-T"]
            if spec.fstype:
                cmd += ["-t", spec.fstype]
            res = await run_process([*cmd, spec.device], left())
            output += res.output
            if res.timed_out:
                return Outcome(
                    OcfCode.ERR_GENERIC, time.monotonic() - t0, output, True, "fsck timed out"
                )
            if res.returncode is None or res.returncode & ~3:
                return done(
                    OcfCode.ERR_GENERIC,
                    t0,
                    f"fsck -p {spec.device} exited {res.returncode}: errors left, not mounting",
                    output,
                )
        options = [o for o in (spec.options or "").split(",") if o]
        if os.path.isfile(spec.device) and "loop" not in options:
            options.append("loop")
        cmd = ["mount"]
        if spec.fstype:
            cmd += ["-t", spec.fstype]
        if options:
            cmd += ["-o", ",".join(options)]
        res = await run_process([*cmd, spec.device, spec.directory], left())
        output += res.output
        if res.timed_out or res.returncode != 0:
            return Outcome(
                OcfCode.ERR_GENERIC,
                time.monotonic() - t0,
                output,
                res.timed_out,
                f"mount {spec.device} {spec.directory} failed: {res.output.strip()[-200:]}",
            )
        return done(OcfCode.SUCCESS, t0, note, output)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = FsSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)

        def left() -> float:
            return max(0.2, timeout - (time.monotonic() - t0))

        m = mount_at(spec.directory)
        if m is None:
            return done(OcfCode.SUCCESS, t0)
        notes: list[str] = []
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                users = holders(m.dev)
                if users:
                    notes.append(
                        f"{signal.Signals(sig).name} to "
                        + ", ".join(f"{pid} ({_comm(pid)}: {how})" for pid, how in users.items())
                    )
                    for pid in users:
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            continue
                    await self._wait_released(m.dev, min(spec.grace, left()))
            res = await run_process(["umount", spec.directory], left())
            if res.returncode == 0 or mount_at(spec.directory) is None:
                return done(OcfCode.SUCCESS, t0, "; ".join(notes), res.output)
            if res.timed_out or time.monotonic() - t0 >= timeout:
                break
        users = holders(m.dev)
        who = ", ".join(f"{pid} ({_comm(pid)})" for pid in users) or "no process found"
        return Outcome(
            OcfCode.ERR_GENERIC,
            time.monotonic() - t0,
            "; ".join(notes),
            time.monotonic() - t0 >= timeout,
            f"cannot unmount {spec.directory}: still busy ({who})",
        )

    async def _wait_released(self, dev: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(holders, dev):
                return
            await asyncio.sleep(0.1)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = FsSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        m = mount_at(spec.directory)
        if m is None:
            return done(OcfCode.NOT_RUNNING, t0)
        token = ""
        if resource.monitor_depth >= 10:
            token = secrets.token_hex(8)
            path = os.path.join(spec.directory, CHECK_FILE)
            script = (
                'printf %s "$2" | dd of="$1" oflag=sync conv=fsync status=none && '
                '{ dd if="$1" iflag=direct bs=4096 status=none 2>/dev/null || cat "$1"; }'
            )
            argv = ["/bin/sh", "-c", script, "fs-check", path, token]
        else:
            argv = ["ls", "-A", "--", spec.directory]
        res = await run_process(argv, timeout)
        if res.timed_out:
            return Outcome(
                OcfCode.ERR_GENERIC,
                time.monotonic() - t0,
                res.output,
                True,
                f"I/O on {spec.directory} hung for {timeout:g}s",
            )
        if res.returncode != 0 or (resource.monitor_depth >= 10 and token not in res.output):
            return done(
                OcfCode.ERR_GENERIC,
                t0,
                f"I/O check on {spec.directory} failed: {res.output.strip()[-200:]}",
                res.output,
            )
        return done(OcfCode.SUCCESS, t0)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = FsSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        if not os.path.isabs(spec.directory):
            return done(OcfCode.ERR_CONFIGURED, t0, f"directory {spec.directory!r} is not absolute")
        return done(OcfCode.SUCCESS, t0)
