"""Start and stop iSCSI targets for tests and benchmarks: `ophiura target` and tgtd.

Both the integration tests (`tests/integration/conftest.py`) and `python -m bench` drive targets
the same way, so this module is the one place that knows how to start them: a free port on
127.0.0.1, a bounded wait for the port to accept connections, the server's output captured to a
log file (shown when something fails), and a stop by PID only -- SIGTERM, then SIGKILL after a
grace period (those helpers are `ophiura.testkit`'s).

tgtd is the C peer we compare against. It runs in the foreground (`-f`) with its own control
port (`-C`, which names its management socket), so it never touches a system tgtd or another
test's tgtd. tgtd ignores SIGTERM while it has targets, so it is stopped through tgtadm
(`target delete --force`, then `system delete`) before falling back to SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ophiura.testkit.ports import HOST, free_port
from ophiura.testkit.procs import NotListening, log_tail, stop, wait_port

OPHIURA_DEFAULT_IQN = "iqn.2026-11.io.ophiura:disk"
TGTD_IQN = "iqn.2026-11.io.ophiura.test:tgtd"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """A target did not start or misbehaved; the message includes the tail of its log."""


def wait_for_port(
    port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, host: str = HOST
) -> None:
    """`ophiura.testkit.procs.wait_port`, failing with the ServerError bench callers expect."""
    try:
        wait_port(port, timeout, proc, host)
    except NotListening as exc:
        raise ServerError(str(exc)) from None


def read_vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, in KiB; None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Server:
    """A running target: where it listens, which IQN/LUN it serves, and how to stop it."""

    kind: str  # "ophiura" or "tgtd"
    proc: subprocess.Popen[bytes]
    port: int
    iqn: str
    lun: int
    backing: Path
    log_path: Path
    thin: bool = False
    chap: tuple[str, str] | None = None
    control_port: int | None = None  # tgtd only
    exit_code: int | None = None
    peak_rss_kib: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def portal(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, user: str | None = None, secret: str | None = None) -> str:
        """libiscsi/qemu URL of the LUN; with CHAP credentials when given."""
        cred = ""
        if user is not None:
            cred = f"{user}%{secret}@" if secret is not None else f"{user}@"
        return f"iscsi://{cred}{self.portal}/{self.iqn}/{self.lun}"

    def auth_url(self) -> str:
        """URL with this server's CHAP credentials (the plain URL when CHAP is off)."""
        if self.chap is None:
            return self.url()
        return self.url(*self.chap)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> int | None:
        """Record and return the peak RSS so far (VmHWM only grows, so sampling late is fine)."""
        value = read_vm_hwm_kib(self.pid)
        if value is not None:
            self.peak_rss_kib = value
        return self.peak_rss_kib

    def log(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the server (idempotent) and return its exit code."""
        if self.exit_code is not None:
            return self.exit_code
        if self.alive():
            self.sample_rss()
        if self.kind == "tgtd" and self.alive() and self.control_port is not None:
            _tgtadm_quiet(
                self.control_port, "--mode", "target", "--op", "delete", "--force", "--tid", "1"
            )
            _tgtadm_quiet(self.control_port, "--mode", "system", "--op", "delete")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        code = stop(self.proc, timeout)
        self.exit_code = -signal.SIGKILL if code is None else code
        return self.exit_code


# --------------------------------------------------------------------------- ophiura target


def ophiura_command() -> list[str]:
    """The console script next to the running interpreter (the venv's), else `-m ophiura.cli`."""
    script = Path(sys.executable).with_name("ophiura")
    if script.exists():
        return [str(script)]
    found = shutil.which("ophiura")
    if found:
        return [found]
    return [sys.executable, "-m", "ophiura.cli"]


def ophiura_target_unavailable() -> str | None:
    """Why `ophiura target` cannot be used yet (None when `ophiura target --help` works)."""
    try:
        res = subprocess.run(
            [*ophiura_command(), "target", "--help"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ophiura target --help` failed to run: {exc}"
    if res.returncode != 0:
        err = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()
        return f"`ophiura target --help` exited {res.returncode}: {err[-1] if err else ''}"
    return None


def start_ophiura(
    backing: Path,
    size: str,
    log_path: Path,
    *,
    thin: bool = False,
    chap: tuple[str, str] | None = None,
    state_dir: Path | None = None,
    iqn: str | None = None,
    port: int | None = None,
    extra_args: list[str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Server:
    """Run `ophiura target` on `backing` and return once its port accepts connections."""
    port = port or free_port()
    cmd = [
        *ophiura_command(),
        "target",
        "--backing",
        str(backing),
        "--size",
        size,
        "--listen",
        f"{HOST}:{port}",
    ]
    if iqn:
        cmd += ["--iqn", iqn]
    if thin:
        cmd.append("--thin")
    if chap:
        cmd += ["--chap", f"{chap[0]}:{chap[1]}"]
    if state_dir:
        cmd += ["--state-dir", str(state_dir)]
    cmd += extra_args or []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Server(
        "ophiura",
        proc,
        port,
        iqn or OPHIURA_DEFAULT_IQN,
        0,
        backing,
        log_path,
        thin=thin,
        chap=chap,
    )
    try:
        wait_for_port(port, timeout, proc)
    except ServerError as exc:
        server.stop()
        raise ServerError(
            f"ophiura target did not start: {exc}\n--- log ---\n{server.log()}"
        ) from exc
    return server


# --------------------------------------------------------------------------- tgtd


def tgtd_unavailable() -> str | None:
    """Why tgtd cannot be used here (None when it can)."""
    for tool in ("tgtd", "tgtadm"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package tgt)"
    if os.geteuid() != 0:
        return "tgtd needs root (its control socket lives in /var/run/tgtd)"
    return None


def _tgtadm(control_port: int, *args: str, timeout: float = 15.0) -> None:
    cmd = ["tgtadm", "-C", str(control_port), "--lld", "iscsi", *args]
    res = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise ServerError(
            f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.decode(errors='replace')}"
        )


def _tgtadm_quiet(control_port: int, *args: str) -> None:
    with contextlib.suppress(ServerError, OSError, subprocess.TimeoutExpired):
        _tgtadm(control_port, *args, timeout=5.0)


def _free_control_port() -> int:
    """A tgtd control port (it must fit in 15 bits) whose socket no other tgtd uses."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, 32000)
        if not Path(f"/var/run/tgtd/socket.{port}").exists():
            return port
    return rng.randrange(10000, 32000)


def start_tgtd(
    backing: Path,
    log_path: Path,
    *,
    thin: bool = False,
    chap: tuple[str, str] | None = None,
    iqn: str = TGTD_IQN,
    port: int | None = None,
    timeout: float = START_TIMEOUT,
) -> Server:
    """Run tgtd in the foreground serving `backing` as LUN 1 (LUN 0 is tgtd's controller)."""
    port = port or free_port()
    control = _free_control_port()
    cmd = ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal={HOST}:{port}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Server(
        "tgtd", proc, port, iqn, 1, backing, log_path, thin=thin, chap=chap, control_port=control
    )
    try:
        wait_for_port(port, timeout, proc)
        _tgtadm(control, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", iqn)
        _tgtadm(
            control,
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            str(backing),
        )
        if thin:
            _tgtadm(
                control,
                "--mode",
                "logicalunit",
                "--op",
                "update",
                "--tid",
                "1",
                "--lun",
                "1",
                "--params",
                "thin_provisioning=1",
            )
        if chap:
            _tgtadm(
                control,
                "--mode",
                "account",
                "--op",
                "new",
                "--user",
                chap[0],
                "--password",
                chap[1],
            )
            _tgtadm(control, "--mode", "account", "--op", "bind", "--tid", "1", "--user", chap[0])
        _tgtadm(
            control, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"
        )
    except (ServerError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        raise ServerError(f"tgtd did not start: {exc}\n--- log ---\n{server.log()}") from exc
    return server


def size_bytes(size: str | int) -> int:
    """`64M`, `1G`, `4096` -> bytes (binary units, as `ophiura target --size` takes them)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_sparse(path: Path, size: int) -> Path:
    """A sparse file of `size` bytes (created or truncated to that size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.truncate(size)
    return path
