"""Real NBD clients against our server over FileBlockDevice on tmp files: nbdinfo, nbdcopy,
qemu-io, fio (verify=crc32c), hole punching through TRIM / WRITE_ZEROES, a garbage connection
next to a working one, and (root) nbdfuse. Every tool call is bounded by a timeout."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ophiura.block.file import FileBlockDevice

from .conftest import ThreadedServer, require_tools

MiB = 1 << 20
TOOL_TIMEOUT = 120
Start = Callable[..., ThreadedServer]


def run(*args: str, timeout: float = TOOL_TIMEOUT) -> str:
    require_tools(args[0])
    try:
        result = subprocess.run(
            args, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish in {timeout} s: {exc.stdout!r}")
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def disk(tmp_path: Path, threaded_server: Start) -> Iterator[tuple[ThreadedServer, Path]]:
    path = tmp_path / "disk.img"
    server = threaded_server(
        {"disk": FileBlockDevice(path, size=16 * MiB, thin=True)},
        descriptions={"disk": "ophiura test disk"},
    )
    yield server, path


def test_nbdinfo_and_list(disk: tuple[ThreadedServer, Path], threaded_server: Start) -> None:
    server, _ = disk
    out = run("nbdinfo", server.uri())
    assert "export-size: 16777216" in out
    for line in (
        "can_flush: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "can_multi_conn: true",
        "is_read_only: false",
        "block_size_minimum: 512",
    ):
        assert line in out, out
    assert 'export="disk"' in run("nbdinfo", "--list", f"nbd://127.0.0.1:{server.port}")


def test_nbdinfo_read_only_export(tmp_path: Path, threaded_server: Start) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(MiB))
    server = threaded_server({"ro": FileBlockDevice(path, read_only=True)})
    assert "is_read_only: true" in run("nbdinfo", server.uri("ro"))


def test_nbdcopy_in_and_out(tmp_path: Path, disk: tuple[ThreadedServer, Path]) -> None:
    server, backing = disk
    source = tmp_path / "source.img"
    source.write_bytes(random.Random(7).randbytes(16 * MiB))
    run("nbdcopy", str(source), server.uri())
    assert backing.read_bytes() == source.read_bytes()
    copy = tmp_path / "copy.img"
    run("nbdcopy", server.uri(), str(copy))
    assert (
        hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )


def test_qemu_io_pattern(disk: tuple[ThreadedServer, Path]) -> None:
    server, backing = disk
    out = run(
        "qemu-io",
        "-f",
        "raw",
        server.uri(),
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "write -P 0xcd -f 3M 64k",
        "-c",
        "flush",
        "-c",
        "read -P 0xcd 3M 64k",
    )
    assert "Pattern verification failed" not in out
    with open(backing, "rb") as f:
        assert f.read(MiB) == b"\xab" * MiB
        f.seek(3 * MiB)
        assert f.read(65536) == b"\xcd" * 65536


def test_trim_and_write_zeroes_punch_holes(disk: tuple[ThreadedServer, Path]) -> None:
    server, backing = disk
    run("qemu-io", "-f", "raw", server.uri(), "-c", "write -P 0x5a 0 8M", "-c", "flush")
    before = allocated(backing)
    assert before >= 8 * MiB
    # NBD_CMD_TRIM, then NBD_CMD_WRITE_ZEROES without NO_HOLE (-u: may unmap).
    out = run(
        "qemu-io",
        "-f",
        "raw",
        server.uri(),
        "-c",
        "discard 0 2M",
        "-c",
        "write -z -u 2M 2M",
        "-c",
        "read -P 0 2M 2M",
        "-c",
        "read -P 0x5a 4M 4M",
    )
    assert "Pattern verification failed" not in out
    assert allocated(backing) <= before - 4 * MiB, (before, allocated(backing))
    # WRITE_ZEROES with NO_HOLE (qemu's default without -u) zeroes but keeps the space.
    run("qemu-io", "-f", "raw", server.uri(), "-c", "write -z 4M 2M", "-c", "read -P 0 4M 2M")
    with open(backing, "rb") as f:
        f.seek(2 * MiB)
        assert f.read(4 * MiB) == bytes(4 * MiB)


def fio(uri: str, *extra: str, runtime: int = 20) -> str:
    require_tools("fio")
    return run(
        "fio",
        "--name=nbd",
        "--ioengine=nbd",
        f"--uri={uri}",
        "--size=16m",
        "--verify_state_save=0",  # else fio leaves local-nbd-0-verify.state in the cwd
        f"--runtime={runtime}",
        "--output-format=normal",
        *extra,
        timeout=runtime + 60,
    )


def test_fio_randwrite_verify(disk: tuple[ThreadedServer, Path]) -> None:
    server, _ = disk
    out = fio(
        server.uri(),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
    )
    assert "err= 0" in out, out
    assert "verify failed" not in out and "bad magic" not in out, out
    assert "WRITE: bw=" in out and "READ: bw=" in out, out  # it wrote, then read back to verify


def _garbage_loop(port: int, stop: threading.Event, counts: list[int]) -> None:
    """Open connections and send junk until told to stop (bounded by the caller)."""
    rng = random.Random(1)
    while not stop.is_set():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as s:
            s.settimeout(5)
            s.recv(18)
            s.sendall(b"\x00\x00\x00\x03" + rng.randbytes(rng.randrange(1, 512)))
            while s.recv(4096):  # the server closes on us
                pass
            counts[0] += 1
        time.sleep(0.01)


def test_garbage_connections_while_fio_verifies(disk: tuple[ThreadedServer, Path]) -> None:
    server, _ = disk
    stop = threading.Event()
    counts = [0]
    junk = threading.Thread(target=_garbage_loop, args=(server.port, stop, counts), daemon=True)
    junk.start()
    try:
        out = fio(
            server.uri(),
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=8",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--loops=20",  # keep I/O going for a while next to the junk connections
            runtime=10,
        )
    finally:
        stop.set()
        junk.join(15)
    assert "err= 0" in out, out
    assert "verify failed" not in out and "bad magic" not in out, out
    assert counts[0] > 10, counts
    assert "export-size" in run("nbdinfo", server.uri())


def test_nbdfuse_read_write_through_fuse(tmp_path: Path, disk: tuple[ThreadedServer, Path]) -> None:
    if os.geteuid() != 0:
        print("nbdfuse test skipped: FUSE mounts need root here")
        pytest.skip("nbdfuse needs root (FUSE mount)")
    require_tools("nbdfuse", "umount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    server, backing = disk
    mount = tmp_path / "mnt"
    mount.mkdir()
    pidfile = tmp_path / "nbdfuse.pid"
    proc = subprocess.Popen(
        ["nbdfuse", "-P", str(pidfile), str(mount), server.uri()],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert pidfile.exists(), f"nbdfuse did not mount: {proc.poll()}"
        image = mount / "nbd"
        assert image.stat().st_size == 16 * MiB
        data = random.Random(3).randbytes(MiB)
        fd = os.open(image, os.O_RDWR)
        try:
            os.pwrite(fd, data, 5 * MiB)
            os.fsync(fd)
            assert os.pread(fd, MiB, 5 * MiB) == data
        finally:
            os.close(fd)
        with open(backing, "rb") as f:
            f.seek(5 * MiB)
            assert f.read(MiB) == data
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30, check=False)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
