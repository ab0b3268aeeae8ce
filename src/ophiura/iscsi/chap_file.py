"""CHAP credentials from a file only its owner can read (the HE's `chap_file`, the cluster
`volume` agent's `chap_file`): secrets never on a command line, in a URL, or in a log.

    # /etc/ophiura/volumes.chap, chmod 600
    user = "cluster"
    secret = "at least twelve bytes"
    mutual_user = "ophiura-he"            # optional: the target proves itself too
    mutual_secret = "another secret"

The same file serves both ends: a target requires `user`/`secret` from initiators and answers
mutual CHAP as `mutual_user`/`mutual_secret`; an initiator logs in with `user`/`secret` and
checks the target's mutual answer. Every error names the file and the key, never a value.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from ophiura.iscsi.chap import Credentials

MIN_SECRET = 12  # RFC 7143 §12.1.3: at least 96 bits
MAX_SECRET = 255
KEYS = ("user", "secret", "mutual_user", "mutual_secret")


class ChapFileError(Exception):
    """The CHAP file cannot be used; the message names the file and the problem."""


def load_chap_file(path: Path) -> Credentials:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ChapFileError(f"CHAP file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChapFileError(f"CHAP file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ChapFileError(
                f"CHAP file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be "
                f"readable by group or others (chmod 600 {path})"
            )
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        # (the parser's message may quote a line of the file: a secret)
        raise ChapFileError(f'CHAP file {path}: not TOML (user = "...", secret = "...")') from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ChapFileError(f"CHAP file {path}: unknown keys {unknown} (known: {list(KEYS)})")
    for key, value in data.items():
        if not isinstance(value, str) or not value:
            raise ChapFileError(f"CHAP file {path}: {key} must be a non-empty string")
    for key in ("user", "secret"):
        if key not in data:
            raise ChapFileError(f"CHAP file {path}: {key} is required")
    if ("mutual_user" in data) != ("mutual_secret" in data):
        raise ChapFileError(f"CHAP file {path}: mutual_user and mutual_secret go together")
    for key in ("secret", "mutual_secret"):
        n = len(data.get(key, "x" * MIN_SECRET).encode())
        if not MIN_SECRET <= n <= MAX_SECRET:
            raise ChapFileError(
                f"CHAP file {path}: {key} is {n} bytes; CHAP needs {MIN_SECRET}-{MAX_SECRET}"
            )
    if data.get("mutual_secret") == data["secret"]:
        raise ChapFileError(
            f"CHAP file {path}: mutual_secret must differ from secret (RFC 7143 §12.1.3)"
        )
    return Credentials(
        data["user"], data["secret"], data.get("mutual_user"), data.get("mutual_secret")
    )
