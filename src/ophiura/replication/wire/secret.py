"""The shared secret that HEs, SEs (and later cluster heartbeats) prove to each other.

Without an explicit path every process on one machine finds the same file, so the defaults work
with no flags: `$XDG_CONFIG_HOME/ophiura/secret`, created on first use. Creation is atomic
(write a private temp file with O_EXCL, then link it into place) so two processes starting at
once agree on one secret instead of each writing its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16


class SecretError(Exception):
    """The secret file is missing, unsafe or too short; the message says which and why."""


def default_secret_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ophiura" / "secret"


def _create(path: Path) -> None:
    """Create `path` with a fresh random secret unless someone else already did."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if the target exists, unlike rename(): the first creator wins the race.
        os.link(tmp, path)
        log.info("created a new shared secret in %s", path)
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_secret(path: Path | None = None) -> bytes:
    """The secret bytes (file content, surrounding whitespace stripped).

    An explicit `path` must exist; the default path is created on first use. A file that group
    or others can read, or shorter than 16 bytes, is refused: a leaked or guessable secret would
    let anyone on the network write to the volumes.
    """
    if path is None:
        path = default_secret_path()
        if not path.exists():
            _create(path)
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretError(f"cannot open secret file {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"secret file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SecretError(
                f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be "
                f"readable by group or others (chmod 600 {path})"
            )
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    value = data.strip()
    if len(value) < MIN_SECRET_BYTES:
        raise SecretError(
            f"secret file {path} holds {len(value)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    return value
