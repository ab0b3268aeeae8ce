"""`attach` against a real NBD export (`ophiura target --nbd` on 127.0.0.1): nbdfuse + a loop
device here (this kernel has neither nbd nor iscsi_tcp; those methods' tests skip saying so),
then `fs` on the device it produced. Root only (FUSE mounts, loop devices, mount)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster.agents.attach import (
    AttachAgent,
    AttachSpec,
    kernel_has,
    loops_backed_by,
    pick_method,
)
from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.agents.disk_watchdog import decode_counter
from ophiura.cluster.agents.fs import FsAgent, mount_at
from ophiura.cluster.agents.process import ProcessAgent
from ophiura.testkit.netns import missing_tools
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import Proc, spawn

SIZE = 64 << 20
REPO = Path(__file__).resolve().parents[2]


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("FUSE mounts and loop devices need root")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Path, int, Proc]]:
    """An NBD export `disk` of a 64 MiB file, on 127.0.0.1 (and LUN 0 of an iSCSI target on
    `proc.iscsi_port`)."""
    _need_root()
    port, iscsi_port = free_port(), free_port()
    backing = tmp_path / "lun.img"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:" + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "ophiura.cli", "target", "--backing", str(backing),
            "--size", str(SIZE), "--listen", f"127.0.0.1:{iscsi_port}",
            "--nbd", f"127.0.0.1:{port}"]  # fmt: skip
    proc = spawn(argv, "ophiura target", tmp_path / "target.log", env)
    try:
        proc.wait_port(port)
        proc.iscsi_port = iscsi_port  # type: ignore[attr-defined]
        yield backing, port, proc
    finally:
        proc.stop(5)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AttachAgent]:
    a = AttachAgent(ProcessAgent(tmp_path / "rsc"))
    yield a
    # whatever a failed test left attached: ours only (backed by files under tmp_path)
    for loop in loops_backed_by(str(tmp_path / "rsc" / "attach-vol" / "fuse" / "volume")):
        subprocess.run(["losetup", "-d", loop], check=False)
    fuse = tmp_path / "rsc" / "attach-vol" / "fuse"
    if mount_at(str(fuse)) is not None:
        subprocess.run(["umount", "-l", str(fuse)], check=False)


def _res(tmp_path: Path, port: int, depth: int = 0, **extra: str) -> Resource:
    params = {"address": "127.0.0.1", "port": str(port), "export": "disk",
              "link": str(tmp_path / "dev" / "vol"), "method": "nbdfuse", **extra}  # fmt: skip
    return Resource("vol", "attach", params, monitor_depth=depth)


async def test_nbdfuse_attach_monitor_detach(
    tmp_path: Path, target: tuple[Path, int, Proc], agent: AttachAgent
) -> None:
    backing, port, _ = target
    res = _res(tmp_path, port, depth=2, check_offset=str(SIZE - 4096))
    link = tmp_path / "dev" / "vol"
    assert (await agent.validate(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    out = await agent.start(res, 30)
    assert out.ok, out
    assert "by nbdfuse" in out.reason and "/dev/loop" in out.reason, out.reason
    device = os.path.realpath(link)
    assert device.startswith("/dev/loop") and os.path.getsize(device) == 0  # a block device
    with open(device, "rb") as f:
        assert f.seek(0, os.SEEK_END) == SIZE
    assert (await agent.start(res, 30)).ok  # already attached: the same device
    assert os.path.realpath(link) == device
    out = await agent.monitor(res, 10)  # depth 2: read/modify/write of the reserved block
    assert out.ok, out
    # what went through loop -> FUSE -> nbdfuse -> NBD is on the export's backing file
    with open(backing, "rb") as f:
        f.seek(SIZE - 4096)
        assert decode_counter(f.read(4096)) is not None
    payload = os.urandom(4096)
    fd = os.open(link, os.O_WRONLY)
    try:
        os.pwrite(fd, payload, 1 << 20)
    finally:
        os.close(fd)  # no fsync: stop must flush it
    out = await agent.stop(res, 30)
    assert out.ok, out
    assert not os.path.lexists(link) and device not in loops_backed_by(agent.fuse_file(
        AttachSpec.of(res)))  # fmt: skip
    with open(backing, "rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == payload
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.stop(res, 10)).ok  # idempotent


async def test_stop_refuses_while_mounted_then_force_takes_it(
    tmp_path: Path, target: tuple[Path, int, Proc], agent: AttachAgent
) -> None:
    _, port, _ = target
    res = _res(tmp_path, port)
    link, mnt = str(tmp_path / "dev" / "vol"), tmp_path / "mnt"
    assert (await agent.start(res, 30)).ok
    fs = FsAgent()
    data = Resource("data", "fs", {"device": link, "directory": str(mnt), "mkfs": "ext4"})
    out = await fs.start(data, 60)
    assert out.ok, out
    user = subprocess.Popen(["sleep", "600"], cwd=mnt)
    try:
        out = await agent.stop(res, 10)
        assert out.code == OcfCode.ERR_GENERIC, out
        assert "refusing to detach" in out.reason and f"mounted on {mnt}" in out.reason, out
        assert os.path.realpath(link).startswith("/dev/loop")  # still attached
        out = await agent.force_stop(res, 30)
        assert out.ok, out
        assert f"mounted on {mnt}" in out.reason and f"{user.pid} (sleep" in out.reason, out
        assert user.wait(5) == -15  # SIGTERM
        assert mount_at(str(mnt)) is None and not os.path.lexists(link)
    finally:
        if user.poll() is None:
            user.kill()
            user.wait()


async def test_fs_makes_checks_and_mounts_the_attached_device(
    tmp_path: Path, target: tuple[Path, int, Proc], agent: AttachAgent
) -> None:
    """Step 2 of the hierarchy: `fs` on the link: mkfs when asked and blank, fsck (journal
    replay), mount; data survives a detach and re-attach."""
    _, port, _ = target
    res = _res(tmp_path, port)
    link, mnt = str(tmp_path / "dev" / "vol"), tmp_path / "mnt"
    fs = FsAgent()
    data = Resource("data", "fs", {"device": link, "directory": str(mnt), "fstype": "ext4"})
    assert (await agent.start(res, 30)).ok
    out = await fs.start(data, 60)  # blank device, no mkfs asked: fsck refuses, not mounted
    assert out.code == OcfCode.ERR_GENERIC and mount_at(str(mnt)) is None, out
    made = Resource("data", "fs", {**data.params, "mkfs": "ext4"})
    out = await fs.start(made, 60)
    assert out.ok, out
    assert "mkfs.ext4" in out.reason, out
    (mnt / "kept").write_text("through nbdfuse")
    assert (await fs.stop(made, 30)).ok
    assert (await agent.stop(res, 30)).ok
    assert (await agent.start(res, 30)).ok
    out = await fs.start(made, 60)  # a filesystem is there: no mkfs, fsck then mount
    assert out.ok and "mkfs" not in out.reason, out
    assert (mnt / "kept").read_text() == "through nbdfuse"
    assert (await fs.stop(made, 30)).ok
    assert (await agent.stop(res, 30)).ok


async def test_nothing_listening_fails_cleanly(tmp_path: Path, agent: AttachAgent) -> None:
    _need_root()
    res = _res(tmp_path, free_port())
    out = await agent.start(res, 15)
    assert out.code == OcfCode.ERR_GENERIC and "nbdfuse" in out.reason, out
    assert "Traceback" not in out.reason
    assert not os.path.lexists(tmp_path / "dev" / "vol")
    assert (await agent.stop(res, 10)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING


async def test_params_and_method_choice(tmp_path: Path, agent: AttachAgent) -> None:
    bad = Resource("vol", "attach", {"address": "127.0.0.1", "port": "70000"})
    out = await agent.validate(bad, 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'port'" in out.reason
    out = await agent.validate(Resource("vol", "attach", {"port": "1"}), 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'address' is required" in out.reason
    iscsi = Resource("vol", "attach", {"address": "127.0.0.1", "method": "iscsi"})
    out = await agent.validate(iscsi, 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'iqn'" in out.reason
    deep = Resource("vol", "attach", {"address": "127.0.0.1"}, monitor_depth=2)
    out = await agent.validate(deep, 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "check_offset" in out.reason
    six = Resource("v", "attach", {"address": "::1", "export": "a b"})
    assert AttachSpec.of(six).uri == "nbd://[::1]:10809/a%20b"
    if not kernel_has("nbd"):
        method, why = pick_method("auto")
        assert method == "nbdfuse" and "/sys/module/nbd" in why
        out = await agent.start(Resource("vol", "attach", {"address": "127.0.0.1",
                                                           "method": "nbd"}), 5)  # fmt: skip
        assert out.code == OcfCode.ERR_INSTALLED and "modprobe nbd" in out.reason, out


@pytest.mark.parametrize("method", ["nbd", "iscsi"])
async def test_kernel_methods(
    method: str, tmp_path: Path, target: tuple[Path, int, Proc], agent: AttachAgent
) -> None:
    """The kernel's NBD client and iSCSI initiator, where this kernel has them."""
    module, tool, pkg = {"nbd": ("nbd", "nbd-client", "nbd-client"),
                         "iscsi": ("iscsi_tcp", "iscsiadm", "open-iscsi")}[method]  # fmt: skip
    if not kernel_has(module):
        pytest.skip(f"this kernel has no {module} module (/sys/module/{module}): the {method} "
                    "method cannot run here")  # fmt: skip
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install {pkg})")
    _, port, proc = target
    params = {"address": "127.0.0.1", "method": method, "link": str(tmp_path / "dev" / "vol")}
    if method == "nbd":
        params.update(port=str(port), export="disk")
    else:
        params.update(port=str(proc.iscsi_port), iqn="iqn.2026-11.io.ophiura:disk", lun="0")  # type: ignore[attr-defined]
    res = Resource("vol", "attach", params)
    out = await agent.start(res, 30)
    assert out.ok, out
    assert (await agent.monitor(res, 10)).ok
    assert (await agent.stop(res, 30)).ok
    assert not os.path.lexists(tmp_path / "dev" / "vol")


async def test_a_new_daemon_adopts_the_attachment_and_a_stale_link_is_left_alone(
    tmp_path: Path, target: tuple[Path, int, Proc], agent: AttachAgent
) -> None:
    _, port, _ = target
    res = _res(tmp_path, port)
    link = tmp_path / "dev" / "vol"
    assert (await agent.start(res, 30)).ok
    device = os.path.realpath(link)
    # the node daemon restarts: a fresh agent finds what runs (pidfile, sysfs, link)
    again = AttachAgent(ProcessAgent(tmp_path / "rsc"))
    assert (await again.monitor(res, 10)).ok
    out = await again.start(res, 30)
    assert out.ok and os.path.realpath(link) == device, out
    assert (await again.stop(res, 30)).ok
    # a link naming somebody else's loop device (left from before a reboot): not ours, so
    # monitor says not running and stop neither flushes nor detaches it
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.truncate(1 << 20)
    foreign = subprocess.run(["losetup", "--find", "--show", str(other)], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(foreign, link)
        assert (await again.monitor(res, 10)).code == OcfCode.NOT_RUNNING
        assert (await again.stop(res, 10)).ok
        assert loops_backed_by(str(other)) == [foreign]
    finally:
        subprocess.run(["losetup", "-d", foreign], check=False)


async def test_stock_filesystem_agent_mounts_the_attached_device(
    tmp_path: Path, target: tuple[Path, int, Proc], agent: AttachAgent
) -> None:
    """Debian's `ocf:heartbeat:Filesystem`, unchanged, as the alternative to `fs`: it mounts
    the device `attach` published, and `attach` refuses to detach while it is mounted."""
    from ophiura.cluster.agents.ocf import OcfAgent

    ocf = OcfAgent(rsctmp=tmp_path / "ocf-rsctmp")
    if not ocf.path("ocf:heartbeat:Filesystem").is_file():
        pytest.skip("no ocf:heartbeat:Filesystem (apt-get install resource-agents)")
    why = missing_tools(modprobe="kmod")  # Filesystem checks the fstype's module with it
    if why:
        pytest.skip(why)
    _, port, _ = target
    res = _res(tmp_path, port)
    link, mnt = str(tmp_path / "dev" / "vol"), tmp_path / "mnt"
    assert (await agent.start(res, 30)).ok
    subprocess.run(["mkfs.ext4", "-q", link], check=True, timeout=60)
    fsr = Resource("data", "ocf:heartbeat:Filesystem",
                   {"device": link, "directory": str(mnt), "fstype": "ext4"})  # fmt: skip
    try:
        out = await ocf.start(fsr, 60)
        assert out.ok, out
        assert mount_at(str(mnt)) is not None
        assert (await ocf.monitor(fsr, 30)).ok
        refused = await agent.stop(res, 10)
        assert refused.code == OcfCode.ERR_GENERIC and f"mounted on {mnt}" in refused.reason
        out = await ocf.stop(fsr, 60)
        assert out.ok, out
        assert mount_at(str(mnt)) is None
        assert (await agent.stop(res, 30)).ok
    finally:
        if mount_at(str(mnt)) is not None:
            subprocess.run(["umount", str(mnt)], check=False)
