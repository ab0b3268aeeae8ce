"""`attach`: make a volume exported by the hierarchy's HE a local block device, and detach it.

The replicated volume (`replicated-volume`, the HE) serves the volume over NBD (and iSCSI); a
database or a file server needs a block device under a filesystem. This agent is the step
between them in a hierarchy [replicated-volume -> attach -> fs -> ...]. It publishes the device
it produced as a symlink, `link` (default `/run/ophiura/attach/<resource>`), which the `fs`
resource above names as its `device`: the path is fixed by the configuration, whatever
/dev/loopN or /dev/nbdN the kernel handed out on this node this time.

Params: `address` (required: the NBD (or iSCSI) server, normally the HE on this node),
`port` (default 10809, 3260 for iSCSI), `export` (NBD export name: the HE's volume name),
`method` (`auto` (default), `nbdfuse`, `nbd`, `iscsi`), `iqn` and `lun` (iSCSI target and LUN),
`nbd_device` (kernel NBD: /dev/nbdN, default the first free one), `connections` (NBD
connections, default the client's), `link`, `direct_io` (nbdfuse: the loop device does direct
I/O, default yes), `force` (stop takes the device away from whatever holds it), `grace`
(seconds between SIGTERM and SIGKILL of those holders, default 5), `check_offset` (byte
offset of a 4 KiB block reserved for the depth-2 monitor: never a block a filesystem uses).

Methods (`auto`: the kernel NBD client where the kernel has it, else the fallback):
- `nbd`: the kernel's NBD client (`/sys/module/nbd`; Debian package `nbd-client`):
  `nbd-client ADDRESS PORT /dev/nbdN -name EXPORT -block-size 4096 -timeout 30` (netlink where
  the kernel and nbd-client have it; I/O fails after 30 s without the server instead of
  hanging); detach `nbd-client -d /dev/nbdN`; connected = `/sys/block/nbdN/pid`.
- `iscsi`: the kernel's iSCSI initiator (`/sys/module/iscsi_tcp`; package `open-iscsi`):
  `iscsiadm -m discovery -t sendtargets -p ADDRESS:PORT`, `iscsiadm -m node -T IQN -p
  ADDRESS:PORT --login`; the device is `/dev/disk/by-path/ip-ADDRESS:PORT-iscsi-IQN-lun-LUN`;
  detach `iscsiadm -m node -T IQN -p ADDRESS:PORT --logout`.
- `nbdfuse` (the fallback, for kernels without either; package `nbdfuse` (Debian 12:
  `libnbd-bin`), `/dev/fuse`, loop devices): `nbdfuse DIR/volume nbd://ADDRESS:PORT/EXPORT`
  exposes the export as a file on a FUSE mount (run by the shared `process` agent: pidfile,
  own process group), then `losetup --find --show --direct-io=on DIR/volume` makes that file
  a block device. Every flush the filesystem sends becomes an fsync of the file, which
  nbdfuse sends as NBD FLUSH. nbdfuse's manual warns that loop-mounting its file is slow and
  can deadlock: writeback through a page cache that the FUSE daemon needs memory to drain.
  In direct-I/O mode (`direct_io`, default yes) the loop device keeps no pages of the file, so
  there is nothing of it to write back; the cost is measured in docs/cluster.md.

- start: already attached -> SUCCESS; else attach by the method, publish `link`, read a block.
- stop: refuse while the device is busy (mounted, held by dm/md, opened exclusively, in any
  mount namespace) unless `force` or the executor's forced stop, naming what holds it (mount
  point, holders, processes); with force the processes using those mounts get SIGTERM, then
  SIGKILL after `grace`, the mounts are unmounted (never lazily). Then flush (BLKFLSBUF +
  fsync: the kernel's buffers, then NBD FLUSH through the whole stack), detach, remove `link`.
  Only the device this resource attached is ever touched (`_ours`), never one a stale link
  names.
- monitor: NOT_RUNNING when nothing is attached (no link, no helper). Depth 0: the device
  answers a 4 KiB O_DIRECT read (in a child process: a hung device hangs the child, not us);
  depth >= 2: also a read/modify/write/read-back of the reserved block at `check_offset`
  (`disk_watchdog.rmw_once`, the seed's disk watchdog).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shlex
import shutil
import signal
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ophiura.cluster.agents import fs
from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.disk_watchdog import WatchdogIOError, WdSpec, rmw_once
from ophiura.cluster.agents.params import (
    ParamError,
    Params,
    config_error,
    done,
    safe_name,
)
from ophiura.cluster.agents.process import ProcessAgent, read_pidfile
from ophiura.cluster.agents.process_runner import run_process

METHODS = ("auto", "nbdfuse", "nbd", "iscsi")
LINK_DIR = "/run/ophiura/attach"
BLKFLSBUF = 0x1261  # <linux/fs.h>: write back and drop a block device's buffers
POLL = 0.02
CHECK_BLOCK = 4096


class AttachError(Exception):
    """One attach or detach step failed; the message says which and why."""


def kernel_has(module: str) -> bool:
    """The kernel has `module` loaded or built in (it then shows in /sys/module)."""
    return Path("/sys/module", module).exists()


def pick_method(requested: str) -> tuple[str, str]:
    """(method, why not the kernel's) for `requested`; raises AttachError when it cannot run."""
    if requested == "auto":
        if kernel_has("nbd") and shutil.which("nbd-client"):
            return "nbd", ""
        why = (
            "no nbd module in this kernel (/sys/module/nbd)"
            if not kernel_has("nbd")
            else "nbd-client is not installed (apt-get install nbd-client)"
        )
        requested = "nbdfuse"
    else:
        why = ""
    if requested == "nbdfuse":
        if not shutil.which("nbdfuse"):
            raise AttachError(
                "nbdfuse is not installed (apt-get install nbdfuse; Debian 12: libnbd-bin)"
            )
        if not os.path.exists("/dev/fuse"):
            raise AttachError("no /dev/fuse on this node (modprobe fuse)")
        if not shutil.which("losetup"):
            raise AttachError("losetup is not installed (apt-get install mount)")
    elif requested == "nbd":
        if not kernel_has("nbd"):
            raise AttachError("the kernel has no nbd module (modprobe nbd; /sys/module/nbd)")
        if not shutil.which("nbd-client"):
            raise AttachError("nbd-client is not installed (apt-get install nbd-client)")
    elif requested == "iscsi":
        if not kernel_has("iscsi_tcp"):
            raise AttachError("the kernel has no iscsi_tcp module (modprobe iscsi_tcp)")
        if not shutil.which("iscsiadm"):
            raise AttachError("iscsiadm is not installed (apt-get install open-iscsi)")
    return requested, why


@dataclass(frozen=True)
class AttachSpec:
    name: str
    method: str  # as configured (auto resolves at start)
    address: str
    port: int
    export: str
    iqn: str | None
    lun: int
    nbd_device: str | None
    connections: int | None
    link: str
    force: bool
    grace: float
    direct_io: bool
    check_offset: int | None

    @classmethod
    def of(cls, resource: Resource) -> AttachSpec:
        p = Params(resource)
        method = p.choice("method", METHODS, "auto")
        address = p.text("address")
        port = p.integer("port", 3260 if method == "iscsi" else 10809, minimum=1)
        if port > 65535:
            raise ParamError(resource.name, "port", f"must be <= 65535, not {port}")
        iqn = p.text("iqn") if method == "iscsi" else p.opt("iqn")
        conns = p.integer("connections", 0, minimum=0)
        offset = p.integer("check_offset", -1, minimum=-1)
        if offset >= 0 and offset % CHECK_BLOCK:
            raise ParamError(resource.name, "check_offset", f"must be a multiple of {CHECK_BLOCK}")
        link = p.text("link", f"{LINK_DIR}/{safe_name(resource.name)}")
        if not os.path.isabs(link):
            raise ParamError(resource.name, "link", f"must be an absolute path, not {link!r}")
        return cls(
            name=resource.name,
            method=method,
            address=address,
            port=port,
            export=p.text("export", ""),
            iqn=iqn,
            lun=p.integer("lun", 0),
            nbd_device=p.opt("nbd_device"),
            connections=conns or None,
            link=link,
            force=p.flag("force", False),
            direct_io=p.flag("direct_io", True),
            grace=p.number("grace", 5.0),
            check_offset=offset if offset >= 0 else None,
        )

    @property
    def uri(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"nbd://{host}:{self.port}/{urllib.parse.quote(self.export, safe='')}"

    @property
    def portal(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


# --------------------------------------------------------------------------- the device


def link_target(link: str) -> str | None:
    """The block device `link` points to, if it points to one."""
    try:
        st = os.stat(link)
    except OSError:
        return None
    return os.path.realpath(link) if stat.S_ISBLK(st.st_mode) else None


def publish(link: str, device: str) -> None:
    """Point `link` at `device`, atomically (a new symlink renamed over the old one)."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    tmp = f"{link}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(device, tmp)
    os.replace(tmp, link)


def loops_backed_by(path: str) -> list[str]:
    """The loop devices whose backing file is `path` (read from sysfs: works even when the
    FUSE mount under `path` is dead and stat() of it fails)."""
    found = []
    for loop in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (loop / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)") == path:
            found.append(f"/dev/{loop.name}")
    return found


def flush(device: str) -> None:
    """Write back the device's buffers (BLKFLSBUF) and fsync it: for a loop device the kernel
    turns that into an fsync of the backing file, for NBD into NBD_CMD_FLUSH."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # needs CAP_SYS_ADMIN; fsync below still flushes
            fcntl.ioctl(fd, BLKFLSBUF)
        os.fsync(fd)
    finally:
        os.close(fd)


def busy(device: str) -> bool:
    """Mounted, part of a dm/md device or opened exclusively, in any mount namespace: an
    exclusive open (O_EXCL on a block device) is refused with EBUSY."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise
    os.close(fd)
    return False


def _all_mounts(rdev: int) -> list[tuple[str, int | None]]:
    """Where device `rdev` is mounted: (mount point, pid of a process in that mount namespace,
    None for ours). Every mount namespace is looked at once, through one of its processes."""
    seen: set[int] = set()
    out: list[tuple[str, int | None]] = []
    own = os.stat("/proc/self/ns/mnt").st_ino
    for m in fs.mounts():
        if m.dev == rdev:
            out.append((m.target, None))
    seen.add(own)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.stat(f"{entry.path}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            for m in fs.mounts(f"{entry.path}/mountinfo"):
                if m.dev == rdev:
                    out.append((m.target, int(entry.name)))
        except (OSError, ValueError):
            continue
    return out


def openers(rdev: int) -> dict[int, str]:
    """Processes with block device `rdev` itself open: {pid: the fd}."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            for fd in os.scandir(f"{entry.path}/fd"):
                with contextlib.suppress(OSError):
                    st = os.stat(fd.path)
                    if stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev:
                        found[int(entry.name)] = f"fd {fd.name}"
                        break
        except OSError:
            continue
    return found


def what_holds(device: str) -> str:
    """For people: what keeps `device` busy (mounts, stacked devices, processes)."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError as exc:
        return f"{device}: {exc.strerror}"
    parts = []
    for target, pid in _all_mounts(rdev):
        parts.append(f"mounted on {target}" + (f" (mount namespace of pid {pid})" if pid else ""))
    sysname = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    with contextlib.suppress(OSError):
        stacked = sorted(p.name for p in (sysname / "holders").iterdir())
        if stacked:
            parts.append("held by " + ", ".join(stacked))
    procs = openers(rdev)
    if procs:
        parts.append(
            "open in " + ", ".join(f"{pid} ({fs._comm(pid)}: {how})" for pid, how in procs.items())
        )
    return "; ".join(parts) or "opened exclusively by something not found in /proc"


async def _signal_users(rdev: int, target: str, sig: int, grace: float) -> str:
    """Send `sig` to every process using the filesystem mounted on `target` (ours) and to
    processes with the device open; wait up to `grace` for them to go. What was done."""
    users = {**fs.holders(rdev), **openers(rdev)}
    if not users:
        return ""
    for pid in users:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and await asyncio.to_thread(fs.holders, rdev):
        await asyncio.sleep(0.1)
    name = signal.Signals(sig).name
    return f"{name} to " + ", ".join(f"{pid} ({fs._comm(pid)}: {h})" for pid, h in users.items())


async def take_away(device: str, grace: float, timeout: float) -> list[str]:
    """Forced stop: stop the users of `device`'s mounts (in our mount namespace), unmount
    them; returns what was done. Mounts in other namespaces are named, not touched."""
    notes: list[str] = []
    rdev = os.stat(device).st_rdev
    t0 = time.monotonic()
    for target, pid in _all_mounts(rdev):
        if pid is not None:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            note = await _signal_users(rdev, target, sig, grace)
            if note:
                notes.append(note)
            res = await run_process(["umount", target], max(1.0, timeout - (time.monotonic() - t0)))
            if res.returncode == 0:
                notes.append(f"unmounted {target}")
                break
    for pid, how in openers(rdev).items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            notes.append(f"SIGKILL to {pid} ({fs._comm(pid)}: {how})")
    return notes


async def read_check(device: str, timeout: float) -> tuple[bool, str]:
    """One 4 KiB O_DIRECT read at offset 0, in a child process (a hung device hangs it)."""
    argv = ["dd", f"if={device}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct",
            "status=none"]  # fmt: skip
    res = await run_process(argv, timeout)
    if res.timed_out:
        return False, f"a read of {device} hung for {timeout:g}s"
    if res.returncode != 0:
        return False, f"a read of {device} failed: {(res.output or res.error).strip()[-200:]}"
    return True, ""


# --------------------------------------------------------------------------- the agent


class AttachAgent:
    """Keeps nothing in memory: what is attached is found on the node (link, pidfiles, sysfs),
    so a restarted daemon adopts an attached device."""

    def __init__(self, processes: ProcessAgent | None = None) -> None:
        self.processes = processes or ProcessAgent()

    # -- nbdfuse helpers ----------------------------------------------------------------------

    def workdir(self, spec: AttachSpec) -> Path:
        return self.processes.dir() / f"attach-{safe_name(spec.name)}"

    def fuse_dir(self, spec: AttachSpec) -> Path:
        return self.workdir(spec) / "fuse"

    def fuse_file(self, spec: AttachSpec) -> str:
        return str(self.fuse_dir(spec) / "volume")

    def helper(self, spec: AttachSpec) -> Resource:
        """The `process` resource that runs nbdfuse for this attachment."""
        work = self.workdir(spec)
        cmd = ["nbdfuse", "-P", str(work / "ready.pid")]
        if spec.connections:
            cmd += ["-C", str(spec.connections)]
        cmd += [self.fuse_file(spec), spec.uri]
        params = {"command": shlex.join(cmd), "start_wait": "0", "grace": "3",
                  "log": str(work / "nbdfuse.log")}  # fmt: skip
        return Resource(name=f"{spec.name}.nbdfuse", kind="process", params=params)

    def _helper_running(self, spec: AttachSpec) -> bool:
        rec = read_pidfile(self.processes.pidfile(self.helper(spec)))
        return rec is not None and rec.alive()

    async def _start_nbdfuse(self, spec: AttachSpec, timeout: float) -> str:
        t0 = time.monotonic()
        work, fdir, ffile = self.workdir(spec), self.fuse_dir(spec), self.fuse_file(spec)
        ready = work / "ready.pid"
        if not (self._helper_running(spec) and ready.exists()):
            # a helper that died, or one a timed-out start left half-way: start afresh
            await self._clean_nbdfuse(spec, timeout)
            fdir.mkdir(parents=True, exist_ok=True)
            ready.unlink(missing_ok=True)
            out = await self.processes.start(self.helper(spec), timeout)
            if not out.ok:
                raise AttachError(f"nbdfuse did not start: {out.reason}")
            while not ready.exists():  # nbdfuse writes its -P file once it serves the file
                if not self._helper_running(spec):
                    tail = (work / "nbdfuse.log").read_text(errors="replace").strip()[-300:]
                    raise AttachError(f"nbdfuse exited before serving {spec.uri}: {tail}")
                if time.monotonic() - t0 > timeout:
                    raise AttachError(f"nbdfuse not serving {spec.uri} within {timeout:g}s")
                await asyncio.sleep(POLL)
        loops = loops_backed_by(ffile)
        if loops:
            return loops[0]
        left = max(1.0, timeout - (time.monotonic() - t0))
        dio = "on" if spec.direct_io else "off"
        res = await run_process(["losetup", "--find", "--show", f"--direct-io={dio}", ffile], left)
        device = res.output.strip()
        if res.returncode != 0 or not device.startswith("/dev/"):
            raise AttachError(f"losetup {ffile} failed: {(res.output or res.error).strip()}")
        return device

    async def _clean_nbdfuse(self, spec: AttachSpec, timeout: float) -> list[str]:
        """Detach loops on our FUSE file, unmount the FUSE dir, stop nbdfuse; what was done."""
        notes = []
        ffile, fdir = self.fuse_file(spec), str(self.fuse_dir(spec))
        for loop in loops_backed_by(ffile):
            res = await run_process(["losetup", "--detach", loop], timeout)
            if res.returncode != 0:
                raise AttachError(f"losetup --detach {loop}: {res.output.strip()}")
            notes.append(f"detached {loop}")
        if self._helper_running(spec):  # the last NBD FLUSH, then unmount: nbdfuse exits
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(_fsync_path, ffile), timeout)
        if fs.mount_at(fdir) is not None:
            res = await run_process(["umount", fdir], timeout)
            if res.returncode != 0 and fs.mount_at(fdir) is not None:
                raise AttachError(f"umount {fdir}: {res.output.strip()}")
        rec = read_pidfile(self.processes.pidfile(self.helper(spec)))
        if rec is not None:
            deadline = time.monotonic() + min(3.0, timeout)
            while rec.alive() and time.monotonic() < deadline:
                await asyncio.sleep(POLL)
            out = await self.processes.stop(self.helper(spec), max(1.0, timeout / 2))
            if not out.ok:
                raise AttachError(f"nbdfuse would not stop: {out.reason}")
        return notes

    def _ours(self, spec: AttachSpec) -> str | None:
        """The device this resource attached on this node, never another one a stale link
        may name: a loop device backed by our nbdfuse file, a connected /dev/nbdN the link
        names, or the iSCSI LUN's by-path device."""
        if spec.method in ("auto", "nbdfuse"):
            loops = loops_backed_by(self.fuse_file(spec))
            if loops:
                return loops[0]
        if spec.method in ("auto", "nbd"):
            target = link_target(spec.link)
            if target and target.startswith("/dev/nbd") and _nbd_connected(target):
                return target
        if spec.method == "iscsi" and os.path.exists(self.iscsi_path(spec)):
            return os.path.realpath(self.iscsi_path(spec))
        return None

    # -- kernel NBD and iSCSI -----------------------------------------------------------------

    async def _start_nbd(self, spec: AttachSpec, timeout: float) -> str:
        current = link_target(spec.link)
        if current and _nbd_connected(current):
            return current
        device = spec.nbd_device or _free_nbd()
        argv = ["nbd-client", spec.address, str(spec.port), device, "-name", spec.export,
                "-block-size", "4096", "-timeout", "30"]  # fmt: skip
        if spec.connections:
            argv += ["-connections", str(spec.connections)]
        res = await run_process(argv, timeout)
        if res.returncode != 0 or not _nbd_connected(device):
            raise AttachError(f"{shlex.join(argv)}: {(res.output or res.error).strip()[-300:]}")
        return device

    def iscsi_path(self, spec: AttachSpec) -> str:
        return f"/dev/disk/by-path/ip-{spec.portal}-iscsi-{spec.iqn}-lun-{spec.lun}"

    async def _start_iscsi(self, spec: AttachSpec, timeout: float) -> str:
        t0 = time.monotonic()
        path = self.iscsi_path(spec)
        if not os.path.exists(path):
            disc = ["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", spec.portal]
            login = ["iscsiadm", "-m", "node", "-T", str(spec.iqn), "-p", spec.portal, "--login"]
            for argv in (disc, login):
                res = await run_process(argv, max(1.0, timeout - (time.monotonic() - t0)))
                if res.returncode != 0:
                    raise AttachError(f"{shlex.join(argv)}: {res.output.strip()[-300:]}")
        while not os.path.exists(path):  # udev creates the by-path link after the login
            if time.monotonic() - t0 > timeout:
                raise AttachError(f"{path} did not appear within {timeout:g}s of the login")
            await asyncio.sleep(POLL)
        return os.path.realpath(path)

    # -- the agent ----------------------------------------------------------------------------

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = AttachSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        try:
            method, why = pick_method(spec.method)
        except AttachError as exc:
            return done(OcfCode.ERR_INSTALLED, t0, str(exc))
        try:
            if method == "nbdfuse":
                device = await self._start_nbdfuse(spec, timeout)
            elif method == "nbd":
                device = await self._start_nbd(spec, timeout)
            else:
                device = await self._start_iscsi(spec, timeout)
            publish(spec.link, device)
        except (AttachError, OSError) as exc:
            return done(OcfCode.ERR_GENERIC, t0, str(exc))
        left = max(1.0, timeout - (time.monotonic() - t0))
        ok, reason = await read_check(spec.link, left)
        if not ok:
            return done(OcfCode.ERR_GENERIC, t0, reason)
        note = f"{spec.link} -> {device} by {method}" + (f" ({why})" if why else "")
        return done(OcfCode.SUCCESS, t0, note)

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        return await self._stop(resource, timeout, force=False)

    async def force_stop(self, resource: Resource, timeout: float) -> Outcome:
        """The executor's second try after a failed stop: take the device away."""
        return await self._stop(resource, timeout, force=True)

    async def _stop(self, resource: Resource, timeout: float, force: bool) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = AttachSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        force = force or spec.force
        notes: list[str] = []
        device = self._ours(spec)

        def left() -> float:
            return max(1.0, timeout - (time.monotonic() - t0))

        try:
            if device is not None and os.path.exists(device):
                if await asyncio.to_thread(busy, device):
                    held = await asyncio.to_thread(what_holds, device)
                    if not force:
                        return done(
                            OcfCode.ERR_GENERIC,
                            t0,
                            f"refusing to detach {device}: {held} (force=yes takes it away)",
                        )
                    notes.append(f"{device} was busy: {held}")
                    notes += await take_away(device, spec.grace, left())
                    if await asyncio.to_thread(busy, device):
                        held = await asyncio.to_thread(what_holds, device)
                        return done(
                            OcfCode.ERR_GENERIC,
                            t0,
                            f"cannot detach {device}: still {held}",
                            "; ".join(notes),
                        )
                try:
                    await asyncio.wait_for(asyncio.to_thread(flush, device), left())
                except (OSError, TimeoutError) as exc:
                    # Detach anyway: the volume keeps what the HE acknowledged; the next
                    # owner's fsck replays the journal. Say so.
                    notes.append(f"flush of {device} failed ({exc}): unflushed writes are lost")
                if spec.method == "nbd" or device.startswith("/dev/nbd"):
                    res = await run_process(["nbd-client", "-d", device], left())
                    if res.returncode != 0:
                        raise AttachError(f"nbd-client -d {device}: {res.output.strip()}")
                    notes.append(f"disconnected {device}")
            if spec.method == "iscsi":
                argv = ["iscsiadm", "-m", "node", "-T", str(spec.iqn), "-p", spec.portal,
                        "--logout"]  # fmt: skip
                if os.path.exists(self.iscsi_path(spec)):
                    res = await run_process(argv, left())
                    if res.returncode != 0:
                        raise AttachError(f"{shlex.join(argv)}: {res.output.strip()}")
                    notes.append("logged out")
            elif spec.method != "nbd":
                notes += await self._clean_nbdfuse(spec, left())
        except (AttachError, OSError) as exc:
            return done(OcfCode.ERR_GENERIC, t0, str(exc), "; ".join(notes))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.link)
        return done(OcfCode.SUCCESS, t0, "; ".join(notes))

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = AttachSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        device = link_target(spec.link)
        rec = read_pidfile(self.processes.pidfile(self.helper(spec)))
        helper = rec is not None and rec.alive()
        loops = loops_backed_by(self.fuse_file(spec))
        if device is None:
            if helper or loops:
                return done(OcfCode.ERR_GENERIC, t0, f"attached, but {spec.link} is gone")
            return done(OcfCode.NOT_RUNNING, t0)
        if device.startswith("/dev/loop"):  # nbdfuse: the helper lives, our loop serves it
            if device not in loops:
                if helper:
                    return done(OcfCode.ERR_GENERIC, t0, f"{device} no longer serves {spec.uri}")
                return done(OcfCode.NOT_RUNNING, t0)  # a stale link (the node restarted)
            if not helper:
                return done(OcfCode.ERR_GENERIC, t0, "nbdfuse is gone")
        elif device.startswith("/dev/nbd") and not _nbd_connected(device):
            return done(OcfCode.ERR_GENERIC, t0, f"{device} is disconnected")
        ok, reason = await read_check(spec.link, timeout)
        if not ok:
            return done(OcfCode.ERR_GENERIC, t0, reason)
        if resource.monitor_depth >= 2:
            if spec.check_offset is None:
                return done(
                    OcfCode.ERR_CONFIGURED, t0, "monitor depth >= 2 needs param check_offset"
                )
            wd = WdSpec(spec.link, spec.check_offset, CHECK_BLOCK, resource.monitor_interval,
                        timeout, "auto", os.uname().nodename)  # fmt: skip
            left = max(0.2, timeout - (time.monotonic() - t0))
            try:
                await asyncio.wait_for(asyncio.to_thread(rmw_once, wd, 0), left)
            except TimeoutError:
                return done(OcfCode.ERR_GENERIC, t0, f"read/modify/write of {device} hung")
            except WatchdogIOError as exc:
                return done(OcfCode.ERR_GENERIC, t0, str(exc))
        return done(OcfCode.SUCCESS, t0)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = AttachSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        if resource.monitor_depth >= 2 and spec.check_offset is None:
            return done(OcfCode.ERR_CONFIGURED, t0, "monitor depth >= 2 needs param check_offset")
        try:
            pick_method(spec.method)
        except AttachError as exc:
            return done(OcfCode.ERR_INSTALLED, t0, str(exc))
        return done(OcfCode.SUCCESS, t0)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _nbd_connected(device: str) -> bool:
    return Path("/sys/block", os.path.basename(device), "pid").exists()


def _free_nbd() -> str:
    for dev in sorted(Path("/sys/block").glob("nbd*"), key=lambda p: int(p.name[3:] or 0)):
        if not (dev / "pid").exists():
            return f"/dev/{dev.name}"
    raise AttachError("no free /dev/nbdN (modprobe nbd nbds_max=16)")
