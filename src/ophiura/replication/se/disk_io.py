"""Every write a storage element makes to its files, and every sync: one place to observe them.

The SE's durability argument is about which writes a completed fdatasync covers. kill -9 cannot
test it (the page cache survives a killed process); a power cut can, and this module lets a test
produce one. With `OPHIURA_POWERLOSS_JOURNAL=DIR` in the environment of the SE process, each
write first appends the old contents of the range it overwrites (widened to whole 512-byte
sectors) to an undo journal for that file in DIR, and each completed fdatasync/fsync of a file
discards that file's journal. After the SE is killed, `powerloss.apply_power_loss` undoes any
subset of the journalled (unsynced) sectors: what a disk without FUA or flush ordering may
leave after losing power.

A disk that fails is the other thing kill -9 cannot show. This kernel has no device-mapper
(no `dm-error` target), so the failing disk is modelled at the same seam: with
`OPHIURA_EIO_FLAG=FILE` in the SE's environment, every write, hole punch, truncate and sync
raises `OSError(EIO)` while FILE exists. A failed sync leaves the unsynced writes where they
were (in the page cache, and in the power-loss journal when that is on): what a real EIO from
fdatasync leaves is unknown, and the SE must treat it so (it fails the volume and re-derives it
from its files, `store.Volume._fail`). Reads are not failed by this model.

Without the variables the functions below are the `os` ones themselves (bound at import): no
cost on the write path. Size changes (`ftruncate`) are not journalled: every one the SE makes
is followed by a sync before anything depends on it, so the model treats them as durable.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ophiura.block.file import _fallocate

ENV = "OPHIURA_POWERLOSS_JOURNAL"
EIO_ENV = "OPHIURA_EIO_FLAG"
SECTOR = 512
UNDO_SUFFIX = ".undo"  # entries: offset u64, length u64, old bytes (whole sectors)
PATH_SUFFIX = ".path"  # the file the entries belong to
ENTRY = struct.Struct("<QQ")


class UndoJournal:
    """The undo journals of one process's files, one pair of files per inode in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fds: dict[tuple[int, int], int] = {}

    def _undo_fd(self, fd: int) -> int:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        jfd = self._fds.get(key)
        if jfd is None:
            stem = self.root / f"{st.st_dev}-{st.st_ino}"
            path = os.readlink(f"/proc/self/fd/{fd}")
            Path(f"{stem}{PATH_SUFFIX}").write_text(path)
            jfd = os.open(
                f"{stem}{UNDO_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            self._fds[key] = jfd
        return jfd

    def before_write(self, fd: int, offset: int, length: int) -> None:
        """Save what [offset, offset+length) holds now, in whole sectors (zeros past EOF)."""
        if length <= 0:
            return
        lo = offset - offset % SECTOR
        hi = -(-(offset + length) // SECTOR) * SECTOR
        old = os.pread(fd, hi - lo, lo)
        old += bytes(hi - lo - len(old))
        with self._lock:
            os.write(self._undo_fd(fd), ENTRY.pack(lo, hi - lo) + old)

    def sync(self, fd: int, fn: Callable[[int], None]) -> None:
        """Run the sync; once it returned, forget the entries it covered (not those that other
        threads appended while it ran: the sync may not have covered them)."""
        with self._lock:
            jfd = self._undo_fd(fd)
            covered = os.fstat(jfd).st_size
        fn(fd)
        with self._lock:
            size = os.fstat(jfd).st_size
            rest = os.pread(jfd, size - covered, covered) if size > covered else b""
            os.ftruncate(jfd, 0)
            if rest:
                os.write(jfd, rest)


def _journalled(journal: UndoJournal) -> dict[str, Any]:
    def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        journal.before_write(fd, offset, len(data))
        return os.pwrite(fd, data, offset)

    def pwritev(fd: int, buffers: Sequence[bytes | bytearray | memoryview], offset: int) -> int:
        journal.before_write(fd, offset, sum(len(b) for b in buffers))
        return os.pwritev(fd, buffers, offset)

    def punch(fd: int, mode: int, offset: int, length: int) -> None:
        journal.before_write(fd, offset, length)
        _fallocate(fd, mode, offset, length)

    def fdatasync(fd: int) -> None:
        journal.sync(fd, os.fdatasync)

    def fsync(fd: int) -> None:
        journal.sync(fd, os.fsync)

    return {
        "pwrite": pwrite,
        "pwritev": pwritev,
        "punch": punch,
        "fdatasync": fdatasync,
        "fsync": fsync,
    }


# The write path's functions: `os`'s own unless the power-loss journal is on.
pwrite: Callable[[int, Any, int], int] = os.pwrite
pwritev: Callable[[int, Sequence[Any], int], int] = os.pwritev
punch: Callable[[int, int, int, int], None] = _fallocate  # fallocate(fd, mode, offset, length)
fdatasync: Callable[[int], None] = os.fdatasync
fsync: Callable[[int], None] = os.fsync
ftruncate: Callable[[int, int], None] = os.ftruncate


def _failing(flag: Path, fns: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """`fns`, each raising EIO instead of running while `flag` exists."""

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if flag.exists():
                raise OSError(errno.EIO, f"{name}: injected I/O error ({EIO_ENV}={flag})")
            return fn(*args)

        return call

    return {name: wrap(name, fn) for name, fn in fns.items()}


_journal_dir = os.environ.get(ENV)
if _journal_dir:
    globals().update(_journalled(UndoJournal(Path(_journal_dir))))
_eio_flag = os.environ.get(EIO_ENV)
if _eio_flag:
    globals().update(
        _failing(
            Path(_eio_flag),
            {
                "pwrite": pwrite,
                "pwritev": pwritev,
                "punch": punch,
                "fdatasync": fdatasync,
                "fsync": fsync,
                "ftruncate": ftruncate,
            },
        )
    )
