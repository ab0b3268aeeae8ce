"""The running target's status socket: what `ophiura target show` reads.

A unix stream socket, mode 0600, one JSON request line and one JSON answer line:

    client -> {"op": "show"}
    server -> {"ok": true, "result": {...}} | {"ok": false, "error": "..."}

Why a unix socket and not the HMAC-over-TCP admin API of the node and the HE: a standalone
target has no shared secret, and what it tells (initiator names, reservation keys) is for the
machine's administrator only; the file mode says who that is, and SO_PEERCRED double-checks it
(root, or the user the target runs as). Read-only: nothing here changes the target.

The socket is bound under a temporary name, chmod'ed, then renamed into place, so it is never
reachable with looser permissions. A socket left by a target that died is replaced; one that
answers belongs to another running target, and this one refuses to start on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 1 << 16
IO_TIMEOUT = 5.0
_UCRED = struct.Struct("3i")  # pid, uid, gid


class TargetAdminError(Exception):
    """One line for the operator: no target there, not allowed, or a bad answer."""


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class StatusSocket:
    """Serves `snapshot()` on `path` to root and to the user the target runs as."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self._server: asyncio.Server | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        path = self.path
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
            if _answers(path):
                raise OSError(errno.EADDRINUSE, f"{path}: another running target answers there")
            path.unlink()  # left by a target that died
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
            self._inode = path.lstat().st_ino
            sock.listen(16)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        log.info("status socket %s (ophiura target show)", path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Only our own socket: another target may have replaced a path we thought stale.
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.lstat().st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        _pid, uid, _gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        return uid in (0, os.getuid())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not self._allowed(writer):
                answer: dict[str, Any] = {"ok": False, "error": "permission denied"}
            else:
                answer = self._answer(await asyncio.wait_for(reader.readline(), IO_TIMEOUT))
            writer.write(json.dumps(answer, sort_keys=True).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass  # the client went away or sent too much: nothing to tell it
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not a JSON line"}
        if not isinstance(request, dict) or request.get("op") != "show":
            return {"ok": False, "error": 'unknown request (known: {"op": "show"})'}
        try:
            return {"ok": True, "result": self.snapshot()}
        except Exception as exc:  # a bug in the snapshot must not kill the target
            log.exception("status snapshot failed")
            return {"ok": False, "error": f"snapshot failed: {exc}"}


def query(path: Path, timeout: float = IO_TIMEOUT) -> dict[str, Any]:
    """Ask the target behind `path` for its state; TargetAdminError in one line otherwise."""
    path = Path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise TargetAdminError(f"no target is running: {path} does not exist") from None
        except ConnectionRefusedError:
            raise TargetAdminError(
                f"no target is running: nothing answers on {path} (left by a target that died)"
            ) from None
        except PermissionError:
            raise TargetAdminError(f"{path}: permission denied (run as root)") from None
        except OSError as exc:
            raise TargetAdminError(f"{path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(b'{"op": "show"}\n')
            data = b""
            while not data.endswith(b"\n") and len(data) < 64 << 20:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise TargetAdminError(f"{path}: no answer within {timeout:g}s") from None
        except OSError as exc:
            raise TargetAdminError(f"{path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise TargetAdminError(f"{path}: not an ophiura target status socket") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise TargetAdminError(f"{path}: {error or 'refused'}")
    result = answer.get("result")
    if not isinstance(result, dict):
        raise TargetAdminError(f"{path}: not an ophiura target status socket")
    return result
